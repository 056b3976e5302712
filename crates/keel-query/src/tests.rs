//! Unit tests for the query language.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use keel_spec::{App, Collection, parse_app};
use proptest::prelude::*;
use serde_json::json;
use uuid::Uuid;

use crate::check::{compile, compile_index_condition};
use crate::cursor::{MAX_SORT_KEYS, keyset_predicate};
use crate::parse::{Expr, Literal, MAX_DEPTH, MAX_EXPRESSION_LENGTH, MAX_LIST, Operand, TextOp, Var, parse_expr};
use crate::value::spec_literal;
use crate::*;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

const SPEC: &str = r#"
[app]
name = "testapp"

[roles]
order = ["owner", "admin", "member", "viewer"]

[collections.projects]
fields.name = { type = "text", required = true, max = 200 }

[collections.tasks]
fields.title = { type = "text", required = true, max = 200 }
fields.note = { type = "text" }
fields.status = { type = "select", values = ["todo", "in_progress", "done"], default = "todo" }
fields.points = { type = "integer", min = 0, max = 100 }
fields.weight = { type = "number" }
fields.done = { type = "bool", default = false }
fields.ok = { type = "bool" }
fields.due = { type = "date" }
fields.starts_at = { type = "datetime" }
fields.meta = { type = "json" }
fields.assignee = { type = "relation", to = "users", on_delete = "set_null" }
fields.project = { type = "relation", to = "projects" }

[collections.tags]
global = true
fields.label = { type = "text" }

[collections.items]
fields.name = { type = "text", required = true, min = 2, max = 5 }
fields.code = { type = "text", pattern = "[A-Z]{3}-[0-9]+" }
fields.kind = { type = "select", values = ["a", "b"], default = "a" }
fields.count = { type = "integer", min = 1, max = 10, default = 3 }
fields.ratio = { type = "number", min = 0.5, max = 2.5, default = 1.5 }
fields.flag = { type = "bool", default = true }
fields.day = { type = "date", default = "@now" }
fields.at = { type = "datetime", default = "@now" }
fields.fixed_day = { type = "date", default = "2026-02-03" }
fields.meta = { type = "json" }
fields.owner = { type = "relation", to = "users" }
"#;

/// The quoted table name the compiler prefixes columns with.
const T: &str = "\"tasks\"";

fn app() -> &'static App {
    static APP: OnceLock<App> = OnceLock::new();
    APP.get_or_init(|| parse_app(SPEC).expect("the test spec is valid"))
}

fn collection(name: &str) -> &'static Collection {
    app().collection(name).expect("collection exists")
}

fn tasks() -> &'static Collection {
    collection("tasks")
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 31, 12, 0, 0).unwrap()
}

fn user_id() -> Uuid {
    Uuid::parse_str("01900000-0000-7000-8000-000000000001").unwrap()
}

fn context(user: Option<Uuid>, role: RoleSource) -> Context {
    Context { user, role, now: now() }
}

/// A signed-in member (rank 2).
fn member() -> Context {
    context(Some(user_id()), RoleSource::Rank(Some(2)))
}

fn check(source: &str, mode: Mode) -> Result<TExpr, QueryError> {
    check_expr(app(), tasks(), source, mode)
}

fn check_err(source: &str, mode: Mode) -> QueryError {
    match check(source, mode) {
        Ok(expr) => panic!("`{source}` should be rejected, got {expr:?}"),
        Err(error) => error,
    }
}

fn frag(source: &str, mode: Mode, dialect: Dialect, context: &Context) -> Frag {
    let expr = check(source, mode).unwrap_or_else(|e| panic!("`{source}` should check: {e}"));
    compile(&expr, dialect, T, context)
}

/// Compiles a filter for a signed-in member; it must not fold to a constant.
fn sql(source: &str, dialect: Dialect) -> Sql {
    match frag(source, Mode::Filter, dialect, &member()) {
        Frag::Sql(sql) => sql,
        other => panic!("`{source}` folded to {other:?}"),
    }
}

/// The placeholder numbers of a statement, in order of appearance, outside quoted strings.
fn placeholders(sql: &Sql) -> Vec<usize> {
    let marker = match sql.dialect {
        Dialect::Sqlite => '?',
        Dialect::Postgres => '$',
    };
    let chars: Vec<char> = sql.text.chars().collect();
    let mut found = vec![];
    let mut in_string = false;
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\'' {
            in_string = !in_string;
        } else if !in_string && chars[i] == marker {
            let digits: String = chars[i + 1..].iter().take_while(|c| c.is_ascii_digit()).collect();
            if !digits.is_empty() {
                found.push(digits.parse().unwrap());
                i += 1 + digits.len();
                continue;
            }
        }
        i += 1;
    }
    found
}

fn assert_numbered(sql: &Sql) {
    let expected: Vec<usize> = (1..=sql.params.len()).collect();
    assert_eq!(placeholders(sql), expected, "placeholders of {:?}", sql.text);
}

fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.to_string())
}

// ---------------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------------

/// An S-expression of a syntax tree, without positions.
fn shape(expr: &Expr) -> String {
    fn operand(o: &Operand) -> String {
        match o {
            Operand::Name(name, _) => name.clone(),
            Operand::Lit(literal) => lit(literal),
            Operand::Var(var, offset) => {
                let name = match var {
                    Var::User => "@user",
                    Var::Now => "@now",
                    Var::Today => "@today",
                };
                if *offset == 0 {
                    name.to_string()
                } else {
                    format!("{name}{offset:+}")
                }
            }
        }
    }
    fn lit(l: &Literal) -> String {
        match l {
            Literal::Str(s) => format!("{s:?}"),
            Literal::Int(i) => i.to_string(),
            Literal::Float(f) => format!("{f:?}"),
            Literal::Bool(b) => b.to_string(),
            Literal::Null => "null".to_string(),
        }
    }
    match expr {
        Expr::Const(b) => format!("{b}"),
        Expr::Cmp(l, op, r) => format!("({} {} {})", op.sql(), operand(l), operand(r)),
        Expr::In(o, items, negated) => format!(
            "({} {} [{}])",
            if *negated { "not-in" } else { "in" },
            operand(o),
            items.iter().map(lit).collect::<Vec<_>>().join(" ")
        ),
        Expr::IsNull(o, negated) => format!("({} {})", if *negated { "not-null" } else { "null" }, operand(o)),
        Expr::Text(o, op, v) => format!(
            "({} {} {})",
            match op {
                TextOp::Contains => "contains",
                TextOp::StartsWith => "startswith",
            },
            operand(o),
            operand(v)
        ),
        Expr::Truthy(o) => operand(o),
        Expr::And(a, b) => format!("(and {} {})", shape(a), shape(b)),
        Expr::Or(a, b) => format!("(or {} {})", shape(a), shape(b)),
        Expr::Not(a) => format!("(not {})", shape(a)),
    }
}

fn parsed(source: &str) -> String {
    shape(&parse_expr(source).unwrap_or_else(|e| panic!("`{source}` should parse: {e}")))
}

#[test]
fn and_binds_tighter_than_or() {
    assert_eq!(parsed("a || b && c"), "(or a (and b c))");
    assert_eq!(parsed("a && b || c"), "(or (and a b) c)");
    assert_eq!(parsed("a or b and c"), "(or a (and b c))");
    assert_eq!(parsed("a OR b AND c"), "(or a (and b c))");
}

/// Depth of a syntax tree, counting every node.
fn depth(expr: &Expr) -> usize {
    match expr {
        Expr::And(a, b) | Expr::Or(a, b) => 1 + depth(a).max(depth(b)),
        Expr::Not(a) => 1 + depth(a),
        _ => 1,
    }
}

#[test]
fn chains_are_balanced() {
    // && and || are associative; a chain becomes a balanced tree, in source order.
    assert_eq!(parsed("a || b || c"), "(or a (or b c))");
    assert_eq!(parsed("a && b && c"), "(and a (and b c))");
    assert_eq!(parsed("a || b || c || d"), "(or (or a b) (or c d))");
    assert_eq!(parsed("a && b || c && d && e"), "(or (and a b) (and c (and d e)))");
    let chain = vec!["ok"; 1024].join("||");
    assert_eq!(depth(&parse_expr(&chain).unwrap()), 11);
    let chain = vec!["ok"; 600].join(" && ");
    assert_eq!(depth(&parse_expr(&chain).unwrap()), 11);
}

#[test]
fn parentheses_override_precedence() {
    assert_eq!(parsed("(a || b) && c"), "(and (or a b) c)");
    assert_eq!(parsed("a && (b || c)"), "(and a (or b c))");
    assert_eq!(parsed("((a))"), "a");
}

#[test]
fn not_applies_to_the_next_operand() {
    assert_eq!(parsed("!a && b"), "(and (not a) b)");
    assert_eq!(parsed("not a && b"), "(and (not a) b)");
    assert_eq!(parsed("NOT a"), "(not a)");
    assert_eq!(parsed("!(a || b)"), "(not (or a b))");
    assert_eq!(parsed("!!a"), "(not (not a))");
    assert_eq!(parsed("!points = 1"), "(not (= points 1))");
}

#[test]
fn comparison_operators() {
    for (source, op) in [
        ("x = 1", "="),
        ("x == 1", "="),
        ("x != 1", "<>"),
        ("x <> 1", "<>"),
        ("x < 1", "<"),
        ("x <= 1", "<="),
        ("x > 1", ">"),
        ("x >= 1", ">="),
    ] {
        assert_eq!(parsed(source), format!("({op} x 1)"), "{source}");
    }
    assert_eq!(parsed("x>=1&&y<2"), "(and (>= x 1) (< y 2))");
}

#[test]
fn lists_and_not_in() {
    assert_eq!(parsed("x in [1, 2, 3]"), "(in x [1 2 3])");
    assert_eq!(parsed("x not in [\"a\", 'b']"), "(not-in x [\"a\" \"b\"])");
    assert_eq!(parsed("x in []"), "(in x [])");
    assert_eq!(parsed("x in [-1, 2.5, true, null]"), "(in x [-1 2.5 true null])");
    assert_eq!(parsed("x NOT in [1]"), "(not-in x [1])");
}

