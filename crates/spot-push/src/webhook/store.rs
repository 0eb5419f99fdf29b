//! Persistence of webhooks: the `subscriptions` resource, the delivery queue and the
//! dispatcher's cursor, in SQLite tables of their own (`push_*`).
//!
//! A subscription without a `target_url` (stored as `''`) is *store-only*, as the vendor's:
//! nothing is queued or delivered for it; its events are those of the server's events log
//! that its filter matches (`/api/subscriptions/{id}/events`).
//!
//! The queue survives restarts: a delivery row stays until the target accepted it (or it
//! failed for good, or outlived the subscription's `database_hold_time_h`). Rows of one
//! subscription are delivered in `seq` order.
//!
//! Each subscription's queue is bounded ([`Backlog`]: rows and body bytes, kept in the
//! subscription's row by triggers). An event that would pass the bound is not queued: the
//! subscription becomes [`SubscriptionState::Overflowed`], remembers where it stopped
//! (`resume_after`) and counts the events it matches meanwhile (`not_queued_count`). Once
//! its queue has drained, its worker reads on from the server's events log
//! ([`WebhookStore::refill`]) and, having caught up with the dispatcher's cursor, it is
//! `active` again; the dispatcher then skips the events up to `resume_after` (queued from
//! the log already).

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use spot_protocol::Timestamp;

use crate::filter::TopicFilter;

/// A store error: the SQL operation and SQLite's message.
#[derive(Debug, thiserror::Error)]
#[error("webhook store: {what}: {source}")]
pub struct StoreError {
    /// What was being done.
    pub what: &'static str,
    /// SQLite's error.
    pub source: rusqlite::Error,
}

fn err(what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError { what, source }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    spot_protocol::Timestamp::from_system_time(SystemTime::now()).as_millis()
}

/// One subscription as the API shows it. The secret is never shown, only `has_secret`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct WebhookSubscription {
    /// Id.
    pub id: i64,
    /// Which events (MQTT-semantics filter).
    pub topic_filter: String,
    /// Free text.
    pub description: String,
    /// Where events are POSTed (`http://…`); `null`: a store-only subscription (nothing is
    /// delivered; its events are at `events_url`).
    pub target_url: Option<String>,
    /// Retry failed deliveries with backoff (else one attempt).
    pub target_retry: bool,
    /// How long undelivered events are kept queued, in hours.
    pub database_hold_time_h: f64,
    /// Whether deliveries are signed (`X-Spot-Signature-256`).
    pub has_secret: bool,
    /// Creation time (ISO 8601).
    pub time_created: String,
    /// Last change through the API (ISO 8601).
    pub time_updated: String,
    /// Deliveries accepted by the target (2xx).
    pub delivered_count: i64,
    /// Failed delivery attempts (and events given up).
    pub failed_count: i64,
    /// Last failure, if any.
    pub last_error: Option<String>,
    /// Deliveries waiting now.
    pub queued_count: i64,
    /// Bytes of the bodies waiting now.
    pub queued_bytes: i64,
    /// `active`, or `overflowed`: the queue reached its bound and matching events are read
    /// from the events log once it has drained.
    pub state: SubscriptionState,
    /// Always `true`: the target's TLS certificate is verified (the vendor's field; to trust
    /// a private CA, the server's `webhook-ca-cert`).
    pub verify_target_certificate: bool,
    /// Always `false`: events carry references as ids (and the changed resource's document
    /// in `data`); the vendor's field.
    pub populate_events: bool,
    /// Matching events not queued when they came, the queue being full (each is read back
    /// from the events log once the target accepts deliveries again, if the log still holds
    /// it).
    pub not_queued_count: i64,
    /// Free-form application data (the vendor's field), as written.
    pub custom: serde_json::Value,
    /// Where this subscription is (`…/api/subscriptions/{id}`), as the client reached the
    /// server; added by the API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Where its events are (`…/api/subscriptions/{id}/events`); added by the API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_url: Option<String>,
}

/// Whether a subscription's matching events are queued as they come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SubscriptionState {
    /// Matching events are queued as they come.
    Active,
    /// The queue reached its [`Backlog`] bound: matching events are not queued; once the
    /// queue has drained they are read from the events log.
    Overflowed,
}

impl SubscriptionState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Overflowed => "overflowed",
        }
    }

    fn parse(text: &str) -> Self {
        if text == "overflowed" {
            Self::Overflowed
        } else {
            Self::Active
        }
    }
}

/// The bound of each subscription's queue: past either, it overflows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Most deliveries waiting.
    pub max_events: u64,
    /// Most bytes of delivery bodies waiting (an event larger than this is still queued
    /// when the queue is empty).
    pub max_bytes: u64,
}

impl Backlog {
    /// Whether a body of `len` bytes fits a queue holding `events` rows of `bytes` bytes.
    fn fits(&self, events: i64, bytes: i64, len: usize) -> bool {
        events == 0
            || ((events as u64) < self.max_events
                && (bytes as u64).saturating_add(len as u64) <= self.max_bytes)
    }
}

