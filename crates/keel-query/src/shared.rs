//! Rule checks shared by many callers (realtime, R2): a subscription's rule and filter are
//! compiled once into a condition that reads the caller from a row of subscriber values
//! (`keel_s.u`, `keel_s.r`, `keel_s.p1`…), so every subscriber whose condition has the same
//! text is decided by one statement: `WITH keel_s(...) AS (VALUES (...), (...)) SELECT ...`.
//! That is the technique Hasura publishes for its subscriptions; PocketBase and Supabase run
//! one check per subscriber instead.

use std::cell::RefCell;

use chrono::{DateTime, Utc};
use keel_spec::Action;
use uuid::Uuid;

use crate::TExpr;
use crate::check::{ColumnType, Frag, Param, RoleSource, SUBSCRIBER, SharedParams, compile_shared};
use crate::render::column_json;
use crate::stmt::Builder;
use crate::value::{Sql, SqlValue};

/// A subscription compiled for shared checks. Subscriptions with an equal [`Shared::key`]
/// share a statement; each brings its own [`Shared::row`].
#[derive(Debug, Clone, PartialEq)]
pub struct Shared {
    /// The rule and filter together (`None`: every record in scope passes).
    pub condition: Option<String>,
    /// The record's JSON with `fields` and `expand` when it depends on the caller (expanded
    /// records are shown under their own view rule); `None`: the caller-independent JSON.
    pub select: Option<String>,
    /// What the condition reads of each subscriber.
    pub user: bool,
    pub role: bool,
    /// This subscriber's values of `keel_s.p1`… (the caller, the filter's values, `@now`).
    pub params: Vec<Param>,
    /// The text that decides which subscriptions share a statement.
    pub key: String,
}

/// One subscriber's row: its caller and the values its condition reads.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedRow {
    pub user: Option<Uuid>,
    pub rank: i64,
    pub params: Vec<SqlValue>,
}

impl Shared {
    /// The row of a subscriber evaluated at `now`.
    pub fn row(&self, user: Option<Uuid>, rank: Option<i64>, now: DateTime<Utc>) -> SharedRow {
        SharedRow {
            user: if self.user { user } else { None },
            rank: if self.role { rank.unwrap_or(0) } else { 0 },
            params: self.params.iter().map(|p| p.at(now)).collect(),
        }
    }
}

impl Builder<'_> {
    /// Compiles the caller's rule for `action` (list for collection streams, view for one
    /// record's) with `filter`, `fields` and `expand` for shared checks.
    pub fn shared(
        &self,
        action: Action,
        filter: Option<&TExpr>,
        fields: Option<&[String]>,
        expand: &[String],
    ) -> Shared {
        let mut context = self.context();
        if let RoleSource::Rank(Some(_)) = context.role {
            context.role = RoleSource::Expression(format!("{SUBSCRIBER}.r"));
        }
        let collected = RefCell::new(SharedParams::default());
        let table = self.table();
        let mut parts = vec![];
        if !self.caller.superuser {
            let rule = self.schema.rule(&self.collection.name, action);
            parts.push(compile_shared(rule, self.dialect, &table, &context, &collected));
        }
        if let Some(filter) = filter {
            parts.push(compile_shared(filter, self.dialect, &table, &context, &collected));
        }
        let mut condition: Option<String> = Some(String::new());
        for part in parts {
            match (part, condition.as_mut()) {
                (_, None) | (Frag::Const(true), _) => {}
                (Frag::Const(false), _) => condition = None,
                (Frag::Sql(sql), Some(text)) => {
                    if !text.is_empty() {
                        text.push_str(" AND ");
                    }
                    text.push('(');
                    text.push_str(&sql.text);
                    text.push(')');
                }
            }
        }
        // `None` from a constant false: nothing passes, which `1=0` says to the statement.
        let condition = match condition {
            None => Some("1=0".to_string()),
            Some(text) if text.is_empty() => None,
            some => some,
        };
        let select = (!expand.is_empty()).then(|| {
            let mut sql = Sql::new(self.dialect);
            self.record_json_with(&mut sql, fields, expand, &|rule, alias| {
                compile_shared(rule, self.dialect, alias, &context, &collected)
            });
            sql.text
        });
        let collected = collected.into_inner();
        let key = format!(
            "{}|{}|{}|{}",
            condition.as_deref().unwrap_or(""),
            select.as_deref().unwrap_or(""),
            collected.user,
            collected.role
        );
        Shared {
            condition,
            select,
            user: collected.user,
            role: collected.role,
            params: collected.values,
            key,
        }
    }

    /// Which of `ids` (in this builder's scope) each subscriber row may see: rows of
    /// `(row index, id[, record JSON])`, one statement for every row.
    pub fn visible(&self, shared: &Shared, rows: &[SharedRow], ids: &[Uuid]) -> Sql {
        let table = self.table();
        let mut sql = Sql::new(self.dialect);
        let mut columns = vec!["i".to_string()];
        if shared.user {
            columns.push("u".into());
        }
        if shared.role {
            columns.push("r".into());
        }
        columns.extend((1..=shared.params.len()).map(|n| format!("p{n}")));
        sql.push("WITH ")
            .push(SUBSCRIBER)
            .push("(")
            .push(&columns.join(", "))
            .push(") AS (VALUES ");
        for (i, row) in rows.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.push("(").bind(SqlValue::Int(i as i64));
            if shared.user {
                sql.push(", ");
                match row.user {
                    Some(user) => sql.bind(SqlValue::Uuid(user)),
                    None => sql.push("NULL"),
                };
            }
            if shared.role {
                sql.push(", ").bind(SqlValue::Int(row.rank));
            }
            for value in &row.params {
                sql.push(", ").bind(value.clone());
            }
            sql.push(")");
        }
        sql.push(") SELECT ").push(SUBSCRIBER).push(".i, ").push(&column_json(
            self.dialect,
            &table,
            "id",
            ColumnType::Id,
        ));
        if let Some(select) = &shared.select {
            sql.push(", ").push(select);
        }
        sql.push(" FROM ").push(SUBSCRIBER).push(" CROSS JOIN ").push(&table);
        let rule = match &shared.condition {
            None => Frag::Const(true),
            Some(text) => {
                let mut condition = Sql::new(self.dialect);
                condition.push(text);
                Frag::Sql(condition)
            }
        };
        self.where_clause(&mut sql, rule, vec![self.ids_in(ids)]);
        sql
    }
}
