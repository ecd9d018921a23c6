//! The HTTP API: the client (enrollment) API at the root and under `/edge/client/v1`, and
//! the management API under `/edge/management/v1` (admin client certificate required).

pub mod auth;
pub mod cas;
pub mod client;
pub mod console;
mod crl;
pub mod current;
pub mod error;
pub mod est;
pub mod extend;
pub mod filter;
pub mod identity_query;
pub mod management;
pub mod records;
pub mod renew;
pub mod revoke;
pub mod views;

use crate::app::WorkerCtx;
pub mod request;

use crate::http::Response;
pub use error::ApiError;
use request::under;
pub use request::{Peer, Request, CLIENT_PREFIX, MANAGEMENT_PREFIX};

/// Handles one request; every error becomes its JSON envelope.
pub async fn handle(w: &WorkerCtx, req: &Request, peer: &Peer, request_id: &str) -> Response {
    let started = std::time::Instant::now();
    let route = Route::of(req);
    let enrolling = route.enrollment_method(req);
    let result = route.dispatch(w, req, peer).await;
    if let Some(method) = enrolling {
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.status_and_code().1,
        };
        if matches!(result, Err(ApiError::EnrollmentExpired(_))) {
            crate::telemetry::token_expired(method);
        }
        crate::telemetry::enrollment(method, outcome, started.elapsed());
    }
    match result {
        Ok(resp) => resp,
        Err(err) => {
            let (status, code) = err.status_and_code();
            if status >= 500 {
                tracing::error!(request_id, code, error = %err, path = %req.head.path, "request failed");
            } else if let Some(method) = enrolling.filter(|_| refusals::log_now()) {
                // A device in the field reports the requestId of its refusal: the reason is
                // here, under it (the same text the device got; never a token).
                let peer = peer.addr.map(|a| a.ip().to_string()).unwrap_or_default();
                // Debug-quoted: any text from the client in it stays on this line.
                tracing::info!(request_id, code, method, peer = %peer, reason = ?err.to_string(), "enrollment refused");
            } else {
                tracing::debug!(request_id, code, error = ?err.to_string(), path = %req.head.path, "request refused");
            }
            let mut resp = Response::json(status, &err.envelope(request_id));
            match err {
                ApiError::RateLimited { retry_after, .. } => {
                    resp = resp.with_header("Retry-After", retry_after.to_string());
                }
                // Another node, or this one once its database is back.
                ApiError::ServiceUnavailable(_) => {
                    resp = resp.with_header("Retry-After", UNAVAILABLE_RETRY_AFTER.to_string());
                }
                // RFC 9110, 15.5.6: a 405 lists the methods the resource takes.
                ApiError::MethodNotAllowed { allow, .. } => {
                    resp = resp.with_header("Allow", allow.to_string());
                }
                ApiError::EstUnauthorized(_) => {
                    resp = resp.with_header("WWW-Authenticate", est::CHALLENGE.to_string());
                }
                _ => {}
            }
            resp
        }
    }
}

/// Seconds a `503 SERVICE_UNAVAILABLE` asks the client to wait: a database failover or a
/// restart takes a few.
pub const UNAVAILABLE_RETRY_AFTER: u32 = 2;

/// How many refused enrollments a worker logs at info: 20 a second; the next line logged
/// after a burst says how many were left out (a fleet retrying with a bad certificate
/// cannot flood the log; the metrics count every one).
mod refusals {
    use std::cell::Cell;

    const PER_SECOND: u32 = 20;

    thread_local! {
        /// The current second (monotonic), lines logged in it, refusals left out since
        /// the last line.
        static WINDOW: Cell<(u64, u32, u64)> = const { Cell::new((0, 0, 0)) };
    }

    /// Whether this refusal is logged; says first how many were not, if any.
    pub fn log_now() -> bool {
        WINDOW.with(|w| {
            let (mut at, mut logged, mut left_out) = w.get();
            let now = crate::telemetry::monotonic_millis() / 1000;
            if now != at {
                (at, logged) = (now, 0);
            }
            let log = logged < PER_SECOND;
            if log {
                if left_out > 0 {
                    tracing::info!(
                        left_out,
                        "refused enrollments not logged (over {PER_SECOND} a second on this \
                         worker; enrollgate_enrollments_total counts them all)"
                    );
                    left_out = 0;
                }
                logged += 1;
            } else {
                left_out += 1;
            }
            w.set((at, logged, left_out));
            log
        })
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn at_most_twenty_a_second_are_logged() {
            // A fresh thread: its own window. 100 refusals within a second or two: at
            // least 20 and at most 40 logged, whichever second boundary falls between.
            let logged = std::thread::spawn(|| (0..100).filter(|_| super::log_now()).count())
                .join()
                .unwrap();
            assert!((20..=40).contains(&logged), "{logged}");
        }
    }
}

