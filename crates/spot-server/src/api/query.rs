//! Collection queries of the REST API: filters, sort, limit, paging. Sans-IO: the HTTP layer
//! passes the query parameters in, takes the rows under the domain's read lock
//! ([`Query::rows`]: a reference count each, and with the default order only as many as the
//! page needs) and builds the answer after releasing it ([`Query::page`]: only the page
//! becomes JSON; a filter or a sort on a field reads each candidate once, and only the fields
//! it names: an event's data only when the field is under `data`).
//!
//! Parameters ([`CONTROL_PARAMETERS`]): `limit` (default 100, at most [`MAX_LIMIT`]), `sort`
//! (comma-separated fields, `-` prefix for descending, default `-id`; `id` is always the
//! final tie-breaker), `results_only`, `id_only`, `select`, `count`, `timeout_s` (a long poll,
//! run by the caller), `topic_format`, `text`, `after_id`/`before_id`/`from_id`/`until_id` on
//! ids, `after`/`before`/`from`/`until` on `time_created`, `after_code`… on `code_hex`,
//! `skip`, and filters on the fields of the collection's table ([`view::schema`]: dotted paths
//! reach into object fields, `*` in a value is a wildcard); anything else is a
//! [`QueryError`] naming it. The wrapped answer carries `results`, `limit`, `is_limited`,
//! `count`, `count_current`, `url`, `next_url` (absolute) and `url_next` (relative, the older
//! name). `populate=f1,f2` replaces the id in each named reference field with the referenced
//! document (see [`references`]), on the returned page only, after filters and sort (which
//! see the ids); each document is then shaped by [`view::Shape`].

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::ops::Bound;

use serde_json::{json, Value};
use spot_protocol::Timestamp;

use crate::api::view::{self, Schema, Shape};
use crate::domain::{Domain, Row};
use crate::ids::Id;

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
        // An array matches when one of its values does (an item's `sets=<list id>`).
        Some(Value::Array(values)) if values.iter().any(|v| matches(Some(v), wanted)) => true,
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

/// A document a query runs over: a JSON value, or a [`Row`] of the domain, which becomes
/// JSON only where a filter or a sort on a field needs it and on the page returned.
pub trait Doc {
    /// `f` of the id as text (`""` when it has none).
    fn with_id<R>(&self, f: impl FnOnce(&str) -> R) -> R;
    /// `time_created`, where it is a time.
    fn time_created(&self) -> Option<Timestamp>;
    /// A JSON document with at least the fields at `paths` (filters and sorts look them up);
    /// `None` for a document that cannot be read.
    fn fields(&self, paths: &[&str]) -> Option<Cow<'_, Value>>;
    /// The whole document.
    fn into_value(self) -> Option<Value>;
}

impl Doc for Value {
    fn with_id<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        f(self.get("id").and_then(Value::as_str).unwrap_or(""))
    }
    fn time_created(&self) -> Option<Timestamp> {
        self.get("time_created")
            .and_then(Value::as_str)
            .and_then(Timestamp::parse)
    }
    fn fields(&self, _: &[&str]) -> Option<Cow<'_, Value>> {
        Some(Cow::Borrowed(self))
    }
    fn into_value(self) -> Option<Value> {
        Some(self)
    }
}

impl Doc for Row {
    fn with_id<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        f(&self.id().hex())
    }
    fn time_created(&self) -> Option<Timestamp> {
        Some(Timestamp(Row::time_created(self)))
    }
    fn fields(&self, paths: &[&str]) -> Option<Cow<'_, Value>> {
        Row::fields(self, paths).map(Cow::Owned)
    }
    fn into_value(self) -> Option<Value> {
        self.value()
    }
}

/// How a bound compares a document's value with the parameter's.
#[derive(Debug, Clone, Copy)]
enum Bounding {
    /// `after…`: greater.
    After,
    /// `before…`: less.
    Before,
    /// `from…`: greater or equal.
    From,
    /// `until…`: less or equal.
    Until,
}

impl Bounding {
    fn of(param: &str) -> Bounding {
        match param.trim_end_matches("_id") {
            "after" => Bounding::After,
            "before" => Bounding::Before,
            "from" => Bounding::From,
            _ => Bounding::Until,
        }
    }

    /// Whether a document whose value compares so with the parameter's is kept.
    fn keeps(self, o: Ordering) -> bool {
        match self {
            Bounding::After => o.is_gt(),
            Bounding::Before => o.is_lt(),
            Bounding::From => o.is_ge(),
            Bounding::Until => o.is_le(),
        }
    }
}

