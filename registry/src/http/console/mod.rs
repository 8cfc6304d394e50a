//! The web console at `/ui`: a few static files compiled into the binary (no build step,
//! nothing fetched at run time), which call only the public API with the key the user
//! signs in with, so every view is authorized, tenant-scoped and audited like any client.

use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::error::Error;

/// Scripts and styles from this server only; API calls to this server only.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data: blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's files: name, media type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.js", "text/javascript; charset=utf-8", include_str!("app.js")),
    ("core.js", "text/javascript; charset=utf-8", include_str!("core.js")),
    ("notes.js", "text/javascript; charset=utf-8", include_str!("notes.js")),
    ("features.js", "text/javascript; charset=utf-8", include_str!("features.js")),
    ("sql.js", "text/javascript; charset=utf-8", include_str!("sql.js")),
    ("lineage.js", "text/javascript; charset=utf-8", include_str!("lineage.js")),
    ("models.js", "text/javascript; charset=utf-8", include_str!("models.js")),
    ("audit.js", "text/javascript; charset=utf-8", include_str!("audit.js")),
    ("admin.js", "text/javascript; charset=utf-8", include_str!("admin.js")),
    ("app.css", "text/css; charset=utf-8", include_str!("app.css")),
];

fn respond(media_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // The files change with the binary; a reload after an upgrade must not mix versions.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

pub async fn index() -> Response {
    respond("text/html; charset=utf-8", include_str!("index.html"))
}

pub async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, media_type, body)) => respond(media_type, body),
        None => Error::NotFound { kind: "console file", name }.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_console_imports_is_served() {
        for (name, _, body) in ASSETS.iter().chain([&("index.html", "", include_str!("index.html"))]) {
            for import in body.split("\"/ui/").skip(1) {
                let file = import.split('"').next().unwrap();
                assert!(ASSETS.iter().any(|(n, _, _)| *n == file), "{name} loads /ui/{file}, which is not served");
            }
        }
    }
}
