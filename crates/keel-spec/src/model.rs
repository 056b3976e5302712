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
pub const SYSTEM_FIELDS: [&str; 5] = ["id", "org", "created_at", "updated_at", "version"];

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
    }
}

impl App {
    /// Adds the built-in collections (the activity log) after validation.
    pub fn with_builtins(mut self) -> App {
        if self.collection("activity").is_none() {
            let activity = activity_collection(&self.roles);
            self.collections.push(activity);
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
}