/// Fields written through the API (POST: all but the optional ones required; PUT: any).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionInput {
    /// See [`WebhookSubscription::topic_filter`].
    pub topic_filter: Option<String>,
    /// See [`WebhookSubscription::description`].
    pub description: Option<String>,
    /// See [`WebhookSubscription::target_url`]: absent (unchanged; none for a new one),
    /// `null` (none: store-only) or a URL.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub target_url: Option<Option<String>>,
    /// See [`WebhookSubscription::target_retry`].
    pub target_retry: Option<bool>,
    /// See [`WebhookSubscription::database_hold_time_h`].
    pub database_hold_time_h: Option<f64>,
    /// HMAC-SHA256 key; `""` removes it.
    pub secret: Option<String>,
    /// The vendor's field: only `true` (certificates are always verified).
    pub verify_target_certificate: Option<bool>,
    /// The vendor's field: only `false` (events are not populated).
    pub populate_events: Option<bool>,
    /// See [`WebhookSubscription::custom`] (at most [`MAX_TEXT_FIELD`] bytes of JSON).
    pub custom: Option<serde_json::Value>,
}

/// A field that is present: `null` is `Some(None)` (its absence, `None`, is the default).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// A refused input: the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InputError {
    /// The field.
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> InputError {
    InputError {
        field,
        reason: reason.into(),
    }
}

/// Longest description, secret and URL accepted.
pub const MAX_TEXT_FIELD: usize = 4096;

/// Default `database_hold_time_h`.
pub const DEFAULT_HOLD_TIME_H: f64 = 24.0;

fn check_url(url: &str) -> Result<(), InputError> {
    if url.len() > MAX_TEXT_FIELD {
        return Err(bad("target_url", "too long"));
    }
    let parsed = url::Url::parse(url).map_err(|e| bad("target_url", e.to_string()))?;
    match parsed.scheme() {
        "http" | "https" => {}
        other => {
            return Err(bad(
                "target_url",
                format!("scheme {other:?} is not http or https"),
            ))
        }
    }
    // What the HTTP client takes (ASCII only: international host names in punycode).
    let uri = url
        .parse::<http::Uri>()
        .map_err(|e| bad("target_url", e.to_string()))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("target_url", "no host"));
    }
    Ok(())
}

/// A validated, complete subscription definition: what clients write, as both stores of
/// subscriptions keep it (this SQLite store, and a cluster's PostgreSQL table).
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    /// See [`WebhookSubscription::topic_filter`].
    pub topic_filter: String,
    /// See [`WebhookSubscription::description`].
    pub description: String,
    /// `""`: none (store-only).
    pub target_url: String,
    /// See [`WebhookSubscription::target_retry`].
    pub target_retry: bool,
    /// See [`WebhookSubscription::database_hold_time_h`].
    pub database_hold_time_h: f64,
    /// The HMAC key, if any.
    pub secret: Option<String>,
    /// JSON text, or `None`.
    pub custom: Option<String>,
}

impl Definition {
    /// A new subscription's definition: `topic_filter` is required, the other fields
    /// default (no target: store-only; no retry; [`DEFAULT_HOLD_TIME_H`]).
    pub fn new(input: SubscriptionInput) -> Result<Self, InputError> {
        if input.topic_filter.is_none() {
            return Err(bad("topic_filter", "required"));
        }
        Definition {
            topic_filter: String::new(),
            description: String::new(),
            target_url: String::new(),
            target_retry: false,
            database_hold_time_h: DEFAULT_HOLD_TIME_H,
            secret: None,
            custom: None,
        }
        .apply(input)
    }

    /// This definition with `input`'s fields changed (each checked; the first bad one is
    /// the error).
    pub fn apply(mut self, input: SubscriptionInput) -> Result<Self, InputError> {
        if let Some(f) = input.topic_filter {
            TopicFilter::new(&f).map_err(|e| bad("topic_filter", e.to_string()))?;
            self.topic_filter = f;
        }
        if let Some(d) = input.description {
            if d.len() > MAX_TEXT_FIELD {
                return Err(bad("description", "too long"));
            }
            self.description = d;
        }
        match input.target_url {
            Some(Some(u)) => {
                check_url(&u)?;
                self.target_url = u;
            }
            Some(None) => self.target_url = String::new(),
            None => {}
        }
        if let Some(custom) = input.custom {
            let text = (!custom.is_null()).then(|| custom.to_string());
            if text.as_ref().is_some_and(|t| t.len() > MAX_TEXT_FIELD) {
                return Err(bad(
                    "custom",
                    format!("longer than {MAX_TEXT_FIELD} bytes of JSON"),
                ));
            }
            self.custom = text;
        }
        if let Some(r) = input.target_retry {
            self.target_retry = r;
        }
        if let Some(h) = input.database_hold_time_h {
            if !(h.is_finite() && h > 0.0) {
                return Err(bad(
                    "database_hold_time_h",
                    "must be a positive number of hours",
                ));
            }
            self.database_hold_time_h = h;
        }
        if input.verify_target_certificate == Some(false) {
            return Err(bad(
                "verify_target_certificate",
                "targets' certificates are always verified: to trust a private CA, start the \
                 server with webhook-ca-cert",
            ));
        }
        if input.populate_events == Some(true) {
            return Err(bad(
                "populate_events",
                "events are not populated here: an event's data is the changed resource's \
                 document, and its references are ids",
            ));
        }
        if let Some(s) = input.secret {
            if s.len() > MAX_TEXT_FIELD {
                return Err(bad("secret", "too long"));
            }
            self.secret = if s.is_empty() { None } else { Some(s) };
        }
        Ok(self)
    }
}

