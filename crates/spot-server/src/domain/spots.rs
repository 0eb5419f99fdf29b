//! Spots: created on first sight with a location of their own, online while they stream and
//! offline after a silence (their presences withdrawn), the sequence-epoch dedupe of their
//! events, their `config` merged from `config update`s, and the commands waiting for them.

use serde_json::{json, Value};
use spot_protocol::{Action, Event, EventKind, Object};

use super::journal::decode_json_event;

use super::derived::Topic;
use super::{topics, Domain, Location, Spot, Table};
use crate::ids::Id;

impl Domain {
    /// The spot with this serial number.
    pub fn spot_by_serial(&self, serial: &str) -> Option<&Spot> {
        self.spot_by_serial
            .get(serial)
            .and_then(|id| self.spots.get(*id))
    }

    /// Spots online now.
    pub fn spots_online(&self) -> usize {
        self.spots_online
    }

    /// How many spots, items and presences the live state holds, and derived events in
    /// memory: what its memory grows with (`docs/memory.md`).
    pub fn sizes(&self) -> [usize; 4] {
        [
            self.spots.len(),
            self.items.len(),
            self.presences.len(),
            self.events.len(),
        ]
    }

    /// The highest sequence stored for the spot in its current epoch (0: none or unknown).
    pub fn acked_seq(&self, serial: &str) -> u64 {
        self.spot_by_serial(serial).map_or(0, |s| s.acked_seq)
    }

    /// Takes the spot's pending commands (clearing `config_request` / `firmware_request`).
    pub fn take_commands(&mut self, serial: &str, now: i64) -> Vec<Event> {
        let Some(&id) = self.spot_by_serial.get(serial) else {
            return Vec::new();
        };
        let Some(spot) = self.spots.get_mut(id) else {
            return Vec::new();
        };
        let mut commands = Vec::new();
        if let Some(obj) = spot.config_request.take() {
            commands.push(command_event("config", obj));
        }
        if let Some(obj) = spot.firmware_request.take() {
            commands.push(command_event("firmware", obj));
        }
        if !commands.is_empty() {
            spot.time_updated = now;
            self.dirty.insert((Table::Spots, id));
            self.must_flush = true;
        }
        commands
    }

    /// The spot's pending requests, `(config, firmware)`, left pending (a cluster's edge
    /// reads them from its replica, hands them over, then has the owner take them with
    /// [`Domain::take_handed_commands`]).
    pub fn pending_requests(&self, serial: &str) -> (Option<Object>, Option<Object>) {
        let spot = self
            .spot_by_serial
            .get(serial)
            .and_then(|&id| self.spots.get(id));
        match spot {
            Some(s) => (s.config_request.clone(), s.firmware_request.clone()),
            None => (None, None),
        }
    }

    /// The commands of `requests` (as [`Domain::pending_requests`] gave them), in the order
    /// [`Domain::take_commands`] hands them over.
    pub fn commands_of(requests: &(Option<Object>, Option<Object>)) -> Vec<Event> {
        let (config, firmware) = requests;
        let config = config.iter().map(|o| command_event("config", o.clone()));
        let firmware = firmware
            .iter()
            .map(|o| command_event("firmware", o.clone()));
        config.chain(firmware).collect()
    }

    /// Clears the requests that were handed over, each only if it is still the pending one
    /// (a request made after the hand-over stays pending, for the next stream).
    pub fn take_handed_commands(
        &mut self,
        serial: &str,
        (config, firmware): &(Option<Object>, Option<Object>),
        now: i64,
    ) {
        let Some(&id) = self.spot_by_serial.get(serial) else {
            return;
        };
        let Some(spot) = self.spots.get_mut(id) else {
            return;
        };
        let mut taken = false;
        if config.is_some() && spot.config_request == *config {
            spot.config_request = None;
            taken = true;
        }
        if firmware.is_some() && spot.firmware_request == *firmware {
            spot.firmware_request = None;
            taken = true;
        }
        if taken {
            spot.time_updated = now;
            self.dirty.insert((Table::Spots, id));
            self.must_flush = true;
        }
    }

    /// The id of the spot `id` names: its id or its serial number.
    pub fn resolve_spot_id(&self, id: &str) -> Option<Id> {
        match Id::parse(id) {
            Some(id) if self.spots.contains_key(id) => Some(id),
            _ => self.spot_by_serial.get(id).copied(),
        }
    }

    /// The serial numbers of the spots that exist.
    pub fn spot_serials(&self) -> impl Iterator<Item = &str> {
        self.spot_by_serial.keys().map(String::as_str)
    }

