//! Migrations planned from the spec (D7): the planner diffs the app recorded by the last
//! migration against the new one and emits DDL for the backend; `apply` runs it in one
//! transaction and records it in `keel_migrations`. Destructive steps need an explicit flag.

use chrono::Utc;
use keel_query::{Dialect, Schema, SqlValue};
use keel_spec::App;

use crate::db::{Db, Tx};
use crate::error::StoreError;

mod ddl;
pub(crate) use ddl::types as column_types;
mod diff;
mod system;

pub use diff::plan;
pub use system::{SYSTEM_VERSION, system_steps};

/// One step of a plan: a human description and its SQL statements.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub description: String,
    pub statements: Vec<String>,
    pub destructive: bool,
}

#[derive(Debug, Clone)]
pub struct Plan {
    /// The version recorded last (0 for an empty database).
    pub from_version: i64,
    pub steps: Vec<Step>,
    /// SQLite table rebuilds need foreign keys off around the transaction.
    pub rebuilds: bool,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub fn destructive_steps(&self) -> Vec<&Step> {
        self.steps.iter().filter(|s| s.destructive).collect()
    }

    /// The plan as an SQL script with a comment per step.
    pub fn to_sql(&self) -> String {
        let mut out = String::new();
        for step in &self.steps {
            out.push_str(&format!(
                "-- {}{}\n",
                step.description,
                if step.destructive { " (DESTRUCTIVE)" } else { "" }
            ));
            for statement in &step.statements {
                out.push_str(statement);
                out.push_str(";\n");
            }
            out.push('\n');
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("the plan has destructive steps; re-run with --allow-destructive to apply them:\n{0}")]
    Destructive(String),
    #[error("cannot migrate: {0}")]
    Unsupported(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a database has recorded: the latest migration's version, the app it brought the
/// database to, and the version of Keel's own tables.
struct Recorded {
    version: i64,
    app: Option<App>,
    system: i64,
}

/// The latest recorded migration: its version and the app it brought the database to.
pub async fn current(db: &Db) -> Result<(i64, Option<App>), StoreError> {
    let found = db.query_one(&tables_exist(db.dialect())).await?;
    if found.and_then(|row| row[0].int()).unwrap_or(0) == 0 {
        return Ok((0, None));
    }
    recorded(db.query_one(&latest_migration(db.dialect())).await?)
}

/// Where the recorded state is read: the database (planning), or a migration's own
/// transaction (so a pool of one connection can migrate, and the plan is made under the lock).
enum Source<'a> {
    Db(&'a Db),
    Tx(&'a mut Tx),
}

impl Source<'_> {
    fn dialect(&self) -> Dialect {
        match self {
            Source::Db(db) => db.dialect(),
            Source::Tx(tx) => tx.dialect(),
        }
    }

    async fn query_one(&mut self, sql: &keel_query::Sql) -> Result<Option<crate::Row>, StoreError> {
        match self {
            Source::Db(db) => Ok(db.query_primary(sql).await?.into_iter().next()),
            Source::Tx(tx) => tx.query_one(sql).await,
        }
    }
}

async fn recorded_from(mut source: Source<'_>) -> Result<Recorded, StoreError> {
    let dialect = source.dialect();
    let found = source.query_one(&tables_exist(dialect)).await?;
    let (migrations, system) = found
        .map(|row| (row[0].int().unwrap_or(0), row[1].int().unwrap_or(0)))
        .unwrap_or((0, 0));
    if migrations == 0 {
        return Ok(Recorded {
            version: 0,
            app: None,
            system: 0,
        });
    }
    let (version, app) = recorded(source.query_one(&latest_migration(dialect)).await?)?;
    let system = if system == 0 {
        1
    } else {
        let sql = crate::db::portable(dialect, "SELECT version FROM keel_system WHERE id = 1", vec![]);
        let row = source.query_one(&sql).await?;
        row.and_then(|row| row[0].int()).unwrap_or(1)
    };
    Ok(Recorded { version, app, system })
}

/// Whether `keel_migrations` and `keel_system` exist (1 or 0 each).
fn tables_exist(dialect: Dialect) -> keel_query::Sql {
    let text = match dialect {
        Dialect::Sqlite => {
            "SELECT count(*) FILTER (WHERE name = 'keel_migrations'), count(*) FILTER (WHERE name = 'keel_system') FROM sqlite_master WHERE type = 'table'"
        }
        Dialect::Postgres => {
            "SELECT count(*) FILTER (WHERE tablename = 'keel_migrations'), count(*) FILTER (WHERE tablename = 'keel_system') FROM pg_catalog.pg_tables WHERE schemaname = current_schema()"
        }
    };
    crate::db::portable(dialect, text, vec![])
}

fn latest_migration(dialect: Dialect) -> keel_query::Sql {
    crate::db::portable(
        dialect,
        "SELECT version, app FROM keel_migrations ORDER BY version DESC LIMIT 1",
        vec![],
    )
}

fn recorded(row: Option<crate::Row>) -> Result<(i64, Option<App>), StoreError> {
    match row {
        None => Ok((0, None)),
        Some(row) => {
            let version = row[0].int().unwrap_or(0);
            let app: App = serde_json::from_str(row[1].text().unwrap_or("{}")).map_err(|e| {
                StoreError::Other(format!("the recorded app of migration {version} cannot be read: {e}"))
            })?;
            Ok((version, Some(app)))
        }
    }
}

fn plan_from(dialect: Dialect, recorded: Recorded, next: &Schema) -> Result<Plan, MigrateError> {
    let Recorded {
        version,
        app: previous_app,
        system,
    } = recorded;
    let previous = match previous_app {
        Some(app) => Some(Schema::new(app).map_err(|problems| {
            MigrateError::Unsupported(format!("the recorded app no longer checks: {problems:?}"))
        })?),
        None => None,
    };
    plan(dialect, previous.as_ref(), next, version, system)
}

/// Plans the migration from the database's recorded state to `next`.
pub async fn plan_for(db: &Db, next: &Schema) -> Result<Plan, MigrateError> {
    plan_from(db.dialect(), recorded_from(Source::Db(db)).await?, next)
}

/// Applies the plan in one transaction and records it. Concurrent instances serialise on
/// an advisory lock (PostgreSQL) or the single writer (SQLite); a plan that went stale
/// while waiting is recomputed.
pub async fn apply(db: &Db, next: &Schema, allow_destructive: bool) -> Result<Plan, MigrateError> {
    let plan = plan_for(db, next).await?;
    if plan.is_empty() {
        return Ok(plan);
    }
    check_destructive(&plan, allow_destructive)?;
    if let (Db::Sqlite(sqlite), true) = (db, plan.rebuilds) {
        sqlite
            .with_writer(|c| Ok(c.execute_batch("PRAGMA foreign_keys = OFF")?))
            .await?;
    }
    let result = apply_in_transaction(db, next, allow_destructive).await;
    if let (Db::Sqlite(sqlite), true) = (db, plan.rebuilds) {
        sqlite
            .with_writer(|c| Ok(c.execute_batch("PRAGMA foreign_keys = ON")?))
            .await?;
    }
    result
}

fn check_destructive(plan: &Plan, allow_destructive: bool) -> Result<(), MigrateError> {
    let destructive = plan.destructive_steps();
    if !destructive.is_empty() && !allow_destructive {
        let list: Vec<String> = destructive.iter().map(|s| format!("  - {}", s.description)).collect();
        return Err(MigrateError::Destructive(list.join("\n")));
    }
    Ok(())
}

async fn apply_in_transaction(db: &Db, next: &Schema, allow_destructive: bool) -> Result<Plan, MigrateError> {
    let mut tx = db.begin().await?;
    if let Tx::Postgres(..) = &tx {
        tx.execute(&tx.portable("SELECT pg_advisory_xact_lock(4242424242)", vec![]))
            .await?;
    }
    // Re-plan under the lock, inside the transaction: another instance may have migrated meanwhile.
    let plan = plan_from(tx.dialect(), recorded_from(Source::Tx(&mut tx)).await?, next)?;
    if plan.is_empty() {
        return Ok(plan);
    }
    check_destructive(&plan, allow_destructive)?;
    for step in &plan.steps {
        for statement in &step.statements {
            tx.execute_script(statement).await?;
        }
    }
    if let Tx::Sqlite(sqlite, _) = &tx
        && plan.rebuilds
    {
        let broken: i64 = sqlite
            .connection()
            .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| r.get(0))
            .map_err(StoreError::from)?;
        if broken > 0 {
            return Err(MigrateError::Unsupported(format!(
                "{broken} records would break foreign keys"
            )));
        }
    }
    let description: Vec<&str> = plan.steps.iter().map(|s| s.description.as_str()).collect();
    let record = tx.portable(
        "INSERT INTO keel_migrations (version, applied_at, description, app, statements) VALUES ($1, $2, $3, $4, $5)",
        vec![
            SqlValue::Int(plan.from_version + 1),
            SqlValue::Datetime(keel_query::value::truncate_micros(Utc::now())),
            SqlValue::Text(description.join("; ")),
            SqlValue::Text(serde_json::to_string(&next.app).expect("the app serialises")),
            SqlValue::Text(plan.to_sql()),
        ],
    );
    tx.execute(&record).await?;
    tx.commit().await?;
    Ok(plan)
}

/// The recorded migrations, newest first: (version, applied_at, description).
pub async fn history(db: &Db) -> Result<Vec<(i64, String, String)>, StoreError> {
    if current(db).await?.1.is_none() {
        return Ok(vec![]);
    }
    let rows = db
        .query(&db.portable(
            "SELECT version, applied_at, description FROM keel_migrations ORDER BY version DESC",
            vec![],
        ))
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let mut cells = row.into_iter();
            let version = cells.next().and_then(|c| c.int()).unwrap_or(0);
            let at = cells.next().and_then(|c| c.into_text()).unwrap_or_default();
            let description = cells.next().and_then(|c| c.into_text()).unwrap_or_default();
            (version, at, description)
        })
        .collect())
}
