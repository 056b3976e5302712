//! `GET /api/v1/schema`: the app's collections and fields as a client draws them (the
//! console's tables and forms; a client generator needs the OpenAPI document instead).
//! Any signed-in caller may read it; access rules are not in it.

use axum::Json;
use axum::extract::State;
use keel_spec::{Collection, DefaultValue, FieldKind, RelationTarget};
use serde_json::{Value, json};

use crate::http::error::ApiError;
use crate::http::extract::Auth;
use crate::http::state::AppState;

pub async fn schema(State(state): State<AppState>, Auth(_principal): Auth) -> Result<Json<Value>, ApiError> {
    let app = &state.schema.app;
    let collections: Vec<Value> = app.collections.iter().map(collection).collect();
    Ok(Json(json!({
        "app": app.name,
        "title": app.title,
        "roles": app.roles,
        "backend": format!("{:?}", state.db.dialect()).to_lowercase(),
        "collections": collections,
    })))
}

fn collection(c: &Collection) -> Value {
    let fields: Vec<Value> = c
        .fields
        .iter()
        .map(|f| {
            let mut field = json!({
                "name": f.name,
                "type": f.kind.type_name(),
                "required": f.required,
                "unique": f.unique,
                "description": f.description,
                "default": f.default.as_ref().map(|d| match d {
                    DefaultValue::Text(t) => json!(t),
                    DefaultValue::Integer(i) => json!(i),
                    DefaultValue::Number(n) => json!(n),
                    DefaultValue::Bool(b) => json!(b),
                    DefaultValue::Now => json!("@now"),
                }),
            });
            let extra = match &f.kind {
                FieldKind::Text {
                    min,
                    max,
                    pattern,
                    search,
                } => json!({"min": min, "max": max, "pattern": pattern, "search": search}),
                FieldKind::Integer { min, max } => json!({"min": min, "max": max}),
                FieldKind::Number { min, max } => json!({"min": min, "max": max}),
                FieldKind::Select { values } => json!({"values": values}),
                FieldKind::Relation { to, .. } => json!({"to": match to {
                    RelationTarget::Users => "users",
                    RelationTarget::Collection(name) => name.as_str(),
                }}),
                FieldKind::File {
                    max_bytes,
                    types,
                    multiple,
                    ..
                } => json!({"max_bytes": max_bytes, "types": types, "multiple": multiple}),
                FieldKind::Bool | FieldKind::Date | FieldKind::Datetime | FieldKind::Json => json!({}),
            };
            if let (Some(field), Value::Object(extra)) = (field.as_object_mut(), extra) {
                field.extend(extra);
            }
            field
        })
        .collect();
    let searchable = c
        .fields
        .iter()
        .any(|f| matches!(f.kind, FieldKind::Text { search: true, .. }));
    json!({
        "name": c.name,
        "global": c.global,
        "read_only": c.system,
        "timeseries": c.timeseries.is_some(),
        "searchable": searchable,
        "fields": fields,
        "indexes": c.indexes.iter().map(|i| json!({
            "name": i.name,
            "unique": i.unique,
            "columns": i.columns.iter().map(|col| if col.descending { format!("-{}", col.field) } else { col.field.clone() }).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}
