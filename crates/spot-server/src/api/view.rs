//! What a REST client sees of a resource, and what it may ask of a collection: the table of
//! each collection's fields ([`schema`]: the fields its resource type stores, those this view
//! adds, the vendor's parameters it cannot serve) and the shape of a document as the
//! vendor's API has it ([`Shape::apply`]): `url` on each resource, `<ref>_url` (or, with
//! `id_only`, `<ref>_id`) beside each reference, `technology` by the vendor's names (the
//! spot's code type kept as `code_type`), an event's `payload` and `time_expire` (and, with
//! `topic_format=object`, its topic as an object), `select`.
//!
//! Sans-IO: the caller says where the server is reached ([`Shape::base`], from the request's
//! `Host` and `X-Forwarded-*`).

use serde_json::{Map, Value};

/// What a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The resource's id (16 hex digits).
    Id,
    /// The id of a resource of this collection (a reference: `populate` replaces it).
    Ref(&'static str),
    /// Text.
    Text,
    /// `true` or `false`.
    Bool,
    /// A number.
    Number,
    /// An ISO 8601 time.
    Time,
    /// An object (or any JSON value): filters reach into it with dotted paths.
    Object,
    /// An array.
    Array,
}

/// A field of a collection's documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// Its name.
    pub name: &'static str,
    /// What it holds.
    pub kind: Kind,
}

const fn f(name: &'static str, kind: Kind) -> Field {
    Field { name, kind }
}

/// What a collection's documents hold and what its lists accept.
#[derive(Debug)]
pub struct Schema {
    /// The collection.
    pub name: &'static str,
    /// The fields its resource type stores, in the order it writes them (a test holds this
    /// to the type's serde shape).
    pub stored: &'static [Field],
    /// The fields this view adds ([`Shape::apply`]); filters and sorts see them too.
    pub derived: &'static [Field],
    /// The fields `text=` searches.
    pub text: &'static [&'static str],
    /// The fields a `PUT` sets.
    pub writable: &'static [&'static str],
    /// The read-only fields the server changes on its own: a `PUT` ignores them (a
    /// GET-modify-PUT round trip must not race the spots). Other read-only fields must be
    /// sent unchanged, if at all.
    pub live: &'static [&'static str],
    /// Parameters of the vendor's API for this collection that this server cannot answer,
    /// with why: a `400` saying so (never a filter that silently matches nothing).
    pub unsupported: &'static [(&'static str, &'static str)],
}

use Kind::*;

const SPOTS: Schema = Schema {
    name: "spots",
    stored: &[
        f("id", Id),
        f("serial_number", Text),
        f("status", Object),
        f("config", Object),
        f("is_online", Bool),
        f("request_counter", Number),
        f("event_counter", Number),
        f("version", Text),
        f("config_request", Object),
        f("firmware_request", Object),
        f("report_location", Ref("locations")),
        f("antenna_report_locations", Object),
        f("seq_epoch", Number),
        f("acked_seq", Number),
        f("time_created", Time),
        f("time_updated", Time),
        f("time_last_request", Time),
    ],
    derived: &[
        f("url", Text),
        f("report_location_url", Text),
        f("report_location_id", Id),
    ],
    text: &["serial_number", "version"],
    writable: &[
        "config_request",
        "firmware_request",
        "antenna_report_locations",
        "report_location",
    ],
    live: &[
        "status",
        "config",
        "is_online",
        "request_counter",
        "event_counter",
        "version",
        "seq_epoch",
        "acked_seq",
        "time_updated",
        "time_last_request",
        "report_location_url",
    ],
    unsupported: &[],
};

const LOCATIONS: Schema = Schema {
    name: "locations",
    stored: &[
        f("id", Id),
        f("label", Text),
        f("custom", Object),
        f("time_created", Time),
        f("time_updated", Time),
    ],
    derived: &[f("url", Text), f("metadata", Object)],
    text: &["label"],
    writable: &["label", "custom", "metadata"],
    live: &["time_updated"],
    unsupported: &[],
};

