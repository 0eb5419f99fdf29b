//! The web dashboard: its front end (`crates/spot-server/web/`), embedded in the binary and
//! served under `/ui/{file}` (public: the files hold no data), the page a browser gets at
//! `GET /` ([`prefers_html`]: other clients keep the JSON index), and the three small
//! routes the page reads besides the REST API and the push streams ([`stats`]):
//! `GET /api/whoami` (the calling key's id and role: what the page offers),
//! `GET /api/dashboard/overview` (counts and items present per location) and
//! `GET /api/dashboard/items` (items by code prefix or label).
//!
//! The front end has no build step: native ES modules, Preact with htm and uPlot vendored
//! under `web/vendor/` (versions and licences in `web/vendor/README.md`).

pub mod stats;

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderValue, ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use crate::access::Caller;
use crate::context::Context;
use crate::response::{error, json_response, unavailable_state, Body};

type Ctx = State<Arc<Context>>;
type Answer = axum::response::Response;

fn full(resp: Response<Body>) -> Answer {
    resp.map(axum::body::Body::new)
}

/// One embedded file of the front end.
struct Asset {
    /// Its name under `/ui/`.
    name: &'static str,
    /// Its media type.
    content_type: &'static str,
    /// Its bytes.
    bytes: &'static [u8],
}

/// The dashboard's page, served at `/` to browsers and at `/ui/` (`/ui/index.html`).
const INDEX_HTML: &[u8] = include_bytes!("../../web/index.html");

/// Every file under `/ui/`.
const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        bytes: INDEX_HTML,
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../web/app.css"),
    },
    Asset {
        name: "htm-preact-standalone.module.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/vendor/htm-preact-standalone.module.js"),
    },
    Asset {
        name: "uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/vendor/uPlot.iife.min.js"),
    },
    Asset {
        name: "uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../web/vendor/uPlot.min.css"),
    },
];

/// Whether a request's `Accept` prefers `text/html` to JSON: it names `text/html` with a
/// weight above zero and at least that of `application/json` (a browser's navigation;
/// `curl`'s `*/*`, no `Accept` and `application/json` keep the JSON index).
///
/// Hand-written: only the weights of two literal media types matter here, a dozen lines;
/// the media-type crates parse far more than this needs.
pub fn prefers_html(headers: &HeaderMap) -> bool {
    let mut html = 0.0f32;
    let mut json = 0.0f32;
    for value in headers.get_all(ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let weight = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "text/html" => html = html.max(weight),
                "application/json" => json = json.max(weight),
                _ => {}
            }
        }
    }
    html > 0.0 && html >= json
}

/// The dashboard's page.
pub fn index_page() -> Response<Body> {
    asset_response(&ASSETS[0])
}

/// The file `name` under `/ui/`, or `404` naming the files there are.
pub fn asset(name: &str) -> Response<Body> {
    let name = if name.is_empty() { "index.html" } else { name };
    match ASSETS.iter().find(|a| a.name == name) {
        Some(asset) => asset_response(asset),
        None => {
            let names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
            error(
                StatusCode::NOT_FOUND,
                format!(
                    "no dashboard file {name:?} under /ui/; there are: {}",
                    names.join(", ")
                ),
                Value::Null,
            )
        }
    }
}

fn asset_response(asset: &Asset) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(asset.bytes)));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    // Revalidated on each load: a new server version serves new files at the same names.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// A file of the dashboard's front end (public: the files hold no data; the page calls the
/// API with the key it signs in with).
#[utoipa::path(get, path = "/ui/{file}", tag = "dashboard",
    params(("file" = String, Path, description = "index.html, app.js, app.css or a vendored file")),
    responses(
        (status = 200, description = "The file"),
        (status = 404, description = "No such file", body = crate::http::openapi::ErrorBody)))]
pub async fn ui_file(Path(file): Path<String>) -> Answer {
    full(asset(&file))
}

/// The calling key's id and role: what the dashboard offers its user.
#[utoipa::path(get, path = "/api/whoami", tag = "dashboard",
    responses((status = 200, description = "`{\"key_id\", \"role\"}`")))]
pub async fn whoami(req: Request) -> Answer {
    let caller = req.extensions().get::<Caller>();
    full(json_response(
        StatusCode::OK,
        &json!({
            "key_id": caller.map(|c| c.key_id.as_str()),
            "role": caller.map(|c| c.role.as_str()),
        }),
    ))
}

