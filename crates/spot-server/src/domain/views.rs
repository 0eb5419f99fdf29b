//! What the REST API reads and changes: the rows of a collection, shared, for a list to
//! page through after releasing the lock ([`Domain::rows`], [`Row`]: JSON only for what a
//! page returns), one resource as JSON ([`Domain::get`]) and the fields an application may
//! set ([`Domain::put`]).

use std::borrow::Cow;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use serde::ser::{Impossible, SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use spot_protocol::Object;

use super::derived::Topic;
use super::{topics, Domain, Item, ListKind, Location, MemberList, PresenceResource, Spot, Table};
use crate::ids::Id;

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
    /// The change would leave the state inconsistent (e.g. deleting a location spots
    /// report to).
    #[error("{0}")]
    Conflict(String),
    /// A field that cannot be set, or a value of the wrong type.
    #[error("field {field:?}: {reason}")]
    BadField {
        /// The field.
        field: String,
        /// Why.
        reason: String,
    },
}

/// What a REST change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// `PUT /api/<collection>/<id>`: changes settable fields.
    Put,
    /// `POST /api/<collection>`: creates a location or an item.
    Post,
    /// `DELETE /api/<collection>/<id>`: deletes a location, an item or a list.
    Delete,
    /// `POST /api/sets/<lists>/<id>/ids`: adds members to an item or spot list.
    AddMembers,
    /// `DELETE /api/sets/<lists>/<id>/ids/<member>`: removes a member from a list.
    RemoveMember,
}

impl Write {
    /// The HTTP method's name.
    pub fn method(self) -> &'static str {
        match self {
            Write::Put => "PUT",
            Write::Post | Write::AddMembers => "POST",
            Write::Delete | Write::RemoveMember => "DELETE",
        }
    }
}

/// The code type an item created through the API gets for the vendor's `technology`
/// (`rfid`: `EPC Gen2`, as spots send it); another text is taken as the code type itself.
fn code_type_of(technology: &str) -> &str {
    match technology {
        "rfid" => "EPC Gen2",
        "bluetooth" => "BLE",
        "optical" => "Barcode",
        other => other,
    }
}

impl Domain {
    /// A change through the API: `PUT` ([`Domain::put`]), `POST` (creates a location or an
    /// item; `id` is not used) or `DELETE` (of a location no spot reports to and no presence
    /// is at, or of an item that is not present); of an item or spot list, any [`Write`]
    /// (`sets`). Returns the resource as it is now (as it was, for a `DELETE`).
    pub fn write(
        &mut self,
        method: Write,
        collection: &str,
        id: &str,
        body: &Object,
        now: i64,
    ) -> Result<Value, PutError> {
        if let Some(kind) = ListKind::of(collection) {
            return self.write_list(kind, method, id, body, now);
        }
        match method {
            Write::Put => self.put(collection, id, body, now),
            Write::Post => self.create(collection, body, now),
            Write::Delete => self.delete(collection, id, now),
            Write::AddMembers | Write::RemoveMember => {
                Err(PutError::MethodNotAllowed(collection.to_string()))
            }
        }
    }

    /// Logs the API change `action` of a resource with its document as the data.
    pub(super) fn log_api_change(
        &mut self,
        change: (&str, Id, &str, Write),
        doc: &Value,
        now: i64,
    ) {
        let (collection, id, action, method) = change;
        let topic = topics::api_change(collection, id, action, method.method());
        if let Some((event_id, mut text)) = self.log_start(&Topic::Text(&topic), None, now) {
            text.push_str(&doc.to_string());
            self.log_end(event_id, now, text);
        }
    }

