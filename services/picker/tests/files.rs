//! `fms.picker.v1.FilesService`, the public gRPC API for bulk clients, over real sockets:
//! multi-file upload streams with durable progress, resume (also across protocols: a gRPC
//! upload is a tus upload), ranged downloads, list, stat, delete, auth and bad input, and a
//! 1 GiB round trip.

mod common;

use std::time::Duration;

use common::{Server, client, random, start_with, user};
use fms_proto::picker::v1 as pb;
use pb::files_service_client::FilesServiceClient;
use pb::upload_request::Msg as In;
use pb::upload_response::Msg as Out;
use tonic::Code;
use tonic::transport::Channel;

async fn grpc(s: &Server) -> FilesServiceClient<Channel> {
    let services = fms_platform::grpc::GrpcServices::new().with(fms_picker::files::Files::server(
        s.picker.clone(),
        s.authenticator.clone(),
    ));
    let (routes, health) = fms_platform::grpc::routes(services).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(fms_platform::grpc::serve(
        listener,
        routes,
        health,
        "t",
        s.stop.clone(),
        Duration::from_secs(1),
    ));
    FilesServiceClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
    .max_decoding_message_size(8 << 20)
}

fn authed<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn start(name: &str, size: Option<u64>) -> pb::UploadRequest {
    pb::UploadRequest {
        msg: Some(In::Start(pb::UploadStart {
            name: name.into(),
            size,
            upload_id: String::new(),
            offset: 0,
            resume: false,
            folder: String::new(),
        })),
    }
}

fn resume(id: &str, offset: u64) -> pb::UploadRequest {
    pb::UploadRequest {
        msg: Some(In::Start(pb::UploadStart {
            name: String::new(),
            size: None,
            upload_id: id.into(),
            offset,
            resume: false,
            folder: String::new(),
        })),
    }
}

fn data(b: &[u8]) -> pb::UploadRequest {
    pb::UploadRequest {
        msg: Some(In::Data(bytes::Bytes::copy_from_slice(b))),
    }
}

fn end(blake3: &str) -> pb::UploadRequest {
    pb::UploadRequest {
        msg: Some(In::End(pb::UploadEnd {
            blake3: blake3.into(),
        })),
    }
}

