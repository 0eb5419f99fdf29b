//! Collection queries of the REST API over JSON documents: filters, sort, limit, paging.
//! Pure: the HTTP layer passes the documents and the query parameters in.
//!
//! Parameters: `limit` (default 100, at most [`MAX_LIMIT`]), `sort` (comma-separated
//! fields, `-` prefix for descending, default `-id`; `id` is always the final tie-breaker),
//! `results_only`, `id_only`, `after_id`/`before_id`/`from_id`/`until_id` on ids,
//! `after`/`before`/`from`/`until` on `time_created`, `skip`, and equality filters on any
//! other field (dotted paths reach nested fields: `status.version=…`). The wrapped answer
//! carries `results`, `limit`, `is_limited` and `url_next`. `populate=f1,f2` replaces the id
//! in each named reference field with the referenced document (see [`references`]), on the
//! returned page only, after filters and sort (which see the ids).

use std::cmp::Ordering;
use std::collections::HashMap;

use serde_json::{json, Value};
use spot_protocol::Timestamp;

/// The collections of the REST API (`/api/<collection>`).
pub const COLLECTIONS: [&str; 5] = ["spots", "locations", "items", "presences", "events"];

/// Largest `limit` accepted.
pub const MAX_LIMIT: usize = 10_000;

/// A bad query: names the parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad query parameter {param:?}: {reason}")]
pub struct QueryError {
    /// The parameter.
    pub param: String,
    /// Why.
    pub reason: String,
}

fn bad(param: &str, reason: impl Into<String>) -> QueryError {
    QueryError {
        param: param.to_string(),
        reason: reason.into(),
    }
}

fn parse_bool(param: &str, v: &str) -> Result<bool, QueryError> {
    match v {
        "true" | "1" | "" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(bad(param, "must be true or false")),
    }
}

fn field<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(doc, |v, key| v.get(key))
}

/// Whether a document's value equals the text of an equality filter.
fn matches(value: Option<&Value>, wanted: &str) -> bool {
    match value {
        None | Some(Value::Null) => wanted == "null",
        Some(Value::String(s)) => s == wanted,
        Some(Value::Bool(b)) => wanted == if *b { "true" } else { "false" },
        Some(Value::Number(n)) => match (n.as_f64(), wanted.parse::<f64>()) {
            (Some(a), Ok(b)) => a == b,
            _ => n.to_string() == wanted,
        },
        Some(other) => serde_json::to_string(other).is_ok_and(|text| text == wanted),
    }
}

fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    fn rank(v: Option<&Value>) -> u8 {
        match v {
            None | Some(Value::Null) => 0,
            Some(Value::Bool(_)) => 1,
            Some(Value::Number(_)) => 2,
            Some(Value::String(_)) => 3,
            Some(_) => 4,
        }
    }
    match (a, b) {
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// The reference fields of a collection's documents, each with the collection it points
/// into: what `populate` accepts.
pub fn references(collection: &str) -> &'static [(&'static str, &'static str)] {
    match collection {
        "items" => &[("location", "locations")],
        "presences" => &[("item", "items"), ("location", "locations")],
        "spots" => &[("report_location", "locations")],
        _ => &[],
    }
}

/// The fields named by a `populate` value, each with its target collection.
pub fn populate_fields(
    collection: &str,
    value: &str,
) -> Result<Vec<(&'static str, &'static str)>, QueryError> {
    let known = references(collection);
    value
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|f| {
            known
                .iter()
                .find(|(name, _)| *name == f)
                .copied()
                .ok_or_else(|| {
                    let names: Vec<&str> = known.iter().map(|(n, _)| *n).collect();
                    bad(
                        "populate",
                        if names.is_empty() {
                            format!("{collection} have no reference fields (asked for {f:?})")
                        } else {
                            format!(
                                "{f:?} is not a reference field of {collection}; one of: {}",
                                names.join(", ")
                            )
                        },
                    )
                })
        })
        .collect()
}

/// Replaces the ids in `fields` of each document with what `lookup(collection, id)` finds
/// (an id that finds nothing stays as it is). Each id is looked up once.
pub fn populate(
    docs: &mut [Value],
    fields: &[(&str, &str)],
    lookup: &dyn Fn(&str, &str) -> Option<Value>,
) {
    let mut found: HashMap<(&str, String), Option<Value>> = HashMap::new();
    for doc in docs.iter_mut() {
        for (field, target) in fields {
            let Some(slot) = doc.get_mut(*field) else {
                continue;
            };
            let Some(id) = slot.as_str().map(str::to_string) else {
                continue;
            };
            let object = found
                .entry((*target, id))
                .or_insert_with_key(|(target, id)| lookup(target, id));
            if let Some(object) = object {
                *slot = object.clone();
            }
        }
    }
}

