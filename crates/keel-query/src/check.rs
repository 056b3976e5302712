//! Type-checks a parsed expression against a collection and compiles it to SQL.
//!
//! Checking happens once (rules at start-up, filters per request); compiling takes the
//! caller's context (user, role, clock) and folds what it already knows into constants.

use chrono::{DateTime, Duration, Utc};
use keel_spec::{App, Collection, FieldKind};
use uuid::Uuid;

use crate::QueryError;
use crate::parse::{CmpOp, Expr, Literal, Operand, TextOp, Var, parse_expr};
use crate::value::{Dialect, Sql, SqlValue, format_datetime, parse_date, parse_datetime};

/// The storage class of a column, as the type checker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Select,
    Integer,
    Number,
    Bool,
    Date,
    Datetime,
    Json,
    /// A UUID: `id`, `org`, or a relation.
    Id,
}

/// The type of a field or system field of a collection, or `None` when it has none.
pub fn column_type(collection: &Collection, name: &str) -> Option<ColumnType> {
    match name {
        "id" => return Some(ColumnType::Id),
        "org" if !collection.global => return Some(ColumnType::Id),
        "created_at" => return Some(ColumnType::Datetime),
        "updated_at" if !collection.system => return Some(ColumnType::Datetime),
        "version" if !collection.system => return Some(ColumnType::Integer),
        "batch" if !collection.system => return Some(ColumnType::Id),
        _ => {}
    }
    let field = collection.field(name)?;
    Some(match &field.kind {
        FieldKind::Text { .. } => ColumnType::Text,
        FieldKind::Select { .. } => ColumnType::Select,
        FieldKind::Integer { .. } => ColumnType::Integer,
        FieldKind::Number { .. } => ColumnType::Number,
        FieldKind::Bool => ColumnType::Bool,
        FieldKind::Date => ColumnType::Date,
        FieldKind::Datetime => ColumnType::Datetime,
        FieldKind::Json | FieldKind::File { .. } => ColumnType::Json,
        FieldKind::Relation { .. } => ColumnType::Id,
    })
}

/// Where an expression is used decides what it may refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A `filter=` from a request: fields, literals, `@user`, `@now`, `@today`.
    Filter,
    /// An access rule from the spec: also `role`.
    Rule,
    /// A partial-index condition from the spec: fields and literals only.
    IndexCondition,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TOperand {
    Column(String, ColumnType),
    /// A value; `inline` marks spec-defined constants (bools, select values) that are
    /// written into the SQL so that partial indexes match.
    Value(SqlValue, bool),
    Role,
    RoleRank(i64),
    User,
    Now(i64),
    Today(i64),
}

/// A type-checked expression.
#[derive(Debug, Clone, PartialEq)]
pub enum TExpr {
    Const(bool),
    Cmp(TOperand, CmpOp, TOperand),
    In(TOperand, Vec<TOperand>, bool),
    IsNull(TOperand, bool),
    Like(TOperand, TextOp, String),
    Truthy(TOperand),
    And(Box<TExpr>, Box<TExpr>),
    Or(Box<TExpr>, Box<TExpr>),
    Not(Box<TExpr>),
}

/// Parses and type-checks an expression for a collection.
pub fn check_expr(app: &App, collection: &Collection, source: &str, mode: Mode) -> Result<TExpr, QueryError> {
    let expr = parse_expr(source)?;
    Checker { app, collection, mode }.expr(&expr)
}

struct Checker<'a> {
    app: &'a App,
    collection: &'a Collection,
    mode: Mode,
}

/// What an operand is before the other side of a comparison is known.
enum Side {
    Column(String, ColumnType),
    Role,
    Bare(String, usize),
    Lit(Literal),
    Var(Var, i64),
}

