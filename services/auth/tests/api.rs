//! The auth REST API against each storage back end (embedded database + in-process state,
//! PostgreSQL + Redis), over real sockets. RELIABILITY.md tests 19-24.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use serde_json::{Value, json};

async fn error_code(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or("<none>")
        .to_string();
    assert!(
        body["error"]["message"].is_string(),
        "every error has a message: {body}"
    );
    (status, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_refresh_me_logout() {
    for backend in BACKENDS {
        let s = Server::start(backend).await;
        let c = client();
        let user = username("Flow");
        let r = c
            .post(format!("{}/auth/register", s.url))
            .json(&json!({"username": user, "password": "ünïcödé pässwörd 🔑 long enough", "email": "flow@example.com"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{backend:?}");
        let created: Value = r.json().await.unwrap();
        assert_eq!(created["username"], user.to_lowercase());
        assert_eq!(created["email"], "flow@example.com");
        assert!(created.get("password_hash").is_none() && created.get("password").is_none());
        // Usernames are case-insensitive.
        let r = login(
            &c,
            &s.url,
            &user.to_uppercase(),
            "ünïcödé pässwörd 🔑 long enough",
        )
        .await;
        assert_eq!(r.status(), 200, "{backend:?}");
        assert_eq!(r.headers()["cache-control"], "no-store");
        let t: Value = r.json().await.unwrap();
        assert_eq!(t["token_type"], "Bearer");
        assert_eq!(t["expires_in"], 900);
        let access = t["access_token"].as_str().unwrap().to_string();
        let refresh = t["refresh_token"].as_str().unwrap().to_string();
        // The access token is an EdDSA JWT with the claims the brief names.
        let parts: Vec<&str> = access.split('.').collect();
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(header["alg"], "EdDSA");
        for k in ["sub", "exp", "iat", "jti"] {
            assert!(claims.get(k).is_some(), "claim {k}");
        }
        assert_eq!(claims["sub"], created["id"]);
        let jwks: Value = c
            .get(format!("{}/.well-known/jwks.json", s.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kid"] == header["kid"]),
            "the signing key is published"
        );
        let r = me(&c, &s.url, &access).await;
        assert_eq!(r.status(), 200);
        let m: Value = r.json().await.unwrap();
        assert_eq!(m["id"], created["id"]);
        // Refresh rotates: a new pair, both working.
        let r = c
            .post(format!("{}/auth/refresh", s.url))
            .json(&json!({"refresh_token": refresh}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let t2: Value = r.json().await.unwrap();
        let access2 = t2["access_token"].as_str().unwrap().to_string();
        assert_ne!(t2["refresh_token"], t["refresh_token"]);
        assert_eq!(me(&c, &s.url, &access2).await.status(), 200);
        // Logout: the token, and every token of the session, refused at once.
        let r = c
            .post(format!("{}/auth/logout", s.url))
            .bearer_auth(&access2)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(me(&c, &s.url, &access2).await.status(), 401);
        assert_eq!(me(&c, &s.url, &access).await.status(), 401, "same session");
        let r = c
            .post(format!("{}/auth/refresh", s.url))
            .json(&json!({"refresh_token": t2["refresh_token"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(r).await,
            (401, "invalid_grant".into()),
            "family revoked"
        );
        // Logging in again starts a fresh session.
        let r = login(&c, &s.url, &user, "ünïcödé pässwörd 🔑 long enough").await;
        let t3: Value = r.json().await.unwrap();
        assert_eq!(
            me(&c, &s.url, t3["access_token"].as_str().unwrap())
                .await
                .status(),
            200
        );
        // A revocation survives a restart (embedded: persisted; Redis: shared).
        let cfg = s.cfg.clone();
        let mut s = s;
        let _dir = s.dir.take();
        drop(s);
        let s2 = Server::start_config(cfg).await;
        assert_eq!(
            me(&c, &s2.url, &access2).await.status(),
            401,
            "{backend:?}: still revoked after restart"
        );
        assert_eq!(
            me(&c, &s2.url, t3["access_token"].as_str().unwrap())
                .await
                .status(),
            200,
            "{backend:?}: keys persisted, nobody logged out by a restart"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors() {
    for backend in BACKENDS {
        let s = Server::start(backend).await;
        let c = client();
        let url = format!("{}/auth/register", s.url);
        let user = username("dup");
        assert_eq!(register(&c, &s.url, &user, PASSWORD).await.status(), 201);
        let r = register(&c, &s.url, &user.to_uppercase(), PASSWORD).await;
        assert_eq!(
            error_code(r).await,
            (409, "username_taken".into()),
            "{backend:?}"
        );
        let post = |body: &'static str, ct: &'static str| {
            c.post(&url).header("content-type", ct).body(body).send()
        };
        assert_eq!(
            error_code(post("{", "application/json").await.unwrap())
                .await
                .0,
            400
        );
        assert_eq!(
            error_code(
                post("{\"username\": \"abcdef\"}", "application/json")
                    .await
                    .unwrap()
            )
            .await
            .0,
            400,
            "missing password"
        );
        assert_eq!(
            error_code(
                post("{\"username\": 5, \"password\": \"x\"}", "application/json")
                    .await
                    .unwrap()
            )
            .await
            .0,
            400
        );
        assert_eq!(
            error_code(
                post("username=a&password=b", "application/x-www-form-urlencoded")
                    .await
                    .unwrap()
            )
            .await,
            (415, "unsupported_media_type".into())
        );
        let huge = format!(
            "{{\"username\": \"{}\", \"password\": \"x\"}}",
            "a".repeat(20 * 1024)
        );
        let r = c
            .post(&url)
            .header("content-type", "application/json")
            .body(huge)
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(r).await, (413, "payload_too_large".into()));
        // Policy: reasons named, all at once.
        let r = c
            .post(&url)
            .json(&json!({"username": "-x", "password": "password1", "email": "nope"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let body: Value = r.json().await.unwrap();
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("username") && msg.contains("common") && msg.contains("email"),
            "{msg}"
        );
        let r = register(&c, &s.url, &username("short"), "1234567").await;
        assert_eq!(r.status(), 400);
        // A 64-character password is accepted; composition is not required.
        let r = register(&c, &s.url, &username("long"), &"abcdefgh".repeat(8)).await;
        assert_eq!(r.status(), 201);
        // Login with junk.
        let r = c
            .post(format!("{}/auth/login", s.url))
            .json(&json!({"username": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let r = c
            .post(format!("{}/auth/refresh", s.url))
            .json(&json!({"refresh_token": "fmsr_nope"}))
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(r).await, (401, "invalid_grant".into()));
        let r = c
            .post(format!("{}/auth/logout", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().contains_key("www-authenticate"));
        let r = c.get(format!("{}/auth/nope", s.url)).send().await.unwrap();
        assert_eq!(error_code(r).await, (404, "not_found".into()));
    }
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_are_refused() {
    let s = Server::start(Backend::Embedded).await;
    let c = client();
    let t = session(&c, &s.url, &username("forge")).await;
    let access = t["access_token"].as_str().unwrap();
    let parts: Vec<&str> = access.split('.').collect();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let jwks: Value = c
        .get(format!("{}/.well-known/jwks.json", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let public = URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["x"].as_str().unwrap())
        .unwrap();
    let with_claims = |k: &str, v: Value| {
        let mut c = claims.clone();
        c[k] = v;
        format!("{}.{}.{}", b64(&header), b64(&c), parts[2])
    };
    let now = fms_auth::tokens::now_secs();
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: header["kid"].as_str().map(str::to_string),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&public).unwrap(),
    )
    .unwrap();
    let mut forged = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "kid": header["kid"]})),
                parts[1]
            ),
        ),
        ("HS256 with the public key", hs256),
        (
            "jku",
            format!(
                "{}.{}.{}",
                b64(
                    &json!({"alg": "EdDSA", "kid": header["kid"], "jku": "http://127.0.0.1:1/jwks"})
                ),
                parts[1],
                parts[2]
            ),
        ),
        (
            "x5u",
            format!(
                "{}.{}.{}",
                b64(&json!({"alg": "EdDSA", "kid": header["kid"], "x5u": "http://127.0.0.1:1/c"})),
                parts[1],
                parts[2]
            ),
        ),
        (
            "jwk",
            format!(
                "{}.{}.{}",
                b64(
                    &json!({"alg": "EdDSA", "kid": header["kid"], "jwk": {"kty": "OKP", "crv": "Ed25519", "x": jwks["keys"][0]["x"]}})
                ),
                parts[1],
                parts[2]
            ),
        ),
        (
            "unknown kid",
            format!(
                "{}.{}.{}",
                b64(&json!({"alg": "EdDSA", "kid": "nope"})),
                parts[1],
                parts[2]
            ),
        ),
        (
            "injected kid",
            format!(
                "{}.{}.{}",
                b64(&json!({"alg": "EdDSA", "kid": "../../../dev/null"})),
                parts[1],
                parts[2]
            ),
        ),
        ("expired", with_claims("exp", json!(now - 120))),
        ("future nbf", with_claims("nbf", json!(now + 3600))),
        ("wrong aud", with_claims("aud", json!("other"))),
        ("wrong iss", with_claims("iss", json!("evil"))),
        ("other sub", with_claims("sub", json!("someone-else"))),
        (
            "refresh token as access token",
            t["refresh_token"].as_str().unwrap().to_string(),
        ),
        ("64 KiB", format!("{access}{}", "A".repeat(64 * 1024))),
        ("garbage", "a.b.c".into()),
    ];
    forged.push(("empty", String::new()));
    for (what, token) in forged {
        let r = c
            .get(format!("{}/auth/me", s.url))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{what}");
        let r = c
            .post(format!("{}/auth/logout", s.url))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{what} at logout");
    }
    for h in ["Basic abc", "Bearer", "Bearer  ", "Token x", access] {
        let r = c
            .get(format!("{}/auth/me", s.url))
            .header("authorization", h)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{h:.20}");
    }
    assert_eq!(
        me(&c, &s.url, access).await.status(),
        200,
        "the real token still works"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_reuse_revokes_the_family() {
    for backend in BACKENDS {
        let s = Server::start(backend).await;
        let c = client();
        let t1 = session(&c, &s.url, &username("reuse")).await;
        let refresh = |tok: Value| {
            let c = c.clone();
            let url = s.url.clone();
            async move {
                c.post(format!("{url}/auth/refresh"))
                    .json(&json!({"refresh_token": tok}))
                    .send()
                    .await
                    .unwrap()
            }
        };
        let r = refresh(t1["refresh_token"].clone()).await;
        assert_eq!(r.status(), 200);
        let t2: Value = r.json().await.unwrap();
        // The attacker replays the first refresh token.
        let r = refresh(t1["refresh_token"].clone()).await;
        assert_eq!(r.status(), 401, "{backend:?}");
        // The legitimate holder's newer tokens die with the family.
        assert_eq!(refresh(t2["refresh_token"].clone()).await.status(), 401);
        assert_eq!(
            me(&c, &s.url, t2["access_token"].as_str().unwrap())
                .await
                .status(),
            401
        );
        assert_eq!(
            me(&c, &s.url, t1["access_token"].as_str().unwrap())
                .await
                .status(),
            401
        );
        // Concurrent presentations of one fresh token: exactly one wins.
        let t = session(&c, &s.url, &username("race")).await;
        let tasks: Vec<_> = (0..8)
            .map(|_| tokio::spawn(refresh(t["refresh_token"].clone())))
            .collect();
        let mut ok = 0;
        for task in tasks {
            if task.await.unwrap().status() == 200 {
                ok += 1;
            }
        }
        assert_eq!(ok, 1, "{backend:?}: one rotation per refresh token");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brute_force_is_throttled_but_the_real_user_gets_in() {
    for backend in BACKENDS {
        let s = Server::start_with(backend, |c| {
            c.auth.rate_limit.per_account_address = 3;
            c.auth.rate_limit.per_account = 6;
            c.auth.rate_limit.per_address = 8;
        })
        .await;
        let user = username("victim");
        let real = client_from("127.0.0.1");
        assert_eq!(register(&real, &s.url, &user, PASSWORD).await.status(), 201);
        // Attacker A: three failures, then 429 with Retry-After - even with the right password.
        let a = client_from("127.0.0.2");
        for _ in 0..3 {
            assert_eq!(
                login(&a, &s.url, &user, "wrong password 1").await.status(),
                401
            );
        }
        let r = login(&a, &s.url, &user, "wrong password 1").await;
        assert_eq!(r.status(), 429, "{backend:?}");
        let wait: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=900).contains(&wait), "{wait}");
        assert_eq!(login(&a, &s.url, &user, PASSWORD).await.status(), 429);
        // Attacker B pushes the account over its total.
        let b = client_from("127.0.0.3");
        for _ in 0..3 {
            assert_eq!(
                login(&b, &s.url, &user, "wrong password 2").await.status(),
                401
            );
        }
        assert_eq!(
            login(&b, &s.url, &user, "wrong password 2").await.status(),
            429
        );
        let d = client_from("127.0.0.5");
        assert_eq!(
            login(&d, &s.url, &user, "wrong password 3").await.status(),
            401,
            "first failure from D"
        );
        assert_eq!(
            login(&d, &s.url, &user, "wrong password 3").await.status(),
            429,
            "account total reached: failing addresses throttled"
        );
        // The real user, from an address with no failures, still gets in.
        assert_eq!(
            login(&real, &s.url, &user, PASSWORD).await.status(),
            200,
            "{backend:?}"
        );
        // Per address: one address spraying many accounts.
        let e = client_from("127.0.0.4");
        let mut statuses = Vec::new();
        for i in 0..10 {
            statuses.push(
                login(&e, &s.url, &format!("spray-{i}"), "whatever123")
                    .await
                    .status()
                    .as_u16(),
            );
        }
        assert_eq!(&statuses[..8], &[401; 8]);
        assert_eq!(&statuses[8..], &[429, 429], "{backend:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_are_indistinguishable() {
    let s = Server::start(Backend::Embedded).await;
    let c = client();
    let user = username("known");
    assert_eq!(register(&c, &s.url, &user, PASSWORD).await.status(), 201);
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    let mut bodies = std::collections::HashSet::new();
    for i in 0..12 {
        // Alternate, each from its own address so no throttling interferes.
        let cl = client_from(&format!("127.0.1.{}", i + 1));
        let t = Instant::now();
        let r = login(&cl, &s.url, &user, "wrong password!").await;
        known.push(t.elapsed());
        assert_eq!(r.status(), 401);
        bodies.insert(r.text().await.unwrap());
        let t = Instant::now();
        let r = login(&cl, &s.url, &username("ghost"), "wrong password!").await;
        unknown.push(t.elapsed());
        assert_eq!(r.status(), 401);
        bodies.insert(r.text().await.unwrap());
    }
    assert_eq!(bodies.len(), 1, "one body for every failure: {bodies:?}");
    known.sort();
    unknown.sort();
    let (k, u) = (known[6].as_secs_f64(), unknown[6].as_secs_f64());
    let ratio = u / k;
    println!("median login failure: known user {k:.4}s, unknown user {u:.4}s, ratio {ratio:.2}");
    assert!(
        (0.5..2.0).contains(&ratio),
        "unknown users must cost the same: ratio {ratio:.2}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_under_load_fails_no_request() {
    let s = Server::start(Backend::Embedded).await;
    let c = client();
    let t = session(&c, &s.url, &username("rot")).await;
    let first = t["access_token"].as_str().unwrap().to_string();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (c, url, tok, stop) = (c.clone(), s.url.clone(), first.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if me(&c, &url, &tok).await.status() == 200 {
                    ok += 1;
                } else {
                    failed += 1;
                }
            }
            (ok, failed)
        }));
    }
    let mut kids = std::collections::HashSet::new();
    for _ in 0..3 {
        s.svc.keys.rotate(Duration::ZERO).await.unwrap();
        let r = login(&c, &s.url, &t_user(&s, &first).await, PASSWORD).await;
        let fresh: Value = r.json().await.unwrap();
        let tok = fresh["access_token"].as_str().unwrap();
        let h: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(tok.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        kids.insert(h["kid"].as_str().unwrap().to_string());
        assert_eq!(me(&c, &s.url, tok).await.status(), 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for l in load {
        let (o, f) = l.await.unwrap();
        ok += o;
        failed += f;
    }
    println!("during 3 rotations: {ok} requests ok, {failed} failed");
    assert_eq!(failed, 0);
    assert!(ok > 20);
    assert_eq!(kids.len(), 3, "each rotation signs with a new key");
    let jwks: Value = c
        .get(format!("{}/.well-known/jwks.json", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        jwks["keys"].as_array().unwrap().len(),
        4,
        "old keys stay published until their tokens expire"
    );
}

/// The username of a token's user.
async fn t_user(s: &Server, token: &str) -> String {
    let m: Value = me(&client(), &s.url, token).await.json().await.unwrap();
    m["username"].as_str().unwrap().to_string()
}

/// A private Redis this test may kill.
struct OwnRedis {
    port: u16,
    child: std::process::Child,
}

impl OwnRedis {
    fn start(port: u16) -> OwnRedis {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (./test installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        OwnRedis { port, child }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_store_down_fails_closed_and_recovers() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis = OwnRedis::start(port);
    let url = format!("redis://127.0.0.1:{}/", redis.port);
    let s = Server::start_with(Backend::Embedded, |c| c.redis.url = url).await;
    let c = client();
    let t = session(&c, &s.url, &username("down")).await;
    let token = t["access_token"].as_str().unwrap();
    assert_eq!(me(&c, &s.url, token).await.status(), 200);
    drop(redis);
    // Redis gone: a token that might be revoked is never accepted; the answer says retry.
    let r = me(&c, &s.url, token).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(error_code(r).await.1, "unavailable");
    let r = login(&c, &s.url, "whoever", PASSWORD).await;
    assert_eq!(
        r.status(),
        503,
        "throttling state unknown: login refused too"
    );
    // Redis back: service resumes without a restart.
    let _redis = OwnRedis::start(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if me(&c, &s.url, token).await.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "did not recover after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_guesses_cannot_outrun_the_limit() {
    for backend in BACKENDS {
        let s = Server::start_with(backend, |c| c.auth.rate_limit.per_account_address = 3).await;
        let c = client();
        let user = username("burst");
        assert_eq!(register(&c, &s.url, &user, PASSWORD).await.status(), 201);
        // 40 guesses at once: only 3 reach a password check, however they interleave.
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let (c, url, user) = (c.clone(), s.url.clone(), user.clone());
                tokio::spawn(async move {
                    login(&c, &url, &user, &format!("guess number {i}"))
                        .await
                        .status()
                        .as_u16()
                })
            })
            .collect();
        let mut checked = 0;
        for t in tasks {
            match t.await.unwrap() {
                401 => checked += 1,
                429 => {}
                other => panic!("{other}"),
            }
        }
        assert_eq!(
            checked, 3,
            "{backend:?}: password checks allowed in the burst"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_flood_does_not_starve_logins() {
    let s = Server::start_with(Backend::Embedded, |c| {
        c.auth.argon2.max_concurrent = 2;
        c.auth.rate_limit.register_per_address = 1000;
    })
    .await;
    let c = client();
    let user = username("steady");
    assert_eq!(register(&c, &s.url, &user, PASSWORD).await.status(), 201);
    let flood_start = Instant::now();
    let flood: Vec<_> = (0..40)
        .map(|_| {
            let (c, url) = (c.clone(), s.url.clone());
            tokio::spawn(async move {
                register(&c, &url, &username("flood"), PASSWORD)
                    .await
                    .status()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    assert_eq!(login(&c, &s.url, &user, PASSWORD).await.status(), 200);
    let login_time = t.elapsed();
    for f in flood {
        assert_eq!(f.await.unwrap(), 201);
    }
    let flood_time = flood_start.elapsed();
    println!("login during a 40-registration flood: {login_time:?} (flood took {flood_time:?})");
    assert!(
        login_time * 3 < flood_time,
        "login waited behind registrations: {login_time:?} of {flood_time:?}"
    );
}