/// What a filter wants of a field.
#[derive(Debug, Clone)]
enum Wanted {
    /// The value's text equals this.
    Exact(String),
    /// The value's text matches this pattern (`*` anywhere: any text), ignoring case.
    Wildcard(regex::Regex),
}

impl Wanted {
    fn parse(param: &str, text: &str) -> Result<Wanted, QueryError> {
        if !text.contains('*') {
            return Ok(Wanted::Exact(text.to_string()));
        }
        let pattern: Vec<String> = text.split('*').map(regex::escape).collect();
        regex::RegexBuilder::new(&format!("^{}$", pattern.join(".*")))
            .case_insensitive(true)
            .size_limit(1 << 20)
            .build()
            .map(Wanted::Wildcard)
            .map_err(|e| bad(param, format!("not a usable wildcard pattern: {e}")))
    }

    fn matches(&self, value: Option<&Value>) -> bool {
        match self {
            Wanted::Exact(text) => matches(value, text),
            Wanted::Wildcard(re) => match value {
                Some(Value::Array(values)) => values.iter().any(|v| self.matches(Some(v))),
                Some(Value::String(s)) => re.is_match(s),
                Some(Value::Number(n)) => re.is_match(&n.to_string()),
                Some(Value::Bool(b)) => re.is_match(if *b { "true" } else { "false" }),
                _ => false,
            },
        }
    }

    /// `metadata=<text>`, the vendor's search of an object: whether any value inside it
    /// contains the text (ignoring case), or matches the wildcard.
    fn matches_inside(&self, value: Option<&Value>) -> bool {
        match (value, self) {
            (Some(Value::Object(o)), _) => o.values().any(|v| self.matches_inside(Some(v))),
            (Some(Value::Array(a)), _) => a.iter().any(|v| self.matches_inside(Some(v))),
            (None | Some(Value::Null), _) => false,
            (Some(Value::String(s)), Wanted::Exact(text)) => {
                s.to_lowercase().contains(&text.to_lowercase())
            }
            (Some(v), Wanted::Exact(text)) => v.to_string().contains(text.as_str()),
            (Some(v), Wanted::Wildcard(_)) => self.matches(Some(v)),
        }
    }
}

/// `text=`: words any of which a document's text fields contain (ignoring case), `"…"`
/// for words with spaces, `-word` for words none may contain.
#[derive(Debug, Clone, Default)]
struct TextSearch {
    any: Vec<String>,
    none: Vec<String>,
}

impl TextSearch {
    fn parse(text: &str) -> TextSearch {
        let mut search = TextSearch::default();
        let mut rest = text.trim();
        while !rest.is_empty() {
            let (negated, after) = match rest.strip_prefix('-') {
                Some(after) => (true, after),
                None => (false, rest),
            };
            let (word, after) = match after.strip_prefix('"') {
                Some(quoted) => quoted.split_once('"').unwrap_or((quoted, "")),
                None => after.split_once(char::is_whitespace).unwrap_or((after, "")),
            };
            if !word.is_empty() {
                let word = word.to_lowercase();
                if negated {
                    search.none.push(word);
                } else {
                    search.any.push(word);
                }
            }
            rest = after.trim_start();
        }
        search
    }

    fn matches(&self, fields: &Value, names: &[&str]) -> bool {
        let texts: Vec<String> = names
            .iter()
            .filter_map(|n| match fields.get(*n) {
                Some(Value::String(s)) => Some(s.to_lowercase()),
                Some(Value::Null) | None => None,
                Some(other) => Some(other.to_string().to_lowercase()),
            })
            .collect();
        let has = |w: &String| texts.iter().any(|t| t.contains(w.as_str()));
        (self.any.is_empty() || self.any.iter().any(has)) && !self.none.iter().any(has)
    }
}

/// The parameters that shape a list rather than filter it.
pub const CONTROL_PARAMETERS: [&str; 24] = [
    "limit",
    "skip",
    "sort",
    "results_only",
    "id_only",
    "populate",
    "select",
    "count",
    "timeout_s",
    "topic_format",
    "text",
    "after_id",
    "before_id",
    "from_id",
    "until_id",
    "after",
    "before",
    "from",
    "until",
    "after_code",
    "before_code",
    "from_code",
    "until_code",
    "key",
];

/// Largest `timeout_s` honoured (a long poll waits at most this long).
pub const MAX_TIMEOUT_S: f64 = 300.0;

