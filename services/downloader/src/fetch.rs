//! Fetching a source over HTTP(S): every address checked ([`crate::guard`]) before it is
//! dialed, redirects followed by hand and re-checked at each hop, transient failures retried
//! with backoff (`Retry-After` honoured), a body cut short resumed with `Range` from the last
//! byte received, and the size, idle and overall limits enforced as bytes arrive.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use tokio::sync::mpsc;

use crate::guard::{self, Allow, Refused};

/// Redirects followed per request, at most.
pub const MAX_REDIRECTS: usize = 5;
/// Bytes gathered before they are handed on (fewer, larger messages to the picker).
const PIECE: usize = 256 << 10;
/// Longest wait a `Retry-After` may impose on one retry.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Why an import failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The URL or an address it resolves or redirects to is not allowed.
    Refused(Refused),
    /// The source said no: (HTTP status, what it means).
    Source(u16, String),
    /// The source is larger than `downloader.max_size` (or sent more than it announced).
    TooLarge(u64),
    /// `downloader.timeout` passed.
    Timeout,
    /// Retries exhausted on transient failures; the last one.
    Unavailable(String),
    /// The source changed between two requests of one import.
    Changed,
    /// Something else about the request or the answer is wrong.
    Invalid(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Refused(r) => write!(f, "{r}"),
            FetchError::Source(s, m) => write!(f, "the source answered {s}: {m}"),
            FetchError::TooLarge(max) => {
                write!(f, "the source is larger than the limit of {max} bytes")
            }
            FetchError::Timeout => write!(f, "the import took longer than downloader.timeout"),
            FetchError::Unavailable(m) => write!(f, "the source is unavailable: {m}"),
            FetchError::Changed => write!(f, "the source changed during the import"),
            FetchError::Invalid(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for FetchError {}

/// How a hostname becomes addresses (tests inject their own; nothing is dialed that was not
/// checked either way).
pub type Lookup = Arc<
    dyn Fn(String) -> futures_util::future::BoxFuture<'static, std::io::Result<Vec<SocketAddr>>>
        + Send
        + Sync,
>;

/// The system resolver.
pub fn system_lookup() -> Lookup {
    Arc::new(|host: String| {
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.collect()) })
    })
}

/// reqwest's resolver: every address a name resolves to is checked, and only checked
/// addresses are handed back to be dialed (no second lookup: no DNS-rebinding window).
struct Guarded {
    allow: Allow,
    lookup: Lookup,
}

impl reqwest::dns::Resolve for Guarded {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        let allow = self.allow.clone();
        let lookup = self.lookup.clone();
        Box::pin(async move {
            let addrs = (lookup)(host.clone()).await?;
            if addrs.is_empty() {
                return Err(format!("{host} has no address").into());
            }
            // One forbidden address refuses the name: a name mixing public and private
            // answers is an attack, not a mirror.
            for a in &addrs {
                guard::check_ip(a.ip(), &allow)
                    .map_err(|r| -> Box<dyn std::error::Error + Send + Sync> { Box::new(r) })?;
            }
            let out: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(out)
        })
    }
}

/// What a fetch is allowed.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_size: u64,
    pub idle: Duration,
    pub deadline: Instant,
    pub retries: u32,
}

/// Signs each request just before it is sent (S3's SigV4: the signature covers the time
/// and the exact headers, so retries are signed afresh).
pub trait Sign: Send + Sync {
    fn sign(&self, method: &Method, url: &url::Url, headers: &mut HeaderMap);
}

/// One request to make for the bytes of a source (a URL, or a provider's download call).
#[derive(Clone)]
pub struct Plan {
    pub method: Method,
    pub url: url::Url,
    /// Sent with every request (authorization, provider arguments); never logged.
    pub headers: HeaderMap,
    /// The file's name if the source said so before the download (metadata calls).
    pub name: Option<String>,
    /// The size the source announced before the download, if any.
    pub size: Option<u64>,
    /// A response header carrying JSON `{"name", "size"}` about the file (Dropbox's
    /// `Dropbox-API-Result`).
    pub meta_header: Option<header::HeaderName>,
    pub signer: Option<Arc<dyn Sign>>,
    /// What the import is called in the picker's records (`import:url`, ...).
    pub origin: &'static str,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No headers, no query: both may carry credentials.
        f.debug_struct("Plan")
            .field("method", &self.method)
            .field("host", &self.url.host_str())
            .field("path", &self.url.path())
            .finish_non_exhaustive()
    }
}