impl Checker<'_> {
    fn expr(&self, expr: &Expr) -> Result<TExpr, QueryError> {
        Ok(match expr {
            Expr::Const(b) => TExpr::Const(*b),
            Expr::And(a, b) => TExpr::And(Box::new(self.expr(a)?), Box::new(self.expr(b)?)),
            Expr::Or(a, b) => TExpr::Or(Box::new(self.expr(a)?), Box::new(self.expr(b)?)),
            Expr::Not(a) => TExpr::Not(Box::new(self.expr(a)?)),
            Expr::Truthy(operand) => match self.side(operand)? {
                Side::Column(name, ColumnType::Bool) => TExpr::Truthy(TOperand::Column(name, ColumnType::Bool)),
                Side::Column(name, _) => {
                    return Err(QueryError::invalid_value(
                        &name,
                        format!("'{name}' is not a bool field; compare it with a value"),
                    ));
                }
                Side::Bare(name, position) => return Err(self.unknown(&name, position)),
                _ => return Err(QueryError::syntax(0, "expected a comparison")),
            },
            Expr::IsNull(operand, negated) => {
                let operand = match self.side(operand)? {
                    Side::Column(name, ty) => TOperand::Column(name, ty),
                    Side::Var(Var::User, _) => TOperand::User,
                    Side::Bare(name, position) => return Err(self.unknown(&name, position)),
                    _ => {
                        return Err(QueryError::syntax(0, "only a field or @user can be compared with null"));
                    }
                };
                TExpr::IsNull(operand, *negated)
            }
            Expr::Text(operand, op, value) => {
                let (name, ty) = match self.side(operand)? {
                    Side::Column(name, ty) => (name, ty),
                    Side::Bare(name, position) => return Err(self.unknown(&name, position)),
                    _ => {
                        return Err(QueryError::syntax(
                            0,
                            "contains/startswith need a text field on the left",
                        ));
                    }
                };
                if !matches!(ty, ColumnType::Text | ColumnType::Select) {
                    return Err(QueryError::invalid_value(
                        &name,
                        format!("'{name}' is not a text field"),
                    ));
                }
                let Operand::Lit(Literal::Str(text)) = value else {
                    return Err(QueryError::invalid_value(&name, "contains/startswith take a string"));
                };
                TExpr::Like(TOperand::Column(name, ty), *op, text.clone())
            }
            Expr::In(operand, items, negated) => {
                let (name, ty) = match self.side(operand)? {
                    Side::Column(name, ty) => (name, ty),
                    Side::Bare(name, position) => return Err(self.unknown(&name, position)),
                    _ => return Err(QueryError::syntax(0, "'in' needs a field on the left")),
                };
                let values = items
                    .iter()
                    .map(|literal| self.coerce(&name, ty, literal))
                    .collect::<Result<Vec<_>, _>>()?;
                TExpr::In(TOperand::Column(name, ty), values, *negated)
            }
            Expr::Cmp(left, op, right) => self.compare(left, *op, right)?,
        })
    }

    fn side(&self, operand: &Operand) -> Result<Side, QueryError> {
        Ok(match operand {
            Operand::Name(name, position) => {
                if name == "role" {
                    if self.mode != Mode::Rule {
                        return Err(QueryError::new(
                            "invalid_filter",
                            *position,
                            "'role' can be used only in access rules",
                        ));
                    }
                    if self.collection.global {
                        return Err(QueryError::new(
                            "invalid_filter",
                            *position,
                            "'role' cannot be used in a global collection's rules",
                        ));
                    }
                    Side::Role
                } else if let Some(ty) = column_type(self.collection, name) {
                    Side::Column(name.clone(), ty)
                } else {
                    Side::Bare(name.clone(), *position)
                }
            }
            Operand::Lit(literal) => Side::Lit(literal.clone()),
            Operand::Var(var, offset) => {
                if self.mode == Mode::IndexCondition {
                    return Err(QueryError::new(
                        "invalid_filter",
                        0,
                        "an index condition cannot use @user, @now or @today",
                    ));
                }
                Side::Var(*var, *offset)
            }
        })
    }

    fn unknown(&self, name: &str, position: usize) -> QueryError {
        QueryError::unknown_field(name, position, &self.collection.name)
    }

    fn compare(&self, left: &Operand, op: CmpOp, right: &Operand) -> Result<TExpr, QueryError> {
        let left_side = self.side(left)?;
        let right_side = self.side(right)?;
        match (left_side, right_side) {
            (Side::Role, Side::Bare(name, position)) => {
                Ok(TExpr::Cmp(TOperand::Role, op, self.role_rank(&name, position)?))
            }
            (Side::Bare(name, position), Side::Role) => {
                Ok(TExpr::Cmp(TOperand::Role, op.flip(), self.role_rank(&name, position)?))
            }
            (Side::Role, _) | (_, Side::Role) => Err(QueryError::new(
                "invalid_filter",
                0,
                "'role' is compared with a role name, e.g. role >= admin",
            )),
            (Side::Bare(name, position), _) | (_, Side::Bare(name, position)) => Err(self.unknown(&name, position)),
            (Side::Column(name, ty), other) => self.column_vs(name, ty, op, other, false),
            (other, Side::Column(name, ty)) => self.column_vs(name, ty, op.flip(), other, true),
            (left, right) => {
                let left = self.loose(left)?;
                let right = self.loose(right)?;
                // No column decides the type, so both sides must agree (PostgreSQL has no
                // `bigint = text` or `uuid = text`).
                if loose_class(&left) != loose_class(&right) {
                    return Err(QueryError::syntax(0, "cannot compare values of different types"));
                }
                Ok(TExpr::Cmp(left, op, right))
            }
        }
    }

    /// An operand compared with something other than a column (e.g. `@user != null`).
    fn loose(&self, side: Side) -> Result<TOperand, QueryError> {
        Ok(match side {
            Side::Var(Var::User, _) => TOperand::User,
            Side::Var(Var::Now, offset) => TOperand::Now(offset),
            Side::Var(Var::Today, offset) => TOperand::Today(offset),
            Side::Lit(Literal::Str(s)) => TOperand::Value(SqlValue::Text(s), false),
            Side::Lit(Literal::Int(i)) => TOperand::Value(SqlValue::Int(i), false),
            Side::Lit(Literal::Float(f)) => TOperand::Value(SqlValue::Float(f), false),
            Side::Lit(Literal::Bool(b)) => TOperand::Value(SqlValue::Bool(b), true),
            _ => return Err(QueryError::syntax(0, "cannot compare these values")),
        })
    }

    fn role_rank(&self, name: &str, position: usize) -> Result<TOperand, QueryError> {
        match self.app.role_rank(name) {
            Some(rank) => Ok(TOperand::RoleRank(rank)),
            None => Err(QueryError::new(
                "invalid_filter",
                position,
                format!("unknown role '{name}'; roles are: {}", self.app.roles.join(", ")),
            )),
        }
    }

    fn column_vs(
        &self,
        name: String,
        ty: ColumnType,
        op: CmpOp,
        other: Side,
        _flipped: bool,
    ) -> Result<TExpr, QueryError> {
        let ordered = !matches!(op, CmpOp::Eq | CmpOp::Ne);
        if matches!(ty, ColumnType::Json) {
            return Err(QueryError::invalid_value(
                &name,
                format!("json field '{name}' can only be compared with null"),
            ));
        }
        if ordered && matches!(ty, ColumnType::Bool) {
            return Err(QueryError::invalid_value(
                &name,
                format!("bool field '{name}' takes only = and !="),
            ));
        }
        let right = match other {
            Side::Column(other_name, other_ty) => {
                let compatible = other_ty == ty
                    || matches!(
                        (ty, other_ty),
                        (ColumnType::Integer, ColumnType::Number)
                            | (ColumnType::Number, ColumnType::Integer)
                            | (ColumnType::Text, ColumnType::Select)
                            | (ColumnType::Select, ColumnType::Text)
                    );
                if !compatible {
                    return Err(QueryError::invalid_value(
                        &name,
                        format!("'{name}' and '{other_name}' have different types"),
                    ));
                }
                TOperand::Column(other_name, other_ty)
            }
            Side::Lit(literal) => self.coerce(&name, ty, &literal)?,
            Side::Var(Var::User, _) => {
                if ty != ColumnType::Id {
                    return Err(QueryError::invalid_value(
                        &name,
                        format!("@user is compared with a relation to users, not '{name}'"),
                    ));
                }
                TOperand::User
            }
            Side::Var(Var::Now, offset) => {
                if ty != ColumnType::Datetime {
                    return Err(QueryError::invalid_value(
                        &name,
                        format!("@now is compared with a datetime field, not '{name}'"),
                    ));
                }
                TOperand::Now(offset)
            }
            Side::Var(Var::Today, offset) => {
                if !matches!(ty, ColumnType::Date | ColumnType::Datetime) {
                    return Err(QueryError::invalid_value(
                        &name,
                        format!("@today is compared with a date field, not '{name}'"),
                    ));
                }
                TOperand::Today(offset)
            }
            Side::Role | Side::Bare(..) => unreachable!("handled by compare"),
        };
        Ok(TExpr::Cmp(TOperand::Column(name, ty), op, right))
    }

    fn coerce(&self, name: &str, ty: ColumnType, literal: &Literal) -> Result<TOperand, QueryError> {
        let mismatch =
            |expected: &str| QueryError::invalid_value(name, format!("'{name}' is compared with {expected}"));
        Ok(match (ty, literal) {
            (ColumnType::Text, Literal::Str(s)) => TOperand::Value(SqlValue::Text(s.clone()), false),
            (ColumnType::Select, Literal::Str(s)) => {
                let allowed = match self.collection.field(name).map(|f| &f.kind) {
                    Some(FieldKind::Select { values }) => values.clone(),
                    _ => vec![],
                };
                if !allowed.iter().any(|v| v == s) {
                    return Err(QueryError::invalid_value(
                        name,
                        format!(
                            "'{s}' is not a value of '{name}'; expected one of: {}",
                            allowed.join(", ")
                        ),
                    ));
                }
                TOperand::Value(SqlValue::Text(s.clone()), true)
            }
            (ColumnType::Integer, Literal::Int(i)) => TOperand::Value(SqlValue::Int(*i), false),
            (ColumnType::Number, Literal::Int(i)) => TOperand::Value(SqlValue::Float(*i as f64), false),
            (ColumnType::Number, Literal::Float(f)) => TOperand::Value(SqlValue::Float(*f), false),
            (ColumnType::Bool, Literal::Bool(b)) => TOperand::Value(SqlValue::Bool(*b), true),
            (ColumnType::Date, Literal::Str(s)) => match parse_date(s) {
                Some(date) => TOperand::Value(SqlValue::Date(date), false),
                None => return Err(mismatch("a date (YYYY-MM-DD)")),
            },
            (ColumnType::Datetime, Literal::Str(s)) => match parse_datetime(s)
                .or_else(|| parse_date(s).and_then(|d| d.and_hms_opt(0, 0, 0)).map(|d| d.and_utc()))
            {
                Some(datetime) => TOperand::Value(SqlValue::Datetime(datetime), false),
                None => return Err(mismatch("a datetime (RFC 3339)")),
            },
            (ColumnType::Id, Literal::Str(s)) => match Uuid::parse_str(s) {
                Ok(id) => TOperand::Value(SqlValue::Uuid(id), false),
                Err(_) => return Err(mismatch("an id (a UUID)")),
            },
            (ColumnType::Text | ColumnType::Select, _) => return Err(mismatch("a string")),
            (ColumnType::Integer, _) => return Err(mismatch("an integer")),
            (ColumnType::Number, _) => return Err(mismatch("a number")),
            (ColumnType::Bool, _) => return Err(mismatch("true or false")),
            (ColumnType::Date, _) => return Err(mismatch("a date string")),
            (ColumnType::Datetime, _) => return Err(mismatch("a datetime string")),
            (ColumnType::Id, _) => return Err(mismatch("an id string")),
            (ColumnType::Json, _) => return Err(mismatch("null")),
        })
    }
}

