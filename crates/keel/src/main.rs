//! The `keel` binary: serve an app, run the demo, check specs, plan and apply migrations,
//! manage users, and benchmark.

mod backup_cli;
mod bench;
mod demo;
mod examples;
mod http_client;
mod import_cli;
mod jobs_cli;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use keel_server::{App, Config, load_schema};

// mimalloc: the request path allocates many short-lived buffers; glibc malloc was ~15% of a
// list request's CPU in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "A production-ready multi-tenant backend from one keel.toml"
)]
struct Cli {
    /// A configuration file (TOML); every key can also be set as KEEL_SECTION__KEY.
    #[arg(long, global = true, env = "KEEL_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone, Default)]
struct Common {
    /// The app spec (default: keel.toml).
    #[arg(long, global = true)]
    spec: Option<PathBuf>,
    /// The data directory (the SQLite file lives here).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// A PostgreSQL URL (postgres://…); without it Keel uses the embedded SQLite file.
    #[arg(long, global = true)]
    database_url: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the app's API.
    Serve {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        port: Option<u16>,
        /// Apply pending migrations before serving instead of refusing to start.
        #[arg(long)]
        migrate: bool,
    },
    /// Run an example app with generated data on embedded SQLite (pms by default).
    Demo {
        /// One of: fleet-compliance, pms, hoa, schedules, ge-metrics.
        #[arg(default_value = "pms")]
        app: String,
        #[arg(long, default_value_t = 8080)]
        port: u16,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Throw away earlier demo data and generate it again.
        #[arg(long)]
        fresh: bool,
        /// Generate the data, print the logins, and exit without serving.
        #[arg(long)]
        no_serve: bool,
        /// Scale every collection's row count by this factor (e.g. 0.1 for a quick look).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
    },
    /// Check a spec and report every problem with its line.
    Check { file: PathBuf },
    /// Print the OpenAPI document of a spec (what /api/v1/openapi.json serves).
    Openapi { file: PathBuf },
    /// Plan or apply migrations.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
    /// Manage users.
    Users {
        #[command(subcommand)]
        action: UsersAction,
    },
    /// The keys that sign file links: list, rotate, retire.
    Keys {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Jobs and queues: enqueue, list, retry, cancel, discard, pause, worker keys.
    Jobs {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        action: jobs_cli::JobsAction,
    },
    /// Stream a collection (filtered like a list) as CSV or NDJSON to standard output.
    Export {
        #[command(flatten)]
        common: Common,
        collection: String,
        /// The org (slug); omit for a global collection.
        #[arg(long)]
        org: Option<String>,
        /// csv or ndjson.
        #[arg(long, default_value = "csv")]
        format: String,
        #[arg(long)]
        filter: Option<String>,
        #[arg(long)]
        sort: Option<String>,
        /// Comma-separated fields.
        #[arg(long)]
        fields: Option<String>,
    },
    /// Import a CSV or NDJSON file into a collection, with a progress bar (the report goes
    /// to standard output as JSON).
    Import {
        #[command(flatten)]
        common: Common,
        collection: String,
        /// The file to read (`-` for standard input).
        file: PathBuf,
        /// The org (slug); omit for a global collection.
        #[arg(long)]
        org: Option<String>,
        /// csv or ndjson (default: from the file's extension, else csv).
        #[arg(long)]
        format: Option<String>,
        /// atomic (all or nothing) or skip (invalid rows are reported and skipped).
        #[arg(long, default_value = "atomic")]
        mode: String,
        /// Column to field, as JSON: '{"Title":"title","Notes":null}'.
        #[arg(long)]
        map: Option<String>,
        /// , ; | or tab.
        #[arg(long, default_value = ",")]
        delimiter: String,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Backups of the database and the files: take one (the default), list, verify, show,
    /// prune, keygen, history.
    Backup {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        action: Option<backup_cli::BackupAction>,
    },
    /// Restore a backup (`latest` for the newest) into the configured database and file
    /// storage, which must be empty unless --force.
    Restore {
        #[command(flatten)]
        common: Common,
        name: String,
        /// Replace a database that holds tables.
        #[arg(long)]
        force: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Operations helpers: `prometheus-rules` prints the spec's alert rules as Prometheus
    /// alerting rules (YAML).
    Ops {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        action: OpsAction,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Benchmarks (see docs/BENCHMARKS.md).
    Bench(bench::BenchArgs),
    /// Regenerate docs/ERRORS.md, docs/CONFIG.md and docs/METRICS.md from the code.
    Docs {
        #[arg(long, default_value = "docs")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum MigrateAction {
    /// Print the DDL that brings the database to the spec.
    Plan {
        #[command(flatten)]
        common: Common,
    },
    /// Apply the plan in one transaction and record it.
    Apply {
        #[command(flatten)]
        common: Common,
        /// Allow steps that drop collections or fields or narrow types.
        #[arg(long)]
        allow_destructive: bool,
    },
    /// List applied migrations.
    History {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum UsersAction {
    /// Create a user (reads the password from KEEL_PASSWORD or --password).
    Create {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        email: String,
        #[arg(long, env = "KEEL_PASSWORD", hide_env_values = true)]
        password: String,
        #[arg(long)]
        name: Option<String>,
        /// Make the user the instance superuser.
        #[arg(long)]
        superuser: bool,
    },
    /// Count a user's address as verified.
    Verify {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        email: String,
    },
    /// Print a password-reset link for a user (to hand over when email does not arrive); it
    /// replaces the user's earlier reset link and works once, for auth.reset_ttl_minutes.
    ResetLink {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        email: String,
    },
    /// Disable an account: it cannot sign in, and every session of it ends now.
    Disable {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        email: String,
    },
    /// Enable a disabled account again.
    Enable {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        email: String,
    },
    /// Remove a user's second factor and recovery codes (a lost phone and lost codes; check
    /// who is asking first): the password alone signs in again.
    RemoveMfa {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        email: String,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// List the keys, newest first (secrets are not shown).
    List,
    /// Add a key: it signs from now on (each instance picks it up within a minute), and
    /// older keys keep verifying what they signed.
    Rotate,
    /// Retire a key: what it signed stops verifying. Refused for the key that signs now, and,
    /// without --force, within an hour and a minute of the rotation that replaced it (file
    /// links live at most an hour).
    Retire {
        id: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum OpsAction {
    /// The alert rules (built in, with the spec's `[alerts.*]` changes) for Prometheus.
    PrometheusRules,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print the default configuration as TOML.
    PrintDefault,
}

fn overrides(common: &Common) -> Vec<(String, toml::Value)> {
    let mut out = vec![];
    if let Some(spec) = &common.spec {
        out.push(("app.spec".into(), toml::Value::String(spec.display().to_string())));
    }
    if let Some(dir) = &common.data_dir {
        out.push(("app.data_dir".into(), toml::Value::String(dir.display().to_string())));
    }
    if let Some(url) = &common.database_url {
        out.push(("database.url".into(), toml::Value::String(url.clone())));
    }
    out
}

fn load_config(file: Option<&PathBuf>, overrides: Vec<(String, toml::Value)>) -> Result<Config> {
    Ok(Config::load(file.map(|p| p.as_path()), std::env::vars(), overrides)?)
}

/// The server's state for a command that works on the app's data as the superuser.
async fn open_state(file: Option<&PathBuf>, common: &Common) -> Result<keel_server::AppState> {
    let config = load_config(file, overrides(common))?;
    let schema = read_schema(&config)?;
    let db = keel_server::open_database(&config, &schema).await?;
    Ok(keel_server::state(config, schema, db))
}

fn backup_context(file: Option<&PathBuf>, common: &Common) -> Result<backup_cli::BackupContext> {
    let config = load_config(file, overrides(common))?;
    let schema = read_schema(&config)?;
    Ok(backup_cli::BackupContext {
        config,
        app: schema.app,
    })
}

fn read_schema(config: &Config) -> Result<keel_query::Schema> {
    let source = std::fs::read_to_string(&config.app.spec)
        .with_context(|| format!("cannot read the spec {}", config.app.spec.display()))?;
    load_schema(&source)
        .map_err(|problems| anyhow::anyhow!("{} has problems:\n{}", config.app.spec.display(), problems.join("\n")))
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            common,
            host,
            port,
            migrate,
        } => {
            let mut extra = overrides(&common);
            if let Some(host) = host {
                extra.push(("server.host".into(), toml::Value::String(host)));
            }
            if let Some(port) = port {
                extra.push(("server.port".into(), toml::Value::Integer(i64::from(port))));
            }
            if migrate {
                extra.push(("app.migrate_on_start".into(), toml::Value::Boolean(true)));
            }
            let config = load_config(cli.config.as_ref(), extra)?;
            keel_server::init_logging(&config.log);
            let app = App::build(config).await?;
            tracing::info!(address = %app.address, "keel is serving");
            eprintln!("keel: serving on http://{}", app.address);
            app.run_until(keel_server::shutdown_signal()).await?;
            Ok(())
        }
        Command::Demo {
            app,
            port,
            data_dir,
            fresh,
            no_serve,
            scale,
        } => {
            demo::run(demo::DemoArgs {
                config: load_config(cli.config.as_ref(), vec![])?,
                app,
                port,
                data_dir,
                fresh,
                serve: !no_serve,
                scale,
            })
            .await
        }
        Command::Check { file } => {
            let source = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            match load_schema(&source) {
                Ok(schema) => {
                    let app = &schema.app;
                    let user_collections = app.collections.iter().filter(|c| !c.system).count();
                    println!(
                        "{}: ok ({} collections, {} roles)",
                        file.display(),
                        user_collections,
                        app.roles.len()
                    );
                    Ok(())
                }
                Err(problems) => {
                    for problem in &problems {
                        eprintln!("{}: {problem}", file.display());
                    }
                    bail!("{} problem(s) in {}", problems.len(), file.display())
                }
            }
        }
        Command::Openapi { file } => {
            let source = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let schema = load_schema(&source)
                .map_err(|problems| anyhow::anyhow!("{} has problems:\n{}", file.display(), problems.join("\n")))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&keel_server::http::openapi::document(&schema.app))?
            );
            Ok(())
        }
        Command::Migrate { action } => {
            let (common, apply, allow_destructive, history) = match action {
                MigrateAction::Plan { common } => (common, false, false, false),
                MigrateAction::Apply {
                    common,
                    allow_destructive,
                } => (common, true, allow_destructive, false),
                MigrateAction::History { common } => (common, false, false, true),
            };
            let config = load_config(cli.config.as_ref(), overrides(&common))?;
            let db = keel_store::Db::connect(&config.location(), &config.pool()).await?;
            if history {
                for (version, at, description) in keel_store::migrate::history(&db).await? {
                    println!("{version:>4}  {at}  {description}");
                }
                return Ok(());
            }
            let schema = read_schema(&config)?;
            let plan = keel_store::migrate::plan_for(&db, &schema).await?;
            if plan.is_empty() {
                println!("-- the database is up to date (version {})", plan.from_version);
                return Ok(());
            }
            if !apply {
                print!("{}", plan.to_sql());
                let destructive = plan.destructive_steps().len();
                if destructive > 0 {
                    eprintln!("{destructive} destructive step(s): `keel migrate apply --allow-destructive` is needed");
                }
                return Ok(());
            }
            let applied = keel_store::migrate::apply(&db, &schema, allow_destructive).await?;
            println!(
                "applied migration {} ({} step(s))",
                applied.from_version + 1,
                applied.steps.len()
            );
            Ok(())
        }
        Command::Jobs { common, action } => {
            let config = load_config(cli.config.as_ref(), overrides(&common))?;
            let schema = read_schema(&config)?;
            let db = keel_server::open_database(&config, &schema).await?;
            let result = jobs_cli::run(&db, &schema, action).await;
            db.close().await;
            result
        }
        Command::Export {
            common,
            collection,
            org,
            format,
            filter,
            sort,
            fields,
        } => {
            let state = open_state(cli.config.as_ref(), &common).await?;
            let mut params = vec![("format".to_string(), format)];
            for (key, value) in [("filter", filter), ("sort", sort), ("fields", fields)] {
                if let Some(value) = value {
                    params.push((key.to_string(), value));
                }
            }
            let result = keel_server::records::export::export_to(
                &state,
                org.as_deref(),
                &collection,
                params,
                tokio::io::stdout(),
            )
            .await;
            state.db.close().await;
            result.map_err(|e| anyhow::anyhow!("{}: {}", e.code, e.message))
        }
        Command::Import {
            common,
            collection,
            file,
            org,
            format,
            mode,
            map,
            delimiter,
            quiet,
        } => {
            let state = open_state(cli.config.as_ref(), &common).await?;
            let request = import_cli::Request {
                collection,
                file,
                org,
                format,
                mode,
                map,
                delimiter,
                quiet,
            };
            let result = import_cli::run(&state, request).await;
            state.db.close().await;
            result
        }
        Command::Users { action } => users(cli.config.as_ref(), action).await,
        Command::Keys { common, action } => {
            let config = load_config(cli.config.as_ref(), overrides(&common))?;
            let schema = read_schema(&config)?;
            let db = keel_server::open_database(&config, &schema).await?;
            keys_command(&db, action).await
        }
        Command::Backup {
            action: Some(backup_cli::BackupAction::Keygen),
            ..
        } => backup_cli::keygen(),
        Command::Backup { common, action } => {
            let context = backup_context(cli.config.as_ref(), &common)?;
            let action = action.unwrap_or(backup_cli::BackupAction::Run { no_prune: false });
            backup_cli::backup(context, action).await
        }
        Command::Restore {
            common,
            name,
            force,
            quiet,
        } => backup_cli::restore(backup_context(cli.config.as_ref(), &common)?, name, force, quiet).await,
        Command::Ops {
            common,
            action: OpsAction::PrometheusRules,
        } => {
            let config = load_config(cli.config.as_ref(), overrides(&common))?;
            let app = read_schema(&config)?.app;
            print!("{}", keel_server::ops::alerts::prometheus_rules(&app.alerts, &app.name));
            Ok(())
        }
        Command::Config {
            action: ConfigAction::PrintDefault,
        } => {
            print!("{}", Config::default_toml());
            Ok(())
        }
        Command::Bench(args) => bench::run(args).await,
        Command::Docs { dir } => {
            std::fs::write(dir.join("ERRORS.md"), keel_server::http::error::errors_markdown())?;
            std::fs::write(dir.join("CONFIG.md"), keel_server::config::config_markdown())?;
            std::fs::write(dir.join("METRICS.md"), keel_server::http::catalogue::metrics_markdown())?;
            println!("wrote {0}/ERRORS.md, {0}/CONFIG.md and {0}/METRICS.md", dir.display());
            Ok(())
        }
    }
}

async fn keys_command(db: &keel_store::Db, action: KeysAction) -> Result<()> {
    use keel_server::auth::keys::{self, FILE_LINKS};
    match action {
        KeysAction::List => {
            let listed = keys::list(db).await?;
            if listed.is_empty() {
                println!("no keys yet (the first file link makes one)");
            }
            for key in listed {
                let state = match (key.state, key.retired_at) {
                    (_, Some(at)) => format!("retired {}", at.to_rfc3339()),
                    ("signs_and_verifies", None) => "signs and verifies".to_string(),
                    _ => "verifies".to_string(),
                };
                println!(
                    "{}\t{}\tcreated {}\t{state}",
                    key.id,
                    key.purpose,
                    key.created_at.to_rfc3339()
                );
            }
            Ok(())
        }
        KeysAction::Rotate => {
            let key = keys::rotate(db, FILE_LINKS).await?;
            println!(
                "added key {} for {FILE_LINKS}: instances sign with it within a minute; retire the old key after an hour",
                key.id
            );
            Ok(())
        }
        KeysAction::Retire { id, force } => match keys::retire(db, &id, force).await {
            Ok(()) => {
                println!("retired key {id}: what it signed no longer verifies");
                Ok(())
            }
            Err(keys::RetireError::Signing(id)) => {
                bail!("key {id} signs now: rotate first (keel keys rotate), then retire it")
            }
            Err(keys::RetireError::TooSoon { id, age, wait }) => bail!(
                "key {id} was replaced {age} s ago; links it signed live up to an hour and instances switch within a minute: retire it after {wait} s more, or pass --force"
            ),
            Err(keys::RetireError::Retired(id)) => {
                bail!("key {id} is already retired, or is the only key that signs")
            }
            Err(error) => Err(error.into()),
        },
    }
}

/// `keel users …`.
async fn users(config_file: Option<&PathBuf>, action: UsersAction) -> Result<()> {
    match action {
        UsersAction::Create {
            common,
            email,
            password,
            name,
            superuser,
        } => {
            let config = load_config(config_file, overrides(&common))?;
            let schema = read_schema(&config)?;
            let db = keel_server::open_database(&config, &schema).await?;
            let email = keel_server::auth::normalize_email(&email).map_err(|e| anyhow::anyhow!(e.message))?;
            keel_server::auth::check_password(&password, &email, config.auth.min_password_length)
                .map_err(|e| anyhow::anyhow!(e.message))?;
            let hash = keel_server::auth::hash_password(&config.auth, password)
                .await
                .map_err(|e| anyhow::anyhow!(e.message))?;
            let user = keel_store::system::user_insert(
                &db,
                keel_store::system::NewUser {
                    email: &email,
                    name: name.as_deref(),
                    password_hash: &hash,
                    superuser,
                    // An operator creates this account: the address counts as verified.
                    email_verified: true,
                },
            )
            .await?;
            println!(
                "created user {} ({}){}",
                user.email,
                user.id,
                if superuser { " as superuser" } else { "" }
            );
            Ok(())
        }
        action => {
            let (common, email, verb) = match action {
                UsersAction::Verify { common, email } => (common, email, "verify"),
                UsersAction::ResetLink { common, email } => (common, email, "reset-link"),
                UsersAction::Disable { common, email } => (common, email, "disable"),
                UsersAction::Enable { common, email } => (common, email, "enable"),
                UsersAction::RemoveMfa { common, email } => (common, email, "remove-mfa"),
                UsersAction::Create { .. } => unreachable!("matched above"),
            };
            let config = load_config(config_file, overrides(&common))?;
            let schema = read_schema(&config)?;
            let db = keel_server::open_database(&config, &schema).await?;
            let email = email.trim().to_lowercase();
            let (user, _) = keel_store::system::user_by_email(&db, &email)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no user has the address {email}"))?;
            match verb {
                "verify" => {
                    keel_store::system::user_verify(&db, user.id).await?;
                    println!("{} counts as verified", user.email);
                }
                "reset-link" => {
                    let purpose = keel_store::accounts::Purpose::Reset;
                    let (link, minutes) =
                        keel_server::auth::mail::mint_link(&db, &config, purpose, user.id, &user.email).await?;
                    println!("{link}");
                    eprintln!(
                        "a password-reset link for {}: it works once, for {minutes} minutes",
                        user.email
                    );
                }
                "disable" => {
                    let ended = keel_store::system::user_set_disabled(&db, user.id, true)
                        .await?
                        .unwrap_or_default();
                    println!("{} is disabled; {} sessions ended", user.email, ended.len());
                    if config.redis.url.is_some() {
                        eprintln!(
                            "instances that cache sessions in Redis drop them within redis.session_cache_seconds"
                        );
                    }
                }
                "remove-mfa" => {
                    keel_store::mfa::totp_remove(&db, user.id).await?;
                    println!("{} has no second factor now", user.email);
                }
                _ => {
                    keel_store::system::user_set_disabled(&db, user.id, false).await?;
                    println!("{} is enabled", user.email);
                }
            }
            Ok(())
        }
    }
}