impl Plan {
    pub fn get(url: url::Url) -> Plan {
        Plan {
            method: Method::GET,
            url,
            headers: HeaderMap::new(),
            name: None,
            size: None,
            meta_header: None,
            signer: None,
            origin: "import:url",
        }
    }
}

/// What the fetch reports as it goes.
#[derive(Debug)]
pub enum Piece {
    /// First, once: the file's name and size as far as the source says.
    Opened { name: String, size: Option<u64> },
    /// The next bytes, in order.
    Data(Bytes),
}

/// The HTTP side of the downloader: one client, guarded resolver, no proxies, no
/// automatic redirects or decompression.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    allow: Allow,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http").finish_non_exhaustive()
    }
}

/// The retry budget of one fetch: exponential backoff from 200 ms to 10 s, or what the
/// source asked for (`Retry-After`, at most a minute), never past the deadline.
struct Retries {
    failures: u32,
    backoff: Duration,
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            failures: 0,
            backoff: Duration::from_millis(200),
        }
    }
}

impl Retries {
    /// After the transient failure `why`: how long to wait before the next try, or the
    /// error that ends the fetch.
    fn next(
        &mut self,
        why: String,
        after: Option<Duration>,
        limits: &Limits,
    ) -> Result<Duration, FetchError> {
        self.failures += 1;
        if self.failures > limits.retries {
            return Err(FetchError::Unavailable(why));
        }
        let wait = after.unwrap_or(self.backoff).min(MAX_RETRY_AFTER);
        if Instant::now() + wait >= limits.deadline {
            return Err(FetchError::Timeout);
        }
        metrics::counter!("downloader_retries_total").increment(1);
        self.backoff = (self.backoff * 2).min(Duration::from_secs(10));
        Ok(wait)
    }
}

/// A failure worth another try, and how long the source asked us to wait.
struct Transient(String, Option<Duration>);

enum Failure {
    Retry(Transient),
    Fatal(FetchError),
}

impl From<FetchError> for Failure {
    fn from(e: FetchError) -> Self {
        Failure::Fatal(e)
    }
}

impl Http {
    pub fn new(allow: Allow, lookup: Lookup) -> Result<Http, String> {
        // https: the system's TLS (OpenSSL) and its certificate store.
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(Guarded {
                allow: allow.clone(),
                lookup,
            }))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("fms-downloader/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        Ok(Http { client, allow })
    }

    /// Check a URL the way every request's URL is checked.
    pub fn check(&self, raw: &str) -> Result<url::Url, FetchError> {
        guard::check_url(raw, &self.allow).map_err(FetchError::Refused)
    }