/// The type family of an operand of a comparison without a column (see `Checker::loose`).
fn loose_class(operand: &TOperand) -> u8 {
    match operand {
        TOperand::Value(SqlValue::Text(_), _) => 0,
        TOperand::Value(SqlValue::Int(_) | SqlValue::Float(_), _) => 1,
        TOperand::Value(SqlValue::Bool(_), _) => 2,
        TOperand::User => 3,
        TOperand::Now(_) | TOperand::Today(_) => 4,
        _ => 5,
    }
}

/// How `role` is known when a rule is compiled.
#[derive(Debug, Clone)]
pub enum RoleSource {
    /// The caller's rank in the org of the request (`None`: not a member).
    Rank(Option<i64>),
    /// A SQL expression giving the caller's rank in each row's org (cross-org lists).
    Expression(String),
}

/// What a compiled expression may know about the caller.
#[derive(Debug, Clone)]
pub struct Context {
    pub user: Option<Uuid>,
    pub role: RoleSource,
    pub now: DateTime<Utc>,
}

/// A compiled expression: a constant when the context decided it, else SQL.
#[derive(Debug, Clone, PartialEq)]
pub enum Frag {
    Const(bool),
    Sql(Sql),
}

impl Frag {
    /// The SQL of this fragment (`1=1`/`1=0` for constants).
    pub fn into_sql(self, dialect: Dialect) -> Sql {
        match self {
            Frag::Sql(sql) => sql,
            Frag::Const(b) => {
                let mut sql = Sql::new(dialect);
                sql.push(if b { "1=1" } else { "1=0" });
                sql
            }
        }
    }
}

