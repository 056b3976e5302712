//! The `keel` binary end to end: check, migrate, serve (JSON logs with request ids, graceful
//! shutdown on SIGTERM, refusal with pending migrations), demo.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SPEC: &str = r#"
[app]
name = "cli"
[roles]
order = ["owner", "member"]
[collections.notes]
fields.title = { type = "text", required = true }
"#;

fn keel() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
    // The parent's KEEL_* settings must not leak into these runs.
    for (key, _) in std::env::vars() {
        if key.starts_with("KEEL_") {
            command.env_remove(key);
        }
    }
    command
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A raw HTTP/1.1 request; returns (status, body).
fn http(port: u16, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
    let response = http_raw(port, method, path, headers, body);
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The whole response: status line, headers and body.
fn http_raw(port: u16, method: &str, path: &str, headers: &str, body: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n{headers}\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// `keel <before> --spec SPEC --data-dir DATA <after>`, run to completion.
fn on_app(before: &[&str], spec: &Path, data: &Path, after: &[&str]) -> std::process::Output {
    keel()
        .args(before)
        .arg("--spec")
        .arg(spec)
        .arg("--data-dir")
        .arg(data)
        .args(after)
        .output()
        .unwrap()
}

fn wait_for(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("keel exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("keel did not listen on {port}");
}

fn write_spec(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("keel.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_reports_problems_with_lines() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_spec(dir.path(), SPEC);
    let output = keel().arg("check").arg(&good).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let spec = |field_type: &str| {
        format!(
            "[app]\nname = \"x\"\n[roles]\norder = [\"owner\"]\n[collections.t]\nfields.a = {{ type = \"{field_type}\" }}\nrules.list = \"nope = 1\"\n"
        )
    };
    // A spec problem, and a rule problem (reported once the spec itself is valid).
    for (field_type, expected) in [
        ("txt", "line 6: collections.t.fields.a.type: unknown type 'txt'"),
        ("text", "line 7: collections.t.rules.list: 'nope' is not a field of t"),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, spec(field_type)).unwrap();
        let output = keel().arg("check").arg(&bad).output().unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    }
}

#[test]
fn migrate_plan_apply_then_serve_with_json_logs_and_graceful_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), SPEC);
    let data = dir.path().join("data");
    let port = free_port();
    // Serving against an unmigrated database is refused.
    let refused = keel()
        .args(["serve", "--spec"])
        .arg(&spec)
        .arg("--data-dir")
        .arg(&data)
        .args(["--port", &port.to_string()])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("needs migrations"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let plan = on_app(&["migrate", "plan"], &spec, &data, &[]);
    let plan_text = String::from_utf8_lossy(&plan.stdout);
    assert!(plan_text.contains("CREATE TABLE \"notes\""), "{plan_text}");
    let apply = on_app(&["migrate", "apply"], &spec, &data, &[]);
    assert!(apply.status.success(), "{}", String::from_utf8_lossy(&apply.stderr));
    let again = on_app(&["migrate", "plan"], &spec, &data, &[]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("up to date"));

    let mut child = keel()
        .args(["serve", "--spec"])
        .arg(&spec)
        .arg("--data-dir")
        .arg(&data)
        .args(["--port", &port.to_string()])
        .env("KEEL_LOG__FORMAT", "json")
        .env("KEEL_DATABASE__SLOW_QUERY_MS", "0")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(port, &mut child);
    let (status, body) = http(port, "GET", "/health/ready", "x-request-id: cli-test-42\r\n", "");
    assert_eq!(status, 200, "{body}");
    let response = http_raw(port, "GET", "/api/v1/auth/me", "x-request-id: cli-test-43\r\n", "");
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    // Rate limits are on by default, keyed by the socket's peer address.
    assert!(
        response.contains("ratelimit-policy: 1000;w=60\r\n") && response.contains("ratelimit-remaining: 999\r\n"),
        "{response}"
    );
    // SIGTERM: the server stops accepting, finishes, and exits cleanly.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "keel did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    let lines: Vec<serde_json::Value> = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str(&line).ok())
        .collect();
    let request_line = lines
        .iter()
        .find(|l| l["span"]["request_id"] == "cli-test-42" && l["message"] == "request")
        .unwrap_or_else(|| panic!("no JSON log line with the request id: {lines:#?}"));
    assert_eq!(request_line["status"], 200);
    assert_eq!(request_line["span"]["route"], "/health/ready");
    assert!(request_line["duration_ms"].is_number());
    let failed = lines
        .iter()
        .find(|l| l["span"]["request_id"] == "cli-test-43" && l["message"] == "request")
        .expect("second request logged");
    assert!(
        failed["error"].as_str().unwrap_or("").starts_with("unauthenticated"),
        "{failed}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["message"].as_str().unwrap_or("").contains("shutting down")),
        "{lines:#?}"
    );
}

#[test]
fn demo_generates_and_reuses_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let run = || {
        keel()
            .args(["demo", "pms", "--no-serve", "--scale", "0.02", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap()
    };
    let first = run();
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    assert!(stderr.contains("tasks"), "{stderr}");
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(stdout.contains("admin@demo.keel"), "{stdout}");
    let second = run();
    assert!(String::from_utf8_lossy(&second.stderr).contains("reusing"));
    // `keel export` streams the demo's tasks (B5), filtered like a list.
    let export = keel()
        .args([
            "export",
            "tasks",
            "--org",
            "org-001",
            "--format",
            "ndjson",
            "--filter",
            "status = 'done'",
            "--spec",
        ])
        .arg(data.join("keel.toml"))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty());
    assert!(lines.iter().all(|task| task["status"] == "done"));
    let csv = keel()
        .args([
            "export",
            "tasks",
            "--org",
            "org-001",
            "--fields",
            "title,status",
            "--spec",
        ])
        .arg(data.join("keel.toml"))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&csv.stdout).starts_with("id,title,status\n"));
    // `keel import` reads an export back in (B1): system columns are ignored, every row is
    // checked like a create, and the report goes to standard output.
    let done = dir.path().join("done.csv");
    let full = keel()
        .args([
            "export",
            "tasks",
            "--org",
            "org-001",
            "--filter",
            "status = 'done'",
            "--spec",
        ])
        .arg(data.join("keel.toml"))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    std::fs::write(&done, &full.stdout).unwrap();
    let import = keel()
        .args(["import", "tasks"])
        .arg(&done)
        .args(["--org", "org-001", "--quiet", "--spec"])
        .arg(data.join("keel.toml"))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(import.status.success(), "{}", String::from_utf8_lossy(&import.stderr));
    let report: serde_json::Value = serde_json::from_slice(&import.stdout).unwrap();
    assert_eq!(report["written"].as_u64(), Some(lines.len() as u64), "{report}");
    assert_eq!(report["committed"], true);
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "title,project\nno such project,Nope\n").unwrap();
    let rejected = keel()
        .args(["import", "tasks"])
        .arg(&bad)
        .args(["--org", "org-001", "--quiet", "--spec"])
        .arg(data.join("keel.toml"))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!rejected.status.success(), "an atomic import with a bad row fails");
    assert!(String::from_utf8_lossy(&rejected.stdout).contains("invalid_relation"));
    let unknown = keel().args(["demo", "nope", "--no-serve"]).output().unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("fleet-compliance"));
}