/// One queued delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Queue order.
    pub seq: i64,
    /// Subscription.
    pub subscription_id: i64,
    /// Event id (the idempotency key).
    pub event_id: u64,
    /// The JSON body to POST.
    pub body: String,
    /// Attempts so far.
    pub attempts: i64,
    /// Not before this time (ms since epoch).
    pub next_attempt_ms: i64,
    /// Queued at (ms since epoch).
    pub queued_ms: i64,
}

/// What a worker needs to deliver for one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// URL.
    pub url: String,
    /// Retry with backoff.
    pub retry: bool,
    /// HMAC key.
    pub secret: Option<String>,
    /// Hold time in ms.
    pub hold_ms: i64,
    /// Which events (read from the log when overflowed).
    pub topic_filter: String,
    /// While overflowed: the events log is read after this id.
    pub resume_after: Option<u64>,
}

/// The webhook tables. Cheap to share (`Arc`); one connection behind a mutex.
pub struct WebhookStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
PRAGMA foreign_keys = ON;
CREATE TABLE IF NOT EXISTS push_subscriptions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic_filter TEXT NOT NULL,
    description TEXT NOT NULL,
    target_url TEXT NOT NULL,
    target_retry INTEGER NOT NULL,
    database_hold_time_h REAL NOT NULL,
    secret TEXT,
    time_created INTEGER NOT NULL,
    time_updated INTEGER NOT NULL,
    start_event_id INTEGER NOT NULL,
    delivered_count INTEGER NOT NULL DEFAULT 0,
    failed_count INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    state TEXT NOT NULL DEFAULT 'active',
    resume_after INTEGER NOT NULL DEFAULT 0,
    not_queued_count INTEGER NOT NULL DEFAULT 0,
    queued_events INTEGER NOT NULL DEFAULT 0,
    queued_bytes INTEGER NOT NULL DEFAULT 0,
    custom TEXT
);
CREATE TABLE IF NOT EXISTS push_deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id INTEGER NOT NULL REFERENCES push_subscriptions(id) ON DELETE CASCADE,
    event_id INTEGER NOT NULL,
    body TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    queued_ms INTEGER NOT NULL,
    UNIQUE (subscription_id, event_id)
);
CREATE TABLE IF NOT EXISTS push_cursor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_event_id INTEGER NOT NULL
);
";

/// The columns added to `push_subscriptions` for the queue bound (a store made before them
/// gets them at open).
const BACKLOG_COLUMNS: &str = "
ALTER TABLE push_subscriptions ADD COLUMN state TEXT NOT NULL DEFAULT 'active';
ALTER TABLE push_subscriptions ADD COLUMN resume_after INTEGER NOT NULL DEFAULT 0;
ALTER TABLE push_subscriptions ADD COLUMN not_queued_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE push_subscriptions ADD COLUMN queued_events INTEGER NOT NULL DEFAULT 0;
ALTER TABLE push_subscriptions ADD COLUMN queued_bytes INTEGER NOT NULL DEFAULT 0;
UPDATE push_subscriptions SET
    queued_events = (SELECT COUNT(*) FROM push_deliveries d WHERE d.subscription_id = id),
    queued_bytes = (SELECT COALESCE(SUM(LENGTH(CAST(body AS BLOB))), 0)
                    FROM push_deliveries d WHERE d.subscription_id = id);
";

/// The column added to `push_subscriptions` for the vendor's `custom` (a store made before
/// it gets it at open).
const CUSTOM_COLUMN: &str = "ALTER TABLE push_subscriptions ADD COLUMN custom TEXT;";

/// Keep each subscription's `queued_events` and `queued_bytes` equal to its queue (read per
/// enqueued event; counting the rows each time would cost a scan of the queue).
const QUEUE_TRIGGERS: &str = "
CREATE TRIGGER IF NOT EXISTS push_deliveries_queued AFTER INSERT ON push_deliveries BEGIN
    UPDATE push_subscriptions SET queued_events = queued_events + 1,
        queued_bytes = queued_bytes + LENGTH(CAST(NEW.body AS BLOB))
    WHERE id = NEW.subscription_id;
END;
CREATE TRIGGER IF NOT EXISTS push_deliveries_done AFTER DELETE ON push_deliveries BEGIN
    UPDATE push_subscriptions SET queued_events = queued_events - 1,
        queued_bytes = queued_bytes - LENGTH(CAST(OLD.body AS BLOB))
    WHERE id = OLD.subscription_id;
END;
";

const SELECT_SUBSCRIPTION: &str = "SELECT id, topic_filter, description, target_url, target_retry,
    database_hold_time_h, secret IS NOT NULL, time_created, time_updated, delivered_count,
    failed_count, last_error, queued_events, queued_bytes, state, not_queued_count, custom
    FROM push_subscriptions s";

fn row_to_subscription(row: &rusqlite::Row<'_>) -> rusqlite::Result<WebhookSubscription> {
    Ok(WebhookSubscription {
        id: row.get(0)?,
        topic_filter: row.get(1)?,
        description: row.get(2)?,
        target_url: Some(row.get::<_, String>(3)?).filter(|u| !u.is_empty()),
        target_retry: row.get(4)?,
        database_hold_time_h: row.get(5)?,
        has_secret: row.get(6)?,
        time_created: Timestamp::from_millis(row.get(7)?).to_string(),
        time_updated: Timestamp::from_millis(row.get(8)?).to_string(),
        delivered_count: row.get(9)?,
        failed_count: row.get(10)?,
        last_error: row.get(11)?,
        queued_count: row.get(12)?,
        queued_bytes: row.get(13)?,
        state: SubscriptionState::parse(&row.get::<_, String>(14)?),
        not_queued_count: row.get(15)?,
        verify_target_certificate: true,
        populate_events: false,
        custom: row
            .get::<_, Option<String>>(16)?
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default(),
        url: None,
        events_url: None,
    })
}

