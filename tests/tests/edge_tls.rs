#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // integration tests fail by panicking

//! TLS termination in the front tier on the local cluster, with the operator as a local process: a
//! ReplicatedService with `spec.tls` names a Secret; before it exists the service is `Degraded`
//! naming the field; once created, the front splitter serves its certificate; rotating the Secret
//! takes effect for new handshakes while a connection opened before keeps working, and the
//! splitter never restarts; a bad certificate is rejected (an Event on the service) and the last
//! good one stays. Certificates come from `openssl`, the client is `openssl s_client`.
//!
//! Images: `OUTRIGGER_SPLITTER_IMAGE` (default `outrigger/request-splitter:dev`) and
//! `OUTRIGGER_TESTAPP_IMAGE` (default `outrigger/testapp:dev`).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::{Pod, Secret, Service},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ByteString,
};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use outrigger_api::ReplicatedService;
use outrigger_tests::{
    admin_client, cluster_run_dir, eventually, kubectl_ok, splitter_fronted_address, test_app_service,
    OperatorProcess, TestNamespace,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(180);

fn operator(namespace: &str) -> OperatorProcess {
    OperatorProcess::with_splitter(namespace).unwrap()
}

fn service() -> ReplicatedService {
    test_app_service(json!({
        "ports": [{"name": "https", "port": 443, "targetPort": 8080}],
        "tls": {"secretName": "web-tls"},
    }))
    .unwrap()
}

/// A self-signed certificate and key for `name`, as PEM files.
fn certificate(dir: &std::path::Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args(["-days", "1", "-subj", &format!("/CN={name}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "openssl req failed");
    (cert, key)
}

/// Creates or replaces the TLS Secret `web-tls` with this certificate and key (PEM), checked by
/// nothing on the way (as a bad rotation would be).
async fn apply_secret(secrets: &Api<Secret>, cert: &[u8], key: &[u8]) {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("web-tls".to_owned()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(BTreeMap::from([
            ("tls.crt".to_owned(), ByteString(cert.to_vec())),
            ("tls.key".to_owned(), ByteString(key.to_vec())),
        ])),
        ..Secret::default()
    };
    secrets
        .patch(
            "web-tls",
            &PatchParams::apply("edge-tls-test").force(),
            &Patch::Apply(&secret),
        )
        .await
        .unwrap();
}

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// The subject of the certificate a new handshake with `address` gets, e.g. `CN = edge-one`.
fn served_subject(address: &str) -> Option<String> {
    let handshake = Command::new("openssl")
        .args(["s_client", "-connect", address, "-servername", "web"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let mut parse = Command::new("openssl")
        .args(["x509", "-noout", "-subject"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    parse.stdin.take()?.write_all(&handshake.stdout).ok()?;
    let parsed = parse.wait_with_output().ok()?;
    let subject = String::from_utf8_lossy(&parsed.stdout).trim().to_owned();
    subject
        .strip_prefix("subject=")
        .map(|rest| rest.trim().to_owned())
}

/// A TLS connection kept open (`openssl s_client -quiet`), its output read line by line.
struct Held {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Held {
    fn open(address: &str) -> Held {
        let mut child = Command::new("openssl")
            .args(["s_client", "-quiet", "-connect", address, "-servername", "web"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        Held { child, lines }
    }

    /// Sends a keep-alive GET on the open connection and waits for its answer's body line.
    fn get_ok(&mut self) -> bool {
        let stdin = self.child.stdin.as_mut().unwrap();
        if stdin
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: web\r\n\r\n")
            .and_then(|()| stdin.flush())
            .is_err()
        {
            return false;
        }
        loop {
            match self.lines.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line.trim() == "ok" => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn splitter_pod(pods: &Api<Pod>) -> Pod {
    eventually("the splitter pod", WAIT, || async {
        let list = pods
            .list(&ListParams::default().labels("outrigger.dev/splitter=web"))
            .await?;
        Ok(list
            .items
            .into_iter()
            .find(|pod| pod.metadata.deletion_timestamp.is_none()))
    })
    .await
    .unwrap()
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|status| status.container_statuses.as_ref())
        .map_or(0, |statuses| {
            statuses.iter().map(|status| status.restart_count).sum()
        })
}

#[tokio::test]
async fn the_front_tier_serves_the_secrets_certificate_and_a_rotation_needs_no_restart() {
    let ns = TestNamespace::create("edge-tls").unwrap();
    let _operator = operator(&ns.name);
    let client = admin_client().await.unwrap();
    let services: Api<ReplicatedService> = Api::namespaced(client.clone(), &ns.name);
    let kube_services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let dir = cluster_run_dir().join(format!("edge-tls-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let (one_cert, one_key) = certificate(&dir, "edge-one");
    let (two_cert, two_key) = certificate(&dir, "edge-two");

    // No Secret yet: the service says which field names what is missing.
    services.create(&PostParams::default(), &service()).await.unwrap();
    let message = eventually("a Degraded condition about the Secret", WAIT, || async {
        let status = services.get("web").await?.status.unwrap_or_default();
        Ok(status
            .conditions
            .iter()
            .find(|c| c.type_ == "Degraded" && c.status == "True" && c.reason == "TlsSecretMissing")
            .map(|c| c.message.clone()))
    })
    .await
    .unwrap();
    assert!(message.contains("spec.tls.secretName"), "{message}");

    // The Secret appears: the splitter, watching it, serves its certificate.
    apply_secret(&secrets, &read(&one_cert), &read(&one_key)).await;
    let address = eventually("the Service to send clients to the splitter", WAIT, || async {
        splitter_fronted_address(&kube_services, "web").await
    })
    .await
    .unwrap();
    eventually("the first certificate served", WAIT, || async {
        Ok(served_subject(&address).filter(|subject| subject.contains("edge-one")))
    })
    .await
    .unwrap();
    let pod = splitter_pod(&pods).await;
    let pod_name = pod.metadata.name.clone().unwrap();
    let mut held = Held::open(&address);
    assert!(held.get_ok(), "a request over TLS before the rotation");

    // Rotation: new handshakes get the new certificate; the open connection keeps serving.
    apply_secret(&secrets, &read(&two_cert), &read(&two_key)).await;
    eventually("the rotated certificate served", WAIT, || async {
        Ok(served_subject(&address).filter(|subject| subject.contains("edge-two")))
    })
    .await
    .unwrap();
    assert!(
        held.get_ok(),
        "the connection opened before the rotation still serves"
    );

    // A bad certificate: rejected with an Event on the service, the last good one stays.
    // The first certificate with the second key: a pair that does not match.
    apply_secret(&secrets, &read(&one_cert), &read(&two_key)).await;
    eventually("an Event about the rejected certificate", WAIT, || async {
        let events = kubectl_ok(&[
            "get",
            "events",
            "-n",
            &ns.name,
            "--field-selector",
            "involvedObject.kind=ReplicatedService,involvedObject.name=web,reason=TlsCertificateRejected",
            "-o",
            "name",
        ])?;
        Ok((!events.trim().is_empty()).then_some(()))
    })
    .await
    .unwrap();
    assert!(served_subject(&address).unwrap_or_default().contains("edge-two"));

    let pod = pods.get(&pod_name).await.unwrap();
    assert_eq!(restarts(&pod), 0, "the splitter never restarted");
    let _ = std::fs::remove_dir_all(&dir);
}