const ITEMS: Schema = Schema {
    name: "items",
    stored: &[
        f("id", Id),
        f("code_hex", Text),
        f("technology", Text),
        f("label", Text),
        f("custom", Object),
        f("is_present", Bool),
        f("location", Ref("locations")),
        f("move_count", Number),
        f("time_moved", Time),
        f("time_created", Time),
        f("time_updated", Time),
    ],
    derived: &[
        f("url", Text),
        f("location_url", Text),
        f("location_id", Id),
        f("code_type", Text),
        f("protocol", Text),
        f("type", Text),
        f("sets", Array),
        f("metadata", Object),
    ],
    text: &["code_hex", "label"],
    writable: &["label", "custom", "metadata"],
    live: &[
        "is_present",
        "location",
        "location_url",
        "location_id",
        "move_count",
        "time_moved",
        "time_updated",
        "sets",
    ],
    unsupported: &[(
        "time_last_present",
        "items here have no time_last_present (is_present and time_moved say when an item \
         was last seen to move)",
    )],
};

const PRESENCES: Schema = Schema {
    name: "presences",
    stored: &[
        f("id", Id),
        f("item", Ref("items")),
        f("location", Ref("locations")),
        f("proximity", Text),
        f("reporters", Object),
        f("time_event", Time),
        f("time_created", Time),
        f("time_updated", Time),
    ],
    derived: &[
        f("url", Text),
        f("item_url", Text),
        f("item_id", Id),
        f("location_url", Text),
        f("location_id", Id),
    ],
    text: &[],
    writable: &[],
    live: &[],
    unsupported: &[(
        "technology",
        "presences here carry no technology: filter the items (GET /api/items?technology=…) \
         and their presences by item",
    )],
};

const EVENTS: Schema = Schema {
    name: "events",
    stored: &[
        f("id", Id),
        f("topic", Text),
        f("time_event", Time),
        f("time_created", Time),
        f("data", Object),
    ],
    derived: &[
        f("url", Text),
        f("payload", Object),
        f("time_expire", Time),
        f("topic_text", Text),
    ],
    text: &["topic"],
    writable: &[],
    live: &[],
    unsupported: &[],
};

/// The fields of the item lists and spot lists of `sets` (one shape: the members are at
/// `…/{id}/ids`).
const LIST_FIELDS: &[Field] = &[
    f("id", Id),
    f("label", Text),
    f("custom", Object),
    f("metadata", Object),
    f("total", Number),
    f("sha1", Text),
    f("time_created", Time),
    f("time_updated", Time),
];

/// The fields the view adds to a list: `list` is where its members are.
const LIST_DERIVED: &[Field] = &[f("url", Text), f("list", Text)];

/// The schema of the item lists or the spot lists.
const fn member_lists(name: &'static str) -> Schema {
    Schema {
        name,
        stored: LIST_FIELDS,
        derived: LIST_DERIVED,
        text: &["label"],
        writable: &["label", "custom", "metadata"],
        live: &["total", "sha1", "time_updated"],
        unsupported: &[],
    }
}

const ITEMLISTS: Schema = member_lists("itemlists");

const SPOTLISTS: Schema = member_lists("spotlists");

/// The collections of the REST API, each with its schema.
pub const SCHEMAS: [&Schema; 7] = [
    &SPOTS, &LOCATIONS, &ITEMS, &PRESENCES, &EVENTS, &ITEMLISTS, &SPOTLISTS,
];

/// The schema of `collection`, if it is one.
pub fn schema(collection: &str) -> Option<&'static Schema> {
    SCHEMAS.iter().copied().find(|s| s.name == collection)
}

/// Where a collection is served, under `/api/`: its name, but `sets/<name>` for the item
/// and spot lists (the vendor's paths).
pub fn path_of(collection: &str) -> String {
    match collection {
        "itemlists" | "spotlists" => format!("sets/{collection}"),
        other => other.to_string(),
    }
}

/// The schema of the collection served at `/api/<path>` (see [`path_of`]), if any.
pub fn schema_at(path: &str) -> Option<&'static Schema> {
    SCHEMAS.iter().copied().find(|s| path_of(s.name) == path)
}

/// The parts of an event's topic as the vendor's API has them (`topic.*` filters).
pub const TOPIC_PARTS: [&str; 6] = [
    "resource_type",
    "resource_id",
    "resource",
    "resource_url",
    "action",
    "arguments",
];

impl Schema {
    /// The field named `name`, stored or derived.
    pub fn field(&self, name: &str) -> Option<Field> {
        self.stored
            .iter()
            .chain(self.derived)
            .find(|f| f.name == name)
            .copied()
    }

