//! The vendor's `sets`: item lists and spot lists ([`MemberList`]) — named lists of item ids
//! or spot ids that applications keep (`/api/sets/itemlists`, `/api/sets/spotlists`). They
//! are rows like locations (tables [`Table::ItemLists`] and [`Table::SpotLists`]) that only
//! the API changes: each change is flushed with the next commit, as a location's is (not
//! journaled), so it survives a restart once answered. An item shows the item lists it is
//! in (its `sets`: [`Domain::sets_of_item`]); a deleted item leaves its lists.

use std::sync::Arc;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::{json, Value};
use spot_protocol::Object;

use super::json::WriteJson;
use super::model::iso;
use super::views::{PutError, Write};
use super::{Domain, Table};
use crate::ids::Id;

/// Which kind of list a collection holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// Item lists: ids of items.
    Items,
    /// Spot lists: ids of spots.
    Spots,
}

impl ListKind {
    /// The kind of list of `collection` (`itemlists`, `spotlists`), if it is one.
    pub fn of(collection: &str) -> Option<ListKind> {
        match collection {
            "itemlists" => Some(ListKind::Items),
            "spotlists" => Some(ListKind::Spots),
            _ => None,
        }
    }

    /// The collection's name.
    pub fn collection(self) -> &'static str {
        match self {
            ListKind::Items => "itemlists",
            ListKind::Spots => "spotlists",
        }
    }

    fn table(self) -> Table {
        match self {
            ListKind::Items => Table::ItemLists,
            ListKind::Spots => Table::SpotLists,
        }
    }

    /// What its members are (for messages).
    pub(super) fn members(self) -> &'static str {
        match self {
            ListKind::Items => "items",
            ListKind::Spots => "spots",
        }
    }
}

/// An item list or a spot list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberList {
    /// Chronological id.
    pub id: Id,
    /// Human label.
    pub label: String,
    /// Free-form application data.
    pub custom: Value,
    /// Searchable application data (an object).
    pub metadata: Object,
    /// The ids of its items (or spots), in id order, each once.
    pub members: Vec<Id>,
    /// Created.
    #[serde(with = "iso")]
    pub time_created: i64,
    /// Last changed (its fields or its members).
    #[serde(with = "iso")]
    pub time_updated: i64,
}

impl WriteJson for MemberList {}

/// What the REST API shows of a list: its members are counted (`total`) and hashed
/// (`sha1`), and listed at `…/ids` only.
#[derive(Serialize)]
pub(super) struct ListDoc<'a> {
    id: Id,
    label: &'a str,
    custom: &'a Value,
    metadata: &'a Object,
    total: usize,
    sha1: Sha1Of<'a>,
    #[serde(serialize_with = "iso::serialize")]
    time_created: i64,
    #[serde(serialize_with = "iso::serialize")]
    time_updated: i64,
}

impl MemberList {
    /// The document the REST API shows.
    pub(super) fn doc(&self) -> ListDoc<'_> {
        ListDoc {
            id: self.id,
            label: &self.label,
            custom: &self.custom,
            metadata: &self.metadata,
            total: self.members.len(),
            sha1: Sha1Of(&self.members),
            time_created: self.time_created,
            time_updated: self.time_updated,
        }
    }
}

/// The SHA-1 (hex) of a list's members: of their ids' text, each followed by a newline, in
/// id order. Changes whenever a member comes or goes; computed only when shown.
struct Sha1Of<'a>(&'a [Id]);

impl Serialize for Sha1Of<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut text = String::with_capacity(self.0.len() * 17);
        for id in self.0 {
            id.push_hex(&mut text);
            text.push('\n');
        }
        let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, text.as_bytes());
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        s.serialize_str(&hex)
    }
}

/// The answer of a change of a list's members, as the vendor's: `status` and `total`.
fn members_answer(total: usize) -> Value {
    json!({"status": 200, "total": total})
}

