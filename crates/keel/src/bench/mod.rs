//! `keel bench`: load scenarios measured over loopback against a real `keel serve` process.
//!
//! `keel bench records` loads N tasks into the pms example (one org), then measures the
//! filtered first page and a page deep in the cursor chain (sequential latency), and list and
//! create throughput with latency percentiles at a given concurrency.

mod auth;
mod backup;
mod harness;
mod import;
mod jobs;
mod limits;
mod realtime;
mod records;
mod scaleout;
mod upload;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(clap::Subcommand)]
pub enum Scenario {
    /// Read throughput through one instance and through two behind a proxy, on PostgreSQL,
    /// with CPU per request, then requests per second while the instances restart one by one.
    Scaleout {
        #[arg(long)]
        database_url: String,
        #[arg(long)]
        redis_url: Option<String>,
        #[arg(long, default_value_t = 100_000)]
        rows: u64,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// Sign-ins per second and their latency, with the password only and with a TOTP code.
    Auth(auth::AuthArgs),
    /// The job queue (P5): bulk enqueue, no-op jobs worked at each concurrency, pickup latency.
    Jobs(jobs::JobsArgs),
    /// Import (P1): N pms tasks from CSV against the database's own bulk path, peak RSS, and
    /// a batch delete (P6).
    Import(import::ImportArgs),
    /// A large file (1 GiB) uploaded and downloaded through the file routes: MiB/s and peak heap.
    Upload(upload::UploadArgs),
    /// The cost of rate limiting: limiter decisions per second (in-process and Redis), and
    /// list throughput with limits off and on.
    Limits(limits::LimitsArgs),
    /// Backup and restore of seed 000's year-2 data and files (O5), against pg_dump/pg_restore
    /// or a file copy.
    Backup(backup::BackupArgs),
    /// Realtime (R3): N streams held while records are created at a steady rate: events per
    /// second, write-to-event latency, CPU and memory per 1,000 streams, rule statements.
    Realtime(realtime::RealtimeArgs),
    /// List and create on the pms `tasks` collection with N rows.
    Records {
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// PostgreSQL URL; without it the bench runs on embedded SQLite.
        #[arg(long)]
        database_url: Option<String>,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Seconds per throughput phase.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Sequential requests per latency phase.
        #[arg(long, default_value_t = 300)]
        samples: u64,
        /// Where the SQLite file goes (default: a temporary directory).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

pub async fn run(args: BenchArgs) -> Result<()> {
    match args.scenario {
        Scenario::Auth(args) => auth::run(args).await,
        Scenario::Jobs(args) => jobs::run(args).await,
        Scenario::Import(args) => import::run(args).await,
        Scenario::Upload(args) => upload::run(args).await,
        Scenario::Limits(args) => limits::run(args).await,
        Scenario::Backup(args) => backup::run(args).await,
        Scenario::Realtime(args) => realtime::run(args).await,
        Scenario::Records {
            rows,
            database_url,
            concurrency,
            duration,
            samples,
            data_dir,
        } => {
            records::run(
                rows,
                database_url,
                concurrency,
                Duration::from_secs(duration),
                samples,
                data_dir,
            )
            .await
        }
        Scenario::Scaleout {
            database_url,
            redis_url,
            rows,
            concurrency,
            duration,
        } => {
            scaleout::run(
                database_url,
                redis_url,
                rows,
                concurrency,
                Duration::from_secs(duration),
            )
            .await
        }
    }
}
