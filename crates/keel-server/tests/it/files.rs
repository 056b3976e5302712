//! Files (F1–F3, F5) on both backends with local storage: uploads streamed to disk under the
//! org/collection/record/field layout, size and type limits read from the bytes, downloads
//! under the view rule, single and multiple fields, and files deleted with their record.

use keel_testkit::{Backend, TestApp, both};
use serde_json::json;

const SPEC: &str = r#"
[app]
name = "files"

[roles]
order = ["owner", "admin", "member", "viewer"]

[collections.drivers]
fields.name = { type = "text", required = true }
fields.licence = { type = "file", max_size = "1MB", types = ["application/pdf", "image/*"] }
fields.documents = { type = "file", multiple = true, max_size = "2MB" }
rules.view = "role >= viewer"
rules.update = "role >= member"
rules.delete = "role >= admin"
"#;

const PDF: &[u8] = b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n%%EOF\n";
const PNG: &[u8] = &[
    0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13, b'I', b'H', b'D', b'R',
];

async fn upload(app: &TestApp, path: &str, token: &str, content_type: &str, body: &[u8]) -> keel_testkit::TestResponse {
    let headers = vec![
        ("authorization".to_string(), format!("Bearer {token}")),
        ("content-type".to_string(), content_type.to_string()),
    ];
    app.request_bytes("POST", path, headers, Some(body.to_vec())).await
}

