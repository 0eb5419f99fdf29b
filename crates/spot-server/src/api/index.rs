//! What a newcomer finds at the server's well-known paths: the index of `GET /` (name,
//! version, links, how to get an API key), the collections of `GET /api`, and the answers
//! of `GET /healthz` (alive) and `GET /readyz` (ready for traffic), each computed here from
//! what it is given (no I/O; the routes pass in the server's state).

use serde::Serialize;
use utoipa::ToSchema;

use crate::shutdown::Phase;

/// The server's name.
const NAME: &str = "spot";
/// This build's version.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `GET /`: what this server is and where to go from here.
#[derive(Debug, Serialize, ToSchema)]
pub struct Index {
    /// `spot`.
    pub name: &'static str,
    /// The server's version.
    pub version: &'static str,
    /// What the server does.
    pub description: &'static str,
    /// Where to go from here, by name.
    pub links: Links,
    /// How to call the API (which key, where it comes from).
    pub api_key: &'static str,
}

/// The links of [`Index`].
#[derive(Debug, Serialize, ToSchema)]
pub struct Links {
    /// The index of the API's collections (needs a `read` key).
    pub api: &'static str,
    /// The OpenAPI document of every route (public).
    pub openapi: &'static str,
    /// Liveness (public).
    pub healthz: &'static str,
    /// Readiness (public).
    pub readyz: &'static str,
    /// Prometheus metrics (a `read` key unless `--metrics-public`).
    pub metrics: &'static str,
}

/// The index of `GET /`.
pub fn index() -> Index {
    Index {
        name: NAME,
        version: VERSION,
        description: "Collects the events of spots (HTTP POST streams, raw TCP, --pull), \
                      keeps their live state and pushes the derived events to applications \
                      (WebSocket, Server-Sent Events, webhooks, MQTT).",
        links: Links {
            api: "/api",
            openapi: "/api/openapi.json",
            healthz: "/healthz",
            readyz: "/readyz",
            metrics: "/metrics",
        },
        api_key: "Routes under /api (and /metrics) need an API key: send it as \
                  `X-Api-Key: KEY`, `Authorization: Bearer KEY` or `?key=KEY`. The first \
                  admin key is in <data dir>/admin.key; make more with `spot keys create \
                  --role read|write|admin` (README, section Access control).",
    }
}

/// One entry of [`ApiIndex`].
#[derive(Debug, Serialize, ToSchema)]
pub struct Collection {
    /// The collection's name.
    pub name: &'static str,
    /// Its path.
    pub href: &'static str,
    /// What it holds or does.
    pub description: &'static str,
}

/// `GET /api`: the collections and streams of the API.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiIndex {
    /// Every collection and stream, with its path.
    pub collections: Vec<Collection>,
    /// The OpenAPI document (methods, parameters, roles).
    pub openapi: &'static str,
}

/// The collections of `GET /api`, in the order a newcomer meets them.
const COLLECTIONS: [(&str, &str, &str); 12] = [
    (
        "spots",
        "/api/spots",
        "The spots (readers) and their status; POST enrols a spot.",
    ),
    ("locations", "/api/locations", "Where the spots are."),
    (
        "items",
        "/api/items",
        "The tagged items the spots have seen.",
    ),
    (
        "presences",
        "/api/presences",
        "Which item is near which spot, now.",
    ),
    (
        "events",
        "/api/events",
        "The derived events log (what /api/ws, /api/stream and webhooks push).",
    ),
    (
        "itemlists",
        "/api/sets/itemlists",
        "Lists of items that applications keep (an item's `sets`).",
    ),
    (
        "spotlists",
        "/api/sets/spotlists",
        "Lists of spots that applications keep.",
    ),
    (
        "subscriptions",
        "/api/subscriptions",
        "Webhook subscriptions (admin): derived events POSTed to a URL.",
    ),
    ("keys", "/api/keys", "API keys and their roles (admin)."),
    (
        "enrolments",
        "/api/enrolments",
        "Spots enrolled for admission.",
    ),
    (
        "ws",
        "/api/ws",
        "WebSocket stream of derived events ({\"subscribe\": \"<topic filter>\"}).",
    ),
    (
        "stream",
        "/api/stream",
        "Server-Sent Events stream of derived events (?topic_filter=, Last-Event-ID).",
    ),
];

