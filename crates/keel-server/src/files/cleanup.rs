//! The cleanup job with files: file retention and files whose record is gone.

use chrono::Utc;
use keel_query::SqlValue;
use keel_query::value::truncate_micros;
use keel_spec::{Action, Collection, FieldKind};
use keel_store::files::{self, StoredFile};
use keel_store::records::{WriteScope, parse_object};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{file_id_of, write_field};

/// The cleanup job with files: the built-in cleanup (job retention, time series, spooled
/// uploads), then file retention (`retention` on a file field) and files whose record is gone
/// (deleted by a database cascade). At most `FILES_PER_RUN` files per run; the rest wait for
/// the next run.
pub fn cleanup_handler(storage: std::sync::Arc<crate::files::storage::Storage>) -> keel_jobs::HandlerFn {
    std::sync::Arc::new(move |context: keel_jobs::JobContext| {
        let storage = storage.clone();
        Box::pin(async move {
            let base = keel_jobs::handlers::run(keel_spec::Handler::Cleanup, context.clone()).await?;
            let files = expire_files(&context, &storage)
                .await
                .map_err(|e| keel_jobs::JobFailure::retry(format!("file retention failed: {e}")))?;
            // Failed-login rows a day old whose lock has ended.
            let day_ago = chrono::Utc::now() - chrono::Duration::days(1);
            let logins = keel_store::security::login_prune(&context.db, day_ago)
                .await
                .map_err(|e| keel_jobs::JobFailure::retry(format!("login-failure pruning failed: {e}")))?;
            let deferred = deferred_deletes(&context.db, &storage)
                .await
                .map_err(|e| keel_jobs::JobFailure::retry(format!("deferred file deletes failed: {e}")))?;
            let backups = keel_store::backups::backup_history_prune(&context.db, 1_000)
                .await
                .map_err(|e| keel_jobs::JobFailure::retry(format!("backup history pruning failed: {e}")))?;
            // Error groups not seen for 30 days.
            let errors = keel_store::errors::errors_prune(&context.db, chrono::Utc::now() - chrono::Duration::days(30))
                .await
                .map_err(|e| keel_jobs::JobFailure::retry(format!("error-group pruning failed: {e}")))?;
            // The operators' audit log keeps a year.
            let audit = keel_store::audit::prune(&context.db, chrono::Utc::now() - chrono::Duration::days(365))
                .await
                .map_err(|e| keel_jobs::JobFailure::retry(format!("audit-log pruning failed: {e}")))?;
            let mut result = base.unwrap_or_else(|| json!({}));
            result["audit_entries_pruned"] = json!(audit);
            result["error_groups_pruned"] = json!(errors);
            result["files"] = files;
            result["deferred_deletes"] = json!(deferred);
            result["backup_runs_pruned"] = json!(backups);
            result["login_failures_pruned"] = json!(logins);
            Ok(Some(result))
        })
    })
}

const FILES_PER_RUN: i64 = 1_000;

