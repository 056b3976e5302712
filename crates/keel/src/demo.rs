//! `keel demo`: deterministic sample data at the seed's scale for an example app, then serve.
//!
//! Data is written straight through the store in large multi-row INSERTs inside one
//! transaction per collection, so year-1 volumes load in seconds.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use chrono::{Duration, NaiveDate, TimeZone, Utc};
use keel_query::value::{ident, truncate_micros};
use keel_query::{Schema, Sql, SqlValue};
use keel_spec::{Collection, FieldKind, RelationTarget};
use keel_store::{Db, system};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use crate::examples;

pub const DEMO_PASSWORD: &str = "keel-demo-password";
pub const SUPERUSER_EMAIL: &str = "admin@demo.keel";

pub struct DemoArgs {
    /// The configuration from `--config` and `KEEL_*` (the demo sets its own spec, data
    /// directory, port and logging, and always runs on embedded SQLite).
    pub config: keel_server::Config,
    pub app: String,
    pub port: u16,
    pub data_dir: Option<PathBuf>,
    pub fresh: bool,
    pub serve: bool,
    pub scale: f64,
}

/// What to generate.
pub struct GenOptions {
    pub orgs: u32,
    pub users_per_org: u32,
    /// Multiplies every collection's `demo.count`.
    pub scale: f64,
    /// Overrides the row count of named collections.
    pub counts: HashMap<String, u64>,
    pub seed: u64,
    /// Write one activity row per generated record.
    pub activity: bool,
    /// Top the activity log up with update entries to this many rows in all.
    pub activity_target: u64,
}

pub struct Generated {
    pub orgs: Vec<(Uuid, String)>,
    pub rows: Vec<(String, u64)>,
    pub activity_rows: u64,
}

const WORDS: &[&str] = &[
    "alpha", "bravo", "copper", "delta", "ember", "falcon", "granite", "harbor", "indigo", "juniper", "kestrel",
    "lumen", "meadow", "nimbus", "orbit", "pioneer", "quartz", "ridge", "summit", "timber", "umber", "vector",
    "willow", "xenon", "yonder", "zephyr", "review", "deploy", "invoice", "schedule", "inspect", "renew", "audit",
    "update", "migrate", "report",
];
const FIRST: &[&str] = &[
    "Ada", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jon", "Kai", "Lena", "Mateo", "Nora",
    "Omar", "Priya",
];
const LAST: &[&str] = &[
    "Garcia", "Smith", "Okafor", "Chen", "Novak", "Silva", "Kowalski", "Haddad", "Ito", "Larsen", "Moreau", "Patel",
];
const CITIES: &[&str] = &[
    "Austin", "Boise", "Denver", "Fresno", "Lyon", "Madrid", "Oslo", "Porto", "Reno", "Tulsa",
];

