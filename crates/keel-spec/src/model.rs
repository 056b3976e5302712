//! The typed app model that a validated `keel.toml` becomes.

use serde::{Deserialize, Serialize};

/// A whole app: its roles and collections, in declaration order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct App {
    pub name: String,
    pub title: Option<String>,
    /// Org roles from the highest to the lowest.
    pub roles: Vec<String>,
    pub collections: Vec<Collection>,
    pub demo: DemoSpec,
    /// Queues and job kinds (J1–J10).
    #[serde(default)]
    pub jobs: JobsSpec,
    /// Storage quotas for uploaded files (S12).
    #[serde(default)]
    pub storage: StorageSpec,
    /// Request rate limits by route class (S4).
    #[serde(default)]
    pub rate_limits: RateLimitsSpec,
    /// Scheduled backups and their retention (O5).
    #[serde(default)]
    pub backup: BackupSpec,
    /// The built-in alert rules and their thresholds (O4).
    #[serde(default)]
    pub alerts: Vec<AlertRule>,
}

/// One of the built-in alert rules (`[alerts.NAME]` changes it). The condition is
/// `value > threshold`, held for `for_ms`; `window_ms` is the span the value is computed over
/// (latency and error rate).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRule {
    pub name: String,
    /// `critical` or `warning`.
    pub severity: String,
    /// In the rule's unit: milliseconds (latency), a share from 0 to 1 (error rate, pool,
    /// disk, memory) or seconds (queue lag, backup age).
    pub threshold: f64,
    pub for_ms: u64,
    pub window_ms: u64,
    pub enabled: bool,
}

/// The built-in rules with the seeds' thresholds (000, 002, 004): p95 API latency over 1 s
/// for 5 minutes (a warning over 500 ms for 10), 5xx over 5 % of requests over 10 minutes,
/// the database pool over 80 % in use, the disk over 85 %, memory over 75 % for 15 minutes,
/// a queue's oldest runnable job waiting over 5 minutes, and a backup older than its
/// `alert_after` or failed.
pub fn default_alert_rules(backup: &BackupSpec) -> Vec<AlertRule> {
    let rule = |name: &str, severity: &str, threshold: f64, for_ms: u64, window_ms: u64| AlertRule {
        name: name.to_string(),
        severity: severity.to_string(),
        threshold,
        for_ms,
        window_ms,
        enabled: true,
    };
    const MINUTE: u64 = 60_000;
    vec![
        rule("api_latency", "critical", 1000.0, 5 * MINUTE, 5 * MINUTE),
        rule("api_latency_warning", "warning", 500.0, 10 * MINUTE, 5 * MINUTE),
        rule("error_rate", "critical", 0.05, 0, 10 * MINUTE),
        rule("db_pool", "warning", 0.8, 5 * MINUTE, 0),
        rule("disk", "critical", 0.85, 5 * MINUTE, 0),
        rule("memory", "warning", 0.75, 15 * MINUTE, 0),
        rule("queue_lag", "warning", 300.0, 5 * MINUTE, 0),
        AlertRule {
            enabled: backup.schedule.is_some(),
            ..rule("backup", "critical", backup.alert_after_ms as f64 / 1000.0, 0, 0)
        },
    ]
}

/// `[backup]`: when backups run (a cron job of the built-in `keel_backup` kind) and which
/// ones are kept: the newest of each of the last `keep_daily` days, `keep_weekly` ISO weeks
/// and `keep_monthly` months (grandfather-father-son; a backup may count for several).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupSpec {
    /// A cron expression (UTC); `None` (no `[backup]` section) schedules nothing.
    pub schedule: Option<String>,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    /// A backup older than this is late (the backup alert fires).
    pub alert_after_ms: u64,
}

impl Default for BackupSpec {
    fn default() -> Self {
        BackupSpec {
            schedule: None,
            keep_daily: 30,
            keep_weekly: 12,
            keep_monthly: 12,
            alert_after_ms: 26 * 3_600_000,
        }
    }
}