/// A parsed collection query ([`Query::parse`]); [`Query::rows`] takes what it needs of the
/// domain (under the read lock: cheap), [`Query::page`] builds the answer (after it).
#[derive(Debug, Clone)]
pub struct Query {
    schema: &'static Schema,
    params: Vec<(String, String)>,
    limit: usize,
    skip: usize,
    /// Fields (internal paths) and whether descending; `id` is always among them.
    sort: Vec<(String, bool)>,
    results_only: bool,
    populated: Vec<(&'static str, &'static str)>,
    id_bounds: Vec<(Bounding, String)>,
    time_bounds: Vec<(Bounding, Timestamp)>,
    /// `after_code` …: bounds on `code_hex` (items).
    code_bounds: Vec<(Bounding, String)>,
    /// Field filters: internal path, what it wants.
    filters: Vec<(String, Wanted)>,
    text: Option<TextSearch>,
    /// `count=true`: count every match, even when that takes a pass over all.
    count_all: bool,
    /// Only events whose topic this matches ([`Query::only_topics`]).
    topic_filter: Option<spot_push::TopicFilter>,
    /// How long to wait for a first result (`timeout_s`), if at all.
    pub timeout: Option<std::time::Duration>,
    /// How the documents are shown; the caller sets where the server is reached.
    pub shape: Shape,
}

