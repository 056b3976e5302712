//! Test support: `TestApp` spawns Keel against a fresh SQLite file or a fresh PostgreSQL
//! schema, and sends requests in-process. The same tests run on both backends through the
//! `both!` macro; the PostgreSQL variant fails (never skips) when no server is reachable.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use keel_server::{AppState, Config};
use keel_store::{Db, Location, PoolConfig};
use serde_json::Value;
use tower::ServiceExt;

pub use keel_server;
pub use keel_store;
pub use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server tests use: `KEEL_TEST_PG_URL`, else the local default.
pub fn pg_url() -> String {
    std::env::var("KEEL_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// Generates a `sqlite` and a `postgres` test for an `async fn(Backend)`.
#[macro_export]
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::Backend::Postgres).await
                }
            }
        )*
    };
}

/// A spec for tests: projects and tasks with relations, rules and search, plus a global collection.
pub const TEST_SPEC: &str = r#"
[app]
name = "testapp"

[roles]
order = ["owner", "admin", "member", "viewer"]

[collections.projects]
fields.name = { type = "text", required = true, max = 100, unique = true, search = true }
fields.budget = { type = "number", min = 0 }
fields.archived = { type = "bool", default = false }
rules.create = "role >= admin"
rules.delete = "role >= admin"

[collections.tasks]
fields.project = { type = "relation", to = "projects", required = true, on_delete = "cascade" }
fields.title = { type = "text", required = true, min = 1, max = 200, search = true }
fields.status = { type = "select", values = ["todo", "doing", "done"], default = "todo" }
fields.assignee = { type = "relation", to = "users", on_delete = "set_null" }
fields.due = { type = "date" }
fields.points = { type = "integer", min = 0, max = 100 }
fields.meta = { type = "json" }
fields.code = { type = "text", pattern = "[A-Z]{3}-[0-9]+" }
indexes = [["project", "status"], { fields = ["-due"] }, { fields = ["status"], where = "status != 'done'" }]
rules.list = "role >= viewer"
rules.create = "role >= member"
rules.update = "role >= admin || assignee = @user"
rules.delete = "role >= admin"

[collections.comments]
fields.task = { type = "relation", to = "tasks", required = true }
fields.body = { type = "text", required = true }

[collections.countries]
global = true
fields.code = { type = "text", required = true, unique = true, max = 2 }
fields.name = { type = "text", required = true }
"#;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh database: a SQLite file in a temp dir, or a new PostgreSQL schema dropped on drop.
pub struct TestDb {
    pub location: Location,
    pub dir: tempfile::TempDir,
    pg_schema: Option<String>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => TestDb {
                location: Location::Sqlite(dir.path().join("keel.db")),
                dir,
                pg_schema: None,
            },
            Backend::Postgres => {
                let schema = format!(
                    "keel_test_{}_{}",
                    std::process::id(),
                    COUNTER.fetch_add(1, Ordering::Relaxed)
                );
                let admin = Db::connect(
                    &Location::Postgres {
                        url: pg_url(),
                        schema: None,
                        replicas: vec![],
                    },
                    &PoolConfig {
                        max_connections: 1,
                        ..PoolConfig::default()
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL is required for this test ({}): {e}", pg_url()));
                let mut tx = admin.begin().await.expect("begin");
                tx.execute_script(&format!(
                    "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
                ))
                .await
                .expect("create schema");
                tx.commit().await.expect("commit");
                admin.close().await;
                TestDb {
                    location: Location::Postgres {
                        url: pg_url(),
                        schema: Some(schema.clone()),
                        replicas: vec![],
                    },
                    dir,
                    pg_schema: Some(schema),
                }
            }
        }
    }

    /// Opens a handle with a small pool.
    pub async fn connect(&self) -> Db {
        Db::connect(
            &self.location,
            &PoolConfig {
                max_connections: 4,
                ..PoolConfig::default()
            },
        )
        .await
        .expect("connect")
    }