async fn expire_files(
    context: &keel_jobs::JobContext,
    storage: &crate::files::storage::Storage,
) -> Result<Value, keel_store::StoreError> {
    let db = &context.db;
    let dialect = db.dialect();
    let mut expired = 0u64;
    let mut orphans = 0u64;
    for collection in context.schema.app.collections.iter().filter(|c| c.has_files()) {
        let table = keel_query::value::ident(&collection.table());
        // Files whose record no longer exists.
        let sql = db.portable(
            &format!(
                "SELECT f.id FROM keel_files f WHERE f.collection = $1 AND NOT EXISTS (SELECT 1 FROM {table} r WHERE r.id = f.record) LIMIT {FILES_PER_RUN}"
            ),
            vec![SqlValue::Text(collection.name.clone())],
        );
        let ids: Vec<Uuid> = db
            .query_primary(&sql)
            .await?
            .into_iter()
            .filter_map(|row| row.first().and_then(|c| c.uuid()))
            .collect();
        if !ids.is_empty() {
            let mut tx = db.begin().await?;
            let removed = files::file_delete(&mut tx, &ids).await?;
            tx.commit().await?;
            orphans += removed.len() as u64;
            let keys: Vec<String> = removed.into_iter().map(|r| r.object_key).collect();
            storage.delete_after_commit(db, &keys).await;
        }
        // Files past their field's retention.
        for field in &collection.fields {
            let FieldKind::File {
                retention_ms: Some(retention),
                ..
            } = &field.kind
            else {
                continue;
            };
            let cutoff = truncate_micros(Utc::now() - chrono::Duration::milliseconds(*retention as i64));
            let sql = keel_store::db::portable(
                dialect,
                &format!(
                    "SELECT id FROM keel_files WHERE collection = $1 AND field = $2 AND created_at < $3 ORDER BY created_at LIMIT {FILES_PER_RUN}"
                ),
                vec![
                    SqlValue::Text(collection.name.clone()),
                    SqlValue::Text(field.name.clone()),
                    SqlValue::Datetime(cutoff),
                ],
            );
            for row in db.query_primary(&sql).await? {
                let Some(id) = row.first().and_then(|c| c.uuid()) else {
                    continue;
                };
                if let Some(file) = files::file_get(db, id).await? {
                    expire_file(context, storage, collection, &file).await?;
                    expired += 1;
                }
            }
        }
    }
    Ok(json!({ "expired": expired, "orphans": orphans }))
}

/// Removes one file past its retention from its record (an update by the system, logged).
async fn expire_file(
    context: &keel_jobs::JobContext,
    storage: &crate::files::storage::Storage,
    collection: &Collection,
    file: &StoredFile,
) -> Result<(), keel_store::StoreError> {
    let caller = keel_query::Caller {
        context: keel_query::Context {
            user: None,
            role: keel_query::RoleSource::Rank(None),
            now: truncate_micros(Utc::now()),
        },
        superuser: true,
    };
    let builder = keel_query::Builder {
        schema: &context.schema,
        collection,
        dialect: context.db.dialect(),
        caller: &caller,
        scope: file.org.map_or(keel_query::Scope::Unscoped, keel_query::Scope::Org),
    };
    let mut tx = context.db.begin().await?;
    if let Some(json) = tx
        .query_one(&builder.get(file.record, Action::Update, &[], None, true))
        .await?
        .and_then(|r| r.into_iter().next())
        .and_then(|c| c.into_text())
    {
        let record = parse_object(&json);
        let value = match record.get(&file.field) {
            Some(Value::Array(items)) => Value::Array(
                items
                    .iter()
                    .filter(|m| file_id_of(m) != Some(file.id))
                    .cloned()
                    .collect(),
            ),
            _ => Value::Null,
        };
        let actor = keel_store::records::Actor {
            user: None,
            api_key: None,
            request_id: format!("job-{}", context.id),
        };
        let scope = WriteScope {
            builder: &builder,
            org: file.org,
            actor: &actor,
        };
        write_field(&mut tx, &scope, &record, &file.field, value, Some("retention")).await?;
    }
    let removed = files::file_delete(&mut tx, &[file.id]).await?;
    tx.commit().await?;
    let keys: Vec<String> = removed.into_iter().map(|r| r.object_key).collect();
    storage.delete_after_commit(&context.db, &keys).await;
    Ok(())
}

/// Deletes the objects whose deletion waited for a backup, once none runs.
async fn deferred_deletes(
    db: &keel_store::Db,
    storage: &crate::files::storage::Storage,
) -> Result<u64, keel_store::StoreError> {
    use keel_store::backups;
    let mut deleted = 0;
    loop {
        if backups::backup_running(db, Utc::now()).await? {
            return Ok(deleted);
        }
        let keys = backups::deferred_deletes(db, FILES_PER_RUN).await?;
        if keys.is_empty() {
            return Ok(deleted);
        }
        // Checked again per batch: a backup that started meanwhile stops the deleting.
        storage.delete_all(&keys).await;
        backups::deferred_forget(db, &keys).await?;
        deleted += keys.len() as u64;
    }
}
