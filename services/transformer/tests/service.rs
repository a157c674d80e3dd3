//! `TransformFile` over a real gRPC connection: a result in the asked format, bad transforms
//! and hostile inputs refused fast, a busy service refusing at once, the service still serving.

use std::time::{Duration, Instant};

use fms_proto::transformer::v1 as pb;
use fms_transformer::image_ops::Limits;
use fms_transformer::service::Service;
use pb::transformer_service_client::TransformerServiceClient;
use tokio_stream::StreamExt;

async fn serve(slots: usize) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let svc = Service::new(Limits::default(), slots).server();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
            .await
            .unwrap();
    });
    format!("http://{addr}")
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, _| image::Rgb([(x % 256) as u8, 0, 200]));
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_with_encoder(image::codecs::png::PngEncoder::new(&mut out))
        .unwrap();
    out
}

fn messages(transform: &str, data: &[u8], size: u64) -> Vec<pb::TransformFileRequest> {
    let mut m = vec![pb::TransformFileRequest {
        msg: Some(pb::transform_file_request::Msg::Spec(pb::TransformSpec {
            source_size: size,
            transform: transform.into(),
        })),
    }];
    for c in data.chunks(100_000) {
        m.push(pb::TransformFileRequest {
            msg: Some(pb::transform_file_request::Msg::Data(c.to_vec().into())),
        });
    }
    m
}

/// (content type, width, height, bytes) or the status.
async fn call(
    url: &str,
    transform: &str,
    data: &[u8],
) -> Result<(String, u32, u32, Vec<u8>), tonic::Status> {
    let mut c = TransformerServiceClient::connect(url.to_string())
        .await
        .unwrap();
    let reqs = messages(transform, data, data.len() as u64);
    let mut s = c
        .transform_file(tokio_stream::iter(reqs))
        .await?
        .into_inner();
    let mut head = None;
    let mut bytes = Vec::new();
    while let Some(m) = s.next().await {
        match m?.msg {
            Some(pb::transform_file_response::Msg::Result(r)) => head = Some(r),
            Some(pb::transform_file_response::Msg::Data(b)) => bytes.extend_from_slice(&b),
            None => {}
        }
    }
    let r = head.expect("a result header");
    Ok((r.content_type, r.width, r.height, bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transforms_over_grpc_and_refuses_what_it_must() {
    let url = serve(1).await;
    let src = png(1200, 600);
    let (ct, w, h, out) = call(&url, "resize:w=300/output:f=jpeg,q=80", &src)
        .await
        .unwrap();
    assert_eq!((ct.as_str(), w, h), ("image/jpeg", 300, 150));
    let back = image::load_from_memory(&out).unwrap();
    assert_eq!((back.width(), back.height()), (300, 150));

    // Refused, each quickly, and the service goes on.
    let bomb = fms_transformer::fuzz::png_claiming(&png(10, 10), 100_000, 100_000);
    for (t, data, code) in [
        ("explode", src.clone(), tonic::Code::InvalidArgument),
        (
            "resize:w=10",
            b"\x89PNG but not really".to_vec(),
            tonic::Code::InvalidArgument,
        ),
        ("resize:w=10", Vec::new(), tonic::Code::InvalidArgument),
        (
            "resize:w=10",
            src[..src.len() / 3].to_vec(),
            tonic::Code::InvalidArgument,
        ),
        ("resize:w=10", bomb, tonic::Code::OutOfRange),
    ] {
        let started = Instant::now();
        let e = call(&url, t, &data).await.unwrap_err();
        assert_eq!(e.code(), code, "{t}: {e}");
        assert!(started.elapsed() < Duration::from_secs(2), "{t}");
    }
    let mut c = TransformerServiceClient::connect(url.clone())
        .await
        .unwrap();
    let e = c
        .transform_file(tokio_stream::iter(messages("flip", &[], 1 << 40)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange, "announced too large");

    // One slot: while a request holds it, another is refused at once.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    for m in messages("flip/output:f=png", &[], src.len() as u64) {
        tx.send(m).await.unwrap();
    }
    let held_url = url.clone();
    let held = tokio::spawn(async move {
        let mut c = TransformerServiceClient::connect(held_url).await.unwrap();
        c.transform_file(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let e = call(&url, "flip", &src).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    assert!(started.elapsed() < Duration::from_secs(1));
    for m in messages("flip", &src, 0).into_iter().skip(1) {
        tx.send(m).await.unwrap();
    }
    drop(tx);
    let mut s = held.await.unwrap().unwrap().into_inner();
    while let Some(m) = s.next().await {
        m.unwrap();
    }
    // Free again.
    assert!(call(&url, "grayscale/output:f=png", &src).await.is_ok());
}