async fn files_upload_download_replace_and_delete(backend: Backend) {
    let app = TestApp::spawn_with(backend, SPEC, |_| {}).await;
    let files_dir = app.state.config.app.data_dir.join("files");
    let (_, owner) = app.signup("owner@example.com").await;
    let org = app.org(&owner, "acme").await;
    let driver = app
        .create("/api/v1/orgs/acme/drivers", &owner, json!({"name": "Dana"}))
        .await;
    let base = format!("/api/v1/orgs/acme/drivers/{driver}/files");

    // The client says JSON; the bytes say PDF, and the bytes win.
    let response = upload(
        &app,
        &format!("{base}/licence?name=../../etc/licence%201.pdf"),
        &owner,
        "application/json",
        PDF,
    )
    .await;
    assert_eq!(response.status, 201, "{}", response.text);
    let file = response.body["file"].clone();
    assert_eq!(file["type"], "application/pdf");
    assert_eq!(file["size"], PDF.len());
    assert_eq!(file["name"], "licence 1.pdf", "directories are stripped from names");
    assert_eq!(file["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(response.body["record"]["licence"], file);
    assert_eq!(response.body["record"]["version"], 2);
    let file_id = file["id"].as_str().unwrap().to_string();
    // Laid out by org, collection, record and field.
    let on_disk = files_dir.join(format!("org-{org}/drivers/{driver}/licence/{file_id}"));
    assert_eq!(std::fs::read(&on_disk).unwrap(), PDF);

    let download = app.get(&format!("{base}/licence/{file_id}"), &owner).await;
    assert_eq!(download.status, 200);
    assert_eq!(download.text.as_bytes(), PDF);
    assert_eq!(download.header("content-type"), Some("application/pdf"));
    assert_eq!(download.header("x-content-type-options"), Some("nosniff"));
    assert!(
        download
            .header("content-disposition")
            .unwrap()
            .starts_with("attachment; filename=\"licence 1.pdf\"")
    );

    // Setting a file field through the JSON API is refused.
    let patched = app
        .patch(
            &format!("/api/v1/orgs/acme/drivers/{driver}"),
            &owner,
            json!({"licence": file}),
        )
        .await;
    assert_eq!(patched.code(), "validation_failed");

    // A new licence replaces the old one, whose bytes go.
    let response = upload(&app, &format!("{base}/licence"), &owner, "image/png", PNG).await;
    assert_eq!(response.status, 201, "{}", response.text);
    assert_eq!(response.body["file"]["type"], "image/png");
    assert_eq!(response.body["file"]["name"], "file");
    assert!(!on_disk.exists(), "the replaced file is deleted");
    let old = app.get(&format!("{base}/licence/{file_id}"), &owner).await;
    assert_eq!(old.status, 404);

    // Limits: type from the bytes, size, empty files, non-file fields.
    let text = upload(
        &app,
        &format!("{base}/licence"),
        &owner,
        "application/pdf",
        b"just text, not a PDF",
    )
    .await;
    assert_eq!(
        (text.status.as_u16(), text.code()),
        (415, "file_type_not_allowed"),
        "{}",
        text.text
    );
    assert_eq!(text.body["error"]["details"]["type"], "text/plain");
    let big = vec![0u8; (1 << 20) + 1];
    let too_big = upload(&app, &format!("{base}/licence"), &owner, "application/pdf", &big).await;
    assert_eq!((too_big.status.as_u16(), too_big.code()), (413, "file_too_large"));
    let empty = upload(&app, &format!("{base}/documents"), &owner, "text/plain", b"").await;
    assert_eq!(empty.code(), "invalid_file");
    let not_file = upload(&app, &format!("{base}/name"), &owner, "text/plain", b"x").await;
    assert_eq!(not_file.code(), "invalid_file");

    // A browser form (multipart/form-data): the file part's name and bytes; other parts are skipped.
    let form = [
        b"--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nignored\r\n".as_slice(),
        b"--XyZ\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"scan.pdf\"\r\nContent-Type: application/octet-stream\r\n\r\n",
        PDF,
        b"\r\n--XyZ--\r\n",
    ]
    .concat();
    let response = upload(
        &app,
        &format!("{base}/licence"),
        &owner,
        "multipart/form-data; boundary=XyZ",
        &form,
    )
    .await;
    assert_eq!(response.status, 201, "{}", response.text);
    assert_eq!(response.body["file"]["name"], "scan.pdf");
    assert_eq!(response.body["file"]["type"], "application/pdf");
    assert_eq!(response.body["file"]["size"], PDF.len());
    let scan = response.body["file"]["id"].as_str().unwrap().to_string();
    let download = app.get(&format!("{base}/licence/{scan}"), &owner).await;
    assert_eq!(download.text.as_bytes(), PDF);
    let no_file = upload(
        &app,
        &format!("{base}/licence"),
        &owner,
        "multipart/form-data; boundary=XyZ",
        b"--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nx\r\n--XyZ--\r\n",
    )
    .await;
    assert_eq!(no_file.code(), "invalid_file");

    // A multiple field collects files; one can be removed.
    let mut ids = vec![];
    for (n, body) in [b"first,csv\n1,2\n".as_slice(), b"second".as_slice(), PDF]
        .iter()
        .enumerate()
    {
        let response = upload(
            &app,
            &format!("{base}/documents?name=doc{n}.csv"),
            &owner,
            "text/csv",
            body,
        )
        .await;
        assert_eq!(response.status, 201, "{}", response.text);
        ids.push(response.body["file"]["id"].as_str().unwrap().to_string());
    }
    let record = app.get(&format!("/api/v1/orgs/acme/drivers/{driver}"), &owner).await;
    let documents = record.body["documents"].as_array().unwrap();
    assert_eq!(documents.len(), 3);
    assert_eq!(documents[0]["type"], "text/csv", "text keeps the client's text subtype");
    assert_eq!(documents[2]["type"], "application/pdf");
    let removed = app.delete(&format!("{base}/documents/{}", ids[1]), &owner).await;
    assert_eq!(removed.status, 204, "{}", removed.text);
    let record = app.get(&format!("/api/v1/orgs/acme/drivers/{driver}"), &owner).await;
    let left: Vec<&str> = record.body["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(left, [ids[0].as_str(), ids[2].as_str()]);
    assert_eq!(
        keel_testkit::files_under(&files_dir).len(),
        3,
        "licence + two documents"
    );

    // Each change is in the activity log.
    let activity = app
        .get(
            &format!("/api/v1/orgs/acme/activity?filter=record%20%3D%20%22{driver}%22"),
            &owner,
        )
        .await;
    assert_eq!(activity.body["items"].as_array().unwrap().len(), 1 + 3 + 3 + 1);

    // Deleting the record deletes its files.
    let deleted = app.delete(&format!("/api/v1/orgs/acme/drivers/{driver}"), &owner).await;
    assert_eq!(deleted.status, 204);
    assert!(
        keel_testkit::files_under(&files_dir).is_empty(),
        "{:?}",
        keel_testkit::files_under(&files_dir)
    );
    let rows = app
        .db()
        .query(&app.db().portable("SELECT count(*) FROM keel_files", vec![]))
        .await
        .unwrap();
    assert_eq!(rows[0][0].int(), Some(0));
}

async fn file_access_follows_the_record_rules(backend: Backend) {
    let app = TestApp::spawn_with(backend, SPEC, |_| {}).await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let (_, viewer) = app.member(&owner, "acme", "viewer@example.com", "viewer").await;
    let driver = app
        .create("/api/v1/orgs/acme/drivers", &owner, json!({"name": "Dana"}))
        .await;
    let base = format!("/api/v1/orgs/acme/drivers/{driver}/files");
    // Viewers read but cannot upload or remove.
    let denied = upload(&app, &format!("{base}/licence"), &viewer, "application/pdf", PDF).await;
    assert_eq!(denied.status, 403);
    let response = upload(&app, &format!("{base}/licence"), &owner, "application/pdf", PDF).await;
    let file_id = response.body["file"]["id"].as_str().unwrap().to_string();
    let read = app.get(&format!("{base}/licence/{file_id}"), &viewer).await;
    assert_eq!(read.status, 200);
    let remove = app.delete(&format!("{base}/licence/{file_id}"), &viewer).await;
    assert_eq!(remove.status, 403);

    // A signed link downloads without credentials until it expires.
    let link = app
        .request(
            "POST",
            &format!("{base}/licence/{file_id}/link?expires_in=1"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(link.status, 200, "{}", link.text);
    let url = link.body["url"].as_str().unwrap().to_string();
    assert!(url.starts_with(&format!("/api/v1/files/{file_id}?expires=")), "{url}");
    let fetched = app.request("GET", &url, None, None).await;
    assert_eq!(fetched.status, 200, "{}", fetched.text);
    assert_eq!(fetched.text.as_bytes(), PDF);
    assert_eq!(fetched.header("content-type"), Some("application/pdf"));
    let tampered = url.replace("signature=", "signature=0");
    assert_eq!(
        app.request("GET", &tampered, None, None).await.code(),
        "invalid_signature"
    );
    let other_file = url.replace(&file_id, &uuid::Uuid::now_v7().to_string());
    assert_eq!(
        app.request("GET", &other_file, None, None).await.code(),
        "invalid_signature"
    );
    let too_long = app
        .request(
            "POST",
            &format!("{base}/licence/{file_id}/link?expires_in=86400"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(too_long.code(), "invalid_query");
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    assert_eq!(app.request("GET", &url, None, None).await.code(), "link_expired");
    let (_, outsider) = app.signup("outsider@example.com").await;
    let denied = app
        .request("POST", &format!("{base}/licence/{file_id}/link"), Some(&outsider), None)
        .await;
    assert_eq!(denied.status, 404);
    // Other orgs see nothing; unknown files and records are 404.
    let (_, stranger) = app.signup("stranger@example.com").await;
    app.org(&stranger, "other").await;
    assert_eq!(
        app.get(&format!("{base}/licence/{file_id}"), &stranger).await.status,
        404
    );
    let elsewhere = format!("/api/v1/orgs/other/drivers/{driver}/files/licence/{file_id}");
    assert_eq!(app.get(&elsewhere, &stranger).await.status, 404);
    let unknown = uuid::Uuid::now_v7();
    assert_eq!(app.get(&format!("{base}/licence/{unknown}"), &owner).await.status, 404);
    let missing = upload(
        &app,
        &format!("/api/v1/orgs/acme/drivers/{unknown}/files/licence"),
        &owner,
        "application/pdf",
        PDF,
    )
    .await;
    assert_eq!(missing.status, 404);
    // An API key uploads too (a file with no uploading user).
    let key = app
        .post(
            "/api/v1/orgs/acme/api_keys",
            &owner,
            json!({"name": "scanner", "role": "member"}),
        )
        .await;
    assert_eq!(key.status, 201, "{}", key.text);
    let token = key.body["token"].as_str().unwrap().to_string();
    let by_key = upload(
        &app,
        &format!("{base}/documents"),
        &token,
        "text/plain",
        b"from a machine",
    )
    .await;
    assert_eq!(by_key.status, 201, "{}", by_key.text);
    // Bulk deletes take the files too.
    let files_dir = app.state.config.app.data_dir.join("files");
    assert_eq!(keel_testkit::files_under(&files_dir).len(), 2);
    let bulk = app.delete("/api/v1/orgs/acme/drivers?filter=true", &owner).await;
    assert_eq!(bulk.body["deleted"], 1, "{}", bulk.text);
    assert!(keel_testkit::files_under(&files_dir).is_empty());
}

async fn signed_links_survive_key_rotation_until_the_key_retires(backend: Backend) {
    use keel_server::auth::keys::{self, FILE_LINKS};
    let app = TestApp::spawn_with(backend, SPEC, |_| {}).await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let driver = app
        .create("/api/v1/orgs/acme/drivers", &owner, json!({"name": "Dana"}))
        .await;
    let base = format!("/api/v1/orgs/acme/drivers/{driver}/files");
    let uploaded = upload(&app, &format!("{base}/licence"), &owner, "application/pdf", PDF).await;
    let file_id = uploaded.body["file"]["id"].as_str().unwrap().to_string();
    async fn link(app: &TestApp, path: &str, owner: &str) -> String {
        let response = app.request("POST", path, Some(owner), None).await;
        response.body["url"].as_str().expect("a url").to_string()
    }
    let path = format!("{base}/licence/{file_id}/link");
    let kid = |url: &str| url.split("kid=").nth(1).unwrap().split('&').next().unwrap().to_string();
    let old = link(&app, &path, &owner).await;
    let first_kid = kid(&old);
    assert_eq!(app.request("GET", &old, None, None).await.status, 200);

    // Rotation: another instance (with a fresh ring) signs with the new key at once; the
    // first instance verifies the new key's links, and both verify the old key's.
    let rotated = keys::rotate(app.db(), FILE_LINKS).await.unwrap();
    let second = app.sibling().await;
    let new = link(&second, &path, &owner).await;
    assert_eq!(kid(&new), rotated.id);
    for (instance, url) in [(&app, &new), (&second, &old), (&app, &old), (&second, &new)] {
        let response = instance.request("GET", url, None, None).await;
        assert_eq!(response.status, 200, "{url}: {}", response.text);
    }
    // A key id nobody made is refused.
    let forged = new.replace(&rotated.id, "k0000");
    assert_eq!(
        app.request("GET", &forged, None, None).await.code(),
        "invalid_signature"
    );

    // The signing key cannot retire; the old one can, and (on an instance that reads the
    // ring afresh) its links stop working while the new key's go on.
    assert!(
        !keel_store::security::key_retire(app.db(), &rotated.id, chrono::Utc::now())
            .await
            .unwrap(),
        "the signing key cannot retire"
    );
    assert!(
        keel_store::security::key_retire(app.db(), &first_kid, chrono::Utc::now())
            .await
            .unwrap()
    );
    let third = app.sibling().await;
    assert_eq!(third.request("GET", &old, None, None).await.code(), "invalid_signature");
    assert_eq!(third.request("GET", &new, None, None).await.status, 200);
}

both!(
    files_upload_download_replace_and_delete,
    file_access_follows_the_record_rules,
    signed_links_survive_key_rotation_until_the_key_retires
);

const QUOTA_SPEC: &str = r#"
[app]
name = "quotas"

[roles]
order = ["owner", "member"]

[storage]
quota_per_user = "1KB"
quota_per_org = "2KB"

[collections.uploads]
fields.name = { type = "text" }
fields.pdf = { type = "file" }
fields.attachments = { type = "file", multiple = true }
rules.update = "role >= member"
"#;

async fn storage_quotas_hold_per_user_and_per_org(backend: Backend) {
    let app = TestApp::spawn_with(backend, QUOTA_SPEC, |_| {}).await;
    let (_, alice) = app.signup("alice@example.com").await;
    app.org(&alice, "acme").await;
    let (_, bob) = app.member(&alice, "acme", "bob@example.com", "member").await;
    let record = app
        .create("/api/v1/orgs/acme/uploads", &alice, json!({"name": "x"}))
        .await;
    let base = format!("/api/v1/orgs/acme/uploads/{record}/files");
    let bytes = |n: usize| vec![b'a'; n];

    // Two uploads at once that fit alone but not together: exactly one is kept.
    let (path, body) = (format!("{base}/attachments"), bytes(600));
    let (first, second) = tokio::join!(
        upload(&app, &path, &alice, "text/plain", &body),
        upload(&app, &path, &alice, "text/plain", &body),
    );
    let mut statuses = [first.status.as_u16(), second.status.as_u16()];
    statuses.sort();
    assert_eq!(statuses, [201, 413], "{} / {}", first.text, second.text);
    let refused = if first.status == 413 { &first } else { &second };
    assert_eq!(refused.code(), "quota_exceeded");
    assert_eq!(refused.body["error"]["details"]["scope"], "user");
    assert_eq!(refused.body["error"]["details"]["quota_bytes"], 1024);
    assert_eq!(refused.body["error"]["details"]["used_bytes"], 600);

    // Bob has his own user quota; together they reach the org's.
    let response = upload(&app, &format!("{base}/attachments"), &bob, "text/plain", &bytes(900)).await;
    assert_eq!(response.status, 201, "{}", response.text);
    let response = upload(&app, &format!("{base}/attachments"), &bob, "text/plain", &bytes(100)).await;
    assert_eq!(response.status, 201, "{}", response.text);
    let (_, carol) = app.member(&alice, "acme", "carol@example.com", "member").await;
    let org_full = upload(&app, &format!("{base}/attachments"), &carol, "text/plain", &bytes(449)).await;
    assert_eq!(org_full.code(), "quota_exceeded");
    assert_eq!(org_full.body["error"]["details"]["scope"], "org");
    let usage = app.get("/api/v1/orgs/acme/usage", &alice).await;
    assert_eq!(usage.body["org"]["bytes"], 1600, "{}", usage.text);
    assert_eq!(usage.body["org"]["files"], 3);
    assert_eq!(usage.body["org"]["quota_bytes"], 2048);
    assert_eq!(usage.body["user"]["bytes"], 600);
    assert_eq!(usage.body["user"]["quota_bytes"], 1024);

    // Removing a file gives its bytes back to whoever uploaded it.
    let record_json = app.get(&format!("/api/v1/orgs/acme/uploads/{record}"), &alice).await;
    let alices = record_json.body["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["size"] == 600)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let removed = app.delete(&format!("{base}/attachments/{alices}"), &bob).await;
    assert_eq!(removed.status, 204);
    let usage = app.get("/api/v1/orgs/acme/usage", &alice).await;
    assert_eq!(
        (
            usage.body["org"]["bytes"].as_i64(),
            usage.body["user"]["bytes"].as_i64()
        ),
        (Some(1000), Some(0))
    );

    // A replaced single file is given back before the new one is counted.
    let response = upload(&app, &format!("{base}/pdf"), &alice, "text/plain", &bytes(1000)).await;
    assert_eq!(response.status, 201, "{}", response.text);
    let response = upload(&app, &format!("{base}/pdf"), &alice, "text/plain", &bytes(1010)).await;
    assert_eq!(response.status, 201, "{}", response.text);
    let usage = app.get("/api/v1/orgs/acme/usage", &alice).await;
    assert_eq!(usage.body["user"]["bytes"], 1010);
    // Deleting the record gives everything back.
    app.delete(&format!("/api/v1/orgs/acme/uploads/{record}"), &alice).await;
    let usage = app.get("/api/v1/orgs/acme/usage", &alice).await;
    assert_eq!(
        (usage.body["org"]["bytes"].as_i64(), usage.body["org"]["files"].as_i64()),
        (Some(0), Some(0))
    );
}

both!(storage_quotas_hold_per_user_and_per_org);

const RETENTION_SPEC: &str = r#"
[app]
name = "retention"

[roles]
order = ["owner"]

[collections.runs]
fields.name = { type = "text" }

[collections.reports]
fields.run = { type = "relation", to = "runs", on_delete = "cascade" }
fields.pdf = { type = "file", retention = "1s" }
fields.keep = { type = "file" }
"#;

async fn retention_and_orphans_are_cleaned_up(backend: Backend) {
    let app = TestApp::spawn_with(backend, RETENTION_SPEC, |_| {}).await;
    app.state.jobs.start();
    let (owner_id, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    app.make_superuser(&owner_id).await;
    let files_dir = app.state.config.app.data_dir.join("files");
    let run = app.create("/api/v1/orgs/acme/runs", &owner, json!({"name": "r"})).await;
    let kept = app.create("/api/v1/orgs/acme/reports", &owner, json!({})).await;
    let orphaned = app
        .create("/api/v1/orgs/acme/reports", &owner, json!({"run": run}))
        .await;
    let up = |record: &str, field: &str| format!("/api/v1/orgs/acme/reports/{record}/files/{field}");
    assert_eq!(
        upload(&app, &up(&kept, "pdf"), &owner, "application/pdf", PDF)
            .await
            .status,
        201
    );
    assert_eq!(
        upload(&app, &up(&kept, "keep"), &owner, "application/pdf", PDF)
            .await
            .status,
        201
    );
    assert_eq!(
        upload(&app, &up(&orphaned, "keep"), &owner, "application/pdf", PDF)
            .await
            .status,
        201
    );
    // Deleting the run deletes its report by a database cascade, which leaves the file behind.
    assert_eq!(
        app.delete(&format!("/api/v1/orgs/acme/runs/{run}"), &owner)
            .await
            .status,
        204
    );
    assert_eq!(keel_testkit::files_under(&files_dir).len(), 3);
    std::thread::sleep(std::time::Duration::from_millis(1_100));

    let cleanup = app
        .post("/api/v1/admin/jobs", &owner, json!({"kind": "keel_cleanup"}))
        .await;
    assert_eq!(cleanup.status, 201, "{}", cleanup.text);
    let done = app
        .wait_job(
            cleanup.body["id"].as_i64().unwrap(),
            keel_store::jobs::JobState::Completed,
            20,
        )
        .await;
    let result = done.result.unwrap();
    assert_eq!(result["files"], json!({"expired": 1, "orphans": 1}), "{result}");
    let record = app.get(&format!("/api/v1/orgs/acme/reports/{kept}"), &owner).await;
    assert!(record.body["pdf"].is_null(), "{}", record.text);
    assert!(
        record.body["keep"].is_object(),
        "a field without retention keeps its file"
    );
    assert_eq!(keel_testkit::files_under(&files_dir).len(), 1);
    let usage = app.get("/api/v1/orgs/acme/usage", &owner).await;
    assert_eq!(usage.body["org"]["files"], 1);
    let activity = app
        .get(
            &format!("/api/v1/orgs/acme/activity?filter=record%20%3D%20%22{kept}%22&sort=-id"),
            &owner,
        )
        .await;
    assert_eq!(
        activity.body["items"][0]["changes"]["reason"], "retention",
        "{}",
        activity.text
    );
    app.state.jobs.shutdown().await;
}

both!(retention_and_orphans_are_cleaned_up);

const S3_SPEC: &str = r#"
[app]
name = "s3files"

[roles]
order = ["owner", "viewer"]

[collections.schedules]
fields.name = { type = "text" }
fields.pdf = { type = "file", max_size = "16MB", types = ["application/pdf"] }
"#;

async fn files_live_in_an_s3_compatible_store(backend: Backend) {
    let s3 = keel_testkit::S3Server::start();
    let app = TestApp::spawn_with(backend, S3_SPEC, |config| s3.configure(config)).await;
    let (_, owner) = app.signup("owner@example.com").await;
    let org = app.org(&owner, "acme").await;
    let record = app
        .create("/api/v1/orgs/acme/schedules", &owner, json!({"name": "week 1"}))
        .await;
    let base = format!("/api/v1/orgs/acme/schedules/{record}/files/pdf");
    // 6 MiB: more than one part of the multipart upload (5 MiB parts).
    let mut big = PDF.to_vec();
    big.resize(6 << 20, b'x');
    let response = upload(&app, &format!("{base}?name=week.pdf"), &owner, "application/pdf", &big).await;
    assert_eq!(response.status, 201, "{}", response.text);
    let file_id = response.body["file"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        s3.objects(),
        [format!("org-{org}/schedules/{record}/pdf/{file_id}")],
        "laid out by org, collection, record and field"
    );
    let download = app.get(&format!("{base}/{file_id}"), &owner).await;
    assert_eq!(download.status, 200);
    assert_eq!(download.text.len(), big.len());
    assert!(download.text.as_bytes() == big.as_slice());
    // A replacement deletes the old object; a refused type stores nothing.
    let response = upload(&app, &base, &owner, "application/pdf", PDF).await;
    assert_eq!(response.status, 201, "{}", response.text);
    let second = response.body["file"]["id"].as_str().unwrap().to_string();
    assert_eq!(s3.objects().len(), 1);
    let refused = upload(&app, &base, &owner, "application/pdf", PNG).await;
    assert_eq!(refused.code(), "file_type_not_allowed");
    assert_eq!(s3.objects().len(), 1, "{:?}", s3.objects());
    let link = app
        .request("POST", &format!("{base}/{second}/link"), Some(&owner), None)
        .await;
    let fetched = app.request("GET", link.body["url"].as_str().unwrap(), None, None).await;
    assert_eq!(fetched.text.as_bytes(), PDF);
    // Deleting the record deletes the object.
    app.delete(&format!("/api/v1/orgs/acme/schedules/{record}"), &owner)
        .await;
    assert!(s3.objects().is_empty(), "{:?}", s3.objects());
}

both!(files_live_in_an_s3_compatible_store);

/// A local file larger than one read of the download stream comes back whole and in order,
/// with its length announced.
async fn local_downloads_come_back_whole(backend: Backend) {
    let app = TestApp::spawn_with(backend, SPEC, |_| {}).await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let driver = app
        .create("/api/v1/orgs/acme/drivers", &owner, json!({"name": "Dana"}))
        .await;
    let base = format!("/api/v1/orgs/acme/drivers/{driver}/files/documents");
    // 1.7 MB of numbered lines: six full 256 KiB reads and a partial one.
    let mut body = String::from("line,value\n");
    let mut n = 0;
    while body.len() < 1_700_000 {
        body.push_str(&format!("{n},{}\n", n * 7));
        n += 1;
    }
    let response = upload(
        &app,
        &format!("{base}?name=big.csv"),
        &owner,
        "text/csv",
        body.as_bytes(),
    )
    .await;
    assert_eq!(response.status, 201, "{}", response.text);
    let id = response.body["file"]["id"].as_str().unwrap();
    let download = app.get(&format!("{base}/{id}"), &owner).await;
    assert_eq!(download.status, 200);
    assert_eq!(download.header("content-length"), Some(body.len().to_string().as_str()));
    assert_eq!(download.text.len(), body.len());
    assert!(download.text == body, "the bytes come back in order");
}

both!(local_downloads_come_back_whole);
