//! Builds every record statement (list, get, insert, update, delete, count, aggregate) for
//! either dialect. The org filter is added here, by construction (invariant 1); values are
//! always bound (invariant 2).

use keel_spec::{Action, Collection};
use uuid::Uuid;

use crate::check::{ColumnType, Context, Frag, RoleSource, column_type, compile};
use crate::cursor::SortKey;
use crate::render::{column_json, embed_json, expand_target, json_object, json_object_sql, record_pairs, user_pairs};
use crate::schema::Schema;
use crate::value::{Dialect, Sql, SqlValue, ident, spec_literal};
use crate::{QueryError, TExpr};

/// Which rows of a collection a statement may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One org (the usual case: `/orgs/{org}/...`).
    Org(Uuid),
    /// Every org the user is a member of (cross-org lists); `role` is per row.
    MemberOrgs(Uuid),
    /// A global collection, or a superuser reading across every org.
    Unscoped,
}

/// The caller as the compiler needs it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub context: Context,
    /// The superuser passes every rule.
    pub superuser: bool,
}

/// A list request, already parsed and checked.
#[derive(Debug, Clone, Default)]
pub struct ListSpec {
    pub filter: Option<TExpr>,
    pub sort: Vec<SortKey>,
    /// Values of the sort keys (then `id`) of the last row of the previous page.
    pub after: Option<Vec<SqlValue>>,
    pub limit: u32,
    pub fields: Option<Vec<String>>,
    pub expand: Vec<String>,
    pub search: Option<String>,
}

/// The alias of the membership join for cross-org lists.
const MEMBERSHIP: &str = "keel_m";

/// What a bulk delete's statement returns of each deleted record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned {
    /// Nothing: the caller needs only the count.
    Nothing,
    /// The id (files to remove).
    Ids,
    /// The whole record as JSON (trigger payloads).
    Records,
}

pub struct Builder<'a> {
    pub schema: &'a Schema,
    pub collection: &'a Collection,
    pub dialect: Dialect,
    pub caller: &'a Caller,
    pub scope: Scope,
}

impl<'a> Builder<'a> {
    pub(crate) fn table(&self) -> String {
        ident(&self.collection.table())
    }

    pub(crate) fn context(&self) -> Context {
        match self.scope {
            Scope::MemberOrgs(_) => {
                let mut context = self.caller.context.clone();
                let mut case = format!("CASE {MEMBERSHIP}.role");
                for role in &self.schema.app.roles {
                    let rank = self.schema.app.role_rank(role).unwrap_or(0);
                    case.push_str(&format!(" WHEN {} THEN {rank}", spec_literal(role)));
                }
                case.push_str(" ELSE 0 END");
                context.role = RoleSource::Expression(case);
                context
            }
            _ => self.caller.context.clone(),
        }
    }

    /// The rule for an action, compiled for this caller (`Const(true)` for the superuser).
    pub fn rule(&self, action: Action) -> Frag {
        if self.caller.superuser {
            return Frag::Const(true);
        }
        let rule = self.schema.rule(&self.collection.name, action);
        compile(rule, self.dialect, &self.table(), &self.context())
    }

    /// FROM clause with the membership join when listing across orgs.
    fn from(&self, sql: &mut Sql) {
        let table = self.table();
        sql.push(" FROM ").push(&table);
        if let Scope::MemberOrgs(user) = self.scope {
            sql.push(" JOIN keel_memberships ")
                .push(MEMBERSHIP)
                .push(" ON ")
                .push(MEMBERSHIP)
                .push(".org_id = ")
                .push(&table)
                .push(".\"org\" AND ")
                .push(MEMBERSHIP)
                .push(".user_id = ")
                .bind(SqlValue::Uuid(user));
        }
    }

