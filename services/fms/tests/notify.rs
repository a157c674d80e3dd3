//! The notification service as clients use it: WebSocket delivery, resume, gaps, tickets,
//! slow consumers, replicas on PostgreSQL + Redis.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Open `/ws` with a bearer token (and `query`, e.g. `last_event_id=3`).
async fn socket(http: &str, token: &str, query: &str) -> Result<Socket, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}/ws?{query}", http.replace("http://", "ws://"));
    let mut req = url.into_client_request().unwrap();
    if !token.is_empty() {
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((s, _)) => Ok(s),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// The next JSON frame within `wait`; `None` on timeout, `Some(Err(code))` on close.
async fn next_json(s: &mut Socket, wait: Duration) -> Option<Result<Value, u16>> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let m = tokio::time::timeout_at(deadline, s.next()).await.ok()?;
        match m {
            Some(Ok(Message::Text(t))) => return Some(Ok(serde_json::from_str(&t).unwrap())),
            Some(Ok(Message::Close(f))) => {
                return Some(Err(f.map(|f| u16::from(f.code)).unwrap_or(1005)));
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Some(Err(1006)),
        }
    }
}

async fn publish(
    grpc: &str,
    users: &[&str],
    event_id: &str,
    kind: &str,
) -> Result<std::collections::HashMap<String, u64>, tonic::Status> {
    publish_about(grpc, users, event_id, kind, "s", false).await
}

/// Publish an event about `subject`; `recheck`: only to users who may still read it.
async fn publish_about(
    grpc: &str,
    users: &[&str],
    event_id: &str,
    kind: &str,
    subject: &str,
    recheck: bool,
) -> Result<std::collections::HashMap<String, u64>, tonic::Status> {
    use fms_proto::notification::v1 as pb;
    let mut c =
        pb::notification_service_client::NotificationServiceClient::connect(grpc.to_string())
            .await
            .unwrap();
    c.publish(pb::PublishRequest {
        user_ids: users.iter().map(|u| u.to_string()).collect(),
        event: Some(pb::Event {
            id: event_id.into(),
            r#type: kind.into(),
            source: "test".into(),
            subject: subject.into(),
            time: None,
            data_json: r#"{"n":1}"#.into(),
            recheck_subject: recheck,
        }),
    })
    .await
    .map(|r| r.into_inner().sequences)
}

/// The ids of the events (not gap frames) that arrive until `quiet` passes with none.
async fn drain_ids(s: &mut Socket, quiet: Duration) -> Vec<u64> {
    let mut ids = Vec::new();
    while let Some(Ok(e)) = next_json(s, quiet).await {
        if let Some(id) = e["id"].as_u64() {
            ids.push(id);
        }
    }
    ids
}