impl Domain {
    /// The lists of `kind`.
    pub(super) fn lists(&self, kind: ListKind) -> &crate::ids::IdMap<MemberList> {
        match kind {
            ListKind::Items => &self.item_lists,
            ListKind::Spots => &self.spot_lists,
        }
    }

    fn lists_mut(&mut self, kind: ListKind) -> &mut crate::ids::IdMap<MemberList> {
        match kind {
            ListKind::Items => &mut self.item_lists,
            ListKind::Spots => &mut self.spot_lists,
        }
    }

    /// The item lists the item `item` is in, in id order (`None`: none).
    pub(super) fn sets_of_item(&self, item: Id) -> Option<Arc<[Id]>> {
        if self.sets_of_item.is_empty() {
            return None;
        }
        self.sets_of_item.get(&item).cloned()
    }

    /// Loads a stored list (see [`Domain::load`]).
    pub(super) fn load_list(&mut self, kind: ListKind, list: MemberList) {
        if kind == ListKind::Items {
            for &item in &list.members {
                self.index_membership(item, list.id, true);
            }
        }
        self.lists_mut(kind).insert(list.id, list);
    }

    /// Forgets list `id` of `table` (item lists or spot lists) and its members' index
    /// entries (a replica's refresh, [`Domain::refresh_row`]).
    pub(super) fn unload_list(&mut self, table: Table, id: Id) {
        let kind = match table {
            Table::ItemLists => ListKind::Items,
            _ => ListKind::Spots,
        };
        let Some(list) = self.lists_mut(kind).remove(id) else {
            return;
        };
        if kind == ListKind::Items {
            for &item in &list.members {
                self.index_membership(item, id, false);
            }
        }
    }

    /// Adds (`joined`) or removes `list` in the item's entry of `sets_of_item`.
    fn index_membership(&mut self, item: Id, list: Id, joined: bool) {
        let mut sets: Vec<Id> = self
            .sets_of_item
            .get(&item)
            .map(|s| s.to_vec())
            .unwrap_or_default();
        match (sets.binary_search(&list), joined) {
            (Err(at), true) => sets.insert(at, list),
            (Ok(at), false) => {
                sets.remove(at);
            }
            _ => return,
        }
        if sets.is_empty() {
            self.sets_of_item.remove(&item);
        } else {
            self.sets_of_item.insert(item, sets.into());
        }
    }

    /// A deleted item leaves the item lists it was in (each changed, flushed and logged).
    pub(super) fn leave_lists(&mut self, item: Id, now: i64) {
        let Some(lists) = self.sets_of_item.remove(&item) else {
            return;
        };
        for &list_id in lists.iter() {
            if let Some(list) = self.item_lists.get_mut(list_id) {
                if let Ok(at) = list.members.binary_search(&item) {
                    list.members.remove(at);
                    list.time_updated = now;
                }
                self.changed_list(ListKind::Items, list_id, "updated", Write::Put, now);
            }
        }
    }

    /// A list changed through the API: flushed with the next commit, and logged.
    fn changed_list(&mut self, kind: ListKind, id: Id, action: &str, method: Write, now: i64) {
        let table = kind.table();
        self.dirty.insert((table, id));
        self.must_flush = true;
        let value = self
            .get(kind.collection(), &id.hex())
            .unwrap_or(Value::Null);
        self.log_api_change((kind.collection(), id, action, method), &value, now);
    }