/// Spots (total, online), items (total, present) and the items present per location,
/// the busiest first ([`stats::overview`]).
#[utoipa::path(get, path = "/api/dashboard/overview", tag = "dashboard",
    responses((status = 200, description = "spots, items, locations, locations_listed_all")))]
pub async fn overview(State(ctx): Ctx) -> Answer {
    let resp = match ctx.live_state() {
        Ok(domain) => json_response(StatusCode::OK, &stats::overview(&domain)),
        Err(why) => unavailable_state(&why),
    };
    full(resp)
}

/// Items whose code starts with `q` or whose label contains it, ignoring case, present
/// ones first ([`stats::search_items`]).
#[utoipa::path(get, path = "/api/dashboard/items", tag = "dashboard",
    params(
        ("q" = String, Query, description = "A code prefix (hex) or a piece of a label"),
        ("limit" = Option<usize>, Query, description = "At most this many, 1 to 1,000 (default 50)")),
    responses(
        (status = 200, description = "results, is_limited"),
        (status = 400, description = "A bad parameter", body = crate::http::openapi::ErrorBody)))]
pub async fn search_items(State(ctx): Ctx, req: Request) -> Answer {
    let query = req.uri().query().unwrap_or("");
    let (mut text, mut limit) = (String::new(), stats::DEFAULT_SEARCH_LIMIT);
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "q" => text = value.into_owned(),
            "limit" => match value.parse() {
                Ok(n) if (1..=stats::MAX_SEARCH_LIMIT).contains(&n) => limit = n,
                _ => return bad_parameter("limit", "must be a number from 1 to 1000"),
            },
            other => return bad_parameter(other, "unknown parameter (q, limit)"),
        }
    }
    let resp = match ctx.live_state() {
        Ok(domain) => json_response(StatusCode::OK, &stats::search_items(&domain, &text, limit)),
        Err(why) => unavailable_state(&why),
    };
    full(resp)
}

fn bad_parameter(param: &str, reason: &str) -> Answer {
    full(error(
        StatusCode::BAD_REQUEST,
        format!("bad query parameter {param:?}: {reason}"),
        json!({"param": param}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn browsers_get_the_page_and_api_clients_the_json_index() {
        let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        let chromium = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,\
                        image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7";
        assert!(prefers_html(&accept(firefox)));
        assert!(prefers_html(&accept(chromium)));
        assert!(!prefers_html(&HeaderMap::new()));
        assert!(!prefers_html(&accept("*/*")));
        assert!(!prefers_html(&accept("application/json")));
        assert!(!prefers_html(&accept("application/json, text/html;q=0.5")));
        assert!(!prefers_html(&accept("text/html;q=0")));
        assert!(prefers_html(&accept("application/json;q=0.5, text/html")));
    }

    #[test]
    fn every_file_the_page_loads_is_embedded() {
        let page = std::str::from_utf8(INDEX_HTML).unwrap();
        let app = std::str::from_utf8(asset_bytes("app.js")).unwrap();
        for asset in &ASSETS[1..] {
            let reference = format!("/ui/{}", asset.name);
            assert!(
                page.contains(&reference) || app.contains(&reference),
                "{} is embedded but never loaded",
                asset.name
            );
        }
        assert_eq!(asset("nope.js").status(), StatusCode::NOT_FOUND);
        assert_eq!(asset("").status(), StatusCode::OK);
    }

    /// The vendored files are the ones `web/vendor/README.md` names, byte for byte.
    #[test]
    fn the_vendored_files_match_the_hashes_their_readme_records() {
        let readme = include_str!("../../web/vendor/README.md");
        for asset in ASSETS
            .iter()
            .filter(|a| readme.contains(&format!("`{}`", a.name)))
        {
            let digest = ring::digest::digest(&ring::digest::SHA256, asset.bytes);
            let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `{}`", asset.name)))
                .unwrap();
            assert!(
                row.contains(&hex),
                "{}: sha256 {hex} not in {row}",
                asset.name
            );
        }
        let vendored = ASSETS
            .iter()
            .filter(|a| readme.contains(&format!("`{}`", a.name)));
        assert_eq!(vendored.count(), 3);
    }

    fn asset_bytes(name: &str) -> &'static [u8] {
        ASSETS.iter().find(|a| a.name == name).unwrap().bytes
    }
}