/// Issue 9: events reach exactly their user's sockets (an upload through the picker
/// produces `file.uploaded`); a client reconnecting with the last id gets exactly what it
/// missed, in order, then live events; a repeated publish is stored once; events past the
/// retention are announced as a gap; tickets work once; bad token, no token, bad Origin are
/// refused at the upgrade; a revoked token closes the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_their_user_and_resume_exactly() {
    use futures_util::SinkExt;
    let p = spawn(
        &["serve"],
        &[
            ("FMS_NOTIFICATION__HEARTBEAT", "2s".into()),
            ("FMS_NOTIFICATION__RETENTION", "8s".into()),
        ],
        true,
    );
    let c = client();
    let url = p.http.clone();
    let grpc = p.grpc.clone().unwrap();
    let a = login_session(&c, &url, &username()).await;
    let b = login_session(&c, &url, &username()).await;
    let (ta, tb) = (
        a["access_token"].as_str().unwrap().to_string(),
        b["access_token"].as_str().unwrap().to_string(),
    );
    let uid_a = user_id(&c, &url, &ta).await;

    // Refused at the upgrade.
    assert_eq!(
        socket(&url, "", "").await.err().unwrap(),
        "401 Unauthorized"
    );
    assert_eq!(
        socket(&url, "not-a-token", "").await.err().unwrap(),
        "401 Unauthorized"
    );
    {
        // Forged: `alg: none`, and A's signature over claims naming someone else.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let parts: Vec<&str> = ta.split('.').collect();
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        );
        let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        claims["sub"] = json!("someone-else");
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            b64.encode(claims.to_string()),
            parts[2]
        );
        for forged in [none, tampered] {
            assert_eq!(
                socket(&url, &forged, "").await.err().unwrap(),
                "401 Unauthorized"
            );
        }
    }
    {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("{}/ws", url.replace("http://", "ws://"))
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {ta}").parse().unwrap());
        req.headers_mut()
            .insert("origin", "https://evil.example".parse().unwrap());
        match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
            other => panic!("bad Origin accepted: {:?}", other.map(|_| ())),
        }
    }

    // Delivery: both of A's sockets, none of B's.
    let mut a1 = socket(&url, &ta, "").await.unwrap();
    let mut a2 = socket(&url, &ta, "").await.unwrap();
    let mut b1 = socket(&url, &tb, "").await.unwrap();
    let r = c
        .post(format!("{url}/api/upload?name=hello.txt"))
        .bearer_auth(&ta)
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let file: Value = r.json().await.unwrap();
    for s in [&mut a1, &mut a2] {
        let e = next_json(s, Duration::from_secs(5)).await.unwrap().unwrap();
        assert_eq!(e["type"], "file.uploaded");
        assert_eq!(e["data"]["file_id"], file["id"]);
        assert_eq!(e["id"], 1);
    }
    assert!(
        next_json(&mut b1, Duration::from_millis(500))
            .await
            .is_none(),
        "B hears nothing"
    );

    // Resume: 100 events while A is away, then exactly those, in order, then live ones.
    a1.close(None).await.unwrap();
    for i in 0..100 {
        publish(&grpc, &[&uid_a], &format!("ev-{i}"), "test.event")
            .await
            .unwrap();
    }
    // A publisher retrying the same event stores it once.
    let again = publish(&grpc, &[&uid_a], "ev-99", "test.event")
        .await
        .unwrap();
    assert_eq!(again[&uid_a], 101);
    let mut a3 = socket(&url, &ta, "last_event_id=1").await.unwrap();
    for want in 2..=101u64 {
        let e = next_json(&mut a3, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e["id"], want);
        assert_eq!(e["event_id"], format!("ev-{}", want - 2));
    }
    publish(&grpc, &[&uid_a], "live", "test.event")
        .await
        .unwrap();
    let e = next_json(&mut a3, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e["id"], 102);
    assert!(
        next_json(&mut a3, Duration::from_millis(300))
            .await
            .is_none(),
        "no duplicate"
    );
    // The other socket, live all along, saw all 101 once each.
    for want in 2..=102u64 {
        let e = next_json(&mut a2, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e["id"], want);
    }
    // Bad publishes.
    assert_eq!(
        publish(&grpc, &[], "x", "t").await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        publish(&grpc, &[&uid_a], "x", "bad type!")
            .await
            .unwrap_err()
            .code(),
        tonic::Code::InvalidArgument
    );

    // A ticket opens one socket, once.
    let t: Value = c
        .post(format!("{url}/ws/ticket"))
        .bearer_auth(&ta)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ticket = t["ticket"].as_str().unwrap();
    let mut viat = socket(&url, "", &format!("ticket={ticket}&last_event_id=101"))
        .await
        .unwrap();
    let e = next_json(&mut viat, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e["id"], 102);
    assert_eq!(
        socket(&url, "", &format!("ticket={ticket}"))
            .await
            .err()
            .unwrap(),
        "401 Unauthorized"
    );

    // An oversized client frame closes the socket.
    viat.send(tokio_tungstenite::tungstenite::Message::Text(
        "x".repeat(10_000).into(),
    ))
    .await
    .unwrap();
    assert!(matches!(
        next_json(&mut viat, Duration::from_secs(5)).await,
        Some(Err(_))
    ));

    // Malformed client frames (text that is not UTF-8, a reserved opcode) close that socket;
    // the service goes on.
    {
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        for frame in [
            Frame::message(vec![0xff, 0xfe, 0x80], OpCode::Data(Data::Text), true),
            Frame::message(b"x".to_vec(), OpCode::Data(Data::Reserved(3)), true),
        ] {
            let mut s = socket(&url, &ta, "last_event_id=102").await.unwrap();
            s.send(Message::Frame(frame)).await.unwrap();
            assert!(matches!(
                next_json(&mut s, Duration::from_secs(5)).await,
                Some(Err(_))
            ));
        }
    }

    // Past the retention: the client is told what it cannot get back.
    tokio::time::sleep(Duration::from_secs(10)).await;
    publish(&grpc, &[&uid_a], "after", "test.event")
        .await
        .unwrap();
    let mut late = socket(&url, &ta, "last_event_id=50").await.unwrap();
    let g = next_json(&mut late, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(g["type"], "gap");
    assert_eq!(g["from"], 51);
    assert_eq!(g["to"], 102);
    let e = next_json(&mut late, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e["id"], 103);

    // Logout: the open socket is closed with 4001.
    let r = c
        .post(format!("{url}/auth/logout"))
        .bearer_auth(&ta)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let mut code = None;
    for _ in 0..50 {
        match next_json(&mut late, Duration::from_millis(200)).await {
            Some(Err(c)) => {
                code = Some(c);
                break;
            }
            _ => continue,
        }
    }
    assert_eq!(code, Some(4001));
    drop(b1);
}

