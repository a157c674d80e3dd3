//! The gRPC API as the picker sees it, on both backends: who may change grants, complete
//! listings, consistency tokens, bad input, and failing closed when the database is gone.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{BACKENDS, Backend, Env, file_id};
use fms_permission::model::Right as R;
use fms_proto::permission::v1::{self as pb, Right};
use tonic::Code;
use tonic_types::StatusExt;

fn grant(user: &str, rights: &[Right]) -> pb::Grant {
    pb::Grant {
        user_id: user.into(),
        rights: rights.iter().map(|r| *r as i32).collect(),
    }
}

fn update(
    actor: &str,
    file: &str,
    grants: Vec<pb::Grant>,
    revokes: Vec<pb::Grant>,
) -> pb::UpdatePermissionRequest {
    pb::UpdatePermissionRequest {
        actor_id: actor.into(),
        file_id: file.into(),
        grants,
        revokes,
    }
}

fn check(user: &str, file: &str, right: Right, fresh: u64) -> pb::CheckPermissionRequest {
    pb::CheckPermissionRequest {
        user_id: user.into(),
        file_id: file.into(),
        right: right as i32,
        at_least_as_fresh: fresh,
    }
}

fn reason(s: &tonic::Status) -> String {
    s.get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_sharers_change_grants_and_nobody_removes_the_owner() {
    for backend in BACKENDS {
        let env = Env::new(backend).await;
        let mut c = env.grpc(env.start().await).await;
        let u = env.users(4).await;
        let (owner, sharer, reader, stranger) = (&u[0], &u[1], &u[2], &u[3]);
        let f = file_id();
        c.create_owner(pb::CreateOwnerRequest {
            file_id: f.clone(),
            user_id: owner.clone(),
        })
        .await
        .unwrap();
        // Idempotent for the same owner; a conflict for anyone else.
        c.create_owner(pb::CreateOwnerRequest {
            file_id: f.clone(),
            user_id: owner.clone(),
        })
        .await
        .unwrap();
        let e = c
            .create_owner(pb::CreateOwnerRequest {
                file_id: f.clone(),
                user_id: stranger.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{backend:?}");

        // The owner holds everything without a grant.
        for right in [Right::Read, Right::Write, Right::Delete, Right::Share] {
            assert!(
                c.check_permission(check(owner, &f, right, 0))
                    .await
                    .unwrap()
                    .into_inner()
                    .allowed
            );
            assert!(
                !c.check_permission(check(stranger, &f, right, 0))
                    .await
                    .unwrap()
                    .into_inner()
                    .allowed
            );
        }
        let r1 = c
            .update_permission(update(
                owner,
                &f,
                vec![grant(sharer, &[Right::Read, Right::Share])],
                vec![],
            ))
            .await
            .unwrap()
            .into_inner()
            .revision;
        // Idempotent: the same grant again changes nothing and moves no revision.
        let again = c
            .update_permission(update(
                owner,
                &f,
                vec![grant(sharer, &[Right::Read, Right::Share])],
                vec![],
            ))
            .await
            .unwrap()
            .into_inner()
            .revision;
        assert_eq!(
            again, r1,
            "{backend:?}: a no-op grant is not a new revision"
        );

        // A stranger cannot tell the file exists; a reader without share is refused.
        let e = c
            .update_permission(update(
                stranger,
                &f,
                vec![grant(stranger, &[Right::Read])],
                vec![],
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{backend:?}");
        let missing = c
            .update_permission(update(
                owner,
                &file_id(),
                vec![grant(reader, &[Right::Read])],
                vec![],
            ))
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);
        // A stranger's answer is a missing file's: same code, reason and wording.
        assert_eq!(e.message(), format!("file {f} not found"));
        assert!(
            missing.message().starts_with("file ") && missing.message().ends_with(" not found")
        );
        assert_eq!(reason(&e), reason(&missing));
        c.update_permission(update(
            owner,
            &f,
            vec![grant(reader, &[Right::Read])],
            vec![],
        ))
        .await
        .unwrap();
        let e = c
            .update_permission(update(
                reader,
                &f,
                vec![grant(stranger, &[Right::Read])],
                vec![],
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{backend:?}");

        // A sharer passes on what they hold, and nothing more.
        c.update_permission(update(
            sharer,
            &f,
            vec![grant(stranger, &[Right::Read])],
            vec![],
        ))
        .await
        .unwrap();
        let e = c
            .update_permission(update(
                sharer,
                &f,
                vec![grant(stranger, &[Right::Delete])],
                vec![],
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{backend:?}");
        assert!(e.message().contains("delete"), "{}", e.message());

        // Nobody removes the owner: not a sharer, not the owner.
        for actor in [sharer, owner] {
            let e = c
                .update_permission(update(
                    actor,
                    &f,
                    vec![],
                    vec![grant(owner, &[Right::Read])],
                ))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{backend:?}");
            assert!(e.message().contains("owner"), "{}", e.message());
        }
        assert!(
            c.check_permission(check(owner, &f, Right::Delete, 0))
                .await
                .unwrap()
                .into_inner()
                .allowed
        );

        // Granting to an account that does not exist is an error, named.
        let ghost = uuid::Uuid::now_v7().to_string();
        let e = c
            .update_permission(update(
                owner,
                &f,
                vec![grant(&ghost, &[Right::Read])],
                vec![],
            ))
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), reason(&e).as_str()),
            (Code::NotFound, "USER_NOT_FOUND")
        );
        assert!(e.message().contains(&ghost));

        // Revoke: the sharer loses share, keeps read.
        let r2 = c
            .update_permission(update(
                owner,
                &f,
                vec![],
                vec![grant(sharer, &[Right::Share])],
            ))
            .await
            .unwrap()
            .into_inner()
            .revision;
        assert!(r2 > r1);
        let d = c
            .check_permission(check(sharer, &f, Right::Share, r2))
            .await
            .unwrap()
            .into_inner();
        assert!(!d.allowed && d.revision >= r2);
        assert!(
            c.check_permission(check(sharer, &f, Right::Read, r2))
                .await
                .unwrap()
                .into_inner()
                .allowed
        );

        // Delete: every grant goes, the owner's too.
        let r3 = c
            .delete_object(pb::DeleteObjectRequest { file_id: f.clone() })
            .await
            .unwrap()
            .into_inner()
            .revision;
        for user in [owner, sharer, reader, stranger] {
            assert!(
                !c.check_permission(check(user, &f, Right::Read, r3))
                    .await
                    .unwrap()
                    .into_inner()
                    .allowed
            );
        }
        c.delete_object(pb::DeleteObjectRequest { file_id: f.clone() })
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_status() {
    for backend in BACKENDS {
        let env = Env::new(backend).await;
        let mut c = env.grpc(env.start().await).await;
        let u = env.users(2).await;
        let f = file_id();
        c.create_owner(pb::CreateOwnerRequest {
            file_id: f.clone(),
            user_id: u[0].clone(),
        })
        .await
        .unwrap();
        let invalid = |e: tonic::Status, what: &str| {
            assert_eq!(e.code(), Code::InvalidArgument, "{backend:?} {what}: {e:?}");
            e
        };
        invalid(
            c.check_permission(check("", &f, Right::Read, 0))
                .await
                .unwrap_err(),
            "empty user",
        );
        invalid(
            c.check_permission(check(&u[0], "", Right::Read, 0))
                .await
                .unwrap_err(),
            "empty file",
        );
        invalid(
            c.check_permission(check(&u[0], "a b", Right::Read, 0))
                .await
                .unwrap_err(),
            "space",
        );
        invalid(
            c.check_permission(check(&u[0], &"x".repeat(200), Right::Read, 0))
                .await
                .unwrap_err(),
            "long id",
        );
        invalid(
            c.check_permission(check(&u[0], &f, Right::Unspecified, 0))
                .await
                .unwrap_err(),
            "no right",
        );
        let mut unknown = check(&u[0], &f, Right::Read, 0);
        unknown.right = 99;
        let e = invalid(
            c.check_permission(unknown).await.unwrap_err(),
            "unknown right",
        );
        assert!(e.message().contains("99"));
        let e = invalid(
            c.check_permission(check(&u[0], &f, Right::Read, u64::MAX / 2))
                .await
                .unwrap_err(),
            "future revision",
        );
        assert!(e.message().contains("at_least_as_fresh"));
        let list = |page_size, page_token: &str| pb::ListAccessibleRequest {
            user_id: u[0].clone(),
            right: 0,
            page_token: page_token.into(),
            page_size,
            at_least_as_fresh: 0,
        };
        let e = invalid(
            c.list_accessible(list(1001, "")).await.unwrap_err(),
            "page size",
        );
        assert!(e.message().contains("page_size"));
        invalid(
            c.list_accessible(list(10, "not-a-token"))
                .await
                .unwrap_err(),
            "token",
        );
        assert_eq!(
            c.list_accessible(list(1000, ""))
                .await
                .unwrap()
                .into_inner()
                .files
                .len(),
            1
        );
        invalid(
            c.update_permission(update(&u[0], &f, vec![], vec![]))
                .await
                .unwrap_err(),
            "empty update",
        );
        invalid(
            c.update_permission(update(&u[0], &f, vec![grant(&u[1], &[])], vec![]))
                .await
                .unwrap_err(),
            "no rights",
        );
        invalid(
            c.update_permission(update(
                &u[0],
                &f,
                vec![grant(&u[1], &[Right::Read])],
                vec![grant(&u[1], &[Right::Read])],
            ))
            .await
            .unwrap_err(),
            "grant and revoke the same",
        );
        // 10,000 grants in one call: refused whole, with the limit in the message.
        let many: Vec<pb::Grant> = (0..10_000)
            .map(|i| grant(&format!("user-{i}"), &[Right::Read]))
            .collect();
        let e = invalid(
            c.update_permission(update(&u[0], &f, many, vec![]))
                .await
                .unwrap_err(),
            "10k grants",
        );
        assert_eq!(reason(&e), "LIMIT_EXCEEDED");
        assert!(e.message().contains("1000"), "{}", e.message());
        assert!(
            !c.check_permission(check("user-1", &f, Right::Read, 0))
                .await
                .unwrap()
                .into_inner()
                .allowed
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_page_to_the_end_in_a_stable_order() {
    for backend in BACKENDS {
        let env = Env::new(backend).await;
        let perms = env.start().await;
        let mut c = env.grpc(perms.clone()).await;
        let u = env.users(3).await;
        let (me, other, third) = (&u[0], &u[1], &u[2]);
        // 3,000 files: 1,000 mine, 1,500 of another user shared with me (a third of those
        // with write too), and 500 of a third user I have nothing on.
        let mut owned = Vec::new();
        let mut grants = Vec::new();
        let mut expect = BTreeSet::new();
        let mut writable = BTreeSet::new();
        for i in 0..3000 {
            let f = format!("f{i:05}");
            match i % 6 {
                0 | 1 => {
                    owned.push((f.clone(), me.clone()));
                    expect.insert(f.clone());
                    writable.insert(f);
                }
                2..=4 => {
                    owned.push((f.clone(), other.clone()));
                    grants.push((f.clone(), me.clone(), R::Read));
                    if i % 6 == 2 {
                        grants.push((f.clone(), me.clone(), R::Write));
                        writable.insert(f.clone());
                    }
                    expect.insert(f);
                }
                _ => owned.push((f, third.clone())),
            }
        }
        let revision = perms.store().bulk_load(&owned, &grants).await.unwrap();
        for (right, want, size) in [
            (Right::Read, &expect, 1000),
            (Right::Unspecified, &expect, 0),
            (Right::Write, &writable, 333),
        ] {
            let mut seen = Vec::new();
            let mut token = String::new();
            let mut pages = 0;
            loop {
                let page = c
                    .list_accessible(pb::ListAccessibleRequest {
                        user_id: me.clone(),
                        right: right as i32,
                        page_token: token.clone(),
                        page_size: size,
                        at_least_as_fresh: revision,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                pages += 1;
                assert!(page.files.len() <= if size == 0 { 100 } else { size as usize });
                assert!(page.revision >= revision);
                for f in &page.files {
                    let mine = owned.iter().any(|(id, o)| id == &f.file_id && o == me);
                    assert_eq!(f.owned, mine, "{}", f.file_id);
                    if !mine {
                        let has_write = writable.contains(&f.file_id);
                        let want_rights = if has_write {
                            vec![Right::Read as i32, Right::Write as i32]
                        } else {
                            vec![Right::Read as i32]
                        };
                        assert_eq!(f.rights, want_rights, "{}", f.file_id);
                    } else {
                        assert_eq!(f.rights.len(), 4);
                    }
                }
                seen.extend(page.files.into_iter().map(|f| f.file_id));
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            let set: BTreeSet<String> = seen.iter().cloned().collect();
            assert_eq!(
                set.len(),
                seen.len(),
                "{backend:?} {right:?}: no file twice"
            );
            assert!(seen.windows(2).all(|w| w[0] < w[1]), "stable order");
            assert_eq!(
                &set, want,
                "{backend:?} {right:?}: every file, nothing else"
            );
            let per = if size == 0 { 100 } else { size as usize };
            assert_eq!(
                pages,
                want.len().div_ceil(per),
                "{right:?}: no empty last page"
            );
        }
        // A token keeps its right: it cannot be replayed under another.
        let first = c
            .list_accessible(pb::ListAccessibleRequest {
                user_id: me.clone(),
                right: Right::Read as i32,
                page_token: String::new(),
                page_size: 10,
                at_least_as_fresh: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let e = c
            .list_accessible(pb::ListAccessibleRequest {
                user_id: me.clone(),
                right: Right::Write as i32,
                page_token: first.next_page_token,
                page_size: 10,
                at_least_as_fresh: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        // Bulk loads add files; they never take over existing ones or grant on unknown ones.
        let again = perms
            .store()
            .bulk_load(&[("f00000".into(), other.clone())], &[])
            .await;
        assert!(
            matches!(again, Err(fms_permission::Error::AlreadyExists(_))),
            "{again:?}"
        );
        let orphan = perms
            .store()
            .bulk_load(
                &[("new-file".into(), me.clone())],
                &[("no-such-file".into(), other.clone(), R::Read)],
            )
            .await;
        assert!(
            matches!(orphan, Err(fms_permission::Error::Invalid(_))),
            "{orphan:?}"
        );
        let d = perms.check(me, "f00000", R::Read, 0).await.unwrap();
        assert!(d.allowed, "the failed loads changed nothing");
        assert!(
            !perms
                .check(other, "f00000", R::Read, 0)
                .await
                .unwrap()
                .allowed
        );
    }
}

/// A revision from one replica is honoured by another at once (no wait for its change-log
/// read), and a revoke that returned is honoured by a replica that has not read the log
/// since: B holds a fresh lease and a cached allow, its log reads are paused, A revokes —
/// and B answers no, because the revoke returned only after B's lease ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_are_honoured_across_replicas() {
    let mut env = Env::new(Backend::Postgres).await;
    // A lease long enough that B's cache is certainly still valid when A's revoke commits.
    env.cfg.permission.lease = fms_platform::units::Duration(Duration::from_millis(300));
    let a = env.start().await;
    let b = env.replica().await;
    let u = env.users(2).await;
    for _ in 0..4 {
        let f = file_id();
        a.create_owner(&f, &u[0]).await.unwrap();
        // B caches "no" for the reader...
        assert!(!b.check(&u[1], &f, R::Read, 0).await.unwrap().allowed);
        let spec = |rights: Vec<R>| {
            vec![fms_permission::GrantSpec {
                user_id: u[1].clone(),
                rights,
            }]
        };
        let r = a
            .update(&u[0], &f, &spec(vec![R::Read]), &[])
            .await
            .unwrap();
        // ...and a caller holding the grant's revision is answered from fresh state.
        let d = b.check(&u[1], &f, R::Read, r).await.unwrap();
        assert!(d.allowed && d.revision >= r, "{d:?}");
        let listed = b.list(&u[1], None, "", 10, r).await.unwrap();
        assert!(listed.files.iter().any(|x| x.file_id == f));
        // B: a fresh lease, then no more log reads; its cache answers yes.
        b.pause_sync(true);
        b.sync().await.unwrap();
        assert!(b.check(&u[1], &f, R::Read, 0).await.unwrap().allowed);
        assert!(
            b.cache().get(&f, &u[1], 0).is_some(),
            "B answers from its cache"
        );
        a.update(&u[0], &f, &[], &spec(vec![R::Read]))
            .await
            .unwrap();
        assert!(
            !b.check(&u[1], &f, R::Read, 0).await.unwrap().allowed,
            "stale allow after revoke"
        );
        b.pause_sync(false);
    }
}

/// One process (the embedded database): a revoke is out of the cache before it returns, with
/// no lease and no log read involved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_revoke_is_seen_at_once() {
    let env = Env::new(Backend::Embedded).await;
    let a = env.start().await;
    a.pause_sync(true);
    let u = env.users(2).await;
    let spec = |rights: Vec<R>| {
        vec![fms_permission::GrantSpec {
            user_id: u[1].clone(),
            rights,
        }]
    };
    for _ in 0..10 {
        let f = file_id();
        a.create_owner(&f, &u[0]).await.unwrap();
        a.update(&u[0], &f, &spec(vec![R::Read, R::Write]), &[])
            .await
            .unwrap();
        assert!(a.check(&u[1], &f, R::Read, 0).await.unwrap().allowed);
        assert!(a.cache().get(&f, &u[1], 0).is_some());
        a.update(&u[0], &f, &[], &spec(vec![R::Read]))
            .await
            .unwrap();
        assert!(!a.check(&u[1], &f, R::Read, 0).await.unwrap().allowed);
        assert!(a.check(&u[1], &f, R::Write, 0).await.unwrap().allowed);
        a.delete_object(&f).await.unwrap();
        assert!(!a.check(&u[1], &f, R::Write, 0).await.unwrap().allowed);
        assert!(!a.check(&u[0], &f, R::Read, 0).await.unwrap().allowed);
    }
}

/// A TCP relay to PostgreSQL that the test can cut and restore.
struct Relay {
    addr: std::net::SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Relay {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (up2, conns2) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let h = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                conns2.lock().unwrap().push(h);
            }
        });
        Relay { addr, up, conns }
    }

    fn cut(&self) {
        let mut conns = self.conns.lock().unwrap();
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for h in conns.drain(..) {
            h.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Reliability test 39, the permission half: with the database gone, checks fail closed
/// (an error, never a cached allow past the lease), quickly, and recover on their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_loss_fails_closed_and_recovers() {
    let mut env = Env::new(Backend::Postgres).await;
    let u = env.users(2).await;
    // Reach the database through a relay this test controls.
    let url = env.cfg.database.url.clone();
    let rest = url.split_once("://").unwrap().1;
    let (userinfo_host, db) = rest.split_once('/').unwrap();
    let (userinfo, host) = userinfo_host
        .rsplit_once('@')
        .map_or(("", userinfo_host), |(a, b)| (a, b));
    let target: std::net::SocketAddr = tokio::net::lookup_host(host).await.unwrap().next().unwrap();
    let relay = Relay::start(target).await;
    let at = if userinfo.is_empty() {
        String::new()
    } else {
        format!("{userinfo}@")
    };
    env.cfg.database.url = format!("postgres://{at}{}/{db}?connect_timeout=2", relay.addr);
    env.cfg.database.max_connections = 4;
    let db = env.second_db().await;
    let perms = fms_permission::start(&env.cfg, db, env.stop.clone())
        .await
        .unwrap();
    let mut c = env.grpc(perms.clone()).await;
    let f = file_id();
    perms.create_owner(&f, &u[0]).await.unwrap();
    let spec = vec![fms_permission::GrantSpec {
        user_id: u[1].clone(),
        rights: vec![R::Read],
    }];
    perms.update(&u[0], &f, &spec, &[]).await.unwrap();
    assert!(
        c.check_permission(check(&u[1], &f, Right::Read, 0))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );

    relay.cut();
    // Within the lease the cache may still answer; after it, every check is an error.
    tokio::time::sleep(env.cfg.permission.lease.0 * 2).await;
    for _ in 0..20 {
        let started = std::time::Instant::now();
        let e = tokio::time::timeout(
            Duration::from_secs(10),
            c.check_permission(check(&u[1], &f, Right::Read, 0)),
        )
        .await
        .expect("a check with the database down must answer, not hang")
        .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "failing closed took {:?}",
            started.elapsed()
        );
    }
    let e = c
        .update_permission(update(
            &u[0],
            &f,
            vec![],
            vec![grant(&u[1], &[Right::Read])],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);

    relay.restore();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match c.check_permission(check(&u[1], &f, Right::Read, 0)).await {
            Ok(d) => {
                assert!(d.into_inner().allowed);
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable);
                assert!(std::time::Instant::now() < deadline, "did not recover");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
