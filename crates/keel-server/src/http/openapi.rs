//! The OpenAPI 3.1 document, generated from the app spec: a typed schema per collection and
//! every route with its parameters and error envelope.

use keel_spec::{App, Collection, FieldKind};
use serde_json::{Map, Value, json};

fn field_schema(kind: &FieldKind) -> Value {
    match kind {
        FieldKind::Text { min, max, pattern, .. } => {
            let mut schema = json!({ "type": "string", "maxLength": max });
            if let Some(min) = min {
                schema["minLength"] = json!(min);
            }
            if let Some(pattern) = pattern {
                schema["pattern"] = json!(format!("^(?:{pattern})$"));
            }
            schema
        }
        FieldKind::Integer { min, max } => {
            let mut schema = json!({ "type": "integer", "format": "int64" });
            if let Some(min) = min {
                schema["minimum"] = json!(min);
            }
            if let Some(max) = max {
                schema["maximum"] = json!(max);
            }
            schema
        }
        FieldKind::Number { min, max } => {
            let mut schema = json!({ "type": "number" });
            if let Some(min) = min {
                schema["minimum"] = json!(min);
            }
            if let Some(max) = max {
                schema["maximum"] = json!(max);
            }
            schema
        }
        FieldKind::Bool => json!({ "type": "boolean" }),
        FieldKind::Date => json!({ "type": "string", "format": "date" }),
        FieldKind::Datetime => json!({ "type": "string", "format": "date-time" }),
        FieldKind::Select { values } => json!({ "type": "string", "enum": values }),
        FieldKind::Json => json!({}),
        FieldKind::Relation { .. } => json!({ "type": "string", "format": "uuid" }),
        FieldKind::File { multiple, .. } => {
            let file = json!({
                "type": "object",
                "description": "an uploaded file; the bytes are at …/{id}/files/{field}/{file id}",
                "properties": {
                    "id": { "type": "string", "format": "uuid" },
                    "name": { "type": "string" },
                    "size": { "type": "integer", "minimum": 0 },
                    "type": { "type": "string" },
                    "sha256": { "type": "string" },
                    "uploaded_at": { "type": "string", "format": "date-time" }
                },
                "required": ["id", "name", "size", "type", "sha256", "uploaded_at"]
            });
            if *multiple {
                json!({ "type": "array", "items": file })
            } else {
                file
            }
        }
    }
}

fn nullable(schema: Value, required: bool) -> Value {
    if required {
        schema
    } else {
        json!({ "anyOf": [schema, { "type": "null" }] })
    }
}

fn record_schema(collection: &Collection) -> Value {
    let mut properties = Map::new();
    properties.insert("id".into(), json!({ "type": "string", "format": "uuid" }));
    let mut required = vec!["id", "created_at"];
    if !collection.global {
        properties.insert("org".into(), json!({ "type": "string", "format": "uuid" }));
        required.push("org");
    }
    properties.insert("created_at".into(), json!({ "type": "string", "format": "date-time" }));
    if !collection.system {
        properties.insert("updated_at".into(), json!({ "type": "string", "format": "date-time" }));
        properties.insert("version".into(), json!({ "type": "integer", "minimum": 1 }));
        properties.insert(
            "batch".into(),
            nullable(json!({ "type": "string", "format": "uuid" }), false),
        );
        required.push("updated_at");
        required.push("version");
        required.push("batch");
    }
    for field in &collection.fields {
        let mut schema = nullable(field_schema(&field.kind), field.required);
        if let Some(description) = &field.description {
            schema["description"] = json!(description);
        }
        properties.insert(field.name.clone(), schema);
    }
    properties.insert(
        "expand".into(),
        json!({ "type": "object", "additionalProperties": true }),
    );
    json!({ "type": "object", "properties": properties, "required": required })
}

fn input_schema(collection: &Collection, create: bool) -> Value {
    let mut properties = Map::new();
    let mut required = vec![];
    for field in &collection.fields {
        properties.insert(field.name.clone(), nullable(field_schema(&field.kind), field.required));
        if create && field.required && field.default.is_none() {
            required.push(field.name.clone());
        }
    }
    json!({ "type": "object", "properties": properties, "required": required, "additionalProperties": false })
}

fn error_responses(codes: &[u16]) -> Map<String, Value> {
    let mut responses = Map::new();
    for code in codes {
        responses.insert(
            code.to_string(),
            json!({ "description": "error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }),
        );
    }
    responses
}

fn query_parameter(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema })
}

fn path_parameter(name: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "path", "required": true, "schema": schema })
}