    /// `POST /api/locations` (`label`, `custom`) or `POST /api/items` (`code_hex`, and
    /// `technology` or `code_type`, `label`, `custom`).
    fn create(&mut self, collection: &str, body: &Object, now: i64) -> Result<Value, PutError> {
        let bad = |field: &str, reason: &str| PutError::BadField {
            field: field.to_string(),
            reason: reason.to_string(),
        };
        let text = |field: &str| -> Result<Option<&str>, PutError> {
            match body.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(bad(field, "must be a string or null")),
            }
        };
        let allowed: &[&str] = match collection {
            "locations" => &["label", "custom", "metadata"],
            "items" => &[
                "code_hex",
                "technology",
                "code_type",
                "label",
                "custom",
                "metadata",
            ],
            _ => return Err(PutError::MethodNotAllowed(collection.to_string())),
        };
        if let Some(field) = body.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(bad(
                field,
                &format!(
                    "cannot be set on a new {collection} (only {})",
                    allowed.join(", ")
                ),
            ));
        }
        if let Some(metadata) = body.get("metadata") {
            Self::check_metadata(metadata)?;
        }
        let (table, id) = if collection == "locations" {
            let label = text("label")?.unwrap_or_default().to_string();
            let id = self.ids.next(now);
            self.locations.insert(
                id,
                Location {
                    id,
                    label,
                    custom: body.get("custom").cloned().unwrap_or(Value::Null),
                    time_created: now,
                    time_updated: now,
                },
            );
            (Table::Locations, id)
        } else {
            let code = text("code_hex")?
                .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| bad("code_hex", "required: the item's code in hex digits"))?
                .to_string();
            let tech = match (text("code_type")?, text("technology")?) {
                (Some(code_type), _) => code_type.to_string(),
                (None, Some(technology)) => code_type_of(technology).to_string(),
                (None, None) => "EPC Gen2".to_string(),
            };
            if let Some(existing) = self.item_id(&code, &tech) {
                return Err(PutError::Conflict(format!(
                    "an item with code_hex {code:?} and code type {tech:?} exists: {existing}"
                )));
            }
            let id = self.ensure_item(&code, &tech, now, None);
            if let Some(item) = self.items.get_mut(id) {
                item.label = body.get("label").and_then(boxed);
                item.custom = body.get("custom").and_then(boxed);
            }
            (Table::Items, id)
        };
        if let Some(metadata) = body.get("metadata") {
            self.set_metadata(id, metadata);
        }
        self.dirty.insert((table, id));
        self.must_flush = true;
        let value = self.get(collection, &id.hex()).unwrap_or(Value::Null);
        self.log_api_change((collection, id, "created", Write::Post), &value, now);
        Ok(value)
    }

    /// `DELETE /api/locations/{id}` or `DELETE /api/items/{id}`.
    fn delete(&mut self, collection: &str, id: &str, now: i64) -> Result<Value, PutError> {
        let not_found = || PutError::NotFound {
            collection: collection.to_string(),
            id: id.to_string(),
        };
        if !matches!(collection, "locations" | "items") {
            return Err(PutError::MethodNotAllowed(collection.to_string()));
        }
        let real_id = Id::parse(id).ok_or_else(not_found)?;
        let table = match collection {
            "locations" => {
                self.locations.get(real_id).ok_or_else(not_found)?;
                self.location_in_use(real_id)?;
                Table::Locations
            }
            "items" => {
                let item = self.items.get(real_id).ok_or_else(not_found)?;
                if item.is_present {
                    return Err(PutError::Conflict(format!(
                        "item {id} is present: it can be deleted once no spot sees it"
                    )));
                }
                Table::Items
            }
            _ => return Err(PutError::MethodNotAllowed(collection.to_string())),
        };
        let value = self.get(collection, &real_id.hex()).ok_or_else(not_found)?;
        match table {
            Table::Locations => {
                self.locations.remove(real_id);
            }
            _ => {
                self.unindex_item(real_id);
                self.items.remove(real_id);
                self.presences_of_item.remove(&real_id);
                self.leave_lists(real_id, now);
                self.report_deleted(real_id, now);
            }
        }
        self.drop_metadata(real_id);
        self.dirty.remove(&(table, real_id));
        self.deleted.insert((table, real_id));
        self.must_flush = true;
        self.log_api_change((collection, real_id, "deleted", Write::Delete), &value, now);
        Ok(value)
    }

    /// Whether `text` is the id of a location, or of another partition's resource (which
    /// this partition cannot see: a cluster's API node checked it against its replica).
    pub(super) fn known_location(&self, text: &str) -> bool {
        self.locations.get_str(text).is_some() || self.foreign(text).is_some()
    }

    /// The id `text` is, when it is one another partition made ([`crate::partition`]).
    pub(super) fn foreign(&self, text: &str) -> Option<Id> {
        Id::parse(text).filter(|&id| !self.config.partition.owns(id))
    }

    /// Refuses the deletion of location `id` while a spot reports to it or a presence is
    /// at it.
    pub(super) fn location_in_use(&self, id: Id) -> Result<(), PutError> {
        let text = id.hex();
        let reporting = self.spots.range(..).find(|s| {
            s.report_location == Some(id)
                || s.antenna_report_locations
                    .values()
                    .any(|v| v.as_str() == Some(&*text))
        });
        if let Some(spot) = reporting {
            return Err(PutError::Conflict(format!(
                "spot {} (serial {}) reports to location {id}: point it elsewhere first",
                spot.id, spot.serial_number
            )));
        }
        if let Some(p) = self.presences.range(..).find(|p| p.location == id) {
            return Err(PutError::Conflict(format!(
                "presence {} is at location {id}: it ends when its spots stop seeing the item",
                p.id
            )));
        }
        Ok(())
    }

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
                let mut antennas = None;
                // Validate everything before changing anything.
                for (k, v) in body {
                    match k.as_str() {
                        "config_request" | "firmware_request" if v.is_object() || v.is_null() => {}
                        "config_request" | "firmware_request" => {
                            return Err(bad(k, "must be an object or null"))
                        }
                        "antenna_report_locations" => {
                            antennas = Some(self.antenna_report_locations(v)?);
                        }
                        "report_location" => match v {
                            Value::Null => {}
                            Value::String(l) if self.known_location(l) => {}
                            _ => {
                                return Err(bad(
                                    k,
                                    "must be the id of an existing location, or null",
                                ))
                            }
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
                            spot.antenna_report_locations = antennas.take().unwrap_or_default()
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
                        "metadata" => Self::check_metadata(v)?,
                        _ => return Err(bad(k, "cannot be set")),
                    }
                }
                let real_id = Id::parse(id).ok_or_else(not_found)?;
                let metadata = body.get("metadata");
                if collection == "locations" {
                    let l = self.locations.get_mut(real_id).ok_or_else(not_found)?;
                    for (k, v) in body {
                        match k.as_str() {
                            "label" => l.label = v.as_str().unwrap_or_default().to_string(),
                            "custom" => l.custom = v.clone(),
                            _ => {}
                        }
                    }
                    l.time_updated = now;
                    if let Some(metadata) = metadata {
                        self.set_metadata(real_id, metadata);
                    }
                    (Table::Locations, real_id)
                } else {
                    let i = self.items.get_mut(real_id).ok_or_else(not_found)?;
                    for (k, v) in body {
                        match k.as_str() {
                            "label" => i.label = boxed(v),
                            "custom" => i.custom = boxed(v),
                            _ => {}
                        }
                    }
                    i.time_updated = now;
                    if let Some(metadata) = metadata {
                        self.set_metadata(real_id, metadata);
                    }
                    (Table::Items, real_id)
                }
            }
            _ => return Err(PutError::MethodNotAllowed(collection.to_string())),
        };
        self.dirty.insert((table, real_id));
        self.must_flush = true;
        let value = self.get(collection, &real_id.hex()).unwrap_or(Value::Null);
        self.log_api_change((collection, real_id, "updated", Write::Put), &value, now);
        Ok(value)
    }

    /// A spot's antenna report locations from a PUT: the object form (antenna number →
    /// location id) or the vendor's array form (`[{"antenna_number": 1,
    /// "report_location": "<id>"}]`, the id also as `report_location_id`), or null (none).
    pub(super) fn antenna_report_locations(&self, v: &Value) -> Result<Object, PutError> {
        const FIELD: &str = "antenna_report_locations";
        let bad = |reason: String| PutError::BadField {
            field: FIELD.to_string(),
            reason,
        };
        let location = |antenna: &str, v: Option<&Value>| -> Result<Value, PutError> {
            match v {
                None | Some(Value::Null) => Ok(Value::Null),
                Some(Value::String(l)) if self.known_location(l) => Ok(Value::String(l.clone())),
                Some(other) => Err(bad(format!(
                    "antenna {antenna}: {other} is not the id of an existing location"
                ))),
            }
        };
        let mut out = Object::new();
        match v {
            Value::Null => {}
            Value::Object(o) => {
                for (antenna, l) in o {
                    out.insert(antenna.clone(), location(antenna, Some(l))?);
                }
            }
            Value::Array(entries) => {
                for entry in entries {
                    let number = entry
                        .get("antenna_number")
                        .and_then(Value::as_u64)
                        .ok_or_else(|| bad(format!("{entry}: needs an antenna_number")))?;
                    let l = entry
                        .get("report_location_id")
                        .or_else(|| entry.get("report_location"));
                    let antenna = number.to_string();
                    let l = location(&antenna, l)?;
                    out.insert(antenna, l);
                }
            }
            _ => return Err(bad("must be an array, an object or null".into())),
        }
        Ok(out)
    }

    /// The rows of a collection whose ids are in `ids`, in id order (the newest first with
    /// `newest_first`), those `keep` keeps, at most `take` of them; `None` for an unknown
    /// collection. A REST list takes them under the read lock and builds its page after
    /// releasing it: each row costs a reference count (rows are shared, copy on write), no
    /// JSON, and rows past `take` cost nothing.
    pub fn rows(
        &self,
        collection: &str,
        ids: (Bound<Id>, Bound<Id>),
        newest_first: bool,
        take: usize,
        keep: &dyn Fn(&Row) -> bool,
    ) -> Option<Vec<Row>> {
        fn pick(
            rows: impl DoubleEndedIterator<Item = Row>,
            newest_first: bool,
            take: usize,
            keep: &dyn Fn(&Row) -> bool,
        ) -> Vec<Row> {
            let kept = |row: &Row| keep(row);
            if newest_first {
                rows.rev().filter(kept).take(take).collect()
            } else {
                rows.filter(kept).take(take).collect()
            }
        }
        Some(match collection {
            "spots" => pick(
                self.spots.range(ids).cloned().map(Row::Spot),
                newest_first,
                take,
                keep,
            ),
            "locations" => pick(
                self.locations.range(ids).map(|l| self.location_row(l)),
                newest_first,
                take,
                keep,
            ),
            "items" => pick(
                self.items.range(ids).map(|i| self.item_row(i)),
                newest_first,
                take,
                keep,
            ),
            "itemlists" | "spotlists" => {
                let kind = ListKind::of(collection)?;
                let lists = self.lists(kind).range(ids).cloned().map(Row::List);
                pick(lists, newest_first, take, keep)
            }
            "presences" => pick(
                self.presences.range(ids).cloned().map(Row::Presence),
                newest_first,
                take,
                keep,
            ),
            "events" => {
                // The log is in id order: its ends in `ids` are found by bisection.
                let at = |bound: Bound<&Id>, after: bool| match bound {
                    Bound::Included(id) => self.events.partition_point(|e| e.id < *id),
                    Bound::Excluded(id) => self.events.partition_point(|e| e.id <= *id),
                    Bound::Unbounded if after => self.events.len(),
                    Bound::Unbounded => 0,
                };
                let start = at(ids.start_bound(), false);
                let end = match ids.end_bound() {
                    Bound::Included(id) => at(Bound::Excluded(id), true),
                    Bound::Excluded(id) => at(Bound::Included(id), true),
                    Bound::Unbounded => self.events.len(),
                };
                let events = self.events.range(start..end.max(start));
                let rows = events.map(|e| Row::Event {
                    id: e.id,
                    time_created: e.time_created,
                    doc: e.doc.clone(),
                });
                pick(rows, newest_first, take, keep)
            }
            _ => return None,
        })
    }

    /// How many rows of a collection have ids in `ids` and are kept by `keep`, counted
    /// without copying them; `None` for an unknown collection.
    pub fn count(
        &self,
        collection: &str,
        ids: (Bound<Id>, Bound<Id>),
        keep: &dyn Fn(&Row) -> bool,
    ) -> Option<usize> {
        Some(match collection {
            "spots" => self
                .spots
                .range(ids)
                .filter(|r| keep(&Row::Spot(Arc::clone(r))))
                .count(),
            "locations" => self
                .locations
                .range(ids)
                .filter(|r| keep(&self.location_row(r)))
                .count(),
            "items" => self
                .items
                .range(ids)
                .filter(|r| keep(&self.item_row(r)))
                .count(),
            "itemlists" | "spotlists" => self
                .lists(ListKind::of(collection)?)
                .range(ids)
                .filter(|r| keep(&Row::List(Arc::clone(r))))
                .count(),
            "presences" => self
                .presences
                .range(ids)
                .filter(|r| keep(&Row::Presence(Arc::clone(r))))
                .count(),
            "events" => self.rows(collection, ids, false, usize::MAX, keep)?.len(),
            _ => return None,
        })
    }

    /// The row of an item, with the item lists it is in and its metadata.
    fn item_row(&self, item: &Arc<Item>) -> Row {
        let extras = Extras {
            sets: self.sets_of_item(item.id),
            metadata: self.metadata_of(item.id),
        };
        Row::Item(Arc::clone(item), extras)
    }

    /// The row of a location, with its metadata.
    fn location_row(&self, location: &Arc<Location>) -> Row {
        let extras = Extras {
            sets: None,
            metadata: self.metadata_of(location.id),
        };
        Row::Location(Arc::clone(location), extras)
    }

    /// How long the events log keeps an event (ms): an event's `time_expire`.
    pub fn events_retention_ms(&self) -> i64 {
        self.config.events_retention_ms
    }

    /// Every resource of a collection as JSON, in id order; `None` for an unknown collection.
    #[cfg(test)]
    pub fn collection(&self, collection: &str) -> Option<Vec<Value>> {
        let all = (Bound::Unbounded, Bound::Unbounded);
        let rows = self.rows(collection, all, false, usize::MAX, &|_| true)?;
        Some(rows.iter().filter_map(Row::value).collect())
    }

    /// One resource as JSON (spots also by serial number).
    pub fn get(&self, collection: &str, id: &str) -> Option<Value> {
        let row = match collection {
            "spots" => self
                .resolve_spot_id(id)
                .and_then(|id| self.spots.get_shared(id))
                .map(Row::Spot),
            "locations" => Id::parse(id)
                .and_then(|id| self.locations.get_shared(id))
                .map(|l| self.location_row(&l)),
            "items" => Id::parse(id)
                .and_then(|id| self.items.get_shared(id))
                .map(|i| self.item_row(&i)),
            "itemlists" | "spotlists" => Id::parse(id)
                .and_then(|id| self.lists(ListKind::of(collection)?).get_shared(id))
                .map(Row::List),
            "presences" => Id::parse(id)
                .and_then(|id| self.presences.get_shared(id))
                .map(Row::Presence),
            "events" => Id::parse(id)
                .and_then(|id| self.events.binary_search_by(|e| e.id.cmp(&id)).ok())
                .map(|i| &self.events[i])
                .map(|e| Row::Event {
                    id: e.id,
                    time_created: e.time_created,
                    doc: e.doc.clone(),
                }),
            _ => None,
        };
        row?.value()
    }
}