    /// The WHERE clause: scope, rule, and the extra conditions given.
    pub(crate) fn where_clause(&self, sql: &mut Sql, rule: Frag, extra: Vec<Sql>) {
        let table = self.table();
        let mut parts: Vec<Sql> = vec![];
        if let Scope::Org(org) = self.scope
            && !self.collection.global
        {
            let mut part = Sql::new(self.dialect);
            part.push(&table).push(".\"org\" = ").bind(SqlValue::Uuid(org));
            parts.push(part);
        }
        match rule {
            Frag::Const(true) => {}
            other => parts.push(other.into_sql(self.dialect)),
        }
        parts.extend(extra);
        if parts.is_empty() {
            return;
        }
        sql.push(" WHERE ");
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                sql.push(" AND ");
            }
            sql.push("(").append(part).push(")");
        }
    }

    /// The JSON of a record including `expand`ed relations.
    fn record_json(&self, sql: &mut Sql, fields: Option<&[String]>, expand: &[String]) {
        let context = self.context();
        self.record_json_with(sql, fields, expand, &|rule, alias| {
            compile(rule, self.dialect, alias, &context)
        });
    }

    /// [`Builder::record_json`] with the view rules of expanded records compiled by `rule`
    /// (a shared compile for realtime's batched checks).
    pub(crate) fn record_json_with(
        &self,
        sql: &mut Sql,
        fields: Option<&[String]>,
        expand: &[String],
        rule: &dyn Fn(&TExpr, &str) -> Frag,
    ) {
        let table = self.table();
        let mut pairs = record_pairs(self.dialect, self.collection, &table, fields);
        let mut expand_sql = vec![];
        let mut sub = Sql::new(self.dialect);
        for (i, field) in expand.iter().enumerate() {
            let alias = format!("keel_x{i}");
            let Some(target) = expand_target(&self.schema.app, self.collection, field) else {
                continue;
            };
            sub.text.clear();
            sub.params.clear();
            sub.push("SELECT ");
            match target {
                None => {
                    sub.push(&json_object(self.dialect, &user_pairs(self.dialect, &alias)));
                    sub.push(" FROM keel_users ").push(&alias);
                    sub.push(" WHERE ").push(&alias).push(".\"id\" = ");
                    sub.push(&table).push(".").push(&ident(field));
                    // A user is shown only while a member of the record's org.
                    if !self.collection.global {
                        sub.push(" AND EXISTS (SELECT 1 FROM keel_memberships keel_em WHERE keel_em.user_id = ");
                        sub.push(&alias)
                            .push(".\"id\" AND keel_em.org_id = ")
                            .push(&table)
                            .push(".\"org\")");
                    }
                }
                Some(target_collection) => {
                    let target_pairs = record_pairs(self.dialect, target_collection, &alias, None);
                    sub.push(&json_object(self.dialect, &target_pairs));
                    sub.push(" FROM ")
                        .push(&ident(&target_collection.table()))
                        .push(" ")
                        .push(&alias);
                    sub.push(" WHERE ").push(&alias).push(".\"id\" = ");
                    sub.push(&table).push(".").push(&ident(field));
                    // Defence in depth: a tenant record only ever expands to a record of its own org.
                    if !target_collection.global && !self.collection.global {
                        sub.push(" AND ")
                            .push(&alias)
                            .push(".\"org\" = ")
                            .push(&table)
                            .push(".\"org\"");
                    }
                    // The related record is shown only if the caller may view it.
                    if !self.caller.superuser {
                        let view = self.schema.rule(&target_collection.name, Action::View);
                        match rule(view, &alias) {
                            Frag::Const(true) => {}
                            other => {
                                sub.push(" AND (").append(&other.into_sql(self.dialect)).push(")");
                            }
                        }
                    }
                }
            }
            expand_sql.push((field.clone(), std::mem::replace(&mut sub, Sql::new(self.dialect))));
        }
        if expand_sql.is_empty() {
            sql.push(&json_object(self.dialect, &pairs));
            return;
        }
        // Expanded relations go under "expand": {"field": {...}}, each a subquery of this row.
        let expand_pairs: Vec<(String, Sql)> = expand_sql
            .into_iter()
            .map(|(field, sub)| {
                let mut wrapped = Sql::new(self.dialect);
                wrapped.push(&embed_json(self.dialect, &sub.text));
                wrapped.params = sub.params;
                (field, wrapped)
            })
            .collect();
        let mut all: Vec<(String, Sql)> = pairs
            .drain(..)
            .map(|(key, value)| {
                let mut part = Sql::new(self.dialect);
                part.push(&value);
                (key, part)
            })
            .collect();
        all.push(("expand".to_string(), json_object_sql(self.dialect, &expand_pairs)));
        sql.append(&json_object_sql(self.dialect, &all));
    }

    /// `SELECT <record>, <sort key> FROM ... WHERE ... ORDER BY ... LIMIT n+1`.
    pub fn list(&self, spec: &ListSpec) -> Sql {
        let table = self.table();
        let mut sql = Sql::new(self.dialect);
        sql.push("SELECT ");
        self.record_json(&mut sql, spec.fields.as_deref(), &spec.expand);
        sql.push(", ");
        let key_pairs: Vec<String> = spec
            .sort
            .iter()
            .map(|key| column_json(self.dialect, &table, &key.field, key.ty))
            .collect();
        match self.dialect {
            Dialect::Sqlite => sql.push("json_array(").push(&key_pairs.join(", ")).push(")"),
            Dialect::Postgres => sql
                .push("json_build_array(")
                .push(&key_pairs.join(", "))
                .push(")::text"),
        };
        self.from(&mut sql);
        let mut extra = self.filter_and_search(spec.filter.as_ref(), spec.search.as_deref());
        if let Some(after) = &spec.after {
            extra.push(crate::cursor::keyset_predicate(self.dialect, &table, &spec.sort, after));
        }
        self.where_clause(&mut sql, self.rule(Action::List), extra);
        sql.push(" ORDER BY ");
        for (i, key) in spec.sort.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.push(&table).push(".").push(&ident(&key.field));
            sql.push(crate::cursor::order_suffix(self.dialect, key.descending, key.nullable));
        }
        sql.push(" LIMIT ").push(&(spec.limit + 1).to_string());
        sql
    }

    /// The conditions a request adds to its scope and rule: its filter and its search.
    fn filter_and_search(&self, filter: Option<&TExpr>, search: Option<&str>) -> Vec<Sql> {
        let mut conditions = vec![];
        if let Some(filter) = filter {
            match compile(filter, self.dialect, &self.table(), &self.context()) {
                Frag::Const(true) => {}
                other => conditions.push(other.into_sql(self.dialect)),
            }
        }
        if let Some(query) = search {
            conditions.push(self.search(query));
        }
        conditions
    }

    /// `SELECT count(*)` with the same scope, rule, filter and search as a list.
    /// `cap` bounds the work for an estimate-style count.
    pub fn count(&self, spec: &ListSpec, cap: Option<u64>) -> Sql {
        let mut inner = Sql::new(self.dialect);
        inner.push("SELECT 1");
        self.from(&mut inner);
        let extra = self.filter_and_search(spec.filter.as_ref(), spec.search.as_deref());
        self.where_clause(&mut inner, self.rule(Action::List), extra);
        if let Some(cap) = cap {
            inner.push(" LIMIT ").push(&cap.to_string());
        }
        let mut sql = Sql::new(self.dialect);
        sql.push("SELECT count(*) FROM (").append(&inner).push(") keel_count");
        sql
    }

    /// Full-text search: FTS5 on SQLite, a tsvector column on PostgreSQL.
    fn search(&self, query: &str) -> Sql {
        let table = self.table();
        let mut sql = Sql::new(self.dialect);
        match self.dialect {
            Dialect::Sqlite => {
                // Each word becomes a quoted FTS5 string, so user text is never FTS syntax.
                let terms: Vec<String> = query
                    .split_whitespace()
                    .take(32) // the handler refuses longer queries
                    .map(|word| format!("\"{}\"", word.replace('"', "\"\"")))
                    .collect();
                let fts = ident(&format!("{}_fts", self.collection.table()));
                sql.push(&table)
                    .push(".rowid IN (SELECT rowid FROM ")
                    .push(&fts)
                    .push(" WHERE ")
                    .push(&fts)
                    .push(" MATCH ")
                    .bind(SqlValue::Text(terms.join(" ")))
                    .push(")");
            }
            Dialect::Postgres => {
                sql.push(&table)
                    .push(".keel_search @@ websearch_to_tsquery('simple', ")
                    .bind(SqlValue::Text(query.to_string()))
                    .push(")");
            }
        }
        sql
    }

    /// One record by id, if the rule for `action` lets the caller see it.
    /// `lock` adds `FOR UPDATE` on PostgreSQL (SQLite's single writer already serialises).
    pub fn get(&self, id: Uuid, action: Action, expand: &[String], fields: Option<&[String]>, lock: bool) -> Sql {
        let table = self.table();
        let mut sql = Sql::new(self.dialect);
        sql.push("SELECT ");
        self.record_json(&mut sql, fields, expand);
        self.from(&mut sql);
        let mut by_id = Sql::new(self.dialect);
        by_id.push(&table).push(".\"id\" = ").bind(SqlValue::Uuid(id));
        self.where_clause(&mut sql, self.rule(action), vec![by_id]);
        if lock && self.dialect == Dialect::Postgres {
            sql.push(" FOR UPDATE");
        }
        sql
    }

    /// Checks that a freshly written record satisfies a rule (create rules are checked
    /// on the new row, inside the write's transaction).
    pub fn satisfies(&self, id: Uuid, action: Action) -> Option<Sql> {
        let rule = self.rule(action);
        if rule == Frag::Const(true) {
            return None;
        }
        let table = self.table();
        let mut sql = Sql::new(self.dialect);
        sql.push("SELECT 1");
        self.from(&mut sql);
        let mut by_id = Sql::new(self.dialect);
        by_id.push(&table).push(".\"id\" = ").bind(SqlValue::Uuid(id));
        self.where_clause(&mut sql, rule, vec![by_id]);
        Some(sql)
    }

    /// `INSERT ... RETURNING <record>`. `values` are (column, value) pairs including system columns.
    pub fn insert(&self, values: &[(String, SqlValue)]) -> Sql {
        let table = self.table();
        let mut sql = Sql::new(self.dialect);
        sql.push("INSERT INTO ").push(&table).push(" (");
        for (i, (column, _)) in values.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.push(&ident(column));
        }
        sql.push(") VALUES (");
        for (i, (_, value)) in values.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.bind(value.clone());
        }
        sql.push(") RETURNING ");
        sql.push(&json_object(
            self.dialect,
            &record_pairs(self.dialect, self.collection, &table, None),
        ));
        sql
    }

    /// `UPDATE ... SET ..., version = version + 1 WHERE id AND org AND version RETURNING <record>`.
    pub fn update(&self, id: Uuid, expected_version: i64, values: &[(String, SqlValue)]) -> Sql {
        let table = self.table();
        let mut sql = Sql::new(self.dialect);
        sql.push("UPDATE ").push(&table).push(" SET ");
        for (column, value) in values {
            sql.push(&ident(column)).push(" = ").bind(value.clone()).push(", ");
        }
        sql.push("\"version\" = \"version\" + 1 WHERE ");
        sql.push(&table).push(".\"id\" = ").bind(SqlValue::Uuid(id));
        if let Scope::Org(org) = self.scope
            && !self.collection.global
        {
            sql.push(" AND ")
                .push(&table)
                .push(".\"org\" = ")
                .bind(SqlValue::Uuid(org));
        }
        sql.push(" AND ")
            .push(&table)
            .push(".\"version\" = ")
            .bind(SqlValue::Int(expected_version));
        sql.push(" RETURNING ");
        sql.push(&json_object(
            self.dialect,
            &record_pairs(self.dialect, self.collection, &table, None),
        ));
        sql
    }

    /// `DELETE ... WHERE id AND org`.
    /// The id of the record in scope whose `field` equals `value` and that the caller may
    /// update (upserts by a unique key).
    pub fn find_by(&self, field: &str, value: SqlValue) -> Sql {
        let table = self.table();
        let mut sql = Sql::new(self.dialect);
        sql.push("SELECT ").push(&table).push(".\"id\"");
        self.from(&mut sql);
        let mut condition = Sql::new(self.dialect);
        condition
            .push(&table)
            .push(".")
            .push(&ident(field))
            .push(" = ")
            .bind(value);
        self.where_clause(&mut sql, self.rule(Action::Update), vec![condition]);
        sql.push(" LIMIT 1");
        sql
    }

    /// `<table>.id IN (…)` with every id bound.
    pub(crate) fn ids_in(&self, ids: &[Uuid]) -> Sql {
        let mut listed = Sql::new(self.dialect);
        listed.push(&self.table()).push(".\"id\" IN (");
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                listed.push(", ");
            }
            listed.bind(SqlValue::Uuid(*id));
        }
        listed.push(")");
        listed
    }

    /// The records among `ids` that are in scope and pass the rule of `action`: each row is
    /// the id then the record's JSON (a bulk write's rule check and trigger payloads).
    pub fn by_ids(&self, ids: &[Uuid], action: Action) -> Sql {
        let table = self.table();
        let mut sql = Sql::new(self.dialect);
        sql.push("SELECT ")
            .push(&column_json(self.dialect, &table, "id", ColumnType::Id))
            .push(", ");
        sql.push(&json_object(
            self.dialect,
            &record_pairs(self.dialect, self.collection, &table, None),
        ));
        self.from(&mut sql);
        self.where_clause(&mut sql, self.rule(action), vec![self.ids_in(ids)]);
        sql
    }

    /// One chunk of a bulk delete: at most `limit` records in scope that the delete rule lets
    /// the caller touch and that match `filter` and `batch`, returning what `returned` asks.
    pub fn delete_chunk(&self, filter: Option<&TExpr>, batch: Option<Uuid>, limit: u32, returned: Returned) -> Sql {
        let table = self.table();
        // SQLite chooses and deletes by rowid: the rowids come with the index entries that
        // find the records, so no primary-key lookup per record, and they cannot change in
        // between (the delete holds the single writer from the choice to the delete).
        let key = match self.dialect {
            Dialect::Postgres => "\"id\"",
            Dialect::Sqlite => "rowid",
        };
        let mut chosen = Sql::new(self.dialect);
        chosen.push("SELECT ").push(&table).push(".").push(key);
        self.from(&mut chosen);
        let mut extra = self.filter_and_search(filter, None);
        if let Some(batch) = batch {
            let mut condition = Sql::new(self.dialect);
            condition.push(&table).push(".\"batch\" = ").bind(SqlValue::Uuid(batch));
            extra.push(condition);
        }
        self.where_clause(&mut chosen, self.rule(Action::Delete), extra);
        chosen.push(" LIMIT ").push(&limit.to_string());
        let mut sql = Sql::new(self.dialect);
        sql.push("DELETE FROM ").push(&table).push(" WHERE ");
        // PostgreSQL plans `id IN (subquery)` as a hash semi-join over a scan of the whole
        // table, once per chunk; `id = ANY(ARRAY(subquery))` runs the subquery once and looks
        // each id up in the primary key.
        match self.dialect {
            Dialect::Postgres => sql.push(&table).push(".\"id\" = ANY(ARRAY(").append(&chosen).push("))"),
            Dialect::Sqlite => sql.push(&table).push(".rowid IN (").append(&chosen).push(")"),
        };
        match returned {
            Returned::Nothing => {}
            Returned::Ids => {
                sql.push(" RETURNING ")
                    .push(&column_json(self.dialect, &table, "id", ColumnType::Id));
            }
            Returned::Records => {
                sql.push(" RETURNING ").push(&json_object(
                    self.dialect,
                    &record_pairs(self.dialect, self.collection, &table, None),
                ));
            }
        }
        sql
    }

    pub fn delete(&self, id: Uuid) -> Sql {
        let table = self.table();
        let mut sql = Sql::new(self.dialect);
        sql.push("DELETE FROM ").push(&table).push(" WHERE ");
        sql.push(&table).push(".\"id\" = ").bind(SqlValue::Uuid(id));
        if let Scope::Org(org) = self.scope
            && !self.collection.global
        {
            sql.push(" AND ")
                .push(&table)
                .push(".\"org\" = ")
                .bind(SqlValue::Uuid(org));
        }
        sql
    }

    /// Checks that related ids exist in the same org (tenant targets) or at all (global
    /// targets and users). Returns one JSON object `{field: true|false}`.
    pub fn relations_exist(&self, relations: &[(String, Uuid)]) -> Option<Sql> {
        if relations.is_empty() {
            return None;
        }
        let mut pairs_sql = Sql::new(self.dialect);
        let mut pairs = vec![];
        for (field, id) in relations {
            let Some(target) = expand_target(&self.schema.app, self.collection, field) else {
                continue;
            };
            let mut check = Sql::new(self.dialect);
            check.push("EXISTS (SELECT 1 FROM ");
            match target {
                // A tenant record may point only at a member of its org.
                None => match self.scope {
                    Scope::Org(org) if !self.collection.global => {
                        check
                            .push("keel_memberships WHERE user_id = ")
                            .bind(SqlValue::Uuid(*id))
                            .push(" AND org_id = ")
                            .bind(SqlValue::Uuid(org));
                    }
                    _ => {
                        check.push("keel_users WHERE \"id\" = ").bind(SqlValue::Uuid(*id));
                    }
                },
                Some(target) => {
                    check
                        .push(&ident(&target.table()))
                        .push(" WHERE \"id\" = ")
                        .bind(SqlValue::Uuid(*id));
                    if !target.global
                        && let Scope::Org(org) = self.scope
                    {
                        check.push(" AND \"org\" = ").bind(SqlValue::Uuid(org));
                    }
                }
            }
            check.push(")");
            pairs.push(field.clone());
            if !pairs_sql.text.is_empty() {
                pairs_sql.push(", ");
            }
            pairs_sql.push(&spec_literal(field)).push(", ");
            if self.dialect == Dialect::Sqlite {
                pairs_sql
                    .push("json(CASE WHEN ")
                    .append(&check)
                    .push(" THEN 'true' ELSE 'false' END)");
            } else {
                pairs_sql.append(&check);
            }
        }
        let mut sql = Sql::new(self.dialect);
        sql.push("SELECT ")
            .push(match self.dialect {
                Dialect::Sqlite => "json_object(",
                Dialect::Postgres => "json_build_object(",
            })
            .append(&pairs_sql)
            .push(")");
        if self.dialect == Dialect::Postgres {
            sql.push("::text");
        }
        Some(sql)
    }

    /// `SELECT {group keys, count, sum_x, ...} ... GROUP BY ... ORDER BY count DESC LIMIT n`.
    pub fn aggregate(&self, request: &AggregateSpec) -> Sql {
        let table = self.table();
        let mut pairs = vec![];
        for group in &request.group {
            let ty = column_type(self.collection, group).unwrap_or(ColumnType::Text);
            pairs.push((group.clone(), column_json(self.dialect, &table, group, ty)));
        }
        pairs.push(("count".to_string(), "count(*)".to_string()));
        for (function, field) in &request.measures {
            let ty = column_type(self.collection, field).unwrap_or(ColumnType::Number);
            let column = format!("{table}.{}", ident(field));
            let expression = match (function, self.dialect, ty) {
                (AggregateFn::Avg, Dialect::Postgres, _) => format!("avg({column})::float8"),
                (AggregateFn::Sum, Dialect::Postgres, ColumnType::Integer) => format!("sum({column})::bigint"),
                (AggregateFn::Min | AggregateFn::Max, Dialect::Postgres, ColumnType::Datetime) => {
                    crate::render::datetime_text(&format!("{}({column})", function.as_str()))
                }
                (function, _, _) => format!("{}({column})", function.as_str()),
            };
            pairs.push((format!("{}_{field}", function.as_str()), expression));
        }
        let mut sql = Sql::new(self.dialect);
        sql.push("SELECT ").push(&json_object(self.dialect, &pairs));
        if self.dialect == Dialect::Postgres {
            sql.push("::text");
        }
        self.from(&mut sql);
        let extra = self.filter_and_search(request.filter.as_ref(), None);
        self.where_clause(&mut sql, self.rule(Action::List), extra);
        if !request.group.is_empty() {
            sql.push(" GROUP BY ");
            let columns: Vec<String> = request.group.iter().map(|g| format!("{table}.{}", ident(g))).collect();
            sql.push(&columns.join(", "));
            sql.push(" ORDER BY count(*) DESC, ").push(&columns.join(", "));
            // One more than asked, so the caller can say the groups were cut off.
            sql.push(" LIMIT ").push(&(request.limit + 1).to_string());
        }
        sql
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateFn {
    Sum,
    Avg,
    Min,
    Max,
}

impl AggregateFn {
    pub fn as_str(self) -> &'static str {
        match self {
            AggregateFn::Sum => "sum",
            AggregateFn::Avg => "avg",
            AggregateFn::Min => "min",
            AggregateFn::Max => "max",
        }
    }
}