/// The index of `GET /api`.
pub fn api_index() -> ApiIndex {
    ApiIndex {
        collections: COLLECTIONS
            .iter()
            .map(|&(name, href, description)| Collection {
                name,
                href,
                description,
            })
            .collect(),
        openapi: "/api/openapi.json",
    }
}

/// The answer of `GET /healthz` and `GET /readyz`: `ok` when the check passes, otherwise
/// the reasons it does not (the answer is then `503`).
#[derive(Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Health {
    /// Whether the check passes.
    pub ok: bool,
    /// Why it does not pass (empty when it does).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// The reasons in one sentence (the `error` of the JSON error bodies), when any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Health {
    fn from_reasons(reasons: Vec<String>) -> Health {
        Health {
            ok: reasons.is_empty(),
            error: (!reasons.is_empty()).then(|| reasons.join("; ")),
            reasons,
        }
    }
}

/// What the health checks look at.
#[derive(Debug, Clone, Copy)]
pub struct Status<'a> {
    /// Why the live state's owner failed, if it did
    /// ([`crate::context::Context::live_state`]); only a restart helps.
    pub failed: Option<&'a str>,
    /// Why commits are failing now, if they are (a full disk; they are retried).
    pub commit_failing: Option<&'a str>,
    /// The server's phase (listeners up while `Running`).
    pub phase: Phase,
}

/// Liveness: the process serves, and nothing but a restart is needed to serve again. Only
/// a failed pipeline (its state may be half-applied; the server recovers from its journal
/// on restart) fails it: an orchestrator that restarts on a failed liveness check then does
/// the right thing. A failing commit (a full disk) does not: that passes without a restart.
pub fn alive(status: Status<'_>) -> Health {
    Health::from_reasons(
        status
            .failed
            .map(|why| format!("the pipeline failed ({why}): restart the server"))
            .into_iter()
            .collect(),
    )
}

/// Readiness: the store takes commits and the listeners are up; otherwise each reason.
pub fn ready(status: Status<'_>) -> Health {
    let mut reasons = Vec::new();
    if let Some(why) = status.failed {
        reasons.push(format!("the pipeline failed ({why}): restart the server"));
    }
    if let Some(why) = status.commit_failing {
        reasons.push(format!(
            "commits to the store are failing ({why}): free disk space or fix the data \
             directory; ingest answers 503 until a commit succeeds"
        ));
    }
    if status.phase != Phase::Running {
        reasons.push("the server is shutting down: its listeners are closed".to_string());
    }
    Health::from_reasons(reasons)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FINE: Status<'static> = Status {
        failed: None,
        commit_failing: None,
        phase: Phase::Running,
    };

    #[test]
    fn a_running_server_with_working_commits_is_alive_and_ready() {
        let expected = Health {
            ok: true,
            reasons: vec![],
            error: None,
        };
        assert_eq!(alive(FINE), expected);
        assert_eq!(ready(FINE), expected);
        assert_eq!(
            serde_json::to_value(ready(FINE)).unwrap(),
            serde_json::json!({"ok": true})
        );
    }

    #[test]
    fn failing_commits_and_shutting_down_make_it_unready_but_alive() {
        let status = Status {
            commit_failing: Some("database or disk is full"),
            phase: Phase::Draining,
            ..FINE
        };
        assert!(alive(status).ok);
        let health = ready(status);
        assert!(!health.ok);
        assert_eq!(health.reasons.len(), 2, "{health:?}");
        assert!(health.reasons[0].contains("database or disk is full"));
        assert!(health.reasons[1].contains("shutting down"));
        assert_eq!(health.error, Some(health.reasons.join("; ")));
    }

    #[test]
    fn a_failed_pipeline_fails_both_and_says_restart() {
        let status = Status {
            failed: Some("the apply stage panicked"),
            ..FINE
        };
        for health in [alive(status), ready(status)] {
            assert!(!health.ok);
            let error = health.error.unwrap();
            assert!(error.contains("the apply stage panicked"), "{error}");
            assert!(error.contains("restart"), "{error}");
        }
    }

    #[test]
    fn the_api_index_lists_each_collection_once_under_api() {
        let index = api_index();
        let names: Vec<&str> = index.collections.iter().map(|c| c.name).collect();
        for name in crate::api::view::SCHEMAS.map(|s| s.name) {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        for c in &index.collections {
            assert_eq!(
                c.href,
                format!("/api/{}", crate::api::view::path_of(c.name))
            );
        }
    }
}
