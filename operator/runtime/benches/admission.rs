//! Admission latency of the injection webhook under 200 concurrent reviews, over real TLS on
//! loopback with keep-alive connections (as the API server calls it). Prints a table.
//!
//! Run: `cargo bench -p outrigger-operator --bench admission`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark fails loudly

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::jiff::Timestamp;
use outrigger_api::common::SidecarSpec;
use outrigger_core::inject::SidecarDefaults;
use outrigger_operator::webhook::{bind, certs, serve, Injector, OwnerEntry, OwnerLookup, WebhookMetrics};
use prometheus_client::registry::Registry;
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use serde_json::json;

const CONCURRENCY: usize = 200;
const REVIEWS_PER_CLIENT: usize = 50;

struct OneService(Vec<SidecarSpec>);

impl OwnerLookup for OneService {
    fn sidecars(&self, _kind: &str, _namespace: &str, _name: &str) -> Option<OwnerEntry> {
        Some(OwnerEntry {
            sidecars: self.0.clone(),
            config_map: "web-outrigger".to_owned(),
            uid: Some("bench-owner".to_owned()),
        })
    }
}

fn review(uid: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("bench-{uid}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": "shop",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": "web-abc-", "labels": {
                    "app.kubernetes.io/managed-by": "outrigger", "outrigger.dev/replicatedservice": "web"}},
                "spec": {"containers": [{"name": "app", "image": "app:1", "ports": [{"containerPort": 8080}]}]}
            },
            "dryRun": false
        }
    }))
    .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let bundle = certs::issue(
        &["127.0.0.1".to_owned()],
        Duration::from_secs(3600),
        None,
        Timestamp::now(),
    )
    .unwrap();
    let served = Arc::new(certs::ServedCert::default());
    served.set(&bundle).unwrap();
    let sidecars: Vec<SidecarSpec> =
        serde_json::from_value(json!([{"name": "request-splitter"}, {"name": "log-adapter"}])).unwrap();
    let mut registry = Registry::default();
    let injector = Arc::new(Injector {
        owners: Arc::new(OneService(sidecars)),
        defaults: SidecarDefaults {
            image_tag: "dev".into(),
            ..Default::default()
        },
        native_sidecars: false,
        metrics: WebhookMetrics::register(&mut registry),
    });
    let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, served, injector.clone(), std::future::pending()));
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The handler alone, without network or TLS, for reference.
    let body = review(0);
    let mut handler = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        let started = Instant::now();
        let answer = injector.review(&body).unwrap();
        handler.push(started.elapsed());
        assert!(answer.response.unwrap().patch.is_some());
    }
    handler.sort();

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(bundle.ca_cert.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));

    let before = buckets(&registry);
    let started = Instant::now();
    let mut clients = Vec::new();
    for client in 0..CONCURRENCY {
        let connector = connector.clone();
        clients.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let stream = connector
                .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
                .await
                .unwrap();
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(connection);
            let mut latencies = Vec::with_capacity(REVIEWS_PER_CLIENT);
            for n in 0..REVIEWS_PER_CLIENT {
                let request = http::Request::post("/mutate")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(review(client * REVIEWS_PER_CLIENT + n))))
                    .unwrap();
                let sent = Instant::now();
                let response = sender.send_request(request).await.unwrap();
                let status = response.status();
                let _ = response.into_body().collect().await.unwrap();
                latencies.push(sent.elapsed());
                assert_eq!(status, 200);
            }
            latencies
        }));
    }
    // Server-side time per review (body read to response built), from the webhook's own histogram;
    // the handler-only loop below also lands in it, so take a snapshot first.
    let mut end_to_end = Vec::new();
    for client in clients {
        end_to_end.extend(client.await.unwrap());
    }
    let elapsed = started.elapsed();
    end_to_end.sort();
    let after = buckets(&registry);
    let under_load: Vec<(f64, u64)> = after
        .iter()
        .zip(&before)
        .map(|((le, a), (_, b))| (*le, a - b))
        .collect();

    println!("| measurement | reviews | p50 | p99 | max | reviews/s |");
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "| handler only (decode, plan, mutate, diff, encode), 1 task | {} | {:.3} ms | {:.3} ms | {:.3} ms | — |",
        handler.len(),
        percentile(&handler, 50.0).as_secs_f64() * 1e3,
        percentile(&handler, 99.0).as_secs_f64() * 1e3,
        handler.last().unwrap().as_secs_f64() * 1e3,
    );
    println!(
        "| HTTPS round trip, {CONCURRENCY} concurrent keep-alive clients | {} | {:.3} ms | {:.3} ms | {:.3} ms | {:.0} |",
        end_to_end.len(),
        percentile(&end_to_end, 50.0).as_secs_f64() * 1e3,
        percentile(&end_to_end, 99.0).as_secs_f64() * 1e3,
        end_to_end.last().unwrap().as_secs_f64() * 1e3,
        end_to_end.len() as f64 / elapsed.as_secs_f64(),
    );
    println!(
        "| server-side handler time with {CONCURRENCY} reviews in flight (histogram bucket bounds) | {} | ≤ {} ms | ≤ {} ms | — | — |",
        under_load.last().map_or(0, |(_, count)| *count),
        bucket_quantile(&under_load, 0.50) * 1e3,
        bucket_quantile(&under_load, 0.99) * 1e3,
    );
}

/// Cumulative bucket counts of `outrigger_admission_duration_seconds`, `+Inf` last.
fn buckets(registry: &Registry) -> Vec<(f64, u64)> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .filter(|line| line.starts_with("outrigger_admission_duration_seconds_bucket"))
        .filter_map(|line| {
            let le = line.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, line.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// The upper bound of the bucket holding quantile `q`.
fn bucket_quantile(cumulative: &[(f64, u64)], q: f64) -> f64 {
    let total = cumulative.last().map_or(0, |(_, count)| *count) as f64;
    cumulative
        .iter()
        .find(|(_, count)| *count as f64 >= total * q)
        .map_or(f64::INFINITY, |(le, _)| *le)
}