pub fn document(app: &App) -> Value {
    let mut schemas = Map::new();
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["error"],
            "properties": { "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": { "type": "string" },
                    "message": { "type": "string" },
                    "request_id": { "type": ["string", "null"] },
                    "details": {}
                }
            }}
        }),
    );
    let mut paths = Map::new();
    let list_params = |collection: &Collection| {
        let mut params = vec![
            query_parameter(
                "filter",
                "a filter expression (see docs/API.md)",
                json!({ "type": "string", "maxLength": 4096 }),
            ),
            query_parameter(
                "sort",
                "comma-separated fields, '-' for descending",
                json!({ "type": "string" }),
            ),
            query_parameter(
                "limit",
                "page size",
                json!({ "type": "integer", "minimum": 1, "maximum": 500 }),
            ),
            query_parameter(
                "after",
                "the `next` cursor of the previous page",
                json!({ "type": "string" }),
            ),
            query_parameter(
                "fields",
                "comma-separated fields to return",
                json!({ "type": "string" }),
            ),
            query_parameter(
                "expand",
                "comma-separated relation fields to embed",
                json!({ "type": "string" }),
            ),
            query_parameter(
                "count",
                "add a total count",
                json!({ "type": "string", "enum": ["exact", "estimate"] }),
            ),
        ];
        if collection.has_search() {
            params.push(query_parameter(
                "q",
                "full-text search",
                json!({ "type": "string", "maxLength": 512 }),
            ));
        }
        params
    };
    for collection in &app.collections {
        let name = &collection.name;
        let type_name = format!("{}Record", pascal(name));
        schemas.insert(type_name.clone(), record_schema(collection));
        // Reads take `fields`, which may leave out anything but the id.
        let mut projection = record_schema(collection);
        projection["required"] = json!(["id"]);
        let projection_name = format!("{}Projection", pascal(name));
        schemas.insert(projection_name.clone(), projection);
        schemas.insert(format!("{}Create", pascal(name)), input_schema(collection, true));
        schemas.insert(format!("{}Update", pascal(name)), input_schema(collection, false));
        let record_ref = json!({ "$ref": format!("#/components/schemas/{type_name}") });
        let projection_ref = json!({ "$ref": format!("#/components/schemas/{projection_name}") });
        let page = json!({ "type": "object", "required": ["items", "next"], "properties": {
            "items": { "type": "array", "items": projection_ref },
            "next": { "type": ["string", "null"] },
            "count": { "type": "integer" },
            "count_capped": { "type": "boolean" }
        }});
        let (base, base_params) = if collection.global {
            (format!("/api/v1/global/{name}"), vec![])
        } else {
            (
                format!("/api/v1/orgs/{{org}}/{name}"),
                vec![path_parameter(
                    "org",
                    json!({ "type": "string", "description": "org slug, or - for every org of the caller" }),
                )],
            )
        };
        let mut collection_item = Map::new();
        let mut list_responses = error_responses(&[400, 401, 403, 404, 503]);
        list_responses.insert(
            "200".into(),
            json!({ "description": "a page", "content": { "application/json": { "schema": page } } }),
        );
        let mut list_parameters = base_params.clone();
        list_parameters.extend(list_params(collection));
        collection_item.insert(
            "get".into(),
            json!({ "operationId": format!("list_{name}"), "tags": [name], "parameters": list_parameters, "responses": list_responses }),
        );
        if !collection.system {
            let mut create_responses = error_responses(&[400, 401, 403, 404, 409, 413, 415, 503]);
            create_responses.insert(
                "201".into(),
                json!({ "description": "created", "content": { "application/json": { "schema": record_ref } } }),
            );
            collection_item.insert(
                "post".into(),
                json!({
                    "operationId": format!("create_{name}"), "tags": [name], "parameters": base_params,
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{}Create", pascal(name)) } } } },
                    "responses": create_responses
                }),
            );
        }
        paths.insert(base.clone(), Value::Object(collection_item));
        let mut item_params = base_params.clone();
        item_params.push(path_parameter("id", json!({ "type": "string", "format": "uuid" })));
        let mut item = Map::new();
        let mut get_responses = error_responses(&[400, 401, 403, 404, 503]);
        get_responses.insert(
            "200".into(),
            json!({ "description": "the record (with `fields`, only those and the id)", "content": { "application/json": { "schema": projection_ref } } }),
        );
        let mut get_params = item_params.clone();
        get_params.push(query_parameter(
            "expand",
            "comma-separated relation fields to embed",
            json!({ "type": "string" }),
        ));
        get_params.push(query_parameter(
            "fields",
            "comma-separated fields to return",
            json!({ "type": "string" }),
        ));
        item.insert("get".into(), json!({ "operationId": format!("get_{name}"), "tags": [name], "parameters": get_params, "responses": get_responses }));
        if !collection.system {
            let mut update_params = item_params.clone();
            update_params
                .push(json!({ "name": "If-Match", "in": "header", "required": false, "schema": { "type": "string" } }));
            let mut update_responses = error_responses(&[400, 401, 403, 404, 409, 412, 413, 415, 503]);
            update_responses.insert(
                "200".into(),
                json!({ "description": "updated", "content": { "application/json": { "schema": record_ref } } }),
            );
            item.insert(
                "patch".into(),
                json!({
                    "operationId": format!("update_{name}"), "tags": [name], "parameters": update_params,
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{}Update", pascal(name)) } } } },
                    "responses": update_responses
                }),
            );
            let mut delete_responses = error_responses(&[400, 401, 403, 404, 409, 412, 503]);
            delete_responses.insert("204".into(), json!({ "description": "deleted" }));
            item.insert("delete".into(), json!({ "operationId": format!("delete_{name}"), "tags": [name], "parameters": update_params_for_delete(&item_params), "responses": delete_responses }));
        }
        paths.insert(format!("{base}/{{id}}"), Value::Object(item));
        let mut aggregate_params = base_params.clone();
        aggregate_params.push(query_parameter(
            "group",
            "comma-separated fields to group by",
            json!({ "type": "string" }),
        ));
        aggregate_params.push(query_parameter(
            "measures",
            "comma-separated function:field (sum, avg, min, max)",
            json!({ "type": "string" }),
        ));
        aggregate_params.push(query_parameter(
            "filter",
            "a filter expression",
            json!({ "type": "string", "maxLength": 4096 }),
        ));
        aggregate_params.push(query_parameter(
            "limit",
            "at most this many groups",
            json!({ "type": "integer", "minimum": 1, "maximum": 1000 }),
        ));
        let mut aggregate_responses = error_responses(&[400, 401, 403, 404, 503]);
        aggregate_responses.insert(
            "200".into(),
            json!({ "description": "groups", "content": { "application/json": { "schema": { "type": "object", "required": ["groups"], "properties": { "groups": { "type": "array", "items": { "type": "object" } } } } } } }),
        );
        paths.insert(
            format!("{base}/aggregate"),
            json!({ "get": { "operationId": format!("aggregate_{name}"), "tags": [name], "parameters": aggregate_params, "responses": aggregate_responses } }),
        );
        let mut export_params = base_params.clone();
        export_params.push(query_parameter(
            "format",
            "csv (default) or ndjson",
            json!({ "type": "string", "enum": ["csv", "ndjson"] }),
        ));
        for (param, description) in [
            ("filter", "a filter expression"),
            ("sort", "sort keys"),
            ("fields", "the fields to export"),
            ("q", "full-text search"),
        ] {
            export_params.push(query_parameter(param, description, json!({ "type": "string" })));
        }
        let mut export_responses = error_responses(&[400, 401, 403, 404, 503]);
        export_responses.insert(
            "200".into(),
            json!({ "description": "every matching record, streamed", "content": {
                "text/csv": { "schema": { "type": "string" } },
                "application/x-ndjson": { "schema": { "type": "string" } } } }),
        );
        paths.insert(
            format!("{base}/export"),
            json!({ "get": { "operationId": format!("export_{name}"), "tags": [name], "parameters": export_params, "responses": export_responses } }),
        );
        let (collection_events, record_events) = event_paths(name, &base_params);
        paths.insert(format!("{base}/events"), collection_events);
        paths.insert(format!("{base}/{{id}}/events"), record_events);
    }
    system_paths(&mut paths, &mut schemas, app);
    // Every API route but the workers' is rate limited (429 with Retry-After), and any
    // route can refuse a blocked address (403).
    for (path, item) in paths.iter_mut() {
        if !path.starts_with("/api/v1/") || path.starts_with("/api/v1/workers/") {
            continue;
        }
        for operation in item.as_object_mut().into_iter().flat_map(|ops| ops.values_mut()) {
            if let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut) {
                responses.entry("429").or_insert_with(|| json!({
                    "description": "rate limited (`rate_limited`, `too_many_concurrent`); retry after Retry-After seconds",
                    "headers": { "Retry-After": { "schema": { "type": "integer" } } },
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
                }));
                responses.entry("403").or_insert_with(|| {
                    json!({
                        "description": "forbidden, or the client's address is blocked (`ip_blocked`)",
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
                    })
                });
            }
            // A route that takes a body refuses another content type and an oversized body.
            if operation.get("requestBody").is_some()
                && let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut)
            {
                for code in ["413", "415"] {
                    responses.entry(code).or_insert_with(|| {
                        json!({
                            "description": "error",
                            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
                        })
                    });
                }
            }
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": app.title.clone().unwrap_or_else(|| app.name.clone()), "version": env!("CARGO_PKG_VERSION"), "description": "Generated by Keel from the app spec." },
        "servers": [{ "url": "/" }],
        "components": {
            "schemas": schemas,
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } }
        },
        "security": [{ "bearer": [] }],
        "paths": paths,
    })
}