impl Query {
    /// Reads the parameters of a query of `collection`; the first bad one is named, and so
    /// is every parameter that is neither a parameter of lists nor a field of `collection`.
    pub fn parse(collection: &str, params: &[(String, String)]) -> Result<Query, QueryError> {
        let schema = view::schema(collection).ok_or_else(|| bad("", "no such collection"))?;
        let mut q = Query {
            schema,
            params: params.to_vec(),
            limit: 100,
            skip: 0,
            sort: vec![("id".to_string(), true)],
            results_only: false,
            populated: Vec::new(),
            id_bounds: Vec::new(),
            time_bounds: Vec::new(),
            code_bounds: Vec::new(),
            filters: Vec::new(),
            text: None,
            count_all: false,
            topic_filter: None,
            timeout: None,
            shape: Shape::default(),
        };
        let mut select = None;
        for (k, v) in params {
            match k.as_str() {
                "limit" => {
                    q.limit = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| bad(k, format!("must be a number from 1 to {MAX_LIMIT}")))?
                }
                "skip" => q.skip = v.parse().map_err(|_| bad(k, "must be a number"))?,
                "sort" => {
                    q.sort = Vec::new();
                    for f in v.split(',').filter(|f| !f.is_empty()) {
                        let (name, desc) = match f.strip_prefix('-') {
                            Some(name) => (name, true),
                            None => (f.trim_start_matches('+'), false),
                        };
                        if !schema.knows(name) {
                            return Err(unknown_field(k, name, schema));
                        }
                        q.sort.push((schema.internal_path(name), desc));
                    }
                    if q.sort.is_empty() {
                        return Err(bad(k, "must name fields, e.g. -time_created,id"));
                    }
                }
                "results_only" => q.results_only = parse_bool(k, v)?,
                "id_only" => q.shape.id_only = parse_bool(k, v)?,
                "count" => q.count_all = parse_bool(k, v)?,
                "populate" => q.populated.extend(populate_fields(collection, v)?),
                "select" => select = Some(v.clone()),
                "text" => q.text = Some(TextSearch::parse(v)),
                "topic_format" => {
                    q.shape.topic_object = match v.as_str() {
                        "object" => true,
                        "text" | "" => false,
                        _ => return Err(bad(k, "must be text (the default) or object")),
                    }
                }
                "timeout_s" => {
                    let s: f64 = v
                        .parse()
                        .ok()
                        .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                        .ok_or_else(|| bad(k, "must be a number of seconds, 0 or more"))?;
                    q.timeout =
                        (s > 0.0).then(|| std::time::Duration::from_secs_f64(s.min(MAX_TIMEOUT_S)));
                }
                "after_id" | "before_id" | "from_id" | "until_id" => {
                    q.id_bounds.push((Bounding::of(k), v.clone()))
                }
                "after_code" | "before_code" | "from_code" | "until_code" => {
                    if schema.field("code_hex").is_none() {
                        return Err(bad(k, format!("{collection} have no code_hex")));
                    }
                    q.code_bounds
                        .push((Bounding::of(k.trim_end_matches("_code")), v.clone()))
                }
                "after" | "before" | "from" | "until" => {
                    let t = Timestamp::parse(v).ok_or_else(|| {
                        bad(k, "must be an ISO 8601 time, e.g. 2024-01-31T12:00:00Z")
                    })?;
                    q.time_bounds.push((Bounding::of(k), t));
                }
                // Taken by the key check before the query is read; never a filter.
                "key" => {}
                name => {
                    if let Some((_, why)) = schema.unsupported.iter().find(|(p, _)| *p == name) {
                        return Err(bad(name, format!("not supported by this server: {why}")));
                    }
                    if !schema.knows(name) {
                        return Err(unknown_field(name, name, schema));
                    }
                    q.filters
                        .push((schema.internal_path(name), Wanted::parse(name, v)?));
                }
            }
        }
        if let Some(select) = select {
            for name in select.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                let head = name.split('.').next().unwrap_or(name);
                let populated = q.populated.iter().any(|(f, _)| *f == head);
                if !(schema.knows(name) || populated && schema.knows(head)) {
                    return Err(unknown_field("select", name, schema));
                }
                q.shape.select.push(name.to_string());
            }
        }
        if !q.sort.iter().any(|(f, _)| f == "id") {
            q.sort.push(("id".to_string(), false));
        }
        Ok(q)
    }

    /// The collection.
    pub fn collection(&self) -> &'static str {
        self.schema.name
    }

    /// `Some(descending)` when the order is by id alone (its first sort field).
    fn by_id(&self) -> Option<bool> {
        self.sort
            .first()
            .filter(|(f, _)| f == "id")
            .map(|(_, desc)| *desc)
    }

    /// Whether the query reads fields of the documents (filters other than bounds on ids
    /// and times): then the rows past the page cannot be told apart without reading them.
    fn reads_fields(&self) -> bool {
        !self.filters.is_empty()
            || !self.code_bounds.is_empty()
            || self.text.is_some()
            || self.topic_filter.is_some()
    }

    /// Whether the id and time bounds keep a document.
    pub fn keeps(&self, doc: &impl Doc) -> bool {
        let ids = || {
            doc.with_id(|id| {
                self.id_bounds
                    .iter()
                    .all(|(b, v)| b.keeps(id.cmp(v.as_str())))
            })
        };
        let times = || match doc.time_created() {
            Some(t) => self.time_bounds.iter().all(|(b, v)| b.keeps(t.cmp(v))),
            None => self.time_bounds.is_empty(),
        };
        (self.id_bounds.is_empty() || ids()) && times()
    }

    /// The ids the id bounds allow, where their values are ids (text order is id order):
    /// the rows to look at, a superset of those [`Query::keeps`] keeps.
    fn id_range(&self) -> (Bound<Id>, Bound<Id>) {
        let (mut start, mut end) = (Bound::Unbounded, Bound::Unbounded);
        for (b, v) in &self.id_bounds {
            let Some(id) = Id::parse(v) else { continue };
            match b {
                Bounding::After => start = tighter(start, Bound::Excluded(id), Ordering::Greater),
                Bounding::From => start = tighter(start, Bound::Included(id), Ordering::Greater),
                Bounding::Before => end = tighter(end, Bound::Excluded(id), Ordering::Less),
                Bounding::Until => end = tighter(end, Bound::Included(id), Ordering::Less),
            }
        }
        (start, end)
    }

    /// The rows of the collection the page needs (`None`: no such collection), in its order
    /// when that is by id: without field filters, only as many as the page needs (and one
    /// more, to tell whether there are more). Cheap (no JSON): for under the read lock.
    pub fn rows(&self, domain: &Domain) -> Option<Vec<Row>> {
        let by_id = self.by_id();
        let take = match by_id {
            Some(_) if !self.reads_fields() && !self.count_all => {
                self.skip.saturating_add(self.limit).saturating_add(1)
            }
            _ => usize::MAX,
        };
        domain.rows(
            self.collection(),
            self.id_range(),
            by_id.unwrap_or(false),
            take,
            &|row| self.keeps(row),
        )
    }

    /// Keeps only the events whose topic `filter` matches (a subscription's events).
    pub fn only_topics(&mut self, filter: spot_push::TopicFilter) {
        self.topic_filter = Some(filter);
    }

    /// How many documents match, when that is cheap (no field filters: counted without
    /// reading them); for under the read lock. `None` otherwise ([`Query::page`] counts
    /// when it reads every match anyway).
    pub fn count(&self, domain: &Domain) -> Option<usize> {
        if self.reads_fields() {
            return None;
        }
        domain.count(self.collection(), self.id_range(), &|row| self.keeps(row))
    }

    /// The paths of the stored fields filters, sorts and `text` read (derived fields by
    /// their sources), and whether a derived field is among them.
    fn read_paths(&self) -> (Vec<&str>, bool) {
        let mut paths: Vec<&str> = Vec::new();
        let mut derived = false;
        let named = self
            .filters
            .iter()
            .map(|(f, _)| f.as_str())
            .chain(self.sort.iter().map(|(f, _)| f.as_str()))
            .chain(
                self.schema
                    .text
                    .iter()
                    .copied()
                    .filter(|_| self.text.is_some()),
            )
            .chain(
                ["code_hex"]
                    .into_iter()
                    .filter(|_| !self.code_bounds.is_empty()),
            )
            .chain(
                ["topic"]
                    .into_iter()
                    .filter(|_| self.topic_filter.is_some()),
            );
        for path in named {
            let sources = self.schema.sources(path);
            derived |= !sources.is_empty();
            paths.push(path);
            paths.extend(sources);
        }
        (paths, derived)
    }

    /// The answer over `docs` (the rows of [`Query::rows`], or any documents): filtered,
    /// sorted, paged; only the page becomes JSON. `path` is the request path (for the
    /// next page's link), `total` what [`Query::count`] counted; `lookup(collection, id)`
    /// finds referenced documents for `populate`.
    pub fn page<D: Doc>(
        &self,
        docs: Vec<D>,
        path: &str,
        total: Option<usize>,
        lookup: &dyn Fn(&str, &str) -> Option<Value>,
    ) -> Value {
        let mut docs: Vec<D> = docs.into_iter().filter(|d| self.keeps(d)).collect();
        let wanted = if self.count_all {
            usize::MAX
        } else {
            self.skip.saturating_add(self.limit).saturating_add(1)
        };
        let (paths, derived) = self.read_paths();
        // Filters and sorts see the derived fields as a client does (the topic as an
        // object, both kinds of reference links).
        let filter_shape = Shape {
            topic_object: true,
            id_only: false,
            select: Vec::new(),
            ..self.shape.clone()
        };
        let collection = self.collection();
        let read = |d: &D| -> Option<Value> {
            let fields = d.fields(&paths)?;
            if !derived {
                return Some(fields.into_owned());
            }
            let mut fields = fields.into_owned();
            filter_shape.derive(collection, &mut fields);
            filter_shape.derive_ids(collection, &mut fields);
            Some(fields)
        };
        let passes = |fields: &Value| {
            self.filters
                .iter()
                .all(|(name, wanted)| match name.as_str() {
                    "metadata" => wanted.matches_inside(field(fields, name)),
                    _ => wanted.matches(field(fields, name)),
                })
                && self
                    .text
                    .as_ref()
                    .is_none_or(|t| t.matches(fields, self.schema.text))
                && self.topic_filter.as_ref().is_none_or(|filter| {
                    let topic = fields.get("topic_text").or_else(|| fields.get("topic"));
                    topic
                        .and_then(Value::as_str)
                        .is_some_and(|t| filter.matches(t))
                })
                && self.code_bounds.iter().all(|(b, v)| {
                    fields
                        .get("code_hex")
                        .and_then(Value::as_str)
                        .is_some_and(|code| b.keeps(code.cmp(v.as_str())))
                })
        };
        let mut complete = true;
        let kept: Vec<D> = match self.by_id() {
            Some(desc) => {
                // Sorted already when they come from `rows` (then this only checks).
                docs.sort_by(|a, b| {
                    let o = a.with_id(|x| b.with_id(|y| x.cmp(y)));
                    if desc {
                        o.reverse()
                    } else {
                        o
                    }
                });
                if !self.reads_fields() {
                    complete = docs.len() < wanted;
                    docs.truncate(wanted);
                    docs
                } else {
                    let kept: Vec<D> = docs
                        .into_iter()
                        .filter(|d| read(d).is_some_and(|f| passes(&f)))
                        .take(wanted)
                        .collect();
                    complete = kept.len() < wanted;
                    kept
                }
            }
            None => {
                // Each document is read once: the filters, then its sort keys are kept.
                let mut keyed: Vec<(Vec<Option<Value>>, D)> = docs
                    .into_iter()
                    .filter_map(|d| {
                        let keys = {
                            let fields = read(&d)?;
                            if !passes(&fields) {
                                return None;
                            }
                            self.sort
                                .iter()
                                .map(|(f, _)| field(&fields, f).cloned())
                                .collect()
                        };
                        Some((keys, d))
                    })
                    .collect();
                keyed.sort_by(|(a, _), (b, _)| {
                    for ((x, y), (_, desc)) in a.iter().zip(b).zip(&self.sort) {
                        let o = compare(x.as_ref(), y.as_ref());
                        let o = if *desc { o.reverse() } else { o };
                        if o != Ordering::Equal {
                            return o;
                        }
                    }
                    Ordering::Equal
                });
                keyed.into_iter().map(|(_, d)| d).collect()
            }
        };
        let count = total.or(complete.then_some(kept.len()));
        let total_after_skip = kept.len().saturating_sub(self.skip);
        let is_limited = total_after_skip > self.limit;
        let page: Vec<D> = kept.into_iter().skip(self.skip).take(self.limit).collect();
        let last_id = page.last().map(|last| last.with_id(str::to_string));
        let url_next = match (&last_id, is_limited) {
            (Some(id), true) => Some(next_url(
                path,
                &self.params,
                &self.sort,
                id,
                self.skip + self.limit,
            )),
            _ => None,
        };
        // Following `sort=id` never ends: the last page links to what comes after it (a
        // worker polls it); other orders end where the documents end.
        let next = match (self.by_id(), &url_next) {
            (_, Some(next)) => Some(next.clone()),
            (Some(false), None) => Some(match &last_id {
                Some(id) => next_url(path, &self.params, &self.sort, id, 0),
                None => this_url(path, &self.params),
            }),
            _ => None,
        };
        let mut results: Vec<Value> = page.into_iter().filter_map(Doc::into_value).collect();
        populate(&mut results, &self.populated, lookup);
        for doc in &mut results {
            self.shape.apply(collection, doc);
        }
        let count_current = results.len();
        if self.results_only {
            return Value::Array(results);
        }
        let base = &self.shape.base;
        json!({
            "results": results,
            "limit": self.limit,
            "is_limited": is_limited,
            "count": count,
            "count_current": count_current,
            "url": format!("{base}{}", this_url(path, &self.params)),
            "next_url": next.map(|n| format!("{base}{n}")),
            "url_next": url_next,
        })
    }
}

