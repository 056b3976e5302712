//! The app model with every rule and index condition checked once, at start-up.

use std::collections::HashMap;

use keel_spec::{Action, App, Located};

use crate::QueryError;
use crate::check::{Mode, TExpr, check_expr};

/// A problem in a rule or index condition, located in the spec.
#[derive(Debug, Clone)]
pub struct RuleProblem {
    pub line: usize,
    pub path: String,
    pub error: QueryError,
}

impl std::fmt::Display for RuleProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}: {}", self.line, self.path, self.error.message)
    }
}

/// The validated app plus its checked rules and index conditions.
#[derive(Debug, Clone)]
pub struct Schema {
    pub app: App,
    rules: HashMap<(String, Action), TExpr>,
    conditions: HashMap<String, TExpr>,
}

impl Schema {
    /// Checks every rule and index condition of the app; all problems are reported.
    pub fn new(app: App) -> Result<Schema, Vec<RuleProblem>> {
        let mut problems = vec![];
        let mut rules = HashMap::new();
        let mut conditions = HashMap::new();
        let lowest_role = app.roles.last().cloned().unwrap_or_default();
        for collection in &app.collections {
            for action in Action::ALL {
                let default_rule;
                let source = match collection.rules.get(action) {
                    Some(located) => located.clone(),
                    None => {
                        default_rule = match (collection.global, action) {
                            (false, _) => format!("role >= {lowest_role}"),
                            (true, Action::List | Action::View) => "@user != null".to_string(),
                            (true, _) => "false".to_string(),
                        };
                        Located {
                            text: default_rule,
                            line: 0,
                            path: format!("collections.{}.rules.{}", collection.name, action.as_str()),
                        }
                    }
                };
                match check_expr(&app, collection, &source.text, Mode::Rule) {
                    Ok(expr) => {
                        rules.insert((collection.name.clone(), action), expr);
                    }
                    Err(error) => problems.push(RuleProblem {
                        line: source.line,
                        path: source.path.clone(),
                        error,
                    }),
                }
            }
            for index in &collection.indexes {
                if let Some(condition) = &index.condition {
                    match check_expr(&app, collection, &condition.text, Mode::IndexCondition) {
                        Ok(expr) => {
                            conditions.insert(index.name.clone(), expr);
                        }
                        Err(error) => problems.push(RuleProblem {
                            line: condition.line,
                            path: condition.path.clone(),
                            error,
                        }),
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(Schema { app, rules, conditions })
        } else {
            Err(problems)
        }
    }

    /// The checked rule for an action on a collection.
    pub fn rule(&self, collection: &str, action: Action) -> &TExpr {
        self.rules
            .get(&(collection.to_string(), action))
            .expect("every collection has a rule for every action")
    }

    /// The checked condition of a partial index.
    pub fn index_condition(&self, index: &str) -> Option<&TExpr> {
        self.conditions.get(index)
    }
}
