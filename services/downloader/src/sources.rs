//! Where imports come from: each source turns a request into a [`Plan`] (the one request
//! that yields the file's bytes, resumable with `Range` where the provider allows), asking
//! the provider's metadata API first where it must. Every call goes through the same
//! guarded client as plain URLs.
//!
//! - `url`: the URL itself.
//! - Google Drive (API v3): `files.get` for the name, size and type, then `alt=media`, or
//!   `files.export` for Google Docs, Sheets, Slides and Drawings.
//! - Dropbox (API v2): `/2/files/download` (path or `id:`), `/2/sharing/get_shared_link_file`
//!   (shared links); name and size from `Dropbox-API-Result`.
//! - S3: a presigned URL, or bucket + key signed with SigV4 at every request.

use std::sync::Arc;

use fms_proto::downloader::v1 as pb;
use hmac::{KeyInit, Mac};
use reqwest::Method;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};

use crate::fetch::{FetchError, Http, Limits, Plan, Sign};

/// Provider base URLs (configurable so tests use local servers).
#[derive(Debug, Clone)]
pub struct Bases {
    pub google_api: url::Url,
    pub dropbox_content: url::Url,
}

fn invalid(m: impl Into<String>) -> FetchError {
    FetchError::Invalid(m.into())
}

fn bearer(token: &str) -> Result<HeaderMap, FetchError> {
    if token.is_empty() {
        return Err(invalid("an access_token is required"));
    }
    let mut h = HeaderMap::new();
    let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| invalid("the access_token has characters a header cannot carry"))?;
    v.set_sensitive(true);
    h.insert(header::AUTHORIZATION, v);
    Ok(h)
}

fn join(base: &url::Url, path: &str) -> Result<url::Url, FetchError> {
    let mut u = base.clone();
    let prefix = u.path().trim_end_matches('/').to_string();
    u.set_path(&format!("{prefix}{path}"));
    Ok(u)
}

/// Google's native document types and what they export to by default (MIME type, file
/// extension).
fn google_export_default(mime: &str) -> Option<(&'static str, &'static str)> {
    Some(match mime {
        "application/vnd.google-apps.document" => (
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "docx",
        ),
        "application/vnd.google-apps.spreadsheet" => (
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            "xlsx",
        ),
        "application/vnd.google-apps.presentation" => (
            "application/vnd.openxmlformats-officedocument.presentationml.presentation",
            "pptx",
        ),
        "application/vnd.google-apps.drawing" => ("image/png", "png"),
        _ => return None,
    })
}

fn extension_for(mime: &str) -> Option<&'static str> {
    Some(match mime {
        "application/pdf" => "pdf",
        "text/plain" => "txt",
        "text/csv" => "csv",
        "text/html" => "html",
        "application/rtf" => "rtf",
        "application/vnd.oasis.opendocument.text" => "odt",
        "application/vnd.oasis.opendocument.spreadsheet" => "ods",
        "application/vnd.oasis.opendocument.presentation" => "odp",
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/svg+xml" => "svg",
        "application/epub+zip" => "epub",
        "application/zip" => "zip",
        _ => return None,
    })
}

/// A Drive request that can be asked at all: an id of letters, digits, `-`, `_`, a token.
pub fn check_drive(s: &pb::GoogleDriveSource) -> Result<(), FetchError> {
    let id = &s.file_id;
    if id.is_empty()
        || id.len() > 256
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(invalid(
            "file_id: a Drive file id (letters, digits, `-`, `_`)",
        ));
    }
    bearer(&s.access_token).map(|_| ())
}