    /// A change of a list through the API: `POST` (`label`, `custom`, `metadata`), `PUT`
    /// (the same), `DELETE`, [`Write::AddMembers`] (`{"ids": [...]}`: ids of existing items,
    /// or spots by id or serial number) or [`Write::RemoveMember`] (`{"id": "..."}`).
    pub(super) fn write_list(
        &mut self,
        kind: ListKind,
        method: Write,
        id: &str,
        body: &Object,
        now: i64,
    ) -> Result<Value, PutError> {
        let collection = kind.collection();
        let not_found = || PutError::NotFound {
            collection: collection.to_string(),
            id: id.to_string(),
        };
        let list_id = Id::parse(id).filter(|id| self.lists(kind).contains_key(*id));
        match (method, list_id) {
            (Write::Post, _) => {
                let list_id = self.ids.next(now);
                let mut list = MemberList {
                    id: list_id,
                    label: String::new(),
                    custom: Value::Null,
                    metadata: Object::new(),
                    members: Vec::new(),
                    time_created: now,
                    time_updated: now,
                };
                set_fields(&mut list, body)?;
                self.lists_mut(kind).insert(list_id, list);
                self.changed_list(kind, list_id, "created", Write::Post, now);
                self.get(collection, &list_id.hex()).ok_or_else(not_found)
            }
            (_, None) => Err(not_found()),
            (Write::Put, Some(list_id)) => {
                // In place (`set_fields` checks every field before it sets one): a change of
                // a label does not copy the members.
                let list = self
                    .lists_mut(kind)
                    .get_mut(list_id)
                    .ok_or_else(not_found)?;
                set_fields(list, body)?;
                list.time_updated = now;
                self.changed_list(kind, list_id, "updated", Write::Put, now);
                self.get(collection, &list_id.hex()).ok_or_else(not_found)
            }
            (Write::Delete, Some(list_id)) => {
                let value = self.get(collection, &list_id.hex()).ok_or_else(not_found)?;
                if let Some(list) = self.lists_mut(kind).remove(list_id) {
                    if kind == ListKind::Items {
                        for &item in &list.members {
                            self.index_membership(item, list_id, false);
                        }
                    }
                }
                self.dirty.remove(&(kind.table(), list_id));
                self.deleted.insert((kind.table(), list_id));
                self.must_flush = true;
                self.log_api_change((collection, list_id, "deleted", Write::Delete), &value, now);
                Ok(value)
            }
            (Write::AddMembers, Some(list_id)) => {
                let ids = body.get("ids").and_then(Value::as_array).ok_or_else(|| {
                    PutError::BadField {
                        field: "ids".into(),
                        reason: format!("the body is an array of ids of {}", kind.members()),
                    }
                })?;
                let mut found = Vec::with_capacity(ids.len());
                for v in ids {
                    let member = v.as_str().and_then(|text| self.member_id(kind, text));
                    found.push(member.ok_or_else(|| PutError::BadField {
                        field: "ids".into(),
                        reason: format!("{v} is not the id of one of the {}", kind.members()),
                    })?);
                }
                let max = self.config.list_max_members;
                let list = self.lists(kind).get(list_id).ok_or_else(not_found)?;
                // The new members, sorted once and merged in below: inserting each at its
                // place moved the rest of the list per member (quadratic in a large body).
                let mut added: Vec<Id> = found
                    .into_iter()
                    .filter(|member| list.members.binary_search(member).is_err())
                    .collect();
                added.sort_unstable();
                added.dedup();
                let total = list.members.len() + added.len();
                if total > max {
                    return Err(PutError::Conflict(format!(
                        "{collection} {id} would hold {total} {}: a list holds at most {max}",
                        kind.members()
                    )));
                }
                if !added.is_empty() {
                    let list = self
                        .lists_mut(kind)
                        .get_mut(list_id)
                        .ok_or_else(not_found)?;
                    list.members.extend_from_slice(&added);
                    list.members.sort_unstable();
                    list.time_updated = now;
                    if kind == ListKind::Items {
                        for member in added {
                            self.index_membership(member, list_id, true);
                        }
                    }
                    self.changed_list(kind, list_id, "updated", Write::Post, now);
                }
                Ok(members_answer(total))
            }
            (Write::RemoveMember, Some(list_id)) => {
                let text = body.get("id").and_then(Value::as_str).unwrap_or_default();
                let member = self.member_id(kind, text);
                let list = self
                    .lists_mut(kind)
                    .get_mut(list_id)
                    .ok_or_else(not_found)?;
                let at = member
                    .and_then(|m| list.members.binary_search(&m).ok())
                    .ok_or_else(|| PutError::NotFound {
                        collection: format!("{collection} {id}: member"),
                        id: text.to_string(),
                    })?;
                let member = list.members.remove(at);
                list.time_updated = now;
                let total = list.members.len();
                if kind == ListKind::Items {
                    self.index_membership(member, list_id, false);
                }
                self.changed_list(kind, list_id, "updated", Write::Delete, now);
                Ok(members_answer(total))
            }
        }
    }