/// Why a create/update failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Bad input (HTTP 400).
    #[error(transparent)]
    Input(#[from] InputError),
    /// The store failed (HTTP 500).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl WebhookStore {
    /// Opens (creating the tables if needed) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(err("open"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err("set WAL"))?;
        Self::with_connection(conn)
    }

    /// An in-memory store (tests).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::with_connection(Connection::open_in_memory().map_err(err("open"))?)
    }

    /// Uses `conn` (e.g. the server's database), creating the tables if needed.
    pub fn with_connection(conn: Connection) -> Result<Self, StoreError> {
        conn.execute_batch(SCHEMA).map_err(err("create tables"))?;
        let has_column = |name: &str| -> Result<bool, StoreError> {
            conn.query_row(
                "SELECT COUNT(*) FROM pragma_table_info('push_subscriptions') WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .map_err(err("read the subscriptions' columns"))
        };
        if !has_column("state")? {
            conn.execute_batch(&format!("BEGIN; {BACKLOG_COLUMNS} COMMIT;"))
                .map_err(err("add the queue bound's columns"))?;
        }
        if !has_column("custom")? {
            conn.execute_batch(CUSTOM_COLUMN)
                .map_err(err("add the custom column"))?;
        }
        conn.execute_batch(QUEUE_TRIGGERS)
            .map_err(err("create the queue triggers"))?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a subscription (`topic_filter` required; without `target_url` it is
    /// store-only) that receives the events with ids above `start_event_id`.
    pub fn create(
        &self,
        input: SubscriptionInput,
        start_event_id: u64,
    ) -> Result<WebhookSubscription, WriteError> {
        let d = Definition::new(input)?;
        let now = now_ms();
        let id = {
            let conn = self.conn();
            conn.execute(
                "INSERT INTO push_subscriptions (topic_filter, description, target_url,
                 target_retry, database_hold_time_h, secret, time_created, time_updated,
                 start_event_id, custom)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9)",
                params![
                    d.topic_filter,
                    d.description,
                    d.target_url,
                    d.target_retry,
                    d.database_hold_time_h,
                    d.secret,
                    now,
                    start_event_id as i64,
                    d.custom
                ],
            )
            .map_err(err("insert subscription"))?;
            conn.last_insert_rowid()
        };
        Ok(self.get(id)?.ok_or(StoreError {
            what: "read back created subscription",
            source: rusqlite::Error::QueryReturnedNoRows,
        })?)
    }

    /// Changes the given fields; `None` when there is no such subscription.
    pub fn update(
        &self,
        id: i64,
        input: SubscriptionInput,
    ) -> Result<Option<WebhookSubscription>, WriteError> {
        let current: Option<Definition> = self
            .conn()
            .query_row(
                "SELECT topic_filter, description, target_url, target_retry,
                 database_hold_time_h, secret, custom FROM push_subscriptions WHERE id = ?1",
                [id],
                |r| {
                    Ok(Definition {
                        topic_filter: r.get(0)?,
                        description: r.get(1)?,
                        target_url: r.get(2)?,
                        target_retry: r.get(3)?,
                        database_hold_time_h: r.get(4)?,
                        secret: r.get(5)?,
                        custom: r.get(6)?,
                    })
                },
            )
            .optional()
            .map_err(err("read subscription"))?;
        let Some(current) = current else {
            return Ok(None);
        };
        let d = current.apply(input)?;
        self.conn()
            .execute(
                "UPDATE push_subscriptions SET topic_filter = ?2, description = ?3,
                 target_url = ?4, target_retry = ?5, database_hold_time_h = ?6, secret = ?7,
                 time_updated = ?8, custom = ?9 WHERE id = ?1",
                params![
                    id,
                    d.topic_filter,
                    d.description,
                    d.target_url,
                    d.target_retry,
                    d.database_hold_time_h,
                    d.secret,
                    now_ms(),
                    d.custom
                ],
            )
            .map_err(err("update subscription"))?;
        Ok(self.get(id)?)
    }

    /// Drops the queued deliveries of a subscription (it became store-only) and makes it
    /// `active` (nothing left to read from the events log for it).
    pub fn clear_queue(&self, id: i64) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(err("begin clear queue"))?;
        tx.execute(
            "DELETE FROM push_deliveries WHERE subscription_id = ?1",
            [id],
        )
        .map_err(err("clear queue"))?;
        tx.execute(
            "UPDATE push_subscriptions SET state = 'active', resume_after = 0 WHERE id = ?1",
            [id],
        )
        .map_err(err("clear queue"))?;
        tx.commit().map_err(err("commit clear queue"))
    }

    /// Deletes a subscription and its queue; says whether it existed.
    pub fn delete(&self, id: i64) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute("DELETE FROM push_subscriptions WHERE id = ?1", [id])
            .map_err(err("delete subscription"))?;
        Ok(n > 0)
    }

    /// One subscription.
    pub fn get(&self, id: i64) -> Result<Option<WebhookSubscription>, StoreError> {
        self.conn()
            .query_row(
                &format!("{SELECT_SUBSCRIPTION} WHERE id = ?1"),
                [id],
                row_to_subscription,
            )
            .optional()
            .map_err(err("read subscription"))
    }

    /// Up to `limit` subscriptions with `id > after_id`, by id.
    pub fn list(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<WebhookSubscription>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "{SELECT_SUBSCRIPTION} WHERE id > ?1 ORDER BY id LIMIT ?2"
            ))
            .map_err(err("list subscriptions"))?;
        let rows = stmt
            .query_map(params![after_id, limit as i64], row_to_subscription)
            .map_err(err("list subscriptions"))?;
        rows.collect::<Result<_, _>>()
            .map_err(err("list subscriptions"))
    }

    /// The id, filter and start event id of every subscription with a target (for
    /// matching: nothing is queued for a store-only one).
    pub fn matchers(&self) -> Result<Vec<(i64, TopicFilter, u64)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT id, topic_filter, start_event_id FROM push_subscriptions
                 WHERE target_url != '' ORDER BY id",
            )
            .map_err(err("read filters"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(err("read filters"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, text, start) = row.map_err(err("read filters"))?;
            // Filters were validated when written; a bad one matches nothing.
            if let Ok(f) = TopicFilter::new(&text) {
                out.push((id, f, start as u64));
            }
        }
        Ok(out)
    }

    /// Number of subscriptions.
    pub fn count(&self) -> Result<usize, StoreError> {
        self.conn()
            .query_row("SELECT COUNT(*) FROM push_subscriptions", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as usize)
            .map_err(err("count subscriptions"))
    }

    /// Where and how to deliver for one subscription; `None` once deleted or store-only.
    pub fn target(&self, id: i64) -> Result<Option<Target>, StoreError> {
        self.conn()
            .query_row(
                "SELECT target_url, target_retry, secret, database_hold_time_h, topic_filter,
                 state, resume_after FROM push_subscriptions WHERE id = ?1
                 AND target_url != ''",
                [id],
                |r| {
                    let overflowed = SubscriptionState::parse(&r.get::<_, String>(5)?)
                        == SubscriptionState::Overflowed;
                    Ok(Target {
                        url: r.get(0)?,
                        retry: r.get(1)?,
                        secret: r.get(2)?,
                        hold_ms: (r.get::<_, f64>(3)? * 3_600_000.0) as i64,
                        topic_filter: r.get(4)?,
                        resume_after: overflowed.then_some(r.get::<_, i64>(6)? as u64),
                    })
                },
            )
            .optional()
            .map_err(err("read target"))
    }

    /// The last event id the dispatcher queued (`None` at first start).
    pub fn cursor(&self) -> Result<Option<u64>, StoreError> {
        let id: Option<i64> = self
            .conn()
            .query_row(
                "SELECT last_event_id FROM push_cursor WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(err("read cursor"))?;
        Ok(id.map(|i| i as u64))
    }

    /// Queues `(subscription, event id, body)` rows within each subscription's `backlog`
    /// and moves the cursor to `cursor`, in one transaction (so an event is queued once,
    /// even across a crash). A row past the bound overflows its subscription; the rows of an
    /// overflowed subscription are counted, not queued; an active subscription's rows up to
    /// its `resume_after` were queued from the log and are skipped.
    pub fn enqueue(
        &self,
        rows: &[(i64, u64, &str)],
        cursor: u64,
        backlog: Backlog,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(err("begin enqueue"))?;
        {
            let now = now_ms();
            let mut queue = Queue::new(&tx, now)?;
            for (sub, event_id, body) in rows {
                let Some(mut s) = queue.state(*sub)? else {
                    continue; // deleted meanwhile
                };
                match s.state {
                    SubscriptionState::Overflowed => queue.not_queued(*sub)?,
                    SubscriptionState::Active if *event_id <= s.resume_after => {}
                    SubscriptionState::Active if backlog.fits(s.events, s.bytes, body.len()) => {
                        queue.insert(*sub, *event_id, body)?;
                    }
                    SubscriptionState::Active => {
                        s.state = SubscriptionState::Overflowed;
                        s.resume_after = event_id - 1;
                        queue.set_state(*sub, &s)?;
                        queue.not_queued(*sub)?;
                    }
                }
            }
            tx.execute(
                "INSERT INTO push_cursor (id, last_event_id) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET last_event_id = MAX(last_event_id, ?1)",
                [cursor as i64],
            )
            .map_err(err("move cursor"))?;
        }
        tx.commit().map_err(err("commit enqueue"))
    }

    /// Queues, for an overflowed subscription, the matching `events` (id, body; increasing)
    /// read from the events log after its `resume_after`, within `backlog`, where the read
    /// covered the log up to `read_through`. When all fit and `read_through` reaches the
    /// dispatcher's cursor, the subscription is active again (the dispatcher queues what
    /// follows). Says whether it is.
    pub fn refill(
        &self,
        subscription_id: i64,
        events: &[(u64, &str)],
        read_through: u64,
        backlog: Backlog,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(err("begin refill"))?;
        let active = {
            let mut queue = Queue::new(&tx, now_ms())?;
            let Some(mut s) = queue.state(subscription_id)? else {
                return Ok(false);
            };
            if s.state != SubscriptionState::Overflowed {
                return Ok(true);
            }
            let mut full = false;
            for (event_id, body) in events {
                if *event_id <= s.resume_after {
                    continue;
                }
                if !backlog.fits(s.events, s.bytes, body.len()) {
                    full = true;
                    break;
                }
                queue.insert(subscription_id, *event_id, body)?;
                s.events += 1;
                s.bytes += body.len() as i64;
                s.resume_after = *event_id;
            }
            if !full {
                s.resume_after = s.resume_after.max(read_through);
                let cursor: i64 = tx
                    .query_row(
                        "SELECT COALESCE(MAX(last_event_id), 0) FROM push_cursor",
                        [],
                        |r| r.get(0),
                    )
                    .map_err(err("read cursor"))?;
                if s.resume_after >= cursor as u64 {
                    s.state = SubscriptionState::Active;
                }
            }
            queue.set_state(subscription_id, &s)?;
            s.state == SubscriptionState::Active
        };
        tx.commit().map_err(err("commit refill"))?;
        Ok(active)
    }

    /// The oldest queued delivery of a subscription.
    pub fn next_delivery(&self, subscription_id: i64) -> Result<Option<Delivery>, StoreError> {
        self.conn()
            .query_row(
                "SELECT seq, subscription_id, event_id, body, attempts, next_attempt_ms,
                 queued_ms FROM push_deliveries WHERE subscription_id = ?1
                 ORDER BY seq LIMIT 1",
                [subscription_id],
                |r| {
                    Ok(Delivery {
                        seq: r.get(0)?,
                        subscription_id: r.get(1)?,
                        event_id: r.get::<_, i64>(2)? as u64,
                        body: r.get(3)?,
                        attempts: r.get(4)?,
                        next_attempt_ms: r.get(5)?,
                        queued_ms: r.get(6)?,
                    })
                },
            )
            .optional()
            .map_err(err("read next delivery"))
    }

    /// Records a delivery accepted by the target.
    pub fn delivered(&self, delivery: &Delivery) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(err("begin delivered"))?;
        tx.execute("DELETE FROM push_deliveries WHERE seq = ?1", [delivery.seq])
            .map_err(err("delete delivered"))?;
        tx.execute(
            "UPDATE push_subscriptions SET delivered_count = delivered_count + 1 WHERE id = ?1",
            [delivery.subscription_id],
        )
        .map_err(err("count delivered"))?;
        tx.commit().map_err(err("commit delivered"))
    }

    /// Records a failed attempt: retried at `retry_at_ms`, or given up (`None`).
    pub fn failed(
        &self,
        delivery: &Delivery,
        error: &str,
        retry_at_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(err("begin failed"))?;
        match retry_at_ms {
            Some(at) => tx.execute(
                "UPDATE push_deliveries SET attempts = attempts + 1, next_attempt_ms = ?2
                 WHERE seq = ?1",
                params![delivery.seq, at],
            ),
            None => tx.execute("DELETE FROM push_deliveries WHERE seq = ?1", [delivery.seq]),
        }
        .map_err(err("update failed delivery"))?;
        tx.execute(
            "UPDATE push_subscriptions SET failed_count = failed_count + 1, last_error = ?2
             WHERE id = ?1",
            params![delivery.subscription_id, error],
        )
        .map_err(err("count failed"))?;
        tx.commit().map_err(err("commit failed"))
    }
}

