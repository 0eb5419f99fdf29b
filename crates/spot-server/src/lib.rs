//! The spot server: ingest → pipeline (domain, then store) → outlets.
//!
//! The modules are layered; each uses only those above it in this list:
//!
//! - leaves: [`access`] (API keys with roles, spot admission, the failed-authentication
//!   limit; `<data>/access.db`), [`accept`] (the listeners' accept loop: connection
//!   budgets per class and address, silent connections evicted for new ones, bounded
//!   refusals), [`clock`] (the one wall-clock read), [`config`] ([`ServerConfig`],
//!   [`ServerLimits`]), [`ids`], [`metrics`], [`shutdown`] (the [`Phase`] connection tasks
//!   watch).
//! - [`domain`]: the sans-IO live state: spots, locations, items, presences, the derived
//!   events (spec §7) and the journal entries that rebuild it. Time is passed in.
//! - [`store`]: durability: the journal and the derived events log (`<data>/spot.db`) and
//!   the resource rows' checkpoints (`<data>/state.db`, [`store::checkpoint`]); SQLite in WAL
//!   mode. It never calls an outlet.
//! - [`outlets`]: committed derived events pushed to applications (`/api/ws`,
//!   `/api/stream`, `/api/subscriptions` webhooks, MQTT with `--mqtt`).
//! - [`pipeline`]: the one owner of the domain and the store: the apply stage (domain)
//!   and the writer stage (group commit, then the answers, then the outlets). A `200`
//!   leaves only after its events are committed.
//! - [`cluster`]: cluster mode (`--nats`, `--postgres`): the edge that sends the ingest's
//!   streams to JetStream instead of the pipeline, the partition owner (stage) that applies
//!   them and commits to PostgreSQL, the REST replica and the push feed (`docs/cluster.md`).
//! - [`context`]: what connection tasks share ([`Context`]).
//! - [`ingest`]: spot streams over HTTP POSTs, raw TCP (`--tcp-listen`) and `--pull`,
//!   sharing one stream session; [`api`]: the REST API, `/metrics`, the index and health
//!   answers; [`dashboard`]: the web dashboard's embedded files and the routes it reads.
//! - [`http`]: the listener: accept ([`accept`]), TLS, the router (its routes and their
//!   OpenAPI document from one list) behind the check of who
//!   may call what ([`http::auth`]; a failed pipeline: `503`);
//!   [`response`]: the JSON error bodies.
//! - [`server`]: wiring. [`Server::bind`] binds the listeners, opens the store, loads the
//!   state (replaying the journal written after the last checkpoint) and returns the bound
//!   addresses; tests bind port 0 and run it in-process. [`Server::shutdown`] stops
//!   accepting, lets in-flight POSTs finish (bounded by [`ServerLimits::shutdown_grace`]),
//!   commits and returns. The data directory is locked (`spot.lock`) from bind to the end
//!   of shutdown.

pub mod accept;
pub mod access;
pub mod clock;
pub mod config;
pub mod huge_pages;
pub mod ids;
pub mod metrics;
pub mod partition;
pub mod shutdown;

pub mod domain;
pub mod store;

pub mod outlets;
pub mod pipeline;

pub mod cluster;

pub mod context;

pub mod api;
pub mod dashboard;
pub mod ingest;

pub mod http;
pub mod response;
pub mod server;

pub use config::{ClusterConfig, Durability, Roles, ServerConfig, ServerLimits, TlsFiles};
pub use context::Context;
pub use server::{Server, ServerError, Stopped};
pub use shutdown::Phase;