/// The `400` of a parameter that names no field of the collection.
fn unknown_field(param: &str, name: &str, schema: &Schema) -> QueryError {
    let fields: Vec<&str> = schema
        .stored
        .iter()
        .chain(schema.derived)
        .map(|f| f.name)
        .collect();
    bad(
        param,
        format!(
            "{name:?} is neither a parameter of lists nor a field of {}; the parameters: {}; \
             the fields (filters, sort, select; dotted paths inside objects): {}",
            schema.name,
            CONTROL_PARAMETERS.join(", "),
            fields.join(", ")
        ),
    )
}

/// The path with the query's own parameters (what `url` says).
fn this_url(path: &str, params: &[(String, String)]) -> String {
    if params.is_empty() {
        return path.to_string();
    }
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        out.append_pair(k, v);
    }
    format!("{path}?{}", out.finish())
}

/// The tighter of two bounds on one side: `Greater` for lower bounds, `Less` for upper ones.
fn tighter(a: Bound<Id>, b: Bound<Id>, side: Ordering) -> Bound<Id> {
    let value = |b: &Bound<Id>| match b {
        Bound::Included(id) | Bound::Excluded(id) => Some(*id),
        Bound::Unbounded => None,
    };
    match (value(&a), value(&b)) {
        (None, _) => b,
        (_, None) => a,
        (Some(x), Some(y)) if x.cmp(&y) == side => a,
        (Some(x), Some(y)) if y.cmp(&x) == side => b,
        // The same id: excluding it is tighter.
        _ if matches!(a, Bound::Excluded(_)) => a,
        _ => b,
    }
}