    /// Send `plan` for the bytes from `offset` (with `If-Range: validator` when resuming),
    /// following up to [`MAX_REDIRECTS`] redirects, each hop checked before it is dialed.
    async fn send(
        &self,
        plan: &Plan,
        limits: &Limits,
        offset: u64,
        validator: Option<&str>,
    ) -> Result<reqwest::Response, Failure> {
        let mut url = plan.url.clone();
        for _ in 0..=MAX_REDIRECTS {
            // Credentials (Authorization, provider arguments, signatures) go to the plan's
            // origin only, never to where it redirects elsewhere.
            let home = url.origin() == plan.url.origin();
            let mut headers = if home {
                plan.headers.clone()
            } else {
                HeaderMap::new()
            };
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
            if offset > 0 {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes={offset}-")) {
                    headers.insert(header::RANGE, v);
                }
                if let Some(v) = validator.and_then(|v| HeaderValue::from_str(v).ok()) {
                    headers.insert(header::IF_RANGE, v);
                }
            }
            if let Some(s) = plan.signer.as_ref().filter(|_| home) {
                s.sign(&plan.method, &url, &mut headers);
            }
            let rq = self
                .client
                .request(plan.method.clone(), url.clone())
                .headers(headers);
            // A source that connects and then says nothing: idle, then the deadline.
            let wait = (Instant::now() + limits.idle).min(limits.deadline);
            let sent =
                tokio::time::timeout_at(tokio::time::Instant::from_std(wait), rq.send()).await;
            let Ok(sent) = sent else {
                if Instant::now() >= limits.deadline {
                    return Err(Failure::Fatal(FetchError::Timeout));
                }
                return Err(Failure::Retry(Transient(
                    format!("no answer for {:?}", limits.idle),
                    None,
                )));
            };
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    if let Some(r) = refused_in(&e) {
                        return Err(Failure::Fatal(FetchError::Refused(r)));
                    }
                    return Err(Failure::Retry(Transient(describe(&e), None)));
                }
            };
            if !resp.status().is_redirection() || resp.status() == StatusCode::NOT_MODIFIED {
                return Ok(resp);
            }
            if plan.method != Method::GET {
                return Err(Failure::Fatal(FetchError::Source(
                    resp.status().as_u16(),
                    "a redirect answered a request that is not a GET".into(),
                )));
            }
            let location = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    FetchError::Source(
                        resp.status().as_u16(),
                        "a redirect without a Location".into(),
                    )
                })?;
            let next = url.join(location).map_err(|e| {
                FetchError::Source(resp.status().as_u16(), format!("bad redirect: {e}"))
            })?;
            url = self.check(next.as_str())?;
        }
        Err(Failure::Fatal(FetchError::Source(
            310,
            format!("more than {MAX_REDIRECTS} redirects"),
        )))
    }

    /// A small JSON document (a provider's metadata call, at most 1 MiB) through the same
    /// guard, with the same retries on transient failures.
    pub async fn json(
        &self,
        plan: &Plan,
        limits: &Limits,
    ) -> Result<serde_json::Value, FetchError> {
        let mut retries = Retries::default();
        loop {
            let (why, after) = match self.send(plan, limits, 0, None).await {
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(Transient(why, after))) => (why, after),
                Ok(resp) => match resp.status() {
                    StatusCode::OK => {
                        let mut body = resp.bytes_stream();
                        let mut buf = Vec::new();
                        let mut cut = None;
                        let until = tokio::time::Instant::from_std(
                            (Instant::now() + limits.idle).min(limits.deadline),
                        );
                        while let Some(next) = tokio::time::timeout_at(until, body.next())
                            .await
                            .transpose()
                        {
                            match next {
                                Ok(Ok(b)) if buf.len() + b.len() <= 1 << 20 => {
                                    buf.extend_from_slice(&b)
                                }
                                Ok(Ok(_)) => {
                                    return Err(FetchError::Invalid(
                                        "the source's metadata is larger than 1 MiB".into(),
                                    ));
                                }
                                Ok(Err(e)) => {
                                    cut = Some(describe(&e));
                                    break;
                                }
                                Err(_) => {
                                    cut = Some("the metadata stalled".into());
                                    break;
                                }
                            }
                        }
                        match cut {
                            Some(why) => (why, None),
                            None => {
                                return serde_json::from_slice(&buf).map_err(|e| {
                                    FetchError::Invalid(format!(
                                        "the source's metadata is not JSON: {e}"
                                    ))
                                });
                            }
                        }
                    }
                    s if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() => {
                        (format!("HTTP {}", s.as_u16()), retry_after(resp.headers()))
                    }
                    s => return Err(FetchError::Source(s.as_u16(), source_says(s))),
                },
            };
            let wait = retries.next(why, after, limits)?;
            tokio::time::sleep(wait).await;
        }
    }

    /// Fetch `plan` into `out`: [`Piece::Opened`] once, then the bytes in order, each send
    /// waiting for room (backpressure). Returns the number of bytes. On any error nothing
    /// more is sent and the receiver must discard what it got.
    pub async fn fetch(
        &self,
        plan: &Plan,
        limits: &Limits,
        out: &mpsc::Sender<Piece>,
    ) -> Result<u64, FetchError> {
        let mut got = 0u64;
        let mut total = plan.size;
        let mut validator: Option<String> = None;
        let mut opened = false;
        let mut retries = Retries::default();
        loop {
            if Instant::now() >= limits.deadline {
                return Err(FetchError::Timeout);
            }
            let before = got;
            let attempt = self
                .attempt(
                    plan,
                    limits,
                    out,
                    &mut got,
                    &mut total,
                    &mut validator,
                    &mut opened,
                )
                .await;
            let Transient(why, after) = match attempt {
                Ok(()) => return Ok(got),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(t)) => t,
            };
            if got > before {
                // Progress: the source is alive, the retry budget starts again.
                retries = Retries::default();
            }
            tracing::info!(error = %why, bytes = got, "source failed");
            let wait = retries.next(why, after, limits)?;
            tokio::time::sleep(wait).await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        plan: &Plan,
        limits: &Limits,
        out: &mpsc::Sender<Piece>,
        got: &mut u64,
        total: &mut Option<u64>,
        validator: &mut Option<String>,
        opened: &mut bool,
    ) -> Result<(), Failure> {
        let resp = self.send(plan, limits, *got, validator.as_deref()).await?;
        let status = resp.status();
        let mut skip = 0u64;
        match status {
            StatusCode::OK => {
                if *got > 0 {
                    let now = validator_of(resp.headers());
                    if validator.is_some() && now != *validator {
                        // If-Range was sent and another version came back: it changed.
                        return Err(FetchError::Changed.into());
                    }
                    // The same version (or no way to tell) from a source that ignores
                    // Range: read past what we have — but only if it is at least as long
                    // as what we have and as long as it was.
                    if let Some(len) = resp.content_length()
                        && (len < *got || total.is_some_and(|t| t != len))
                    {
                        return Err(FetchError::Changed.into());
                    }
                    skip = *got;
                }
                if let Some(len) = resp.content_length() {
                    match *total {
                        Some(t) if t != len && *got == 0 && plan.size.is_some() => {
                            return Err(FetchError::Invalid(format!(
                                "the source announced {t} bytes but sends {len}"
                            ))
                            .into());
                        }
                        _ => *total = Some(len),
                    }
                }
            }
            StatusCode::PARTIAL_CONTENT => {
                let (start, size) = content_range(resp.headers()).ok_or_else(|| {
                    FetchError::Invalid("a 206 answer without a usable Content-Range".into())
                })?;
                if start != *got {
                    return Err(FetchError::Invalid(format!(
                        "asked for bytes from {got} and got bytes from {start}"
                    ))
                    .into());
                }
                if let (Some(s), Some(t)) = (size, *total)
                    && s != t
                {
                    return Err(FetchError::Changed.into());
                }
                if let Some(v) = validator.as_deref()
                    && validator_of(resp.headers()).is_some_and(|now| now != v)
                {
                    // A server that ignored If-Range and sent part of another version.
                    return Err(FetchError::Changed.into());
                }
                if let Some(s) = size {
                    *total = Some(s);
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE if *got > 0 && Some(*got) == *total => {
                return Ok(());
            }
            s if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() => {
                return Err(Failure::Retry(Transient(
                    format!("HTTP {}", s.as_u16()),
                    retry_after(resp.headers()),
                )));
            }
            StatusCode::CONFLICT => {
                // Dropbox answers 409 with `{"error_summary": "path/not_found/..."}`.
                let text = small_text(resp).await;
                if text.contains("not_found") {
                    return Err(FetchError::Source(404, "not found".into()).into());
                }
                return Err(
                    FetchError::Source(409, "the source refused the request".into()).into(),
                );
            }
            s => return Err(FetchError::Source(s.as_u16(), source_says(s)).into()),
        }
        if let Some(t) = *total
            && t > limits.max_size
        {
            return Err(FetchError::TooLarge(limits.max_size).into());
        }
        if *got == 0 {
            *validator = validator_of(resp.headers());
        }
        if !*opened {
            let meta = plan
                .meta_header
                .as_ref()
                .and_then(|h| resp.headers().get(h))
                .and_then(|v| serde_json::from_slice::<serde_json::Value>(v.as_bytes()).ok());
            let meta_name = meta
                .as_ref()
                .and_then(|m| m["name"].as_str().map(str::to_string));
            if let Some(size) = meta.as_ref().and_then(|m| m["size"].as_u64())
                && total.is_none()
            {
                *total = Some(size);
                if size > limits.max_size {
                    return Err(FetchError::TooLarge(limits.max_size).into());
                }
            }
            let name = plan
                .name
                .clone()
                .or(meta_name)
                .or_else(|| {
                    resp.headers()
                        .get(header::CONTENT_DISPOSITION)
                        .and_then(|v| v.to_str().ok())
                        .and_then(disposition_name)
                })
                .or_else(|| url_name(resp.url()))
                .unwrap_or_else(|| "download".to_string());
            if out
                .send(Piece::Opened {
                    name: clean_name(&name),
                    size: *total,
                })
                .await
                .is_err()
            {
                return Err(FetchError::Invalid("the import was cancelled".into()).into());
            }
            *opened = true;
        }
        let mut body = resp.bytes_stream();
        let mut piece = BytesMut::new();
        let result = loop {
            let next = match tokio::time::timeout_at(
                tokio::time::Instant::from_std((Instant::now() + limits.idle).min(limits.deadline)),
                body.next(),
            )
            .await
            {
                Ok(n) => n,
                Err(_) if Instant::now() >= limits.deadline => {
                    break Err(Failure::Fatal(FetchError::Timeout));
                }
                Err(_) => {
                    break Err(Failure::Retry(Transient(
                        format!("nothing received for {:?}", limits.idle),
                        None,
                    )));
                }
            };
            match next {
                Some(Ok(mut chunk)) => {
                    if skip > 0 {
                        let n = skip.min(chunk.len() as u64) as usize;
                        let _ = chunk.split_to(n);
                        skip -= n as u64;
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    let now = *got + chunk.len() as u64;
                    if now > limits.max_size {
                        break Err(Failure::Fatal(FetchError::TooLarge(limits.max_size)));
                    }
                    if let Some(t) = *total
                        && now > t
                    {
                        break Err(Failure::Fatal(FetchError::Invalid(format!(
                            "the source sent more than the {t} bytes it announced"
                        ))));
                    }
                    piece.extend_from_slice(&chunk);
                    *got = now;
                    if piece.len() >= PIECE
                        && out.send(Piece::Data(piece.split().freeze())).await.is_err()
                    {
                        break Err(Failure::Fatal(FetchError::Invalid(
                            "the import was cancelled".into(),
                        )));
                    }
                }
                Some(Err(e)) => break Err(Failure::Retry(Transient(describe(&e), None))),
                None if skip > 0 => {
                    // Shorter than what we already had: not the same file.
                    break Err(Failure::Fatal(FetchError::Changed));
                }
                None => match *total {
                    Some(t) if *got < t => {
                        break Err(Failure::Retry(Transient(
                            format!("the body ended at {got} of {t} bytes"),
                            None,
                        )));
                    }
                    _ => break Ok(()),
                },
            }
        };
        // What arrived before a failure is kept: the retry resumes after it.
        if !piece.is_empty() && out.send(Piece::Data(piece.freeze())).await.is_err() {
            return Err(FetchError::Invalid("the import was cancelled".into()).into());
        }
        result
    }
}

/// Up to 4 KiB of an error answer's body, as text.
async fn small_text(resp: reqwest::Response) -> String {
    let mut body = resp.bytes_stream();
    let mut out = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while out.len() < 4096 {
        match tokio::time::timeout_at(until, body.next()).await {
            Ok(Some(Ok(b))) => out.extend_from_slice(&b[..b.len().min(4096 - out.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A guard refusal buried in a reqwest error (from the resolver).
fn refused_in(e: &reqwest::Error) -> Option<Refused> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r.clone());
        }
        cur = err.source();
    }
    None
}

/// A reqwest error with its causes, without the URL (it may carry credentials).
fn describe(e: &reqwest::Error) -> String {
    let mut out = if e.is_connect() {
        "connection failed".to_string()
    } else if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_body() || e.is_decode() {
        "the body was cut short".to_string()
    } else {
        "request failed".to_string()
    };
    let mut cur = std::error::Error::source(e);
    while let Some(err) = cur {
        out.push_str(": ");
        out.push_str(&err.to_string());
        cur = err.source();
    }
    out
}

fn source_says(s: StatusCode) -> String {
    match s.as_u16() {
        401 => "not authorized (token missing, wrong or expired)".into(),
        403 => "access denied".into(),
        404 | 410 => "not found".into(),
        _ => s.canonical_reason().unwrap_or("refused").to_string(),
    }
}

/// `Retry-After`: seconds, or an HTTP date.
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate_parse(v)?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form servers send.
fn httpdate_parse(v: &str) -> Option<std::time::SystemTime> {
    let parts: Vec<&str> = v.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let day: u64 = parts[1].parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[2])? as u64
        + 1;
    let year: i64 = parts[3].parse().ok()?;
    let hms: Vec<u64> = parts[4]
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if hms.len() != 3 || !(1..=31).contains(&day) {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = (y - era * 400) as u64;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe as i64 - 719_468;
    let secs = days * 86400 + (hms[0] * 3600 + hms[1] * 60 + hms[2]) as i64;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// `Content-Range: bytes a-b/N` -> (a, Some(N)); `N` may be `*`.
fn content_range(h: &HeaderMap) -> Option<(u64, Option<u64>)> {
    let v = h.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, size) = rest.split_once('/')?;
    let (a, _) = range.split_once('-')?;
    let size = if size == "*" {
        None
    } else {
        Some(size.parse().ok()?)
    };
    Some((a.parse().ok()?, size))
}

/// A strong ETag, else Last-Modified: what `If-Range` may carry.
fn validator_of(h: &HeaderMap) -> Option<String> {
    if let Some(e) = h.get(header::ETAG).and_then(|v| v.to_str().ok())
        && !e.starts_with("W/")
    {
        return Some(e.to_string());
    }
    h.get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The file name in a `Content-Disposition` (`filename*=UTF-8''...` preferred).
pub fn disposition_name(v: &str) -> Option<String> {
    let mut plain = None;
    for part in v.split(';').map(str::trim) {
        if let Some(x) = part.strip_prefix("filename*=") {
            let enc = x.split_once("''").map(|(_, e)| e).unwrap_or(x);
            let decoded = percent_decode(enc.trim_matches('"'))?;
            if !decoded.is_empty() {
                return Some(decoded);
            }
        } else if let Some(x) = part.strip_prefix("filename=") {
            plain = Some(x.trim_matches('"').to_string());
        }
    }
    plain.filter(|p| !p.is_empty())
}

/// The last path segment of a URL, decoded.
fn url_name(u: &url::Url) -> Option<String> {
    let seg = u.path_segments()?.rev().find(|s| !s.is_empty())?;
    percent_decode(seg).filter(|s| !s.is_empty())
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A name the picker accepts: no separators or control characters, not `.`/`..`, at most
/// 255 bytes.
pub fn clean_name(raw: &str) -> String {
    let mut s: String = raw
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    s = s.trim().to_string();
    while s.len() > 255 {
        s.pop();
    }
    if s.is_empty() || s == "." || s == ".." {
        "download".to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            disposition_name("attachment; filename=\"a b.txt\"").as_deref(),
            Some("a b.txt")
        );
        assert_eq!(
            disposition_name("attachment; filename=x.txt; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf")
                .as_deref(),
            Some("résumé.pdf")
        );
        assert_eq!(disposition_name("inline"), None);
        let u = url::Url::parse("http://h/dir/file%20name.bin?x=1").unwrap();
        assert_eq!(url_name(&u).as_deref(), Some("file name.bin"));
        assert_eq!(url_name(&url::Url::parse("http://h/").unwrap()), None);
        assert_eq!(clean_name("../etc/passwd"), ".._etc_passwd");
        assert_eq!(clean_name(".."), "download");
        assert_eq!(clean_name("a\nb"), "a_b");
        assert_eq!(clean_name(&"é".repeat(200)).len(), 254);
    }

    #[test]
    fn headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_static("bytes 100-199/1000"),
        );
        assert_eq!(content_range(&h), Some((100, Some(1000))));
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_static("bytes 5-9/*"),
        );
        assert_eq!(content_range(&h), Some((5, None)));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        assert_eq!(
            httpdate_parse("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(std::time::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        assert_eq!(httpdate_parse("yesterday"), None);
        h.insert(header::ETAG, HeaderValue::from_static("W/\"weak\""));
        h.insert(
            header::LAST_MODIFIED,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(
            validator_of(&h).as_deref(),
            Some("Sun, 06 Nov 1994 08:49:37 GMT")
        );
        h.insert(header::ETAG, HeaderValue::from_static("\"strong\""));
        assert_eq!(validator_of(&h).as_deref(), Some("\"strong\""));
    }
}
