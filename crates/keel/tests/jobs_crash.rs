//! Crash safety with real processes (J6), on both backends: `kill -9` of the instance running
//! a job; a second instance runs it again, once, after the lease expires, and completes it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_testkit::{Backend, TestDb};

fn spec(marker: &Path) -> String {
    format!(
        r#"
[app]
name = "crash"

[roles]
order = ["owner"]

[jobs.render]
handler = "command"
command = ["sh", "-c", "echo $KEEL_JOB_ATTEMPT >> {marker}; sleep 2; echo '{{\"pages\": 1}}'"]
timeout = "30s"
attempts = 3

[collections.notes]
fields.title = {{ type = "text" }}
"#,
        marker = marker.display()
    )
}

fn env_for(database: &TestDb) -> Vec<(String, String)> {
    let mut env = vec![
        ("KEEL_JOBS__LEASE_SECONDS".to_string(), "2".to_string()),
        ("KEEL_JOBS__POLL_INTERVAL_MS".into(), "100".into()),
        ("KEEL_LOG__LEVEL".into(), "warn".into()),
    ];
    match &database.location {
        keel_store::Location::Sqlite(path) => {
            env.push((
                "KEEL_APP__DATA_DIR".into(),
                path.parent().unwrap().display().to_string(),
            ));
        }
        keel_store::Location::Postgres { url, schema, .. } => {
            env.push(("KEEL_DATABASE__URL".into(), url.clone()));
            env.push(("KEEL_DATABASE__SCHEMA".into(), schema.clone().unwrap()));
        }
    }
    env
}

fn keel(env: &[(String, String)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
    for (key, _) in std::env::vars() {
        if key.starts_with("KEEL_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().cloned());
    command
}

/// Starts `keel serve` on a free port. Another test may take the port between our probe and
/// the server's bind: a server that exits at once is started again on another port.
fn serve(spec: &Path, env: &[(String, String)]) -> Child {
    for _ in 0..10 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = keel(env)
            .args(["serve", "--migrate", "--spec"])
            .arg(spec)
            .args(["--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        match child.try_wait().unwrap() {
            None => return child,
            Some(status) => eprintln!("keel serve exited at once ({status}); trying another port"),
        }
    }
    panic!("keel serve did not stay up on any of 10 ports");
}

fn run(spec: &Path, env: &[(String, String)], args: &[&str]) -> String {
    let output = keel(env)
        .args(["jobs", "--spec"])
        .arg(spec)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "keel jobs {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn wait_until(what: &str, seconds: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn a_killed_instances_job_runs_again_once(backend: Backend) {
    let database = TestDb::new(backend).await;
    let marker = database.dir.path().join("runs.txt");
    let spec_path = database.dir.path().join("keel.toml");
    std::fs::write(&spec_path, spec(&marker)).unwrap();
    let env = env_for(&database);
    let mut first = serve(&spec_path, &env);
    // Until the first instance has migrated, `keel jobs` refuses the database; its answer goes
    // into the failure message.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let output = keel(&env)
            .args(["jobs", "--spec"])
            .arg(&spec_path)
            .arg("queues")
            .output()
            .unwrap();
        if output.status.success() {
            break;
        }
        let last = String::from_utf8_lossy(&output.stderr);
        let exited = first.try_wait().unwrap();
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the first instance's migration (serve exited: {exited:?}); keel jobs said: {last}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let enqueued = run(&spec_path, &env, &["enqueue", "render"]);
    let id: i64 = enqueued.split_whitespace().nth(2).unwrap().parse().unwrap();
    wait_until("the first attempt to start", 20, || marker.exists());
    first.kill().unwrap(); // SIGKILL: no shutdown, no hand-back
    first.wait().unwrap();
    let mut second = serve(&spec_path, &env);
    wait_until("the job to complete on the second instance", 40, || {
        run(&spec_path, &env, &["get", &id.to_string()]).contains("\"state\": \"completed\"")
    });
    let job: serde_json::Value = serde_json::from_str(&run(&spec_path, &env, &["get", &id.to_string()])).unwrap();
    assert_eq!(job["attempt"], 2, "{job}");
    assert_eq!(job["result"], serde_json::json!({"pages": 1}));
    assert!(
        job["errors"][0]["error"].as_str().unwrap().contains("lease expired"),
        "the rescue is recorded: {job}"
    );
    // The orphaned first attempt's shell also finished its sleep meanwhile, but nobody could
    // record it: the job ran twice in all (attempts 1 and 2) and completed once.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "1\n2\n");
    second.kill().unwrap();
    second.wait().unwrap();
}

keel_testkit::both!(a_killed_instances_job_runs_again_once);