/// Where a request goes, worked out once from its path: dispatch and the metric labels
/// both read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// The web console's files (`/console/...`).
    Console,
    /// The management API; the path below its prefix.
    Management(&'a str),
    /// EST (RFC 7030), at the root or below the client prefix; the path from `/.well-known`.
    Est(&'a str),
    /// The client API, at the root or below its prefix; the path below it.
    Client(&'a str),
}

impl<'a> Route<'a> {
    /// The route of `req`.
    pub fn of(req: &'a Request) -> Self {
        let path = req.head.path.as_str();
        if path == crate::console::PREFIX || path.starts_with("/console/") {
            return Route::Console;
        }
        if let Some(rest) = under(path, MANAGEMENT_PREFIX) {
            return Route::Management(rest);
        }
        let rest = under(path, CLIENT_PREFIX).unwrap_or(path);
        if rest.starts_with(est::PREFIX) {
            return Route::Est(rest);
        }
        Route::Client(rest)
    }

    /// The enrollment method of an enrollment request (the metrics' `method` label), if it
    /// is one.
    pub fn enrollment_method(&self, req: &Request) -> Option<&'static str> {
        match *self {
            Route::Console | Route::Management(_) => None,
            // EST enrollments and re-enrollments are counted apart from OpenZiti's methods.
            Route::Est(est::SIMPLEENROLL) => Some("est"),
            Route::Est(est::SIMPLEREENROLL) => Some("est_reenroll"),
            Route::Est(_) => None,
            // The method the request is handled as (`/enroll` without one is `ott`); an
            // unknown one is no enrollment.
            Route::Client(path) => crate::enroll::request::Endpoint::of(path)?
                .method(&req.head.query)
                .ok()
                .map(crate::model::Method::as_str),
        }
    }

    async fn dispatch(
        self,
        w: &WorkerCtx,
        req: &Request,
        peer: &Peer,
    ) -> Result<Response, ApiError> {
        match self {
            Route::Console => crate::console::serve(req),
            Route::Management(rest) => management::route(w, req, peer, rest).await,
            Route::Est(rest) => est::route(w, req, peer, rest).await,
            Route::Client(rest) => client::route(w, req, peer, rest).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments() {
        assert_eq!(
            under("/edge/client/v1/enroll", CLIENT_PREFIX),
            Some("/enroll")
        );
        assert_eq!(under("/edge/client/v1", CLIENT_PREFIX), Some("/"));
        assert_eq!(under("/edge/client/v12/enroll", CLIENT_PREFIX), None);
    }

    fn request(target: &str) -> Request {
        let raw = format!("POST {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        match crate::http::parse_head(raw.as_bytes()) {
            Ok(crate::http::request::Parsed::Complete(head, _)) => Request {
                head,
                body: Vec::new(),
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_route_serves_dispatch_and_the_enrollment_label() {
        let cases: [(&str, Route<'_>, Option<&str>); 10] = [
            ("/enroll", Route::Client("/enroll"), Some("ott")),
            (
                "/edge/client/v1/enroll?method=ca",
                Route::Client("/enroll"),
                Some("ca"),
            ),
            ("/enroll?method=bogus", Route::Client("/enroll"), None),
            (
                "/edge/client/v1/enroll/ottca",
                Route::Client("/enroll/ottca"),
                Some("ottca"),
            ),
            (
                "/authenticate?method=cert",
                Route::Client("/authenticate"),
                None,
            ),
            (
                "/.well-known/est/simpleenroll",
                Route::Est(est::SIMPLEENROLL),
                Some("est"),
            ),
            (
                "/edge/client/v1/.well-known/est/simplereenroll",
                Route::Est(est::SIMPLEREENROLL),
                Some("est_reenroll"),
            ),
            (
                "/.well-known/est/cacerts",
                Route::Est("/.well-known/est/cacerts"),
                None,
            ),
            (
                "/edge/management/v1/enroll",
                Route::Management("/enroll"),
                None,
            ),
            ("/console/app.js", Route::Console, None),
        ];
        for (target, route, label) in cases {
            let req = request(target);
            assert_eq!(Route::of(&req), route, "{target}");
            assert_eq!(Route::of(&req).enrollment_method(&req), label, "{target}");
        }
    }
}