/// Run one Upload stream to its end: every response, or the status it failed with.
async fn upload(
    g: &mut FilesServiceClient<Channel>,
    token: &str,
    msgs: Vec<pb::UploadRequest>,
) -> (Vec<Out>, Option<tonic::Status>) {
    let mut out = Vec::new();
    let mut stream = match g
        .upload(authed(token, futures_util::stream::iter(msgs)))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => return (out, Some(e)),
    };
    loop {
        match stream.message().await {
            Ok(Some(m)) => out.extend(m.msg),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

async fn download(
    g: &mut FilesServiceClient<Channel>,
    token: &str,
    id: &str,
    offset: u64,
    length: u64,
) -> Result<(pb::FileInfo, Vec<u8>), tonic::Status> {
    let mut s = g
        .download(authed(
            token,
            pb::DownloadRequest {
                file_id: id.into(),
                offset,
                length,
            },
        ))
        .await?
        .into_inner();
    let mut info = None;
    let mut bytes = Vec::new();
    while let Some(m) = s.message().await? {
        match m.msg {
            Some(pb::download_response::Msg::Info(i)) => info = Some(i),
            Some(pb::download_response::Msg::Data(d)) => bytes.extend_from_slice(&d),
            None => {}
        }
    }
    Ok((info.expect("info first"), bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_api_uploads_resumes_downloads_lists_and_deletes() {
    let s = start_with(false, 64 << 20, 0).await;
    let c = client();
    let (token, _) = user(&c, &s.url).await;
    let (other, _) = user(&c, &s.url).await;
    let mut g = grpc(&s).await;

    // Two files in one stream, one with a declared size and a BLAKE3, one without either.
    let a = random((3 << 20) + 5, 81);
    let b = random(10, 82);
    let mut msgs = vec![start("a.bin", Some(a.len() as u64))];
    msgs.extend(a.chunks(1 << 20).map(data));
    msgs.push(end(blake3::hash(&a).to_hex().as_str()));
    msgs.push(start("b.txt", None));
    msgs.push(data(&b));
    msgs.push(end(""));
    let (out, err) = upload(&mut g, &token, msgs).await;
    assert!(err.is_none(), "{err:?}");
    let files: Vec<&pb::FileInfo> = out
        .iter()
        .filter_map(|m| match m {
            Out::File(f) => Some(f),
            _ => None,
        })
        .collect();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0].name, "a.bin");
    assert_eq!(files[0].size, a.len() as u64);
    assert_eq!(files[0].blake3, blake3::hash(&a).to_hex().as_str());
    assert_eq!(files[0].new_bytes, a.len() as u64);
    assert_eq!(files[1].size, 10);
    assert!(matches!(out[0], Out::Progress(ref p) if p.offset == 0 && !p.upload_id.is_empty()));
    // Download whole and by range; stat; list.
    let (info, got) = download(&mut g, &token, &files[0].id, 0, 0).await.unwrap();
    assert_eq!(info.id, files[0].id);
    assert!(got == a);
    let (_, got) = download(&mut g, &token, &files[0].id, 1_000_000, 70_000)
        .await
        .unwrap();
    assert!(got == a[1_000_000..1_070_000]);
    let e = download(&mut g, &token, &files[0].id, a.len() as u64 + 1, 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange);
    let st = g
        .stat(authed(
            &token,
            pb::StatRequest {
                file_id: files[1].id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.file.unwrap().name, "b.txt");
    let mut listed = Vec::new();
    let mut token_page = String::new();
    loop {
        let page = g
            .list(authed(
                &token,
                pb::ListRequest {
                    page_size: 1,
                    page_token: token_page.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        listed.extend(page.files.into_iter().map(|f| f.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token_page = page.next_page_token;
    }
    assert_eq!(listed, vec![files[0].id.clone(), files[1].id.clone()]);

    // Auth: no token, another user's file, another user's delete.
    let e = g
        .stat(tonic::Request::new(pb::StatRequest {
            file_id: files[0].id.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = g
        .stat(authed(
            &other,
            pb::StatRequest {
                file_id: files[0].id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = download(&mut g, &other, &files[0].id, 0, 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = g
        .delete(authed(
            &other,
            pb::DeleteRequest {
                file_id: files[0].id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    g.delete(authed(
        &token,
        pb::DeleteRequest {
            file_id: files[1].id.clone(),
        },
    ))
    .await
    .unwrap();
    let e = g
        .stat(authed(
            &token,
            pb::StatRequest {
                file_id: files[1].id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Bad streams: data first, too many bytes, a wrong BLAKE3 (nothing kept), a bad name.
    let (_, e) = upload(&mut g, &token, vec![data(b"x")]).await;
    assert_eq!(e.unwrap().code(), Code::InvalidArgument);
    let (_, e) = upload(&mut g, &token, vec![start("n", Some(3)), data(b"four")]).await;
    assert_eq!(e.unwrap().code(), Code::OutOfRange);
    let (_, e) = upload(
        &mut g,
        &token,
        vec![
            start("lie.bin", Some(4)),
            data(b"four"),
            end(&"0".repeat(64)),
        ],
    )
    .await;
    assert_eq!(e.unwrap().code(), Code::InvalidArgument);
    let (_, e) = upload(&mut g, &token, vec![start("../x", None)]).await;
    assert_eq!(e.unwrap().code(), Code::InvalidArgument);
    let (_, e) = upload(&mut g, &token, vec![start("big", Some(65 << 20))]).await;
    assert_eq!(e.unwrap().code(), Code::ResourceExhausted);
    let names: Vec<String> = {
        let page = g
            .list(authed(
                &token,
                pb::ListRequest {
                    page_size: 0,
                    page_token: String::new(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        page.files.into_iter().map(|f| f.name).collect()
    };
    assert_eq!(
        names,
        vec!["a.bin".to_string()],
        "nothing of the bad streams kept"
    );

    // Resume: 20 MiB declared, 12 MiB sent, the stream ends; progress said 8 MiB durable.
    let big = random(20 << 20, 83);
    let mut msgs = vec![start("resumed.bin", Some(big.len() as u64))];
    msgs.extend(big[..12 << 20].chunks(1 << 20).map(data));
    let (out, e) = upload(&mut g, &token, msgs).await;
    assert_eq!(
        e.unwrap().code(),
        Code::InvalidArgument,
        "ended inside a file"
    );
    let progress: Vec<(String, u64)> = out
        .iter()
        .filter_map(|m| match m {
            Out::Progress(p) => Some((p.upload_id.clone(), p.offset)),
            _ => None,
        })
        .collect();
    let id = progress[0].0.clone();
    assert!(progress.iter().any(|(_, o)| *o == 8 << 20), "{progress:?}");
    // The same upload seen through tus: everything that arrived was kept.
    let r = c
        .head(format!("{}/api/uploads/{id}", s.url))
        .bearer_auth(&token)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    let acked: u64 = r.headers()["upload-offset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(acked, 12 << 20);
    // Resuming at the wrong offset is refused; another user cannot resume it.
    let (_, e) = upload(&mut g, &token, vec![resume(&id, 5)]).await;
    assert_eq!(e.unwrap().code(), Code::Aborted);
    let (_, e) = upload(&mut g, &other, vec![resume(&id, acked)]).await;
    assert_eq!(e.unwrap().code(), Code::NotFound);
    let (_, e) = upload(&mut g, &token, vec![resume("not-an-upload", 0)]).await;
    assert_eq!(e.unwrap().code(), Code::NotFound);
    // A tus concatenation part is not resumed here.
    let r = c
        .post(format!("{}/api/uploads", s.url))
        .bearer_auth(&token)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "10")
        .header("upload-concat", "partial")
        .send()
        .await
        .unwrap();
    let part = r.headers()["location"]
        .to_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let (_, e) = upload(
        &mut g,
        &token,
        vec![resume(&part, 0), data(b"0123456789"), end("")],
    )
    .await;
    assert_eq!(e.unwrap().code(), Code::InvalidArgument);
    let mut msgs = vec![resume(&id, acked)];
    msgs.extend(big[acked as usize..].chunks(1 << 20).map(data));
    msgs.push(end(blake3::hash(&big).to_hex().as_str()));
    let (out, e) = upload(&mut g, &token, msgs).await;
    assert!(e.is_none(), "{e:?}");
    let f = out
        .iter()
        .find_map(|m| match m {
            Out::File(f) => Some(f.clone()),
            _ => None,
        })
        .unwrap();
    let (_, got) = download(&mut g, &token, &f.id, 0, 0).await.unwrap();
    assert!(got == big);
}

/// Issue 6: 1 GiB up and down through the streaming API, generated and checked on the fly
/// (neither side holds the file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_round_trip() {
    const SIZE: u64 = 1 << 30;
    const PIECE: usize = 1 << 20;
    let s = start_with(false, 2 << 30, 0).await;
    let c = client();
    let (token, _) = user(&c, &s.url).await;
    let mut g = grpc(&s).await;
    let piece = |i: u64| -> Vec<u8> { random(PIECE, 1000 + i % 64) };
    let mut hasher = blake3::Hasher::new();
    for i in 0..SIZE / PIECE as u64 {
        hasher.update(&piece(i));
    }
    let want = hasher.finalize().to_hex().to_string();
    let msgs = futures_util::stream::iter(
        std::iter::once(start("gib.bin", Some(SIZE)))
            .chain((0..SIZE / PIECE as u64).map(move |i| data(&piece(i))))
            .chain(std::iter::once(end(&want))),
    );
    let mut out = g.upload(authed(&token, msgs)).await.unwrap().into_inner();
    let mut file = None;
    while let Some(m) = out.message().await.unwrap() {
        if let Some(Out::File(f)) = m.msg {
            file = Some(f);
        }
    }
    let file = file.expect("the file");
    assert_eq!(file.size, SIZE);
    let mut s2 = g
        .download(authed(
            &token,
            pb::DownloadRequest {
                file_id: file.id,
                offset: 0,
                length: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut h = blake3::Hasher::new();
    let mut n = 0u64;
    while let Some(m) = s2.message().await.unwrap() {
        if let Some(pb::download_response::Msg::Data(d)) = m.msg {
            n += d.len() as u64;
            h.update(&d);
        }
    }
    assert_eq!(n, SIZE);
    assert_eq!(h.finalize().to_hex().to_string(), want);
}

/// A dedup-aware upload as a client does it: cut with the server's parameters, announce
/// in batches, send what is asked for. Returns the file, every answer, and the bytes sent.
async fn dedup_upload(
    g: &mut FilesServiceClient<Channel>,
    token: &str,
    name: &str,
    data: &[u8],
) -> (pb::FileInfo, Vec<bool>, u64) {
    let params = g
        .get_upload_params(authed(token, pb::GetUploadParamsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(params.algorithm, "fastcdc-2020");
    let mut chunker = fms_engine::Chunker::new(fms_engine::ChunkParams {
        min: params.min_chunk,
        avg: params.avg_chunk,
        max: params.max_chunk,
    });
    let mut chunks: Vec<bytes::Bytes> = Vec::new();
    let mut emit = |b: bytes::Bytes| -> Result<(), ()> {
        chunks.push(b);
        Ok(())
    };
    chunker.push(data, &mut emit).unwrap();
    chunker.finish(&mut emit).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut responses = g
        .upload(authed(
            token,
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .await
        .unwrap()
        .into_inner();
    tx.send(start(name, Some(data.len() as u64))).await.unwrap();
    let mut answers = Vec::new();
    let mut sent = 0u64;
    for batch in chunks.chunks(300) {
        let refs = batch
            .iter()
            .map(|c| pb::ChunkRef {
                blake3: bytes::Bytes::copy_from_slice(blake3::hash(c).as_bytes()),
                size: c.len() as u32,
            })
            .collect();
        tx.send(pb::UploadRequest {
            msg: Some(In::Chunks(pb::ChunkRefs { refs })),
        })
        .await
        .unwrap();
        let need = loop {
            match responses.message().await.unwrap().unwrap().msg.unwrap() {
                Out::Needed(n) => break n.send,
                Out::Progress(_) => {}
                Out::File(_) => panic!("file before end"),
            }
        };
        assert_eq!(need.len(), batch.len());
        for (c, &n) in batch.iter().zip(&need) {
            if n {
                sent += c.len() as u64;
                tx.send(pb::UploadRequest {
                    msg: Some(In::Chunk(c.clone())),
                })
                .await
                .unwrap();
            }
        }
        answers.extend(need);
    }
    tx.send(end(blake3::hash(data).to_hex().as_str()))
        .await
        .unwrap();
    let file = loop {
        if let Out::File(f) = responses.message().await.unwrap().unwrap().msg.unwrap() {
            break f;
        }
    };
    (file, answers, sent)
}

/// The dedup-aware upload: a file whose chunks are 90% in the user's own files sends at
/// most 15% of its bytes (the server's received-bytes counter says so); another user
/// uploading the same content gets the same answers as for content nobody has, is charged
/// the same quota and sees the same record; bad chunk messages are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_aware_upload_sends_only_missing_chunks_and_reveals_nothing_across_users() {
    use std::sync::atomic::Ordering;
    let s = start_with(false, 64 << 20, 0).await;
    let c = client();
    let (alice, _) = user(&c, &s.url).await;
    let (bob, _) = user(&c, &s.url).await;
    let mut g = grpc(&s).await;

    let original = random(16 << 20, 91);
    let (first, _, _) = dedup_upload(&mut g, &alice, "v1.bin", &original).await;
    assert_eq!(first.size, original.len() as u64);
    // 10% changed in one region.
    let mut edited = original.clone();
    let at = 5 << 20;
    let n = edited.len() / 10;
    edited[at..at + n].copy_from_slice(&random(n, 92));

    let before = s.picker.grpc_bytes_received.load(Ordering::Relaxed);
    let (second, answers, sent) = dedup_upload(&mut g, &alice, "v2.bin", &edited).await;
    let received = s.picker.grpc_bytes_received.load(Ordering::Relaxed) - before;
    assert_eq!(received, sent);
    eprintln!(
        "dedup-aware re-upload, 10% changed: received {received} of {} bytes",
        edited.len()
    );
    assert!(
        received <= edited.len() as u64 * 15 / 100,
        "received {received} of {}",
        edited.len()
    );
    assert!(answers.iter().any(|n| !n));
    assert_eq!(second.blake3, blake3::hash(&edited).to_hex().as_str());
    let (_, got) = download(&mut g, &alice, &second.id, 0, 0).await.unwrap();
    assert!(got == edited);

    // Bob: the same content as alice's, and content nobody has, look alike to him.
    let before = s.picker.grpc_bytes_received.load(Ordering::Relaxed);
    let (theirs, answers_same, sent_same) = dedup_upload(&mut g, &bob, "v2.bin", &edited).await;
    let fresh = random(edited.len(), 93);
    let (mine, answers_fresh, sent_fresh) = dedup_upload(&mut g, &bob, "new.bin", &fresh).await;
    assert!(answers_same.iter().all(|n| *n), "every chunk asked for");
    assert!(answers_fresh.iter().all(|n| *n));
    assert_eq!(sent_same, edited.len() as u64);
    assert_eq!(sent_fresh, fresh.len() as u64);
    assert_eq!(
        s.picker.grpc_bytes_received.load(Ordering::Relaxed) - before,
        sent_same + sent_fresh
    );
    assert_eq!(theirs.new_bytes, theirs.size, "charged and shown as new");
    assert_eq!(mine.new_bytes, mine.size);
    let (_, got) = download(&mut g, &bob, &theirs.id, 0, 0).await.unwrap();
    assert!(got == edited);

    // Once alice deletes her files, her own chunks are no longer offered back to her.
    for id in [&first.id, &second.id] {
        g.delete(authed(
            &alice,
            pb::DeleteRequest {
                file_id: id.clone(),
            },
        ))
        .await
        .unwrap();
    }
    let (_, answers, _) = dedup_upload(&mut g, &alice, "v3.bin", &edited).await;
    assert!(answers.iter().all(|n| *n));

    // Bad input: a short id, bytes nobody asked for, bytes that are not the chunk.
    let bad_id = vec![
        start("x", None),
        pb::UploadRequest {
            msg: Some(In::Chunks(pb::ChunkRefs {
                refs: vec![pb::ChunkRef {
                    blake3: bytes::Bytes::from(vec![1u8; 31]),
                    size: 10,
                }],
            })),
        },
    ];
    let (_, e) = upload(&mut g, &alice, bad_id).await;
    assert_eq!(e.unwrap().code(), Code::InvalidArgument);
    let unasked = vec![
        start("x", None),
        pb::UploadRequest {
            msg: Some(In::Chunk(bytes::Bytes::from_static(b"abc"))),
        },
    ];
    let (_, e) = upload(&mut g, &alice, unasked).await;
    assert_eq!(e.unwrap().code(), Code::InvalidArgument);
    let lying = vec![
        start("x", None),
        pb::UploadRequest {
            msg: Some(In::Chunks(pb::ChunkRefs {
                refs: vec![pb::ChunkRef {
                    blake3: bytes::Bytes::copy_from_slice(blake3::hash(b"abc").as_bytes()),
                    size: 3,
                }],
            })),
        },
        pb::UploadRequest {
            msg: Some(In::Chunk(bytes::Bytes::from_static(b"abd"))),
        },
        end(""),
    ];
    let (_, e) = upload(&mut g, &alice, lying).await;
    assert_eq!(e.unwrap().code(), Code::InvalidArgument);
}