    pub(super) fn ensure_spot(&mut self, serial: &str, now: i64) -> Id {
        if let Some((last, id)) = &self.last_spot {
            if last == serial {
                return *id;
            }
        }
        if let Some(&id) = self.spot_by_serial.get(serial) {
            match &mut self.last_spot {
                Some((last, last_id)) => {
                    last.clear();
                    last.push_str(serial);
                    *last_id = id;
                }
                None => self.last_spot = Some((serial.to_string(), id)),
            }
            return id;
        }
        let location_id = self.ids.next(now);
        self.locations.insert(
            location_id,
            Location {
                id: location_id,
                label: format!("spot{serial}"),
                custom: Value::Null,
                time_created: now,
                time_updated: now,
            },
        );
        self.dirty.insert((Table::Locations, location_id));
        let id = self.ids.next(now);
        self.spots.insert(
            id,
            Spot {
                id,
                serial_number: serial.to_string(),
                status: Object::new(),
                config: Object::new(),
                is_online: false,
                request_counter: 0,
                event_counter: 0,
                version: None,
                config_request: None,
                firmware_request: None,
                report_location: Some(location_id),
                antenna_report_locations: Object::new(),
                seq_epoch: None,
                acked_seq: 0,
                time_created: now,
                time_updated: now,
                time_last_request: None,
                open_streams: 0,
                last_traffic: now,
            },
        );
        self.spot_by_serial.insert(serial.to_string(), id);
        self.dirty.insert((Table::Spots, id));
        id
    }

    pub(super) fn touch(&mut self, spot_id: Id, now: i64, time_event: Option<i64>) {
        let Some(spot) = self.spots.get_mut(spot_id) else {
            return;
        };
        spot.last_traffic = now;
        if spot.is_online {
            return;
        }
        spot.is_online = true;
        self.spots_online += 1;
        spot.time_updated = now;
        tracing::info!(spot = %spot.serial_number, "spot connected");
        let topic = topics::spot_connected(spot.id, &spot.serial_number);
        self.dirty.insert((Table::Spots, spot_id));
        self.log_row(Topic::Text(&topic), time_event, now, Table::Spots, spot_id);
    }

    pub(super) fn go_offline(&mut self, spot_id: Id, now: i64) {
        let Some(spot) = self.spots.get_mut(spot_id) else {
            return;
        };
        self.must_flush = true;
        if spot.is_online {
            self.spots_online -= 1;
        }
        spot.is_online = false;
        // A stream left open (its edge died, see `DomainConfig::stream_idle_ms`) is over.
        spot.open_streams = 0;
        spot.time_updated = now;
        tracing::info!(spot = %spot.serial_number, "spot disconnected (offline)");
        let topic = topics::spot_disconnected(spot.id, &spot.serial_number);
        self.dirty.insert((Table::Spots, spot_id));
        self.log_row(Topic::Text(&topic), None, now, Table::Spots, spot_id);
        self.withdraw_reports_of(spot_id, now);
        self.report_offline(spot_id, now);
    }

    /// Ends every report of spot `spot_id` of this domain's items (it went offline).
    pub(super) fn withdraw_reports_of(&mut self, spot_id: Id, now: i64) {
        let reported: Vec<Id> = self
            .presences
            .values()
            .filter(|p| p.reporters.contains(spot_id))
            .map(|p| p.id)
            .collect();
        for presence_id in reported {
            self.withdraw(spot_id, presence_id, None, now);
        }
    }
}

impl Spot {
    /// The delivery contract's dedupe: a `spot create` with a new `seq_epoch` restarts the
    /// sequence; an event whose `seq` is at or below the highest stored in the epoch is a
    /// replay. Whether the event is new (then it is counted, before it is applied: nothing
    /// that applies it reads the counters).
    pub(super) fn accept(&mut self, event: &Event) -> bool {
        if let EventKind::Spot(Action::Create, status) = &event.kind {
            if status.seq_epoch.is_some() && status.seq_epoch != self.seq_epoch {
                self.seq_epoch = status.seq_epoch;
                self.acked_seq = 0;
            }
        }
        if event.seq.is_some_and(|seq| seq <= self.acked_seq) {
            return false;
        }
        if let Some(seq) = event.seq {
            self.acked_seq = self.acked_seq.max(seq);
        }
        self.event_counter += 1;
        true
    }