/// Compiles a checked expression. `table` is the (quoted) table or alias the columns belong to.
/// With `inline_all`, every value is written into the SQL text: only for spec-defined DDL.
pub fn compile(expr: &TExpr, dialect: Dialect, table: &str, context: &Context) -> Frag {
    Compiler {
        dialect,
        table,
        context,
        inline_all: false,
        shared: None,
    }
    .expr(expr)
    .into_frag()
}

/// The alias of the subscriber rows a shared condition reads (see [`compile_shared`]).
pub const SUBSCRIBER: &str = "keel_s";

/// A value a shared condition takes from each subscriber's row: a bound value, or the
/// evaluation time (`@now`, `@today` with their offsets), known only when it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Value(SqlValue),
    Now(i64),
    Today(i64),
}

impl Param {
    /// The value at evaluation time `now`.
    pub fn at(&self, now: DateTime<Utc>) -> SqlValue {
        match self {
            Param::Value(value) => value.clone(),
            Param::Now(offset) => SqlValue::Datetime(now + Duration::seconds(*offset)),
            Param::Today(offset) => SqlValue::Date((now + Duration::seconds(*offset)).date_naive()),
        }
    }
}

/// What a shared condition reads from a subscriber's row, collected while compiling.
#[derive(Debug, Default)]
pub struct SharedParams {
    /// `keel_s.p1`, `keel_s.p2`, … in order.
    pub values: Vec<Param>,
    /// The condition reads the caller's user (`keel_s.u`).
    pub user: bool,
    /// The condition reads the caller's rank (`keel_s.r`).
    pub role: bool,
}