/// A subscription's queue state, as [`Queue::state`] reads it.
struct QueueState {
    state: SubscriptionState,
    resume_after: u64,
    events: i64,
    bytes: i64,
}

/// The statements [`WebhookStore::enqueue`] and [`WebhookStore::refill`] share, in one
/// transaction.
struct Queue<'t> {
    read: rusqlite::CachedStatement<'t>,
    insert: rusqlite::CachedStatement<'t>,
    not_queued: rusqlite::CachedStatement<'t>,
    set_state: rusqlite::CachedStatement<'t>,
    now: i64,
}

impl<'t> Queue<'t> {
    fn new(tx: &'t rusqlite::Transaction<'_>, now: i64) -> Result<Self, StoreError> {
        let prepare = |sql| tx.prepare_cached(sql).map_err(err("prepare enqueue"));
        Ok(Self {
            read: prepare(
                "SELECT state, resume_after, queued_events, queued_bytes
                 FROM push_subscriptions WHERE id = ?1",
            )?,
            insert: prepare(
                "INSERT OR IGNORE INTO push_deliveries
                 (subscription_id, event_id, body, next_attempt_ms, queued_ms)
                 VALUES (?1, ?2, ?3, ?4, ?4)",
            )?,
            not_queued: prepare(
                "UPDATE push_subscriptions SET not_queued_count = not_queued_count + 1
                 WHERE id = ?1",
            )?,
            set_state: prepare(
                "UPDATE push_subscriptions SET state = ?2, resume_after = ?3 WHERE id = ?1",
            )?,
            now,
        })
    }