fn pick<'a>(rng: &mut StdRng, items: &'a [&'a str]) -> &'a str {
    items[rng.random_range(0..items.len())]
}

fn alnum(rng: &mut StdRng, length: usize, alphabet: &[u8]) -> String {
    (0..length)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

/// Candidate values for a text field, tried in order against its pattern.
fn text_candidates(rng: &mut StdRng, hint: Option<&str>, serial: u64, unique: bool) -> Vec<String> {
    let mut out = vec![];
    if unique {
        // Values derived from the serial cannot collide.
        out.push(format!("K{}", base36(serial)));
        out.push(format!("{:064x}", u128::from(serial)));
        out.push(format!("sub_{}", base36(serial)));
    }
    match hint {
        Some("name") => out.push(format!("{} {}", pick(rng, FIRST), pick(rng, LAST))),
        Some("first_name") => out.push(pick(rng, FIRST).to_string()),
        Some("last_name") => out.push(pick(rng, LAST).to_string()),
        Some("email") => out.push(format!(
            "{}.{}{}@example.com",
            pick(rng, FIRST).to_lowercase(),
            pick(rng, LAST).to_lowercase(),
            serial
        )),
        Some("phone") => out.push(format!("+1-555-{:04}", rng.random_range(0..10_000))),
        Some("company") => out.push(format!(
            "{} {}",
            capitalize(pick(rng, WORDS)),
            ["Logistics", "Freight", "Labs", "Partners", "Systems"][rng.random_range(0..5)]
        )),
        Some("city") => out.push(pick(rng, CITIES).to_string()),
        Some("word") => out.push(pick(rng, WORDS).to_string()),
        Some("paragraph") => out.push((0..24).map(|_| pick(rng, WORDS)).collect::<Vec<_>>().join(" ")),
        Some("code") => out.push(format!(
            "{}-{:05}",
            alnum(rng, 3, b"ABCDEFGHJKLMNPRSTUVWXYZ"),
            serial % 100_000
        )),
        Some("url") => out.push(format!("https://example.com/{}/{serial}", pick(rng, WORDS))),
        _ => {}
    }
    out.push(
        (0..rng.random_range(3..8))
            .map(|_| pick(rng, WORDS))
            .collect::<Vec<_>>()
            .join(" "),
    );
    out.push(format!(
        "{:02}:{:02}",
        rng.random_range(6..22),
        [0, 15, 30, 45][rng.random_range(0..4)]
    ));
    out.push(alnum(rng, 2, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"));
    out.push(alnum(rng, 3, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"));
    out.push(alnum(rng, 17, b"ABCDEFGHJKLMNPRSTUVWXYZ0123456789"));
    out.push(alnum(rng, 64, b"0123456789abcdef"));
    out.push(Uuid::from_u128(rng.random()).to_string());
    out.push(format!(
        "cus_{}",
        alnum(
            rng,
            14,
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
        )
    ));
    out.push(format!(
        "sub_{}",
        alnum(
            rng,
            14,
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
        )
    ));
    out
}

fn base36(mut n: u64) -> String {
    let digits = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut out = vec![];
    loop {
        out.push(digits[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// Collections ordered so that relation targets come first.
fn ordered(schema: &Schema) -> Vec<&Collection> {
    let mut done: Vec<&Collection> = vec![];
    let mut pending: Vec<&Collection> = schema.app.collections.iter().filter(|c| !c.system).collect();
    while !pending.is_empty() {
        let before = pending.len();
        pending.retain(|collection| {
            let ready = collection.fields.iter().all(|f| match &f.kind {
                FieldKind::Relation {
                    to: RelationTarget::Collection(target),
                    ..
                } => target == &collection.name || done.iter().any(|d| &d.name == target),
                _ => true,
            });
            if ready {
                done.push(collection);
            }
            !ready
        });
        if pending.len() == before {
            done.append(&mut pending);
        }
    }
    done
}

struct Batch {
    columns: Vec<String>,
    rows: Vec<Vec<SqlValue>>,
}

/// Inserts the batch, skipping rows that hit a unique index; returns the ids inserted.
async fn flush(tx: &mut keel_store::Tx, table: &str, batch: &mut Batch) -> Result<Vec<Uuid>> {
    if batch.rows.is_empty() {
        return Ok(vec![]);
    }
    let mut sql = Sql::new(tx.dialect());
    sql.push("INSERT INTO ").push(&ident(table)).push(" (");
    sql.push(&batch.columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", "));
    sql.push(") VALUES ");
    for (i, row) in batch.rows.drain(..).enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.push("(");
        for (j, value) in row.into_iter().enumerate() {
            if j > 0 {
                sql.push(", ");
            }
            sql.bind(value);
        }
        sql.push(")");
    }
    sql.push(" ON CONFLICT DO NOTHING RETURNING \"id\"");
    let rows = tx.query(&sql).await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| r.first().and_then(|c| c.uuid()))
        .collect())
}

/// Records the ids a flush inserted under their scope, so relations only point at real rows.
fn remember(
    ids: &mut HashMap<(String, Option<Uuid>), Vec<Uuid>>,
    pending: &mut HashMap<Uuid, Option<Uuid>>,
    collection: &str,
    inserted: Vec<Uuid>,
) -> u64 {
    let count = inserted.len() as u64;
    for id in inserted {
        if let Some(scope) = pending.get(&id) {
            ids.entry((collection.to_string(), *scope)).or_default().push(id);
        }
    }
    pending.clear();
    count
}

fn random_value(
    rng: &mut StdRng,
    collection: &Collection,
    field: &keel_spec::Field,
    serial: u64,
    patterns: &HashMap<String, regex::Regex>,
) -> Option<SqlValue> {
    let base = NaiveDate::from_ymd_opt(2026, 1, 1).expect("valid date");
    Some(match &field.kind {
        FieldKind::Text { max, min, .. } => {
            let regex = patterns.get(&format!("{}.{}", collection.name, field.name));
            let mut candidates = text_candidates(rng, field.demo.as_deref(), serial, field.unique && regex.is_some());
            if field.unique && regex.is_none() {
                for candidate in &mut candidates {
                    candidate.push_str(&format!(" {serial}"));
                }
            }
            let fits = |s: &String| {
                let n = s.chars().count();
                n <= *max as usize && min.is_none_or(|m| n >= m as usize) && regex.is_none_or(|r| r.is_match(s))
            };
            match candidates.into_iter().find(fits) {
                Some(value) => SqlValue::Text(value),
                None => return None,
            }
        }
        FieldKind::Integer { min, max } => {
            let low = min.unwrap_or(0);
            let high = max.unwrap_or(low.saturating_add(10_000)).max(low);
            SqlValue::Int(if field.unique {
                low + serial as i64
            } else {
                rng.random_range(low..=high)
            })
        }
        FieldKind::Number { min, max } => {
            let low = min.unwrap_or(0.0);
            let high = max.unwrap_or(low + 10_000.0).max(low);
            SqlValue::Float(((rng.random_range(low..=high)) * 100.0).round() / 100.0)
        }
        FieldKind::Bool => SqlValue::Bool(rng.random_bool(0.7)),
        FieldKind::Date => SqlValue::Date(base + Duration::days(rng.random_range(-365..730))),
        FieldKind::Datetime => {
            let start = Utc.with_ymd_and_hms(2025, 6, 1, 0, 0, 0).single().expect("valid time");
            SqlValue::Datetime(start + Duration::minutes(rng.random_range(0..(700 * 24 * 60))))
        }
        FieldKind::Select { values } => SqlValue::Text(values[rng.random_range(0..values.len())].clone()),
        FieldKind::Json => SqlValue::Json(serde_json::json!({ "demo": true, "n": serial })),
        FieldKind::File { .. } => SqlValue::Null,
        FieldKind::Relation { .. } => return None,
    })
}

/// Generates orgs, users and records for every collection of the app.
pub async fn generate(db: &Db, schema: &Schema, options: &GenOptions) -> Result<Generated> {
    let mut rng = StdRng::seed_from_u64(options.seed);
    let password_hash =
        keel_server::auth::hash_password(&keel_server::config::AuthSection::default(), DEMO_PASSWORD.to_string())
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
    system::user_insert(
        db,
        system::NewUser {
            email: SUPERUSER_EMAIL,
            name: Some("Demo Admin"),
            password_hash: &password_hash,
            superuser: true,
            email_verified: true,
        },
    )
    .await
    .context("creating the demo superuser")?;
    let roles = &schema.app.roles;
    let mut orgs = vec![];
    let mut members: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for n in 0..options.orgs {
        let slug = format!("org-{:03}", n + 1);
        let owner_email = format!("owner@{slug}.demo.keel");
        let owner = system::user_insert(
            db,
            system::NewUser {
                email: &owner_email,
                name: Some(&format!("Owner of {slug}")),
                password_hash: &password_hash,
                superuser: false,
                email_verified: true,
            },
        )
        .await?;
        let org = system::org_insert(
            db,
            &slug,
            &format!(
                "{} {}",
                capitalize(pick(&mut rng, WORDS)),
                capitalize(pick(&mut rng, WORDS))
            ),
            Some(owner.id),
            &roles[0],
        )
        .await?;
        let mut ids = vec![owner.id];
        for m in 1..options.users_per_org {
            // Members get the other roles in turn (e.g. admin, member, viewer).
            let role = if roles.len() == 1 {
                &roles[0]
            } else {
                &roles[1 + (m as usize - 1) % (roles.len() - 1)]
            };
            let email = format!("{}{m}@{slug}.demo.keel", role);
            let user = system::user_insert(
                db,
                system::NewUser {
                    email: &email,
                    name: Some(&format!("{} {}", pick(&mut rng, FIRST), pick(&mut rng, LAST))),
                    password_hash: &password_hash,
                    superuser: false,
                    email_verified: true,
                },
            )
            .await?;
            system::member_insert(db, org.id, user.id, role).await?;
            ids.push(user.id);
        }
        members.insert(org.id, ids);
        orgs.push((org.id, slug));
    }
    let patterns: HashMap<String, regex::Regex> = schema
        .app
        .collections
        .iter()
        .flat_map(|c| c.fields.iter().map(move |f| (c, f)))
        .filter_map(|(c, f)| match &f.kind {
            FieldKind::Text { pattern: Some(p), .. } => regex::Regex::new(&format!("^(?:{p})$"))
                .ok()
                .map(|r| (format!("{}.{}", c.name, f.name), r)),
            _ => None,
        })
        .collect();
    // Ids generated so far: per (collection, org) for tenant collections, per collection for global ones.
    let mut ids: HashMap<(String, Option<Uuid>), Vec<Uuid>> = HashMap::new();
    let mut rows_written = vec![];
    let mut activity_rows = 0u64;
    let now = truncate_micros(Utc::now());
    for collection in ordered(schema) {
        let total = options
            .counts
            .get(&collection.name)
            .copied()
            .unwrap_or_else(|| (collection.demo_count.unwrap_or(0) as f64 * options.scale).round() as u64);
        if total == 0 {
            continue;
        }
        let started = Instant::now();
        let table = collection.table();
        let mut columns = vec!["id".to_string()];
        if !collection.global {
            columns.push("org".into());
        }
        columns.extend(["created_at", "updated_at", "version"].map(String::from));
        columns.extend(collection.fields.iter().map(|f| f.name.clone()));
        let per_statement = (30_000 / columns.len()).clamp(1, 500);
        let mut batch = Batch {
            columns: columns.clone(),
            rows: Vec::with_capacity(per_statement),
        };
        let mut activity = Batch {
            columns: ACTIVITY_COLUMNS.map(String::from).to_vec(),
            rows: vec![],
        };
        let scopes: Vec<Option<Uuid>> = if collection.global {
            vec![None]
        } else {
            orgs.iter().map(|(id, _)| Some(*id)).collect()
        };
        let per_scope = total.div_ceil(scopes.len() as u64);
        let mut tx = db.begin().await?;
        let mut serial = 0u64;
        let mut written = 0u64;
        let mut attempted = 0u64;
        let mut pending: HashMap<Uuid, Option<Uuid>> = HashMap::new();
        for scope in &scopes {
            for _ in 0..per_scope {
                if attempted >= total {
                    break;
                }
                serial += 1;
                let id = Uuid::now_v7();
                let created = now - Duration::seconds(rng.random_range(0..(365 * 86_400)));
                let mut row = vec![SqlValue::Uuid(id)];
                if let Some(org) = scope {
                    row.push(SqlValue::Uuid(*org));
                }
                row.extend([
                    SqlValue::Datetime(created),
                    SqlValue::Datetime(created),
                    SqlValue::Int(1),
                ]);
                let mut complete = true;
                for field in &collection.fields {
                    let value = match &field.kind {
                        FieldKind::Relation { to, .. } => {
                            let candidates = match to {
                                RelationTarget::Users => scope.and_then(|org| members.get(&org)),
                                RelationTarget::Collection(target) => {
                                    let global = schema.app.collection(target).is_some_and(|c| c.global);
                                    ids.get(&(target.clone(), if global { None } else { *scope }))
                                }
                            };
                            match candidates.filter(|c| !c.is_empty()) {
                                Some(list) if field.required || rng.random_bool(0.85) => {
                                    Some(SqlValue::Uuid(list[rng.random_range(0..list.len())]))
                                }
                                _ => None,
                            }
                        }
                        _ if !field.required && rng.random_bool(0.1) => None,
                        _ => random_value(&mut rng, collection, field, serial, &patterns),
                    };
                    match value {
                        Some(v) => row.push(v),
                        None if field.required => {
                            complete = false;
                            break;
                        }
                        None => row.push(SqlValue::Null),
                    }
                }
                if !complete {
                    continue;
                }
                pending.insert(id, *scope);
                batch.rows.push(row);
                attempted += 1;
                if options.activity
                    && let Some(org) = scope
                {
                    let changes = serde_json::json!({ "demo": true });
                    activity
                        .rows
                        .push(activity_row(*org, created, &collection.name, id, "create", changes));
                    activity_rows += 1;
                    if activity.rows.len() >= 3_000 {
                        flush(&mut tx, "keel_activity", &mut activity).await?;
                    }
                }
                if batch.rows.len() >= per_statement {
                    let inserted = flush(&mut tx, &table, &mut batch).await?;
                    written += remember(&mut ids, &mut pending, &collection.name, inserted);
                }
            }
        }
        let inserted = flush(&mut tx, &table, &mut batch).await?;
        written += remember(&mut ids, &mut pending, &collection.name, inserted);
        flush(&mut tx, "keel_activity", &mut activity).await?;
        tx.commit().await?;
        eprintln!(
            "  {:<20} {:>9} rows in {:.1} s",
            collection.name,
            written,
            started.elapsed().as_secs_f64()
        );
        rows_written.push((collection.name.clone(), written));
    }
    if options.activity && options.activity_target > activity_rows {
        activity_rows += top_up_activity(db, &ids, &mut rng, options.activity_target - activity_rows).await?;
    }
    Ok(Generated {
        orgs,
        rows: rows_written,
        activity_rows,
    })
}

/// Adds `extra` update entries for random records, so the log reaches the seed's volume.
async fn top_up_activity(
    db: &Db,
    ids: &HashMap<(String, Option<Uuid>), Vec<Uuid>>,
    rng: &mut StdRng,
    extra: u64,
) -> Result<u64> {
    let started = Instant::now();
    let now = truncate_micros(Utc::now());
    let records: Vec<(&String, Uuid, &Vec<Uuid>)> = ids
        .iter()
        .filter_map(|((collection, scope), list)| scope.map(|org| (collection, org, list)))
        .filter(|(_, _, list)| !list.is_empty())
        .collect();
    if records.is_empty() {
        return Ok(0);
    }
    let mut tx = db.begin().await?;
    let mut activity = Batch {
        columns: ACTIVITY_COLUMNS.map(String::from).to_vec(),
        rows: vec![],
    };
    for _ in 0..extra {
        let (collection, org, list) = records[rng.random_range(0..records.len())];
        let record = list[rng.random_range(0..list.len())];
        let at = now - Duration::seconds(rng.random_range(0..(180 * 86_400)));
        let changes = serde_json::json!({ "changed": { "demo": { "old": 1, "new": 2 } } });
        activity
            .rows
            .push(activity_row(org, at, collection, record, "update", changes));
        if activity.rows.len() >= 3_000 {
            flush(&mut tx, "keel_activity", &mut activity).await?;
        }
    }
    flush(&mut tx, "keel_activity", &mut activity).await?;
    tx.commit().await?;
    eprintln!(
        "  {:<20} {:>9} rows in {:.1} s",
        "activity (updates)",
        extra,
        started.elapsed().as_secs_f64()
    );
    Ok(extra)
}

const ACTIVITY_COLUMNS: [&str; 9] = [
    "id",
    "org",
    "created_at",
    "collection",
    "record",
    "action",
    "changes",
    "request_id",
    "count",
];

fn activity_row(
    org: Uuid,
    at: chrono::DateTime<Utc>,
    collection: &str,
    record: Uuid,
    action: &str,
    changes: serde_json::Value,
) -> Vec<SqlValue> {
    vec![
        SqlValue::Uuid(Uuid::now_v7()),
        SqlValue::Uuid(org),
        SqlValue::Datetime(at),
        SqlValue::Text(collection.to_string()),
        SqlValue::Text(record.to_string()),
        SqlValue::Text(action.to_string()),
        SqlValue::Json(changes),
        SqlValue::Text("demo".into()),
        SqlValue::Int(1),
    ]
}

pub async fn run(args: DemoArgs) -> Result<()> {
    let Some(source) = examples::spec(&args.app) else {
        let names: Vec<&str> = examples::EXAMPLES.iter().map(|(n, _)| *n).collect();
        bail!("no example app '{}'; choose one of: {}", args.app, names.join(", "));
    };
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| PathBuf::from("keel-data").join(format!("demo-{}", args.app)));
    // A demo whose generation did not finish is thrown away, never half-reused.
    let ready_marker = data_dir.join("demo-ready");
    if (args.fresh || !ready_marker.exists()) && data_dir.exists() {
        std::fs::remove_dir_all(&data_dir).with_context(|| format!("removing {}", data_dir.display()))?;
    }
    std::fs::create_dir_all(&data_dir)?;
    let spec_path = data_dir.join("keel.toml");
    std::fs::write(&spec_path, source)?;
    let mut config = args.config;
    config.app.spec = spec_path.clone();
    config.app.data_dir = data_dir.clone();
    config.app.migrate_on_start = true;
    config.database.url = None;
    config.server.port = args.port;
    config.log.format = "pretty".into();
    config.log.level = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,keel=info".into());
    keel_server::init_logging(&config.log);
    // The examples schedule backups; without a configured key the demo makes its own, in
    // the data directory (a real deployment keeps it apart from the backups).
    if config.backup.key.is_none() && config.backup.key_file.is_none() {
        let key_file = data_dir.join("backup.key");
        if !key_file.exists() {
            std::fs::write(&key_file, keel_server::backup::generate_identity().0 + "\n")?;
        }
        config.backup.key_file = Some(key_file);
    }
    // Account emails (verification, reset links): without an SMTP server the demo writes
    // them to its log, so the links can be followed from the terminal. The HOA example
    // (seed 002: residents join their community) requires verified addresses.
    if !config.smtp.sends() {
        config.smtp.log_only = true;
    }
    if args.app == "hoa" {
        config.auth.require_verified_email = true;
    }
    config
        .auth
        .public_url
        .get_or_insert_with(|| format!("http://127.0.0.1:{}", args.port));
    let schema =
        keel_server::load_schema(source).map_err(|p| anyhow::anyhow!("example spec problems:\n{}", p.join("\n")))?;
    let db = keel_server::open_database(&config, &schema).await?;
    let existing = system::orgs_all(&db, None, 1).await?;
    let first_org = if existing.is_empty() {
        eprintln!(
            "keel demo {}: generating sample data (seed 42) into {}",
            args.app,
            data_dir.display()
        );
        let started = Instant::now();
        let demo = &schema.app.demo;
        let generated = generate(
            &db,
            &schema,
            &GenOptions {
                orgs: ((demo.orgs as f64 * args.scale.min(1.0)).ceil() as u32).max(1),
                users_per_org: demo.users_per_org,
                scale: args.scale,
                counts: HashMap::new(),
                seed: 42,
                activity: true,
                activity_target: (demo.activity as f64 * args.scale).round() as u64,
            },
        )
        .await?;
        let total: u64 = generated.rows.iter().map(|(_, n)| n).sum();
        eprintln!(
            "  {} orgs, {total} records and {} activity rows in {:.1} s",
            generated.orgs.len(),
            generated.activity_rows,
            started.elapsed().as_secs_f64()
        );
        std::fs::write(&ready_marker, "generated with seed 42\n")?;
        generated.orgs.first().map(|(_, slug)| slug.clone()).unwrap_or_default()
    } else {
        eprintln!(
            "keel demo {}: reusing the data in {} (--fresh regenerates it)",
            args.app,
            data_dir.display()
        );
        existing[0].slug.clone()
    };
    let collection = schema
        .app
        .collections
        .iter()
        .find(|c| !c.system && !c.global)
        .map(|c| c.name.clone())
        .unwrap_or_default();
    let base = format!("http://127.0.0.1:{}", args.port);
    println!();
    println!(
        "Keel demo: {} on embedded SQLite ({})",
        args.app,
        data_dir.join("keel.db").display()
    );
    if config.console.enabled {
        println!("  console:     {base}/_/   (sign in as either account below)");
    }
    println!("  superuser:   {SUPERUSER_EMAIL} / {DEMO_PASSWORD}");
    println!("  org owner:   owner@{first_org}.demo.keel / {DEMO_PASSWORD}   (org '{first_org}')");
    println!();
    println!("  TOKEN=$(curl -s {base}/api/v1/auth/login -H 'content-type: application/json' \\");
    println!(
        "      -d '{{\"email\":\"owner@{first_org}.demo.keel\",\"password\":\"{DEMO_PASSWORD}\"}}' | sed 's/.*\"token\":\"\\([^\"]*\\)\".*/\\1/')"
    );
    println!("  curl -s -H \"Authorization: Bearer $TOKEN\" '{base}/api/v1/orgs/{first_org}/{collection}?limit=5'");
    println!("  curl -s {base}/api/v1/openapi.json | head -c 300");
    if config.smtp.log_only {
        println!("  account emails (verification, password reset) are written to this log, not sent");
    }
    if config.auth.require_verified_email {
        println!("  new sign-ups must verify their address (auth.require_verified_email) before using the API");
    }
    println!();
    if !args.serve {
        return Ok(());
    }
    let app = keel_server::App::with_parts(config, schema, db).await?;
    println!("serving on http://{} (Ctrl-C stops)", app.address);
    app.run_until(keel_server::shutdown_signal()).await?;
    Ok(())
}
