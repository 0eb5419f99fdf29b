//! What the REST API reads and changes: resources of a collection as JSON
//! ([`Domain::collection`], [`Domain::get`]) and the fields an application may set
//! ([`Domain::put`]).

use serde::Serialize;
use serde_json::Value;
use spot_protocol::Object;

use super::derived::Topic;
use super::{topics, Domain, Table};
use crate::ids::{Id, IdMap};

/// A REST change that cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PutError {
    /// No such resource.
    #[error("{collection} {id:?} not found")]
    NotFound {
        /// The collection.
        collection: String,
        /// The id asked for.
        id: String,
    },
    /// The collection does not accept PUT.
    #[error("PUT is not allowed on {0}")]
    MethodNotAllowed(String),
    /// A field that cannot be set, or a value of the wrong type.
    #[error("field {field:?}: {reason}")]
    BadField {
        /// The field.
        field: String,
        /// Why.
        reason: String,
    },
}

impl Domain {
    /// Changes a resource through the API (`PUT /api/<collection>/<id>`); returns it.
    pub fn put(
        &mut self,
        collection: &str,
        id: &str,
        body: &Object,
        now: i64,
    ) -> Result<Value, PutError> {
        let not_found = || PutError::NotFound {
            collection: collection.to_string(),
            id: id.to_string(),
        };
        let bad = |field: &str, reason: &str| PutError::BadField {
            field: field.to_string(),
            reason: reason.to_string(),
        };
        let (table, real_id) = match collection {
            "spots" => {
                let real_id = self.resolve_spot_id(id).ok_or_else(not_found)?;
                // Validate everything before changing anything.
                for (k, v) in body {
                    match k.as_str() {
                        "config_request" | "firmware_request" | "antenna_report_locations"
                            if v.is_object() || v.is_null() => {}
                        "config_request" | "firmware_request" | "antenna_report_locations" => {
                            return Err(bad(k, "must be an object or null"))
                        }
                        "report_location" => match v.as_str() {
                            Some(l) if self.locations.get_str(l).is_some() => {}
                            _ => return Err(bad(k, "must be the id of an existing location")),
                        },
                        _ => return Err(bad(k, "cannot be set")),
                    }
                }
                let spot = self.spots.get_mut(real_id).ok_or_else(not_found)?;
                for (k, v) in body {
                    match k.as_str() {
                        "config_request" => spot.config_request = v.as_object().cloned(),
                        "firmware_request" => spot.firmware_request = v.as_object().cloned(),
                        "antenna_report_locations" => {
                            spot.antenna_report_locations =
                                v.as_object().cloned().unwrap_or_default()
                        }
                        "report_location" => spot.report_location = v.as_str().and_then(Id::parse),
                        _ => {}
                    }
                }
                spot.time_updated = now;
                (Table::Spots, real_id)
            }
            "locations" | "items" => {
                for (k, v) in body {
                    match k.as_str() {
                        "custom" => {}
                        "label" if v.is_string() || v.is_null() => {}
                        "label" => return Err(bad(k, "must be a string or null")),
                        _ => return Err(bad(k, "cannot be set")),
                    }
                }
                let real_id = Id::parse(id).ok_or_else(not_found)?;
                if collection == "locations" {
                    let l = self.locations.get_mut(real_id).ok_or_else(not_found)?;
                    for (k, v) in body {
                        match k.as_str() {
                            "label" => l.label = v.as_str().unwrap_or_default().to_string(),
                            _ => l.custom = v.clone(),
                        }
                    }
                    l.time_updated = now;
                    (Table::Locations, real_id)
                } else {
                    let i = self.items.get_mut(real_id).ok_or_else(not_found)?;
                    for (k, v) in body {
                        match k.as_str() {
                            "label" => i.label = boxed(v),
                            _ => i.custom = boxed(v),
                        }
                    }
                    i.time_updated = now;
                    (Table::Items, real_id)
                }
            }
            _ => return Err(PutError::MethodNotAllowed(collection.to_string())),
        };
        self.dirty.insert((table, real_id));
        self.must_flush = true;
        let value = self.get(collection, &real_id.hex()).unwrap_or(Value::Null);
        let data = value.to_string();
        let topic = topics::api_change(collection, real_id, "updated", "PUT");
        if let Some((id, mut doc)) = self.log_start(&Topic::Text(&topic), None, now) {
            doc.push_str(&data);
            self.log_end(id, now, doc);
        }
        Ok(value)
    }

    /// Every resource of a collection as JSON, in id order; `None` for an unknown collection.
    pub fn collection(&self, collection: &str) -> Option<Vec<Value>> {
        fn all<T: Serialize>(m: &IdMap<T>) -> Vec<Value> {
            m.values()
                .filter_map(|v| serde_json::to_value(v).ok())
                .collect()
        }
        Some(match collection {
            "spots" => all(&self.spots),
            "locations" => all(&self.locations),
            "items" => all(&self.items),
            "presences" => all(&self.presences),
            "events" => self
                .events
                .iter()
                .filter_map(|e| serde_json::from_str(&e.doc).ok())
                .collect(),
            _ => return None,
        })
    }

    /// One resource as JSON (spots also by serial number).
    pub fn get(&self, collection: &str, id: &str) -> Option<Value> {
        match collection {
            "spots" => self
                .resolve_spot_id(id)
                .and_then(|id| self.spots.get(id))
                .and_then(|v| serde_json::to_value(v).ok()),
            "locations" => self
                .locations
                .get_str(id)
                .and_then(|v| serde_json::to_value(v).ok()),
            "items" => self
                .items
                .get_str(id)
                .and_then(|v| serde_json::to_value(v).ok()),
            "presences" => self
                .presences
                .get_str(id)
                .and_then(|v| serde_json::to_value(v).ok()),
            "events" => Id::parse(id)
                .and_then(|id| self.events.binary_search_by(|e| e.id.cmp(&id)).ok())
                .and_then(|i| serde_json::from_str(&self.events[i].doc).ok()),
            _ => None,
        }
    }
}

/// A JSON value as an optional field (`null`: none).
fn boxed(value: &Value) -> Option<Box<Value>> {
    match value {
        Value::Null => None,
        v => Some(Box::new(v.clone())),
    }
}