    /// Points a config at this database.
    pub fn configure(&self, config: &mut Config) {
        match &self.location {
            Location::Sqlite(path) => config.app.data_dir = path.parent().expect("parent").to_path_buf(),
            Location::Postgres { url, schema, .. } => {
                config.database.url = Some(keel_server::config::Secret(url.clone()));
                config.database.schema = schema.clone();
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(schema) = self.pg_schema.take() {
            drop_schema(schema);
        }
    }
}

/// Drops a test schema; async work on a thread of its own so `Drop` can wait for it.
fn drop_schema(schema: String) {
    let url = pg_url();
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let location = Location::Postgres {
                url,
                schema: None,
                replicas: vec![],
            };
            if let Ok(admin) = Db::connect(
                &location,
                &PoolConfig {
                    max_connections: 1,
                    ..PoolConfig::default()
                },
            )
            .await
                && let Ok(mut tx) = admin.begin().await
            {
                let _ = tx
                    .execute_script(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .await;
                let _ = tx.commit().await;
                admin.close().await;
            }
        });
    })
    .join();
}

pub struct TestApp {
    pub state: AppState,
    pub backend: Backend,
    router: axum::Router,
    _database: TestDb,
}

pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl TestResponse {
    /// The error code of an error envelope.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends a request to a router, from 127.0.0.1 unless it carries its own `ConnectInfo`.
pub async fn send_to(router: axum::Router, mut request: Request<Body>) -> axum::response::Response {
    if request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .is_none()
    {
        let peer: std::net::SocketAddr = "127.0.0.1:40000".parse().expect("address");
        request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
    }
    router.oneshot(request).await.expect("infallible")
}

/// A pseudo-header of test requests: the client address to present as the socket's peer.
pub const PEER_HEADER: &str = "x-test-peer";

/// A test configuration: cheap password hashing, small pools, and no rate limits (tests sign
/// up many users from one address; the rate-limit tests turn them on).
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut config = Config::default();
    config.app.data_dir = dir.to_path_buf();
    config.app.migrate_on_start = true;
    config.auth.argon2_memory_kib = 256;
    config.auth.argon2_iterations = 1;
    config.auth.min_password_length = 8;
    config.database.max_connections = 4;
    config.log.level = "warn".into();
    config.server.rate_limits = false;
    config
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        TestApp::spawn_with(backend, TEST_SPEC, |_| {}).await
    }

    /// Spawns with a spec and a config tweak.
    pub async fn spawn_with(backend: Backend, spec: &str, tweak: impl FnOnce(&mut Config)) -> TestApp {
        let database = TestDb::new(backend).await;
        let mut config = test_config(database.dir.path());
        database.configure(&mut config);
        tweak(&mut config);
        let schema = keel_server::load_schema(spec).unwrap_or_else(|p| panic!("test spec problems: {p:?}"));
        let db = keel_server::open_database(&config, &schema)
            .await
            .expect("open database");
        let state = keel_server::state(config, schema, db);
        let router = keel_server::router(state.clone());
        TestApp {
            state,
            backend,
            router,
            _database: database,
        }
    }

    /// Another instance on the same database, spec and configuration (as a second
    /// `keel serve` would be).
    pub async fn sibling(&self) -> TestApp {
        let config = self.state.config.clone();
        let db = keel_server::open_database(&config, &self.state.schema)
            .await
            .expect("open database");
        let state = keel_server::state(config, (*self.state.schema).clone(), db);
        let router = keel_server::router(state.clone());
        let database = TestDb {
            location: self._database.location.clone(),
            dir: tempfile::tempdir().expect("temp dir"),
            pg_schema: None,
        };
        TestApp {
            state,
            backend: self.backend,
            router,
            _database: database,
        }
    }

    pub fn db(&self) -> &Db {
        &self.state.db
    }

    /// How many statements the database has run so far.
    pub fn statements(&self) -> u64 {
        self.state.db.statements()
    }

    pub async fn request(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> TestResponse {
        let mut headers = vec![];
        if let Some(token) = token {
            headers.push(("authorization".to_string(), format!("Bearer {token}")));
        }
        self.request_with(method, path, headers, body.map(|b| b.to_string()))
            .await
    }

    /// A request with explicit headers and a raw body (sent as JSON unless a content-type is given).
    pub async fn request_with(
        &self,
        method: &str,
        path: &str,
        headers: Vec<(String, String)>,
        body: Option<String>,
    ) -> TestResponse {
        self.request_bytes(method, path, headers, body.map(String::into_bytes))
            .await
    }

    /// A request with a body of raw bytes (which need not be UTF-8).
    pub async fn request_bytes(
        &self,
        method: &str,
        path: &str,
        headers: Vec<(String, String)>,
        body: Option<Vec<u8>>,
    ) -> TestResponse {
        let mut builder = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).expect("method"))
            .uri(path);
        // The peer address a socket would give (`x-test-peer` picks another client).
        let mut peer: std::net::SocketAddr = "127.0.0.1:40000".parse().expect("address");
        let mut headers = headers;
        if let Some(at) = headers.iter().position(|(k, _)| k == PEER_HEADER) {
            let ip: std::net::IpAddr = headers.remove(at).1.parse().expect("x-test-peer is an IP address");
            peer = std::net::SocketAddr::new(ip, 40000);
        }
        builder = builder.extension(axum::extract::ConnectInfo(peer));
        let has_type = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        if body.is_some() && !has_type {
            builder = builder.header("content-type", "application/json");
        }
        // As a real client sends it (in-process requests get none from hyper).
        if let Some(body) = &body
            && !builder.headers_ref().is_some_and(|h| h.contains_key("content-length"))
        {
            builder = builder.header("content-length", body.len());
        }
        let request = builder
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .expect("request");
        let response = self.router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&bytes).to_string();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        TestResponse {
            status,
            headers,
            body,
            text,
        }
    }

    /// Sends a request as built (e.g. with a streaming body), from 127.0.0.1 unless the
    /// request carries its own `ConnectInfo`.
    pub async fn send(&self, request: Request<Body>) -> axum::response::Response {
        send_to(self.router(), request).await
    }

    /// The app's router, to send requests from another task (`send_to`).
    pub fn router(&self) -> axum::Router {
        self.router.clone()
    }

    /// A request from another client address (as the socket's peer).
    pub async fn request_from(
        &self,
        peer: &str,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> TestResponse {
        let mut headers = vec![(PEER_HEADER.to_string(), peer.to_string())];
        if let Some(token) = token {
            headers.push(("authorization".to_string(), format!("Bearer {token}")));
        }
        self.request_with(method, path, headers, body.map(|b| b.to_string()))
            .await
    }

    pub async fn get(&self, path: &str, token: &str) -> TestResponse {
        self.request("GET", path, Some(token), None).await
    }
    pub async fn post(&self, path: &str, token: &str, body: Value) -> TestResponse {
        self.request("POST", path, Some(token), Some(body)).await
    }
    pub async fn patch(&self, path: &str, token: &str, body: Value) -> TestResponse {
        self.request("PATCH", path, Some(token), Some(body)).await
    }
    pub async fn delete(&self, path: &str, token: &str) -> TestResponse {
        self.request("DELETE", path, Some(token), None).await
    }

    /// Imports a file: `POST {path}/import?{query}` with the body as `content_type`.
    pub async fn import(
        &self,
        collection_path: &str,
        query: &str,
        token: &str,
        content_type: &str,
        body: impl Into<Vec<u8>>,
    ) -> TestResponse {
        let headers = vec![
            ("authorization".to_string(), format!("Bearer {token}")),
            ("content-type".to_string(), content_type.to_string()),
        ];
        let path = if query.is_empty() {
            format!("{collection_path}/import")
        } else {
            format!("{collection_path}/import?{query}")
        };
        self.request_bytes("POST", &path, headers, Some(body.into())).await
    }

    /// Creates a record (or anything answering 201 with an `id`) and returns its id.
    pub async fn create(&self, path: &str, token: &str, body: Value) -> String {
        let response = self.post(path, token, body).await;
        assert_eq!(response.status, StatusCode::CREATED, "POST {path}: {}", response.text);
        response.body["id"].as_str().expect("an id").to_string()
    }

    /// Signs up a user; returns (user id, token).
    pub async fn signup(&self, email: &str) -> (String, String) {
        let response = self
            .request(
                "POST",
                "/api/v1/auth/signup",
                None,
                Some(json!({ "email": email, "password": "correct horse battery" })),
            )
            .await;
        assert_eq!(
            response.status,
            StatusCode::CREATED,
            "signup {email}: {}",
            response.text
        );
        (
            response.body["user"]["id"].as_str().expect("user id").to_string(),
            response.body["token"].as_str().expect("token").to_string(),
        )
    }

    /// Creates an org owned by the token's user.
    pub async fn org(&self, token: &str, slug: &str) -> String {
        let response = self
            .post("/api/v1/orgs", token, json!({ "slug": slug, "name": slug }))
            .await;
        assert_eq!(
            response.status,
            StatusCode::CREATED,
            "create org {slug}: {}",
            response.text
        );
        response.body["org"]["id"].as_str().expect("org id").to_string()
    }

    /// Signs up a user and adds them to an org with a role; returns (user id, token).
    pub async fn member(&self, owner_token: &str, slug: &str, email: &str, role: &str) -> (String, String) {
        let (id, token) = self.signup(email).await;
        let response = self
            .post(
                &format!("/api/v1/orgs/{slug}/members"),
                owner_token,
                json!({ "email": email, "role": role }),
            )
            .await;
        assert_eq!(response.status, StatusCode::CREATED, "add member: {}", response.text);
        (id, token)
    }

    /// Waits (up to `seconds`) until job `id` is in `state`, and returns it.
    pub async fn wait_job(&self, id: i64, state: keel_store::jobs::JobState, seconds: u64) -> keel_store::jobs::Job {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        loop {
            let job = keel_store::jobs::job_get(self.db(), id).await.expect("job_get");
            match job {
                Some(job) if job.state == state => return job,
                other if std::time::Instant::now() > deadline => {
                    panic!("job {id} did not reach {state:?} in {seconds} s: {other:?}")
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    }

    /// Serves the app on a real socket (port 0) until the test ends; returns its base URL.
    pub async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let service = self
            .router
            .clone()
            .into_make_service_with_connect_info::<std::net::SocketAddr>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, service).await;
        });
        format!("http://{address}")
    }

    /// Makes a user the superuser directly in the database.
    pub async fn make_superuser(&self, user_id: &str) {
        let id = uuid::Uuid::parse_str(user_id).expect("uuid");
        keel_store::system::user_set_superuser(self.db(), id, true)
            .await
            .expect("superuser");
    }
}