#[test]
fn fleet_demo_reaches_the_seeds_year_one_scale() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fleet");
    let output = keel()
        .args(["demo", "fleet-compliance", "--no-serve", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // seed 000, year 1: 120 orgs, 2,400 drivers, 4,080 vehicles, 25,000 issues, 75,000 activity rows.
    for expected in [
        "drivers                   2400",
        "vehicles                  4080",
        "issues                   25000",
        "120 orgs",
        "75000 activity rows",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in {stderr}");
    }
}

#[test]
fn keys_rotate_list_and_retire() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), SPEC);
    let data = dir.path().join("data");
    let keys = |args: &[&str]| on_app(&["keys"], &spec, &data, args);
    let apply = on_app(&["migrate", "apply"], &spec, &data, &[]);
    assert!(apply.status.success(), "{}", String::from_utf8_lossy(&apply.stderr));
    let text = |output: &std::process::Output| String::from_utf8_lossy(&output.stdout).to_string();
    let first = keys(&["rotate"]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let first_id = text(&first).split_whitespace().nth(2).unwrap().to_string();
    let refused = keys(&["retire", &first_id]);
    assert!(!refused.status.success(), "the signing key cannot retire");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("signs now"));
    let second = keys(&["rotate"]);
    let second_id = text(&second).split_whitespace().nth(2).unwrap().to_string();
    let list = text(&keys(&["list"]));
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert!(
        lines[0].starts_with(&second_id) && lines[0].ends_with("signs and verifies"),
        "{list}"
    );
    assert!(
        lines[1].starts_with(&first_id) && lines[1].ends_with("\tverifies"),
        "{list}"
    );
    // Links live up to an hour: retiring the replaced key at once needs --force.
    let early = keys(&["retire", &first_id]);
    assert!(!early.status.success());
    assert!(String::from_utf8_lossy(&early.stderr).contains("--force"));
    let retired = keys(&["retire", &first_id, "--force"]);
    assert!(retired.status.success(), "{}", String::from_utf8_lossy(&retired.stderr));
    assert!(text(&keys(&["list"])).contains("retired"));
}

