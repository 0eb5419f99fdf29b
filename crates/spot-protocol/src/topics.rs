//! Builders of the spec §7 topic names and of the event payload, so every producer spells
//! them the same way: the server's domain builds its derived events with them, and spot-push
//! publishes them (its `TopicFilter` matches what they build).
//!
//! Topic levels built from outside data (resource types, actions from a spot) have `/`,
//! `+`, `#` and NUL replaced by `_`, so they always form a valid topic name of the intended
//! number of levels. Resource ids are anything printable (the server's are hex strings).

use std::fmt::Display;

use serde_json::{json, Value};

fn level(text: &str) -> String {
    text.replace(['/', '+', '#', '\0'], "_")
}

/// `spots/<id>/connected/<serial>`
pub fn spot_connected(id: impl Display, serial: &str) -> String {
    format!("spots/{id}/connected/{}", level(serial))
}

/// `spots/<id>/disconnected/<serial>`
pub fn spot_disconnected(id: impl Display, serial: &str) -> String {
    format!("spots/{id}/disconnected/{}", level(serial))
}

/// `items/<id>/created`
pub fn item_created(id: impl Display) -> String {
    format!("items/{id}/created")
}

/// `items/<id>/appeared`
pub fn item_appeared(id: impl Display) -> String {
    format!("items/{id}/appeared")
}

/// `items/<id>/disappeared`
pub fn item_disappeared(id: impl Display) -> String {
    format!("items/{id}/disappeared")
}

/// `items/<id>/moved-to/<location-id>`
pub fn item_moved_to(id: impl Display, location_id: impl Display) -> String {
    format!("items/{id}/moved-to/{location_id}")
}

/// `presences/<id>/created/<item-id>/<location-id>/<proximity>`
pub fn presence_created(
    id: impl Display,
    item_id: impl Display,
    location_id: impl Display,
    proximity: &str,
) -> String {
    format!(
        "presences/{id}/created/{item_id}/{location_id}/{}",
        level(proximity)
    )
}

/// `presences/<id>/deleted/<item-id>/<location-id>/<proximity>`
pub fn presence_deleted(
    id: impl Display,
    item_id: impl Display,
    location_id: impl Display,
    proximity: &str,
) -> String {
    format!(
        "presences/{id}/deleted/{item_id}/{location_id}/{}",
        level(proximity)
    )
}

/// Rank of a proximity: `immediate` (3) > `near` (2) > `far` (1); unknown: 0.
fn closeness(proximity: &str) -> u8 {
    match proximity {
        "immediate" => 3,
        "near" => 2,
        "far" => 1,
        _ => 0,
    }
}

/// `presences/<id>/changed-proximity/<item-id>/<location-id>/<new>/<previous>/<moved-closer|moved-away>`
pub fn presence_changed_proximity(
    id: impl Display,
    item_id: impl Display,
    location_id: impl Display,
    new: &str,
    previous: &str,
) -> String {
    let direction = if closeness(new) > closeness(previous) {
        "moved-closer"
    } else {
        "moved-away"
    };
    format!(
        "presences/{id}/changed-proximity/{item_id}/{location_id}/{}/{}/{direction}",
        level(new),
        level(previous)
    )
}

/// `<resource>/<id>/<created|updated|deleted>/<http-method>` for changes made through the API.
pub fn api_change(resource: &str, id: impl Display, action: &str, http_method: &str) -> String {
    format!(
        "{}/{id}/{}/{}",
        level(resource),
        level(action),
        level(&http_method.to_ascii_lowercase())
    )
}

/// `spots/<id>/events/<resource_type>/<action>`: a raw spot event (optional).
pub fn raw_spot_event(spot_id: impl Display, resource_type: &str, action: &str) -> String {
    format!(
        "spots/{spot_id}/events/{}/{}",
        level(resource_type),
        level(action)
    )
}

/// The payload of every event: `{"resource": <the resource after the change>,
/// "time_event": <device time or null>, "time_created": <server time>}` (ISO 8601 UTC).
pub fn event_payload(resource: Value, time_event: Option<&str>, time_created: &str) -> Value {
    json!({
        "resource": resource,
        "time_event": time_event,
        "time_created": time_created,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_section_7_topics() {
        assert_eq!(spot_connected(3, "203"), "spots/3/connected/203");
        assert_eq!(spot_disconnected(3, "203"), "spots/3/disconnected/203");
        assert_eq!(item_created(9), "items/9/created");
        assert_eq!(item_appeared(9), "items/9/appeared");
        assert_eq!(item_disappeared(9), "items/9/disappeared");
        assert_eq!(item_moved_to(9, 4), "items/9/moved-to/4");
        assert_eq!(
            presence_created(7, 9, 4, "near"),
            "presences/7/created/9/4/near"
        );
        assert_eq!(
            presence_deleted(7, 9, 4, "far"),
            "presences/7/deleted/9/4/far"
        );
        assert_eq!(
            presence_changed_proximity(7, 9, 4, "immediate", "near"),
            "presences/7/changed-proximity/9/4/immediate/near/moved-closer"
        );
        assert_eq!(
            presence_changed_proximity(7, 9, 4, "far", "near"),
            "presences/7/changed-proximity/9/4/far/near/moved-away"
        );
        assert_eq!(
            api_change("spots", 3, "updated", "PUT"),
            "spots/3/updated/put"
        );
        assert_eq!(
            raw_spot_event(3, "presence", "create"),
            "spots/3/events/presence/create"
        );
    }

    #[test]
    fn outside_text_cannot_add_levels_or_wildcards() {
        let topic = raw_spot_event(3, "a/b+#", "x\0");
        assert_eq!(topic, "spots/3/events/a_b__/x_");
    }

    #[test]
    fn payload_shape() {
        assert_eq!(
            event_payload(json!({"id": 1}), None, "2026-11-24T21:00:00.002Z"),
            json!({"resource": {"id": 1}, "time_event": null,
                   "time_created": "2026-11-24T21:00:00.002Z"})
        );
    }
}