/// A Drive file: its metadata, then the plan for its bytes.
pub async fn google_drive(
    http: &Http,
    bases: &Bases,
    limits: &Limits,
    s: &pb::GoogleDriveSource,
) -> Result<Plan, FetchError> {
    let id = &s.file_id;
    check_drive(s)?;
    let headers = bearer(&s.access_token)?;
    let mut meta_url = join(&bases.google_api, &format!("/drive/v3/files/{id}"))?;
    meta_url
        .query_pairs_mut()
        .append_pair("fields", "id,name,mimeType,size")
        .append_pair("supportsAllDrives", "true");
    let mut meta = Plan::get(meta_url);
    meta.headers = headers.clone();
    let m = http.json(&meta, limits).await?;
    let name = m["name"].as_str().unwrap_or("download").to_string();
    let mime = m["mimeType"].as_str().unwrap_or("");
    let mut plan = if let Some((default_mime, default_ext)) = google_export_default(mime) {
        let to = if s.export_mime_type.is_empty() {
            default_mime
        } else {
            s.export_mime_type.as_str()
        };
        let ext = if s.export_mime_type.is_empty() {
            Some(default_ext)
        } else {
            extension_for(to)
        };
        let mut u = join(&bases.google_api, &format!("/drive/v3/files/{id}/export"))?;
        u.query_pairs_mut().append_pair("mimeType", to);
        let mut p = Plan::get(u);
        p.name = Some(match ext {
            Some(e) if !name.to_ascii_lowercase().ends_with(&format!(".{e}")) => {
                format!("{name}.{e}")
            }
            _ => name,
        });
        p
    } else if mime.starts_with("application/vnd.google-apps.") {
        return Err(invalid(format!(
            "Drive items of type {mime} have no content to import"
        )));
    } else {
        let mut u = join(&bases.google_api, &format!("/drive/v3/files/{id}"))?;
        u.query_pairs_mut()
            .append_pair("alt", "media")
            .append_pair("supportsAllDrives", "true");
        let mut p = Plan::get(u);
        p.name = Some(name);
        // Drive reports size as a decimal string.
        p.size = m["size"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .or(m["size"].as_u64());
        p
    };
    plan.headers = headers;
    plan.origin = "import:google_drive";
    Ok(plan)
}

/// JSON for a Dropbox-API-Arg header: non-ASCII characters escaped (`\uXXXX`), as the
/// API requires of header values.
pub fn header_safe_json(v: &serde_json::Value) -> String {
    let text = v.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// A Dropbox file (by path or id) or a shared link.
pub fn dropbox(bases: &Bases, s: &pb::DropboxSource) -> Result<Plan, FetchError> {
    let mut headers = bearer(&s.access_token)?;
    let (endpoint, arg) = if !s.shared_link.is_empty() {
        let link =
            url::Url::parse(&s.shared_link).map_err(|e| invalid(format!("shared_link: {e}")))?;
        if link.scheme() != "https" && link.scheme() != "http" {
            return Err(invalid("shared_link: an https link"));
        }
        let mut arg = serde_json::json!({"url": s.shared_link});
        if !s.path.is_empty() {
            arg["path"] = s.path.clone().into();
        }
        ("/2/sharing/get_shared_link_file", arg)
    } else {
        let p = &s.path;
        let ok = (p.starts_with('/') && p.len() > 1)
            || p.starts_with("id:")
            || p.starts_with("rev:")
            || p.starts_with("ns:");
        if !ok || p.len() > 4096 || p.chars().any(char::is_control) {
            return Err(invalid(
                "path: a Dropbox path (`/dir/file`), `id:...` or `rev:...`",
            ));
        }
        ("/2/files/download", serde_json::json!({"path": p}))
    };
    headers.insert(
        HeaderName::from_static("dropbox-api-arg"),
        HeaderValue::from_str(&header_safe_json(&arg))
            .map_err(|_| invalid("the path cannot be sent"))?,
    );
    let mut plan = Plan::get(join(&bases.dropbox_content, endpoint)?);
    plan.method = Method::POST;
    plan.headers = headers;
    plan.meta_header = Some(HeaderName::from_static("dropbox-api-result"));
    plan.origin = "import:dropbox";
    Ok(plan)
}

/// An S3 object: a presigned URL as it is, or bucket + key (path-style on a given endpoint,
/// virtual-hosted on AWS), signed with SigV4 when credentials are given.
pub fn s3(http: &Http, s: &pb::S3Source) -> Result<Plan, FetchError> {
    if !s.presigned_url.is_empty() {
        let mut p = Plan::get(http.check(&s.presigned_url)?);
        p.origin = "import:s3";
        return Ok(p);
    }
    let bucket = &s.bucket;
    if bucket.len() < 3
        || bucket.len() > 63
        || !bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(invalid("bucket: 3 to 63 of a-z, 0-9, `-`, `.`"));
    }
    if s.key.is_empty() || s.key.len() > 1024 {
        return Err(invalid("key: 1 to 1024 bytes"));
    }
    // URLs resolve `.` and `..` segments: such a key would name another object.
    if s.key.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(invalid(
            "key: `.` and `..` segments cannot be fetched by URL",
        ));
    }
    let region = if s.region.is_empty() {
        "us-east-1"
    } else {
        s.region.as_str()
    };
    if !region
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(invalid("region: letters, digits, `-`"));
    }
    let key_path = uri_encode(&s.key, false);
    let raw = if s.endpoint.is_empty() {
        format!("https://{bucket}.s3.{region}.amazonaws.com/{key_path}")
    } else {
        format!("{}/{bucket}/{key_path}", s.endpoint.trim_end_matches('/'))
    };
    let mut p = Plan::get(http.check(&raw)?);
    p.origin = "import:s3";
    if !s.access_key_id.is_empty() {
        if s.secret_access_key.is_empty() {
            return Err(invalid("secret_access_key is required with access_key_id"));
        }
        p.signer = Some(Arc::new(SigV4 {
            access_key_id: s.access_key_id.clone(),
            secret: s.secret_access_key.clone(),
            session_token: s.session_token.clone(),
            region: region.to_string(),
            service: "s3",
            now: None,
        }));
    }
    Ok(p)
}