/// What the REST view of an item or a location shows beside its own row: the item lists it
/// is in (`sets`) and its `metadata`, each `None` when it has none (kept by the domain apart
/// from the resource: see `sets` and `metadata`).
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// The item lists an item is in.
    pub sets: Option<Arc<[Id]>>,
    /// Its metadata.
    pub metadata: Option<Arc<Object>>,
}

/// A resource of a REST list, shared with the domain: what [`Domain::rows`] hands out.
#[derive(Debug, Clone)]
pub enum Row {
    /// A spot.
    Spot(Arc<Spot>),
    /// A location, and its metadata.
    Location(Arc<Location>, Extras),
    /// An item, the item lists it is in and its metadata.
    Item(Arc<Item>, Extras),
    /// A presence.
    Presence(Arc<PresenceResource>),
    /// An item list or a spot list.
    List(Arc<MemberList>),
    /// A derived event: its id, its server time and its document (a [`super::LogEvent`]).
    Event {
        /// The event's id.
        id: Id,
        /// Its server time.
        time_created: i64,
        /// The JSON document.
        doc: Arc<str>,
    },
}

/// The fields of a derived event's document but its data, read without reading the data.
#[derive(Deserialize)]
struct EventHead<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(borrow)]
    time_event: Option<Cow<'a, str>>,
    #[serde(borrow)]
    time_created: Cow<'a, str>,
}