/// Aggregate functions with the field each applies to.
pub type Measures = Vec<(AggregateFn, String)>;

/// An aggregate request: group-by fields, measures, filter, group limit.
#[derive(Debug, Clone, Default)]
pub struct AggregateSpec {
    pub group: Vec<String>,
    pub measures: Measures,
    pub filter: Option<TExpr>,
    pub limit: u32,
}

/// Parses `?group=a,b&measures=sum:x,avg:y` against a collection.
pub fn parse_aggregate(
    collection: &Collection,
    group: Option<&str>,
    measures: Option<&str>,
) -> Result<(Vec<String>, Measures), QueryError> {
    let mut groups = vec![];
    for name in group.unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match column_type(collection, name) {
            Some(ColumnType::Json) => {
                return Err(QueryError::invalid_value(
                    name,
                    format!("json field '{name}' cannot be grouped"),
                ));
            }
            Some(_) => groups.push(name.to_string()),
            None => return Err(QueryError::unknown_field(name, 0, &collection.name)),
        }
    }
    if groups.len() > 4 {
        return Err(QueryError::new("invalid_aggregate", 0, "group by at most 4 fields"));
    }
    let mut parsed = vec![];
    for item in measures
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let (function, field) = item.split_once(':').ok_or_else(|| {
            QueryError::new(
                "invalid_aggregate",
                0,
                format!("'{item}': a measure is function:field, e.g. sum:amount"),
            )
        })?;
        let function = match function {
            "sum" => AggregateFn::Sum,
            "avg" => AggregateFn::Avg,
            "min" => AggregateFn::Min,
            "max" => AggregateFn::Max,
            other => {
                return Err(QueryError::new(
                    "invalid_aggregate",
                    0,
                    format!("unknown function '{other}'; expected sum, avg, min or max"),
                ));
            }
        };
        let ty = column_type(collection, field).ok_or_else(|| QueryError::unknown_field(field, 0, &collection.name))?;
        let numeric = matches!(ty, ColumnType::Integer | ColumnType::Number);
        let ordered = matches!(ty, ColumnType::Date | ColumnType::Datetime);
        let allowed = numeric || (ordered && matches!(function, AggregateFn::Min | AggregateFn::Max));
        if !allowed {
            return Err(QueryError::invalid_value(
                field,
                format!("{}({field}) needs a numeric field", function.as_str()),
            ));
        }
        parsed.push((function, field.to_string()));
    }
    if parsed.len() > 8 {
        return Err(QueryError::new("invalid_aggregate", 0, "at most 8 measures"));
    }
    Ok((groups, parsed))
}
