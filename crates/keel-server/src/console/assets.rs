//! The console's files, embedded in the binary: one script bundle, one style sheet and an
//! icon, each served under a name with its content hash (`console.3f2a9c1b7e.js`) so that a
//! browser may keep it forever (`Cache-Control: immutable`), and the page that names them,
//! which is revalidated on every load (`no-cache` with an `ETag`, so a 304 most times).
//!
//! Each file is kept as is, gzip (level 9) and brotli (quality 11), computed once, on the
//! first request or when the server starts ([`warm`]), and sent in the best encoding the
//! browser accepts.

use std::collections::HashMap;
use std::io::Write;
use std::sync::OnceLock;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// The script bundle's parts, in load order: a classic script each, on the `K` namespace.
const SCRIPTS: &[(&str, &str)] = &[
    ("ui.js", include_str!("../../console/ui.js")),
    ("api.js", include_str!("../../console/api.js")),
    ("chart.js", include_str!("../../console/chart.js")),
    ("views/login.js", include_str!("../../console/views/login.js")),
    ("views/overview.js", include_str!("../../console/views/overview.js")),
    ("views/data.js", include_str!("../../console/views/data.js")),
    ("views/record.js", include_str!("../../console/views/record.js")),
    ("views/jobs.js", include_str!("../../console/views/jobs.js")),
    ("views/ops.js", include_str!("../../console/views/ops.js")),
    ("views/explorer.js", include_str!("../../console/views/explorer.js")),
    ("app.js", include_str!("../../console/app.js")),
];
const STYLE: &str = include_str!("../../console/console.css");
const ICON: &str = include_str!("../../console/icon.svg");
const PAGE: &str = include_str!("../../console/index.html");

/// The strict policy of every console response: only this server's own files run, no
/// inline script or style, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// One file in its three encodings.
pub struct Asset {
    content_type: &'static str,
    hash: String,
    identity: Bytes,
    gzip: Bytes,
    brotli: Bytes,
}

/// Every file by its served name, and the page.
pub struct Assets {
    files: HashMap<String, Asset>,
    page: Asset,
}

static ASSETS: OnceLock<Assets> = OnceLock::new();

/// The assets, built on first use.
pub fn assets() -> &'static Assets {
    ASSETS.get_or_init(build)
}

/// Builds the assets off the request path (`App::run_until` calls it as it starts serving).
pub fn warm() {
    std::thread::spawn(|| {
        assets();
    });
}

fn build() -> Assets {
    let mut bundle = String::from("'use strict';\n");
    for (name, source) in SCRIPTS {
        bundle.push_str(&format!("// ---- {name}\n{source}\n"));
    }
    let mut files = HashMap::new();
    let mut names = HashMap::new();
    for (stem, ext, content_type, body) in [
        ("console", "js", "text/javascript; charset=utf-8", bundle.into_bytes()),
        ("console", "css", "text/css; charset=utf-8", STYLE.as_bytes().to_vec()),
        ("icon", "svg", "image/svg+xml", ICON.as_bytes().to_vec()),
    ] {
        let asset = Asset::new(content_type, body);
        let served = format!("{stem}.{}.{ext}", asset.hash);
        names.insert(format!("{stem}.{ext}"), format!("/_/assets/{served}"));
        files.insert(served, asset);
    }
    let mut page = PAGE.to_string();
    for (plain, served) in &names {
        page = page.replace(&format!("{{{{{plain}}}}}"), served);
    }
    Assets {
        files,
        page: Asset::new("text/html; charset=utf-8", page.into_bytes()),
    }
}

impl Asset {
    fn new(content_type: &'static str, body: Vec<u8>) -> Asset {
        let digest = Sha256::digest(&body);
        let hash: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gzip.write_all(&body).expect("writing to memory");
        let gzip = gzip.finish().expect("writing to memory");
        let mut brotli = Vec::new();
        {
            let mut writer = brotli::CompressorWriter::new(&mut brotli, 4096, 11, 22);
            writer.write_all(&body).expect("writing to memory");
        }
        Asset {
            content_type,
            hash,
            identity: body.into(),
            gzip: gzip.into(),
            brotli: brotli.into(),
        }
    }

    /// The asset in the encoding the request accepts best, or 304 when the browser has it.
    fn respond(&self, request: &HeaderMap, cache_control: &'static str) -> Response {
        let (encoding, body) = match preferred(request) {
            Encoding::Brotli => (Some("br"), &self.brotli),
            Encoding::Gzip => (Some("gzip"), &self.gzip),
            Encoding::Identity => (None, &self.identity),
        };
        let etag = match encoding {
            Some(e) => format!("\"{}-{e}\"", self.hash),
            None => format!("\"{}\"", self.hash),
        };
        let fresh = request
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|tags| {
                tags.split(',').any(|tag| {
                    let tag = tag.trim().trim_start_matches("W/").trim_matches('"');
                    tag == "*" || tag.split('-').next() == Some(self.hash.as_str())
                })
            });
        let mut headers = HeaderMap::new();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache_control));
        headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
        headers.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex"));
        if fresh {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        if let Some(encoding) = encoding {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
        }
        (headers, body.clone()).into_response()
    }
}

impl Assets {
    /// The page at `/_/`, revalidated on each load.
    pub fn page(&self, request: &HeaderMap) -> Response {
        self.page.respond(request, "no-cache")
    }

    /// A fingerprinted file, or `None` for a name that is not one (an old build's).
    pub fn file(&self, name: &str, request: &HeaderMap) -> Option<Response> {
        let asset = self.files.get(name)?;
        Some(asset.respond(request, "public, max-age=31536000, immutable"))
    }
}

enum Encoding {
    Brotli,
    Gzip,
    Identity,
}

/// The best of brotli, gzip and none that `Accept-Encoding` allows (a `q=0` refuses).
fn preferred(headers: &HeaderMap) -> Encoding {
    let accepted = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|item| {
            let mut parts = item.split(';').map(str::trim);
            let name = parts.next()?.to_ascii_lowercase();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (!refused).then_some(name)
        })
        .collect::<Vec<_>>();
    let has = |name: &str| accepted.iter().any(|a| a == name);
    if has("br") {
        Encoding::Brotli
    } else if has("gzip") || has("*") {
        Encoding::Gzip
    } else {
        Encoding::Identity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn encodings_are_negotiated() {
        assert!(matches!(
            preferred(&accept("gzip, deflate, br, zstd")),
            Encoding::Brotli
        ));
        assert!(matches!(preferred(&accept("gzip;q=1.0, br;q=0")), Encoding::Gzip));
        assert!(matches!(preferred(&accept("identity")), Encoding::Identity));
        assert!(matches!(preferred(&HeaderMap::new()), Encoding::Identity));
    }

    #[test]
    fn every_file_is_fingerprinted_and_the_page_names_them() {
        let assets = assets();
        let page = String::from_utf8(assets.page.identity.to_vec()).unwrap();
        assert!(!page.contains("{{"), "a placeholder was left in the page");
        for name in assets.files.keys() {
            assert!(page.contains(&format!("/_/assets/{name}")), "{name} is not on the page");
        }
        for asset in assets.files.values() {
            assert!(asset.brotli.len() < asset.identity.len());
            assert!(asset.gzip.len() < asset.identity.len());
        }
    }
}
