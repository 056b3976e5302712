//! Checks across collections, once every collection is read.

use super::{Entry, Reader};
use crate::model::*;

pub(super) fn check_relations(reader: &mut Reader, collections: &[Collection], entries: &[Entry]) {
    for collection in collections {
        if let Some(timeseries) = &collection.timeseries {
            let span = entries
                .iter()
                .find(|e| e.key == collection.name)
                .and_then(|e| e.key_span.clone());
            for index in collection.indexes.iter().filter(|i| i.unique) {
                if !index.columns.iter().any(|c| c.field == timeseries.field) {
                    reader.problem(
                        span.clone(),
                        &format!("collections.{}.indexes", collection.name),
                        format!(
                            "unique index {} must include the time field '{}' (uniqueness is per partition)",
                            index.name, timeseries.field
                        ),
                    );
                }
            }
        }
        let span = entries
            .iter()
            .find(|e| e.key == collection.name)
            .and_then(|e| e.key_span.clone());
        for field in &collection.fields {
            if let Some(lookup) = &field.lookup {
                let usable = match &field.kind {
                    FieldKind::Relation {
                        to: RelationTarget::Collection(target),
                        ..
                    } => collections
                        .iter()
                        .find(|c| &c.name == target)
                        .and_then(|c| c.field(lookup))
                        .is_some_and(|f| {
                            f.unique
                                && matches!(
                                    f.kind,
                                    FieldKind::Text { .. } | FieldKind::Select { .. } | FieldKind::Integer { .. }
                                )
                        }),
                    _ => false,
                };
                if !usable {
                    reader.problem(
                        span.clone(),
                        &format!("collections.{}.fields.{}.lookup", collection.name, field.name),
                        format!("'{lookup}' must be a unique text or integer field of the related collection (users are looked up by email)"),
                    );
                }
            }
            if let FieldKind::Relation {
                to: RelationTarget::Collection(target),
                ..
            } = &field.kind
                && let Some(target) = collections.iter().find(|c| &c.name == target)
                && target.timeseries.is_some()
            {
                reader.problem(
                    span.clone(),
                    &format!("collections.{}.fields.{}.to", collection.name, field.name),
                    format!("'{}' is a time series; records cannot point at one (its ids are unique only with the time field)", target.name),
                );
            }
            if let FieldKind::Relation {
                to: RelationTarget::Collection(target),
                ..
            } = &field.kind
                && let Some(target) = collections.iter().find(|c| &c.name == target)
                && collection.global
                && !target.global
            {
                reader.problem(
                    span.clone(),
                    &format!("collections.{}.fields.{}.to", collection.name, field.name),
                    format!(
                        "a global collection cannot relate to the tenant collection '{}'",
                        target.name
                    ),
                );
            }
        }
    }
}