/// RFC 3986 percent-encoding as SigV4 wants it (`/` kept in paths).
fn uri_encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// AWS Signature Version 4 for one request (headers only; the payload is empty).
pub struct SigV4 {
    pub access_key_id: String,
    pub secret: String,
    pub session_token: String,
    pub region: String,
    pub service: &'static str,
    /// Fixed `YYYYMMDDTHHMMSSZ` (tests); `None`: the current time.
    pub now: Option<String>,
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut m = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .expect("HMAC takes keys of any length");
    m.update(data.as_bytes());
    m.finalize().into_bytes().to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn amz_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    // rfc3339: 2026-11-29T08:00:00.000Z -> 20261129T080000Z
    let t = fms_platform::logging::rfc3339(secs, 0);
    let mut out: String = t[..19].chars().filter(|c| *c != '-' && *c != ':').collect();
    out.push('Z');
    out
}

impl Sign for SigV4 {
    fn sign(&self, method: &Method, url: &url::Url, headers: &mut HeaderMap) {
        let when = self.now.clone().unwrap_or_else(amz_now);
        let date = &when[..8];
        // Imports send no body: the payload is the empty string's hash.
        let payload = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => String::new(),
        };
        let set = |h: &mut HeaderMap, k: &'static str, v: &str| {
            if let Ok(v) = HeaderValue::from_str(v) {
                h.insert(HeaderName::from_static(k), v);
            }
        };
        set(headers, "x-amz-date", &when);
        set(headers, "x-amz-content-sha256", payload);
        if !self.session_token.is_empty() {
            set(headers, "x-amz-security-token", &self.session_token);
        }
        // Signed: host, range (when sent) and every x-amz-* header, sorted.
        let mut signed: Vec<(String, String)> = vec![("host".into(), host)];
        for (k, v) in headers.iter() {
            let k = k.as_str();
            if k.starts_with("x-amz-") || k == "range" {
                signed.push((k.to_string(), v.to_str().unwrap_or("").trim().to_string()));
            }
        }
        signed.sort();
        let canonical_headers: String = signed.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let signed_names = signed
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(";");
        let mut query: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (uri_encode(&k, true), uri_encode(&v, true)))
            .collect();
        query.sort();
        let canonical_query = query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        // The path is already percent-encoded in the URL (as S3 wants it, once).
        let canonical = format!(
            "{method}\n{}\n{canonical_query}\n{canonical_headers}\n{signed_names}\n{payload}",
            url.path()
        );
        let scope = format!("{date}/{}/{}/aws4_request", self.region, self.service);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{when}\n{scope}\n{}",
            hex(&Sha256::digest(canonical.as_bytes()))
        );
        let k_date = hmac(format!("AWS4{}", self.secret).as_bytes(), date);
        let k_region = hmac(&k_date, &self.region);
        let k_service = hmac(&k_region, self.service);
        let k_signing = hmac(&k_service, "aws4_request");
        let signature = hex(&hmac(&k_signing, &to_sign));
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_names}, Signature={signature}",
            self.access_key_id
        );
        if let Ok(mut v) = HeaderValue::from_str(&auth) {
            v.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published example "GET Object" (Signature Version 4, header-based auth):
    /// examplebucket/test.txt, Range bytes=0-9, 2013-05-24.
    #[test]
    fn sigv4_matches_the_aws_example() {
        let s = SigV4 {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: String::new(),
            region: "us-east-1".into(),
            service: "s3",
            now: Some("20130524T000000Z".into()),
        };
        let url = url::Url::parse("https://examplebucket.s3.amazonaws.com/test.txt").unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static("bytes=0-9"));
        s.sign(&Method::GET, &url, &mut h);
        assert_eq!(
            h[header::AUTHORIZATION].to_str().unwrap(),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn dropbox_args_are_header_safe() {
        assert_eq!(
            header_safe_json(&serde_json::json!({"path": "/résumé ☃.txt"})),
            r#"{"path":"/r\u00e9sum\u00e9 \u2603.txt"}"#
        );
        assert_eq!(
            header_safe_json(&serde_json::json!({"path": "/😀"})),
            r#"{"path":"/\ud83d\ude00"}"#
        );
    }

    #[test]
    fn keys_are_encoded_once() {
        assert_eq!(uri_encode("a b/c+d~.txt", false), "a%20b/c%2Bd~.txt");
        assert_eq!(uri_encode("a/b", true), "a%2Fb");
    }
}