/// Runs a query over a collection's documents. `path` is the request path (for
/// `url_next`); `lookup(collection, id)` finds referenced documents for `populate`.
pub fn query(
    collection: &str,
    mut docs: Vec<Value>,
    params: &[(String, String)],
    path: &str,
    lookup: &dyn Fn(&str, &str) -> Option<Value>,
) -> Result<Value, QueryError> {
    let mut limit = 100usize;
    let mut skip = 0usize;
    let mut sort: Vec<(String, bool)> = vec![("id".to_string(), true)];
    let mut results_only = false;
    let mut id_only = false;
    let mut populated = Vec::new();
    for (k, v) in params {
        match k.as_str() {
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| bad(k, format!("must be a number from 1 to {MAX_LIMIT}")))?
            }
            "skip" => skip = v.parse().map_err(|_| bad(k, "must be a number"))?,
            "sort" => {
                sort = v
                    .split(',')
                    .filter(|f| !f.is_empty())
                    .map(|f| match f.strip_prefix('-') {
                        Some(name) => (name.to_string(), true),
                        None => (f.trim_start_matches('+').to_string(), false),
                    })
                    .collect();
                if sort.is_empty() || sort.iter().any(|(f, _)| f.is_empty()) {
                    return Err(bad(k, "must name fields, e.g. -time_created,id"));
                }
            }
            "results_only" => results_only = parse_bool(k, v)?,
            "id_only" => id_only = parse_bool(k, v)?,
            "populate" => populated.extend(populate_fields(collection, v)?),
            "after_id" | "before_id" | "from_id" | "until_id" => {
                docs.retain(|d| {
                    let id = d.get("id").and_then(Value::as_str).unwrap_or("");
                    match k.as_str() {
                        "after_id" => id > v.as_str(),
                        "before_id" => id < v.as_str(),
                        "from_id" => id >= v.as_str(),
                        _ => id <= v.as_str(),
                    }
                });
            }
            "after" | "before" | "from" | "until" => {
                let t = Timestamp::parse(v)
                    .ok_or_else(|| bad(k, "must be an ISO 8601 time, e.g. 2024-01-31T12:00:00Z"))?;
                docs.retain(|d| {
                    let Some(created) = d
                        .get("time_created")
                        .and_then(Value::as_str)
                        .and_then(Timestamp::parse)
                    else {
                        return false;
                    };
                    match k.as_str() {
                        "after" => created > t,
                        "before" => created < t,
                        "from" => created >= t,
                        _ => created <= t,
                    }
                });
            }
            name => {
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
                {
                    return Err(bad(name, "is not a field name"));
                }
                docs.retain(|d| matches(field(d, name), v));
            }
        }
    }
    if !sort.iter().any(|(f, _)| f == "id") {
        sort.push(("id".to_string(), false));
    }
    docs.sort_by(|a, b| {
        for (f, desc) in &sort {
            let o = compare(field(a, f), field(b, f));
            let o = if *desc { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    });
    let total_after_skip = docs.len().saturating_sub(skip);
    let is_limited = total_after_skip > limit;
    let mut page: Vec<Value> = docs.into_iter().skip(skip).take(limit).collect();
    let url_next = if is_limited {
        page.last()
            .map(|last| next_url(path, params, &sort, last, skip + limit))
    } else {
        None
    };
    let results: Vec<Value> = if id_only {
        page.into_iter()
            .map(|d| d.get("id").cloned().unwrap_or(Value::Null))
            .collect()
    } else {
        populate(&mut page, &populated, lookup);
        page
    };
    if results_only {
        return Ok(Value::Array(results));
    }
    Ok(json!({
        "results": results,
        "limit": limit,
        "is_limited": is_limited,
        "url_next": url_next,
    }))
}

/// The next page: by id when sorting by id alone (never repeats or skips while documents
/// are added), else by offset.
fn next_url(
    path: &str,
    params: &[(String, String)],
    sort: &[(String, bool)],
    last: &Value,
    next_skip: usize,
) -> String {
    let last_id = last.get("id").and_then(Value::as_str).unwrap_or("");
    let mut out = form_urlencoded::Serializer::new(String::new());
    let by_id = sort
        .first()
        .filter(|(f, _)| f == "id")
        .map(|(_, desc)| *desc);
    let replaced: &[&str] = match by_id {
        Some(true) => &["before_id", "skip"],
        Some(false) => &["after_id", "skip"],
        None => &["skip"],
    };
    for (k, v) in params {
        if !replaced.contains(&k.as_str()) {
            out.append_pair(k, v);
        }
    }
    match by_id {
        Some(true) => out.append_pair("before_id", last_id),
        Some(false) => out.append_pair("after_id", last_id),
        None => out.append_pair("skip", &next_skip.to_string()),
    };
    format!("{path}?{}", out.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(n: usize) -> Vec<Value> {
        (0..n)
            .map(|i| {
                json!({"id": format!("{i:04}"), "n": i % 3, "is_present": i % 2 == 0,
                       "time_created": format!("2024-01-01T00:00:{:02}Z", i % 60)})
            })
            .collect()
    }

    /// A query over "items" whose lookups find nothing.
    fn run(docs: Vec<Value>, params: &[(String, String)], path: &str) -> Result<Value, QueryError> {
        query("items", docs, params, path, &|_, _| None)
    }

    fn params(q: &str) -> Vec<(String, String)> {
        form_urlencoded::parse(q.as_bytes()).into_owned().collect()
    }

    fn ids(v: &Value) -> Vec<String> {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn default_is_newest_first_limited_to_100_with_url_next() {
        let v = run(docs(150), &[], "/api/items").unwrap();
        let got = ids(&v);
        assert_eq!(got.len(), 100);
        assert_eq!(got[0], "0149");
        assert_eq!(v["is_limited"], true);
        assert_eq!(v["url_next"], "/api/items?before_id=0050");
    }

    #[test]
    fn following_url_next_with_sort_id_visits_every_document_once() {
        let all = docs(57);
        let mut seen = Vec::new();
        let mut q = "sort=id&limit=10".to_string();
        loop {
            let v = run(all.clone(), &params(&q), "/api/items").unwrap();
            seen.extend(ids(&v));
            match v["url_next"].as_str() {
                Some(next) => q = next.split_once('?').unwrap().1.to_string(),
                None => break,
            }
        }
        let expected: Vec<String> = (0..57).map(|i| format!("{i:04}")).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn filters_sort_by_several_fields_and_shapes() {
        let v = run(
            docs(10),
            &params("is_present=true&sort=-n,id&results_only=true&id_only=true"),
            "/",
        )
        .unwrap();
        assert_eq!(v, json!(["0002", "0008", "0004", "0000", "0006"]));
        let v = run(docs(10), &params("n=1&after=2024-01-01T00:00:03Z"), "/").unwrap();
        assert_eq!(ids(&v), vec!["0007", "0004"]);
    }

    #[test]
    fn bad_parameters_are_named() {
        for (q, param) in [
            ("limit=abc", "limit"),
            ("limit=0", "limit"),
            ("sort=", "sort"),
            ("results_only=maybe", "results_only"),
            ("after=yesterday", "after"),
            ("a%20b=1", "a b"),
            ("populate=item", "populate"),
            ("populate=location,spot", "populate"),
        ] {
            let e = run(docs(3), &params(q), "/").unwrap_err();
            assert_eq!(e.param, param, "{q}");
        }
    }

    #[test]
    fn populate_replaces_reference_ids_with_the_documents() {
        let presences = vec![
            json!({"id": "p1", "item": "i1", "location": "l1"}),
            json!({"id": "p2", "item": "i2", "location": "l1"}),
            json!({"id": "p3", "item": "gone", "location": "l1"}),
        ];
        let calls = std::cell::Cell::new(0);
        let lookup = |collection: &str, id: &str| {
            calls.set(calls.get() + 1);
            match (collection, id) {
                ("items", "i1" | "i2") => Some(json!({"id": id, "code_hex": "c"})),
                ("locations", "l1") => Some(json!({"id": "l1", "label": "dock"})),
                _ => None,
            }
        };
        let v = query(
            "presences",
            presences.clone(),
            &params("populate=item,location&sort=id&results_only=true"),
            "/",
            &lookup,
        )
        .unwrap();
        assert_eq!(v[0]["item"], json!({"id": "i1", "code_hex": "c"}));
        assert_eq!(v[1]["location"], json!({"id": "l1", "label": "dock"}));
        assert_eq!(v[2]["item"], "gone", "an id that finds nothing stays");
        assert_eq!(calls.get(), 4, "each id looked up once");
        let v = query(
            "presences",
            presences,
            &params("populate=location&item=i2&results_only=true"),
            "/",
            &lookup,
        )
        .unwrap();
        assert_eq!(v.as_array().unwrap().len(), 1, "filters see the ids");
        assert_eq!(v[0]["item"], "i2", "only the named fields");
        assert_eq!(v[0]["location"]["label"], "dock");
    }
}