    /// A new event about the spot itself, with its object (`seq` taken out): `spot create`
    /// sets its `status` (and version), `config create` its `config`, `config update` merges
    /// into the config up to `config_max_bytes` ([`Spot::merge_config`]).
    pub(super) fn apply_own_event(
        &mut self,
        kind: &EventKind,
        object: Object,
        config_max_bytes: usize,
        now: i64,
    ) {
        match kind {
            EventKind::Spot(Action::Create, status) => {
                self.status = object;
                if let Some(v) = &status.version {
                    self.version = Some(v.clone());
                }
                self.time_updated = now;
            }
            EventKind::Config(Action::Create, _) => {
                self.config = object;
                self.time_updated = now;
            }
            EventKind::Config(..) => self.merge_config(object, config_max_bytes, now),
            _ => {}
        }
    }

    /// Merges a `config update`'s object into the spot's `config`, unless the result would be
    /// larger than `max_bytes` of JSON (see [`super::DomainConfig::spot_config_max_bytes`]):
    /// then the config stays as it is and a warning says so.
    pub(super) fn merge_config(&mut self, update: Object, max_bytes: usize, now: i64) {
        let mut merged = self.config.clone();
        for (k, v) in update {
            if k != "seq" {
                merged.insert(k, v);
            }
        }
        let bytes = serde_json::to_vec(&merged).map_or(usize::MAX, |json| json.len());
        if bytes > max_bytes {
            tracing::warn!(
                spot = %self.serial_number,
                bytes,
                max_bytes,
                "config update not merged: the spot's config would grow past its maximum"
            );
            return;
        }
        self.config = merged;
        self.time_updated = now;
    }
}

/// The object of an encoded event (`["r","a",{obj}]`), via serde_json.
pub(super) fn event_object(encoded: &str) -> Object {
    match serde_json::from_str::<Value>(encoded) {
        Ok(Value::Array(mut parts)) if parts.len() == 3 => match parts.pop() {
            Some(Value::Object(mut o)) => {
                o.remove("seq");
                o
            }
            _ => Object::new(),
        },
        _ => Object::new(),
    }
}