#[test]
fn backup_keygen_run_list_verify_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), SPEC);
    let data = dir.path().join("data");
    let restored = dir.path().join("restored");
    let apply = on_app(&["migrate", "apply"], &spec, &data, &[]);
    assert!(apply.status.success(), "{}", String::from_utf8_lossy(&apply.stderr));
    let create_ann = |data: &Path| {
        let args = [
            "users",
            "create",
            "--email",
            "ann@example.com",
            "--password",
            "a long passphrase",
        ];
        on_app(&args, &spec, data, &[])
    };
    let user = create_ann(&data);
    assert!(user.status.success(), "{}", String::from_utf8_lossy(&user.stderr));

    let keygen = keel().args(["backup", "keygen"]).output().unwrap();
    assert!(keygen.status.success());
    let key = String::from_utf8(keygen.stdout).unwrap();
    assert!(key.starts_with("AGE-SECRET-KEY-1"), "{key}");
    assert!(String::from_utf8_lossy(&keygen.stderr).contains("public key: age1"));
    let key_file = dir.path().join("backup.key");
    std::fs::write(&key_file, &key).unwrap();
    let backups = data.join("backups");
    // Both data dirs share the backup folder and the key.
    let run = |data: &Path, args: &[&str]| {
        keel()
            .args(args)
            .arg("--spec")
            .arg(&spec)
            .arg("--data-dir")
            .arg(data)
            .env("KEEL_BACKUP__KEY_FILE", &key_file)
            .env("KEEL_BACKUP__DIR", &backups)
            .output()
            .unwrap()
    };
    let taken = run(&data, &["backup"]);
    assert!(taken.status.success(), "{}", String::from_utf8_lossy(&taken.stderr));
    let report: serde_json::Value = serde_json::from_slice(&taken.stdout).unwrap();
    let name = report["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("cli-") && name.ends_with(".tar.zst.age"), "{name}");

    let list = run(&data, &["backup", "list"]);
    assert!(String::from_utf8_lossy(&list.stdout).starts_with(&name));
    let verify = run(&data, &["backup", "verify", "--quiet"]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    assert!(String::from_utf8_lossy(&verify.stderr).contains("verified"));
    let show = run(&data, &["backup", "show", &name]);
    let manifest: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(manifest["contents"]["tables"]["keel_users"], 1);
    assert_eq!(manifest["backend"], "sqlite");

    let restore = run(&restored, &["restore", "latest", "--quiet"]);
    assert!(restore.status.success(), "{}", String::from_utf8_lossy(&restore.stderr));
    // The restored copy holds the user: creating her again is refused.
    let again = create_ann(&restored);
    assert!(!again.status.success());
    let refused = run(&restored, &["restore", &name, "--quiet"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));
    let forced = run(&restored, &["restore", &name, "--quiet", "--force"]);
    assert!(forced.status.success(), "{}", String::from_utf8_lossy(&forced.stderr));

    // Another key reads nothing.
    std::fs::write(&key_file, keel_server_key()).unwrap();
    let wrong = run(&restored, &["backup", "verify", "--quiet"]);
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("another key"));
}

fn keel_server_key() -> String {
    String::from_utf8(keel().args(["backup", "keygen"]).output().unwrap().stdout).unwrap()
}

#[test]
fn users_verify_reset_link_disable_and_enable() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), SPEC);
    let data = dir.path().join("data");
    let users = |args: &[&str]| {
        let mut all = vec!["users"];
        all.extend_from_slice(args);
        on_app(&all, &spec, &data, &[])
    };
    let out =
        |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    let apply = on_app(&["migrate", "apply"], &spec, &data, &[]);
    assert!(apply.status.success(), "{}", out(&apply));
    let created = users(&[
        "create",
        "--email",
        "ann@example.com",
        "--password",
        "a long passphrase",
    ]);
    assert!(created.status.success(), "{}", out(&created));
    let link = users(&["reset-link", "--email", "Ann@Example.com"]);
    assert!(link.status.success(), "{}", out(&link));
    let printed = String::from_utf8_lossy(&link.stdout);
    assert!(printed.trim().contains("/_/auth/reset?token=kr_"), "{printed}");
    assert!(String::from_utf8_lossy(&link.stderr).contains("works once"));
    let verified = users(&["verify", "--email", "ann@example.com"]);
    assert!(out(&verified).contains("counts as verified"), "{}", out(&verified));
    let disabled = users(&["disable", "--email", "ann@example.com"]);
    assert!(
        out(&disabled).contains("is disabled; 0 sessions ended"),
        "{}",
        out(&disabled)
    );
    let enabled = users(&["enable", "--email", "ann@example.com"]);
    assert!(out(&enabled).contains("is enabled"), "{}", out(&enabled));
    let removed = users(&["remove-mfa", "--email", "ann@example.com"]);
    assert!(out(&removed).contains("has no second factor now"), "{}", out(&removed));
    let unknown = users(&["disable", "--email", "nobody@example.com"]);
    assert!(!unknown.status.success());
    assert!(
        out(&unknown).contains("no user has the address nobody@example.com"),
        "{}",
        out(&unknown)
    );
}
