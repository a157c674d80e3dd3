//! The fetch path's SSRF guard with injected name resolution: names that resolve to
//! forbidden addresses, redirects to them, and a name that changes its answer between
//! connections (DNS rebinding). Only loopback is ever dialed; decoy listeners count the
//! connections that must not happen.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fms_downloader::fetch::{FetchError, Http, Limits, Lookup, Piece, Plan};
use fms_downloader::guard::Allow;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A listener on `ip` that counts connections and answers each with `answer(path, n)`.
async fn server(
    ip: &str,
    port: u16,
    answer: impl Fn(&str, u64) -> String + Send + Sync + 'static,
) -> (u16, Arc<AtomicU64>) {
    let l = TcpListener::bind((ip, port)).await.unwrap();
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let n = c.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = 0;
                while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf[got..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => got += k,
                    }
                }
                let head = String::from_utf8_lossy(&buf[..got]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let _ = s.write_all(answer(&path, n).as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (port, count)
}

fn lookup(map: HashMap<&'static str, Vec<SocketAddr>>, asked: Arc<AtomicU64>) -> Lookup {
    let map = Arc::new(map);
    Arc::new(move |host: String| {
        let map = map.clone();
        let asked = asked.clone();
        Box::pin(async move {
            asked.fetch_add(1, Ordering::SeqCst);
            map.get(host.as_str())
                .cloned()
                .ok_or_else(|| std::io::Error::other("no such name"))
        })
    })
}

async fn fetch(http: &Http, url: &str) -> Result<Vec<u8>, FetchError> {
    let plan = Plan::get(http.check(url)?);
    let limits = Limits {
        max_size: 1 << 20,
        idle: Duration::from_secs(2),
        deadline: Instant::now() + Duration::from_secs(10),
        retries: 2,
    };
    let (tx, mut rx) = mpsc::channel(16);
    let collect = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(p) = rx.recv().await {
            if let Piece::Data(b) = p {
                out.extend_from_slice(&b);
            }
        }
        out
    });
    let r = http.fetch(&plan, &limits, &tx).await;
    drop(tx);
    let body = collect.await.unwrap();
    r.map(|_| body)
}

fn refused(r: Result<Vec<u8>, FetchError>) -> bool {
    matches!(r, Err(FetchError::Refused(_)))
}

fn ok_answer(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Names that resolve to loopback, private, metadata or mixed answers are refused by the
/// resolver before anything is dialed.
#[tokio::test]
async fn names_resolving_to_forbidden_addresses_are_never_dialed() {
    let (port, decoy) = server("127.0.0.1", 0, |_, _| ok_answer("secret")).await;
    let at = |ip: &str| SocketAddr::new(ip.parse().unwrap(), port);
    let asked = Arc::new(AtomicU64::new(0));
    let names: HashMap<&'static str, Vec<SocketAddr>> = HashMap::from([
        ("public-looking.example", vec![at("127.0.0.1")]),
        ("mixed.example", vec![at("93.184.216.34"), at("127.0.0.1")]),
        ("v6.example", vec![at("::1")]),
        ("mapped.example", vec![at("::ffff:127.0.0.1")]),
        ("metadata.example", vec![at("169.254.169.254")]),
        ("private.example", vec![at("10.0.0.7")]),
        ("cgnat.example", vec![at("100.64.1.1")]),
        ("nat64.example", vec![at("64:ff9b::a9fe:a9fe")]),
        ("ula.example", vec![at("fd00::1")]),
    ]);
    let n = names.len() as u64;
    let keys: Vec<&str> = names.keys().copied().collect();
    let http = Http::new(Allow::default(), lookup(names, asked.clone())).unwrap();
    for name in keys {
        let r = fetch(&http, &format!("http://{name}:{port}/x")).await;
        assert!(refused(r.clone()), "{name}: {r:?}");
    }
    assert_eq!(asked.load(Ordering::SeqCst), n, "each name was resolved");
    assert_eq!(decoy.load(Ordering::SeqCst), 0, "and none was dialed");
}