    fn state(&mut self, id: i64) -> Result<Option<QueueState>, StoreError> {
        self.read
            .query_row([id], |r| {
                Ok(QueueState {
                    state: SubscriptionState::parse(&r.get::<_, String>(0)?),
                    resume_after: r.get::<_, i64>(1)? as u64,
                    events: r.get(2)?,
                    bytes: r.get(3)?,
                })
            })
            .optional()
            .map_err(err("read queue state"))
    }

    fn insert(&mut self, id: i64, event_id: u64, body: &str) -> Result<(), StoreError> {
        self.insert
            .execute(params![id, event_id as i64, body, self.now])
            .map(drop)
            .map_err(err("enqueue delivery"))
    }

    fn not_queued(&mut self, id: i64) -> Result<(), StoreError> {
        self.not_queued
            .execute([id])
            .map(drop)
            .map_err(err("count a not queued event"))
    }

    fn set_state(&mut self, id: i64, s: &QueueState) -> Result<(), StoreError> {
        self.set_state
            .execute(params![id, s.state.as_str(), s.resume_after as i64])
            .map(drop)
            .map_err(err("set queue state"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(filter: &str, url: &str) -> SubscriptionInput {
        SubscriptionInput {
            topic_filter: Some(filter.into()),
            target_url: Some(Some(url.into())),
            ..Default::default()
        }
    }

    #[test]
    fn create_update_delete_round_trip() {
        let store = WebhookStore::open_in_memory().expect("store");
        let created = store
            .create(
                SubscriptionInput {
                    description: Some("door".into()),
                    secret: Some("k".into()),
                    ..input("items/#", "http://127.0.0.1:9/hook")
                },
                0,
            )
            .expect("create");
        assert_eq!(created.topic_filter, "items/#");
        assert!(created.has_secret);
        assert!(!created.target_retry);
        assert_eq!(created.database_hold_time_h, DEFAULT_HOLD_TIME_H);
        let updated = store
            .update(
                created.id,
                SubscriptionInput {
                    target_retry: Some(true),
                    secret: Some(String::new()),
                    ..Default::default()
                },
            )
            .expect("update")
            .expect("exists");
        assert!(updated.target_retry && !updated.has_secret);
        assert_eq!(updated.description, "door");
        assert_eq!(store.list(0, 10).expect("list").len(), 1);
        assert!(store.delete(created.id).expect("delete"));
        assert!(!store.delete(created.id).expect("delete"));
        assert!(store.get(created.id).expect("get").is_none());
    }

    #[test]
    fn bad_inputs_name_the_field() {
        let store = WebhookStore::open_in_memory().expect("store");
        let field = |r: Result<WebhookSubscription, WriteError>| match r {
            Err(WriteError::Input(e)) => e.field,
            other => panic!("expected an input error, got {other:?}"),
        };
        assert_eq!(
            field(store.create(input("a/#/b", "http://h/"), 0)),
            "topic_filter"
        );
        assert_eq!(field(store.create(input("a", "ftp://h/"), 0)), "target_url");
        assert!(store.create(input("a", "https://h/"), 0).is_ok());
        assert_eq!(
            field(store.create(input("a", "http://hé.example/"), 0)),
            "target_url"
        );
        assert_eq!(
            field(store.create(input("a", "not a url"), 0)),
            "target_url"
        );
        assert_eq!(
            field(store.create(
                SubscriptionInput {
                    database_hold_time_h: Some(-1.0),
                    ..input("a", "http://h/")
                },
                0
            )),
            "database_hold_time_h"
        );
        assert_eq!(
            field(store.create(
                SubscriptionInput {
                    custom: Some(serde_json::Value::String("x".repeat(MAX_TEXT_FIELD))),
                    ..input("a", "http://h/")
                },
                0
            )),
            "custom"
        );
    }

    #[test]
    fn a_store_made_before_custom_gets_the_column_and_keeps_its_subscriptions() {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(SCHEMA).expect("schema");
        conn.execute_batch(
            "ALTER TABLE push_subscriptions DROP COLUMN custom;
             INSERT INTO push_subscriptions (topic_filter, description, target_url,
                 target_retry, database_hold_time_h, time_created, time_updated,
                 start_event_id) VALUES ('#', 'old', 'http://h/', 0, 24, 0, 0, 0);",
        )
        .expect("an older store");
        let store = WebhookStore::with_connection(conn).expect("opens");
        let old = store.get(1).expect("get").expect("kept");
        assert_eq!(
            (old.description.as_str(), &old.custom),
            ("old", &serde_json::Value::Null)
        );
        let custom = SubscriptionInput {
            custom: Some(serde_json::json!({"a": 1})),
            ..Default::default()
        };
        let updated = store.update(1, custom).expect("update").expect("exists");
        assert_eq!(updated.custom, serde_json::json!({"a": 1}));
    }

    #[test]
    fn a_subscription_without_a_target_is_store_only_and_matches_nothing_to_deliver() {
        let store = WebhookStore::open_in_memory().expect("store");
        let custom = serde_json::json!({"app": ["a", 1]});
        let only = store
            .create(
                SubscriptionInput {
                    target_url: Some(None),
                    custom: Some(custom.clone()),
                    ..input("items/#", "http://h/")
                },
                0,
            )
            .expect("create");
        assert_eq!((only.target_url.as_deref(), &only.custom), (None, &custom));
        let delivered = store.create(input("#", "http://h/"), 0).expect("create");
        let ids: Vec<i64> = store
            .matchers()
            .expect("matchers")
            .iter()
            .map(|m| m.0)
            .collect();
        assert_eq!(
            ids,
            [delivered.id],
            "only a subscription with a target is matched"
        );
        assert!(store.target(only.id).expect("target").is_none());
        // A target later: matched; none again: not.
        let with_target = SubscriptionInput {
            target_url: Some(Some("http://h/2".into())),
            ..Default::default()
        };
        store.update(only.id, with_target).expect("update");
        assert_eq!(store.matchers().expect("matchers").len(), 2);
        let none = SubscriptionInput {
            target_url: Some(None),
            ..Default::default()
        };
        let updated = store
            .update(only.id, none)
            .expect("update")
            .expect("exists");
        assert_eq!((updated.target_url, updated.custom), (None, custom));
        assert_eq!(store.matchers().expect("matchers").len(), 1);
    }

    const UNBOUNDED: Backlog = Backlog {
        max_events: u64::MAX,
        max_bytes: u64::MAX,
    };

    #[test]
    fn queue_is_ordered_deduplicated_and_counted() {
        let store = WebhookStore::open_in_memory().expect("store");
        let sub = store.create(input("#", "http://h/"), 0).expect("create").id;
        store
            .enqueue(
                &[(sub, 5, "{\"a\":5}"), (sub, 6, "{\"a\":6}")],
                6,
                UNBOUNDED,
            )
            .expect("enqueue");
        store
            .enqueue(&[(sub, 6, "{\"a\":6}")], 6, UNBOUNDED)
            .expect("again");
        store
            .enqueue(&[(999, 7, "{}")], 7, UNBOUNDED)
            .expect("unknown subscription is skipped");
        assert_eq!(store.cursor().expect("cursor"), Some(7));
        let first = store.next_delivery(sub).expect("read").expect("queued");
        assert_eq!(first.event_id, 5);
        store.failed(&first, "HTTP 500", Some(123)).expect("failed");
        let again = store.next_delivery(sub).expect("read").expect("queued");
        assert_eq!(
            (again.event_id, again.attempts, again.next_attempt_ms),
            (5, 1, 123)
        );
        store.delivered(&again).expect("delivered");
        let second = store.next_delivery(sub).expect("read").expect("queued");
        assert_eq!(second.event_id, 6);
        store.failed(&second, "refused", None).expect("give up");
        assert!(store.next_delivery(sub).expect("read").is_none());
        let s = store.get(sub).expect("get").expect("exists");
        assert_eq!((s.delivered_count, s.failed_count), (1, 2));
        assert_eq!(s.last_error.as_deref(), Some("refused"));
    }

    fn queued_ids(store: &WebhookStore, sub: i64) -> Vec<u64> {
        let mut ids = Vec::new();
        while let Some(d) = store.next_delivery(sub).expect("read") {
            ids.push(d.event_id);
            store.delivered(&d).expect("delivered");
        }
        ids
    }

    #[test]
    fn a_full_queue_overflows_counts_and_catches_up_from_the_log_then_is_active_again() {
        let store = WebhookStore::open_in_memory().expect("store");
        let sub = store.create(input("#", "http://h/"), 0).expect("create").id;
        let two = Backlog {
            max_events: 2,
            max_bytes: u64::MAX,
        };
        let rows: Vec<(i64, u64, &str)> = (1..=4).map(|n| (sub, n, "{}")).collect();
        store.enqueue(&rows, 4, two).expect("enqueue");
        store.enqueue(&[(sub, 5, "{}")], 5, two).expect("enqueue");
        let s = store.get(sub).expect("get").expect("exists");
        assert_eq!(
            (s.state, s.queued_count, s.queued_bytes, s.not_queued_count),
            (SubscriptionState::Overflowed, 2, 4, 3)
        );
        assert_eq!(
            store
                .target(sub)
                .expect("target")
                .expect("exists")
                .resume_after,
            Some(2)
        );
        assert_eq!(queued_ids(&store, sub), [1, 2]);
        // The log holds 3..=5; a page of two fills the queue and stays overflowed.
        let active = store
            .refill(sub, &[(3, "{}"), (4, "{}")], 4, two)
            .expect("refill");
        assert!(!active, "the dispatcher's cursor (5) is not reached");
        assert_eq!(queued_ids(&store, sub), [3, 4]);
        assert!(store.refill(sub, &[(5, "{}")], 5, two).expect("refill"));
        assert_eq!(
            store
                .target(sub)
                .expect("target")
                .expect("exists")
                .resume_after,
            None
        );
        // What the log gave is not queued again by the dispatcher; what follows is.
        store
            .enqueue(&[(sub, 5, "{}"), (sub, 6, "{}")], 6, two)
            .expect("enqueue");
        assert_eq!(queued_ids(&store, sub), [5, 6]);
        let s = store.get(sub).expect("get").expect("exists");
        assert_eq!(
            (s.state, s.not_queued_count),
            (SubscriptionState::Active, 3)
        );
    }

    #[test]
    fn the_byte_bound_overflows_but_one_large_event_still_fits_an_empty_queue() {
        let store = WebhookStore::open_in_memory().expect("store");
        let sub = store.create(input("#", "http://h/"), 0).expect("create").id;
        let ten_bytes = Backlog {
            max_events: u64::MAX,
            max_bytes: 10,
        };
        let big = "x".repeat(20);
        store
            .enqueue(&[(sub, 1, &big), (sub, 2, "{}")], 2, ten_bytes)
            .expect("enqueue");
        let s = store.get(sub).expect("get").expect("exists");
        assert_eq!(
            (s.state, s.queued_count, s.queued_bytes, s.not_queued_count),
            (SubscriptionState::Overflowed, 1, 20, 1)
        );
    }
}
