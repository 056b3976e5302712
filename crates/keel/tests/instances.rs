//! N identical instances on one PostgreSQL and Redis (P8, O7): a session made on one works on
//! the others, a write on one is read on another, a logout on one is honoured by all, and a
//! rolling restart behind a load balancer fails no request.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_testkit::{Backend, RedisServer, TestDb};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One HTTP/1.1 request on a fresh connection: (status, body). Any I/O failure is `None`.
fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: keel\r\nconnection: close\r\ncontent-type: application/json\r\n{auth}content-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

fn json_field(body: &str, pointer: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    value
        .pointer(pointer)
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("{pointer} in {body}"))
        .to_string()
}

struct Instance {
    port: u16,
    child: Child,
}

struct Cluster {
    spec: std::path::PathBuf,
    env: Vec<(String, String)>,
}

impl Cluster {
    fn start(&self, port: u16) -> Instance {
        let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
        for (key, _) in std::env::vars() {
            if key.starts_with("KEEL_") {
                command.env_remove(key);
            }
        }
        command
            .args(["serve", "--spec"])
            .arg(&self.spec)
            .args(["--port", &port.to_string()])
            .envs(self.env.clone());
        let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let instance = Instance { port, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(http(port, "GET", "/health/ready", None, ""), Some((200, _))) {
            assert!(Instant::now() < deadline, "instance on {port} never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        instance
    }
}

impl Instance {
    /// SIGTERM, then wait for a clean exit.
    fn stop(mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "instance on {} exited with {status}", self.port);
                return;
            }
            assert!(Instant::now() < deadline, "instance on {} did not stop", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// A round-robin TCP load balancer that sends new connections only to backends whose
/// `/health/ready` answered 200 in the last poll (every 50 ms), and tries the next backend
/// when a connection is refused — what nginx or an ELB does, small enough to read.
struct Balancer {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Balancer {
    fn start(backends: Vec<u16>) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let ready: Arc<Mutex<Vec<bool>>> = Arc::new(Mutex::new(vec![true; backends.len()]));
        {
            let (ready, stop, backends) = (ready.clone(), stop.clone(), backends.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for (i, port) in backends.iter().enumerate() {
                        let up = matches!(http(*port, "GET", "/health/ready", None, ""), Some((200, _)));
                        ready.lock().unwrap()[i] = up;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        }
        let next = Arc::new(AtomicUsize::new(0));
        {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let (ready, backends, next) = (ready.clone(), backends.clone(), next.clone());
                    std::thread::spawn(move || {
                        let start = next.fetch_add(1, Ordering::Relaxed);
                        let upstream = (0..backends.len() * 2).find_map(|attempt| {
                            let i = (start + attempt) % backends.len();
                            let up = ready.lock().unwrap()[i];
                            if !up && attempt < backends.len() {
                                return None;
                            }
                            TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], backends[i]))).ok()
                        });
                        let Some(upstream) = upstream else { return };
                        let (mut client_read, mut upstream_write) =
                            (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                        let forward = std::thread::spawn(move || {
                            let _ = std::io::copy(&mut client_read, &mut upstream_write);
                            let _ = upstream_write.shutdown(std::net::Shutdown::Write);
                        });
                        let (mut upstream_read, mut client_write) = (upstream, client);
                        let _ = std::io::copy(&mut upstream_read, &mut client_write);
                        let _ = client_write.shutdown(std::net::Shutdown::Write);
                        let _ = forward.join();
                    });
                }
            });
        }
        Balancer { port, stop }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn configure(database: &TestDb, redis: &RedisServer) -> Vec<(String, String)> {
    let keel_store::Location::Postgres { url, schema, .. } = &database.location else {
        panic!("PostgreSQL only")
    };
    vec![
        ("KEEL_DATABASE__URL".into(), url.clone()),
        ("KEEL_DATABASE__SCHEMA".into(), schema.clone().unwrap()),
        ("KEEL_DATABASE__MAX_CONNECTIONS".into(), "4".into()),
        ("KEEL_REDIS__URL".into(), redis.url()),
        ("KEEL_SERVER__DRAIN_MS".into(), "500".into()),
        ("KEEL_AUTH__ARGON2_MEMORY_KIB".into(), "256".into()),
        ("KEEL_AUTH__ARGON2_ITERATIONS".into(), "1".into()),
        ("KEEL_LOG__LEVEL".into(), "warn".into()),
        // The rolling restart runs hundreds of requests a second as one user from one
        // address; limits across instances are tested in keel-server's redis.rs.
        ("KEEL_SERVER__RATE_LIMITS".into(), "false".into()),
    ]
}

fn migrate(spec: &Path, env: &[(String, String)]) {
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["migrate", "apply", "--spec"])
        .arg(spec)
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_state_and_restart_without_failing_a_request() {
    let database = TestDb::new(Backend::Postgres).await;
    let redis = RedisServer::start();
    let spec = database.dir.path().join("keel.toml");
    std::fs::write(&spec, keel_testkit::TEST_SPEC).unwrap();
    let env = configure(&database, &redis);
    migrate(&spec, &env);
    let cluster = Cluster { spec, env };
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut instances: Vec<Option<Instance>> = ports.iter().map(|p| Some(cluster.start(*p))).collect();
    let (a, b, c) = (ports[0], ports[1], ports[2]);

    // A session made on one instance works on the others.
    let (status, body) = http(
        a,
        "POST",
        "/api/v1/auth/signup",
        None,
        r#"{"email":"a@example.com","password":"correct horse battery"}"#,
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let token = json_field(&body, "/token");
    assert_eq!(http(b, "GET", "/api/v1/auth/me", Some(&token), "").unwrap().0, 200);
    assert_eq!(http(c, "GET", "/api/v1/auth/me", Some(&token), "").unwrap().0, 200);
    // A write on one is read on another.
    assert_eq!(
        http(
            b,
            "POST",
            "/api/v1/orgs",
            Some(&token),
            r#"{"slug":"acme","name":"Acme"}"#
        )
        .unwrap()
        .0,
        201
    );
    let (status, body) = http(
        c,
        "POST",
        "/api/v1/orgs/acme/projects",
        Some(&token),
        r#"{"name":"Apollo"}"#,
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let project = json_field(&body, "/id");
    assert_eq!(
        http(
            a,
            "GET",
            &format!("/api/v1/orgs/acme/projects/{project}"),
            Some(&token),
            ""
        )
        .unwrap()
        .0,
        200
    );
    // A logout on one is honoured by all (the shared token cache is cleared).
    let (_, body) = http(
        a,
        "POST",
        "/api/v1/auth/login",
        None,
        r#"{"email":"a@example.com","password":"correct horse battery"}"#,
    )
    .unwrap();
    let second = json_field(&body, "/token");
    for port in &ports {
        assert_eq!(http(*port, "GET", "/api/v1/auth/me", Some(&second), "").unwrap().0, 200);
    }
    assert_eq!(
        http(c, "POST", "/api/v1/auth/logout", Some(&second), "").unwrap().0,
        204
    );
    // Each instance drops its in-process copy when the invalidation arrives (milliseconds).
    for port in &ports {
        let deadline = Instant::now() + Duration::from_secs(2);
        while http(*port, "GET", "/api/v1/auth/me", Some(&second), "").unwrap().0 != 401 {
            assert!(
                Instant::now() < deadline,
                "instance {port} still accepts the revoked token"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    // Rolling restart under load through the balancer: no request may fail.
    let balancer = Balancer::start(ports.clone());
    let running = Arc::new(AtomicBool::new(true));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(Mutex::new(Vec::<String>::new())));
    let mut clients = vec![];
    for _ in 0..6 {
        let (running, ok, failed, token, port) = (
            running.clone(),
            ok.clone(),
            failed.clone(),
            token.clone(),
            balancer.port,
        );
        clients.push(std::thread::spawn(move || {
            while running.load(Ordering::Relaxed) {
                match http(port, "GET", "/api/v1/orgs/acme/projects?limit=5", Some(&token), "") {
                    Some((200, _)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failed.lock().unwrap().push(format!("{other:?}")),
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(300));
    for (i, port) in ports.iter().enumerate() {
        instances[i].take().unwrap().stop();
        instances[i] = Some(cluster.start(*port));
        std::thread::sleep(Duration::from_millis(200));
    }
    running.store(false, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let failed = failed.lock().unwrap();
    let served = ok.load(Ordering::Relaxed);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the rolling restart: {:?}",
        failed.len(),
        served + failed.len() as u64,
        &failed[..failed.len().min(5)]
    );
    assert!(served > 100, "the load ran ({served} requests)");
    drop(balancer);
}