/// `[rate_limits]`: how many requests a client may make, by route class and by key (the
/// client's IP, the signed-in user or API key, the org in the path). Every class has
/// defaults; a class's limits add to `api`'s, which count every API request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateLimitsSpec {
    /// Every API request.
    pub api: RateClass,
    /// Sign-up and log-in, per IP.
    pub auth: RateClass,
    /// File uploads and imports.
    pub upload: RateClass,
    /// Job-status polling (`GET /api/v1/jobs/{id}`).
    pub status: RateClass,
}

/// One route class's limits. An empty list is no limit on that key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RateClass {
    pub per_ip: Vec<Rate>,
    pub per_user: Vec<Rate>,
    pub per_org: Vec<Rate>,
    /// Requests of this class one user may have in progress at once (uploads only).
    pub concurrent_per_user: Option<u32>,
}

/// `limit` requests per `period_ms`, with bursts of up to `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub limit: u32,
    pub period_ms: u64,
}

impl Rate {
    pub const fn per_minute(limit: u32) -> Rate {
        Rate {
            limit,
            period_ms: 60_000,
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (n, unit) = match self.period_ms {
            ms if ms % 86_400_000 == 0 => (ms / 86_400_000, "d"),
            ms if ms % 3_600_000 == 0 => (ms / 3_600_000, "h"),
            ms if ms % 60_000 == 0 => (ms / 60_000, "m"),
            ms if ms % 1_000 == 0 => (ms / 1_000, "s"),
            ms => (ms, "ms"),
        };
        if n == 1 {
            write!(f, "{}/{unit}", self.limit)
        } else {
            write!(f, "{}/{n}{unit}", self.limit)
        }
    }
}

impl Default for RateLimitsSpec {
    /// On by default, per the seeds: a general limit per IP, per user and per org; log-in
    /// and sign-up strict per IP; uploads per user with at most 4 at once; status polling
    /// generous.
    fn default() -> Self {
        RateLimitsSpec {
            api: RateClass {
                per_ip: vec![Rate::per_minute(1_000)],
                per_user: vec![Rate::per_minute(600)],
                per_org: vec![Rate::per_minute(6_000)],
                concurrent_per_user: None,
            },
            auth: RateClass {
                per_ip: vec![Rate::per_minute(10)],
                ..RateClass::default()
            },
            upload: RateClass {
                per_user: vec![Rate::per_minute(30)],
                concurrent_per_user: Some(4),
                ..RateClass::default()
            },
            status: RateClass {
                per_user: vec![Rate::per_minute(300)],
                ..RateClass::default()
            },
        }
    }
}

/// `[storage]`: how many bytes of files each user and each org may store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StorageSpec {
    pub quota_per_user: Option<u64>,
    pub quota_per_org: Option<u64>,
}

/// The app's queues and job kinds. The `default` queue always exists.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobsSpec {
    pub queues: Vec<QueueSpec>,
    pub kinds: Vec<JobKind>,
}

impl JobsSpec {
    pub fn queue(&self, name: &str) -> Option<&QueueSpec> {
        self.queues.iter().find(|q| q.name == name)
    }
    pub fn kind(&self, name: &str) -> Option<&JobKind> {
        self.kinds.iter().find(|k| k.name == name)
    }
}

/// A queue: how many of its jobs run at once and how fast, and how long finished ones stay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueSpec {
    pub name: String,
    /// Jobs each instance runs at once (0: only external workers claim from it).
    pub concurrency: u32,
    /// Jobs each instance holds claimed at once, running or about to (at least `concurrency`):
    /// more than `concurrency` fetches short jobs in bigger batches.
    #[serde(default)]
    pub prefetch: u32,
    /// At most this many running jobs per concurrency key, across all instances.
    pub per_key: Option<u32>,
    /// At most this many job starts per second, across all instances.
    pub rate: Option<f64>,
    pub keep_completed: u32,
    /// Dead and cancelled jobs kept.
    pub keep_failed: u32,
    /// Finished jobs older than this are deleted whatever the counts.
    pub keep_for_ms: u64,
    /// Defaults for the kinds of this queue that do not set their own.
    #[serde(default)]
    pub defaults: KindDefaults,
}