/// Sign-in with providers (A4): start and callback are browser redirects (303).
fn oidc_paths(
    paths: &mut Map<String, Value>,
    body: &dyn Fn(Value) -> Value,
    ok: &dyn Fn(&str, &str, &[u16]) -> Value,
    empty: &dyn Fn(&[u16]) -> Value,
) {
    let public = json!([]);
    let provider = path_parameter("provider", json!({ "type": "string" }));
    let redirect = |errors: &[u16], description: &str| {
        let mut responses = error_responses(errors);
        responses.insert(
            "303".into(),
            json!({ "description": description, "headers": {
            "Location": { "schema": { "type": "string" } }, "Set-Cookie": { "schema": { "type": "string" } } } }),
        );
        Value::Object(responses)
    };
    paths.insert(
        "/api/v1/auth/oidc/providers".into(),
        json!({ "get": { "operationId": "list_sign_in_providers", "tags": ["auth"], "security": public,
        "responses": ok("200", "{items: [{name, display_name, start}]}", &[]) } }),
    );
    paths.insert("/api/v1/auth/oidc/identities".into(), json!({ "get": { "operationId": "list_identities", "tags": ["auth"],
        "responses": ok("200", "{items: [{provider, subject, email, created_at, last_used_at}]}", &[400, 401, 403]) } }));
    paths.insert("/api/v1/auth/oidc/exchange".into(), json!({ "post": { "operationId": "exchange_sign_in_code", "tags": ["auth"], "security": public,
        "description": "The `oidc_code` a provider sign-in ended with, for a session (or `{mfa_required, mfa_token}`), once, within 2 minutes.",
        "requestBody": body(json!({ "type": "object", "required": ["code"], "additionalProperties": false, "properties": {
            "code": { "type": "string", "maxLength": 64 }, "code_verifier": { "type": "string", "maxLength": 128, "description": "required when the sign-in started with a code_challenge" },
            "cookie": { "type": "boolean" } } })),
        "responses": ok("200", "a session, as login answers it", &[400, 403, 415]) } }));
    paths.insert("/api/v1/auth/oidc/{provider}/start".into(), json!({ "get": { "operationId": "start_sign_in", "tags": ["auth"], "security": public,
        "parameters": [provider.clone(),
            query_parameter("redirect", "where the browser goes when the sign-in ends: a URL on `auth.oidc_redirects`", json!({ "type": "string", "maxLength": 2048 })),
            query_parameter("login_hint", "passed to the provider", json!({ "type": "string", "maxLength": 254 })),
            query_parameter("resume", "a link flow's state, from `POST …/link`", json!({ "type": "string" })),
            query_parameter("code_challenge", "the app's PKCE challenge, BASE64URL(SHA-256(code_verifier)): the sign-in's code is then exchanged only with the verifier", json!({ "type": "string", "pattern": "^[A-Za-z0-9_-]{43}$" })),
            query_parameter("code_challenge_method", "S256 (the only one)", json!({ "type": "string", "enum": ["S256"] }))],
        "responses": redirect(&[400, 404, 502], "to the provider, with the cookie that binds the flow to this browser") } }));
    paths.insert("/api/v1/auth/oidc/{provider}/callback".into(), json!({ "get": { "operationId": "sign_in_callback", "tags": ["auth"], "security": public,
        "description": "Where the provider sends the browser back; it goes on to the flow's redirect with `oidc_code`, `oidc_linked` or `oidc_error`.",
        "parameters": [provider.clone(),
            query_parameter("state", "the flow's state", json!({ "type": "string" })),
            query_parameter("code", "the provider's authorization code", json!({ "type": "string" })),
            query_parameter("error", "the provider's error", json!({ "type": "string" })),
            query_parameter("iss", "the provider's issuer (RFC 9207)", json!({ "type": "string" }))],
        "responses": redirect(&[400, 404], "to the flow's redirect") } }));
    paths.insert("/api/v1/auth/oidc/{provider}/link".into(), json!({
        "post": { "operationId": "link_identity", "tags": ["auth"], "parameters": [provider.clone()],
            "description": "A URL (`{url, expires_at}`) that links the caller's account at the provider when opened in a browser.",
            "requestBody": body(json!({ "type": "object", "required": ["redirect"], "additionalProperties": false, "properties": { "redirect": { "type": "string", "maxLength": 2048 } } })),
            "responses": ok("200", "{url, expires_at}", &[400, 401, 403, 404, 415]) },
        "delete": { "operationId": "unlink_identity", "tags": ["auth"], "parameters": [provider], "responses": empty(&[400, 401, 403, 404, 409]) }
    }));
}

