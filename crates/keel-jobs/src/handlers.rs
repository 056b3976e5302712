//! Built-in handlers (J10): noop, command (with a timeout that kills the process group and
//! CPU/memory limits), http (webhooks, feeds written into a collection), email over SMTP, and
//! cleanup (retention of finished jobs).

use std::process::Stdio;
use std::time::Duration;

use keel_spec::Handler;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::context::{HandlerFuture, JobContext, JobFailure};

pub mod email;
mod http;

/// Runs a job with its kind's built-in handler.
pub fn run(handler: Handler, context: JobContext) -> HandlerFuture {
    Box::pin(async move {
        match handler {
            Handler::Noop => Ok(None),
            Handler::External => Err(JobFailure::permanent(
                "an external job was claimed by an in-process worker (its queue needs concurrency = 0)",
            )),
            Handler::Command {
                program,
                cpu_seconds,
                memory_bytes,
            } => command(&context, &program, cpu_seconds, memory_bytes).await,
            Handler::Cleanup => cleanup(&context).await,
            Handler::Import => Err(JobFailure::permanent(
                "the import handler is registered by the server; this instance has none",
            )),
            Handler::Backup => Err(JobFailure::permanent(
                "the backup handler is registered by the server; this instance has none",
            )),
            Handler::AccountEmail => Err(JobFailure::permanent(
                "the account-email handler is registered by the server; this instance has none",
            )),
            Handler::Http {
                url,
                method,
                headers,
                body,
                into,
                key,
                map,
            } => {
                let request = http::Request {
                    map: &map,
                    url: &url,
                    method: &method,
                    headers: &headers,
                    body: body.as_deref(),
                    into: into.as_deref(),
                    key: key.as_deref(),
                };
                http::run(&context, request).await
            }
            Handler::Email {
                to,
                subject,
                text,
                html,
            } => email::run(&context, &to, &subject, &text, html.as_deref()).await,
        }
    })
}

/// What templates see: the payload, the job, the org, and the user who enqueued the job
/// (`user.email`, `user.name`; empty for jobs no user enqueued). The user is read only when
/// one of `templates` names it.
pub async fn template_root(context: &JobContext, templates: &[&str]) -> Result<Value, JobFailure> {
    let wants_user = templates.iter().any(|t| t.contains("user."));
    let user = match context.created_by.filter(|_| wants_user) {
        Some(id) => keel_store::system::user_by_id(&context.db, id)
            .await
            .map_err(|e| JobFailure::retry(format!("reading the job's user failed: {e}")))?
            .map(|u| serde_json::json!({"id": u.id, "email": u.email, "name": u.name})),
        None => None,
    };
    Ok(serde_json::json!({
        "payload": context.payload_value(),
        "job": {"id": context.id, "kind": context.kind.name, "attempt": context.attempt},
        "org": context.org_id,
        "user": user,
    }))
}

/// Kills a process group when dropped: a cancelled or timed-out job leaves no process behind.
struct GroupGuard(Option<rustix::process::Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(group) = self.0.take() {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
}

/// The most stdout kept as the result, and stderr kept for the error.
const STDOUT_BYTES: usize = 1 << 20;
const STDERR_BYTES: usize = 16 << 10;

async fn read_capped(mut reader: impl AsyncRead + Unpin, cap: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                // Keep the tail (the end of stderr says what went wrong).
                kept.extend_from_slice(&buffer[..n]);
                if kept.len() > cap {
                    kept.drain(..kept.len() - cap);
                }
            }
        }
    }
}