impl Row {
    /// The id.
    pub fn id(&self) -> Id {
        match self {
            Row::Spot(r) => r.id,
            Row::Location(r, _) => r.id,
            Row::Item(r, _) => r.id,
            Row::Presence(r) => r.id,
            Row::List(r) => r.id,
            Row::Event { id, .. } => *id,
        }
    }

    /// When it was created (Unix ms).
    pub fn time_created(&self) -> i64 {
        match self {
            Row::Spot(r) => r.time_created,
            Row::Location(r, _) => r.time_created,
            Row::Item(r, _) => r.time_created,
            Row::Presence(r) => r.time_created,
            Row::List(r) => r.time_created,
            Row::Event { time_created, .. } => *time_created,
        }
    }

    /// The resource as JSON (`None` for an unreadable event document).
    pub fn value(&self) -> Option<Value> {
        count_conversion();
        match self {
            Row::Spot(r) => serde_json::to_value(&**r).ok(),
            Row::Location(r, extras) => {
                with_extras(serde_json::to_value(&**r).ok(), extras, &|_| true)
            }
            Row::Item(r, extras) => with_extras(serde_json::to_value(&**r).ok(), extras, &|_| true),
            Row::Presence(r) => serde_json::to_value(&**r).ok(),
            Row::List(r) => serde_json::to_value(r.doc()).ok(),
            Row::Event { doc, .. } => serde_json::from_str(doc).ok(),
        }
    }