    /// Whether `path` (dotted) names something documents of this collection may hold: a
    /// field, or a path inside an object field (an event's `topic.<part>` too).
    pub fn knows(&self, path: &str) -> bool {
        let (head, rest) = match path.split_once('.') {
            Some((head, rest)) => (head, Some(rest)),
            None => (path, None),
        };
        match (self.field(head), rest) {
            (Some(_), None) => true,
            (Some(f), Some(rest)) if f.kind == Object => !rest.is_empty(),
            (Some(_), Some(rest)) if self.name == "events" && head == "topic" => {
                TOPIC_PARTS.contains(&rest)
            }
            _ => false,
        }
    }

    /// The path a filter or sort on `path` reads in a derived document ([`derive`] with
    /// the topic as an object): the topic's text for `topic`, `topic.resource_id` for the
    /// vendor's `topic.resource`.
    pub fn internal_path(&self, path: &str) -> String {
        match (self.name, path) {
            ("events", "topic") => "topic_text".into(),
            ("events", "topic.resource") => "topic.resource_id".into(),
            _ => path.to_string(),
        }
    }

    /// The stored fields a derived document needs to answer `path` (what to read of a row).
    pub fn sources(&self, path: &str) -> &'static [&'static str] {
        let head = path.split('.').next().unwrap_or(path);
        match head {
            "url" => &["id"],
            "location_url" | "location_id" => &["location"],
            "item_url" | "item_id" => &["item"],
            "report_location_url" | "report_location_id" => &["report_location"],
            "code_type" | "protocol" | "type" | "technology" => &["technology"],
            "payload" => &["data"],
            "time_expire" => &["time_created"],
            "topic" | "topic_text" => &["topic"],
            _ => &[],
        }
    }
}

/// The vendor's names of what an item's code type says: its `technology` (`rfid`,
/// `bluetooth`, `optical`), its `protocol` and its `type`; `None` for a code type this
/// server does not know (its technology is then the code type itself).
pub fn technology(code_type: &str) -> Option<(&'static str, &'static str, &'static str)> {
    let t: String = code_type
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .flat_map(|c| c.to_lowercase())
        .collect();
    Some(match t.as_str() {
        t if t.contains("epc") || t.contains("gen2") || t == "rfid" || t == "uhf" => {
            ("rfid", "epcgen2", "tag")
        }
        t if t.contains("nfc") => ("rfid", "nfc", "tag"),
        t if t.contains("ibeacon") => ("bluetooth", "ibeacon", "tag"),
        t if t.contains("altbeacon") => ("bluetooth", "altbeacon", "tag"),
        t if t.contains("eddystone") => ("bluetooth", "eddystone", "tag"),
        t if t.contains("uniwear") => ("bluetooth", "uniwear", "tag"),
        t if t.contains("nanoble") => ("bluetooth", "nanoble", "tag"),
        t if t.contains("ble") || t.contains("bluetooth") => ("bluetooth", "generic", "tag"),
        t if t.contains("barcode") || t.contains("qr") || t.contains("optical") => {
            ("optical", "generic", "barcode")
        }
        _ => return None,
    })
}

/// An event topic's parts, as the vendor's event has them: `resource_type`, `resource_id`,
/// `action`, `arguments` (the rest, in order) and, with a base, `resource_url`.
pub fn topic_object(topic: &str, base: Option<&str>) -> Value {
    let mut parts = topic.split('/');
    let resource_type = parts.next().unwrap_or_default();
    let resource_id = parts.next();
    let action = parts.next();
    let arguments: Vec<Value> = parts.map(|p| Value::String(p.to_string())).collect();
    let mut o = Map::new();
    o.insert("resource_type".into(), resource_type.into());
    o.insert("resource_id".into(), resource_id.into());
    if let (Some(base), Some(id)) = (base, resource_id) {
        o.insert(
            "resource_url".into(),
            format!("{base}/api/{}/{id}", path_of(resource_type)).into(),
        );
    }
    o.insert("action".into(), action.into());
    o.insert("arguments".into(), arguments.into());
    Value::Object(o)
}

/// How documents are shown: where the server is reached, and the parameters that shape
/// them.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    /// `scheme://host[:port]` as the client reached the server.
    pub base: String,
    /// `id_only`: no `url` fields, `<ref>_id` beside references.
    pub id_only: bool,
    /// `topic_format=object`: an event's `topic` is an object, its text in `topic_text`.
    pub topic_object: bool,
    /// `select`: the fields to keep (dotted: inside a populated reference); empty: all.
    pub select: Vec<String>,
    /// How long the events log keeps an event (its `time_expire`), in ms.
    pub retention_ms: i64,
}

