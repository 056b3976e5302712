//! Backups (O5) on both backends: a backup taken under write load restores to a consistent
//! state with its files, and the restored app serves them; a wrong key or a damaged archive
//! cannot restore; a non-empty target is refused; file deletes wait for a running backup;
//! the scheduled job records its run in the metrics; retention prunes the target.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use keel_server::backup::{BackupError, Backups, Progress, RestoreTarget};
use keel_server::files::storage::Storage;
use keel_testkit::{Backend, TestApp, both, files_under, pg_url, test_config};
use serde_json::json;

const SPEC: &str = r#"
[app]
name = "fleet"

[roles]
order = ["owner", "admin", "member", "viewer"]

[collections.drivers]
fields.name = { type = "text", required = true }
fields.licence = { type = "file", max_size = "1MB", types = ["application/pdf"] }
rules.view = "role >= viewer"
rules.update = "role >= member"
rules.delete = "role >= admin"

[backup]
schedule = "0 3 * * *"
keep_daily = 7
keep_weekly = 4
keep_monthly = 3
"#;

const PDF: &[u8] = b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n%%EOF\n";

fn key() -> String {
    keel_server::backup::generate_identity().0
}

async fn spawn(backend: Backend, key: &str) -> TestApp {
    let key = key.to_string();
    TestApp::spawn_with(backend, SPEC, move |config| {
        config.backup.key = Some(keel_server::config::Secret(key));
    })
    .await
}

fn backups(app: &TestApp) -> Backups {
    Backups::new(&app.state.config, &app.state.schema.app.backup, "fleet").expect("backups")
}

fn quiet() -> Progress {
    Arc::new(|_, _| {})
}

async fn upload(app: &TestApp, token: &str, driver: &str) -> keel_testkit::TestResponse {
    let headers = vec![
        ("authorization".to_string(), format!("Bearer {token}")),
        ("content-type".to_string(), "application/pdf".to_string()),
    ];
    let path = format!("/api/v1/orgs/acme/drivers/{driver}/files/licence?name=licence.pdf");
    app.request_bytes("POST", &path, headers, Some(PDF.to_vec())).await
}

/// A scratch restore target beside a test: a SQLite file, or a new PostgreSQL database
/// holding the test's schema name (a dump restores into the schema it was taken from).
struct Scratch {
    dir: tempfile::TempDir,
    target: RestoreTarget,
    database: Option<String>,
}

