//! Property test: random sequences of creates, grants, revokes, deletes, checks and
//! listings against a plain in-memory model of the rules. Every answer — decisions, errors,
//! listings — agrees with the model, on both backends; on PostgreSQL a second replica,
//! asked with the last revision, agrees too (its cache is kept honest by the change log).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use common::{BACKENDS, Backend, Env};
use fms_permission::model::{Right, Rights};
use fms_permission::{Error, GrantSpec, Permissions};
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestRunner};

const FILES: u8 = 3;
const USERS: u8 = 4;

#[derive(Debug, Clone)]
enum Op {
    Create {
        file: u8,
        user: u8,
    },
    Update {
        actor: u8,
        file: u8,
        grants: Vec<(u8, u8)>,
        revokes: Vec<(u8, u8)>,
    },
    Delete {
        file: u8,
    },
    Check {
        user: u8,
        file: u8,
        right: u8,
    },
    List {
        user: u8,
        right: u8,
    },
}

fn rights_of(bits: u8) -> Vec<Right> {
    Right::ALL
        .into_iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, r)| r)
        .collect()
}

fn op() -> impl Strategy<Value = Op> {
    let change = (0..USERS, 1u8..16);
    prop_oneof![
        2 => (0..FILES, 0..USERS).prop_map(|(file, user)| Op::Create { file, user }),
        4 => (0..USERS, 0..FILES, prop::collection::vec(change.clone(), 0..3), prop::collection::vec(change, 0..3))
            .prop_map(|(actor, file, grants, revokes)| Op::Update { actor, file, grants, revokes }),
        1 => (0..FILES).prop_map(|file| Op::Delete { file }),
        6 => (0..USERS, 0..FILES, 0u8..4).prop_map(|(user, file, right)| Op::Check { user, file, right }),
        2 => (0..USERS, 0u8..4).prop_map(|(user, right)| Op::List { user, right }),
    ]
}

/// The rules, written as plainly as possible.
#[derive(Default)]
struct Model {
    owner: HashMap<u8, u8>,
    grants: HashMap<(u8, u8), Rights>,
}

/// Which error, without its message.
fn kind(e: &Error) -> &'static str {
    match e {
        Error::Invalid(_) => "invalid",
        Error::Limit(_) => "limit",
        Error::NotFound(_) => "not_found",
        Error::UnknownUser(_) => "unknown_user",
        Error::Denied(_) => "denied",
        Error::AlreadyExists(_) => "already_exists",
        Error::Unavailable(_) => "unavailable",
        Error::Internal(_) => "internal",
    }
}

impl Model {
    fn rights(&self, file: u8, user: u8) -> Rights {
        match self.owner.get(&file) {
            Some(o) if *o == user => Rights::OWNER,
            Some(_) => self
                .grants
                .get(&(file, user))
                .copied()
                .unwrap_or(Rights::NONE),
            None => Rights::NONE,
        }
    }

    fn create(&mut self, file: u8, user: u8) -> Result<(), &'static str> {
        match self.owner.get(&file) {
            Some(o) if *o == user => Ok(()),
            Some(_) => Err("already_exists"),
            None => {
                self.owner.insert(file, user);
                Ok(())
            }
        }
    }

    fn update(
        &mut self,
        actor: u8,
        file: u8,
        grants: &[(u8, u8)],
        revokes: &[(u8, u8)],
    ) -> Result<(), &'static str> {
        if grants.is_empty() && revokes.is_empty() {
            return Err("invalid");
        }
        let merge = |list: &[(u8, u8)]| {
            let mut m: BTreeMap<u8, u8> = BTreeMap::new();
            for (u, bits) in list {
                *m.entry(*u).or_default() |= bits;
            }
            m
        };
        let (g, r) = (merge(grants), merge(revokes));
        if g.iter()
            .any(|(u, bits)| r.get(u).is_some_and(|rb| rb & bits != 0))
        {
            return Err("invalid");
        }
        let Some(&owner) = self.owner.get(&file) else {
            return Err("not_found");
        };
        let held = self.rights(file, actor);
        if held.is_empty() {
            return Err("not_found");
        }
        if !held.allows(Right::Share) {
            return Err("denied");
        }
        if !held.is_owner()
            && g.values()
                .chain(r.values())
                .any(|bits| rights_of(*bits).iter().any(|x| !held.allows(*x)))
        {
            return Err("denied");
        }
        if r.contains_key(&owner) {
            return Err("invalid");
        }
        for (u, bits) in g {
            if u != owner {
                let e = self.grants.entry((file, u)).or_default();
                for x in rights_of(bits) {
                    *e = e.union(Rights::of(x));
                }
            }
        }
        for (u, bits) in r {
            if let Some(e) = self.grants.get_mut(&(file, u)) {
                let keep: Vec<Right> = e
                    .rights()
                    .into_iter()
                    .filter(|x| !rights_of(bits).contains(x))
                    .collect();
                *e = keep
                    .into_iter()
                    .fold(Rights::NONE, |a, x| a.union(Rights::of(x)));
            }
        }
        Ok(())
    }

    fn delete(&mut self, file: u8) {
        self.owner.remove(&file);
        self.grants.retain(|(f, _), _| *f != file);
    }
}