impl Shape {
    /// Adds the derived fields of `collection` to `doc` (a whole document or the fields a
    /// filter reads), then applies `select`.
    pub fn apply(&self, collection: &str, doc: &mut Value) {
        self.derive(collection, doc);
        if !self.select.is_empty() {
            select(doc, &self.select);
        }
    }

    /// The derived fields only (what filters and sorts see too).
    pub fn derive(&self, collection: &str, doc: &mut Value) {
        let Some(o) = doc.as_object_mut() else {
            return;
        };
        let id = o.get("id").and_then(Value::as_str).map(str::to_string);
        if let (Some(id), false) = (&id, self.id_only) {
            let url = format!("{}/api/{}/{id}", self.base, path_of(collection));
            if matches!(collection, "itemlists" | "spotlists") {
                o.insert("list".into(), format!("{url}/ids").into());
            }
            o.insert("url".into(), url.into());
        }
        for (field, target) in crate::api::query::references(collection) {
            let Some(reference) = o.get_mut(*field) else {
                continue;
            };
            let target_id = match reference {
                Value::String(id) => Some(id.clone()),
                Value::Object(_) => {
                    // Populated: the referenced document is shaped as its own.
                    self.derive(target, reference);
                    reference
                        .get("id")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                }
                _ => None,
            };
            let value = |v: Option<String>| v.map_or(Value::Null, Value::String);
            if self.id_only {
                o.insert(format!("{field}_id"), value(target_id));
            } else {
                let url = target_id.map(|id| format!("{}/api/{target}/{id}", self.base));
                o.insert(format!("{field}_url"), value(url));
            }
        }
        match collection {
            "items" => {
                if let Some(Value::String(code_type)) = o.get("technology").cloned() {
                    let (technology, protocol, kind) = match technology(&code_type) {
                        Some((t, p, k)) => (t.to_string(), p, Value::from(k)),
                        None => (code_type.clone(), "generic", Value::Null),
                    };
                    o.insert("technology".into(), technology.into());
                    o.insert("code_type".into(), code_type.into());
                    o.insert("protocol".into(), protocol.into());
                    o.insert("type".into(), kind);
                }
                o.entry("sets").or_insert_with(|| Value::Array(Vec::new()));
                o.entry("metadata")
                    .or_insert_with(|| Value::Object(Map::new()));
            }
            "locations" => {
                o.entry("metadata")
                    .or_insert_with(|| Value::Object(Map::new()));
            }
            "spots" => {
                // The vendor's form: an array of antenna number and report location.
                if let Some(Value::Object(antennas)) = o.get("antenna_report_locations") {
                    let entries: Vec<Value> = antennas
                        .iter()
                        .map(|(antenna, location)| {
                            let mut entry = Map::new();
                            let number = antenna.parse::<u64>().map_or(Value::Null, Value::from);
                            entry.insert("antenna_number".into(), number);
                            entry.insert("report_location".into(), location.clone());
                            if let Some(id) = location.as_str() {
                                let (key, value) = if self.id_only {
                                    ("report_location_id", id.to_string())
                                } else {
                                    (
                                        "report_location_url",
                                        format!("{}/api/locations/{id}", self.base),
                                    )
                                };
                                entry.insert(key.into(), value.into());
                            }
                            Value::Object(entry)
                        })
                        .collect();
                    o.insert("antenna_report_locations".into(), entries.into());
                }
            }
            "events" => {
                let payload = o.get("data").cloned().unwrap_or(Value::Null);
                o.insert("payload".into(), payload);
                let created = o
                    .get("time_created")
                    .and_then(Value::as_str)
                    .and_then(spot_protocol::Timestamp::parse);
                if let Some(created) = created {
                    let expire = spot_protocol::Timestamp(created.0 + self.retention_ms);
                    o.insert("time_expire".into(), expire.to_string().into());
                }
                if self.topic_object {
                    if let Some(Value::String(topic)) = o.get("topic").cloned() {
                        let base = (!self.id_only).then_some(self.base.as_str());
                        o.insert("topic".into(), topic_object(&topic, base));
                        o.insert("topic_text".into(), topic.into());
                    }
                }
            }
            _ => {}
        }
    }
}

impl Shape {
    /// Adds `<ref>_id` beside each reference that is an id (filters see both forms).
    pub fn derive_ids(&self, collection: &str, doc: &mut Value) {
        let Some(o) = doc.as_object_mut() else {
            return;
        };
        for (field, _) in crate::api::query::references(collection) {
            if let Some(Value::String(id)) = o.get(*field) {
                let id = id.clone();
                o.insert(format!("{field}_id"), id.into());
            }
        }
    }
}