    /// The id of the item (by id) or spot (by id or serial number) `text` names; another
    /// partition's by id only (see [`Domain::foreign`]).
    pub(super) fn member_id(&self, kind: ListKind, text: &str) -> Option<Id> {
        match kind {
            ListKind::Items => Id::parse(text)
                .filter(|id| self.items.contains_key(*id))
                .or_else(|| self.foreign(text)),
            ListKind::Spots => self.resolve_spot_id(text).or_else(|| self.foreign(text)),
        }
    }

    /// The member ids of a list (`GET …/{id}/ids`); `None`: no such list.
    pub fn list_members(&self, collection: &str, id: &str) -> Option<Vec<String>> {
        let kind = ListKind::of(collection)?;
        let list = self.lists(kind).get_str(id)?;
        Some(list.members.iter().map(|m| m.text()).collect())
    }
}

/// Sets the fields of a `POST` or `PUT` body on `list`, after checking them all.
fn set_fields(list: &mut MemberList, body: &Object) -> Result<(), PutError> {
    let bad = |field: &str, reason: &str| PutError::BadField {
        field: field.to_string(),
        reason: reason.to_string(),
    };
    for (k, v) in body {
        match (k.as_str(), v) {
            ("label", Value::String(_) | Value::Null) => {}
            ("label", _) => return Err(bad(k, "must be a string or null")),
            ("metadata", _) => Domain::check_metadata(v)?,
            ("custom", _) => {}
            _ => {
                return Err(bad(
                    k,
                    "cannot be set (only label, custom, metadata; members at …/{id}/ids)",
                ))
            }
        }
    }
    for (k, v) in body {
        match k.as_str() {
            "label" => list.label = v.as_str().unwrap_or_default().to_string(),
            "metadata" => list.metadata = v.as_object().cloned().unwrap_or_default(),
            _ => list.custom = v.clone(),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::testing::*;

    fn body(v: Value) -> Object {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_list_is_flushed_loaded_back_and_its_items_show_it_until_deleted() {
        let mut d = Domain::new(DomainConfig::default());
        d.begin_stream("7", None, T0);
        d.apply_event(
            "7",
            &presence(Action::Create, "ab", Proximity::Near),
            T0 + 1,
        );
        let item_id = item(&d, "ab").id;
        d.take_changes(true);
        let list = d
            .write(
                Write::Post,
                "itemlists",
                "",
                &body(json!({"label": "pallets", "metadata": {"site": "A"}})),
                T0 + 2,
            )
            .unwrap();
        let list_id = list["id"].as_str().unwrap().to_string();
        assert_eq!(list["total"], 0);
        let added = d
            .write(
                Write::AddMembers,
                "itemlists",
                &list_id,
                &body(json!({"ids": [item_id.text(), item_id.text()]})),
                T0 + 3,
            )
            .unwrap();
        assert_eq!(added, json!({"status": 200, "total": 1}), "each item once");
        let refused = d.write(
            Write::AddMembers,
            "itemlists",
            &list_id,
            &body(json!({"ids": ["0000000000000001"]})),
            T0 + 3,
        );
        assert!(
            matches!(refused, Err(PutError::BadField { .. })),
            "{refused:?}"
        );
        let flush = d.take_changes(false);
        assert!(
            flush.flush,
            "an API change of a list is flushed with the next commit"
        );
        let mut loaded = Domain::new(DomainConfig::default());
        load_rows(&mut loaded, &flush);
        // The items' rows were flushed before: load them into the copy too.
        loaded.load_item(item(&d, "ab"));
        assert_eq!(
            loaded.get("itemlists", &list_id),
            d.get("itemlists", &list_id)
        );
        assert_eq!(
            loaded.get("items", &item_id.text()).unwrap()["sets"],
            json!([list_id])
        );
        let sha1_before = d.get("itemlists", &list_id).unwrap()["sha1"].clone();
        d.write(
            Write::RemoveMember,
            "itemlists",
            &list_id,
            &body(json!({"id": item_id.text()})),
            T0 + 4,
        )
        .unwrap();
        let after = d.get("itemlists", &list_id).unwrap();
        assert_ne!(
            after["sha1"], sha1_before,
            "the sha1 changes with the members"
        );
        assert!(d
            .get("items", &item_id.text())
            .unwrap()
            .get("sets")
            .is_none());
        d.write(Write::Delete, "itemlists", &list_id, &Object::new(), T0 + 5)
            .unwrap();
        let flush = d.take_changes(false);
        let id = Id::parse(&list_id).unwrap();
        assert_eq!(flush.deletes, vec![(Table::ItemLists, id)]);
    }

    #[test]
    fn a_deleted_item_leaves_its_lists() {
        let mut d = Domain::new(DomainConfig::default());
        let item = d
            .write(
                Write::Post,
                "items",
                "",
                &body(json!({"code_hex": "cd"})),
                T0,
            )
            .unwrap();
        let item_id = item["id"].as_str().unwrap().to_string();
        let list = d
            .write(Write::Post, "itemlists", "", &Object::new(), T0)
            .unwrap();
        let list_id = list["id"].as_str().unwrap().to_string();
        d.write(
            Write::AddMembers,
            "itemlists",
            &list_id,
            &body(json!({"ids": [item_id]})),
            T0 + 1,
        )
        .unwrap();
        d.take_changes(false);
        d.write(Write::Delete, "items", &item_id, &Object::new(), T0 + 2)
            .unwrap();
        assert_eq!(d.get("itemlists", &list_id).unwrap()["total"], 0);
        let flush = d.take_changes(false);
        assert!(flush
            .upserts
            .iter()
            .any(|(t, id, _)| *t == Table::ItemLists && id.text() == list_id));
    }

    #[test]
    fn a_list_holds_at_most_list_max_members() {
        let mut d = Domain::new(DomainConfig {
            list_max_members: 1,
            ..DomainConfig::default()
        });
        d.begin_stream("7", None, T0);
        d.begin_stream("8", None, T0);
        let list = d
            .write(Write::Post, "spotlists", "", &Object::new(), T0)
            .unwrap();
        let list_id = list["id"].as_str().unwrap().to_string();
        let refused = d.write(
            Write::AddMembers,
            "spotlists",
            &list_id,
            &body(json!({"ids": ["7", "8"]})),
            T0 + 1,
        );
        assert!(matches!(refused, Err(PutError::Conflict(_))), "{refused:?}");
        assert_eq!(d.get("spotlists", &list_id).unwrap()["total"], 0);
    }

    /// Members given out of order, twice, or already in the list are kept once, in id order.
    #[test]
    fn added_members_are_kept_once_in_id_order() {
        let mut d = Domain::new(DomainConfig::default());
        for serial in ["1", "2", "3", "4"] {
            d.begin_stream(serial, None, T0);
        }
        let list = d
            .write(Write::Post, "spotlists", "", &Object::new(), T0)
            .unwrap();
        let list_id = list["id"].as_str().unwrap().to_string();
        let add = |d: &mut Domain, ids: Value| {
            d.write(
                Write::AddMembers,
                "spotlists",
                &list_id,
                &body(json!({ "ids": ids })),
                T0,
            )
            .unwrap()
        };
        assert_eq!(add(&mut d, json!(["3"]))["total"], 1);
        assert_eq!(add(&mut d, json!(["4", "1", "3", "1", "2"]))["total"], 4);
        let ids: Vec<String> = ["1", "2", "3", "4"]
            .iter()
            .map(|s| d.resolve_spot_id(s).unwrap().text())
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(d.list_members("spotlists", &list_id).unwrap(), sorted);
    }
}