/// Compiles a checked expression for many callers at once (realtime's batched rule checks):
/// the caller's user becomes `keel_s.u`, a role given as `RoleSource::Expression("keel_s.r")`
/// stays a column, and every bound value becomes a column `keel_s.pN` collected in `params`.
/// Callers whose compiled text is equal share one statement, each with its own row of values.
pub fn compile_shared(
    expr: &TExpr,
    dialect: Dialect,
    table: &str,
    context: &Context,
    params: &std::cell::RefCell<SharedParams>,
) -> Frag {
    Compiler {
        dialect,
        table,
        context,
        inline_all: false,
        shared: Some(params),
    }
    .expr(expr)
    .into_frag()
}

/// Compiles a partial-index condition (spec text only) with every literal inline.
pub fn compile_index_condition(expr: &TExpr, dialect: Dialect, table: &str) -> String {
    let context = Context {
        user: None,
        role: RoleSource::Rank(None),
        now: DateTime::<Utc>::UNIX_EPOCH,
    };
    let frag = Compiler {
        dialect,
        table,
        context: &context,
        inline_all: true,
        shared: None,
    }
    .expr(expr)
    .into_frag();
    frag.into_sql(dialect).text
}

/// A fragment while compiling: like [`Frag`], plus SQL's unknown (what a comparison with a
/// missing `@user` yields), which must stay unknown under `NOT` (three-valued logic).
enum Folded {
    Const(bool),
    Null,
    Sql(Sql),
}

impl Folded {
    /// A whole condition: an unknown one does not hold.
    fn into_frag(self) -> Frag {
        match self {
            Folded::Const(b) => Frag::Const(b),
            Folded::Null => Frag::Const(false),
            Folded::Sql(sql) => Frag::Sql(sql),
        }
    }

    /// One operand of AND/OR next to SQL: an unknown is written as NULL.
    fn into_sql(self, dialect: Dialect) -> Sql {
        match self {
            Folded::Null => {
                let mut sql = Sql::new(dialect);
                sql.push("NULL");
                sql
            }
            other => other.into_frag().into_sql(dialect),
        }
    }
}