/// Keeps only the selected fields of `doc` (and `id`, `url`); `a.b` keeps `b` of the
/// object (a populated reference) in `a`.
fn select(doc: &mut Value, selected: &[String]) {
    let Some(o) = doc.as_object_mut() else {
        return;
    };
    let wanted = |key: &str| {
        matches!(key, "id" | "url")
            || selected
                .iter()
                .any(|s| s == key || s.split_once('.').is_some_and(|(head, _)| head == key))
    };
    o.retain(|k, _| wanted(k));
    for (key, value) in o.iter_mut() {
        let inner: Vec<String> = selected
            .iter()
            .filter_map(|s| s.split_once('.'))
            .filter(|(head, _)| head == key)
            .map(|(_, rest)| rest.to_string())
            .collect();
        let whole = selected.iter().any(|s| s == key);
        if !inner.is_empty() && !whole && value.is_object() {
            select(value, &inner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_stored_fields_of_each_schema_are_those_its_resource_type_writes() {
        use crate::domain::{Domain, DomainConfig};
        use spot_protocol::{Action, Event, EventKind, Presence, Proximity};
        const T0: i64 = 1_700_000_000_000;
        let mut d = Domain::new(DomainConfig::default());
        d.begin_stream("7", Some("1.2"), T0);
        let presence = Presence {
            item_code: Some("ab".into()),
            item_codetype: Some("EPC Gen2".into()),
            proximity: Some(Proximity::Near),
            ..Presence::default()
        };
        let event = Event::new(EventKind::Presence(Action::Create, presence));
        d.apply_event("7", &event, T0 + 1);
        for lists in ["itemlists", "spotlists"] {
            let none = Default::default();
            d.write(crate::domain::Write::Post, lists, "", &none, T0 + 2)
                .unwrap();
        }
        let all = (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded);
        for schema in SCHEMAS {
            let rows = d
                .rows(schema.name, all, false, usize::MAX, &|_| true)
                .unwrap();
            let row = rows.first().expect(schema.name).value().unwrap();
            let names: Vec<&str> = row
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.as_str())
                .collect();
            let expected: Vec<&str> = schema.stored.iter().map(|f| f.name).collect();
            if schema.name == "events" {
                // Not every event carries data.
                assert!(names.iter().all(|n| expected.contains(n)), "{names:?}");
            } else {
                assert_eq!(names, expected, "{}", schema.name);
            }
        }
    }

    #[test]
    fn documents_get_urls_beside_references_and_ids_with_id_only() {
        let shape = Shape {
            base: "https://h:1".into(),
            ..Shape::default()
        };
        let mut item = json!({"id": "a1", "technology": "EPC Gen2", "location": "l1"});
        shape.apply("items", &mut item);
        assert_eq!(item["url"], "https://h:1/api/items/a1");
        assert_eq!(item["location_url"], "https://h:1/api/locations/l1");
        assert_eq!(item["technology"], "rfid");
        assert_eq!(item["protocol"], "epcgen2");
        assert_eq!(item["code_type"], "EPC Gen2");
        let shape = Shape {
            id_only: true,
            select: vec!["location_id".into()],
            ..shape
        };
        let mut item = json!({"id": "a1", "location": {"id": "l1", "label": "dock"}});
        shape.apply("items", &mut item);
        assert_eq!(item, json!({"id": "a1", "location_id": "l1"}));
    }

    #[test]
    fn an_event_topic_becomes_the_vendors_object_on_request() {
        let shape = Shape {
            base: "http://h".into(),
            topic_object: true,
            retention_ms: 1000,
            ..Shape::default()
        };
        let mut event = json!({"id": "e", "topic": "items/i1/moved-to/l2",
            "time_created": "2024-01-01T00:00:00Z", "data": {"n": 1}});
        shape.apply("events", &mut event);
        assert_eq!(event["topic"]["resource_type"], "items");
        assert_eq!(event["topic"]["resource_id"], "i1");
        assert_eq!(event["topic"]["action"], "moved-to");
        assert_eq!(event["topic"]["arguments"], json!(["l2"]));
        assert_eq!(event["topic"]["resource_url"], "http://h/api/items/i1");
        assert_eq!(event["topic_text"], "items/i1/moved-to/l2");
        assert_eq!(event["payload"], json!({"n": 1}));
        assert_eq!(event["time_expire"], "2024-01-01T00:00:01Z");
    }
}