/// A downstream command (`<resource> update`) with the given object, typed by the codec.
pub(super) fn command_event(resource: &str, object: Object) -> Event {
    let text = json!([resource, "update", Value::Object(object.clone())]).to_string();
    match decode_json_event(&text) {
        Some(Ok(event)) => event,
        _ => Event::new(EventKind::Other(spot_protocol::OtherEvent {
            resource_type: resource.to_string(),
            action: "update".to_string(),
            object,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::testing::*;

    #[test]
    fn a_stream_that_never_ends_keeps_its_spot_online_unless_streams_go_idle() {
        for idle in [None, Some(30_000)] {
            let mut d = Domain::new(DomainConfig {
                stream_idle_ms: idle,
                ..DomainConfig::default()
            });
            d.begin_stream("9", None, T0);
            d.apply_event("9", &presence(Action::Create, "0a", Proximity::Near), T0);
            // No end: the stream's edge died.
            d.sweep(T0 + 29_000);
            assert!(
                d.spots.values().all(|s| s.is_online),
                "{idle:?}: not idle yet"
            );
            d.sweep(T0 + 31_000);
            let online = d.spots.values().all(|s| s.is_online);
            assert_eq!(online, idle.is_none(), "{idle:?}");
        }
    }
    use spot_protocol::SpotStatus;
    #[test]
    fn a_spot_is_created_on_first_sight_with_its_own_location() {
        let mut d = Domain::new(DomainConfig::default());
        d.begin_stream("203", Some("35-42"), T0);
        let spot = d.spot_by_serial("203").unwrap().clone();
        assert_eq!(spot.request_counter, 1);
        assert_eq!(spot.version.as_deref(), Some("35-42"));
        assert!(spot.is_online);
        let location = d.locations.get(spot.report_location.unwrap()).unwrap();
        assert_eq!(location.label, "spot203");
        assert!(spot.id > location.id, "ids are chronological");
        assert_eq!(
            topics_of(&d),
            vec![format!("spots/{}/connected/203", spot.id)]
        );
    }

    #[test]
    fn a_silent_spot_goes_offline_and_its_presences_are_withdrawn() {
        let mut d = Domain::new(DomainConfig::default());
        let code = "00000000000000000000000c";
        d.begin_stream("1", None, T0);
        d.apply_event("1", &presence(Action::Create, code, Proximity::Near), T0);
        d.sweep(T0 + 60_000);
        assert!(
            d.spot_by_serial("1").unwrap().is_online,
            "an open stream keeps it online"
        );
        d.end_stream("1", T0 + 1_000, true);
        d.sweep(T0 + 10_999);
        assert!(d.spot_by_serial("1").unwrap().is_online, "not yet 10 s");
        assert_eq!(d.spots_online(), 1);
        d.sweep(T0 + 11_000);
        let spot = d.spot_by_serial("1").unwrap().clone();
        assert!(!spot.is_online);
        assert_eq!(d.spots_online(), 0);
        assert!(d.presences.is_empty());
        assert!(!item(&d, code).is_present);
        assert!(topics_of(&d).contains(&format!("spots/{}/disconnected/1", spot.id)));
        let changes = d.take_changes(true);
        assert_eq!(changes.deletes.len(), 1, "the presence row is deleted");
    }

    #[test]
    fn replays_are_dropped_until_the_epoch_changes() {
        let mut d = Domain::new(DomainConfig::default());
        let create = |epoch| {
            Event::new(EventKind::Spot(
                Action::Create,
                SpotStatus {
                    spot_id: Some("5".into()),
                    seq_epoch: Some(epoch),
                    ..SpotStatus::default()
                },
            ))
        };
        let mut p = presence(Action::Create, "00000000000000000000000d", Proximity::Far);
        p.seq = Some(3);
        assert_eq!(d.apply_event("5", &create(1), T0), Applied::Stored);
        assert_eq!(d.apply_event("5", &p, T0), Applied::Stored);
        assert_eq!(d.apply_event("5", &p, T0), Applied::Duplicate);
        assert_eq!(d.acked_seq("5"), 3);
        assert_eq!(d.apply_event("5", &create(2), T0), Applied::Stored);
        assert_eq!(d.acked_seq("5"), 0);
        assert_eq!(d.apply_event("5", &p, T0), Applied::Stored);
        let changes = d.take_changes(true);
        assert_eq!(changes.upstream().count(), 4, "the replay is not stored");
        assert_eq!(d.spot_by_serial("5").unwrap().event_counter, 4);
    }

    #[test]
    fn events_of_interleaved_spots_count_on_their_own_spot() {
        let mut d = Domain::new(DomainConfig::default());
        let serials = ["1", "2", "2", "10", "1", "2", "10", "10", "10"];
        for (i, serial) in serials.iter().enumerate() {
            let code = format!("{i:024x}");
            d.apply_event(
                serial,
                &presence(Action::Create, &code, Proximity::Near),
                T0,
            );
        }
        for (serial, n) in [("1", 2), ("2", 3), ("10", 4)] {
            let spot = d.spot_by_serial(serial).unwrap();
            assert_eq!(spot.event_counter, n, "spot {serial}");
            let at = d
                .presences
                .values()
                .filter(|p| Some(p.location) == spot.report_location)
                .count();
            assert_eq!(at, n as usize, "presences at spot {serial}'s location");
        }
        assert_eq!(d.spots.len(), 3);
    }

    #[test]
    fn config_updates_with_ever_new_keys_do_not_grow_a_spots_config_without_bound() {
        let mut d = Domain::new(DomainConfig::default());
        let max = DomainConfig::default().spot_config_max_bytes;
        let update = |key: &str, value: &str| {
            let text = json!(["config", "update", { key: value }]).to_string();
            decode_json_event(&text).unwrap().unwrap()
        };
        let config_bytes = |d: &Domain| {
            serde_json::to_string(&d.spot_by_serial("1").unwrap().config)
                .unwrap()
                .len()
        };
        let filler = "x".repeat(1_000);
        for i in 0..200 {
            let applied = d.apply_event("1", &update(&format!("key{i}"), &filler), T0 + i);
            assert_eq!(
                applied,
                Applied::Stored,
                "acknowledged and stored all the same"
            );
            assert!(
                config_bytes(&d) <= max,
                "after update {i}: {}",
                config_bytes(&d)
            );
        }
        let spot = d.spot_by_serial("1").unwrap();
        assert!(
            spot.config.contains_key("key0"),
            "merged while there was room"
        );
        assert!(
            !spot.config.contains_key("key199"),
            "dropped past the maximum"
        );
        assert_eq!(spot.event_counter, 200);
        d.apply_event("1", &update("key0", "changed"), T0 + 200);
        assert_eq!(
            d.spot_by_serial("1").unwrap().config["key0"],
            "changed",
            "an update that does not grow it past the maximum still merges"
        );
    }
}
