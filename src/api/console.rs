//! The web console at `/`: three static files (HTML, JavaScript, CSS)
//! compiled into the binary, so it works with no internet, no CDN and no
//! build step. Every answer carries a strict `Content-Security-Policy`
//! (only this origin's own script, style and connections; no inline script
//! or style, no eval, no frames, no forms posting elsewhere), `nosniff`
//! and `X-Frame-Options: DENY`.
//!
//! The files hold no data and so are served without the admin token; the
//! page reads the admin API like any client, following
//! `daemon.read_requires_token`, and asks for the admin token once per
//! browser tab (kept in `sessionStorage`) for actions. No cookie is ever
//! set, so a request another site makes carries no credential: there is
//! nothing to forge (no CSRF). This module must not read daemon state.

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};

/// The page, its script and its style, as shipped.
const INDEX_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

/// Only this origin's own files and API; `'self'` scripts are the one file
/// `/console.js` (no `'unsafe-inline'`, no `'unsafe-eval'`), and no page
/// may frame the console (clickjacking).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

pub(super) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", CONSOLE_JS)
}

pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", CONSOLE_CSS)
}

/// A static file with the console's security headers. `no-cache` (check
/// before reuse) so an upgraded daemon's console is the one shown.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-cache"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ]
    .map(|(name, value)| (name, HeaderValue::from_static(value)));
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_script_and_style_and_has_no_inline_code() {
        assert!(INDEX_HTML.contains(r#"<script src="/console.js" defer></script>"#));
        assert!(INDEX_HTML.contains(r#"<link rel="stylesheet" href="/console.css">"#));
        // One script element, and it has a src: nothing inline for the
        // policy to refuse (and nothing to need 'unsafe-inline').
        assert_eq!(INDEX_HTML.matches("<script").count(), 1);
        assert!(!INDEX_HTML.contains("<style"));
        assert!(!INDEX_HTML.contains(" style="));
        for handler in ["onclick=", "onload=", "onsubmit=", "javascript:"] {
            assert!(!INDEX_HTML.contains(handler), "{handler}");
        }
        // No eval-like calls, no HTML parsed from data, no lasting storage.
        for banned in [
            "eval(",
            "new Function",
            "innerHTML",
            "localStorage.",
            "document.cookie",
        ] {
            assert!(!CONSOLE_JS.contains(banned), "console.js uses {banned}");
        }
        assert!(CONSOLE_JS.contains("sessionStorage"));
        // No file from anywhere else.
        for text in [INDEX_HTML, CONSOLE_JS, CONSOLE_CSS] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
    }
}
