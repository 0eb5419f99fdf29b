//! What a cluster's API node checks on its replica (the whole state) before it sends a REST
//! change to the owner of one partition ([`crate::partition`]), which sees only that
//! partition's resources and takes other partitions' ids on trust ([`Domain::foreign`]):
//! the references a change makes to resources of any partition.

use serde_json::Value;
use spot_protocol::Object;

use super::{Domain, ListKind, PutError, Write};
use crate::ids::Id;

impl Domain {
    /// Checks the references of a change (`method` on `collection`/`id` with `body`) to
    /// resources of every partition, as the owner of all would: a spot's locations exist;
    /// a location to delete is not in use; list members exist. Names list members by id
    /// in `body` (a spot given by serial number), as the owner of the list's partition
    /// can only resolve ids of other partitions.
    pub fn resolve_references(
        &self,
        method: Write,
        collection: &str,
        id: &str,
        body: &mut Object,
    ) -> Result<(), PutError> {
        match (method, collection, ListKind::of(collection)) {
            (Write::Delete, "locations", _) => {
                match Id::parse(id).filter(|&l| self.locations.contains_key(l)) {
                    Some(location) => self.location_in_use(location),
                    // The owner answers that it is not found.
                    None => Ok(()),
                }
            }
            (Write::Put, "spots", _) => {
                if let Some(Value::String(location)) = body.get("report_location") {
                    if !self.known_location(location) {
                        return Err(PutError::BadField {
                            field: "report_location".into(),
                            reason: "must be the id of an existing location, or null".into(),
                        });
                    }
                }
                match body.get("antenna_report_locations") {
                    Some(antennas) => self.antenna_report_locations(antennas).map(drop),
                    None => Ok(()),
                }
            }
            (Write::AddMembers, _, Some(kind)) => {
                let Some(Value::Array(ids)) = body.get_mut("ids") else {
                    // The owner says what the body lacks.
                    return Ok(());
                };
                for v in ids {
                    let member = v.as_str().and_then(|text| self.member_id(kind, text));
                    let member = member.ok_or_else(|| PutError::BadField {
                        field: "ids".into(),
                        reason: format!("{v} is not the id of one of the {}", kind.members()),
                    })?;
                    *v = Value::String(member.text());
                }
                Ok(())
            }
            (Write::RemoveMember, _, Some(kind)) => {
                let text = body.get("id").and_then(Value::as_str).unwrap_or_default();
                if let Some(member) = self.member_id(kind, text) {
                    body.insert("id".into(), Value::String(member.text()));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
