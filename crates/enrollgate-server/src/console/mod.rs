//! The web console: a few static files compiled into the binary and served at `/console/`
//! on the enrollment listener. Plain HTML, CSS and JavaScript modules: no framework, no
//! build step, nothing fetched from elsewhere, so it works offline and what runs in the
//! browser is exactly what is in `crates/enrollgate-server/src/console/assets/` (docs/console.md says why).
//!
//! The page holds no secret of its own: it signs in (a one-time login link, or the admin
//! certificate the browser presents) through the management API (`api::console`), keeps
//! the session token in memory and sends it as the `zt-session` header. Every file is
//! answered with a Content-Security-Policy that allows only this origin (and `blob:`
//! images, for the QR code fetched with the session header), forbids framing, and with
//! `nosniff`; no CORS header is ever sent.

use crate::api::error::{method_not_allowed, ApiError};
use crate::http::Request;
use crate::http::Response;

/// Where the console is served.
pub const PREFIX: &str = "/console";

/// The policy every console file is served with.
pub const CSP: &str = "default-src 'self'; img-src 'self' blob:; object-src 'none'; \
                       base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// A file of the console: path under `/console/`, content type, bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $file:literal, $ct:literal) => {
        Asset {
            path: $path,
            content_type: $ct,
            body: include_bytes!(concat!("assets/", $file)),
        }
    };
}

const ASSETS: &[Asset] = &[
    asset!("/", "index.html", "text/html; charset=utf-8"),
    asset!("/style.css", "style.css", "text/css; charset=utf-8"),
    asset!("/app.js", "app.js", "text/javascript; charset=utf-8"),
    asset!("/api.js", "api.js", "text/javascript; charset=utf-8"),
    asset!(
        "/identities.js",
        "identities.js",
        "text/javascript; charset=utf-8"
    ),
    asset!("/cas.js", "cas.js", "text/javascript; charset=utf-8"),
    asset!("/live.js", "live.js", "text/javascript; charset=utf-8"),
    asset!("/favicon.svg", "favicon.svg", "image/svg+xml"),
];

/// The headers of every console answer.
fn secured(resp: Response) -> Response {
    resp.with_header("Content-Security-Policy", CSP.into())
        .with_header("X-Content-Type-Options", "nosniff".into())
        .with_header("X-Frame-Options", "DENY".into())
        .with_header("Referrer-Policy", "no-referrer".into())
        .with_header("Cross-Origin-Opener-Policy", "same-origin".into())
        .with_header("Cross-Origin-Resource-Policy", "same-origin".into())
        // The files change with the binary: always revalidate (they are small).
        .with_header("Cache-Control", "no-cache".into())
}

/// Answers a request for `/console` or below it.
pub fn serve(req: &Request) -> Result<Response, ApiError> {
    if !matches!(req.head.method.as_str(), "GET" | "HEAD") {
        return Err(method_not_allowed(req, "GET, HEAD"));
    }
    let path = req.head.path.as_str();
    if path == PREFIX {
        return Ok(secured(
            Response::bytes(
                308,
                "text/plain; charset=utf-8",
                b"see /console/\n".to_vec(),
            )
            .with_header("Location", "/console/".into()),
        ));
    }
    let rest = path.strip_prefix(PREFIX).unwrap_or(path);
    match ASSETS.iter().find(|a| a.path == rest) {
        Some(a) => Ok(secured(Response::bytes(
            200,
            a.content_type,
            a.body.to_vec(),
        ))),
        None => Err(ApiError::NotFound(format!(
            "no such console file: {}",
            path.chars().take(100).collect::<String>()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_named_once_and_not_empty() {
        for (i, a) in ASSETS.iter().enumerate() {
            assert!(!a.body.is_empty(), "{}", a.path);
            assert!(
                ASSETS[..i].iter().all(|b| b.path != a.path),
                "{} twice",
                a.path
            );
        }
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        // CSP would block it anyway; this keeps the files honest about working offline.
        for a in ASSETS {
            let text = String::from_utf8_lossy(a.body).replace("http://www.w3.org/2000/svg", "");
            for bad in [
                "http://",
                "https://",
                "localStorage",
                "sessionStorage",
                "document.cookie",
            ] {
                assert!(!text.contains(bad), "{} mentions {bad}", a.path);
            }
        }
    }
}