/// Issue 9: two `fms notification` replicas on PostgreSQL + Redis: a socket on one gets
/// events published through either, in order, with no gap; a client resumes on the other
/// replica with exactly what it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_replicas_share_events_through_redis() {
    let mut env = shared_env().await;
    let auth = spawn(&["auth"], &env, false);
    env.push((
        "FMS_AUTH__JWKS_URL",
        format!("{}/.well-known/jwks.json", auth.http),
    ));
    let perm = spawn(&["permission"], &env, true);
    env.push((
        "FMS_NOTIFICATION__PERMISSION_URL",
        perm.grpc.clone().unwrap(),
    ));
    let n1 = spawn(&["notification"], &env, true);
    let n2 = spawn(&["notification"], &env, true);
    let c = client();
    let t = login_session(&c, &auth.http, &username()).await;
    let token = t["access_token"].as_str().unwrap().to_string();
    let uid = user_id(&c, &auth.http, &token).await;
    let (g1, g2) = (n1.grpc.clone().unwrap(), n2.grpc.clone().unwrap());

    let mut s = socket(&n2.http, &token, "").await.unwrap();
    // Subscribed replicas: give the channel a moment after the socket is up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..21 {
        let via = if i % 2 == 0 { &g1 } else { &g2 };
        publish(via, &[&uid], &format!("r-{i}"), "test.event")
            .await
            .unwrap();
    }
    for want in 1..=21u64 {
        let e = next_json(&mut s, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e["id"], want, "in order, no gap, across replicas");
    }
    drop(s);
    for i in 21..31 {
        publish(&g2, &[&uid], &format!("r-{i}"), "test.event")
            .await
            .unwrap();
    }
    let mut s = socket(&n1.http, &token, "last_event_id=21").await.unwrap();
    for want in 22..=31u64 {
        let e = next_json(&mut s, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e["id"], want);
        assert_eq!(e["event_id"], format!("r-{}", want - 1));
    }
    assert!(
        next_json(&mut s, Duration::from_millis(300))
            .await
            .is_none()
    );
}