impl Scratch {
    async fn new(app: &TestApp) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        match app.backend {
            Backend::Sqlite => Scratch {
                target: RestoreTarget::Sqlite(dir.path().join("keel.db")),
                dir,
                database: None,
            },
            Backend::Postgres => {
                let database = format!(
                    "keel_restore_{}_{}",
                    std::process::id(),
                    COUNTER.fetch_add(1, Ordering::Relaxed)
                );
                keel_store::backups::pg_execute(&pg_url(), &[format!("CREATE DATABASE {database}")])
                    .await
                    .unwrap();
                let mut url = url::Url::parse(&pg_url()).unwrap();
                url.set_path(&format!("/{database}"));
                Scratch {
                    target: RestoreTarget::Postgres {
                        url: url.to_string(),
                        schema: app.state.config.database.schema.clone().unwrap(),
                    },
                    dir,
                    database: Some(database),
                }
            }
        }
    }

    fn storage(&self) -> Arc<Storage> {
        Arc::new(Storage::local(&self.dir.path().join("files")))
    }

    /// A Keel app on the restored database and files.
    async fn app(&self, schema: &keel_query::Schema) -> keel_server::AppState {
        let mut config = test_config(self.dir.path());
        config.app.migrate_on_start = false;
        if let RestoreTarget::Postgres { url, schema } = &self.target {
            config.database.url = Some(keel_server::config::Secret(url.clone()));
            config.database.schema = Some(schema.clone());
        }
        let db = keel_server::open_database(&config, schema)
            .await
            .expect("the restored database is at the spec's version");
        keel_server::state(config, schema.clone(), db)
    }

    async fn drop_database(self) {
        if let Some(database) = &self.database {
            keel_store::backups::pg_execute(&pg_url(), &[format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")])
                .await
                .unwrap();
        }
    }
}

async fn a_backup_under_write_load_restores_consistently(backend: Backend) {
    let app = spawn(backend, &key()).await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let mut drivers = vec![];
    for i in 0..30 {
        let id = app
            .create(
                "/api/v1/orgs/acme/drivers",
                &owner,
                json!({"name": format!("driver {i}")}),
            )
            .await;
        assert_eq!(upload(&app, &owner, &id).await.status, 201);
        drivers.push(id);
    }
    // Writers go on while the backup runs: new drivers with files, replaced files, deletes.
    let done = AtomicBool::new(false);
    let load = async {
        let mut writes = 0;
        while !done.load(Ordering::SeqCst) || writes < 30 {
            let id = app
                .create(
                    "/api/v1/orgs/acme/drivers",
                    &owner,
                    json!({"name": format!("new {writes}")}),
                )
                .await;
            assert_eq!(upload(&app, &owner, &id).await.status, 201);
            let old = drivers.remove(0);
            if writes % 2 == 0 {
                assert_eq!(upload(&app, &owner, &old).await.status, 201, "replace a file");
                drivers.push(old);
            } else {
                let deleted = app.delete(&format!("/api/v1/orgs/acme/drivers/{old}"), &owner).await;
                assert_eq!(deleted.status, 204);
            }
            drivers.push(id);
            writes += 1;
        }
        writes
    };
    let backups = backups(&app);
    let take = async {
        let report = backups.run(app.db(), app.state.storage.clone(), "manual").await;
        done.store(true, Ordering::SeqCst);
        report
    };
    let (report, writes) = tokio::join!(take, load);
    let report = report.expect("the backup is taken while writes go on");
    assert!(writes >= 30);
    assert!(
        report.missing_files.is_empty(),
        "no file the snapshot names is lost: {:?}",
        report.missing_files
    );
    assert!(report.files >= 30, "{report:?}");

    let scratch = Scratch::new(&app).await;
    let restored = backups
        .restore(&report.name, &scratch.target, scratch.storage(), false, quiet())
        .await
        .expect("restore");
    assert_eq!(restored.files, report.files);
    // Every restored file row has its bytes, and no bytes lack a row.
    let on_disk = files_under(&scratch.dir.path().join("files"));
    assert_eq!(on_disk.len() as i64, restored.manifest.contents.tables["keel_files"]);

    // The restored app serves the same drivers and their files.
    let state = scratch.app(&app.state.schema).await;
    let router = keel_server::router(state.clone());
    let request = |path: String| {
        axum::http::Request::builder()
            .uri(path)
            .header("authorization", format!("Bearer {owner}"))
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let response = keel_testkit::send_to(
        router.clone(),
        request("/api/v1/orgs/acme/drivers?limit=500&count=exact".into()),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len() as i64, restored.manifest.contents.tables["drivers"]);
    // A driver created just before the snapshot may not have its file yet; every file a
    // driver names is there.
    let with_files: Vec<_> = items.iter().filter(|d| !d["licence"].is_null()).collect();
    assert_eq!(with_files.len(), on_disk.len());
    for driver in with_files {
        let file = driver["licence"]["id"].as_str().unwrap();
        let response = keel_testkit::send_to(
            router.clone(),
            request(format!(
                "/api/v1/orgs/acme/drivers/{}/files/licence/{file}",
                driver["id"].as_str().unwrap()
            )),
        )
        .await;
        assert_eq!(response.status(), 200);
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&bytes[..], PDF);
    }
    state.db.close().await;

    // `verify` does the same into scratch copies of its own.
    let verified = backups.verify(&report.name, quiet()).await.expect("verify");
    assert_eq!(verified.manifest, restored.manifest);

    // A second restore into the same target is refused without force, and replaces with it.
    let refused = backups
        .restore(&report.name, &scratch.target, scratch.storage(), false, quiet())
        .await
        .unwrap_err();
    assert!(matches!(refused, BackupError::NotEmpty(_)), "{refused}");
    backups
        .restore(&report.name, &scratch.target, scratch.storage(), true, quiet())
        .await
        .expect("restore with force");
    scratch.drop_database().await;
}

async fn a_wrong_key_or_a_damaged_archive_cannot_restore(backend: Backend) {
    let app = spawn(backend, &key()).await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let report = backups(&app)
        .run(app.db(), app.state.storage.clone(), "manual")
        .await
        .unwrap();

    // The same target, another key.
    let mut config = app.state.config.clone();
    config.backup.key = Some(keel_server::config::Secret(key()));
    let other = Backups::new(&config, &app.state.schema.app.backup, "fleet").unwrap();
    assert_eq!(
        other.list().await.unwrap().len(),
        1,
        "anyone may list; no one else may read"
    );
    let scratch = Scratch::new(&app).await;
    let error = other
        .restore(&report.name, &scratch.target, scratch.storage(), false, quiet())
        .await
        .unwrap_err();
    assert!(matches!(error, BackupError::WrongKey), "{error}");
    assert!(matches!(
        other.manifest(&report.name).await.unwrap_err(),
        BackupError::WrongKey
    ));
    // Without a key nothing is taken or read.
    config.backup.key = None;
    let none = Backups::new(&config, &app.state.schema.app.backup, "fleet").unwrap();
    let error = none
        .run(app.db(), app.state.storage.clone(), "manual")
        .await
        .unwrap_err();
    assert!(matches!(error, BackupError::NoKey), "{error}");

    // One flipped byte in the middle of the archive: the authenticated encryption notices.
    let path = app.state.config.app.data_dir.join("backups").join(&report.name);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let error = backups(&app)
        .restore(&report.name, &scratch.target, scratch.storage(), false, quiet())
        .await
        .unwrap_err();
    assert!(
        matches!(error, BackupError::Corrupt(_) | BackupError::Failed(_)),
        "{error}"
    );
    let error = backups(&app)
        .restore(
            "fleet-20200101T000000Z-abc.tar.zst.age",
            &scratch.target,
            scratch.storage(),
            false,
            quiet(),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, BackupError::NotFound(_)), "{error}");
    scratch.drop_database().await;
}