    /// What filters and sorts on the fields at `paths` (dotted) look at: the fields of the
    /// resource they name (first segments), the others skipped unbuilt; for a derived event
    /// its whole document only when a path is under its `data`.
    pub fn fields(&self, paths: &[&str]) -> Option<Value> {
        let named = |name: &str| paths.iter().any(|p| p.split('.').next() == Some(name));
        match self {
            Row::Event { doc, .. } if !named("data") => {
                count_conversion();
                // Unknown fields (the data) are skipped.
                let head: EventHead = serde_json::from_str(doc).ok()?;
                let mut fields = serde_json::Map::new();
                let mut add = |name: &str, value: Option<Cow<str>>| {
                    if named(name) {
                        fields.insert(name.to_string(), value.map_or(Value::Null, Value::from));
                    }
                };
                add("id", Some(head.id));
                add("topic", Some(head.topic));
                add("time_event", head.time_event);
                add("time_created", Some(head.time_created));
                Some(Value::Object(fields))
            }
            Row::Event { .. } => self.value(),
            Row::Spot(r) => picked(&**r, &named),
            Row::Location(r, extras) => with_extras(picked(&**r, &named), extras, &named),
            Row::Item(r, extras) => with_extras(picked(&**r, &named), extras, &named),
            Row::Presence(r) => picked(&**r, &named),
            Row::List(r) => picked(&r.doc(), &named),
        }
    }
}