/// Auth, orgs, members, API keys and operations routes.
fn system_paths(paths: &mut Map<String, Value>, schemas: &mut Map<String, Value>, app: &App) {
    let roles = json!({ "type": "string", "enum": app.roles });
    schemas.insert(
        "User".into(),
        json!({ "type": "object", "required": ["id", "email", "created_at"], "properties": {
            "id": { "type": "string", "format": "uuid" }, "email": { "type": "string" },
            "name": { "type": ["string", "null"] }, "superuser": { "type": "boolean" },
            "created_at": { "type": "string", "format": "date-time" },
            "email_verified_at": { "type": ["string", "null"], "format": "date-time", "description": "when the user proved they own `email`; null until then" },
            "disabled_at": { "type": ["string", "null"], "format": "date-time", "description": "when an operator disabled the account" } } }),
    );
    schemas.insert(
        "Org".into(),
        json!({ "type": "object", "required": ["id", "slug", "name"], "properties": {
            "id": { "type": "string", "format": "uuid" }, "slug": { "type": "string" }, "name": { "type": "string" },
            "created_at": { "type": "string", "format": "date-time" },
            "require_mfa": { "type": "boolean", "description": "members need a second factor to use the org (403 `mfa_required` until they enrol)" } } }),
    );
    let body = |schema: Value| json!({ "required": true, "content": { "application/json": { "schema": schema } } });
    let ok = |code: &str, description: &str, errors: &[u16]| {
        let mut responses = error_responses(errors);
        responses.insert(code.into(), json!({ "description": description, "content": { "application/json": { "schema": { "type": "object" } } } }));
        Value::Object(responses)
    };
    let empty = |errors: &[u16]| {
        let mut responses = error_responses(errors);
        responses.insert("204".into(), json!({ "description": "done" }));
        Value::Object(responses)
    };
    let credentials = json!({ "type": "object", "required": ["email", "password"], "additionalProperties": false, "properties": {
        "email": { "type": "string", "maxLength": 254 }, "password": { "type": "string", "maxLength": 256 }, "name": { "type": "string", "maxLength": 200 },
        "cookie": { "type": "boolean", "description": "keep the session in an HttpOnly cookie and answer its csrf_token instead of the token" },
        "invitation": { "type": "string", "maxLength": 64, "description": "sign-up only: an invitation's token; the account joins its org (open even when auth.signup is false)" } } });
    let public = json!([]);
    paths.insert("/api/v1/auth/signup".into(), json!({ "post": { "operationId": "signup", "tags": ["auth"], "security": public, "requestBody": body(credentials.clone()), "responses": ok("201", "the user and a session token", &[400, 403, 409, 415, 429]) } }));
    paths.insert("/api/v1/auth/password".into(), json!({ "post": { "operationId": "change_password", "tags": ["auth"],
        "requestBody": body(json!({ "type": "object", "required": ["current_password", "new_password"], "additionalProperties": false, "properties": {
            "current_password": { "type": "string", "maxLength": 1024 }, "new_password": { "type": "string", "maxLength": 256 } } })),
        "responses": ok("200", "a new session; every other session of the user is revoked", &[400, 401, 415]) } }));
    paths.insert("/api/v1/auth/login".into(), json!({ "post": { "operationId": "login", "tags": ["auth"], "security": public, "requestBody": body(credentials), "responses": ok("200", "a session token", &[400, 401, 415, 429]) } }));
    paths.insert(
        "/api/v1/auth/logout".into(),
        json!({ "post": { "operationId": "logout", "tags": ["auth"], "responses": empty(&[400, 401]) } }),
    );
    let code = json!({ "type": "string", "maxLength": 32, "description": "a 6-digit TOTP code or a recovery code" });
    paths.insert("/api/v1/auth/mfa".into(), json!({
        "get": { "operationId": "mfa_status", "tags": ["auth"], "responses": ok("200", "{totp, recovery_codes_left}", &[400, 401]) },
        "post": { "operationId": "complete_mfa", "tags": ["auth"], "security": public,
            "description": "The second step of a sign-in whose login answered `mfa_required`.",
            "requestBody": body(json!({ "type": "object", "required": ["mfa_token", "code"], "additionalProperties": false, "properties": {
                "mfa_token": { "type": "string", "maxLength": 64 }, "code": code.clone(), "cookie": { "type": "boolean" } } })),
            "responses": ok("200", "a session, as login answers it", &[400, 401, 415, 429]) } }));
    paths.insert("/api/v1/auth/mfa/totp/enroll".into(), json!({ "post": { "operationId": "enroll_totp", "tags": ["auth"],
        "requestBody": body(json!({ "type": "object", "required": ["password"], "additionalProperties": false, "properties": { "password": { "type": "string", "maxLength": 1024 } } })),
        "responses": ok("200", "{secret, otpauth_uri}: waiting for its first code", &[400, 401, 409, 415]) } }));
    paths.insert("/api/v1/auth/mfa/totp/confirm".into(), json!({ "post": { "operationId": "confirm_totp", "tags": ["auth"],
        "requestBody": body(json!({ "type": "object", "required": ["code"], "additionalProperties": false, "properties": { "code": code.clone() } })),
        "responses": ok("200", "{enabled, recovery_codes}: the ten codes are shown this once", &[400, 401, 415, 429]) } }));
    paths.insert("/api/v1/auth/mfa/totp/disable".into(), json!({ "post": { "operationId": "disable_totp", "tags": ["auth"],
        "requestBody": body(json!({ "type": "object", "required": ["password", "code"], "additionalProperties": false, "properties": { "password": { "type": "string", "maxLength": 1024 }, "code": code } })),
        "responses": empty(&[400, 401, 415, 429]) } }));
    paths.insert("/api/v1/auth/sessions".into(), json!({ "get": { "operationId": "list_sessions", "tags": ["auth"],
        "description": "The caller's live sessions (at most 200, most recently used first): id, created_at, last_seen_at (updated at most every 5 minutes), expires_at, ip, user_agent, current.",
        "responses": ok("200", "the sessions", &[400, 401]) } }));
    paths.insert(
        "/api/v1/auth/sessions/revoke-others".into(),
        json!({ "post": { "operationId": "revoke_other_sessions", "tags": ["auth"],
        "responses": ok("200", "every other session of the caller is revoked", &[400, 401]) } }),
    );
    paths.insert(
        "/api/v1/auth/sessions/{id}".into(),
        json!({ "delete": { "operationId": "revoke_session", "tags": ["auth"],
        "parameters": [path_parameter("id", json!({ "type": "string" }))],
        "responses": empty(&[400, 401, 404]) } }),
    );
    paths.insert("/api/v1/auth/logout-all".into(), json!({ "post": { "operationId": "logout_all", "tags": ["auth"], "responses": ok("200", "sessions revoked", &[400, 401]) } }));
    let accepted = |errors: &[u16]| {
        let mut responses = error_responses(errors);
        responses.insert("202".into(), json!({ "description": "accepted: the same answer whatever the address (an email follows if it can)", "content": { "application/json": { "schema": {
            "type": "object", "required": ["status", "message"], "properties": { "status": { "type": "string", "enum": ["accepted"] }, "message": { "type": "string" } } } } } }));
        responses
    };
    let token = json!({ "type": "string", "maxLength": 64, "description": "the token of the emailed link" });
    paths.insert("/api/v1/auth/email".into(), json!({ "post": { "operationId": "change_email", "tags": ["auth"],
        "description": "Sends a confirmation link to the new address; the account moves there when it is opened (`/auth/verify/confirm`).",
        "requestBody": body(json!({ "type": "object", "required": ["email", "password"], "additionalProperties": false, "properties": {
            "email": { "type": "string", "maxLength": 254 }, "password": { "type": "string", "maxLength": 1024 } } })),
        "responses": accepted(&[400, 401, 403, 415, 429]) } }));
    let mut verify_request = accepted(&[400, 401, 403, 429]);
    verify_request.insert("200".into(), json!({ "description": "the address is verified already", "content": { "application/json": { "schema": { "type": "object" } } } }));
    paths.insert("/api/v1/auth/verify/request".into(), json!({ "post": { "operationId": "request_verification", "tags": ["auth"],
        "description": "Sends a new verification link to the caller's address (at most `auth.account_emails_per_hour`).",
        "responses": Value::Object(verify_request) } }));
    paths.insert("/api/v1/auth/verify/confirm".into(), json!({ "post": { "operationId": "confirm_email", "tags": ["auth"], "security": public,
        "description": "Uses a verification or email-change token (single use).",
        "requestBody": body(json!({ "type": "object", "required": ["token"], "additionalProperties": false, "properties": { "token": token } })),
        "responses": ok("200", "the user, verified", &[400, 409, 415, 429]) } }));
    paths.insert("/api/v1/auth/password-reset/request".into(), json!({ "post": { "operationId": "request_password_reset", "tags": ["auth"], "security": public,
        "requestBody": body(json!({ "type": "object", "required": ["email"], "additionalProperties": false, "properties": { "email": { "type": "string", "maxLength": 254 } } })),
        "responses": accepted(&[400, 403, 415, 429]) } }));
    paths.insert("/api/v1/auth/password-reset/confirm".into(), json!({ "post": { "operationId": "confirm_password_reset", "tags": ["auth"], "security": public,
        "description": "Sets a new password with a reset token (single use) and ends every session of the account.",
        "requestBody": body(json!({ "type": "object", "required": ["token", "password"], "additionalProperties": false, "properties": {
            "token": token, "password": { "type": "string", "maxLength": 256 } } })),
        "responses": ok("200", "the user and how many sessions ended", &[400, 415, 429]) } }));
    oidc_paths(paths, &body, &ok, &empty);
    paths.insert("/api/v1/auth/me".into(), json!({ "get": { "operationId": "me", "tags": ["auth"], "responses": ok("200", "the caller and memberships", &[401]) } }));
    let org = path_parameter("org", json!({ "type": "string" }));
    let page = vec![
        query_parameter(
            "after",
            "the `next` value of the previous page",
            json!({ "type": "string" }),
        ),
        query_parameter(
            "limit",
            "page size",
            json!({ "type": "integer", "minimum": 1, "maximum": 500 }),
        ),
    ];
    paths.insert("/api/v1/orgs".into(), json!({
        "get": { "operationId": "list_orgs", "tags": ["orgs"], "parameters": page, "responses": ok("200", "a page of orgs", &[400, 401]) },
        "post": { "operationId": "create_org", "tags": ["orgs"], "requestBody": body(json!({ "type": "object", "required": ["slug", "name"], "additionalProperties": false, "properties": {
            "slug": { "type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,61}[a-z0-9]$" }, "name": { "type": "string", "minLength": 1, "maxLength": 200 } } })),
            "responses": ok("201", "the org", &[400, 401, 403, 409, 415]) }
    }));
    paths.insert("/api/v1/orgs/{org}".into(), json!({
        "get": { "operationId": "get_org", "tags": ["orgs"], "parameters": [org.clone()], "responses": ok("200", "{org, role}", &[401, 403, 404]) },
        "patch": { "operationId": "update_org", "tags": ["orgs"], "parameters": [org.clone()],
            "description": "The org's security settings, by its owners: `require_mfa` (an owner must have a second factor to turn it on).",
            "requestBody": body(json!({ "type": "object", "required": ["require_mfa"], "additionalProperties": false, "properties": { "require_mfa": { "type": "boolean" } } })),
            "responses": ok("200", "{org, role}", &[400, 401, 403, 404, 415]) }
    }));
    let mut members_params = vec![org.clone()];
    members_params.extend(page.clone());
    paths.insert("/api/v1/orgs/{org}/members".into(), json!({
        "get": { "operationId": "list_members", "tags": ["orgs"], "parameters": members_params, "responses": ok("200", "a page of members", &[400, 401, 404]) },
        "post": { "operationId": "add_member", "tags": ["orgs"], "parameters": [org.clone()], "requestBody": body(json!({ "type": "object", "required": ["email", "role"], "additionalProperties": false, "properties": { "email": { "type": "string" }, "role": roles.clone() } })),
            "responses": ok("201", "the member", &[400, 401, 403, 404, 409, 415]) }
    }));
    let user = path_parameter("user", json!({ "type": "string", "format": "uuid" }));
    paths.insert("/api/v1/orgs/{org}/members/{user}".into(), json!({
        "patch": { "operationId": "update_member", "tags": ["orgs"], "parameters": [org.clone(), user.clone()], "requestBody": body(json!({ "type": "object", "required": ["role"], "additionalProperties": false, "properties": { "role": roles.clone() } })),
            "responses": ok("200", "the member", &[400, 401, 403, 404, 409, 415]) },
        "delete": { "operationId": "remove_member", "tags": ["orgs"], "parameters": [org.clone(), user], "responses": empty(&[401, 403, 404, 409]) }
    }));
    paths.insert("/api/v1/orgs/{org}/invitations".into(), json!({
        "get": { "operationId": "list_invitations", "tags": ["orgs"], "parameters": [org.clone()], "responses": ok("200", "the open invitations (at most 500, newest first)", &[401, 403, 404]) },
        "post": { "operationId": "invite", "tags": ["orgs"], "parameters": [org.clone()],
            "description": "Invites an address with a role no higher than the caller's; the email with its link is sent by a job.",
            "requestBody": body(json!({ "type": "object", "required": ["email", "role"], "additionalProperties": false, "properties": { "email": { "type": "string", "maxLength": 254 }, "role": roles.clone() } })),
            "responses": ok("201", "the invitation (its token is only in the email)", &[400, 401, 403, 404, 409, 415, 429]) }
    }));
    let invitation = path_parameter("id", json!({ "type": "string" }));
    paths.insert("/api/v1/orgs/{org}/invitations/{id}".into(), json!({
        "delete": { "operationId": "revoke_invitation", "tags": ["orgs"], "parameters": [org.clone(), invitation.clone()], "responses": empty(&[401, 403, 404]) }
    }));
    paths.insert("/api/v1/orgs/{org}/invitations/{id}/resend".into(), json!({
        "post": { "operationId": "resend_invitation", "tags": ["orgs"], "parameters": [org.clone(), invitation], "responses": ok("202", "a new link is on its way (the old one stops working)", &[401, 403, 404]) }
    }));
    paths.insert("/api/v1/invitations/accept".into(), json!({
        "post": { "operationId": "accept_invitation", "tags": ["orgs"],
            "requestBody": body(json!({ "type": "object", "required": ["token"], "additionalProperties": false, "properties": { "token": { "type": "string", "maxLength": 64 } } })),
            "responses": ok("200", "the user, the org and the role", &[400, 401, 403, 409, 415, 429]) }
    }));
    paths.insert("/api/v1/orgs/{org}/api_keys".into(), json!({
        "get": { "operationId": "list_api_keys", "tags": ["orgs"], "parameters": [org.clone()], "responses": ok("200", "the org's API keys", &[401, 403, 404]) },
        "post": { "operationId": "create_api_key", "tags": ["orgs"], "parameters": [org.clone()], "requestBody": body(json!({ "type": "object", "required": ["name", "role"], "additionalProperties": false, "properties": {
            "name": { "type": "string", "minLength": 1, "maxLength": 100 }, "role": roles, "expires_at": { "type": "string", "format": "date-time" } } })),
            "responses": ok("201", "the key and its token (shown once)", &[400, 401, 403, 404, 415]) }
    }));
    let key = path_parameter("id", json!({ "type": "string", "format": "uuid" }));
    paths.insert("/api/v1/orgs/{org}/api_keys/{id}".into(), json!({
        "delete": { "operationId": "revoke_api_key", "tags": ["orgs"], "parameters": [org, key], "responses": empty(&[401, 403, 404]) }
    }));
    jobs_paths(paths, schemas, app, &org_param());
    let status =
        json!({ "description": "status", "content": { "application/json": { "schema": { "type": "object" } } } });
    paths.insert("/health/live".into(), json!({ "get": { "operationId": "live", "tags": ["operations"], "security": public, "responses": { "200": status } } }));
    paths.insert("/health/ready".into(), json!({ "get": { "operationId": "ready", "tags": ["operations"], "security": public, "responses": { "200": status, "503": status } } }));
    paths.insert("/metrics".into(), json!({ "get": { "operationId": "metrics", "tags": ["operations"], "security": public, "responses": { "200": { "description": "Prometheus text", "content": { "text/plain": { "schema": { "type": "string" } } } } } } }));
}

