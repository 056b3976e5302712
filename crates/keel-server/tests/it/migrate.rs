//! Migrations planned from the spec, on both backends: create, add, widen, drop (with the
//! flag), refusals, and `serve` refusing to start with pending migrations.

use keel_query::{Schema, SqlValue};
use keel_store::migrate::{self, MigrateError};
use keel_testkit::{Backend, TestDb, both};

fn schema(collections: &str) -> Schema {
    let source = format!("[app]\nname = \"m\"\n[roles]\norder = [\"owner\", \"member\"]\n{collections}");
    keel_server::load_schema(&source).unwrap_or_else(|p| panic!("{p:?}"))
}

const V1: &str = r#"
[collections.notes]
fields.title = { type = "text", required = true }
fields.n = { type = "integer" }
"#;

const V2: &str = r#"
[collections.notes]
fields.title = { type = "text", required = true, search = true }
fields.n = { type = "integer" }
fields.score = { type = "integer" }
fields.done = { type = "bool", required = true, default = false }
indexes = [["done", "-score"]]
"#;

const V3: &str = r#"
[collections.notes]
fields.title = { type = "text", required = true, search = true }
fields.score = { type = "number" }
fields.done = { type = "bool", required = true, default = false }
indexes = [["done", "-score"]]
"#;

async fn insert_note(db: &keel_store::Db, org: uuid::Uuid) -> uuid::Uuid {
    let id = uuid::Uuid::now_v7();
    let now = SqlValue::Datetime(keel_query::value::truncate_micros(chrono::Utc::now()));
    let mut tx = db.begin().await.unwrap();
    tx.execute(&tx.portable(
        "INSERT INTO notes (id, org, created_at, updated_at, version, title, n) VALUES ($1, $2, $3, $3, 1, $4, $5)",
        vec![
            SqlValue::Uuid(id),
            SqlValue::Uuid(org),
            now,
            SqlValue::Text("kept".into()),
            SqlValue::Int(7),
        ],
    ))
    .await
    .unwrap();
    tx.commit().await.unwrap();
    id
}