/// Redirects are checked at every hop: from an allowed host to a forbidden address (by IP
/// or by a name resolving to one) nothing is dialed; more than five hops fail.
#[tokio::test]
async fn redirects_are_checked_at_every_hop() {
    // The decoy on 127.0.0.2 (not allowed); the source on 127.0.0.1 (allowed).
    let (decoy_port, decoy) = server("127.0.0.2", 0, |_, _| ok_answer("secret")).await;
    let asked = Arc::new(AtomicU64::new(0));
    let names = HashMap::from([(
        "inside.example",
        vec![SocketAddr::from(([127, 0, 0, 2], decoy_port))],
    )]);
    let (port, _) = server("127.0.0.1", 0, move |path, _| {
        let to = match path {
            "/to-ip" => format!("http://127.0.0.2:{decoy_port}/"),
            "/to-name" => format!("http://inside.example:{decoy_port}/"),
            "/to-mapped" => format!("http://[::ffff:127.0.0.2]:{decoy_port}/"),
            "/to-file" => "file:///etc/passwd".to_string(),
            p if p.starts_with("/hop/") => {
                let n: u32 = p[5..].parse().unwrap_or(0);
                if n == 0 {
                    return ok_answer("arrived");
                }
                format!("/hop/{}", n - 1)
            }
            _ => return ok_answer("plain"),
        };
        format!(
            "HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
    })
    .await;
    let allow = Allow::parse(&["127.0.0.1/32".to_string()]).unwrap();
    let http = Http::new(allow, lookup(names, asked.clone())).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(
        fetch(&http, &format!("{base}/plain")).await.unwrap(),
        b"plain"
    );
    for path in ["/to-ip", "/to-name", "/to-mapped", "/to-file"] {
        let r = fetch(&http, &format!("{base}{path}")).await;
        assert!(refused(r.clone()), "{path}: {r:?}");
    }
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "the name was resolved, then refused"
    );
    assert_eq!(decoy.load(Ordering::SeqCst), 0);
    assert_eq!(
        fetch(&http, &format!("{base}/hop/5")).await.unwrap(),
        b"arrived"
    );
    let r = fetch(&http, &format!("{base}/hop/6")).await;
    assert!(
        matches!(&r, Err(FetchError::Source(_, m)) if m.contains("redirects")),
        "{r:?}"
    );
}

/// DNS rebinding: a name answers an allowed address for the first connection and a
/// forbidden one for the next (the resumed request after a cut). The address connected to
/// is always the one checked: the second connection is refused, the decoy never dialed.
#[tokio::test]
async fn a_name_rebinding_between_connections_is_caught() {
    let (port, source) = server("127.0.0.1", 0, |_, _| {
        // Announces 100 bytes, sends 10, closes: the fetch must reconnect to resume.
        "HTTP/1.1 200 OK\r\ncontent-length: 100\r\netag: \"e\"\r\nconnection: close\r\n\r\n0123456789"
            .to_string()
    })
    .await;
    let (_, decoy) = server("127.0.0.2", port, |_, _| ok_answer("secret")).await;
    let turn = Arc::new(AtomicU64::new(0));
    let t = turn.clone();
    let rebinding: Lookup = Arc::new(move |_host: String| {
        let n = t.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let ip = if n == 0 {
                [127, 0, 0, 1]
            } else {
                [127, 0, 0, 2]
            };
            Ok(vec![SocketAddr::from((ip, port))])
        })
    });
    let allow = Allow::parse(&["127.0.0.1/32".to_string()]).unwrap();
    let http = Http::new(allow, rebinding).unwrap();
    let r = fetch(&http, &format!("http://rebind.example:{port}/f")).await;
    assert!(refused(r.clone()), "{r:?}");
    assert!(
        turn.load(Ordering::SeqCst) >= 2,
        "resolved again for the retry"
    );
    assert_eq!(source.load(Ordering::SeqCst), 1);
    assert_eq!(decoy.load(Ordering::SeqCst), 0);
}

/// Credentials go to the source's own origin only: after a redirect to another host, the
/// request carries no Authorization (nor any other header the plan added).
#[tokio::test]
async fn credentials_are_not_sent_across_a_redirect() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let target = TcpListener::bind(("127.0.0.2", 0)).await.unwrap();
    let target_port = target.local_addr().unwrap().port();
    {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = target.accept().await {
                let mut buf = vec![0u8; 8192];
                let n = s.read(&mut buf).await.unwrap_or(0);
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).to_lowercase());
                let _ = s.write_all(ok_answer("moved").as_bytes()).await;
                let _ = s.shutdown().await;
            }
        });
    }
    let (port, _) = server("127.0.0.1", 0, move |path, _| match path {
        "/same" => ok_answer("home"),
        _ => format!(
            "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.2:{target_port}/x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        ),
    })
    .await;
    let allow = Allow::parse(&["127.0.0.0/8".to_string()]).unwrap();
    let http = Http::new(allow, lookup(HashMap::new(), Arc::new(AtomicU64::new(0)))).unwrap();
    let mut plan = Plan::get(
        http.check(&format!("http://127.0.0.1:{port}/away"))
            .unwrap(),
    );
    plan.headers.insert(
        reqwest::header::AUTHORIZATION,
        "Bearer secret-token".parse().unwrap(),
    );
    plan.headers
        .insert("dropbox-api-arg", r#"{"path":"/x"}"#.parse().unwrap());
    let limits = Limits {
        max_size: 1 << 20,
        idle: Duration::from_secs(2),
        deadline: Instant::now() + Duration::from_secs(10),
        retries: 0,
    };
    let (tx, mut rx) = mpsc::channel(16);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    http.fetch(&plan, &limits, &tx).await.unwrap();
    drop(tx);
    drain.await.unwrap();
    let heads = seen.lock().unwrap().clone();
    assert_eq!(heads.len(), 1);
    assert!(!heads[0].contains("authorization"), "{}", heads[0]);
    assert!(!heads[0].contains("secret-token"));
    assert!(!heads[0].contains("dropbox-api-arg"));
}
