//! `keel bench auth`: sign-ins per second and their latency, with the password only and
//! with the password and a TOTP code (A5), through one `keel serve` of the pms example,
//! rounds alternating the two.
//!
//! Every user has the same password, hashed once at the configured argon2 cost (the cost a
//! real sign-in pays). A TOTP code works once per user and 30-second step, so each sign-in
//! with a second factor is by a user of its own (the run stops a round early if it runs out).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rand::RngCore;

use super::harness::{Summary, drive, serve, tempdir};
use crate::examples;
use crate::http_client::Connection;

#[derive(clap::Args)]
pub struct AuthArgs {
    /// Concurrent connections.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Rounds: each runs the password phase, then the second-factor phase.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Users with a second factor per round (each signs in once).
    #[arg(long, default_value_t = 2_000)]
    mfa_users: usize,
}

const PASSWORD: &str = "bench sign-in passphrase";

fn body(value: serde_json::Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

/// One sign-in: the login, and for a user with a second factor the code step; the answer must
/// hold a session token.
async fn sign_in(connection: &mut Connection, email: &str, totp: Option<&totp_rs::Totp>) -> Result<bool> {
    let login = body(serde_json::json!({ "email": email, "password": PASSWORD }));
    let (status, answer) = connection
        .send("POST", "/api/v1/auth/login", None, Some(&login))
        .await?;
    if status != 200 {
        return Ok(false);
    }
    let answer: serde_json::Value = serde_json::from_slice(&answer)?;
    let Some(totp) = totp else {
        return Ok(answer["token"].is_string());
    };
    let Some(mfa_token) = answer["mfa_token"].as_str() else {
        return Ok(false);
    };
    let code = totp.generate(chrono::Utc::now().timestamp() as u64).to_string();
    let second = body(serde_json::json!({ "mfa_token": mfa_token, "code": code }));
    let (status, answer) = connection.send("POST", "/api/v1/auth/mfa", None, Some(&second)).await?;
    Ok(status == 200 && serde_json::from_slice::<serde_json::Value>(&answer)?["token"].is_string())
}

/// Runs `concurrency` connections for `duration`; each sign-in takes the next user (cycling
/// through them when `cycle`, else each once).
async fn phase(
    address: SocketAddr,
    concurrency: usize,
    duration: Duration,
    users: Arc<Vec<(String, Option<totp_rs::Totp>)>>,
    cycle: bool,
) -> Result<Summary> {
    let next = Arc::new(AtomicUsize::new(0));
    let (count, taken) = (users.len(), next.clone());
    let summary = drive(address, concurrency, duration, move |mut connection, _| {
        let (users, next) = (users.clone(), next.clone());
        async move {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let Some((email, totp)) = users.get(if cycle { n % users.len() } else { n }) else {
                return (connection, None);
            };
            let ok = sign_in(&mut connection, email, totp.as_ref()).await.unwrap_or(false);
            (connection, Some(ok))
        }
    })
    .await?;
    if !cycle && taken.load(Ordering::Relaxed) >= count {
        eprintln!("  (the round used every user with a second factor before its end; raise --mfa-users)");
    }
    Ok(summary)
}

pub async fn run(args: AuthArgs) -> Result<()> {
    let data_dir = tempdir()?;
    let spec_path = data_dir.join("keel.toml");
    let source = examples::spec("pms").expect("pms example");
    std::fs::write(&spec_path, source)?;
    let schema = keel_server::load_schema(source).map_err(|p| anyhow::anyhow!(p.join("\n")))?;
    let mut config = keel_server::Config::default();
    config.app.spec = spec_path.clone();
    config.app.data_dir = data_dir.clone();
    config.app.migrate_on_start = true;
    let db = keel_server::open_database(&config, &schema).await?;
    let hash = keel_server::auth::hash_password(&config.auth, PASSWORD.to_string())
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let plain_count = 100;
    let mfa_count = args.mfa_users * args.rounds;
    eprintln!("bench auth (SQLite): {plain_count} users with a password, {mfa_count} with a second factor");
    let mut plain = vec![];
    let mut with_mfa = vec![];
    for i in 0..plain_count + mfa_count {
        let email = format!("u{i}@bench.keel");
        let user = keel_store::system::user_insert(
            &db,
            keel_store::system::NewUser {
                email: &email,
                name: None,
                password_hash: &hash,
                superuser: false,
                email_verified: true,
            },
        )
        .await?;
        if i < plain_count {
            plain.push((email, None));
            continue;
        }
        let mut secret = [0u8; 20];
        rand::rng().fill_bytes(&mut secret);
        let secret = totp_rs::Secret::from(secret);
        let encoded = secret.to_base32();
        if !keel_store::mfa::totp_begin(&db, user.id, &encoded).await?
            || !keel_store::mfa::totp_confirm(&db, user.id, 0, &[]).await?
        {
            bail!("could not give {email} a second factor");
        }
        let totp = totp_rs::Builder::new().with_secret(secret).build().context("a TOTP")?;
        with_mfa.push((email, Some(totp)));
    }
    db.close().await;
    drop(db);

    // Every sign-in comes from one address: rate limits and the per-address lockout are off
    // (they would refuse a benchmark, not slow it).
    let env = [
        ("KEEL_SERVER__RATE_LIMITS", "false".to_string()),
        ("KEEL_AUTH__LOCKOUT_IP_FAILURES", "1000000".to_string()),
    ];
    let (mut server, address) = serve(&spec_path, &data_dir, None, &env).await?;
    let duration = Duration::from_secs(args.duration);
    let plain = Arc::new(plain);
    // Warm-up: a few sign-ins of each kind.
    phase(address, 2, Duration::from_secs(1), plain.clone(), true).await?;
    let mut rounds = vec![];
    for round in 0..args.rounds {
        let password = phase(address, args.concurrency, duration, plain.clone(), true).await?;
        let own: Vec<_> = with_mfa[round * args.mfa_users..(round + 1) * args.mfa_users].to_vec();
        let second = phase(address, args.concurrency, duration, Arc::new(own), false).await?;
        rounds.push((password, second));
    }
    server.kill().await.ok();
    let _ = std::fs::remove_dir_all(&data_dir);
    println!(
        "\n{} connections, {} s per phase, argon2id {} KiB × {} (the configured cost)\n",
        args.concurrency, args.duration, config.auth.argon2_memory_kib, config.auth.argon2_iterations
    );
    println!("| round · sign-in | per s | p50 ms | p95 ms | p99 ms | errors / sign-ins |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (i, (password, second)) in rounds.iter().enumerate() {
        println!("{}", password.line(&format!("{} · password", i + 1)));
        println!("{}", second.line(&format!("{} · password + TOTP", i + 1)));
    }
    Ok(())
}
