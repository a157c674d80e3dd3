//! RELIABILITY.md test 21: the hashing semaphore bounds memory under 200 parallel logins.
//! (Its own test binary, so the peak-memory reading is this test's alone.)

mod common;

use common::*;

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_parallel_logins_stay_within_the_hashing_budget() {
    let s = Server::start_with(Backend::Embedded, |c| {
        c.auth.argon2.max_concurrent = 2;
        c.auth.rate_limit.register_per_address = 1000;
    })
    .await;
    let c = client();
    // Measured from before any hash: the registrations below hash too.
    let before = peak_rss_kib();
    // 200 users logging in at once from one address (an office behind NAT).
    let mut users = Vec::new();
    for _ in 0..200 {
        let user = username("storm");
        assert_eq!(register(&c, &s.url, &user, PASSWORD).await.status(), 201);
        users.push(user);
    }
    let tasks: Vec<_> = users
        .into_iter()
        .map(|user| {
            let (c, url) = (c.clone(), s.url.clone());
            tokio::spawn(async move { login(&c, &url, &user, PASSWORD).await.status().as_u16() })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == 200 {
            ok += 1;
        }
    }
    let growth_mib = (peak_rss_kib().saturating_sub(before)) / 1024;
    println!(
        "200 parallel logins: {ok} ok, peak memory grew {growth_mib} MiB (19 MiB per hash, 2 at once)"
    );
    assert_eq!(ok, 200, "every login succeeds, queued behind the semaphore");
    // 2 hashing slots x 19 MiB, plus connections and buffers; 200 unbounded argon2id hashes
    // would need 3.8 GiB.
    assert!(
        growth_mib < 2 * 19 + 40,
        "peak memory grew {growth_mib} MiB"
    );
}
