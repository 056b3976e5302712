//! Configuration: defaults → config file → `KEEL_SECTION__KEY` environment → CLI flags,
//! each later layer winning; then `validate()` checks every section.
//!
//! This module only composes: each section (its type, defaults, checks and lines of
//! `docs/CONFIG.md`) lives with the feature that reads it, and is re-exported here.

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use crate::auth::settings::AuthSection;
pub use crate::backup::settings::BackupSection;
pub use crate::console::settings::ConsoleSection;
pub use crate::files::settings::FilesSection;
pub use crate::http::settings::{
    AppSection, DatabaseSection, Invalid, LimitsSection, LogSection, RedisSection, Secret, ServerSection,
};
pub use crate::jobs::settings::{JobsSection, SmtpSection};
pub use crate::ops::settings::{AlertsSection, ErrorsSection};
pub use crate::realtime::settings::RealtimeSection;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[derive(Default)]
pub struct Config {
    pub app: AppSection,
    pub server: ServerSection,
    pub database: DatabaseSection,
    pub auth: AuthSection,
    pub limits: LimitsSection,
    pub log: LogSection,
    pub redis: RedisSection,
    pub jobs: JobsSection,
    pub smtp: SmtpSection,
    pub files: FilesSection,
    pub backup: BackupSection,
    pub errors: ErrorsSection,
    pub alerts: AlertsSection,
    pub console: ConsoleSection,
    pub realtime: RealtimeSection,
}

/// Every section's keys, in the order of `docs/CONFIG.md`.
pub const SECTIONS: &[&[(&str, &str)]] = &[
    crate::http::settings::APP_KEYS,
    crate::http::settings::SERVER_KEYS,
    crate::http::settings::DATABASE_KEYS,
    crate::auth::settings::KEYS,
    crate::http::settings::LIMITS_KEYS,
    crate::http::settings::REDIS_KEYS,
    crate::jobs::settings::JOBS_KEYS,
    crate::jobs::settings::SMTP_KEYS,
    crate::files::settings::KEYS,
    crate::backup::settings::KEYS,
    crate::ops::settings::ERRORS_KEYS,
    crate::ops::settings::ALERTS_KEYS,
    crate::console::settings::KEYS,
    crate::realtime::settings::KEYS,
    crate::http::settings::LOG_KEYS,
];

/// One line per configuration key: `docs/CONFIG.md` is generated from them and from the
/// defaults, and a test fails when a key has no description.
pub fn descriptions() -> impl Iterator<Item = &'static (&'static str, &'static str)> {
    SECTIONS.iter().flat_map(|section| section.iter())
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {message}")]
    File { path: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Merges `overlay` into `base` recursively (tables merge, other values replace).
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(incoming)) => merge(existing, incoming),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Parses an environment value as TOML (numbers, bools, arrays), falling back to a string.
fn env_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut table) => table
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

impl Config {
    /// Builds the config from its layers. `env` is the process environment (tests pass their own);
    /// `overrides` are `section.key = value` pairs from CLI flags.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: Vec<(String, toml::Value)>,
    ) -> Result<Config, ConfigError> {
        let mut table = toml::Table::try_from(Config::default()).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            let overlay: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::File {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            merge(&mut table, overlay);
        }
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix("KEEL_") else {
                continue;
            };
            let Some((section, key)) = rest.split_once("__") else {
                continue;
            };
            if section.starts_with("TEST") {
                continue;
            }
            let mut overlay = toml::Table::new();
            let mut inner = toml::Table::new();
            inner.insert(key.to_lowercase(), env_value(&raw));
            overlay.insert(section.to_lowercase(), toml::Value::Table(inner));
            merge(&mut table, overlay);
        }
        for (path, value) in overrides {
            let (section, key) = path
                .split_once('.')
                .ok_or_else(|| ConfigError::Invalid(format!("override '{path}' is not section.key")))?;
            let mut overlay = toml::Table::new();
            let mut inner = toml::Table::new();
            inner.insert(key.to_string(), value);
            overlay.insert(section.to_string(), toml::Value::Table(inner));
            merge(&mut table, overlay);
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that serde cannot: ranges and combinations, section by section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.app
            .validate()
            .and_then(|()| self.server.validate(self.app.environment == "production"))
            .and_then(|()| self.database.validate())
            .and_then(|()| self.auth.validate(self.smtp.sends()))
            .and_then(|()| self.limits.validate())
            .and_then(|()| self.redis.validate())
            .and_then(|()| self.jobs.validate())
            .and_then(|()| self.smtp.validate())
            .and_then(|()| self.files.validate())
            .and_then(|()| self.backup.validate())
            .and_then(|()| self.errors.validate())
            .and_then(|()| self.alerts.validate())
            .and_then(|()| self.console.validate())
            .and_then(|()| self.realtime.validate())
            .and_then(|()| self.log.validate())
            .map_err(|Invalid { key, message }| ConfigError::Invalid(format!("{key}: {message}")))
    }

    /// Where the data lives, derived from `database.url` and `app.data_dir`.
    pub fn location(&self) -> keel_store::Location {
        self.database.location(&self.app.data_dir)
    }

    pub fn pool(&self) -> keel_store::PoolConfig {
        self.database.pool()
    }

    /// The job runtime's settings.
    pub fn jobs(&self) -> keel_jobs::JobsConfig {
        self.jobs.runtime(&self.smtp, self.realtime.retention())
    }

    /// The default configuration as a documented TOML file (`keel config print-default`).
    pub fn default_toml() -> String {
        toml::to_string_pretty(&Config::default()).expect("the default config serialises")
    }
}

