//! Unit tests for spec parsing and validation.

use super::*;

const PMS: &str = r#"
[app]
name = "pms"

[roles]
order = ["owner", "admin", "member", "viewer"]

[collections.projects]
fields.name = { type = "text", required = true, max = 200, unique = true, search = true }

[collections.tasks]
fields.project = { type = "relation", to = "projects", required = true, on_delete = "cascade" }
fields.title = { type = "text", required = true, max = 500, search = true }
fields.status = { type = "select", values = ["todo", "in_progress", "done"], default = "todo" }
fields.assignee = { type = "relation", to = "users", on_delete = "set_null" }
fields.due_date = { type = "date" }
indexes = [["project", "status"], { fields = ["-due_date"], where = "status != 'done'" }, { fields = ["title"], unique = true }]
rules.update = "role >= admin || assignee = @user"
"#;

#[test]
fn parses_a_valid_spec() {
    let app = parse_app(PMS).expect("valid");
    assert_eq!(app.name, "pms");
    assert_eq!(app.roles, ["owner", "admin", "member", "viewer"]);
    let tasks = app.collection("tasks").unwrap();
    assert_eq!(tasks.fields.len(), 5);
    assert_eq!(tasks.indexes.len(), 3);
    assert!(tasks.indexes[1].columns[0].descending);
    assert_eq!(tasks.indexes[1].condition.as_ref().unwrap().text, "status != 'done'");
    assert!(tasks.indexes[2].unique);
    assert_eq!(tasks.rules.update.as_ref().unwrap().line, 18);
    assert_eq!(app.role_rank("owner"), Some(4));
    assert_eq!(app.role_rank("viewer"), Some(1));
    assert!(matches!(
        tasks.field("status").unwrap().default,
        Some(DefaultValue::Text(ref s)) if s == "todo"
    ));
}

#[test]
fn reports_every_problem_with_line_and_path() {
    let source = r#"
[app]
name = "Bad Name"

[roles]
order = ["owner", "owner"]

[collections.tasks]
fields.title = { type = "txt" }
fields.n = { type = "integer", min = 5, max = 1 }
fields.p = { type = "relation", to = "nowhere" }
fields.s = { type = "select", values = ["a"], default = "b" }
fields.id = { type = "text" }
indexes = [["missing"]]
colour = "red"

[collections.members]
fields.x = { type = "bool" }
"#;
    let error = parse_app(source).unwrap_err();
    let lines: Vec<String> = error.problems.iter().map(|p| p.to_string()).collect();
    let expect = [
        "line 3: app.name",
        "line 6: roles.order[1]",
        "line 9: collections.tasks.fields.title.type: unknown type 'txt'",
        "line 10: collections.tasks.fields.n: min is greater than max",
        "line 11: collections.tasks.fields.p.to: no collection named 'nowhere'",
        "line 12: collections.tasks.fields.s.default: 'b' is not one of",
        "line 13: collections.tasks.fields.id: 'id' is a system field name",
        "line 15: collections.tasks.colour: unknown key",
        "line 17: collections.members: 'members' is a reserved name",
    ];
    for expected in expect {
        assert!(
            lines.iter().any(|l| l.starts_with(expected)),
            "missing {expected:?} in {lines:#?}"
        );
    }
}

#[test]
fn syntax_errors_have_a_line() {
    let error = parse_app("[app]\nname = \"x\"\nroles = [\n").unwrap_err();
    assert_eq!(error.problems.len(), 1);
    assert!(error.problems[0].line >= 3, "{:?}", error.problems);
}

#[test]
fn a_global_collection_cannot_point_into_a_tenant() {
    let source = r#"
[app]
name = "x"
[roles]
order = ["owner"]
[collections.items]
global = true
fields.watch = { type = "relation", to = "watchlists" }
[collections.watchlists]
fields.name = { type = "text" }
"#;
    let error = parse_app(source).unwrap_err();
    assert!(error.problems[0].message.contains("global collection cannot relate"));
}

#[test]
fn model_round_trips_through_json() {
    let app = parse_app(PMS).unwrap();
    let json = serde_json::to_string(&app).unwrap();
    let back: App = serde_json::from_str(&json).unwrap();
    assert_eq!(app, back);
}

#[test]
fn date_and_datetime_defaults_are_real_values() {
    let spec = |default: &str, kind: &str| {
        format!(
            "[app]\nname = \"x\"\n[roles]\norder = [\"owner\"]\n[collections.t]\nfields.d = {{ type = \"{kind}\", default = \"{default}\" }}\n"
        )
    };
    assert!(parse_app(&spec("2024-02-29", "date")).is_ok());
    assert!(parse_app(&spec("2026-13-45", "date")).is_err());
    assert!(parse_app(&spec("2025-02-29", "date")).is_err());
    assert!(parse_app(&spec("2026-01-31T12:00:00Z", "datetime")).is_ok());
    assert!(parse_app(&spec("2026-01-31T12:00:00.5+02:00", "datetime")).is_ok());
    assert!(parse_app(&spec("2026-01-31 noon", "datetime")).is_err());
    assert!(parse_app(&spec("@now", "datetime")).is_ok());
}
