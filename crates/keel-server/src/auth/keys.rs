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