/// A queue's retry and timeout policy for its kinds (a kind's own keys win).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindDefaults {
    pub attempts: Option<u32>,
    pub backoff_ms: Option<u64>,
    pub max_backoff_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
}

impl QueueSpec {
    pub fn new(name: &str) -> QueueSpec {
        QueueSpec {
            name: name.to_string(),
            concurrency: 10,
            prefetch: 10,
            per_key: None,
            rate: None,
            keep_completed: 1_000,
            keep_failed: 10_000,
            keep_for_ms: 7 * 24 * 3_600_000,
            defaults: KindDefaults::default(),
        }
    }
}

/// A kind of job: its queue, its handler, and its retry and timeout policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobKind {
    pub name: String,
    pub queue: String,
    pub handler: Handler,
    pub attempts: u32,
    /// The first retry waits about this long; each next one twice as long (with jitter).
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// A run longer than this is cancelled (and its process group killed) and fails.
    pub timeout_ms: u64,
    pub priority: i32,
    /// What limits concurrency per key: the enqueuing user or the org.
    pub concurrency_key: Option<KeySource>,
    /// The least org role that may enqueue it through the API (`None`: superusers only).
    pub enqueue_role: Option<String>,
    /// Enqueued on a schedule.
    pub cron: Option<CronSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    User,
    Org,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CronSpec {
    /// A cron expression (5 fields, or 6 with seconds), in UTC.
    pub schedule: String,
    /// After downtime, run once for the missed ticks (else they are skipped).
    pub catch_up: bool,
    /// The payload each run gets.
    pub payload: serde_json::Value,
}

/// What runs a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Handler {
    /// Does nothing (benchmarks, tests, and jobs only external systems care about).
    Noop,
    /// Claimed and run by workers over HTTP (J9).
    External,
    /// An outbound HTTP request; with `into`, the JSON answer is written into a collection.
    Http {
        url: String,
        method: String,
        headers: Vec<(String, String)>,
        /// A body template (`{{ payload.x }}`); the payload as JSON when absent.
        body: Option<String>,
        into: Option<String>,
        /// With `into`: the unique field that makes a row an update instead of a new record.
        key: Option<String>,
        /// With `into`: which key of each answer object fills which field (only these are
        /// taken); without it, the objects are taken as they are.
        #[serde(default)]
        map: Vec<(String, String)>,
    },
    /// An email over SMTP, from templates over the payload.
    Email {
        to: String,
        subject: String,
        text: String,
        html: Option<String>,
    },
    /// A program run with the payload on stdin, killed with its process group at the timeout.
    Command {
        program: Vec<String>,
        /// CPU seconds (RLIMIT_CPU).
        cpu_seconds: Option<u64>,
        /// Address-space bytes (RLIMIT_AS).
        memory_bytes: Option<u64>,
    },
    /// Deletes finished jobs beyond each queue's retention and old time-series rows.
    Cleanup,
    /// Runs a background import (the built-in `keel_import` kind; the server provides it).
    Import,
    /// Takes a backup and applies retention (the built-in `keel_backup` kind; the server
    /// provides it).
    Backup,
    /// Sends an account email: a verification or email-change link, a password reset (the
    /// built-in `keel_account_email` kind; the server provides it and mints the link's token
    /// when it sends, so no token is ever stored in a payload).
    AccountEmail,
}