/// The next page: by id when sorting by id alone (never repeats or skips while documents
/// are added), else by offset.
fn next_url(
    path: &str,
    params: &[(String, String)],
    sort: &[(String, bool)],
    last_id: &str,
    next_skip: usize,
) -> String {
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
                json!({"id": format!("{i:04}"), "move_count": i % 3, "is_present": i % 2 == 0,
                       "time_created": format!("2024-01-01T00:00:{:02}Z", i % 60)})
            })
            .collect()
    }

    /// A query over documents: parsed, then paged.
    fn query(
        collection: &str,
        docs: Vec<Value>,
        params: &[(String, String)],
        path: &str,
        lookup: &dyn Fn(&str, &str) -> Option<Value>,
    ) -> Result<Value, QueryError> {
        Ok(Query::parse(collection, params)?.page(docs, path, None, lookup))
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
            &params("is_present=true&sort=-move_count,id&results_only=true&select=id"),
            "/",
        )
        .unwrap();
        let got: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap())
            .collect();
        assert_eq!(got, ["0002", "0008", "0004", "0000", "0006"]);
        let v = run(
            docs(10),
            &params("move_count=1&after=2024-01-01T00:00:03Z"),
            "/",
        )
        .unwrap();
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
        assert_eq!(v[0]["item"]["code_hex"], "c");
        assert_eq!(v[0]["item"]["url"], "/api/items/i1", "shaped as its own");
        assert_eq!(v[0]["item_url"], "/api/items/i1");
        assert_eq!(v[1]["location"]["label"], "dock");
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

    mod over_the_domain {
        //! Lists over the domain's rows (risk 3 of issue 11: REST reads stalled ingest).

        use std::sync::RwLock;

        use serde_json::{json, Value};
        use spot_protocol::{Action, Event, EventKind, Presence, Proximity, Timestamp};

        use super::params;
        use crate::api::query::Query;
        use crate::domain::{conversions, Domain, DomainConfig, Write};
        use crate::ids::Id;

        const T0: i64 = 1_700_000_000_000;

        /// A domain with `n` spots (and their locations), one a millisecond.
        fn spots(n: usize) -> Domain {
            let mut d = Domain::new(DomainConfig::default());
            for i in 0..n {
                d.begin_stream(&(100 + i).to_string(), None, T0 + i as i64);
            }
            d
        }

        /// What `GET /api/<collection>?<q>` answers, as `api::list` makes it (the rows under
        /// the read lock, the page after it), with the documents converted to JSON under the
        /// lock and in all.
        fn list(domain: &RwLock<Domain>, collection: &str, q: &str) -> (Value, usize, usize) {
            let query = Query::parse(collection, &params(q)).unwrap();
            let before = conversions();
            let rows = query.rows(&domain.read().unwrap()).unwrap();
            let under_lock = conversions() - before;
            let total = query.count(&domain.read().unwrap());
            let page = query.page(rows, "/", total, &|c, id| domain.read().unwrap().get(c, id));
            (page, under_lock, conversions() - before)
        }

        fn ids(v: &Value) -> Vec<String> {
            let results = v.get("results").unwrap_or(v).as_array().unwrap();
            results
                .iter()
                .map(|d| d.get("id").unwrap_or(d).as_str().unwrap().to_string())
                .collect()
        }

        #[test]
        fn a_spots_page_of_one_over_20000_spots_converts_one_spot_and_none_under_the_lock() {
            let domain = RwLock::new(spots(20_000));
            let (v, under_lock, all) = list(&domain, "spots", "limit=1");
            assert_eq!(v["results"][0]["serial_number"], "20099", "the newest");
            assert_eq!(v["is_limited"], true);
            assert_eq!((under_lock, all), (0, 1));
            let query = Query::parse("spots", &params("limit=1")).unwrap();
            let taken = query.rows(&domain.read().unwrap()).unwrap().len();
            assert_eq!(
                taken, 2,
                "under the lock: the page and one more, not every spot"
            );
            let (v, under_lock, all) = list(&domain, "spots", "sort=id&limit=1");
            assert_eq!(v["results"][0]["serial_number"], "100", "the oldest");
            assert_eq!((under_lock, all), (0, 1));
            let (v, _, all) = list(&domain, "spots", "limit=3&skip=2&id_only=true");
            assert_eq!(v["results"].as_array().unwrap().len(), 3);
            assert_eq!(all, 3, "the page only");
            assert!(v["results"][0].get("url").is_none(), "id_only: no urls");
        }

        #[test]
        fn an_events_page_of_10_over_100000_events_parses_only_the_page() {
            let mut d = Domain::new(DomainConfig::default());
            let id = |i: i64| Id(((T0 + i) as u64) << 16);
            let docs = (0..100_000)
                .map(|i| {
                    json!({"id": id(i), "topic": format!("t/{}", i % 7), "time_event": null,
                           "time_created": Timestamp(T0 + i).to_string(), "data": {"n": i}})
                    .to_string()
                })
                .collect();
            d.load_events(docs).unwrap();
            let domain = RwLock::new(d);
            let (v, under_lock, all) = list(&domain, "events", "limit=10");
            assert_eq!(ids(&v)[0], id(99_999).text());
            assert_eq!(v["results"][9]["data"]["n"], 99_990);
            assert_eq!((under_lock, all), (0, 10));
            let q = format!("sort=id&limit=10&after_id={}", id(50_000));
            let (v, under_lock, all) = list(&domain, "events", &q);
            assert_eq!(ids(&v)[0], id(50_001).text(), "from the id on");
            assert_eq!((under_lock, all), (0, 10));
            // A filter reads the events' heads (not their data) until the page is full.
            let (v, under_lock, all) = list(&domain, "events", "topic=t/3&limit=10");
            let results = v["results"].as_array().unwrap();
            assert_eq!(results.len(), 10);
            assert!(results.iter().all(|e| e["topic"] == "t/3"));
            assert_eq!(under_lock, 0);
            // One in seven has the topic: the page and one more (is there a next page?).
            assert!(all <= 7 * 11 + 10, "{all} documents read for a page of 10");
            let (v, _, _) = list(&domain, "events", "data.n=77&results_only=true");
            assert_eq!(ids(&v), vec![id(77).text()], "data is read where asked for");
        }

        #[test]
        fn a_page_is_built_after_the_lock_is_released_from_the_rows_taken_under_it() {
            let domain = RwLock::new(spots(3));
            let query = Query::parse("locations", &params("sort=id&limit=1")).unwrap();
            let rows = query.rows(&domain.read().unwrap()).unwrap();
            let oldest = ids(&query.page(rows.clone(), "/", None, &|_, _| None))[0].clone();
            {
                let mut ingest = domain.try_write().expect("no list holds the lock");
                let body = json!({"label": "dock"});
                ingest
                    .put("locations", &oldest, body.as_object().unwrap(), T0 + 10)
                    .unwrap();
            }
            let page = query.page(rows, "/", None, &|_, _| None);
            assert_eq!(
                page["results"][0]["label"], "spot100",
                "the rows as they were taken"
            );
            let (now, _, _) = list(&domain, "locations", "sort=id&limit=1");
            assert_eq!(now["results"][0]["label"], "dock");
        }

        #[test]
        fn pages_over_the_rows_are_the_pages_over_every_document() {
            let mut d = spots(5);
            for (i, code) in ["a1", "b2", "a1", "c3", "b2", "d4"].iter().enumerate() {
                let serial = (100 + i % 3).to_string();
                let now = T0 + 100 + i as i64;
                d.begin_stream(&serial, None, now);
                let action = if i == 2 {
                    Action::Delete
                } else {
                    Action::Create
                };
                let presence = Presence {
                    item_code: Some((*code).into()),
                    item_codetype: Some("EPC Gen2".into()),
                    proximity: Some(Proximity::Near),
                    ..Presence::default()
                };
                let event = Event::new(EventKind::Presence(action, presence));
                d.apply_event(&serial, &event, now);
                d.end_stream(&serial, now, false);
            }
            // Lists of items and spots, the first item in two of them.
            let items: Vec<String> = d.collection("items").unwrap()[..2]
                .iter()
                .map(|i| i["id"].as_str().unwrap().to_string())
                .collect();
            let mut first_list = String::new();
            for (collection, members) in [
                ("itemlists", json!([items[0]])),
                ("itemlists", json!(items)),
                ("spotlists", json!(["100", "101"])),
                ("spotlists", json!([])),
            ] {
                let list = d
                    .write(Write::Post, collection, "", &Default::default(), T0 + 200)
                    .unwrap();
                let id = list["id"].as_str().unwrap().to_string();
                let ids = json!({ "ids": members });
                let ids = ids.as_object().unwrap();
                d.write(Write::AddMembers, collection, &id, ids, T0 + 201)
                    .unwrap();
                if first_list.is_empty() {
                    first_list = id;
                }
            }
            let domain = RwLock::new(d);
            for collection in crate::api::view::SCHEMAS.map(|s| s.name) {
                let every = domain.read().unwrap().collection(collection).unwrap();
                assert!(!every.is_empty(), "{collection}");
                let middle = every[every.len() / 2]["id"].as_str().unwrap().to_string();
                let created = every[every.len() / 2]["time_created"].as_str().unwrap();
                let created = created.replace(':', "%3A");
                for q in [
                    String::new(),
                    "limit=2".into(),
                    "sort=id&limit=3".into(),
                    "limit=2&skip=1".into(),
                    format!("after_id={middle}"),
                    format!("sort=id&from_id={middle}&limit=2"),
                    format!("before_id={middle}&until_id={middle}&limit=1"),
                    format!("from_id={middle}&after_id=0&until_id=zz"),
                    format!("after={created}&limit=2"),
                    format!("until={created}&sort=-time_created&limit=2"),
                    "is_present=true&limit=1".into(),
                    "is_online=true&sort=-serial_number&limit=2".into(),
                    "sort=topic,-id&limit=4&skip=1".into(),
                    "sort=-location&populate=location&limit=3".into(),
                    "id_only=true&results_only=true&sort=time_updated".into(),
                    format!("sets={first_list}&sort=code_hex"),
                    "sort=-total,label&limit=3".into(),
                ] {
                    let Ok(query) = Query::parse(collection, &params(&q)) else {
                        continue;
                    };
                    let lookup = |c: &str, id: &str| domain.read().unwrap().get(c, id);
                    let total = query.count(&domain.read().unwrap());
                    let expected = query.page(every.clone(), "/", total, &lookup);
                    let (got, _, _) = list(&domain, collection, &q);
                    assert_eq!(got, expected, "{collection}?{q}");
                }
            }
        }
    }
}
