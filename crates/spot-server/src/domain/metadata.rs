//! The vendor's `metadata` of items and locations: an object of the application's searchable
//! properties, kept beside the resources — one row per resource that has any
//! ([`Table::Metadata`], keyed by the resource's id: ids are unique across the tables) — so
//! the resources' own rows, encodings and hot paths stay as they are. Set through the API
//! (`POST`, `PUT`), so flushed with the next commit like the change that set it; dropped
//! with its resource.

use std::sync::Arc;

use serde_json::Value;
use spot_protocol::Object;

use super::json::WriteJson;
use super::views::PutError;
use super::{Domain, Table};
use crate::ids::Id;

impl WriteJson for Object {}

impl Domain {
    /// The metadata of the item or location `id` (`None`: none, shown as `{}`).
    pub(super) fn metadata_of(&self, id: Id) -> Option<Arc<Object>> {
        if self.metadata.is_empty() {
            return None;
        }
        self.metadata.get_shared(id)
    }

    /// Checks a `metadata` value of a body: an object, or `null` (none).
    pub(super) fn check_metadata(value: &Value) -> Result<(), PutError> {
        match value {
            Value::Object(_) | Value::Null => Ok(()),
            _ => Err(PutError::BadField {
                field: "metadata".into(),
                reason: "must be an object (or null: none)".into(),
            }),
        }
    }

    /// Sets the metadata of `id` (an empty object or `null` removes it); flushed with the
    /// next commit.
    pub(super) fn set_metadata(&mut self, id: Id, value: &Value) {
        match value.as_object().filter(|o| !o.is_empty()) {
            Some(metadata) => {
                self.metadata.insert(id, metadata.clone());
                self.deleted.remove(&(Table::Metadata, id));
                self.dirty.insert((Table::Metadata, id));
            }
            None => self.drop_metadata(id),
        }
        self.must_flush = true;
    }

    /// Drops the metadata of `id` (its resource is deleted, or it was cleared).
    pub(super) fn drop_metadata(&mut self, id: Id) {
        if self.metadata.remove(id).is_some() {
            self.dirty.remove(&(Table::Metadata, id));
            self.deleted.insert((Table::Metadata, id));
            self.must_flush = true;
        }
    }

    /// Loads a stored metadata row (see [`Domain::load`]).
    pub(super) fn load_metadata(&mut self, id: Id, metadata: Object) {
        self.metadata.insert(id, metadata);
    }
}