#[test]
fn null_tests() {
    assert_eq!(parsed("x is null"), "(null x)");
    assert_eq!(parsed("x is not null"), "(not-null x)");
    assert_eq!(parsed("x = null"), "(null x)");
    assert_eq!(parsed("x == null"), "(null x)");
    assert_eq!(parsed("x != null"), "(not-null x)");
    assert_eq!(parsed("null = x"), "(null x)");
    assert_eq!(parsed("null <> x"), "(not-null x)");
    assert_eq!(parsed("@user != null"), "(not-null @user)");
}

#[test]
fn text_operators() {
    assert_eq!(parsed("title contains \"foo\""), "(contains title \"foo\")");
    assert_eq!(parsed("title startswith 'ba'"), "(startswith title \"ba\")");
}

#[test]
fn time_variables_take_offsets() {
    assert_eq!(parsed("t > @now - 7d"), "(> t @now-604800)");
    assert_eq!(parsed("t > @now-7d"), "(> t @now-604800)");
    assert_eq!(parsed("d < @today + 30d"), "(< d @today+2592000)");
    assert_eq!(parsed("t > @now + 2h"), "(> t @now+7200)");
    assert_eq!(parsed("t > @now - 15m"), "(> t @now-900)");
    assert_eq!(parsed("t > @now + 10s"), "(> t @now+10)");
    assert_eq!(parsed("t > @now"), "(> t @now)");
    assert_eq!(parsed("a = @user"), "(= a @user)");
}

#[test]
fn numbers() {
    assert_eq!(parsed("x > -5"), "(> x -5)");
    assert_eq!(parsed("x > - 5"), "(> x -5)");
    assert_eq!(parsed("x >= -1.5"), "(>= x -1.5)");
    assert_eq!(parsed("x = 0.25"), "(= x 0.25)");
    assert_eq!(parsed("x = 9223372036854775807"), "(= x 9223372036854775807)");
    assert_eq!(parsed("x = -9223372036854775807"), "(= x -9223372036854775807)");
}

