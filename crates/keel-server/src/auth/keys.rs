//! The key ring (S9): server secrets that sign things, with rotation. The newest unretired
//! key of a purpose signs; every unretired key verifies, so rotating (`keel keys rotate`)
//! breaks nothing already signed, and retiring an old key (`keel keys retire`) ends what it
//! signed. Keys are rows (`keel_keys`), so every instance signs and verifies alike; each
//! instance reloads the ring every minute, and at once (at most every 5 s) when asked to
//! verify with a key it does not know.

use std::time::{Duration, Instant};

use chrono::Utc;
use keel_store::Db;
use keel_store::security::{self, Key};

use crate::http::error::ApiError;

/// The purpose of the keys that sign file links.
pub const FILE_LINKS: &str = "file_links";

/// How long an instance uses its copy of the ring before reading it again.
const REFRESH: Duration = Duration::from_secs(60);
/// Unknown key ids reload the ring at most this often (forged ids cost the database one
/// indexed read a second at most).
const RELOAD_AT_MOST: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct KeyRing {
    cached: tokio::sync::RwLock<Option<(Instant, Vec<Key>)>>,
    /// When an unknown key id last reloaded the ring.
    last_miss: std::sync::Mutex<Option<Instant>>,
}

/// A new random secret: 256 bits, hex.
fn new_secret() -> String {
    (0..2).map(|_| uuid::Uuid::new_v4().simple().to_string()).collect()
}

/// Adds a new key for `purpose`, which signs from then on (after each instance's next reload).
pub async fn rotate(db: &Db, purpose: &str) -> Result<Key, keel_store::StoreError> {
    let key = Key {
        id: format!("k{}", uuid::Uuid::now_v7().simple()),
        purpose: purpose.to_string(),
        secret: new_secret(),
        created_at: Utc::now(),
        retired_at: None,
    };
    security::key_insert(db, &key).await?;
    Ok(key)
}

/// A key as operators see it: never its secret.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    pub id: String,
    pub purpose: String,
    pub created_at: chrono::DateTime<Utc>,
    pub retired_at: Option<chrono::DateTime<Utc>>,
    /// `signs_and_verifies` (the newest of its purpose), `verifies` or `retired`.
    pub state: &'static str,
}

/// Every key, newest first within each purpose, with what it does now.
pub async fn list(db: &Db) -> Result<Vec<Listed>, keel_store::StoreError> {
    let keys = security::keys(db, None).await?;
    Ok(keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let newest = keys[..i]
                .iter()
                .all(|k| k.purpose != key.purpose || k.retired_at.is_some());
            let state = match key.retired_at {
                Some(_) => "retired",
                None if newest => "signs_and_verifies",
                None => "verifies",
            };
            Listed {
                id: key.id.clone(),
                purpose: key.purpose.clone(),
                created_at: key.created_at,
                retired_at: key.retired_at,
                state,
            }
        })
        .collect())
}

/// Links live at most an hour and instances reload within a minute: a replaced key may be
/// retired this long after its successor was added without breaking a live link.
pub const RETIRE_AFTER: chrono::Duration = chrono::Duration::seconds(3_660);

/// Why a key was not retired.
#[derive(Debug, thiserror::Error)]
pub enum RetireError {
    #[error("no key {0}")]
    NotFound(String),
    #[error("key {0} signs now: rotate first, then retire it")]
    Signing(String),
    #[error(
        "key {id} was replaced {age} s ago; links it signed live up to an hour and instances switch within a minute: retire it after {wait} s more, or force it"
    )]
    TooSoon { id: String, age: i64, wait: i64 },
    #[error("key {0} is already retired")]
    Retired(String),
    #[error(transparent)]
    Store(#[from] keel_store::StoreError),
}

/// Retires a key that a newer one has replaced (at least [`RETIRE_AFTER`] ago, unless
/// `force`): what it signed stops verifying on every instance within a minute.
pub async fn retire(db: &Db, id: &str, force: bool) -> Result<(), RetireError> {
    let keys = security::keys(db, None).await?;
    let Some(key) = keys.iter().find(|k| k.id == id) else {
        return Err(RetireError::NotFound(id.to_string()));
    };
    if key.retired_at.is_some() {
        return Err(RetireError::Retired(id.to_string()));
    }
    // The key that replaced it: the oldest newer unretired key of the purpose.
    let successor = keys
        .iter()
        .filter(|k| {
            k.purpose == key.purpose && k.retired_at.is_none() && k.created_at >= key.created_at && k.id != key.id
        })
        .min_by_key(|k| k.created_at);
    let Some(successor) = successor else {
        return Err(RetireError::Signing(id.to_string()));
    };
    let age = Utc::now() - successor.created_at;
    if !force && age < RETIRE_AFTER {
        return Err(RetireError::TooSoon {
            id: id.to_string(),
            age: age.num_seconds(),
            wait: (RETIRE_AFTER - age).num_seconds(),
        });
    }
    if security::key_retire(db, id, Utc::now()).await? {
        Ok(())
    } else {
        Err(RetireError::Retired(id.to_string()))
    }
}

impl KeyRing {
    async fn load(&self, db: &Db) -> Result<Vec<Key>, ApiError> {
        let mut keys = security::keys(db, Some(FILE_LINKS)).await?;
        if keys.is_empty() {
            // The first use: adopt the key of system version 3 (links made before the ring
            // existed carry no key id), or make one. Racing instances may both add one; the
            // newest signs and both verify.
            let legacy = keel_store::files::secret(db, FILE_LINKS, &new_secret()).await?;
            security::key_insert(
                db,
                &Key {
                    id: "legacy".into(),
                    purpose: FILE_LINKS.into(),
                    secret: legacy,
                    created_at: Utc::now(),
                    retired_at: None,
                },
            )
            .await?;
            keys = security::keys(db, Some(FILE_LINKS)).await?;
        }
        keys.retain(|k| k.retired_at.is_none());
        *self.cached.write().await = Some((Instant::now(), keys.clone()));
        Ok(keys)
    }

    async fn current(&self, db: &Db) -> Result<Vec<Key>, ApiError> {
        if let Some((at, keys)) = self.cached.read().await.as_ref()
            && at.elapsed() < REFRESH
            && !keys.is_empty()
        {
            return Ok(keys.clone());
        }
        self.load(db).await
    }

    /// The key that signs now: its id and secret.
    pub async fn signer(&self, db: &Db) -> Result<(String, Vec<u8>), ApiError> {
        let keys = self.current(db).await?;
        let key = keys
            .first()
            .ok_or_else(|| ApiError::internal("the key ring is empty"))?;
        Ok((key.id.clone(), key.secret.as_bytes().to_vec()))
    }

    /// The secret of an unretired key, by id; `None` for an unknown or retired one.
    pub async fn verifier(&self, db: &Db, id: &str) -> Result<Option<Vec<u8>>, ApiError> {
        let find = |keys: &[Key]| keys.iter().find(|k| k.id == id).map(|k| k.secret.as_bytes().to_vec());
        let keys = self.current(db).await?;
        if let Some(secret) = find(&keys) {
            return Ok(Some(secret));
        }
        {
            let mut last = self.last_miss.lock().expect("key ring lock");
            if last.is_some_and(|at| at.elapsed() < RELOAD_AT_MOST) {
                return Ok(None);
            }
            *last = Some(Instant::now());
        }
        Ok(find(&self.load(db).await?))
    }
}