/// Issue 9 (reliability test 35): a client that stops reading is cut off (4008) once its
/// queue is full, instead of the server holding what it cannot send; the server's memory
/// stays bounded; the client then resumes with its last id and misses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_stops_reading_is_cut_off_and_resumes() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let p = spawn(
        &["serve"],
        &[("FMS_NOTIFICATION__SEND_QUEUE", "8".into())],
        true,
    );
    let c = client();
    let url = p.http.clone();
    let grpc = p.grpc.clone().unwrap();
    let t = login_session(&c, &url, &username()).await;
    let token = t["access_token"].as_str().unwrap().to_string();
    let uid = user_id(&c, &url, &token).await;

    // A client with a small receive buffer that reads nothing for now.
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let stream = tcp.connect(addr).await.unwrap();
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut slow, _) =
        tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = proc_kib(p.child.id(), "VmRSS:");

    // 300 events of ~60 KiB each (~18 MiB), far more than the socket's buffers hold.
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(60_000));
    let mut n = fms_proto::notification::v1::notification_service_client::NotificationServiceClient::connect(grpc.clone())
        .await
        .unwrap();
    for i in 0..300 {
        n.publish(fms_proto::notification::v1::PublishRequest {
            user_ids: vec![uid.clone()],
            event: Some(fms_proto::notification::v1::Event {
                id: format!("big-{i}"),
                r#type: "test.big".into(),
                source: "test".into(),
                subject: String::new(),
                time: None,
                data_json: big.clone(),
                recheck_subject: false,
            }),
        })
        .await
        .unwrap();
    }
    let rss_after = proc_kib(p.child.id(), "VmRSS:");

    // Reading now: some events, then the server's close with 4008; never all 300.
    let mut last = 0u64;
    let mut code = None;
    while let Some(m) = next_json(&mut slow, Duration::from_secs(10)).await {
        match m {
            Ok(e) => last = e["id"].as_u64().unwrap(),
            Err(c) => {
                code = Some(c);
                break;
            }
        }
    }
    assert_eq!(code, Some(4008), "cut off as too slow");
    assert!(last < 300, "received {last} of 300 before the cut");
    assert!(
        rss_after.saturating_sub(rss_before) < 64 * 1024,
        "server RSS grew {} KiB",
        rss_after.saturating_sub(rss_before)
    );
    // Resuming from the last id it saw, it gets the rest.
    let mut again = socket(&url, &token, &format!("last_event_id={last}"))
        .await
        .unwrap();
    for want in last + 1..=300 {
        let e = next_json(&mut again, Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e["id"], want);
    }
    eprintln!(
        "slow consumer: cut after {last} of 300 events; server RSS {rss_before} -> {rss_after} KiB"
    );
}

/// The picker keeps an event while the notification service is away and publishes it once
/// the service is back: an upload made during the outage reaches the user afterwards, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_made_while_the_notification_service_is_down_arrive_later() {
    let port = free_port();
    let serve = spawn(
        &["serve"],
        &[(
            "FMS_PICKER__NOTIFICATION_URL",
            format!("http://127.0.0.1:{port}"),
        )],
        true,
    );
    let c = client();
    let t = login_session(&c, &serve.http, &username()).await;
    let token = t["access_token"].as_str().unwrap().to_string();
    let r = c
        .post(format!("{}/api/upload?name=while-down.txt", serve.http))
        .bearer_auth(&token)
        .body("made while the notification service was down")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let file: Value = r.json().await.unwrap();
    // The service comes up a moment later, on the address the picker publishes to.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let dir = tempfile::tempdir().unwrap();
    let n = spawn_on(
        dir.path(),
        "127.0.0.1:0",
        &format!("127.0.0.1:{port}"),
        &["notification"],
        &[
            (
                "FMS_AUTH__JWKS_URL",
                format!("{}/.well-known/jwks.json", serve.http),
            ),
            // `file.uploaded` is re-checked at delivery, over gRPC here.
            (
                "FMS_NOTIFICATION__PERMISSION_URL",
                serve.grpc.clone().unwrap(),
            ),
        ],
        true,
    );
    let mut s = socket(&n.http, &token, "last_event_id=0").await.unwrap();
    let e = next_json(&mut s, Duration::from_secs(15))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e["type"], "file.uploaded");
    assert_eq!(e["data"]["file_id"], file["id"]);
    assert_eq!(e["id"], 1);
    assert!(
        next_json(&mut s, Duration::from_millis(500))
            .await
            .is_none(),
        "once"
    );
}

