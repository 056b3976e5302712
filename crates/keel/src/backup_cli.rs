//! `keel backup …` and `keel restore`: backups of the app's database and files (O5).

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use keel_server::Config;
use keel_server::backup::{Backups, Progress, RestoreTarget};
use keel_server::files::storage::Storage;

#[derive(Subcommand)]
pub enum BackupAction {
    /// Take a backup now (the default), then apply retention.
    Run {
        /// Keep every backup (skip retention).
        #[arg(long)]
        no_prune: bool,
    },
    /// List the backups in the target, newest first.
    List,
    /// Restore a backup into a scratch database and scratch storage and check it against
    /// its manifest and every file's SHA-256 (`latest` for the newest).
    Verify {
        #[arg(default_value = "latest")]
        name: String,
        #[arg(long)]
        quiet: bool,
    },
    /// Print a backup's manifest (`latest` for the newest).
    Show {
        #[arg(default_value = "latest")]
        name: String,
    },
    /// Delete the backups retention does not keep.
    Prune,
    /// Print a new age identity for backup.key (and its public key on standard error).
    Keygen,
    /// The recorded runs (scheduled and manual), newest first.
    History {
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
}

/// What a backup command needs: the config and the app's name and retention (no database
/// connection until a command needs one, so `restore` can target an empty database).
pub struct BackupContext {
    pub config: Config,
    pub app: keel_spec::App,
}

impl BackupContext {
    fn backups(&self) -> Result<Backups> {
        Ok(Backups::new(&self.config, &self.app.backup, &self.app.name)?)
    }

    async fn name(&self, backups: &Backups, name: &str) -> Result<String> {
        if name != "latest" {
            return Ok(name.to_string());
        }
        match backups.list().await?.into_iter().next() {
            Some(latest) => Ok(latest.name),
            None => bail!("there are no backups of {} yet", self.app.name),
        }
    }

    async fn db(&self) -> Result<keel_store::Db> {
        Ok(keel_store::Db::connect(&self.config.location(), &self.config.pool()).await?)
    }
}

pub async fn backup(context: BackupContext, action: BackupAction) -> Result<()> {
    match action {
        BackupAction::Run { no_prune } => {
            let mut backups = context.backups()?;
            if no_prune {
                backups.retention = keel_server::backup::Retention {
                    daily: u32::MAX,
                    weekly: 0,
                    monthly: 0,
                };
            }
            let db = context.db().await?;
            let storage = Arc::new(Storage::new(&context.config.files, &context.config.app.data_dir)?);
            let report = backups.run(&db, storage, "manual").await?;
            eprintln!(
                "keel: backup {} ({} bytes, {} tables, {} rows, {} files) in {:.1} s; {} pruned",
                report.name,
                report.bytes,
                report.tables,
                report.rows,
                report.files,
                report.seconds,
                report.pruned.len()
            );
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        BackupAction::List => {
            let backups = context.backups()?;
            for listed in backups.list().await? {
                println!("{}\t{}\t{}", listed.name, listed.created_at.to_rfc3339(), listed.size);
            }
            Ok(())
        }
        BackupAction::Verify { name, quiet } => {
            let backups = context.backups()?;
            let name = context.name(&backups, &name).await?;
            let (bar, progress) = progress_bar(quiet, "verifying");
            let report = backups.verify(&name, progress).await;
            bar.finish_and_clear();
            let report = report.with_context(|| format!("backup {name} did not verify"))?;
            let rows: i64 = report.manifest.contents.tables.values().sum();
            eprintln!(
                "keel: {name} verified: {} tables and {rows} rows match the manifest, {} files match their SHA-256 ({} missing when it was taken), in {:.1} s",
                report.manifest.contents.tables.len(),
                report.files,
                report.missing_files.len(),
                report.seconds
            );
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        BackupAction::Show { name } => {
            let backups = context.backups()?;
            let name = context.name(&backups, &name).await?;
            println!("{}", serde_json::to_string_pretty(&backups.manifest(&name).await?)?);
            Ok(())
        }
        BackupAction::Prune => {
            let backups = context.backups()?;
            let deleted = backups.prune().await?;
            for name in &deleted {
                println!("deleted {name}");
            }
            eprintln!("keel: {} backups deleted by retention", deleted.len());
            Ok(())
        }
        BackupAction::Keygen => keygen(),
        BackupAction::History { limit } => {
            let db = context.db().await?;
            let runs = keel_store::backups::backup_history(&db, limit.clamp(1, 1000)).await?;
            for run in runs {
                println!("{}", serde_json::to_string(&run)?);
            }
            Ok(())
        }
    }
}

/// Prints a new identity (needs no spec or config).
pub fn keygen() -> Result<()> {
    let (secret, public) = keel_server::backup::generate_identity();
    eprintln!("# public key: {public}");
    eprintln!("# Keep this identity safe and apart from the backups: without it they cannot be restored.");
    println!("{secret}");
    Ok(())
}

pub async fn restore(context: BackupContext, name: String, force: bool, quiet: bool) -> Result<()> {
    let backups = context.backups()?;
    let name = context.name(&backups, &name).await?;
    let storage = Arc::new(Storage::new(&context.config.files, &context.config.app.data_dir)?);
    let target = RestoreTarget::of(&context.config);
    let (bar, progress) = progress_bar(quiet, "restoring");
    let report = backups.restore(&name, &target, storage, force, progress).await;
    bar.finish_and_clear();
    let report = report.with_context(|| format!("restoring {name} failed"))?;
    let rows: i64 = report.manifest.contents.tables.values().sum();
    eprintln!(
        "keel: restored {name} (taken {}): {} tables, {rows} rows, {} files, in {:.1} s",
        report.manifest.created_at.to_rfc3339(),
        report.manifest.contents.tables.len(),
        report.files,
        report.seconds
    );
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn progress_bar(quiet: bool, message: &'static str) -> (ProgressBar, Progress) {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .expect("a valid template")
                .progress_chars("=> "),
        )
    };
    bar.set_message(message);
    let shown = bar.clone();
    let progress: Progress = Arc::new(move |read, total| {
        shown.set_length(total);
        shown.set_position(read);
    });
    (bar, progress)
}