/// A real `redis-server` on a free port, for tests that stop and restart it.
pub struct RedisServer {
    child: Option<std::process::Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let mut server = RedisServer {
            child: None,
            port,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        server.restart();
        server
    }

    /// Starts (again) on the same port.
    pub fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
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
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start on {}",
                self.port
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Keys matching a pattern, through redis-cli.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let output = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw", "KEYS", pattern])
            .output()
            .expect("redis-cli");
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

/// A throwaway PostgreSQL primary with a streaming replica (`pg_basebackup -R`), on free
/// ports, run as the `postgres` user (initdb refuses root). For the read-replica tests.
pub struct PgCluster {
    pub primary_port: u16,
    pub replica_port: u16,
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
}

fn as_postgres(program: &std::path::Path, args: &[&str]) -> std::process::Output {
    try_as_postgres(program, args).unwrap_or_else(|e| panic!("{e}"))
}

fn try_as_postgres(program: &std::path::Path, args: &[&str]) -> Result<std::process::Output, String> {
    let output = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .output()
        .map_err(|e| format!("runuser: {e}"))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(format!(
            "{} {args:?}: {}",
            program.display(),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

impl PgCluster {
    /// Starts a primary and a replica; retried with fresh ports when another test took a
    /// port between choosing and binding it.
    pub fn start() -> PgCluster {
        let mut last = String::new();
        for _ in 0..3 {
            match PgCluster::try_start() {
                Ok(cluster) => return cluster,
                Err(error) => last = error,
            }
        }
        panic!("could not start a PostgreSQL primary and replica: {last}");
    }

    fn try_start() -> Result<PgCluster, String> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|e| {
                format!("PostgreSQL server binaries under /usr/lib/postgresql (scripts/test.sh installs them): {e}")
            })?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("pg_basebackup").exists())
            .max()
            .ok_or("no PostgreSQL version with pg_basebackup")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        std::process::Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir.path())
            .status()
            .map_err(|e| e.to_string())?;
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .expect("bind")
                .local_addr()
                .expect("addr")
                .port()
        };
        let (primary_port, replica_port) = (free(), free());
        let cluster = PgCluster {
            primary_port,
            replica_port,
            dir,
            bin,
        };
        try_as_postgres(
            &cluster.bin.join("initdb"),
            &[
                "-D",
                &cluster.path("primary"),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        )?;
        cluster.pg_ctl_start("primary", primary_port)?;
        try_as_postgres(
            &cluster.bin.join("pg_basebackup"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary_port.to_string(),
                "-U",
                "postgres",
                "-D",
                &cluster.path("replica"),
                "-R",
                "-X",
                "stream",
            ],
        )?;
        cluster.pg_ctl_start("replica", replica_port)?;
        Ok(cluster)
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn pg_ctl_start(&self, name: &str, port: u16) -> Result<(), String> {
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50",
            self.dir.path().display()
        );
        let log = self.path(&format!("{name}.log"));
        try_as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", &self.path(name), "-o", &options, "-l", &log, "-w", "start"],
        )
        .map(|_| ())
    }

    pub fn start_replica(&self) {
        self.pg_ctl_start("replica", self.replica_port)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn stop_replica(&self) {
        as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", &self.path("replica"), "-m", "immediate", "-w", "stop"],
        );
    }

    pub fn primary_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.primary_port)
    }

    pub fn replica_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.replica_port)
    }

    /// Runs SQL on the replica with psql (e.g. pausing WAL replay).
    pub fn replica_sql(&self, sql: &str) {
        let port = self.replica_port.to_string();
        as_postgres(
            &self.bin.join("psql"),
            &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-Atc", sql],
        );
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        for name in ["replica", "primary"] {
            let _ = std::process::Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .args(["-D", &self.path(name), "-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

/// A real SMTP server (Python's aiosmtpd) that keeps every message it receives in a maildir.
/// Its Python comes from `KEEL_TEST_PYTHON` (scripts/test-tools.sh installs it).
pub struct SmtpSink {
    child: std::process::Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl SmtpSink {
    pub fn start() -> SmtpSink {
        let python = std::env::var("KEEL_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let dir = tempfile::tempdir().expect("temp dir");
        let maildir = dir.path().join("mail");
        let child = std::process::Command::new(&python)
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(&maildir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{python} cannot start aiosmtpd ({e}); run scripts/test-tools.sh"));
        wait_for_port(
            port,
            15,
            &format!("aiosmtpd (is it installed for {python}? run scripts/test-tools.sh)"),
        );
        SmtpSink { child, port, dir }
    }

    /// Every message received so far, as raw RFC 5322 text.
    pub fn messages(&self) -> Vec<String> {
        let mut out = vec![];
        for folder in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(self.dir.path().join("mail").join(folder)) {
                for entry in entries.flatten() {
                    if let Ok(text) = std::fs::read_to_string(entry.path()) {
                        out.push(text);
                    }
                }
            }
        }
        out
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real S3-compatible server for the tests: s3rver (npm), which keeps objects on disk in a
/// temporary directory, with one bucket, `keel`. `scripts/test-tools.sh` installs it and the
/// test script exports its path as `KEEL_TEST_S3RVER`.
pub struct S3Server {
    child: std::process::Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl S3Server {
    pub const BUCKET: &'static str = "keel";

    pub fn start() -> S3Server {
        let program = std::env::var("KEEL_TEST_S3RVER").unwrap_or_else(|_| "s3rver".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let dir = tempfile::tempdir().expect("temp dir");
        let child = std::process::Command::new(&program)
            .args(["--silent", "-a", "127.0.0.1", "-p", &port.to_string(), "-d"])
            .arg(dir.path())
            .args(["--configure-bucket", Self::BUCKET])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} ({e}); run scripts/test-tools.sh"));
        wait_for_port(port, 30, "s3rver (run scripts/test-tools.sh)");
        S3Server { child, port, dir }
    }

    /// Points a config's file storage at this server.
    pub fn configure(&self, config: &mut Config) {
        config.files.backend = "s3".into();
        config.files.s3_bucket = Some(Self::BUCKET.into());
        config.files.s3_endpoint = Some(format!("http://127.0.0.1:{}", self.port));
        config.files.s3_access_key_id = Some("S3RVER".into());
        config.files.s3_secret_access_key = Some(keel_server::config::Secret("S3RVER".into()));
        config.files.s3_allow_http = true;
    }

    /// The objects the server holds, by key.
    pub fn objects(&self) -> Vec<String> {
        let root = self.dir.path().join(Self::BUCKET);
        let mut out: Vec<String> = files_under(&root)
            .iter()
            .filter_map(|path| {
                let key = path.strip_prefix(&root).ok()?.to_str()?;
                key.strip_suffix("._S3rver_object").map(str::to_string)
            })
            .collect();
        out.sort();
        out
    }
}

/// Waits up to `seconds` for a local server to accept connections on `port`.
fn wait_for_port(port: u16, seconds: u64, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "{what} did not start on {port}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Every file under a directory, at any depth.
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real OpenID provider for the sign-in tests: oidc-provider (npm, OpenID Certified) run by
/// `scripts/oidc-test-provider.mjs` on a free loopback port, with the client `keel` /
/// `keel-secret`. `scripts/test-tools.sh` installs it; the test script exports where as
/// `KEEL_TEST_OIDC_MODULES`. An authorization request signs in the account named by its
/// `login_hint` (`name@example.com`, verified; `name+unverified@example.com`, not).
pub struct OidcProvider {
    child: Option<std::process::Child>,
    pub port: u16,
}

impl OidcProvider {
    pub const CLIENT_ID: &'static str = "keel";
    pub const CLIENT_SECRET: &'static str = "keel-secret";

    /// Starts with signing key `kid`, the clock shifted by `clock_offset` seconds, on a free
    /// port (another one if a process took the port between the check and the start).
    pub fn start(kid: &str, clock_offset: i64) -> OidcProvider {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .expect("bind")
                .local_addr()
                .expect("addr")
                .port();
            let mut provider = OidcProvider { child: None, port };
            match provider.launch(kid, clock_offset) {
                Ok(()) => return provider,
                Err(why) if why.contains("EADDRINUSE") => continue,
                Err(why) => panic!("oidc-provider did not start: {why}"),
            }
        }
        panic!("oidc-provider found no free port in 5 tries");
    }

    /// Stops it (if running) and starts it again on the same port with a fresh key `kid`: a
    /// key rotation, as the provider's clients see it.
    pub fn restart(&mut self, kid: &str, clock_offset: i64) {
        self.stop();
        if let Err(why) = self.launch(kid, clock_offset) {
            panic!("oidc-provider did not restart: {why}");
        }
    }

    /// Runs the provider and waits (up to 20 s) until it listens; the process's output when it
    /// exits first or does not listen in time. A start that hangs is tried again (three tries):
    /// on a loaded machine a node start has been seen to stall past a minute, once in hundreds.
    fn launch(&mut self, kid: &str, clock_offset: i64) -> Result<(), String> {
        let mut tried = String::new();
        for _ in 0..3 {
            match self.launch_once(kid, clock_offset) {
                Ok(()) => return Ok(()),
                Err(why) if why.contains("EADDRINUSE") => return Err(why),
                Err(why) => tried.push_str(&format!("{why}\n")),
            }
        }
        Err(tried)
    }

    fn launch_once(&mut self, kid: &str, clock_offset: i64) -> Result<(), String> {
        let modules = std::env::var("KEEL_TEST_OIDC_MODULES")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/oidc-provider").to_string());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/oidc-test-provider.mjs");
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let mut child = std::process::Command::new("node")
            .arg(script)
            .args(["--modules", &modules, "--port", &self.port.to_string(), "--kid", kid])
            .args(["--clock-offset", &clock_offset.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(append(log.path()))
            .stderr(append(log.path()))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node ({e}); run scripts/test-tools.sh"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            // The script says so once it listens (a connection alone could reach another
            // process that took the port).
            let said = std::fs::read_to_string(log.path()).unwrap_or_default();
            if said.contains("oidc-test-provider on") {
                self.child = Some(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                let stderr = std::fs::read_to_string(log.path()).unwrap_or_default();
                return Err(format!("node exited with {status}: {stderr}"));
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let stderr = std::fs::read_to_string(log.path()).unwrap_or_default();
                let _ = child.wait();
                return Err(format!("not listening on {} after 20 s: {stderr}", self.port));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Stops it: the provider is down.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(std::time::Instant::now() < deadline, "oidc-provider did not stop");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// The file opened for appending: two handles on it (stdout, stderr) never write over each
/// other's lines, as two handles at offset 0 would.
fn append(path: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("the log file")
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.stop();
    }
}