struct Fixture {
    a: Arc<Permissions>,
    /// A second replica on PostgreSQL.
    b: Option<Arc<Permissions>>,
    users: Vec<String>,
    case: std::sync::atomic::AtomicU64,
}

async fn run_case(fx: &Fixture, ops: &[Op]) -> Result<(), TestCaseError> {
    // Fresh file ids per case: earlier cases' files stay in the store but are filtered out.
    let case = fx.case.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let fid = |f: u8| format!("c{case:04}-f{f}");
    let user = |u: u8| fx.users[u as usize].clone();
    let mut model = Model::default();
    let mut revision = 0u64;
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Create { file, user: u } => {
                let got = fx.a.create_owner(&fid(*file), &user(*u)).await;
                let want = model.create(*file, *u);
                prop_assert_eq!(
                    got.as_ref().map(|_| ()).map_err(kind),
                    want,
                    "step {} {:?}",
                    step,
                    op
                );
                if let Ok(r) = got {
                    revision = revision.max(r);
                }
            }
            Op::Update {
                actor,
                file,
                grants,
                revokes,
            } => {
                let spec = |list: &[(u8, u8)]| -> Vec<GrantSpec> {
                    list.iter()
                        .map(|(u, bits)| GrantSpec {
                            user_id: user(*u),
                            rights: rights_of(*bits),
                        })
                        .collect()
                };
                let got =
                    fx.a.update(&user(*actor), &fid(*file), &spec(grants), &spec(revokes))
                        .await;
                let want = model.update(*actor, *file, grants, revokes);
                prop_assert_eq!(
                    got.as_ref().map(|_| ()).map_err(kind),
                    want,
                    "step {} {:?}",
                    step,
                    op
                );
                if let Ok(r) = got {
                    revision = revision.max(r);
                }
            }
            Op::Delete { file } => {
                let r =
                    fx.a.delete_object(&fid(*file))
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                model.delete(*file);
                revision = revision.max(r);
            }
            Op::Check {
                user: u,
                file,
                right,
            } => {
                let right = Right::ALL[*right as usize];
                let want = model.rights(*file, *u).allows(right);
                let got =
                    fx.a.check(&user(*u), &fid(*file), right, 0)
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(got.allowed, want, "step {} {:?} on the writer", step, op);
                if let Some(b) = &fx.b {
                    let got = b
                        .check(&user(*u), &fid(*file), right, revision)
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(
                        got.allowed,
                        want,
                        "step {} {:?} on the replica at {}",
                        step,
                        op,
                        revision
                    );
                    prop_assert!(got.revision >= revision);
                }
            }
            Op::List { user: u, right } => {
                let right = Right::ALL[*right as usize];
                let want: BTreeSet<(String, Vec<Right>)> = (0..FILES)
                    .filter(|f| model.rights(*f, *u).allows(right))
                    .map(|f| (fid(f), model.rights(f, *u).rights()))
                    .collect();
                for (who, p) in [("writer", Some(&fx.a)), ("replica", fx.b.as_ref())] {
                    let Some(p) = p else { continue };
                    let mut got = BTreeSet::new();
                    let mut token = String::new();
                    loop {
                        let page = p
                            .list(&user(*u), Some(right), &token, 2, revision)
                            .await
                            .map_err(|e| TestCaseError::fail(e.to_string()))?;
                        got.extend(
                            page.files
                                .into_iter()
                                .filter(|x| x.file_id.starts_with(&format!("c{case:04}-")))
                                .map(|x| (x.file_id, x.rights.rights())),
                        );
                        if page.next_page_token.is_empty() {
                            break;
                        }
                        token = page.next_page_token;
                    }
                    prop_assert_eq!(&got, &want, "step {} {:?} on the {}", step, op, who);
                }
            }
        }
    }
    Ok(())
}

fn property(backend: Backend, cases: u32) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (env, fx) = rt.block_on(async {
        let env = Env::new(backend).await;
        let a = env.start().await;
        let b = match backend {
            Backend::Postgres => Some(env.replica().await),
            Backend::Embedded => None,
        };
        let users = env.users(USERS as usize).await;
        let fx = Fixture {
            a,
            b,
            users,
            case: 0.into(),
        };
        (env, fx)
    });
    let mut runner = TestRunner::new(PtConfig {
        cases,
        failure_persistence: None,
        ..PtConfig::default()
    });
    let result = runner.run(&prop::collection::vec(op(), 1..40), |ops| {
        rt.block_on(run_case(&fx, &ops))
    });
    drop(env);
    if let Err(e) = result {
        panic!("{backend:?}: {e}");
    }
}

#[test]
fn every_answer_agrees_with_the_model_embedded() {
    property(BACKENDS[0], 48);
}

#[test]
fn every_answer_agrees_with_the_model_postgres() {
    property(BACKENDS[1], 32);
}
