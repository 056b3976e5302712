//! Every route of the API and the layers every request goes through, outermost last.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;

use crate::http::state::AppState;
use crate::routes;

/// Builds the router for a state.
pub fn router(state: AppState) -> Router {
    use routes::{auth, bulk, files, jobs, oidc, ops, orgs, realtime, records};
    let api = Router::new()
        .route("/auth/signup", post(auth::signup))
        .route("/auth/login", post(auth::login))
        .route("/auth/logout", post(auth::logout))
        .route("/auth/logout-all", post(auth::logout_all))
        .route("/auth/password", post(auth::change_password))
        .route("/auth/me", get(auth::me))
        .route("/auth/email", post(auth::email_change))
        .route("/auth/mfa", get(auth::mfa_status).post(auth::mfa_complete))
        .route("/auth/mfa/totp/enroll", post(auth::totp_enroll))
        .route("/auth/mfa/totp/confirm", post(auth::totp_confirm))
        .route("/auth/mfa/totp/disable", post(auth::totp_disable))
        .route("/auth/sessions", get(auth::sessions))
        .route("/auth/sessions/revoke-others", post(auth::revoke_other_sessions))
        .route("/auth/sessions/{id}", axum::routing::delete(auth::revoke_session))
        .route("/auth/verify/request", post(auth::verify_request))
        .route("/auth/verify/confirm", post(auth::verify_confirm))
        .route("/auth/password-reset/request", post(auth::reset_request))
        .route("/auth/password-reset/confirm", post(auth::reset_confirm))
        .route("/auth/oidc/providers", get(oidc::providers))
        .route("/auth/oidc/identities", get(oidc::identities))
        .route("/auth/oidc/exchange", post(oidc::exchange))
        .route("/auth/oidc/{provider}/start", get(oidc::start))
        .route("/auth/oidc/{provider}/callback", get(oidc::callback))
        .route("/auth/oidc/{provider}/link", post(oidc::link).delete(oidc::unlink))
        .route("/openapi.json", get(ops::openapi))
        .route("/schema", get(crate::console::schema::schema))
        .route("/orgs", get(orgs::list).post(orgs::create))
        .route("/orgs/{org}", get(orgs::show).patch(orgs::update))
        .route("/orgs/{org}/members", get(orgs::members).post(orgs::add_member))
        .route(
            "/orgs/{org}/members/{user}",
            axum::routing::patch(orgs::update_member).delete(orgs::remove_member),
        )
        .route("/orgs/{org}/api_keys", get(orgs::list_keys).post(orgs::create_key))
        .route("/orgs/{org}/invitations", get(orgs::invitations).post(orgs::invite))
        .route(
            "/orgs/{org}/invitations/{id}",
            axum::routing::delete(orgs::revoke_invitation),
        )
        .route("/orgs/{org}/invitations/{id}/resend", post(orgs::resend_invitation))
        .route("/invitations/accept", post(auth::accept_invitation))
        .route("/orgs/{org}/api_keys/{id}", axum::routing::delete(orgs::revoke_key))
        .route("/orgs/{org}/jobs", get(jobs::org_list).post(jobs::org_enqueue))
        .route("/jobs/{id}", get(jobs::status))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .route("/jobs/{id}/events", get(realtime::job_events))
        .route("/admin/overview", get(ops::admin_overview))
        .route("/admin/audit", get(crate::console::audit::all))
        .route("/orgs/{org}/audit", get(crate::console::audit::of_org))
        .route("/admin/errors", get(ops::admin_errors))
        .route("/admin/alerts", get(ops::admin_alerts))
        .route("/admin/backups", get(ops::admin_backups).post(ops::admin_backup_take))
        .route("/admin/backups/{name}/verify", post(ops::admin_backup_verify))
        .route("/admin/keys", get(ops::admin_keys))
        .route("/admin/keys/rotate", post(ops::admin_keys_rotate))
        .route("/admin/keys/{id}/retire", post(ops::admin_key_retire))
        .route("/admin/migrations", get(ops::admin_migrations))
        .route("/admin/config", get(ops::admin_config))
        .route("/admin/queues", get(jobs::admin_queues))
        .route("/admin/schedules", get(jobs::admin_schedules))
        .route("/admin/queues/{queue}/{action}", post(jobs::admin_pause))
        .route("/admin/jobs", get(jobs::admin_list).post(jobs::admin_enqueue))
        .route("/admin/jobs/{id}", axum::routing::delete(jobs::admin_discard))
        .route("/admin/jobs/{id}/{action}", post(jobs::admin_action))
        .route(
            "/admin/worker_keys",
            get(jobs::worker_key_list).post(jobs::worker_key_create),
        )
        .route(
            "/admin/worker_keys/{id}",
            axum::routing::delete(jobs::worker_key_revoke),
        )
        .route("/workers/claim", post(jobs::worker_claim))
        .route("/workers/jobs/{id}/{action}", post(jobs::worker_settle))
        .route(
            "/orgs/{org}/{collection}",
            get(records::org_list)
                .post(records::org_create)
                .delete(bulk::org_delete_many),
        )
        .route("/orgs/{org}/usage", get(files::org_usage))
        .route("/orgs/{org}/{collection}/import", post(bulk::org_import))
        .route("/orgs/{org}/{collection}/{id}/files/{field}", post(files::org_upload))
        .route(
            "/orgs/{org}/{collection}/{id}/files/{field}/{file}",
            get(files::org_download).delete(files::org_remove),
        )
        .route(
            "/orgs/{org}/{collection}/{id}/files/{field}/{file}/link",
            post(files::org_link),
        )
        .route("/files/{file}", get(files::signed_download))
        .route(
            "/orgs/{org}/{collection}/batches/{batch}",
            axum::routing::delete(bulk::org_delete_batch),
        )
        .route("/orgs/{org}/{collection}/aggregate", get(records::org_aggregate))
        .route("/orgs/{org}/{collection}/export", get(records::org_export))
        .route("/orgs/{org}/{collection}/events", get(realtime::org_events))
        .route("/orgs/{org}/{collection}/{id}/events", get(realtime::org_record_events))
        .route(
            "/orgs/{org}/{collection}/{id}",
            get(records::org_get)
                .patch(records::org_update)
                .delete(records::org_delete),
        )
        .route(
            "/global/{collection}",
            get(records::global_list)
                .post(records::global_create)
                .delete(bulk::global_delete_many),
        )
        .route("/global/{collection}/import", post(bulk::global_import))
        .route("/global/{collection}/{id}/files/{field}", post(files::global_upload))
        .route(
            "/global/{collection}/{id}/files/{field}/{file}",
            get(files::global_download).delete(files::global_remove),
        )
        .route(
            "/global/{collection}/{id}/files/{field}/{file}/link",
            post(files::global_link),
        )
        .route(
            "/global/{collection}/batches/{batch}",
            axum::routing::delete(bulk::global_delete_batch),
        )
        .route("/global/{collection}/aggregate", get(records::global_aggregate))
        .route("/global/{collection}/export", get(records::global_export))
        .route("/global/{collection}/events", get(realtime::global_events))
        .route("/global/{collection}/{id}/events", get(realtime::global_record_events))
        .route(
            "/global/{collection}/{id}",
            get(records::global_get)
                .patch(records::global_update)
                .delete(records::global_delete),
        );
    let body_limit = state.config.server.body_limit_bytes;
    Router::new()
        .nest("/api/v1", api)
        .route("/_/auth/verify", get(auth::verify_page).post(auth::verify_submit))
        .route("/_/auth/reset", get(auth::reset_page).post(auth::reset_submit))
        .route(
            "/_/auth/invitation",
            get(auth::invitation_page).post(auth::invitation_submit),
        )
        .merge(crate::console::routes())
        .route("/health/live", get(ops::live))
        .route("/health/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(crate::http::context::panic_response))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::cache::layer::cache,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::console::audit::layer,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::console::fence,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::protect::layer::protect,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::browser::guard,
        ))
        .layer(tower::util::option_layer(crate::auth::browser::cors(&state.config)))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::http::context::request_context,
        ))
        .with_state(state)
}