struct Compiler<'a> {
    dialect: Dialect,
    table: &'a str,
    context: &'a Context,
    inline_all: bool,
    /// Compiling for many callers: values become subscriber columns (see [`compile_shared`]).
    shared: Option<&'a std::cell::RefCell<SharedParams>>,
}

impl Compiler<'_> {
    fn expr(&self, expr: &TExpr) -> Folded {
        match expr {
            TExpr::Const(b) => Folded::Const(*b),
            TExpr::And(a, b) => match (self.expr(a), self.expr(b)) {
                (Folded::Const(false), _) | (_, Folded::Const(false)) => Folded::Const(false),
                (Folded::Const(true), other) | (other, Folded::Const(true)) => other,
                (Folded::Null, Folded::Null) => Folded::Null,
                (a, b) => self.join(a.into_sql(self.dialect), " AND ", b.into_sql(self.dialect)),
            },
            TExpr::Or(a, b) => match (self.expr(a), self.expr(b)) {
                (Folded::Const(true), _) | (_, Folded::Const(true)) => Folded::Const(true),
                (Folded::Const(false), other) | (other, Folded::Const(false)) => other,
                (Folded::Null, Folded::Null) => Folded::Null,
                (a, b) => self.join(a.into_sql(self.dialect), " OR ", b.into_sql(self.dialect)),
            },
            TExpr::Not(a) => match self.expr(a) {
                Folded::Const(b) => Folded::Const(!b),
                Folded::Null => Folded::Null,
                Folded::Sql(inner) => {
                    let mut sql = Sql::new(self.dialect);
                    sql.push("NOT (").append(&inner).push(")");
                    Folded::Sql(sql)
                }
            },
            TExpr::Truthy(operand) => {
                let mut sql = Sql::new(self.dialect);
                self.operand(&mut sql, operand);
                sql.push(" = ");
                self.literal(&mut sql, &SqlValue::Bool(true), true);
                Folded::Sql(sql)
            }
            TExpr::IsNull(operand, negated) => {
                if let TOperand::User = operand {
                    return Folded::Const(self.context.user.is_none() != *negated);
                }
                let mut sql = Sql::new(self.dialect);
                self.operand(&mut sql, operand);
                sql.push(if *negated { " IS NOT NULL" } else { " IS NULL" });
                Folded::Sql(sql)
            }
            TExpr::Like(operand, op, text) => {
                let escaped = text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
                let pattern = match op {
                    TextOp::Contains => format!("%{escaped}%"),
                    TextOp::StartsWith => format!("{escaped}%"),
                };
                let mut sql = Sql::new(self.dialect);
                self.operand(&mut sql, operand);
                sql.push(match self.dialect {
                    Dialect::Sqlite => " LIKE ",
                    Dialect::Postgres => " ILIKE ",
                });
                self.literal(&mut sql, &SqlValue::Text(pattern), false);
                sql.push(" ESCAPE '\\'");
                Folded::Sql(sql)
            }
            TExpr::In(operand, values, negated) => {
                if values.is_empty() {
                    return Folded::Const(*negated);
                }
                let mut sql = Sql::new(self.dialect);
                self.operand(&mut sql, operand);
                sql.push(if *negated { " NOT IN (" } else { " IN (" });
                for (i, value) in values.iter().enumerate() {
                    if i > 0 {
                        sql.push(", ");
                    }
                    self.operand(&mut sql, value);
                }
                sql.push(")");
                Folded::Sql(sql)
            }
            TExpr::Cmp(left, op, right) => {
                if let (TOperand::Role, TOperand::RoleRank(rank)) = (left, right) {
                    match &self.context.role {
                        RoleSource::Rank(None) => return Folded::Const(false),
                        RoleSource::Rank(Some(mine)) => {
                            let holds = match op {
                                CmpOp::Eq => mine == rank,
                                CmpOp::Ne => mine != rank,
                                CmpOp::Lt => mine < rank,
                                CmpOp::Le => mine <= rank,
                                CmpOp::Gt => mine > rank,
                                CmpOp::Ge => mine >= rank,
                            };
                            return Folded::Const(holds);
                        }
                        RoleSource::Expression(_) => {}
                    }
                }
                if matches!(left, TOperand::User) || matches!(right, TOperand::User) {
                    // Comparing with a missing user is NULL (unknown), and so is its negation.
                    if self.context.user.is_none() {
                        return Folded::Null;
                    }
                }
                let mut sql = Sql::new(self.dialect);
                self.operand(&mut sql, left);
                sql.push(" ").push(op.sql()).push(" ");
                self.operand(&mut sql, right);
                Folded::Sql(sql)
            }
        }
    }

    fn join(&self, a: Sql, connective: &str, b: Sql) -> Folded {
        let mut sql = Sql::new(self.dialect);
        sql.push("(")
            .append(&a)
            .push(")")
            .push(connective)
            .push("(")
            .append(&b)
            .push(")");
        Folded::Sql(sql)
    }

    fn operand(&self, sql: &mut Sql, operand: &TOperand) {
        match operand {
            TOperand::Column(name, _) => {
                if !self.table.is_empty() {
                    sql.push(self.table).push(".");
                }
                sql.push(&crate::value::ident(name));
            }
            TOperand::Value(value, inline) => self.literal(sql, value, *inline),
            TOperand::Role => match &self.context.role {
                RoleSource::Expression(expression) => {
                    if let Some(shared) = self.shared {
                        shared.borrow_mut().role = true;
                    }
                    sql.push("(").push(expression).push(")");
                }
                RoleSource::Rank(rank) => {
                    sql.push(&rank.unwrap_or(0).to_string());
                }
            },
            TOperand::RoleRank(rank) => {
                sql.push(&rank.to_string());
            }
            TOperand::User => match self.context.user {
                Some(_) if self.shared.is_some() => {
                    if let Some(shared) = self.shared {
                        shared.borrow_mut().user = true;
                    }
                    sql.push(SUBSCRIBER).push(".u");
                }
                Some(user) => {
                    sql.bind(SqlValue::Uuid(user));
                }
                None => {
                    sql.push("NULL");
                }
            },
            TOperand::Now(offset) if self.shared.is_some() => self.column(sql, Param::Now(*offset)),
            TOperand::Today(offset) if self.shared.is_some() => self.column(sql, Param::Today(*offset)),
            TOperand::Now(offset) => {
                let value = self.context.now + Duration::seconds(*offset);
                sql.bind(SqlValue::Datetime(value));
            }
            TOperand::Today(offset) => {
                let value = (self.context.now + Duration::seconds(*offset)).date_naive();
                sql.bind(SqlValue::Date(value));
            }
        }
    }

    /// A subscriber column `keel_s.pN` holding `param` (shared compiles only).
    fn column(&self, sql: &mut Sql, param: Param) {
        let Some(shared) = self.shared else { return };
        let mut shared = shared.borrow_mut();
        shared.values.push(param);
        sql.push(SUBSCRIBER).push(&format!(".p{}", shared.values.len()));
    }

    fn literal(&self, sql: &mut Sql, value: &SqlValue, inline: bool) {
        if !(inline || self.inline_all) {
            if self.shared.is_some() && *value != SqlValue::Null {
                self.column(sql, Param::Value(value.clone()));
                return;
            }
            sql.bind(value.clone());
            return;
        }
        let text = match (value, self.dialect) {
            (SqlValue::Bool(b), Dialect::Sqlite) => if *b { "1" } else { "0" }.to_string(),
            (SqlValue::Bool(b), Dialect::Postgres) => if *b { "true" } else { "false" }.to_string(),
            (SqlValue::Int(i), _) => i.to_string(),
            (SqlValue::Float(f), _) => format!("{f:?}"),
            (SqlValue::Text(s), _) => crate::value::spec_literal(s),
            (SqlValue::Uuid(u), _) => format!("'{u}'"),
            (SqlValue::Date(d), _) => format!("'{}'", d.format("%Y-%m-%d")),
            (SqlValue::Datetime(d), _) => format!("'{}'", format_datetime(d)),
            (SqlValue::Null, _) => "NULL".to_string(),
            (SqlValue::Json(_) | SqlValue::Bytes(_), _) => "NULL".to_string(),
        };
        sql.push(&text);
    }
}