/// A document with its [`Extras`] that `named` names: `sets` (the item lists an item is in)
/// and `metadata`, where it has any (the REST view shows `[]` and `{}` otherwise).
fn with_extras(doc: Option<Value>, extras: &Extras, named: &dyn Fn(&str) -> bool) -> Option<Value> {
    let mut doc = doc?;
    let Some(o) = doc.as_object_mut() else {
        return Some(doc);
    };
    if let Some(sets) = extras.sets.as_deref().filter(|_| named("sets")) {
        let ids = sets.iter().map(|id| Value::String(id.text())).collect();
        o.insert("sets".into(), Value::Array(ids));
    }
    if let Some(metadata) = extras.metadata.as_deref().filter(|_| named("metadata")) {
        o.insert("metadata".into(), Value::Object(metadata.clone()));
    }
    Some(doc)
}

/// The fields of a resource that `named` names, as a JSON object: the others are skipped
/// unbuilt (a spot's `status` and `config`, say, for a sort on `time_updated`).
fn picked(resource: &impl Serialize, named: &dyn Fn(&str) -> bool) -> Option<Value> {
    count_conversion();
    resource.serialize(Picker(named)).ok()
}

/// Serializes a struct into a JSON object of the fields it names (and nothing else: the
/// resources are structs).
struct Picker<'a>(&'a dyn Fn(&str) -> bool);

