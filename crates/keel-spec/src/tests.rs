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

#[test]
fn job_declarations_are_checked_with_lines() {
    let source = r#"
[app]
name = "jobs"

[roles]
order = ["owner", "member"]

[queues.pdf]
concurrency = 4
speed = 3

[jobs.render]
queue = "pdf"
handler = "carrier-pigeon"

[jobs.tick]
cron = "every tuesday"

[jobs.lost]
queue = "nowhere"

[jobs.remote]
handler = "external"

[jobs.hook]
handler = "http"
to = "someone@example.com"

[jobs.feed]
handler = "http"
url = "https://example.com/feed"
into = "notes"
key = "title"
enqueue_role = "boss"

[jobs.mail]
handler = "email"
to = "{{ user.email }}"

[collections.notes]
fields.title = { type = "text" }
jobs.on_create = ["missing_kind"]
"#;
    let error = parse_app(source).unwrap_err();
    let lines: Vec<String> = error.problems.iter().map(|p| p.to_string()).collect();
    let expect = [
        "line 10: queues.pdf.speed: unknown key",
        "line 14: jobs.render.handler: unknown handler 'carrier-pigeon'",
        "line 17: jobs.tick.cron: not a cron expression",
        "line 19: jobs.lost.queue: no queue 'nowhere' is declared",
        "line 22: jobs.remote.queue: external jobs need a queue that only external workers serve",
        "line 27: jobs.hook.to: the http handler does not take 'to'",
        "jobs.hook.url: is required by the http handler",
        "line 34: jobs.feed.enqueue_role: 'boss' is not a declared role",
        "jobs.mail.subject: is required by the email handler",
        "jobs.feed.key: 'title' must be a unique field of notes",
        "line 42: collections.notes.jobs.on_create[0]: no job kind 'missing_kind' is declared",
    ];
    for expected in expect {
        assert!(
            lines.iter().any(|l| l.starts_with(expected) || l.contains(expected)),
            "missing {expected:?} in {lines:#?}"
        );
    }
}

#[test]
fn job_defaults_and_builtins() {
    let source = r#"
[app]
name = "jobs"
[roles]
order = ["owner"]
[queues.pdf]
concurrency = 4
prefetch = 2
rate = 10
per_key = 2
keep_completed = 100
keep_failed = 500
keep_for = "1d"
attempts = 5
backoff = "1s"
[jobs.render]
queue = "pdf"
handler = "command"
command = ["render", "--fast"]
timeout = "5m"
memory = "512MB"
cpu = "90s"
[collections.notes]
fields.title = { type = "text" }
"#;
    let app = parse_app(source).unwrap();
    let pdf = app.jobs.queue("pdf").unwrap();
    assert_eq!(
        (pdf.concurrency, pdf.prefetch, pdf.rate, pdf.per_key),
        (4, 4, Some(10.0), Some(2))
    );
    assert_eq!(
        (pdf.keep_completed, pdf.keep_failed, pdf.keep_for_ms),
        (100, 500, 86_400_000)
    );
    let render = app.jobs.kind("render").unwrap();
    assert_eq!(
        (render.attempts, render.backoff_ms, render.timeout_ms),
        (5, 1_000, 300_000),
        "the queue's policy, where the kind sets none"
    );
    assert_eq!(
        render.handler,
        Handler::Command {
            program: vec!["render".into(), "--fast".into()],
            cpu_seconds: Some(90),
            memory_bytes: Some(512 << 20),
        }
    );
    assert!(app.jobs.queue("default").is_some(), "the default queue always exists");
    let cleanup = app.jobs.kind(CLEANUP_KIND).unwrap();
    assert_eq!(cleanup.handler, Handler::Cleanup);
    assert_eq!(cleanup.cron.as_ref().unwrap().schedule, "*/5 * * * *");
}

#[test]
fn rate_limits_have_defaults_and_overrides() {
    let defaults = parse_app(PMS).expect("valid").rate_limits;
    assert_eq!(defaults, RateLimitsSpec::default());
    assert_eq!(defaults.auth.per_ip, [Rate::per_minute(10)]);
    let source = format!(
        "{PMS}\n[rate_limits]\napi = {{ per_ip = \"100/m\", per_org = \"off\" }}\n\
         upload = {{ per_user = [\"5/m\", \"10/h\"], concurrent_per_user = 2 }}\nstatus = {{ per_user = \"100/1m\" }}\n"
    );
    let limits = parse_app(&source).expect("valid").rate_limits;
    assert_eq!(limits.api.per_ip, [Rate::per_minute(100)]);
    assert_eq!(
        limits.api.per_user,
        RateLimitsSpec::default().api.per_user,
        "unset keys keep defaults"
    );
    assert!(limits.api.per_org.is_empty(), "\"off\" is no limit");
    assert_eq!(
        limits.upload.per_user,
        [
            Rate::per_minute(5),
            Rate {
                limit: 10,
                period_ms: 3_600_000
            }
        ]
    );
    assert_eq!(limits.upload.concurrent_per_user, Some(2));
    assert_eq!(limits.status.per_user, [Rate::per_minute(100)]);
    assert_eq!(limits.upload.per_user[1].to_string(), "10/h");
    assert_eq!(parse_rate("10/5m").unwrap().to_string(), "10/5m");
    for bad in [
        "10",
        "0/m",
        "10/",
        "10/fortnight",
        "20000000/h",
        "1/500ms",
        "10/2d",
        "-1/m",
    ] {
        assert_eq!(parse_rate(bad), None, "{bad}");
    }

    let bad = format!(
        "{PMS}\n[rate_limits]\nauth = {{ per_ip = \"ten a minute\", concurrent_per_user = 2 }}\n\
         upload = {{ per_user = [\"5/m\", \"6/1m\"] }}\nsearch = {{ per_ip = \"1/s\" }}\n"
    );
    let problems = parse_app(&bad).unwrap_err().problems;
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "rate_limits.auth.per_ip",
            "rate_limits.auth.concurrent_per_user",
            "rate_limits.upload.per_user",
            "rate_limits.search"
        ],
        "{problems:?}"
    );
    assert!(problems.iter().all(|p| p.line > 0), "{problems:?}");
}

#[test]
fn collections_may_declare_a_cache_lifetime() {
    let source = PMS.replace("[collections.tasks]\n", "[collections.tasks]\ncache = \"5m\"\n");
    let app = parse_app(&source).expect("valid");
    assert_eq!(app.collection("tasks").unwrap().cache_ttl_ms, Some(300_000));
    assert_eq!(app.collection("projects").unwrap().cache_ttl_ms, None);
    for bad in ["\"500ms\"", "\"2d\"", "\"soon\"", "5"] {
        let source = PMS.replace(
            "[collections.tasks]\n",
            &format!("[collections.tasks]\ncache = {bad}\n"),
        );
        let problems = parse_app(&source).unwrap_err().problems;
        assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
        assert_eq!(problems[0].path, "collections.tasks.cache");
    }
}