/// Issue 9 (reliability test 34): access is re-checked at delivery. A user a file was shared
/// with hears its content events until the share is revoked, and none after — live or
/// replayed — while events about access itself (the revoke, the delete) still reach them; a
/// file's deletion reaches everyone who held a grant on it; a socket is closed with 4001 at
/// its token's expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_is_rechecked_at_delivery_and_sockets_close_at_token_expiry() {
    let p = spawn(
        &["serve"],
        &[
            ("FMS_AUTH__ACCESS_TTL", "60s".into()),
            // Slower than the token's life: only the expiry can close the socket.
            ("FMS_NOTIFICATION__HEARTBEAT", "30s".into()),
        ],
        true,
    );
    let c = client();
    let url = p.http.clone();
    let grpc = p.grpc.clone().unwrap();
    let (na, nb) = (username(), username());
    let a = login_session(&c, &url, &na).await;
    let b = login_session(&c, &url, &nb).await;
    let (ta, tb) = (
        a["access_token"].as_str().unwrap().to_string(),
        b["access_token"].as_str().unwrap().to_string(),
    );
    let (uid_a, uid_b) = (user_id(&c, &url, &ta).await, user_id(&c, &url, &tb).await);
    // Opened first: its token expires ~60 s from now.
    let mut expiring = socket(&url, &tb, "").await.unwrap();
    let opened = std::time::Instant::now();

    let upload = |name: &'static str| {
        let (c, url, ta) = (c.clone(), url.clone(), ta.clone());
        async move {
            let r = c
                .post(format!("{url}/api/upload?name={name}"))
                .bearer_auth(&ta)
                .body("content")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let share = |file: String, rights: Vec<&'static str>| {
        let (c, url, ta, nb) = (c.clone(), url.clone(), ta.clone(), nb.clone());
        async move {
            let r = c
                .post(format!("{url}/api/files/share"))
                .bearer_auth(&ta)
                .json(&json!({"file_id": file, "with": nb, "rights": rights}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        }
    };
    let f = upload("shared.txt").await;
    let mut sa = socket(&url, &ta, "").await.unwrap();
    let mut sb = socket(&url, &tb, "").await.unwrap();
    share(f.clone(), vec!["read"]).await;
    let e = next_json(&mut sb, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (e["id"].as_u64(), e["type"].as_str()),
        (Some(1), Some("file.shared"))
    );

    // While shared: B hears the file's content events.
    publish_about(
        &grpc,
        &[&uid_a, &uid_b],
        "c1",
        "transform.completed",
        &f,
        true,
    )
    .await
    .unwrap();
    let e = next_json(&mut sb, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (e["id"].as_u64(), e["event_id"].as_str()),
        (Some(2), Some("c1"))
    );

    // Revoked: B is told so, then hears nothing more about the file; A does.
    share(f.clone(), vec![]).await;
    let e = next_json(&mut sb, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (e["id"].as_u64(), e["type"].as_str()),
        (Some(3), Some("file.shared"))
    );
    assert_eq!(e["data"]["rights"], json!([]));
    let seqs = publish_about(
        &grpc,
        &[&uid_a, &uid_b],
        "c2",
        "transform.completed",
        &f,
        true,
    )
    .await
    .unwrap();
    assert_eq!(seqs[&uid_b], 4, "stored for B, withheld at delivery");
    publish_about(&grpc, &[&uid_b], "other", "test.event", "x", false)
        .await
        .unwrap();
    let e = next_json(&mut sb, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e["id"], 5, "event 4 (about the revoked file) was withheld");
    let a_ids = drain_ids(&mut sa, Duration::from_millis(500)).await;
    assert!(a_ids.len() >= 2, "the owner hears c1 and c2: {a_ids:?}");

    // Replayed from the start, B gets what it may still be told.
    let mut replay = socket(&url, &tb, "last_event_id=0").await.unwrap();
    assert_eq!(
        drain_ids(&mut replay, Duration::from_millis(700)).await,
        vec![1, 3, 5]
    );

    // A second file shared with B, then deleted by A: B (a former holder) is told.
    let g = upload("gone.txt").await;
    share(g.clone(), vec!["read"]).await;
    let r = c
        .delete(format!("{url}/api/files/{g}"))
        .bearer_auth(&ta)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let mut kinds = Vec::new();
    while let Some(Ok(e)) = next_json(&mut sb, Duration::from_secs(2)).await {
        kinds.push((
            e["type"].as_str().unwrap().to_string(),
            e["subject"].clone(),
        ));
    }
    assert_eq!(
        kinds,
        vec![
            ("file.shared".to_string(), json!(g)),
            ("file.deleted".to_string(), json!(g))
        ]
    );

    // The first socket is closed when its token expires (60 s after login), not later.
    let mut code = None;
    while opened.elapsed() < Duration::from_secs(80) {
        match next_json(&mut expiring, Duration::from_secs(1)).await {
            Some(Err(c)) => {
                code = Some(c);
                break;
            }
            _ => continue,
        }
    }
    assert_eq!(code, Some(4001), "closed at expiry");
    assert!(
        opened.elapsed() >= Duration::from_secs(50),
        "not before expiry"
    );
}