fn org_param() -> Value {
    path_parameter("org", json!({ "type": "string" }))
}

/// Jobs: enqueue and status, administration, and the external-worker protocol.
fn jobs_paths(paths: &mut Map<String, Value>, schemas: &mut Map<String, Value>, app: &App, org: &Value) {
    let states = json!([
        "available",
        "scheduled",
        "running",
        "retryable",
        "completed",
        "cancelled",
        "dead"
    ]);
    schemas.insert(
        "Job".into(),
        json!({ "type": "object", "required": ["id", "queue", "kind", "state", "attempt", "max_attempts"], "properties": {
            "id": { "type": "integer" }, "queue": { "type": "string" }, "kind": { "type": "string" },
            "org_id": { "type": ["string", "null"], "format": "uuid" }, "created_by": { "type": ["string", "null"], "format": "uuid" },
            "payload": {}, "priority": { "type": "integer" }, "state": { "type": "string", "enum": states.clone() },
            "attempt": { "type": "integer" }, "max_attempts": { "type": "integer" },
            "run_at": { "type": ["string", "null"], "format": "date-time" }, "lease_owner": { "type": ["string", "null"] },
            "lease_expires_at": { "type": ["string", "null"], "format": "date-time" },
            "unique_key": { "type": ["string", "null"] }, "concurrency_key": { "type": ["string", "null"] },
            "errors": { "type": "array", "items": { "type": "object" } }, "result": {}, "progress": {},
            "created_at": { "type": ["string", "null"], "format": "date-time" },
            "started_at": { "type": ["string", "null"], "format": "date-time" },
            "finished_at": { "type": ["string", "null"], "format": "date-time" } } }),
    );
    let kinds: Vec<&str> = app.jobs.kinds.iter().map(|k| k.name.as_str()).collect();
    let body = |schema: Value| json!({ "required": true, "content": { "application/json": { "schema": schema } } });
    let ok = |code: &str, description: &str, errors: &[u16]| {
        let mut responses = error_responses(errors);
        responses.insert(code.into(), json!({ "description": description, "content": { "application/json": { "schema": { "type": "object" } } } }));
        Value::Object(responses)
    };
    let job = |errors: &[u16]| {
        let mut responses = error_responses(errors);
        responses.insert("200".into(), json!({ "description": "the job", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Job" } } } }));
        Value::Object(responses)
    };
    let enqueue = json!({ "type": "object", "required": ["kind"], "additionalProperties": false, "properties": {
        "kind": { "type": "string", "enum": kinds }, "payload": { "type": "object" },
        "priority": { "type": "integer", "minimum": -1000, "maximum": 1000 },
        "delay_ms": { "type": "integer", "minimum": 0 }, "unique_key": { "type": "string", "minLength": 1, "maxLength": 200 } } });
    let filters = vec![
        query_parameter(
            "state",
            "only jobs in this state",
            json!({ "type": "string", "enum": states }),
        ),
        query_parameter("kind", "only jobs of this kind", json!({ "type": "string" })),
        query_parameter("queue", "only jobs of this queue", json!({ "type": "string" })),
        query_parameter(
            "limit",
            "page size",
            json!({ "type": "integer", "minimum": 1, "maximum": 500 }),
        ),
        query_parameter(
            "before",
            "the `next` value of the previous page",
            json!({ "type": "string" }),
        ),
    ];
    let mut org_filters = vec![org.clone()];
    org_filters.extend(filters.clone());
    paths.insert("/api/v1/orgs/{org}/jobs".into(), json!({
        "get": { "operationId": "list_org_jobs", "tags": ["jobs"], "parameters": org_filters, "responses": ok("200", "a page of the org's jobs", &[400, 401, 403, 404]) },
        "post": { "operationId": "enqueue_job", "tags": ["jobs"], "parameters": [org.clone()], "requestBody": body(enqueue.clone()),
            "responses": { "201": { "description": "enqueued" }, "200": { "description": "a job with this unique key was already waiting" },
                "400": error_responses(&[400])["400"], "401": error_responses(&[401])["401"], "403": error_responses(&[403])["403"], "404": error_responses(&[404])["404"] } }
    }));
    let id = path_parameter("id", json!({ "type": "integer" }));
    paths.insert("/api/v1/jobs/{id}".into(), json!({ "get": { "operationId": "get_job", "tags": ["jobs"], "parameters": [id.clone()], "responses": job(&[401, 404]) } }));
    paths.insert("/api/v1/jobs/{id}/events".into(), json!({ "get": {
        "operationId": "job_events", "tags": ["jobs", "realtime"],
        "summary": "Follow a job's state and progress (Server-Sent Events)",
        "description": "Sends a `job` event (the job as `GET /jobs/{id}` returns it) when it changes; the final state is the last event, with id `done`, then `end`. A client that reconnects with `Last-Event-ID: done` gets 204 (an EventSource stops). Other closing events: `revoked`, `lost`, `shutdown` (see docs/REALTIME.md).",
        "parameters": [id.clone(), last_event_id()],
        "responses": stream_responses("the job's events", true) } }));
    paths.insert("/api/v1/jobs/{id}/cancel".into(), json!({ "post": { "operationId": "cancel_job", "tags": ["jobs"], "parameters": [id.clone()], "responses": job(&[401, 404, 409]) } }));
    paths.insert("/api/v1/admin/queues".into(), json!({ "get": { "operationId": "list_queues", "tags": ["jobs"], "responses": ok("200", "every queue's depth by state", &[401, 403]) } }));
    let queue = path_parameter("queue", json!({ "type": "string" }));
    let action = path_parameter("action", json!({ "type": "string", "enum": ["pause", "resume"] }));
    paths.insert("/api/v1/admin/queues/{queue}/{action}".into(), json!({ "post": { "operationId": "pause_queue", "tags": ["jobs"], "parameters": [queue, action], "responses": ok("200", "the queue's pause flag", &[401, 403, 404]) } }));
    paths.insert("/api/v1/admin/jobs".into(), json!({
        "get": { "operationId": "list_jobs", "tags": ["jobs"], "parameters": filters, "responses": ok("200", "a page of jobs", &[400, 401, 403]) },
        "post": { "operationId": "admin_enqueue_job", "tags": ["jobs"], "requestBody": body(enqueue), "responses": ok("201", "enqueued", &[400, 401, 403]) }
    }));
    paths.insert("/api/v1/admin/jobs/{id}".into(), json!({ "delete": { "operationId": "discard_job", "tags": ["jobs"], "parameters": [id.clone()], "responses": { "204": { "description": "discarded" }, "401": error_responses(&[401])["401"], "404": error_responses(&[404])["404"], "409": error_responses(&[409])["409"] } } }));
    let job_action = path_parameter("action", json!({ "type": "string", "enum": ["retry", "cancel"] }));
    paths.insert("/api/v1/admin/jobs/{id}/{action}".into(), json!({ "post": { "operationId": "admin_job_action", "tags": ["jobs"], "parameters": [id.clone(), job_action], "responses": job(&[400, 401, 403, 404, 409]) } }));
    paths.insert("/api/v1/admin/worker_keys".into(), json!({
        "get": { "operationId": "list_worker_keys", "tags": ["jobs"], "responses": ok("200", "the worker keys", &[401, 403]) },
        "post": { "operationId": "create_worker_key", "tags": ["jobs"], "requestBody": body(json!({ "type": "object", "required": ["name", "queues"], "additionalProperties": false, "properties": {
            "name": { "type": "string", "minLength": 1, "maxLength": 100 }, "queues": { "type": "array", "items": { "type": "string" }, "minItems": 1 } } })),
            "responses": ok("201", "the key and its token (shown once)", &[400, 401, 403]) }
    }));
    let key = path_parameter("id", json!({ "type": "string", "format": "uuid" }));
    paths.insert("/api/v1/admin/worker_keys/{id}".into(), json!({ "delete": { "operationId": "revoke_worker_key", "tags": ["jobs"], "parameters": [key], "responses": { "204": { "description": "revoked" }, "401": error_responses(&[401])["401"], "404": error_responses(&[404])["404"] } } }));
    paths.insert("/api/v1/workers/claim".into(), json!({ "post": { "operationId": "worker_claim", "tags": ["workers"],
        "requestBody": body(json!({ "type": "object", "required": ["queue", "worker"], "additionalProperties": false, "properties": {
            "queue": { "type": "string" }, "worker": { "type": "string", "minLength": 1, "maxLength": 100 },
            "kinds": { "type": "array", "items": { "type": "string" } }, "limit": { "type": "integer", "minimum": 1, "maximum": 100 },
            "wait_ms": { "type": "integer", "minimum": 0 }, "lease_ms": { "type": "integer", "minimum": 1000 } } })),
        "responses": ok("200", "claimed jobs, each with its attempt (the fencing token)", &[400, 401, 403, 404]) } }));
    let settle = path_parameter(
        "action",
        json!({ "type": "string", "enum": ["heartbeat", "progress", "complete", "fail"] }),
    );
    paths.insert("/api/v1/workers/jobs/{id}/{action}".into(), json!({ "post": { "operationId": "worker_settle", "tags": ["workers"], "parameters": [id, settle],
        "requestBody": body(json!({ "type": "object", "required": ["attempt"], "additionalProperties": false, "properties": {
            "attempt": { "type": "integer" }, "result": {}, "error": { "type": "string" }, "retry": { "type": "boolean" },
            "lease_ms": { "type": "integer" }, "progress": {} } })),
        "responses": ok("200", "the job's state", &[400, 401, 404, 409]) } }));
}

/// The `Last-Event-ID` header a reconnecting client sends.
fn last_event_id() -> Value {
    json!({ "name": "Last-Event-ID", "in": "header", "required": false,
        "description": "the id of the last event received: the stream resumes after it (400 `bad_event_id` if it is not an id Keel sent)",
        "schema": { "type": "string", "maxLength": 64 } })
}

/// A stream's answers: 200 `text/event-stream`, and its refusals before any event.
fn stream_responses(description: &str, done: bool) -> Map<String, Value> {
    let mut responses = error_responses(&[400, 401, 403, 404, 503]);
    responses.insert(
        "200".into(),
        json!({ "description": description, "content": { "text/event-stream": { "schema": { "type": "string" } } } }),
    );
    if done {
        responses.insert(
            "204".into(),
            json!({ "description": "the client already saw the job's final state" }),
        );
    }
    responses
}

/// The realtime streams of a collection and of one of its records.
fn event_paths(name: &str, base_params: &[Value]) -> (Value, Value) {
    let events = "`created` and `updated` (data `{\"id\", \"record\"}`, the record as a list renders it), `deleted` (`{\"id\"}`), `bulk` (an import or bulk delete: reload); first `ready` (and `reset` when the client must reload); closing events `revoked`, `lost`, `shutdown`, `end`. Event ids are `XID-SEQ` positions; see docs/REALTIME.md.";
    let fields = query_parameter("fields", "comma-separated fields to send", json!({ "type": "string" }));
    let expand = query_parameter(
        "expand",
        "comma-separated relation fields to embed",
        json!({ "type": "string" }),
    );
    let mut collection_params = base_params.to_vec();
    collection_params.push(query_parameter(
        "filter",
        "only records matching this filter expression",
        json!({ "type": "string", "maxLength": 4096 }),
    ));
    collection_params.push(fields.clone());
    collection_params.push(expand.clone());
    collection_params.push(last_event_id());
    let mut record_params = base_params.to_vec();
    record_params.push(path_parameter("id", json!({ "type": "string", "format": "uuid" })));
    record_params.extend([fields, expand, last_event_id()]);
    (
        json!({ "get": { "operationId": format!("events_{name}"), "tags": [name, "realtime"],
            "summary": format!("Follow changes to {name} (Server-Sent Events)"),
            "description": format!("Every change to a record the caller may list and the filter matches, in commit order. {events}"),
            "parameters": collection_params, "responses": stream_responses("the collection's events", false) } }),
        json!({ "get": { "operationId": format!("record_events_{name}"), "tags": [name, "realtime"],
            "summary": "Follow changes to one record (Server-Sent Events)",
            "description": format!("Changes to one record the caller may view; its deletion ends the stream (`deleted`, then `end`). {events}"),
            "parameters": record_params, "responses": stream_responses("the record's events", false) } }),
    )
}

fn update_params_for_delete(item_params: &[Value]) -> Vec<Value> {
    let mut params = item_params.to_vec();
    params.push(json!({ "name": "If-Match", "in": "header", "required": false, "schema": { "type": "string" } }));
    params
}

fn pascal(name: &str) -> String {
    name.split('_')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect(),
                None => String::new(),
            }
        })
        .collect()
}