/// The object [`Picker`] fills.
struct PickedFields<'a> {
    named: &'a dyn Fn(&str) -> bool,
    fields: serde_json::Map<String, Value>,
}

impl SerializeStruct for PickedFields<'_> {
    type Ok = Value;
    type Error = serde_json::Error;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), serde_json::Error> {
        if (self.named)(key) {
            self.fields
                .insert(key.to_string(), serde_json::to_value(value)?);
        }
        Ok(())
    }

    fn end(self) -> Result<Value, serde_json::Error> {
        Ok(Value::Object(self.fields))
    }
}

/// What [`Picker`] answers for anything but a struct.
fn not_a_struct() -> serde_json::Error {
    serde::ser::Error::custom("only a struct's fields are picked")
}

impl<'a> Serializer for Picker<'a> {
    type Ok = Value;
    type Error = serde_json::Error;
    type SerializeSeq = Impossible<Value, serde_json::Error>;
    type SerializeTuple = Impossible<Value, serde_json::Error>;
    type SerializeTupleStruct = Impossible<Value, serde_json::Error>;
    type SerializeTupleVariant = Impossible<Value, serde_json::Error>;
    type SerializeMap = Impossible<Value, serde_json::Error>;
    type SerializeStruct = PickedFields<'a>;
    type SerializeStructVariant = Impossible<Value, serde_json::Error>;

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<PickedFields<'a>, Self::Error> {
        Ok(PickedFields {
            named: self.0,
            fields: serde_json::Map::new(),
        })
    }

    fn serialize_bool(self, _: bool) -> Result<Value, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_i8(self, _: i8) -> Result<Value, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_i16(self, _: i16) -> Result<Value, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_i32(self, _: i32) -> Result<Value, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_i64(self, _: i64) -> Result<Value, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_u8(self, _: u8) -> Result<Value, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_u16(self, _: u16) -> Result<Value, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_u32(self, _: u32) -> Result<Value, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_u64(self, _: u64) -> Result<Value, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_f32(self, _: f32) -> Result<Value, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_f64(self, _: f64) -> Result<Value, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_char(self, _: char) -> Result<Value, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_str(self, _: &str) -> Result<Value, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<Value, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_none(self) -> Result<Value, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<Value, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_unit(self) -> Result<Value, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Value, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<Value, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<Value, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Value, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Self::Error> {
        Err(not_a_struct())
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Self::Error> {
        Err(not_a_struct())
    }
}