async fn file_deletes_wait_for_a_running_backup(backend: Backend) {
    let app = spawn(backend, &key()).await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let driver = app
        .create("/api/v1/orgs/acme/drivers", &owner, json!({"name": "Dana"}))
        .await;
    assert_eq!(upload(&app, &owner, &driver).await.status, 201);
    let files = app.state.config.app.data_dir.join("files");
    assert_eq!(files_under(&files).len(), 1);

    // A backup is running (its snapshot may name the file): the delete is deferred.
    let now = chrono::Utc::now();
    let lease = chrono::Duration::seconds(60);
    assert!(
        keel_store::backups::backup_begin(app.db(), "b1", "b1", "manual", now, lease)
            .await
            .unwrap()
    );
    assert!(
        !keel_store::backups::backup_begin(app.db(), "b2", "b2", "manual", now, lease)
            .await
            .unwrap(),
        "one backup at a time"
    );
    let deleted = app.delete(&format!("/api/v1/orgs/acme/drivers/{driver}"), &owner).await;
    assert_eq!(deleted.status, 204);
    assert_eq!(
        files_under(&files).len(),
        1,
        "the object outlives its row while the backup runs"
    );
    assert_eq!(
        keel_store::backups::deferred_deletes(app.db(), 10).await.unwrap().len(),
        1
    );

    // The cleanup job leaves it while the backup runs, and deletes it after.
    let cleanup = |app: &TestApp| {
        let kind = app.state.schema.app.jobs.kind(keel_spec::CLEANUP_KIND).unwrap();
        let job = keel_store::jobs::NewJob::of_kind(kind, json!({}), None, None);
        let db = app.state.db.clone();
        async move { keel_store::jobs::job_enqueue(&db, &job).await.unwrap().id }
    };
    app.state.jobs.start();
    let id = cleanup(&app).await;
    app.wait_job(id, keel_store::jobs::JobState::Completed, 30).await;
    assert_eq!(files_under(&files).len(), 1);
    keel_store::backups::backup_finish(
        app.db(),
        "b1",
        keel_store::backups::BackupOutcome {
            succeeded: true,
            size_bytes: Some(1),
            files: Some(1),
            error: None,
        },
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    let id = cleanup(&app).await;
    let job = app.wait_job(id, keel_store::jobs::JobState::Completed, 30).await;
    assert_eq!(job.result.unwrap()["deferred_deletes"], 1);
    assert!(files_under(&files).is_empty());
    assert!(
        keel_store::backups::deferred_deletes(app.db(), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // A backup whose process died frees the slot when its lease ends.
    let past = chrono::Utc::now() - chrono::Duration::seconds(120);
    assert!(
        keel_store::backups::backup_begin(app.db(), "b3", "b3", "manual", past, lease)
            .await
            .unwrap()
    );
    assert!(
        keel_store::backups::backup_begin(app.db(), "b4", "b4", "manual", chrono::Utc::now(), lease)
            .await
            .unwrap()
    );
    let history = keel_store::backups::backup_history(app.db(), 10).await.unwrap();
    let abandoned = history.iter().find(|run| run.id == "b3").unwrap();
    assert_eq!(abandoned.state, "failed");
    assert!(abandoned.error.as_deref().unwrap().contains("abandoned"));
    app.state.jobs.shutdown().await;
}

async fn the_scheduled_job_backs_up_prunes_and_reports(backend: Backend) {
    let app = spawn(backend, &key()).await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let kind = app
        .state
        .schema
        .app
        .jobs
        .kind(keel_spec::BACKUP_KIND)
        .expect("[backup] schedules a job");
    assert_eq!(kind.cron.as_ref().unwrap().schedule, "0 3 * * *");

    // Old backups of this app and a stranger's file sit in the target; retention keeps 7
    // days, 4 weeks and 3 months of the old ones plus the new one.
    let dir = app.state.config.app.data_dir.join("backups");
    std::fs::create_dir_all(&dir).unwrap();
    let start = chrono::Utc::now() - chrono::Duration::days(200);
    for day in 0..200 {
        let time = start + chrono::Duration::days(day);
        let name = format!("fleet-{}-{day:06x}.tar.zst.age", time.format("%Y%m%dT%H%M%SZ"));
        std::fs::write(dir.join(name), b"old").unwrap();
    }
    std::fs::write(dir.join("notes.txt"), b"not a backup").unwrap();

    app.state.jobs.start();
    let job = keel_store::jobs::NewJob::of_kind(kind, json!({}), None, None);
    let id = keel_store::jobs::job_enqueue(app.db(), &job).await.unwrap().id;
    let job = app.wait_job(id, keel_store::jobs::JobState::Completed, 60).await;
    let result = job.result.unwrap();
    let name = result["name"].as_str().unwrap().to_string();
    let listed = backups(&app).list().await.unwrap();
    assert_eq!(listed[0].name, name, "the newest is the new one");
    let expected = keel_server::backup::Retention {
        daily: 7,
        weekly: 4,
        monthly: 3,
    };
    let mut times: Vec<_> = (0..200).map(|d| start + chrono::Duration::days(d)).collect();
    times.push(listed[0].created_at);
    assert_eq!(listed.len(), expected.keep(&times).len());
    assert_eq!(result["pruned"].as_array().unwrap().len(), 201 - listed.len());
    assert!(
        dir.join("notes.txt").exists(),
        "retention touches only this app's backups"
    );

    let metrics = app.request("GET", "/metrics", None, None).await.text;
    assert!(
        metrics.contains("keel_backup_runs_total{result=\"succeeded\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("keel_backup_last_success_timestamp_seconds"));
    assert!(metrics.contains("keel_backup_last_failed 0"));
    let size = listed[0].size;
    assert!(
        metrics.contains(&format!("keel_backup_last_size_bytes {size}")),
        "{metrics}"
    );
    app.state.jobs.shutdown().await;
}

/// Files in an S3-compatible bucket and backups in the same store (under their prefix): the
/// backup holds the bucket's files, and they restore anywhere, here onto the local disk.
async fn backups_of_files_on_s3_go_to_s3(backend: Backend) {
    let s3 = keel_testkit::S3Server::start();
    let secret = key();
    let app = TestApp::spawn_with(backend, SPEC, |config| {
        s3.configure(config);
        config.backup.backend = "s3".into();
        config.backup.s3_bucket = Some(keel_testkit::S3Server::BUCKET.into());
        config.backup.key = Some(keel_server::config::Secret(secret));
    })
    .await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    for name in ["a", "b", "c"] {
        let id = app
            .create("/api/v1/orgs/acme/drivers", &owner, json!({"name": name}))
            .await;
        assert_eq!(upload(&app, &owner, &id).await.status, 201);
    }
    let backups = backups(&app);
    let report = backups
        .run(app.db(), app.state.storage.clone(), "manual")
        .await
        .unwrap();
    assert_eq!(report.files, 3);
    let objects = s3.objects();
    assert!(
        objects.contains(&format!("keel-backups/{}", report.name)),
        "{objects:?}"
    );
    assert_eq!(backups.list().await.unwrap()[0].name, report.name);
    let scratch = Scratch::new(&app).await;
    let restored = backups
        .restore(&report.name, &scratch.target, scratch.storage(), false, quiet())
        .await
        .unwrap();
    assert_eq!(restored.files, 3);
    assert_eq!(files_under(&scratch.dir.path().join("files")).len(), 3);
    scratch.drop_database().await;
}

both!(
    backups_of_files_on_s3_go_to_s3,
    a_backup_under_write_load_restores_consistently,
    a_wrong_key_or_a_damaged_archive_cannot_restore,
    file_deletes_wait_for_a_running_backup,
    the_scheduled_job_backs_up_prunes_and_reports,
);