async fn plans_apply_and_record(backend: Backend) {
    let database = TestDb::new(backend).await;
    let db = database.connect().await;
    let v1 = schema(V1);
    let plan = migrate::plan_for(&db, &v1).await.unwrap();
    assert_eq!(plan.from_version, 0);
    let sql = plan.to_sql();
    assert!(sql.contains("CREATE TABLE keel_users"), "{sql}");
    assert!(sql.contains("CREATE TABLE \"notes\""), "{sql}");
    assert!(
        sql.contains("CREATE TABLE \"keel_activity\""),
        "the activity log is a built-in collection: {sql}"
    );
    migrate::apply(&db, &v1, false).await.unwrap();
    assert!(
        migrate::plan_for(&db, &v1).await.unwrap().is_empty(),
        "nothing is pending after apply"
    );
    assert_eq!(migrate::history(&db).await.unwrap().len(), 1);

    let org = keel_store::system::org_insert(&db, "acme", "Acme", None, "owner")
        .await
        .unwrap()
        .id;
    let id = insert_note(&db, org).await;

    // Adding fields, an index and search is not destructive; existing rows get the default.
    let v2 = schema(V2);
    let plan = migrate::plan_for(&db, &v2).await.unwrap();
    assert!(plan.destructive_steps().is_empty(), "{}", plan.to_sql());
    assert!(plan.to_sql().contains("ADD COLUMN \"done\""), "{}", plan.to_sql());
    migrate::apply(&db, &v2, false).await.unwrap();
    let row = db
        .query_one(&db.portable(
            "SELECT title, done, n FROM notes WHERE id = $1",
            vec![SqlValue::Uuid(id)],
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row[0].text(), Some("kept"));
    assert_eq!(row[1].bool(), Some(false));
    assert_eq!(row[2].int(), Some(7));
    let mut tx = db.begin().await.unwrap();
    tx.execute(&tx.portable("UPDATE notes SET score = 41 WHERE id = $1", vec![SqlValue::Uuid(id)]))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // Dropping a field is destructive: refused without the flag, applied with it.
    let v3 = schema(V3);
    let plan = migrate::plan_for(&db, &v3).await.unwrap();
    assert_eq!(plan.destructive_steps().len(), 1, "{}", plan.to_sql());
    match migrate::apply(&db, &v3, false).await {
        Err(MigrateError::Destructive(list)) => assert!(list.contains("drop field n"), "{list}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        migrate::history(&db).await.unwrap().len(),
        2,
        "a refused plan records nothing"
    );
    migrate::apply(&db, &v3, true).await.unwrap();
    let row = db
        .query_one(&db.portable("SELECT title, score FROM notes WHERE id = $1", vec![SqlValue::Uuid(id)]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row[0].text(), Some("kept"), "rows survive the change");
    assert_eq!(row[1].int(), Some(41), "integer widened to number keeps its value");
    assert!(migrate::plan_for(&db, &v3).await.unwrap().is_empty());
    assert_eq!(migrate::history(&db).await.unwrap().len(), 3);
}

async fn refuses_what_it_cannot_do(backend: Backend) {
    let database = TestDb::new(backend).await;
    let db = database.connect().await;
    migrate::apply(&db, &schema(V1), false).await.unwrap();
    let needs_default = schema(
        "[collections.notes]\nfields.title = { type = \"text\", required = true }\nfields.n = { type = \"integer\" }\nfields.owner = { type = \"text\", required = true }\n",
    );
    match migrate::plan_for(&db, &needs_default).await {
        Err(MigrateError::Unsupported(message)) => assert!(message.contains("notes.owner"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let narrowed = schema(
        "[collections.notes]\nfields.title = { type = \"text\", required = true }\nfields.n = { type = \"bool\" }\n",
    );
    let plan = migrate::plan_for(&db, &narrowed).await.unwrap();
    assert!(
        plan.destructive_steps()
            .iter()
            .any(|s| s.description.contains("change n from integer to bool")),
        "{}",
        plan.to_sql()
    );
    let dropped = schema("[collections.other]\nfields.x = { type = \"text\" }\n");
    let plan = migrate::plan_for(&db, &dropped).await.unwrap();
    assert!(
        plan.destructive_steps()
            .iter()
            .any(|s| s.description.contains("drop collection notes"))
    );
}

async fn serve_refuses_pending_migrations(backend: Backend) {
    let database = TestDb::new(backend).await;
    let mut config = keel_testkit::test_config(database.dir.path());
    database.configure(&mut config);
    config.app.migrate_on_start = false;
    match keel_server::open_database(&config, &schema(V1)).await {
        Err(keel_server::StartError::PendingMigrations(steps)) => {
            assert!(steps.contains("create collection notes"), "{steps}")
        }
        Err(other) => panic!("expected pending migrations, got {other}"),
        Ok(_) => panic!("expected pending migrations"),
    }
    config.app.migrate_on_start = true;
    assert!(keel_server::open_database(&config, &schema(V1)).await.is_ok());
    // Once migrated, a plain start works.
    config.app.migrate_on_start = false;
    assert!(keel_server::open_database(&config, &schema(V1)).await.is_ok());
}

/// A database from before system version 6 (SQLite's search index kept its own copy of the
/// text, with the record id) is brought to an index over the record table, and searches,
/// updates and deletes keep working on it.
async fn search_index_upgrades_from_version_5(backend: Backend) {
    let database = TestDb::new(backend).await;
    let db = database.connect().await;
    migrate::apply(&db, &schema(V1), false).await.unwrap();
    let org = keel_store::system::org_insert(&db, "acme", "Acme", None, "owner")
        .await
        .unwrap()
        .id;
    let kept = insert_note(&db, org).await;
    let v2 = schema(V2);
    migrate::apply(&db, &v2, false).await.unwrap();
    let mut tx = db.begin().await.unwrap();
    if backend == Backend::Sqlite {
        // The version-5 layout, as that migration created it.
        tx.execute_script(
            "DROP TRIGGER notes_fts_insert; DROP TRIGGER notes_fts_delete; DROP TRIGGER notes_fts_update; DROP TABLE notes_fts;
             CREATE VIRTUAL TABLE notes_fts USING fts5(id UNINDEXED, title, tokenize = 'unicode61 remove_diacritics 2');
             INSERT INTO notes_fts (rowid, id, title) SELECT rowid, id, title FROM notes;
             CREATE TRIGGER notes_fts_insert AFTER INSERT ON notes BEGIN INSERT INTO notes_fts (rowid, id, title) VALUES (new.rowid, new.id, new.title); END;
             CREATE TRIGGER notes_fts_delete AFTER DELETE ON notes BEGIN DELETE FROM notes_fts WHERE rowid = old.rowid; END;
             CREATE TRIGGER notes_fts_update AFTER UPDATE ON notes BEGIN DELETE FROM notes_fts WHERE rowid = old.rowid; INSERT INTO notes_fts (rowid, id, title) VALUES (new.rowid, new.id, new.title); END;",
        )
        .await
        .unwrap();
    }
    // Nor what later system versions added (version 7: the account-flow tokens; version 8: identities; version 9: the audit log).
    tx.execute_script(
        "DROP TABLE keel_changes_horizon; DROP TABLE keel_changes; DROP TABLE keel_audit; DROP TABLE keel_oidc_states; DROP TABLE keel_identities; ALTER TABLE keel_orgs DROP COLUMN require_mfa; ALTER TABLE keel_account_tokens DROP COLUMN challenge; DROP TABLE keel_recovery_codes; DROP TABLE keel_totp; DROP TABLE keel_invitations; DROP TABLE keel_account_tokens; ALTER TABLE keel_users DROP COLUMN email_verified_at; ALTER TABLE keel_users DROP COLUMN disabled_at; ALTER TABLE keel_sessions DROP COLUMN last_seen_at; ALTER TABLE keel_sessions DROP COLUMN ip; ALTER TABLE keel_sessions DROP COLUMN user_agent; UPDATE keel_system SET version = 5 WHERE id = 1",
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let plan = migrate::plan_for(&db, &v2).await.unwrap();
    let sql = plan.to_sql();
    assert!(sql.contains("system version 6"), "{sql}");
    assert!(sql.contains("system version 7"), "{sql}");
    assert_eq!(
        sql.contains("rebuild the full-text search of notes"),
        backend == Backend::Sqlite,
        "{sql}"
    );
    migrate::apply(&db, &v2, false).await.unwrap();
    assert!(migrate::plan_for(&db, &v2).await.unwrap().is_empty());
    let version = db
        .query_one(&db.portable("SELECT version FROM keel_system", vec![]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(version[0].int(), Some(migrate::SYSTEM_VERSION));
    if backend == Backend::Sqlite {
        let found = |word: &str| {
            let sql = db.portable(
                "SELECT n.id FROM notes n WHERE n.rowid IN (SELECT rowid FROM notes_fts WHERE notes_fts MATCH $1)",
                vec![SqlValue::Text(word.into())],
            );
            let db = &db;
            async move {
                db.query(&sql)
                    .await
                    .unwrap()
                    .into_iter()
                    .filter_map(|row| row[0].uuid())
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            found("kept").await,
            vec![kept],
            "rows from before the upgrade are found"
        );
        let columns = db
            .query(&db.portable("SELECT name FROM pragma_table_info('notes_fts')", vec![]))
            .await
            .unwrap();
        assert_eq!(columns.len(), 1, "only the searched field: no copy of the id");
        let mut tx = db.begin().await.unwrap();
        tx.execute_script(
            "UPDATE notes SET title = 'moved' WHERE title = 'kept'; UPDATE notes SET score = 3;
             INSERT INTO notes_fts (notes_fts, rank) VALUES ('integrity-check', 1);",
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        assert!(found("kept").await.is_empty());
        assert_eq!(found("moved").await, vec![kept]);
        let mut tx = db.begin().await.unwrap();
        tx.execute_script("DELETE FROM notes; INSERT INTO notes_fts (notes_fts, rank) VALUES ('integrity-check', 1);")
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert!(found("moved").await.is_empty());
    }
}

both!(
    plans_apply_and_record,
    refuses_what_it_cannot_do,
    serve_refuses_pending_migrations,
    search_index_upgrades_from_version_5
);

async fn every_example_app_migrates(backend: Backend) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    for example in ["fleet-compliance", "pms", "hoa", "schedules", "ge-metrics"] {
        let source = std::fs::read_to_string(root.join(example).join("keel.toml")).unwrap();
        let schema = keel_server::load_schema(&source).unwrap_or_else(|p| panic!("{example}: {p:?}"));
        let database = TestDb::new(backend).await;
        let db = database.connect().await;
        migrate::apply(&db, &schema, false)
            .await
            .unwrap_or_else(|e| panic!("{example}: {e}"));
        assert!(
            migrate::plan_for(&db, &schema).await.unwrap().is_empty(),
            "{example}: nothing left to do"
        );
    }
}

both!(every_example_app_migrates);