#[cfg(test)]
thread_local! {
    /// Documents converted to JSON values ([`Row::value`], [`Row::fields`]) on this thread.
    static CONVERSIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counts a document converted to a JSON value (in tests: what a list costs).
fn count_conversion() {
    #[cfg(test)]
    CONVERSIONS.with(|n| n.set(n.get() + 1));
}

/// How many documents were converted to JSON values on this thread so far.
#[cfg(test)]
pub(crate) fn conversions() -> usize {
    CONVERSIONS.with(|n| n.get())
}

/// A JSON value as an optional field (`null`: none).
fn boxed(value: &Value) -> Option<Box<Value>> {
    match value {
        Value::Null => None,
        v => Some(Box::new(v.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::testing::*;

    /// POST and DELETE through the API: the rows are flushed at once (they are not in the
    /// journal), a deleted item leaves the item index (a spot seeing its code again creates
    /// a new one), and what is in use is refused.
    #[test]
    fn api_creates_and_deletes_are_flushed_at_once_and_refused_while_in_use() {
        let mut d = Domain::new(DomainConfig::default());
        let body = |v: Value| v.as_object().unwrap().clone();
        let location = d
            .write(
                Write::Post,
                "locations",
                "",
                &body(json!({"label": "dock"})),
                T0,
            )
            .unwrap();
        let location = location["id"].as_str().unwrap().to_string();
        let item = d
            .write(
                Write::Post,
                "items",
                "",
                &body(json!({"code_hex": "ab", "technology": "rfid"})),
                T0,
            )
            .unwrap();
        assert_eq!(
            item["technology"], "EPC Gen2",
            "stored as the code type spots send"
        );
        let item_id = item["id"].as_str().unwrap().to_string();
        let flush = d.take_changes(false);
        assert!(flush.flush, "an API change is flushed with the next commit");
        assert_eq!(flush.upserts.len(), 2);
        let again = d.write(
            Write::Post,
            "items",
            "",
            &body(json!({"code_hex": "ab"})),
            T0,
        );
        assert!(matches!(again, Err(PutError::Conflict(_))), "{again:?}");
        d.write(Write::Delete, "items", &item_id, &Object::new(), T0 + 1)
            .unwrap();
        let flush = d.take_changes(false);
        let id = Id::parse(&item_id).unwrap();
        assert_eq!(flush.deletes, vec![(Table::Items, id)]);
        // Seen again: a new item.
        d.begin_stream("7", None, T0 + 2);
        d.apply_event(
            "7",
            &presence(Action::Create, "ab", Proximity::Near),
            T0 + 3,
        );
        let seen = d.collection("items").unwrap();
        assert_eq!(seen.len(), 1);
        assert_ne!(seen[0]["id"], item_id.as_str());
        let present = seen[0]["id"].as_str().unwrap().to_string();
        let refused = d.write(Write::Delete, "items", &present, &Object::new(), T0 + 4);
        assert!(
            matches!(refused, Err(PutError::Conflict(_))),
            "present: {refused:?}"
        );
        let spot_location = d.collection("spots").unwrap()[0]["report_location"].clone();
        let spot_location = spot_location.as_str().unwrap();
        let refused = d.write(
            Write::Delete,
            "locations",
            spot_location,
            &Object::new(),
            T0 + 4,
        );
        assert!(
            matches!(refused, Err(PutError::Conflict(_))),
            "reported to: {refused:?}"
        );
        d.write(
            Write::Delete,
            "locations",
            &location,
            &Object::new(),
            T0 + 4,
        )
        .unwrap();
        assert!(d.get("locations", &location).is_none());
        let refused = d.write(Write::Delete, "spots", "7", &Object::new(), T0 + 4);
        assert!(matches!(refused, Err(PutError::MethodNotAllowed(_))));
    }

    #[test]
    fn the_fields_of_a_row_are_those_of_its_json_that_the_paths_name() {
        let mut d = Domain::new(DomainConfig::default());
        d.begin_stream("7", Some("1.2"), T0);
        d.apply_event(
            "7",
            &presence(Action::Create, "ab", Proximity::Near),
            T0 + 1,
        );
        let all = (Bound::Unbounded, Bound::Unbounded);
        let paths = [
            "status.x",
            "time_updated",
            "version",
            "item",
            "topic",
            "nope",
        ];
        for collection in ["spots", "locations", "items", "presences", "events"] {
            for row in d
                .rows(collection, all, false, usize::MAX, &|_| true)
                .unwrap()
            {
                let whole = row.value().unwrap();
                let mut expected = serde_json::Map::new();
                for (k, v) in whole.as_object().unwrap() {
                    if paths
                        .iter()
                        .any(|p| p.split('.').next() == Some(k.as_str()))
                    {
                        expected.insert(k.clone(), v.clone());
                    }
                }
                assert_eq!(
                    row.fields(&paths),
                    Some(Value::Object(expected)),
                    "{collection}"
                );
                if collection == "events" {
                    assert_eq!(row.fields(&["data.id"]), Some(whole), "an event's data");
                }
            }
        }
    }
}