#[test]
fn both_quote_styles_and_escapes() {
    let value = |source: &str| match parse_expr(source).unwrap() {
        Expr::Cmp(_, _, Operand::Lit(Literal::Str(s))) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(value(r#"x = "it's""#), "it's");
    assert_eq!(value(r#"x = 'say "hi"'"#), "say \"hi\"");
    assert_eq!(value(r#"x = "a\"b\\c\nd""#), "a\"b\\c\nd");
    assert_eq!(value(r#"x = 'it\'s'"#), "it's");
    assert_eq!(value(r#"x = 'a\"b'"#), "a\"b");
    assert_eq!(value(r#"x = """#), "");
    assert_eq!(value("x = 'héllo 漢字 😀'"), "héllo 漢字 😀");
}

#[test]
fn bare_booleans_are_constants() {
    assert_eq!(parse_expr("true").unwrap(), Expr::Const(true));
    assert_eq!(parsed("false || done"), "(or false done)");
}

#[test]
fn names_carry_their_byte_position() {
    let error = parse_expr("ok && é = 1").unwrap_err();
    assert_eq!((error.code, error.position), ("invalid_filter", 6));
    let Expr::And(_, right) = parse_expr("a = 1 && bb = 2").unwrap() else {
        panic!("and")
    };
    assert!(matches!(*right, Expr::Cmp(Operand::Name(ref n, 9), _, _) if n == "bb"));
}

fn syntax_error(source: &str) -> QueryError {
    match parse_expr(source) {
        Ok(expr) => panic!("`{source}` should not parse, got {}", shape(&expr)),
        Err(error) => {
            assert_eq!(error.code, "invalid_filter", "`{source}`: {error:?}");
            assert!(error.position <= source.len(), "`{source}`: {error:?}");
            error
        }
    }
}

#[test]
fn syntax_errors_are_invalid_filter() {
    for source in [
        "title = \"abc",
        "title = 'abc",
        r"title = 'abc\'",
        r#"title = "\q""#,
        "@foo = 1",
        "points = 1 && @ = 2",
        "a = 1 b",
        "a = 1)",
        "(a = 1",
        "a = 1,",
        "",
        "   \n\t ",
        "a =",
        "a = -",
        "a = -b",
        "x in 1",
        "x in [y]",
        "x in [1,]",
        "x in [1 2]",
        "x in [1",
        "x not 5",
        "x not",
        "x is 5",
        "x is not",
        "x foo 1",
        "x & y",
        "x | y",
        "x = 1.2.3",
        "x = 99999999999999999999",
        "x = .5",
        "x = 7d",
        "@user + 1d = x",
        "t > @now - 1.5d",
        "t > @now - 99999999999d",
        "x = 1 #",
        "&& a",
        "a &&",
        "()",
        "!",
        "a ; b",
        "x = `y`",
    ] {
        syntax_error(source);
    }
}

#[test]
fn syntax_errors_point_at_the_problem() {
    assert_eq!(syntax_error("title = \"abc").position, 8);
    assert_eq!(syntax_error("points = 1 && @foo = 2").position, 14);
    assert_eq!(syntax_error("a = 1 b").position, 6);
    assert!(syntax_error("@foo = 1").message.contains("@foo"));
    assert!(syntax_error("").message.contains("empty"));
}

#[test]
fn expression_length_is_bounded() {
    let at_limit = "x".repeat(MAX_EXPRESSION_LENGTH);
    assert!(parse_expr(&at_limit).is_ok());
    let over = "x".repeat(MAX_EXPRESSION_LENGTH + 1);
    assert!(syntax_error(&over).message.contains("longer"));
    // The limit is in bytes, not characters.
    let multibyte = format!("x = \"{}\"", "é".repeat(MAX_EXPRESSION_LENGTH / 2));
    syntax_error(&multibyte);
}

#[test]
fn nesting_depth_is_bounded() {
    let parens = |n: usize| format!("{}ok{}", "(".repeat(n), ")".repeat(n));
    assert_eq!(parsed(&parens(MAX_DEPTH)), "ok");
    assert!(syntax_error(&parens(MAX_DEPTH + 1)).message.contains("deeper"));
    let nots = |n: usize| format!("{}ok", "!".repeat(n));
    assert!(parse_expr(&nots(MAX_DEPTH)).is_ok());
    syntax_error(&nots(MAX_DEPTH + 1));
    let mixed = |n: usize| format!("{}ok{}", "!(".repeat(n), ")".repeat(n));
    assert!(parse_expr(&mixed(MAX_DEPTH / 2)).is_ok());
    syntax_error(&mixed(MAX_DEPTH / 2 + 1));
    // Far deeper than the limit: an error, not a stack overflow.
    syntax_error(&"(".repeat(MAX_EXPRESSION_LENGTH));
    syntax_error(&"!".repeat(MAX_EXPRESSION_LENGTH));
    syntax_error(&"not ".repeat(MAX_EXPRESSION_LENGTH / 4));
}

#[test]
fn list_length_is_bounded() {
    let list = |n: usize| format!("points in [{}]", vec!["1"; n].join(","));
    match parse_expr(&list(MAX_LIST)).unwrap() {
        Expr::In(_, items, false) => assert_eq!(items.len(), MAX_LIST),
        other => panic!("{other:?}"),
    }
    assert!(syntax_error(&list(MAX_LIST + 1)).message.contains("at most"));
}

// ---------------------------------------------------------------------------------------------
// Type checking
// ---------------------------------------------------------------------------------------------

fn assert_error(source: &str, mode: Mode, code: &str, field: Option<&str>) {
    let error = check_err(source, mode);
    assert_eq!(error.code, code, "`{source}`: {error:?}");
    assert_eq!(error.field.as_deref(), field, "`{source}`: {error:?}");
}

#[test]
fn well_typed_filters_check() {
    for source in [
        "title = \"x\"",
        "title != 'x' && note is null",
        "status = \"done\"",
        "status in [\"todo\", \"done\"]",
        "points >= 3 && points < 10",
        "points in [1, 2, 3]",
        "weight > 1",
        "weight > 1.5",
        "points < weight",
        "title = status",
        "done",
        "!done",
        "done = true",
        "done != false",
        "due = \"2026-01-31\"",
        "due < @today + 30d",
        "starts_at > \"2026-01-31T12:00:00Z\"",
        "starts_at > \"2026-01-31T12:00:00.123456+02:00\"",
        "starts_at > \"2026-01-31\"",
        "starts_at > @now - 7d",
        "starts_at < @today",
        "assignee = @user",
        "@user = assignee",
        "assignee is null",
        "@user != null",
        "id = \"01900000-0000-7000-8000-000000000001\"",
        "org = \"01900000-0000-7000-8000-000000000001\"",
        "created_at > @now - 1h",
        "updated_at > \"2026-01-01\"",
        "version > 1",
        "meta = null",
        "meta is not null",
        "title contains \"x\"",
        "status startswith \"in\"",
        "true",
        "false || done",
    ] {
        if let Err(error) = check(source, Mode::Filter) {
            panic!("`{source}` should check: {error:?}");
        }
    }
}

#[test]
fn unknown_fields_are_named() {
    assert_error("nosuch = 1", Mode::Filter, "unknown_field", Some("nosuch"));
    assert_error("1 = nosuch", Mode::Filter, "unknown_field", Some("nosuch"));
    assert_error("title = other", Mode::Filter, "unknown_field", Some("other"));
    assert_error("nosuch in [1]", Mode::Filter, "unknown_field", Some("nosuch"));
    assert_error("nosuch not in [1]", Mode::Filter, "unknown_field", Some("nosuch"));
    assert_error("nosuch is null", Mode::Filter, "unknown_field", Some("nosuch"));
    assert_error("nosuch = null", Mode::Filter, "unknown_field", Some("nosuch"));
    assert_error("nosuch contains \"x\"", Mode::Filter, "unknown_field", Some("nosuch"));
    assert_error("nosuch", Mode::Filter, "unknown_field", Some("nosuch"));
    assert_error("done && !nosuch", Mode::Filter, "unknown_field", Some("nosuch"));
    let error = check_err("points > 1 && nosuch = 2", Mode::Filter);
    assert_eq!(error.position, 14);
    assert!(error.message.contains("tasks"), "{}", error.message);
    // `org` is not a field of a global collection.
    let error = check_expr(app(), collection("tags"), "org = \"x\"", Mode::Filter).unwrap_err();
    assert_eq!((error.code, error.field.as_deref()), ("unknown_field", Some("org")));
}

#[test]
fn values_of_the_wrong_type_name_the_field() {
    for (source, field) in [
        ("points = \"x\"", "points"),
        ("points = 1.5", "points"),
        ("points = true", "points"),
        ("points in [1, \"x\"]", "points"),
        ("weight = \"1\"", "weight"),
        ("title = 1", "title"),
        ("title in [\"a\", 2]", "title"),
        ("status = \"nope\"", "status"),
        ("status = \"Done\"", "status"),
        ("status in [\"todo\", \"nope\"]", "status"),
        ("status = 1", "status"),
        ("done = 1", "done"),
        ("done = \"true\"", "done"),
        ("done > false", "done"),
        ("points", "points"),
        ("due = \"2026-02-30\"", "due"),
        ("due = \"2026-1-1\"", "due"),
        ("due = \"2026-01-31T00:00:00Z\"", "due"),
        ("due = 20260131", "due"),
        ("starts_at > \"yesterday\"", "starts_at"),
        ("starts_at > \"2026-01-31 12:00\"", "starts_at"),
        ("assignee = \"not-a-uuid\"", "assignee"),
        ("assignee = 1", "assignee"),
        ("id = \"x\"", "id"),
        ("meta = \"x\"", "meta"),
        ("meta = 1", "meta"),
        ("meta = title", "meta"),
        ("meta in [\"x\"]", "meta"),
        ("title = points", "title"),
        ("due = starts_at", "due"),
        ("points contains \"1\"", "points"),
        ("title contains 5", "title"),
        ("title startswith other_text", "title"),
        ("title = @user", "title"),
        ("points = @user", "points"),
        ("@user = due", "due"),
        ("due > @now", "due"),
        ("points > @today", "points"),
        ("points < null", "points"),
    ] {
        let error = check_err(source, Mode::Filter);
        assert_eq!(error.code, "invalid_value", "`{source}`: {error:?}");
        assert_eq!(error.field.as_deref(), Some(field), "`{source}`: {error:?}");
    }
}

#[test]
fn comparisons_without_a_field_must_agree_in_type() {
    // Neither side is a column: PostgreSQL would reject `$1 = $2` with mismatched types.
    for source in [
        "1 = \"x\"",
        "\"x\" < 2",
        "@now = 5",
        "@user = \"x\"",
        "@user = 1",
        "true = 1",
        "@today = \"2026-01-01\"",
    ] {
        let error = check_err(source, Mode::Filter);
        assert_eq!(error.code, "invalid_filter", "`{source}`: {error:?}");
    }
    for source in [
        "1 = 1.5",
        "\"a\" < \"b\"",
        "@now > @today",
        "@user = @user",
        "true = false",
    ] {
        assert!(check(source, Mode::Filter).is_ok(), "`{source}`");
    }
}

#[test]
fn other_misuse_is_invalid_filter() {
    for source in [
        "5",
        "\"x\"",
        "null",
        "@user",
        "@now",
        "null = null",
        "@now = null",
        "\"x\" contains title",
        "1 in [1]",
        "@user < null",
    ] {
        assert_error(source, Mode::Filter, "invalid_filter", None);
    }
}

#[test]
fn role_is_only_for_rules() {
    assert_error("role >= member", Mode::Filter, "invalid_filter", None);
    assert_error("role >= member", Mode::IndexCondition, "invalid_filter", None);
    assert!(check("role >= member", Mode::Rule).is_ok());
    assert!(check("member <= role", Mode::Rule).is_ok());
    assert!(check("role >= admin || assignee = @user", Mode::Rule).is_ok());
    let error = check_err("role >= boss", Mode::Rule);
    assert_eq!(error.code, "invalid_filter");
    assert!(error.message.contains("boss") && error.message.contains("owner, admin, member, viewer"));
    for source in [
        "role = \"admin\"",
        "role >= 2",
        "role = @user",
        "role >= title",
        "role",
        "role is null",
    ] {
        assert_error(source, Mode::Rule, "invalid_filter", None);
    }
    // A global collection has no org, so no role.
    let error = check_expr(app(), collection("tags"), "role >= member", Mode::Rule).unwrap_err();
    assert_eq!(error.code, "invalid_filter");
}

#[test]
fn index_conditions_take_no_variables() {
    for source in ["starts_at > @now", "due < @today", "assignee = @user", "@user != null"] {
        assert_error(source, Mode::IndexCondition, "invalid_filter", None);
        assert!(check(source, Mode::Rule).is_ok(), "`{source}` is a fine rule");
    }
    assert!(check("status != \"done\" && done = false", Mode::IndexCondition).is_ok());
}

#[test]
fn column_types() {
    let tasks = tasks();
    assert_eq!(column_type(tasks, "id"), Some(ColumnType::Id));
    assert_eq!(column_type(tasks, "org"), Some(ColumnType::Id));
    assert_eq!(column_type(tasks, "created_at"), Some(ColumnType::Datetime));
    assert_eq!(column_type(tasks, "version"), Some(ColumnType::Integer));
    assert_eq!(column_type(tasks, "assignee"), Some(ColumnType::Id));
    assert_eq!(column_type(tasks, "status"), Some(ColumnType::Select));
    assert_eq!(column_type(tasks, "meta"), Some(ColumnType::Json));
    assert_eq!(column_type(tasks, "nosuch"), None);
    assert_eq!(column_type(collection("tags"), "org"), None);
}

#[test]
fn schema_checks_every_rule_with_its_line() {
    let schema = Schema::new(app().clone()).expect("valid rules");
    assert!(matches!(
        schema.rule("tasks", keel_spec::Action::Create),
        TExpr::Cmp(_, _, _)
    ));
    let source = format!(
        "{SPEC}\n[collections.notes]\nfields.body = {{ type = \"text\" }}\nrules.update = \"role >= boss\"\nrules.delete = \"nosuch = 1\"\n"
    );
    let app = parse_app(&source).expect("the spec itself is valid");
    let problems = Schema::new(app).unwrap_err();
    assert_eq!(problems.len(), 2, "{problems:?}");
    let lines = source.lines().count();
    assert_eq!(problems[0].line, lines - 1);
    assert_eq!(problems[0].path, "collections.notes.rules.update");
    assert_eq!(problems[1].error.code, "unknown_field");
}

// ---------------------------------------------------------------------------------------------
// Compilation
// ---------------------------------------------------------------------------------------------

#[test]
fn placeholders_follow_the_dialect() {
    let sqlite = sql("points > 5", Dialect::Sqlite);
    assert_eq!(sqlite.text, "\"tasks\".\"points\" > ?1");
    assert_eq!(sqlite.params, [SqlValue::Int(5)]);
    let postgres = sql("points > 5", Dialect::Postgres);
    assert_eq!(postgres.text, "\"tasks\".\"points\" > $1");
    assert_eq!(postgres.params, [SqlValue::Int(5)]);

    let source = "title = \"a\" && points > 3 || note = \"b\"";
    let sqlite = sql(source, Dialect::Sqlite);
    assert_eq!(
        sqlite.text,
        "((\"tasks\".\"title\" = ?1) AND (\"tasks\".\"points\" > ?2)) OR (\"tasks\".\"note\" = ?3)"
    );
    assert_eq!(sqlite.params, [text("a"), SqlValue::Int(3), text("b")]);
    let postgres = sql(source, Dialect::Postgres);
    assert_eq!(postgres.text, sqlite.text.replace('?', "$"));
    assert_eq!(postgres.params, sqlite.params);
}

#[test]
fn filter_text_is_never_sql() {
    for dialect in [Dialect::Sqlite, Dialect::Postgres] {
        let sql = sql("title = \"x' OR 1=1 --\"", dialect);
        assert!(!sql.text.contains("OR 1=1"), "{}", sql.text);
        assert!(!sql.text.contains('\''), "{}", sql.text);
        assert_eq!(sql.params, [text("x' OR 1=1 --")]);

        let sql = self::sql(
            r#"note = "\"; DROP TABLE tasks; --" || title in ["a'b", 'c"d']"#,
            dialect,
        );
        assert!(!sql.text.contains("DROP") && !sql.text.contains("a'b"), "{}", sql.text);
        assert_eq!(
            sql.params,
            [text("\"; DROP TABLE tasks; --"), text("a'b"), text("c\"d")]
        );
        assert_numbered(&sql);
    }
}

#[test]
fn text_operators_bind_an_escaped_pattern() {
    let sqlite = sql(r#"title contains "50%_off\\""#, Dialect::Sqlite);
    assert_eq!(sqlite.text, "\"tasks\".\"title\" LIKE ?1 ESCAPE '\\'");
    assert_eq!(sqlite.params, [text(r"%50\%\_off\\%")]);
    let postgres = sql("title startswith 'a%'", Dialect::Postgres);
    assert_eq!(postgres.text, "\"tasks\".\"title\" ILIKE $1 ESCAPE '\\'");
    assert_eq!(postgres.params, [text(r"a\%%")]);
}

#[test]
fn spec_constants_are_inlined() {
    let sqlite = sql("status = \"done\"", Dialect::Sqlite);
    assert_eq!(sqlite.text, "\"tasks\".\"status\" = 'done'");
    assert!(sqlite.params.is_empty());
    let sqlite = sql("status not in [\"todo\", \"done\"]", Dialect::Sqlite);
    assert_eq!(sqlite.text, "\"tasks\".\"status\" NOT IN ('todo', 'done')");
    assert!(sqlite.params.is_empty());

    for (source, sqlite_text, postgres_text) in [
        ("done = true", "\"tasks\".\"done\" = 1", "\"tasks\".\"done\" = true"),
        ("done = false", "\"tasks\".\"done\" = 0", "\"tasks\".\"done\" = false"),
        (
            "done != false",
            "\"tasks\".\"done\" <> 0",
            "\"tasks\".\"done\" <> false",
        ),
        ("done", "\"tasks\".\"done\" = 1", "\"tasks\".\"done\" = true"),
        (
            "!done",
            "NOT (\"tasks\".\"done\" = 1)",
            "NOT (\"tasks\".\"done\" = true)",
        ),
    ] {
        let s = sql(source, Dialect::Sqlite);
        assert_eq!(s.text, sqlite_text);
        assert!(s.params.is_empty());
        assert_eq!(sql(source, Dialect::Postgres).text, postgres_text);
    }
}

#[test]
fn lists_and_null_tests() {
    let s = sql("points in [1, 2]", Dialect::Sqlite);
    assert_eq!(s.text, "\"tasks\".\"points\" IN (?1, ?2)");
    assert_eq!(s.params, [SqlValue::Int(1), SqlValue::Int(2)]);
    let s = sql("points not in [3]", Dialect::Postgres);
    assert_eq!(s.text, "\"tasks\".\"points\" NOT IN ($1)");
    let ctx = member();
    assert_eq!(
        frag("points in []", Mode::Filter, Dialect::Sqlite, &ctx),
        Frag::Const(false)
    );
    assert_eq!(
        frag("points not in []", Mode::Filter, Dialect::Sqlite, &ctx),
        Frag::Const(true)
    );
    assert_eq!(
        sql("points in [] || done", Dialect::Sqlite).text,
        "\"tasks\".\"done\" = 1"
    );
    assert_eq!(sql("due is null", Dialect::Sqlite).text, "\"tasks\".\"due\" IS NULL");
    assert_eq!(
        sql("due != null", Dialect::Sqlite).text,
        "\"tasks\".\"due\" IS NOT NULL"
    );
    assert_eq!(sql("meta = null", Dialect::Postgres).text, "\"tasks\".\"meta\" IS NULL");
}

#[test]
fn constants_fold() {
    let ctx = member();
    assert_eq!(frag("true", Mode::Filter, Dialect::Sqlite, &ctx), Frag::Const(true));
    assert_eq!(frag("!true", Mode::Filter, Dialect::Sqlite, &ctx), Frag::Const(false));
    assert_eq!(
        frag("false && done", Mode::Filter, Dialect::Sqlite, &ctx),
        Frag::Const(false)
    );
    assert_eq!(
        frag("done || true", Mode::Filter, Dialect::Sqlite, &ctx),
        Frag::Const(true)
    );
    assert_eq!(sql("true && done", Dialect::Sqlite).text, "\"tasks\".\"done\" = 1");
    assert_eq!(Frag::Const(true).into_sql(Dialect::Sqlite).text, "1=1");
    assert_eq!(Frag::Const(false).into_sql(Dialect::Postgres).text, "1=0");
}

#[test]
fn values_bind_with_their_types() {
    let u = user_id();
    let s = sql(&format!("id = \"{u}\""), Dialect::Postgres);
    assert_eq!(s.params, [SqlValue::Uuid(u)]);
    let s = sql("due = \"2026-01-31\"", Dialect::Sqlite);
    assert_eq!(
        s.params,
        [SqlValue::Date(NaiveDate::from_ymd_opt(2026, 1, 31).unwrap())]
    );
    let s = sql("starts_at > \"2026-01-31T12:00:00+02:00\"", Dialect::Sqlite);
    assert_eq!(
        s.params,
        [SqlValue::Datetime(Utc.with_ymd_and_hms(2026, 1, 31, 10, 0, 0).unwrap())]
    );
    let s = sql("starts_at > \"2026-01-31\"", Dialect::Sqlite);
    assert_eq!(
        s.params,
        [SqlValue::Datetime(Utc.with_ymd_and_hms(2026, 1, 31, 0, 0, 0).unwrap())]
    );
    let s = sql("weight > 1", Dialect::Sqlite);
    assert_eq!(s.params, [SqlValue::Float(1.0)]);
    let s = sql("points > -3", Dialect::Sqlite);
    assert_eq!(s.params, [SqlValue::Int(-3)]);
}

#[test]
fn time_variables_bind_the_context_clock() {
    let s = sql("starts_at > @now - 7d", Dialect::Sqlite);
    assert_eq!(s.text, "\"tasks\".\"starts_at\" > ?1");
    assert_eq!(s.params, [SqlValue::Datetime(now() - Duration::days(7))]);
    let s = sql("due <= @today + 30d", Dialect::Postgres);
    assert_eq!(s.params, [SqlValue::Date(NaiveDate::from_ymd_opt(2026, 3, 2).unwrap())]);
    let s = sql("@today < due", Dialect::Sqlite);
    assert_eq!(s.text, "\"tasks\".\"due\" > ?1");
}

#[test]
fn role_folds_to_a_constant_when_the_rank_is_known() {
    let as_rank = |rank: Option<i64>| context(Some(user_id()), RoleSource::Rank(rank));
    let rule = |source: &str, rank: Option<i64>| frag(source, Mode::Rule, Dialect::Sqlite, &as_rank(rank));
    // owner 4, admin 3, member 2, viewer 1.
    for (source, expected) in [
        ("role >= member", true),
        ("role >= admin", false),
        ("role > member", false),
        ("role > viewer", true),
        ("role = member", true),
        ("role != member", false),
        ("role < admin", true),
        ("role <= viewer", false),
        ("member <= role", true),
        ("admin <= role", false),
        ("admin > role", true),
        ("!(role >= admin)", true),
    ] {
        assert_eq!(rule(source, Some(2)), Frag::Const(expected), "{source}");
    }
    assert_eq!(rule("role >= viewer", None), Frag::Const(false));
    assert_eq!(rule("role >= owner", Some(4)), Frag::Const(true));

    assert_eq!(rule("points > 1 || role >= admin", Some(4)), Frag::Const(true));
    assert_eq!(rule("role >= admin || points > 1", Some(4)), Frag::Const(true));
    assert_eq!(rule("points > 1 && role >= admin", Some(2)), Frag::Const(false));
    let Frag::Sql(sql) = rule("points > 1 || role >= admin", Some(2)) else {
        panic!("a member depends on the row");
    };
    assert_eq!(sql.text, "\"tasks\".\"points\" > ?1");
    let Frag::Sql(sql) = rule("points > 1 && role >= admin", Some(4)) else {
        panic!("an owner depends on the row");
    };
    assert_eq!(sql.text, "\"tasks\".\"points\" > ?1");
}

#[test]
fn role_expression_stays_in_sql() {
    let expression = "CASE keel_m.role WHEN 'owner' THEN 4 WHEN 'admin' THEN 3 ELSE 0 END";
    let ctx = context(Some(user_id()), RoleSource::Expression(expression.to_string()));
    let Frag::Sql(sql) = frag("role >= admin", Mode::Rule, Dialect::Postgres, &ctx) else {
        panic!("the role is per row");
    };
    assert_eq!(sql.text, format!("({expression}) >= 3"));
    assert!(sql.params.is_empty());
    let Frag::Sql(sql) = frag("assignee = @user || role > member", Mode::Rule, Dialect::Sqlite, &ctx) else {
        panic!("the role is per row");
    };
    assert_eq!(
        sql.text,
        format!("(\"tasks\".\"assignee\" = ?1) OR (({expression}) > 2)")
    );
    assert_eq!(sql.params, [SqlValue::Uuid(user_id())]);
}

#[test]
fn user_comparisons_follow_the_context() {
    let signed_in = member();
    let anonymous = context(None, RoleSource::Rank(Some(2)));
    let Frag::Sql(sql) = frag("assignee = @user", Mode::Rule, Dialect::Sqlite, &signed_in) else {
        panic!("depends on the row");
    };
    assert_eq!(sql.text, "\"tasks\".\"assignee\" = ?1");
    assert_eq!(sql.params, [SqlValue::Uuid(user_id())]);
    let Frag::Sql(sql) = frag("@user = assignee", Mode::Rule, Dialect::Postgres, &signed_in) else {
        panic!("depends on the row");
    };
    assert_eq!(sql.text, "\"tasks\".\"assignee\" = $1");

    for (source, with_user, without_user) in [
        ("@user = null", false, true),
        ("@user is null", false, true),
        ("@user != null", true, false),
        ("@user is not null", true, false),
        ("!(@user = null)", true, false),
    ] {
        assert_eq!(
            frag(source, Mode::Rule, Dialect::Sqlite, &signed_in),
            Frag::Const(with_user),
            "{source}"
        );
        assert_eq!(
            frag(source, Mode::Rule, Dialect::Sqlite, &anonymous),
            Frag::Const(without_user),
            "{source}"
        );
    }
    assert_eq!(
        frag("assignee = @user", Mode::Rule, Dialect::Sqlite, &anonymous),
        Frag::Const(false)
    );
    assert_eq!(
        frag(
            "role >= admin || assignee = @user",
            Mode::Rule,
            Dialect::Sqlite,
            &anonymous
        ),
        Frag::Const(false)
    );
}

#[test]
fn a_missing_user_is_null_even_under_not() {
    // `@user` is NULL without a user, so `assignee = @user` is never true and neither is its
    // negation (SQL's three-valued logic), just as `assignee != @user` is never true.
    let anonymous = context(None, RoleSource::Rank(Some(2)));
    for source in [
        "!(assignee = @user)",
        "assignee != @user",
        "!(assignee != @user)",
        "!(assignee = @user || @user = assignee)",
        "!(assignee = @user && role >= member)",
    ] {
        assert_eq!(
            frag(source, Mode::Rule, Dialect::Sqlite, &anonymous),
            Frag::Const(false),
            "{source}"
        );
    }
    // Next to a row condition the unknown stays in the SQL, where the database decides.
    let Frag::Sql(sql) = frag("!(assignee = @user) || done", Mode::Rule, Dialect::Sqlite, &anonymous) else {
        panic!("depends on the row");
    };
    assert_eq!(sql.text, "(NULL) OR (\"tasks\".\"done\" = 1)");
    let Frag::Sql(sql) = frag("!(assignee = @user && done)", Mode::Rule, Dialect::Postgres, &anonymous) else {
        panic!("depends on the row");
    };
    assert_eq!(sql.text, "NOT ((NULL) AND (\"tasks\".\"done\" = true))");
    // Known parts still fold around the unknown.
    assert_eq!(
        frag(
            "!(assignee = @user) || role >= member",
            Mode::Rule,
            Dialect::Sqlite,
            &anonymous
        ),
        Frag::Const(true)
    );
    assert_eq!(
        frag(
            "!(assignee = @user) && role >= admin",
            Mode::Rule,
            Dialect::Sqlite,
            &anonymous
        ),
        Frag::Const(false)
    );
    // With a user, nothing changes.
    let Frag::Sql(sql) = frag("!(assignee = @user)", Mode::Rule, Dialect::Sqlite, &member()) else {
        panic!("depends on the row");
    };
    assert_eq!(sql.text, "NOT (\"tasks\".\"assignee\" = ?1)");
}

#[test]
fn index_conditions_inline_their_literals() {
    let condition = |source: &str, dialect: Dialect| {
        let expr = check(source, Mode::IndexCondition).unwrap();
        compile_index_condition(&expr, dialect, "")
    };
    assert_eq!(condition("status != \"done\"", Dialect::Sqlite), "\"status\" <> 'done'");
    assert_eq!(condition("title = \"it's\"", Dialect::Sqlite), "\"title\" = 'it''s'");
    assert_eq!(condition("done = true", Dialect::Postgres), "\"done\" = true");
    assert_eq!(condition("done = true", Dialect::Sqlite), "\"done\" = 1");
    assert_eq!(condition("points > 5", Dialect::Postgres), "\"points\" > 5");
    assert_eq!(
        condition("due > \"2026-01-31\"", Dialect::Sqlite),
        "\"due\" > '2026-01-31'"
    );
    assert_eq!(condition("points in []", Dialect::Sqlite), "1=0");
}

// ---------------------------------------------------------------------------------------------
// Sql::append
// ---------------------------------------------------------------------------------------------

fn fragment(dialect: Dialect, parts: &[Result<&str, i64>]) -> Sql {
    let mut sql = Sql::new(dialect);
    for part in parts {
        match part {
            Ok(text) => sql.push(text),
            Err(value) => sql.bind(SqlValue::Int(*value)),
        };
    }
    sql
}

#[test]
fn append_renumbers_placeholders() {
    for (dialect, m) in [(Dialect::Sqlite, "?"), (Dialect::Postgres, "$")] {
        let mut a = fragment(dialect, &[Ok("x = "), Err(1)]);
        let b = fragment(dialect, &[Ok(" AND y = "), Err(2), Ok(" AND z = "), Err(3)]);
        a.append(&b);
        assert_eq!(a.text, format!("x = {m}1 AND y = {m}2 AND z = {m}3"));
        assert_eq!(a.params, [SqlValue::Int(1), SqlValue::Int(2), SqlValue::Int(3)]);
        assert_numbered(&a);

        // Appending to an empty fragment changes nothing.
        let mut empty = Sql::new(dialect);
        empty.append(&b);
        assert_eq!(empty, b);
    }
}

#[test]
fn append_renumbers_past_nine() {
    for dialect in [Dialect::Sqlite, Dialect::Postgres] {
        let mut a = Sql::new(dialect);
        for i in 0..9 {
            a.push(" ").bind(SqlValue::Int(i));
        }
        let mut b = Sql::new(dialect);
        for i in 9..21 {
            b.push(" ").bind(SqlValue::Int(i));
        }
        a.append(&b);
        assert_eq!(a.params.len(), 21);
        assert_numbered(&a);
        let mut c = Sql::new(dialect);
        c.push(" ").bind(SqlValue::Int(0));
        c.append(&a);
        assert_numbered(&c);
        assert!(c.text.ends_with("22"), "{}", c.text);
    }
}

#[test]
fn append_leaves_quoted_text_alone() {
    for (dialect, m) in [(Dialect::Sqlite, "?"), (Dialect::Postgres, "$")] {
        let mut a = fragment(dialect, &[Ok("a = "), Err(1)]);
        let quoted = format!("'{m}1'");
        let doubled = spec_literal(&format!("it's {m}1"));
        let b = fragment(
            dialect,
            &[
                Ok(" AND b = "),
                Ok(quoted.as_str()),
                Ok(" AND c = "),
                Err(2),
                Ok(" AND d = "),
                Ok(doubled.as_str()),
                Ok(" AND e = "),
                Err(3),
                Ok(" AND f LIKE 'é%' ESCAPE '\\' AND g = "),
                Err(4),
            ],
        );
        a.append(&b);
        assert_eq!(
            a.text,
            format!(
                "a = {m}1 AND b = '{m}1' AND c = {m}2 AND d = 'it''s {m}1' AND e = {m}3 AND f LIKE 'é%' ESCAPE '\\' AND g = {m}4"
            )
        );
        assert_eq!(a.params.len(), 4);
        assert_numbered(&a);
    }
}

#[test]
fn append_keeps_markers_that_are_not_placeholders() {
    let mut a = fragment(Dialect::Postgres, &[Ok("x = "), Err(1)]);
    let b = fragment(
        Dialect::Postgres,
        &[Ok(" AND y ? z AND w = $"), Ok(" AND v = "), Err(2)],
    );
    a.append(&b);
    assert_eq!(a.text, "x = $1 AND y ? z AND w = $ AND v = $2");
}

#[test]
fn null_is_written_inline() {
    let mut sql = Sql::new(Dialect::Postgres);
    sql.push("x = ")
        .bind(SqlValue::Null)
        .push(" AND y = ")
        .bind(SqlValue::Int(1));
    assert_eq!(sql.text, "x = NULL AND y = $1");
    assert_eq!(sql.params, [SqlValue::Int(1)]);
}

// ---------------------------------------------------------------------------------------------
// Sorting and cursors
// ---------------------------------------------------------------------------------------------

fn sort(text: &str) -> Vec<SortKey> {
    parse_sort(tasks(), Some(text)).unwrap_or_else(|e| panic!("`{text}`: {e:?}"))
}

fn sort_shape(keys: &[SortKey]) -> Vec<String> {
    keys.iter()
        .map(|k| format!("{}{}", if k.descending { "-" } else { "+" }, k.field))
        .collect()
}

#[test]
fn sort_ends_with_the_id_tie_breaker() {
    assert_eq!(sort_shape(&parse_sort(tasks(), None).unwrap()), ["-id"]);
    assert_eq!(sort_shape(&sort("")), ["-id"]);
    assert_eq!(sort_shape(&sort("title")), ["+title", "+id"]);
    assert_eq!(sort_shape(&sort("-due,title")), ["-due", "+title", "+id"]);
    assert_eq!(sort_shape(&sort("title,-due")), ["+title", "-due", "-id"]);
    assert_eq!(sort_shape(&sort(" +title , , -points ")), ["+title", "-points", "-id"]);
    assert_eq!(sort_shape(&sort("id")), ["+id"]);
    assert_eq!(sort_shape(&sort("-created_at")), ["-created_at", "-id"]);
    assert_eq!(sort_shape(&sort("title,id")), ["+title", "+id"]);
    let keys = sort("-due,title,version");
    assert!(keys[0].nullable && !keys[1].nullable && !keys[2].nullable && !keys[3].nullable);
    assert_eq!(keys[0].ty, ColumnType::Date);
    assert_eq!(keys[3].ty, ColumnType::Id);
}

#[test]
fn bad_sorts_are_rejected() {
    let error = parse_sort(tasks(), Some("title,nosuch")).unwrap_err();
    assert_eq!((error.code, error.field.as_deref()), ("unknown_field", Some("nosuch")));
    let error = parse_sort(tasks(), Some("-")).unwrap_err();
    assert_eq!(error.code, "unknown_field");
    for text in [
        "meta",
        "-meta",
        "title,title",
        "title,-title",
        "points,+points",
        "title,points,due,starts_at,note",
    ] {
        let error = parse_sort(tasks(), Some(text)).unwrap_err();
        assert_eq!(error.code, "invalid_sort", "`{text}`: {error:?}");
    }
    assert_eq!(MAX_SORT_KEYS, 4);
    assert_eq!(
        sort_shape(&sort("title,points,due,note")),
        ["+title", "+points", "+due", "+note", "+id"]
    );
}

#[test]
fn cursors_round_trip() {
    let u = user_id();
    let keys = sort("-due,title,points");
    let json = json!(["2026-01-02", "a \"quoted\" title ✓", 7, u.to_string()]).to_string();
    let cursor = encode_cursor(&keys, &json);
    assert!(
        cursor
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{cursor}"
    );
    assert_eq!(
        decode_cursor(&keys, &cursor).unwrap(),
        [
            SqlValue::Date(NaiveDate::from_ymd_opt(2026, 1, 2).unwrap()),
            text("a \"quoted\" title ✓"),
            SqlValue::Int(7),
            SqlValue::Uuid(u),
        ]
    );
    let keys = sort("starts_at,weight,-done,status");
    let json = json!(["2026-01-02T03:04:05.123456+01:00", null, true, "todo", u.to_string()]).to_string();
    assert_eq!(
        decode_cursor(&keys, &encode_cursor(&keys, &json)).unwrap(),
        [
            SqlValue::Datetime(Utc.with_ymd_and_hms(2026, 1, 2, 2, 4, 5).unwrap() + Duration::microseconds(123_456)),
            SqlValue::Null,
            SqlValue::Bool(true),
            text("todo"),
            SqlValue::Uuid(u),
        ]
    );
}

fn cursor_error(keys: &[SortKey], cursor: &str) {
    match decode_cursor(keys, cursor) {
        Ok(values) => panic!("`{cursor}` should be rejected, got {values:?}"),
        Err(error) => assert_eq!(error.code, "invalid_cursor", "`{cursor}`: {error:?}"),
    }
}

#[test]
fn cursors_belong_to_their_sort() {
    let u = user_id().to_string();
    let keys = sort("-due,title");
    let cursor = encode_cursor(&keys, &json!(["2026-01-02", "x", u]).to_string());
    assert!(decode_cursor(&keys, &cursor).is_ok());
    cursor_error(&sort("due,title"), &cursor);
    cursor_error(&sort("-due,-title"), &cursor);
    cursor_error(&sort("title,-due"), &cursor);
    cursor_error(&sort("-due,note"), &cursor);
}

#[test]
fn damaged_cursors_are_rejected() {
    let u = user_id().to_string();
    let keys = sort("title");
    for cursor in [
        String::new(),
        "not a cursor!".to_string(),
        "%%%%".to_string(),
        URL_SAFE_NO_PAD.encode("no dot here"),
        URL_SAFE_NO_PAD.encode([0xff, 0xfe, 0x2e, 0x5b, 0x5d]),
        encode_cursor(&keys, "not json"),
        encode_cursor(&keys, "{}"),
        encode_cursor(&keys, &json!(["x"]).to_string()),
        encode_cursor(&keys, &json!(["x", u, 1]).to_string()),
        encode_cursor(&keys, &json!([1, u]).to_string()),
        encode_cursor(&keys, &json!(["x", "not-a-uuid"]).to_string()),
        encode_cursor(&keys, &json!(["x".repeat(5000), u]).to_string()),
        "A".repeat(100_000),
    ] {
        cursor_error(&keys, &cursor);
    }
    let dated = sort("due,points");
    for json in [
        json!(["2026-13-01", 1, u]),
        json!(["2026-01-01", 1.5, u]),
        json!(["2026-01-01", "1", u]),
    ] {
        cursor_error(&dated, &encode_cursor(&dated, &json.to_string()));
    }
}

#[test]
fn keyset_uses_a_row_value_when_it_can() {
    let u = SqlValue::Uuid(user_id());
    for (dialect, m) in [(Dialect::Sqlite, "?"), (Dialect::Postgres, "$")] {
        let sql = keyset_predicate(dialect, T, &sort("title"), &[text("abc"), u.clone()]);
        assert_eq!(
            sql.text,
            format!("(\"tasks\".\"title\", \"tasks\".\"id\") > ({m}1, {m}2)")
        );
        assert_eq!(sql.params, [text("abc"), u.clone()]);
        let sql = keyset_predicate(dialect, T, &sort("-title"), &[text("abc"), u.clone()]);
        assert_eq!(
            sql.text,
            format!("(\"tasks\".\"title\", \"tasks\".\"id\") < ({m}1, {m}2)")
        );
        let sql = keyset_predicate(dialect, T, &sort(""), std::slice::from_ref(&u));
        assert_eq!(sql.text, format!("(\"tasks\".\"id\") < ({m}1)"));
    }
}

#[test]
fn keyset_expands_for_mixed_directions_and_nulls() {
    let u = SqlValue::Uuid(user_id());
    let at = SqlValue::Datetime(now());

    // Mixed directions, no nulls.
    let sql = keyset_predicate(
        Dialect::Sqlite,
        T,
        &sort("title,-created_at"),
        &[text("t"), at.clone(), u.clone()],
    );
    assert_eq!(
        sql.text,
        "(\"tasks\".\"title\" > ?1) OR \
         (\"tasks\".\"title\" = ?2 AND (\"tasks\".\"created_at\" < ?3 OR \"tasks\".\"created_at\" IS NULL)) OR \
         (\"tasks\".\"title\" = ?4 AND \"tasks\".\"created_at\" = ?5 AND (\"tasks\".\"id\" < ?6 OR \"tasks\".\"id\" IS NULL))"
    );
    assert_eq!(sql.params, [text("t"), text("t"), at.clone(), text("t"), at, u.clone()]);
    assert_numbered(&sql);

    // Same direction, but the key is nullable: expanded even when the value is present.
    // NULLs sort as the smallest value: ascending, nothing after a value is NULL.
    let points = SqlValue::Int(4);
    let sql = keyset_predicate(Dialect::Postgres, T, &sort("points"), &[points.clone(), u.clone()]);
    assert!(!sql.text.contains(") > ("), "{}", sql.text);
    assert_eq!(
        sql.text,
        "(\"tasks\".\"points\" > $1) OR (\"tasks\".\"points\" = $2 AND \"tasks\".\"id\" > $3)"
    );
    assert_eq!(sql.params, [points.clone(), points.clone(), u.clone()]);

    // Descending, after a value come smaller values, then the NULLs.
    let sql = keyset_predicate(Dialect::Sqlite, T, &sort("-points"), &[points.clone(), u.clone()]);
    assert_eq!(
        sql.text,
        "((\"tasks\".\"points\" < ?1 OR \"tasks\".\"points\" IS NULL)) OR \
         (\"tasks\".\"points\" = ?2 AND (\"tasks\".\"id\" < ?3 OR \"tasks\".\"id\" IS NULL))"
    );

    // After a NULL, ascending: every non-null value, then later ids among the NULLs.
    let sql = keyset_predicate(Dialect::Sqlite, T, &sort("points"), &[SqlValue::Null, u.clone()]);
    assert_eq!(
        sql.text,
        "(\"tasks\".\"points\" IS NOT NULL) OR (\"tasks\".\"points\" IS NULL AND \"tasks\".\"id\" > ?1)"
    );
    assert_eq!(sql.params, std::slice::from_ref(&u));

    // After a NULL, descending (NULLs last): only later ids among the NULLs.
    let sql = keyset_predicate(Dialect::Sqlite, T, &sort("-points"), &[SqlValue::Null, u.clone()]);
    assert_eq!(
        sql.text,
        "(1=0) OR (\"tasks\".\"points\" IS NULL AND (\"tasks\".\"id\" < ?1 OR \"tasks\".\"id\" IS NULL))"
    );
    assert_eq!(sql.params, [u]);
}

// ---------------------------------------------------------------------------------------------
// Record validation
// ---------------------------------------------------------------------------------------------

fn items() -> &'static Collection {
    collection("items")
}

fn patterns() -> Patterns {
    Patterns::new(&app().collections)
}

fn body(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    value.as_object().expect("an object").clone()
}

fn validate(value: serde_json::Value, mode: WriteMode) -> Result<Vec<(String, SqlValue)>, Vec<FieldError>> {
    validate_record(items(), &patterns(), &body(value), mode, now())
}

fn valid(value: serde_json::Value, mode: WriteMode) -> Vec<(String, SqlValue)> {
    validate(value.clone(), mode).unwrap_or_else(|e| panic!("{value} should be valid: {e:?}"))
}

fn field_errors(value: serde_json::Value, mode: WriteMode) -> Vec<(String, &'static str)> {
    match validate(value.clone(), mode) {
        Ok(values) => panic!("{value} should be rejected, got {values:?}"),
        Err(errors) => errors.into_iter().map(|e| (e.field, e.code)).collect(),
    }
}

fn one_error(value: serde_json::Value) -> (String, &'static str) {
    let errors = field_errors(value.clone(), WriteMode::Create);
    assert_eq!(errors.len(), 1, "{value}: {errors:?}");
    errors.into_iter().next().unwrap()
}

fn value_of<'a>(values: &'a [(String, SqlValue)], name: &str) -> Option<&'a SqlValue> {
    values.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

#[test]
fn create_fills_defaults() {
    let values = valid(json!({ "name": "abc" }), WriteMode::Create);
    assert_eq!(value_of(&values, "name"), Some(&text("abc")));
    assert_eq!(value_of(&values, "kind"), Some(&text("a")));
    assert_eq!(value_of(&values, "count"), Some(&SqlValue::Int(3)));
    assert_eq!(value_of(&values, "ratio"), Some(&SqlValue::Float(1.5)));
    assert_eq!(value_of(&values, "flag"), Some(&SqlValue::Bool(true)));
    assert_eq!(value_of(&values, "day"), Some(&SqlValue::Date(now().date_naive())));
    assert_eq!(value_of(&values, "at"), Some(&SqlValue::Datetime(now())));
    assert_eq!(
        value_of(&values, "fixed_day"),
        Some(&SqlValue::Date(NaiveDate::from_ymd_opt(2026, 2, 3).unwrap()))
    );
    // No default, not required: left out.
    for name in ["code", "meta", "owner"] {
        assert_eq!(value_of(&values, name), None, "{name}");
    }
    // A given value wins over the default.
    let values = valid(json!({ "name": "abc", "count": 7, "kind": "b" }), WriteMode::Create);
    assert_eq!(value_of(&values, "count"), Some(&SqlValue::Int(7)));
    assert_eq!(value_of(&values, "kind"), Some(&text("b")));
}

#[test]
fn required_fields() {
    assert_eq!(
        field_errors(json!({}), WriteMode::Create),
        [("name".to_string(), "required")]
    );
    assert_eq!(one_error(json!({ "name": null })), ("name".to_string(), "required"));
    // An update sends only what changes.
    assert!(valid(json!({}), WriteMode::Update).is_empty());
    assert_eq!(
        valid(json!({ "count": 5 }), WriteMode::Update),
        [("count".to_string(), SqlValue::Int(5))]
    );
    // But cannot clear a required field.
    assert_eq!(
        field_errors(json!({ "name": null }), WriteMode::Update),
        [("name".to_string(), "required")]
    );
    // An optional field can be cleared.
    assert_eq!(
        valid(json!({ "code": null }), WriteMode::Update),
        [("code".to_string(), SqlValue::Null)]
    );
}

#[test]
fn text_limits_and_patterns() {
    let error = |name: serde_json::Value| one_error(json!({ "name": name }));
    assert_eq!(error(json!("a")), ("name".to_string(), "too_short"));
    assert_eq!(error(json!("abcdef")), ("name".to_string(), "too_long"));
    // Lengths are in characters.
    valid(json!({ "name": "ééééé" }), WriteMode::Create);
    assert_eq!(error(json!("éééééé")), ("name".to_string(), "too_long"));
    assert_eq!(error(json!("a\u{0}b")), ("name".to_string(), "invalid_text"));
    assert_eq!(error(json!(12)), ("name".to_string(), "invalid_type"));

    let code = |code: &str| validate(json!({ "name": "ab", "code": code }), WriteMode::Create);
    assert!(code("ABC-12").is_ok());
    for bad in ["abc-12", "XABC-12", "ABC-12x", "ABC-", ""] {
        let errors = code(bad).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(
            (errors[0].field.as_str(), errors[0].code),
            ("code", "pattern_mismatch"),
            "{bad}"
        );
    }
}

#[test]
fn numbers_and_ranges() {
    let err = |field: &str, value: serde_json::Value| one_error(json!({ "name": "ab", field: value }));
    assert_eq!(err("count", json!(0)), ("count".to_string(), "out_of_range"));
    assert_eq!(err("count", json!(11)), ("count".to_string(), "out_of_range"));
    assert_eq!(err("count", json!(1.5)), ("count".to_string(), "invalid_type"));
    assert_eq!(err("count", json!("3")), ("count".to_string(), "invalid_type"));
    assert_eq!(err("count", json!(u64::MAX)), ("count".to_string(), "invalid_type"));
    assert_eq!(err("ratio", json!(0.4)), ("ratio".to_string(), "out_of_range"));
    assert_eq!(err("ratio", json!(3)), ("ratio".to_string(), "out_of_range"));
    assert_eq!(err("ratio", json!("1")), ("ratio".to_string(), "invalid_type"));
    let values = valid(json!({ "name": "ab", "count": 10, "ratio": 2 }), WriteMode::Create);
    assert_eq!(value_of(&values, "count"), Some(&SqlValue::Int(10)));
    assert_eq!(value_of(&values, "ratio"), Some(&SqlValue::Float(2.0)));
    let values = valid(json!({ "name": "ab", "count": 1, "ratio": 0.5 }), WriteMode::Create);
    assert_eq!(value_of(&values, "count"), Some(&SqlValue::Int(1)));
}

#[test]
fn every_type_rejects_the_wrong_json() {
    let u = user_id();
    for (field, bad) in [
        ("kind", json!(1)),
        ("flag", json!("true")),
        ("flag", json!(1)),
        ("day", json!("2026-13-01")),
        ("day", json!("2026-1-1")),
        ("day", json!("2026-01-31T00:00:00Z")),
        ("day", json!(20260131)),
        ("at", json!("2026-01-31")),
        ("at", json!("2026-01-31 12:00:00")),
        ("at", json!(1_700_000_000)),
        ("owner", json!("not-a-uuid")),
        ("owner", json!(1)),
        ("owner", json!({ "id": u.to_string() })),
        ("code", json!(["ABC-1"])),
    ] {
        assert_eq!(
            one_error(json!({ "name": "ab", field: bad.clone() })),
            (field.to_string(), "invalid_type"),
            "{field} = {bad}"
        );
    }
    assert_eq!(
        one_error(json!({ "name": "ab", "kind": "c" })),
        ("kind".to_string(), "invalid_choice")
    );
    let values = valid(
        json!({
            "name": "ab",
            "kind": "b",
            "flag": false,
            "day": "2026-01-31",
            "at": "2026-01-31T12:00:00+02:00",
            "owner": u.to_string(),
            "meta": { "any": ["json", 1, null] },
        }),
        WriteMode::Create,
    );
    assert_eq!(value_of(&values, "flag"), Some(&SqlValue::Bool(false)));
    assert_eq!(
        value_of(&values, "at"),
        Some(&SqlValue::Datetime(
            Utc.with_ymd_and_hms(2026, 1, 31, 10, 0, 0).unwrap()
        ))
    );
    assert_eq!(value_of(&values, "owner"), Some(&SqlValue::Uuid(u)));
    assert_eq!(
        value_of(&values, "meta"),
        Some(&SqlValue::Json(json!({ "any": ["json", 1, null] })))
    );
}

#[test]
fn unknown_and_read_only_fields() {
    assert_eq!(
        one_error(json!({ "name": "ab", "colour": "red" })),
        ("colour".to_string(), "unknown_field")
    );
    for field in ["id", "org", "created_at", "updated_at", "version", "expand"] {
        assert_eq!(
            one_error(json!({ "name": "ab", field: "x" })),
            (field.to_string(), "read_only_field"),
            "{field}"
        );
    }
}

#[test]
fn every_failing_field_is_reported() {
    let mut errors = field_errors(
        json!({
            "count": 99,
            "kind": "z",
            "bogus": 1,
            "id": "x",
            "day": "nope",
            "code": "bad",
        }),
        WriteMode::Create,
    );
    errors.sort();
    let mut expected = vec![
        ("bogus".to_string(), "unknown_field"),
        ("code".to_string(), "pattern_mismatch"),
        ("count".to_string(), "out_of_range"),
        ("day".to_string(), "invalid_type"),
        ("id".to_string(), "read_only_field"),
        ("kind".to_string(), "invalid_choice"),
        ("name".to_string(), "required"),
    ];
    expected.sort();
    assert_eq!(errors, expected);
}

// ---------------------------------------------------------------------------------------------
// Robustness
// ---------------------------------------------------------------------------------------------

/// A filter as long as allowed, made of a flat chain of terms (no nesting limit applies),
/// must type-check and compile without exhausting a 2 MiB thread stack.
#[test]
fn long_flat_chains_compile() {
    let run = || {
        for connective in ["||", "&&"] {
            let mut source = "ok".to_string();
            while source.len() + connective.len() + 2 <= MAX_EXPRESSION_LENGTH {
                source.push_str(connective);
                source.push_str("ok");
            }
            let expr = check(&source, Mode::Filter).expect("a long chain checks");
            for dialect in [Dialect::Sqlite, Dialect::Postgres] {
                let Frag::Sql(sql) = compile(&expr, dialect, T, &member()) else {
                    panic!("depends on the row");
                };
                assert!(sql.text.len() > source.len());
            }
            let mut source = "points = 1".to_string();
            while source.len() + 14 <= MAX_EXPRESSION_LENGTH {
                source.push_str(&format!(" {connective} points = 1"));
            }
            let expr = check(&source, Mode::Filter).expect("a long chain checks");
            let Frag::Sql(sql) = compile(&expr, Dialect::Postgres, T, &member()) else {
                panic!("depends on the row");
            };
            assert_numbered(&sql);
            assert_eq!(sql.params.len(), source.matches("points").count());
        }
        // The worst nesting the limits allow: MAX_DEPTH groups, each with a chain around the next.
        let per_level = MAX_EXPRESSION_LENGTH / MAX_DEPTH / 4 - 2;
        let mut source = "ok".to_string();
        for _ in 0..MAX_DEPTH {
            source = format!("{}||({source})", vec!["ok"; per_level].join("&&"));
        }
        assert!(source.len() <= MAX_EXPRESSION_LENGTH, "{}", source.len());
        let expr = check(&source, Mode::Filter).expect("deep nesting checks");
        assert!(matches!(compile(&expr, Dialect::Sqlite, T, &member()), Frag::Sql(_)));
    };
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(run)
        .unwrap()
        .join()
        .expect("no stack overflow or panic");
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

const TOKENS: &[&str] = &[
    "(",
    ")",
    "[",
    "]",
    ",",
    "+",
    "-",
    "&&",
    "||",
    "!",
    "!=",
    "=",
    "==",
    "<",
    "<=",
    ">",
    ">=",
    "<>",
    "and",
    "or",
    "not",
    "in",
    "is",
    "null",
    "true",
    "false",
    "contains",
    "startswith",
    "@user",
    "@now",
    "@today",
    "@",
    "7d",
    "1h",
    "30m",
    "5s",
    "0",
    "1",
    "42",
    "1.5",
    "99999999999999999999",
    "1.2.3",
    "\"x\"",
    "'y'",
    "\"todo\"",
    "\"2026-01-31\"",
    "\"01900000-0000-7000-8000-000000000001\"",
    "\"",
    "'",
    "\\",
    "\"\\",
    "title",
    "note",
    "points",
    "weight",
    "status",
    "done",
    "ok",
    "due",
    "starts_at",
    "meta",
    "assignee",
    "project",
    "id",
    "org",
    "role",
    "admin",
    "member",
    "boss",
    "nosuch",
    "&",
    "|",
    "é",
    "\u{0}",
    ";",
    "--",
    "\n",
];

fn token_soup() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(TOKENS), 0..40),
        any::<bool>(),
    )
        .prop_map(|(tokens, spaced)| tokens.join(if spaced { " " } else { "" }))
}

/// Checks the invariants of any error the query language returns.
fn assert_error_shape(source: &str, error: &QueryError) {
    match error.code {
        "invalid_filter" => {}
        "unknown_field" | "invalid_value" => assert!(error.field.is_some(), "`{source}`: {error:?}"),
        other => panic!("`{source}`: unexpected code {other}"),
    }
    assert!(error.position <= source.len(), "`{source}`: {error:?}");
}

/// Runs an arbitrary input through every stage; nothing may panic, and whatever compiles is
/// well-formed.
fn exercise(source: &str) {
    if let Err(error) = parse_expr(source) {
        assert_eq!(error.code, "invalid_filter", "`{source}`: {error:?}");
        assert!(error.position <= source.len(), "`{source}`: {error:?}");
    }
    let contexts = [
        member(),
        context(None, RoleSource::Rank(None)),
        context(Some(user_id()), RoleSource::Expression("keel_rank".to_string())),
    ];
    for mode in [Mode::Filter, Mode::Rule, Mode::IndexCondition] {
        match check(source, mode) {
            Err(error) => assert_error_shape(source, &error),
            Ok(expr) => {
                for dialect in [Dialect::Sqlite, Dialect::Postgres] {
                    for ctx in &contexts {
                        if let Frag::Sql(sql) = compile(&expr, dialect, T, ctx) {
                            assert_numbered(&sql);
                        }
                    }
                    if mode == Mode::IndexCondition {
                        let text = compile_index_condition(&expr, dialect, "");
                        assert!(!text.is_empty());
                    }
                }
            }
        }
    }
}

/// Quotes a string for the filter language.
fn quote(value: &str, double: bool) -> String {
    let q = if double { '"' } else { '\'' };
    let mut out = String::from(q);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(q);
    out
}

/// A string literal that always holds something that can never be part of the compiled SQL
/// text of the test app, so finding it in the text would mean it was inlined.
fn hostile_string() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        4 => prop::sample::select(vec![
            '\'', '"', ';', '-', '%', '_', '\\', ' ', 'a', 'Z', '0', '?', '$', '\n', 'é', '漢', '😀', '=', '(', ')',
            '*', '/', '\t',
        ]),
        1 => any::<char>(),
    ];
    let marker = prop::sample::select(vec![
        ";",
        "--",
        "%",
        "é",
        "' OR 1=1 --",
        "\"; DROP TABLE tasks; --",
        "😀",
        "漢字",
        "\\';",
        "%_\\",
    ]);
    (prop::collection::vec(ch, 0..10), marker, any::<prop::sample::Index>()).prop_map(|(chars, marker, at)| {
        let at = at.index(chars.len() + 1);
        let mut s: String = chars[..at].iter().collect();
        s.push_str(marker);
        s.extend(&chars[at..]);
        s
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Use {
    Equal,
    Contains,
    StartsWith,
}

/// A well-formed filter over the `tasks` collection.
#[derive(Debug, Clone)]
enum Filter {
    TextCmp(&'static str, &'static str, String, bool),
    TextOp(&'static str, Use, String, bool),
    TextIn(&'static str, Vec<(String, bool)>, bool),
    IntCmp(&'static str, i64),
    IntIn(Vec<i64>, bool),
    Select(&'static str, &'static str),
    Null(&'static str, bool),
    Bool(&'static str),
    Since(u32),
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Paren(Box<Filter>),
}

impl Filter {
    /// The filter's source; with `neutral`, every literal is replaced by a fixed value.
    fn render(&self, neutral: bool) -> String {
        let s = |value: &String, double: bool| quote(if neutral { "lit" } else { value }, double);
        let i = |value: i64| if neutral { "0".to_string() } else { value.to_string() };
        match self {
            Filter::TextCmp(field, op, value, double) => format!("{field} {op} {}", s(value, *double)),
            Filter::TextOp(field, op, value, double) => {
                let op = if *op == Use::Contains { "contains" } else { "startswith" };
                format!("{field} {op} {}", s(value, *double))
            }
            Filter::TextIn(field, values, negated) => format!(
                "{field} {}in [{}]",
                if *negated { "not " } else { "" },
                values.iter().map(|(v, d)| s(v, *d)).collect::<Vec<_>>().join(", ")
            ),
            Filter::IntCmp(op, value) => format!("points {op} {}", i(*value)),
            Filter::IntIn(values, negated) => format!(
                "points {}in [{}]",
                if *negated { "not " } else { "" },
                values.iter().map(|v| i(*v)).collect::<Vec<_>>().join(",")
            ),
            Filter::Select(op, value) => format!("status {op} \"{value}\""),
            Filter::Null(field, negated) => format!("{field} is {}null", if *negated { "not " } else { "" }),
            Filter::Bool(source) => source.to_string(),
            Filter::Since(days) => format!("starts_at > @now - {days}d"),
            Filter::And(a, b) => format!("{} && {}", a.render(neutral), b.render(neutral)),
            Filter::Or(a, b) => format!("{} || {}", a.render(neutral), b.render(neutral)),
            Filter::Not(a) => format!("!({})", a.render(neutral)),
            Filter::Paren(a) => format!("({})", a.render(neutral)),
        }
    }

    fn literals(&self, out: &mut Vec<(String, Use)>) {
        match self {
            Filter::TextCmp(_, _, value, _) => out.push((value.clone(), Use::Equal)),
            Filter::TextOp(_, op, value, _) => out.push((value.clone(), *op)),
            Filter::TextIn(_, values, _) => out.extend(values.iter().map(|(v, _)| (v.clone(), Use::Equal))),
            Filter::And(a, b) | Filter::Or(a, b) => {
                a.literals(out);
                b.literals(out);
            }
            Filter::Not(a) | Filter::Paren(a) => a.literals(out),
            _ => {}
        }
    }
}

fn leaf() -> impl Strategy<Value = Filter> {
    let text_field = prop::sample::select(vec!["title", "note"]);
    let op = prop::sample::select(vec!["=", "==", "!=", "<>", "<", "<=", ">", ">="]);
    prop_oneof![
        (text_field.clone(), op.clone(), hostile_string(), any::<bool>())
            .prop_map(|(f, o, v, d)| Filter::TextCmp(f, o, v, d)),
        (
            text_field.clone(),
            prop::sample::select(vec![Use::Contains, Use::StartsWith]),
            hostile_string(),
            any::<bool>()
        )
            .prop_map(|(f, o, v, d)| Filter::TextOp(f, o, v, d)),
        (
            text_field.clone(),
            prop::collection::vec((hostile_string(), any::<bool>()), 1..4),
            any::<bool>()
        )
            .prop_map(|(f, v, n)| Filter::TextIn(f, v, n)),
        (op, (i64::MIN + 1)..=i64::MAX).prop_map(|(o, v)| Filter::IntCmp(o, v)),
        (
            prop::collection::vec(any::<i64>().prop_map(|v| v.max(i64::MIN + 1)), 1..5),
            any::<bool>()
        )
            .prop_map(|(v, n)| Filter::IntIn(v, n)),
        (
            prop::sample::select(vec!["=", "!="]),
            prop::sample::select(vec!["todo", "in_progress", "done"])
        )
            .prop_map(|(o, v)| Filter::Select(o, v)),
        (
            prop::sample::select(vec!["note", "due", "meta", "assignee"]),
            any::<bool>()
        )
            .prop_map(|(f, n)| Filter::Null(f, n)),
        prop::sample::select(vec!["done", "!done", "done = true", "ok != false"]).prop_map(Filter::Bool),
        (0u32..3650).prop_map(Filter::Since),
    ]
}

fn filter() -> impl Strategy<Value = Filter> {
    leaf().prop_recursive(5, 32, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Filter::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Filter::Or(Box::new(a), Box::new(b))),
            inner.clone().prop_map(|a| Filter::Not(Box::new(a))),
            inner.prop_map(|a| Filter::Paren(Box::new(a))),
        ]
    })
}

/// The parameter a string literal is bound as.
fn bound(value: &str, usage: Use) -> SqlValue {
    let escaped = value.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    text(&match usage {
        Use::Equal => value.to_string(),
        Use::Contains => format!("%{escaped}%"),
        Use::StartsWith => format!("{escaped}%"),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn parser_is_total_on_any_string(source in any::<String>()) {
        exercise(&source);
    }

    #[test]
    fn parser_is_total_on_printable_unicode(source in "\\PC{0,80}") {
        exercise(&source);
    }

    #[test]
    fn parser_is_total_on_token_soup(source in token_soup()) {
        exercise(&source);
    }

    #[test]
    fn string_literals_round_trip(value in any::<String>(), double in any::<bool>()) {
        let source = format!("title = {}", quote(&value, double));
        prop_assume!(source.len() <= MAX_EXPRESSION_LENGTH);
        match parse_expr(&source) {
            Ok(Expr::Cmp(_, _, Operand::Lit(Literal::Str(parsed)))) => prop_assert_eq!(parsed, value),
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn string_literals_are_only_ever_parameters(filter in filter()) {
        let source = filter.render(false);
        prop_assume!(source.len() <= MAX_EXPRESSION_LENGTH);
        let skeleton = filter.render(true);
        let mut literals = vec![];
        filter.literals(&mut literals);
        let expr = check(&source, Mode::Filter).map_err(|e| TestCaseError::fail(format!("`{source}`: {e:?}")))?;
        let neutral = check(&skeleton, Mode::Filter).map_err(|e| TestCaseError::fail(format!("`{skeleton}`: {e:?}")))?;
        let mut compiled = vec![];
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let (Frag::Sql(sql), Frag::Sql(neutral_sql)) =
                (compile(&expr, dialect, T, &member()), compile(&neutral, dialect, T, &member()))
            else {
                return Err(TestCaseError::fail(format!("`{source}` folded to a constant")));
            };
            // The SQL text depends only on the filter's shape, never on its values.
            prop_assert_eq!(&sql.text, &neutral_sql.text);
            for (value, usage) in &literals {
                prop_assert!(!sql.text.contains(value.as_str()), "{:?} is in {}", value, sql.text);
                let param = bound(value, *usage);
                prop_assert!(sql.params.contains(&param), "{:?} is not among {:?}", param, sql.params);
            }
            let expected: Vec<usize> = (1..=sql.params.len()).collect();
            prop_assert_eq!(placeholders(&sql), expected);
            compiled.push(sql);
        }
        let (sqlite, postgres) = (&compiled[0], &compiled[1]);
        prop_assert_eq!(&sqlite.params, &postgres.params);
        let translated = postgres
            .text
            .replace('$', "?")
            .replace(" ILIKE ", " LIKE ")
            .replace("true", "1")
            .replace("false", "0");
        prop_assert_eq!(&translated, &sqlite.text);
    }
}