/// Runs `program` in its own process group with the payload on stdin. Exit 0 completes the
/// job (stdout, if JSON, is the result); any other exit fails it with stderr's tail.
async fn command(
    context: &JobContext,
    program: &[String],
    cpu_seconds: Option<u64>,
    memory_bytes: Option<u64>,
) -> Result<Option<Value>, JobFailure> {
    // Limits are set by the shell in the child, then it becomes the program (`exec`).
    let mut limits = String::new();
    if let Some(cpu) = cpu_seconds {
        limits.push_str(&format!("ulimit -t {cpu} || exit 125; "));
    }
    if let Some(bytes) = memory_bytes {
        limits.push_str(&format!("ulimit -v {} || exit 125; ", bytes / 1024));
    }
    let mut command = tokio::process::Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(format!("{limits}exec \"$0\" \"$@\""))
        .args(program)
        .env("KEEL_JOB_ID", context.id.to_string())
        .env("KEEL_JOB_KIND", &context.kind.name)
        .env("KEEL_JOB_ATTEMPT", context.attempt.to_string())
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| JobFailure::retry(format!("could not start {}: {e}", program[0])))?;
    let _group = GroupGuard(child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32)));
    if let Some(mut stdin) = child.stdin.take() {
        let payload = context.payload.clone();
        tokio::spawn(async move {
            let _ = stdin.write_all(payload.as_bytes()).await;
        });
    }
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (status, out, err) = tokio::join!(
        child.wait(),
        read_capped(stdout, STDOUT_BYTES),
        read_capped(stderr, STDERR_BYTES)
    );
    let status = status.map_err(|e| JobFailure::retry(format!("waiting for the command failed: {e}")))?;
    if status.success() {
        let text = String::from_utf8_lossy(&out);
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Ok(None);
        }
        return Ok(Some(
            serde_json::from_str(trimmed).unwrap_or_else(|_| Value::String(trimmed.to_string())),
        ));
    }
    let stderr = String::from_utf8_lossy(&err);
    let how = match (status.code(), std::os::unix::process::ExitStatusExt::signal(&status)) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}{}", limit_hint(signal)),
        (None, None) => "ended abnormally".to_string(),
    };
    Err(JobFailure::retry(format!("the command {how}: {}", stderr.trim())))
}

fn limit_hint(signal: i32) -> &'static str {
    match signal {
        9 => " (SIGKILL: out of memory, or its CPU limit)",
        24 => " (SIGXCPU: its CPU limit)",
        _ => "",
    }
}

/// Applies every queue's retention (J8).
async fn cleanup(context: &JobContext) -> Result<Option<Value>, JobFailure> {
    let mut deleted = serde_json::Map::new();
    for queue in &context.schema.app.jobs.queues {
        let retention = keel_store::jobs::Retention {
            keep_completed: queue.keep_completed,
            keep_failed: queue.keep_failed,
            max_age: Duration::from_millis(queue.keep_for_ms),
        };
        let n = keel_store::jobs::job_prune(&context.db, &queue.name, &retention, 5_000)
            .await
            .map_err(|e| JobFailure::retry(format!("pruning {} failed: {e}", queue.name)))?;
        deleted.insert(queue.name.clone(), Value::from(n));
    }
    // Spooled uploads whose import never ran to its end (a crash, a lost lease).
    let spooled = keel_store::uploads::upload_prune(&context.db, Duration::from_secs(24 * 3600))
        .await
        .map_err(|e| JobFailure::retry(format!("pruning uploads failed: {e}")))?;
    // Account-flow links that expired unused.
    let tokens = keel_store::accounts::tokens_prune(&context.db, chrono::Utc::now())
        .await
        .map_err(|e| JobFailure::retry(format!("pruning account tokens failed: {e}")))?;
    // Provider sign-ins that were started and never came back.
    let sign_ins = keel_store::identities::states_prune(&context.db, chrono::Utc::now())
        .await
        .map_err(|e| JobFailure::retry(format!("pruning sign-in states failed: {e}")))?;
    // Changes older than realtime's resume window.
    let before = chrono::Utc::now() - context.config.change_retention;
    let changes = keel_store::changes::prune(&context.db, before)
        .await
        .map_err(|e| JobFailure::retry(format!("pruning the change log failed: {e}")))?;
    Ok(Some(serde_json::json!({
        "deleted": deleted,
        "changes": changes,
        "upload_chunks": spooled,
        "account_tokens": tokens,
        "sign_in_states": sign_ins,
    })))
}
