//! The id of the request being served, in a task-local that `context::request_context` sets
//! for the whole request, so the error envelope and the activity log can read it anywhere.

tokio::task_local! {
    pub(crate) static REQUEST_ID: String;
}

/// The id of the request being served on this task, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(|id| id.clone()).ok()
}