/// `docs/CONFIG.md`, generated from the defaults and [`descriptions`].
pub fn config_markdown() -> String {
    let defaults = toml::Table::try_from(Config::default()).expect("defaults serialise");
    let mut out = String::from(
        "# Configuration\n\nSettings come from, in order (later wins): the defaults below, a TOML file given with `--config FILE`, environment variables `KEEL_<SECTION>__<KEY>` (e.g. `KEEL_DATABASE__URL`), and command-line flags.\nUnknown keys are refused with the key's name.\n`keel config print-default` prints the defaults as a TOML file.\nThis file is generated from `crates/keel-server/src/config.rs` (a test fails when it is stale).\n\n| key | environment | default | meaning |\n| --- | --- | --- | --- |\n",
    );
    for (key, description) in descriptions() {
        let (section, name) = key.split_once('.').expect("section.key");
        let default = defaults
            .get(section)
            .and_then(|s| s.get(name))
            .map(|v| format!("`{v}`"))
            .unwrap_or_else(|| "(unset)".into());
        let env = format!("KEEL_{}__{}", section.to_uppercase(), name.to_uppercase());
        out.push_str(&format!("| `{key}` | `{env}` | {default} | {description} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_described() {
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        let mut keys = vec![];
        for (section, table) in &defaults {
            for key in table.as_table().unwrap().keys() {
                keys.push(format!("{section}.{key}"));
            }
        }
        // Optional keys are absent from the defaults but must still be described.
        keys.push("database.url".into());
        keys.push("database.schema".into());
        keys.push("redis.url".into());
        keys.push("smtp.host".into());
        keys.push("smtp.username".into());
        keys.push("smtp.password".into());
        for key in ["s3_bucket", "s3_endpoint", "s3_access_key_id", "s3_secret_access_key"] {
            keys.push(format!("files.{key}"));
        }
        for key in ["s3_bucket", "key", "key_file", "pg_bin_dir"] {
            keys.push(format!("backup.{key}"));
        }
        keys.push("errors.sentry_dsn".into());
        for key in keys {
            assert!(descriptions().any(|(k, _)| *k == key), "{key} has no description");
        }
    }

    #[test]
    fn layers_apply_in_order_and_unknown_keys_fail() {
        let dir = std::env::temp_dir().join(format!("keel-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keel.config.toml");
        std::fs::write(&file, "[server]\nport = 9000\nhost = \"0.0.0.0\"\n").unwrap();
        let env = vec![
            ("KEEL_SERVER__PORT".to_string(), "9100".to_string()),
            ("KEEL_LOG__FORMAT".to_string(), "pretty".to_string()),
        ];
        let config = Config::load(
            Some(&file),
            env.clone(),
            vec![("server.port".into(), toml::Value::Integer(9200))],
        )
        .unwrap();
        assert_eq!(config.server.port, 9200, "flags beat the environment");
        assert_eq!(config.server.host, "0.0.0.0", "the file beats the defaults");
        assert_eq!(config.log.format, "pretty");
        let config = Config::load(Some(&file), env, vec![]).unwrap();
        assert_eq!(config.server.port, 9100, "the environment beats the file");
        let error = Config::load(None, vec![("KEEL_SERVER__PROT".into(), "1".into())], vec![]).unwrap_err();
        assert!(error.to_string().contains("prot"), "{error}");
        let error = Config::load(None, vec![("KEEL_LIMITS__MAX_PAGE_SIZE".into(), "0".into())], vec![]).unwrap_err();
        assert!(error.to_string().contains("limits.max_page_size"), "{error}");
        let secret = format!("{:?}", Secret("postgres://u:hunter2@h/db".into()));
        assert!(!secret.contains("hunter2"));
    }
}