impl Handler {
    pub fn name(&self) -> &'static str {
        match self {
            Handler::Noop => "noop",
            Handler::External => "external",
            Handler::Http { .. } => "http",
            Handler::Email { .. } => "email",
            Handler::Command { .. } => "command",
            Handler::Cleanup => "cleanup",
            Handler::Import => "import",
            Handler::Backup => "backup",
            Handler::AccountEmail => "account_email",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DemoSpec {
    pub orgs: u32,
    pub users_per_org: u32,
    /// Activity-log rows the demo writes in all (one per record, topped up with updates).
    #[serde(default)]
    pub activity: u64,
}

/// One collection (one table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Collection {
    pub name: String,
    /// Global collections have no `org` column and are shared by every tenant.
    pub global: bool,
    pub fields: Vec<Field>,
    pub indexes: Vec<Index>,
    pub rules: Rules,
    pub demo_count: Option<u64>,
    /// A time series: partitioned by month on PostgreSQL, with optional retention.
    #[serde(default)]
    pub timeseries: Option<TimeSeries>,
    /// A built-in collection (the activity log): read-only through the API, no
    /// `updated_at`/`version`, stored in a `keel_`-prefixed table.
    #[serde(default)]
    pub system: bool,
    /// Job kinds enqueued with each write, in the write's transaction.
    #[serde(default)]
    pub triggers: Triggers,
    /// How long list and get answers are kept in the response cache (C1); none: not cached.
    #[serde(default)]
    pub cache_ttl_ms: Option<u64>,
}

/// Job kinds a collection enqueues on create, update and delete.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Triggers {
    pub on_create: Vec<String>,
    pub on_update: Vec<String>,
    pub on_delete: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Field {
    pub name: String,
    pub kind: FieldKind,
    pub required: bool,
    pub default: Option<DefaultValue>,
    pub unique: bool,
    pub description: Option<String>,
    pub demo: Option<String>,
    /// For a relation: the unique field of the target that an import may give instead of
    /// the id (`lookup = "name"`). Users are always looked up by email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FieldKind {
    Text {
        min: Option<u32>,
        max: u32,
        pattern: Option<String>,
        search: bool,
    },
    Integer {
        min: Option<i64>,
        max: Option<i64>,
    },
    Number {
        min: Option<f64>,
        max: Option<f64>,
    },
    Bool,
    Date,
    Datetime,
    Select {
        values: Vec<String>,
    },
    Json,
    Relation {
        to: RelationTarget,
        on_delete: OnDelete,
    },
    /// Uploaded files, stored outside the database; the record holds their metadata.
    File {
        /// The largest file accepted, in bytes.
        max_bytes: u64,
        /// Allowed content types, checked against the bytes (`image/*` matches any image);
        /// empty allows any.
        types: Vec<String>,
        /// A list of files rather than one.
        multiple: bool,
        /// Files older than this are deleted by the cleanup job.
        retention_ms: Option<u64>,
    },
}

impl FieldKind {
    /// The name used in the spec's `type` key.
    pub fn type_name(&self) -> &'static str {
        match self {
            FieldKind::Text { .. } => "text",
            FieldKind::Integer { .. } => "integer",
            FieldKind::Number { .. } => "number",
            FieldKind::Bool => "bool",
            FieldKind::Date => "date",
            FieldKind::Datetime => "datetime",
            FieldKind::Select { .. } => "select",
            FieldKind::Json => "json",
            FieldKind::Relation { .. } => "relation",
            FieldKind::File { .. } => "file",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelationTarget {
    Users,
    Collection(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDelete {
    Restrict,
    Cascade,
    SetNull,
}

impl OnDelete {
    pub fn sql(self) -> &'static str {
        match self {
            OnDelete::Restrict => "RESTRICT",
            OnDelete::Cascade => "CASCADE",
            OnDelete::SetNull => "SET NULL",
        }
    }
}

/// Time-series settings of a collection (D9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeSeries {
    /// The required datetime field rows are partitioned by.
    pub field: String,
    /// Rows older than this many days are removed (whole partitions on PostgreSQL).
    pub retention_days: Option<u32>,
}

/// A default value, already checked against the field's type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultValue {
    Text(String),
    Integer(i64),
    Number(f64),
    Bool(bool),
    /// `"@now"`: the time (or date) of the write.
    Now,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Index {
    /// A stable name derived from the collection and the columns (or given).
    pub name: String,
    pub columns: Vec<IndexColumn>,
    pub unique: bool,
    /// A partial-index condition in the filter language.
    pub condition: Option<Located>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexColumn {
    pub field: String,
    pub descending: bool,
}

/// A string from the spec with the line it came from, for error reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Located {
    pub text: String,
    pub line: usize,
    pub path: String,
}

/// Access rules per action; `None` means the default rule (see docs/SPEC.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rules {
    pub list: Option<Located>,
    pub view: Option<Located>,
    pub create: Option<Located>,
    pub update: Option<Located>,
    pub delete: Option<Located>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    List,
    View,
    Create,
    Update,
    Delete,
}

impl Action {
    pub const ALL: [Action; 5] = [
        Action::List,
        Action::View,
        Action::Create,
        Action::Update,
        Action::Delete,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Action::List => "list",
            Action::View => "view",
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

impl Rules {
    pub fn get(&self, action: Action) -> Option<&Located> {
        match action {
            Action::List => self.list.as_ref(),
            Action::View => self.view.as_ref(),
            Action::Create => self.create.as_ref(),
            Action::Update => self.update.as_ref(),
            Action::Delete => self.delete.as_ref(),
        }
    }
}

/// The system fields every record has, with their types.
pub const SYSTEM_FIELDS: [&str; 6] = ["id", "org", "created_at", "updated_at", "version", "batch"];

impl App {
    pub fn collection(&self, name: &str) -> Option<&Collection> {
        self.collections.iter().find(|c| c.name == name)
    }

    /// The rank of a role: higher is more powerful; `None` for an unknown role.
    pub fn role_rank(&self, role: &str) -> Option<i64> {
        let position = self.roles.iter().position(|r| r == role)?;
        Some((self.roles.len() - position) as i64)
    }

    /// The role an org's creator gets.
    pub fn top_role(&self) -> &str {
        &self.roles[0]
    }
}

/// The built-in activity log, listed like a collection (see docs/API.md).
pub fn activity_collection(roles: &[String]) -> Collection {
    let text = |max| FieldKind::Text {
        min: None,
        max,
        pattern: None,
        search: false,
    };
    let field = |name: &str, kind| Field {
        name: name.to_string(),
        kind,
        required: false,
        default: None,
        unique: false,
        description: None,
        demo: None,
        lookup: None,
    };
    let index = |name: &str, fields: &[&str]| Index {
        name: format!("keel_activity_ix_{name}"),
        columns: fields
            .iter()
            .map(|f| IndexColumn {
                field: f.trim_start_matches('-').to_string(),
                descending: f.starts_with('-'),
            })
            .collect(),
        unique: false,
        condition: None,
    };
    // Reading the log takes the second-highest role (admin in most apps).
    let reader_role = roles.get(1).or(roles.first()).cloned().unwrap_or_default();
    let rule = |text: String| {
        Some(Located {
            text,
            line: 0,
            path: "activity".to_string(),
        })
    };
    let never = || rule("false".to_string());
    Collection {
        name: "activity".to_string(),
        global: false,
        fields: vec![
            field(
                "actor",
                FieldKind::Relation {
                    to: RelationTarget::Users,
                    on_delete: OnDelete::SetNull,
                },
            ),
            field("api_key", text(64)),
            field("collection", text(64)),
            field("record", text(64)),
            field(
                "action",
                FieldKind::Select {
                    values: ["create", "update", "delete", "bulk_delete", "import"]
                        .map(String::from)
                        .to_vec(),
                },
            ),
            field("changes", FieldKind::Json),
            field("count", FieldKind::Integer { min: None, max: None }),
            field("request_id", text(128)),
        ],
        indexes: vec![
            index("entity", &["collection", "record", "id"]),
            index("actor", &["actor", "id"]),
            index("action", &["action", "id"]),
            index("time", &["created_at"]),
        ],
        rules: Rules {
            list: rule(format!("role >= {reader_role}")),
            view: rule(format!("role >= {reader_role}")),
            create: never(),
            update: never(),
            delete: never(),
        },
        demo_count: None,
        timeseries: None,
        system: true,
        triggers: Triggers::default(),
        cache_ttl_ms: None,
    }
}

/// The built-in job that applies retention (finished jobs, time series) every 5 minutes.
pub const CLEANUP_KIND: &str = "keel_cleanup";

/// The built-in job that runs a large import in the background, on its own queue.
pub const IMPORT_KIND: &str = "keel_import";
pub const BULK_QUEUE: &str = "keel_bulk";

/// The built-in job that sends account emails (verification, email change, password reset).
pub const ACCOUNT_EMAIL_KIND: &str = "keel_account_email";

/// The built-in job that takes a backup (on `[backup] schedule`, or on demand) or, with
/// `{"verify": NAME}` as its payload, verifies one; on the bulk queue.
pub const BACKUP_KIND: &str = "keel_backup";

impl App {
    /// Adds the built-in collections (the activity log) after validation.
    pub fn with_builtins(mut self) -> App {
        if self.collection("activity").is_none() {
            let activity = activity_collection(&self.roles);
            self.collections.push(activity);
        }
        if self.jobs.queue("default").is_none() {
            self.jobs.queues.insert(0, QueueSpec::new("default"));
        }
        if self.jobs.queue(BULK_QUEUE).is_none() {
            let mut bulk = QueueSpec::new(BULK_QUEUE);
            bulk.concurrency = 2;
            bulk.prefetch = 2;
            self.jobs.queues.push(bulk);
        }
        if self.jobs.kind(IMPORT_KIND).is_none() {
            self.jobs.kinds.push(JobKind {
                name: IMPORT_KIND.to_string(),
                queue: BULK_QUEUE.to_string(),
                handler: Handler::Import,
                // An import is not retried: a skip-mode import may have committed batches.
                attempts: 1,
                backoff_ms: 5_000,
                max_backoff_ms: 60_000,
                timeout_ms: 2 * 3_600_000,
                priority: 0,
                concurrency_key: None,
                enqueue_role: None,
                cron: None,
            });
        }
        if self.jobs.kind(BACKUP_KIND).is_none() {
            // Always there, for backups taken (and verified) on demand; on a cron only with
            // `[backup] schedule`.
            let cron = self.backup.schedule.as_ref().map(|schedule| CronSpec {
                schedule: schedule.clone(),
                catch_up: false,
                payload: serde_json::Value::Object(Default::default()),
            });
            self.jobs.kinds.push(JobKind {
                name: BACKUP_KIND.to_string(),
                queue: BULK_QUEUE.to_string(),
                handler: Handler::Backup,
                attempts: 3,
                backoff_ms: 60_000,
                max_backoff_ms: 600_000,
                timeout_ms: 4 * 3_600_000,
                priority: 0,
                concurrency_key: None,
                enqueue_role: None,
                cron,
            });
        }
        if self.jobs.kind(ACCOUNT_EMAIL_KIND).is_none() {
            self.jobs.kinds.push(JobKind {
                name: ACCOUNT_EMAIL_KIND.to_string(),
                queue: "default".to_string(),
                handler: Handler::AccountEmail,
                attempts: 6,
                backoff_ms: 5_000,
                max_backoff_ms: 300_000,
                timeout_ms: 60_000,
                // Someone is waiting for this email.
                priority: 100,
                concurrency_key: None,
                enqueue_role: None,
                cron: None,
            });
        }
        if self.jobs.kind(CLEANUP_KIND).is_none() {
            self.jobs.kinds.push(JobKind {
                name: CLEANUP_KIND.to_string(),
                queue: "default".to_string(),
                handler: Handler::Cleanup,
                attempts: 3,
                backoff_ms: 5_000,
                max_backoff_ms: 60_000,
                timeout_ms: 300_000,
                priority: 0,
                concurrency_key: None,
                enqueue_role: None,
                cron: Some(CronSpec {
                    schedule: "*/5 * * * *".to_string(),
                    catch_up: false,
                    payload: serde_json::Value::Object(Default::default()),
                }),
            });
        }
        self
    }
}

impl Collection {
    /// The SQL table that stores this collection.
    pub fn table(&self) -> String {
        if self.system {
            format!("keel_{}", self.name)
        } else {
            self.name.clone()
        }
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Fields included in full-text search, in declaration order.
    pub fn search_fields(&self) -> impl Iterator<Item = &Field> {
        self.fields
            .iter()
            .filter(|f| matches!(f.kind, FieldKind::Text { search: true, .. }))
    }

    pub fn has_search(&self) -> bool {
        self.search_fields().next().is_some()
    }

    /// Whether any field holds uploaded files.
    pub fn has_files(&self) -> bool {
        self.fields.iter().any(|f| matches!(f.kind, FieldKind::File { .. }))
    }
}
