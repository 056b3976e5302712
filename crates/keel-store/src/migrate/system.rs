//! Keel's own tables, by system version.

use keel_query::Dialect;

use super::Step;
use super::ddl::types;

/// The version of Keel's own tables this build expects; `keel_system` records a database's.
pub const SYSTEM_VERSION: i64 = 10;

/// Keel's own tables, step by step: a database at system version `v` gets the steps after
/// `v`, in one transaction with the app's migration.
pub fn system_steps(dialect: Dialect, from: i64) -> Vec<Step> {
    let mut steps = vec![];
    if from < 1 {
        steps.push(Step {
            description: "create Keel's system tables".into(),
            statements: system_tables(dialect),
            destructive: false,
        });
    }
    if from < 2 {
        let mut statements = vec![
            "CREATE TABLE keel_system (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)".to_string(),
            "INSERT INTO keel_system (id, version) VALUES (1, 2)".to_string(),
        ];
        statements.extend(crate::jobs::tables(dialect));
        steps.push(Step {
            description: "create the job queue's tables (system version 2)".into(),
            statements,
            destructive: false,
        });
    }
    if from < 3 {
        let mut statements = vec!["UPDATE keel_system SET version = 3 WHERE id = 1".to_string()];
        statements.extend(crate::uploads::tables(dialect));
        statements.extend(crate::files::tables(dialect));
        steps.push(Step {
            description: "create the upload spool and the file index (system version 3)".into(),
            statements,
            destructive: false,
        });
    }
    if from < 4 {
        let mut statements = vec!["UPDATE keel_system SET version = 4 WHERE id = 1".to_string()];
        statements.extend(crate::security::tables(dialect));
        steps.push(Step {
            description: "create the login-failure table and the key ring (system version 4)".into(),
            statements,
            destructive: false,
        });
    }
    if from < 5 {
        let mut statements = vec!["UPDATE keel_system SET version = 5 WHERE id = 1".to_string()];
        statements.extend(crate::backups::tables(dialect));
        statements.extend(crate::errors::tables(dialect));
        steps.push(Step {
            description: "create the backup runs, the deferred deletes and the error groups (system version 5)".into(),
            statements,
            destructive: false,
        });
    }
    if from < 6 {
        // The collections' search indexes move to external content in `plan` (SQLite).
        steps.push(Step {
            description: "full-text search without a copy of the text (system version 6)".into(),
            statements: vec!["UPDATE keel_system SET version = 6 WHERE id = 1".to_string()],
            destructive: false,
        });
    }
    if from < 7 {
        let mut statements = vec!["UPDATE keel_system SET version = 7 WHERE id = 1".to_string()];
        statements.extend(crate::accounts::tables(dialect));
        statements.extend(crate::invitations::tables(dialect));
        statements.extend(crate::mfa::tables(dialect));
        steps.push(Step {
            description: "verified addresses, account-flow tokens, session origins and org invitations (system version 7)".into(),
            statements,
            destructive: false,
        });
    }
    if from < 8 {
        let mut statements = vec!["UPDATE keel_system SET version = 8 WHERE id = 1".to_string()];
        statements.extend(crate::identities::tables(dialect));
        steps.push(Step {
            description: "sign-in with OpenID Connect providers and org-required second factors (system version 8)"
                .into(),
            statements,
            destructive: false,
        });
    }
    if from < 9 {
        let mut statements = vec!["UPDATE keel_system SET version = 9 WHERE id = 1".to_string()];
        statements.extend(crate::audit::tables(dialect));
        steps.push(Step {
            description: "the operators' audit log (system version 9)".into(),
            statements,
            destructive: false,
        });
    }
    if from < 10 {
        let mut statements = vec!["UPDATE keel_system SET version = 10 WHERE id = 1".to_string()];
        statements.extend(crate::changes::tables(dialect));
        steps.push(Step {
            description: "the change log realtime streams read (system version 10)".into(),
            statements,
            destructive: false,
        });
    }
    steps
}

/// The system tables every Keel database has (system version 1).
fn system_tables(dialect: Dialect) -> Vec<String> {
    let (uuid, ts, boolean, bigint) = types(dialect);
    vec![
        format!(
            "CREATE TABLE keel_migrations (version {bigint} PRIMARY KEY, applied_at {ts} NOT NULL, description TEXT NOT NULL, app TEXT NOT NULL, statements TEXT NOT NULL)"
        ),
        format!(
            "CREATE TABLE keel_users (id {uuid} PRIMARY KEY, email TEXT NOT NULL, name TEXT, password_hash TEXT NOT NULL, superuser {boolean} NOT NULL DEFAULT {}, created_at {ts} NOT NULL, updated_at {ts} NOT NULL)",
            if dialect == Dialect::Sqlite { "0" } else { "false" }
        ),
        "CREATE UNIQUE INDEX keel_users_email ON keel_users (email)".to_string(),
        format!(
            "CREATE TABLE keel_orgs (id {uuid} PRIMARY KEY, slug TEXT NOT NULL, name TEXT NOT NULL, created_at {ts} NOT NULL)"
        ),
        "CREATE UNIQUE INDEX keel_orgs_slug ON keel_orgs (slug)".to_string(),
        format!(
            "CREATE TABLE keel_memberships (org_id {uuid} NOT NULL REFERENCES keel_orgs (id) ON DELETE CASCADE, user_id {uuid} NOT NULL REFERENCES keel_users (id) ON DELETE CASCADE, role TEXT NOT NULL, created_at {ts} NOT NULL, PRIMARY KEY (org_id, user_id))"
        ),
        "CREATE INDEX keel_memberships_user ON keel_memberships (user_id, org_id)".to_string(),
        format!(
            "CREATE TABLE keel_sessions (id {uuid} PRIMARY KEY, token_hash TEXT NOT NULL, user_id {uuid} NOT NULL REFERENCES keel_users (id) ON DELETE CASCADE, created_at {ts} NOT NULL, expires_at {ts} NOT NULL, revoked_at {ts})"
        ),
        "CREATE UNIQUE INDEX keel_sessions_token ON keel_sessions (token_hash)".to_string(),
        "CREATE INDEX keel_sessions_user ON keel_sessions (user_id)".to_string(),
        format!(
            "CREATE TABLE keel_api_keys (id {uuid} PRIMARY KEY, token_hash TEXT NOT NULL, org_id {uuid} NOT NULL REFERENCES keel_orgs (id) ON DELETE CASCADE, role TEXT NOT NULL, name TEXT NOT NULL, created_by {uuid} REFERENCES keel_users (id) ON DELETE SET NULL, created_at {ts} NOT NULL, expires_at {ts}, revoked_at {ts})"
        ),
        "CREATE UNIQUE INDEX keel_api_keys_token ON keel_api_keys (token_hash)".to_string(),
        "CREATE INDEX keel_api_keys_org ON keel_api_keys (org_id)".to_string(),
    ]
}
