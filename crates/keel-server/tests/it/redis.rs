//! Redis as optional shared state, against a real `redis-server` this test starts, stops and
//! restarts: token lookups are cached and revoked across instances, and when Redis goes down
//! Keel keeps serving, reports "degraded", and reconnects by itself.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_testkit::{Backend, TestApp, both, json};

struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
        };
        server.restart();
        server
    }

    /// Starts (again) on the same port.
    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn keys(&self, pattern: &str) -> Vec<String> {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw", "KEYS", pattern])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn keeps_serving_while_redis_is_down_and_reconnects(backend: Backend) {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let app = TestApp::spawn_with(backend, keel_testkit::TEST_SPEC, |c| {
        c.redis.url = Some(keel_server::config::Secret(url))
    })
    .await;
    let (_, token) = app.signup("a@example.com").await;

    // A lookup fills the shared cache; the next one is served from it.
    assert_eq!(app.get("/api/v1/auth/me", &token).await.status, 200);
    assert_eq!(
        redis.keys("keel:auth:*").len(),
        1,
        "the token lookup is cached in Redis"
    );
    let before = app.statements();
    assert_eq!(app.get("/api/v1/auth/me", &token).await.status, 200);
    assert_eq!(
        app.statements() - before,
        1,
        "only the memberships query ran: the token came from Redis"
    );

    // Logging out deletes the cached entry, so no instance accepts the token any more.
    assert_eq!(
        app.request("POST", "/api/v1/auth/logout", Some(&token), None)
            .await
            .status,
        204
    );
    assert!(redis.keys("keel:auth:*").is_empty());
    assert_eq!(app.get("/api/v1/auth/me", &token).await.status, 401);

    let login = app
        .request(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "a@example.com", "password": "correct horse battery"})),
        )
        .await;
    let token = login.body["token"].as_str().unwrap().to_string();
    assert_eq!(app.get("/api/v1/auth/me", &token).await.status, 200);
    let ready = app.request("GET", "/health/ready", None, None).await;
    assert_eq!(ready.body["status"], "ok", "{}", ready.text);
    assert_eq!(ready.body["checks"]["redis"]["status"], "ok");

    // Redis goes away: requests still work from the database; readiness says degraded.
    redis.stop();
    assert_eq!(app.get("/api/v1/auth/me", &token).await.status, 200);
    let ready = app.request("GET", "/health/ready", None, None).await;
    assert_eq!(ready.status, 200, "an optional dependency does not fail readiness");
    assert_eq!(ready.body["status"], "degraded", "{}", ready.text);
    assert_eq!(ready.body["checks"]["redis"]["status"], "failing");
    let metrics = app.request("GET", "/metrics", None, None).await.text;
    assert!(metrics.contains("keel_redis_up 0"), "{metrics}");

    // It comes back on the same address: Keel reconnects without a restart.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = app.request("GET", "/health/ready", None, None).await;
        if ready.body["status"] == "ok" {
            break;
        }
        assert!(Instant::now() < deadline, "never reconnected: {}", ready.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.get("/api/v1/auth/me", &token).await.status, 200);
    assert_eq!(redis.keys("keel:auth:*").len(), 1, "the cache fills again");
}

both!(keeps_serving_while_redis_is_down_and_reconnects);
