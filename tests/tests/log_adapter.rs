#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // integration tests fail by panicking

//! The log adapter in a real pod: injected by the operator's webhook next to the test app and a
//! real nginx (Debian's, `outrigger/nginx`, read-only root, logging to the shared volume), it reads
//! the apps' files on the shared volume and writes one JSON record per event to its stdout, where
//! `kubectl logs -c log-adapter` shows them. nginx's own access and error lines, the test app's
//! nginx-style lines and a Java stack trace come out as one record each, stamped in RFC 3339 UTC
//! and enriched with the pod, namespace, node, container and owning service; binary garbage, a
//! 10 MB line, a file deleted while being read and an unreadable file do not stop it; killed
//! (SIGKILL) mid-stream and restarted by the kubelet, it loses no line of a counted stream.
//!
//! A second test ships a counted stream to an HTTP sink in a pod of its own (the test app's `sink`
//! mode, reached by pod IP), takes the sink down for 30 seconds and counts every line after it
//! comes back, while the adapter's memory stays bounded; the adapter reports the outage and the
//! recovery as Events on the owning ReplicatedService (allowed by the Role the operator gives the
//! service's pods), where `kubectl describe` shows them.
//!
//! Needs the images `outrigger/log-adapter:dev`, `outrigger/testapp:dev` and `outrigger/nginx:dev`
//! built from this tree: `OUTRIGGER_IMAGE_PROFILE=image-test hack/images.sh log-adapter testapp
//! nginx`. Other tags (when other trees build `:dev` too): `OUTRIGGER_LOG_ADAPTER_IMAGE`,
//! `OUTRIGGER_TESTAPP_IMAGE`, `OUTRIGGER_NGINX_IMAGE`.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, PostParams};
use outrigger_api::ReplicatedService;
use outrigger_tests::{
    admin_client, docker_ok, dry_run, eventually, http_get_from, image, kubectl_ok, TestNamespace,
    WebhookOperator,
};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);
/// Lines of the counted stream, written at `RATE` a second: long enough to kill the adapter in the
/// middle of it.
const COUNTED: u32 = 3000;
const RATE: u32 = 100;

/// The adapter's records (its own logs, on stderr, are JSON too but carry no `source`); lines that
/// are not JSON (the container runtime splits very long lines) are skipped.
fn records(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|record| record.get("source").is_some())
        .collect()
}

fn adapter_logs(ns: &str, pod: &str, previous: bool) -> String {
    let mut args = vec!["logs", "-n", ns, pod, "-c", "log-adapter"];
    if previous {
        args.push("--previous");
    }
    kubectl_ok(&args).unwrap_or_default()
}

fn from_file<'a>(records: &'a [Value], file: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["source"].as_str().is_some_and(|s| s.ends_with(file)))
        .collect()
}

/// `seq` numbers of the counted stream found in `text`.
fn counted(text: &str) -> BTreeSet<u32> {
    from_file(&records(text), "/count.log")
        .iter()
        .filter_map(|r| r["fields"]["seq"].as_str()?.parse().ok())
        .collect()
}

fn is_rfc3339_utc(stamp: &str) -> bool {
    let bytes = stamp.as_bytes();
    let digits =
        |range: std::ops::Range<usize>| bytes.get(range).is_some_and(|b| b.iter().all(u8::is_ascii_digit));
    bytes.len() >= 20
        && digits(0..4)
        && bytes[4] == b'-'
        && digits(5..7)
        && bytes[7] == b'-'
        && digits(8..10)
        && bytes[10] == b'T'
        && digits(11..13)
        && bytes[13] == b':'
        && digits(14..16)
        && bytes[16] == b':'
        && digits(17..19)
        && stamp.ends_with('Z')
        && (bytes.len() == 20 || (bytes[19] == b'.' && digits(20..bytes.len() - 1)))
}

async fn ready_pod(pods: &Api<Pod>, service: &str) -> Pod {
    let selector = format!("outrigger.dev/replicatedservice={service}");
    eventually("a ready pod with the log adapter", WAIT, || async {
        let list = pods.list(&ListParams::default().labels(&selector)).await?;
        Ok(list.items.into_iter().find(|pod| {
            pod.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        }))
    })
    .await
    .unwrap()
}

fn adapter_status(pod: &Pod) -> (i32, Option<String>) {
    let status = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|s| s.iter().find(|c| c.name == "log-adapter").cloned())
        .unwrap();
    (status.restart_count, status.container_id)
}

/// An operator with its webhook for `ns`, once the webhook injects.
async fn injecting_operator(ns: &TestNamespace, pods: &Api<Pod>) -> WebhookOperator {
    let operator = WebhookOperator::start(
        ns,
        false,
        &[
            "--sidecar-image",
            &format!(
                "log-adapter={}",
                image("OUTRIGGER_LOG_ADAPTER_IMAGE", "outrigger/log-adapter:dev")
            ),
        ],
    )
    .unwrap();
    // The webhook answers once the API server has its configuration and certificate.
    let probe: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probe", "annotations": {"outrigger.dev/inject": "log-adapter"}},
        "spec": {"containers": [{"name": "app", "image": "outrigger/testapp:dev"}]},
    }))
    .unwrap();
    kubectl_ok(&["label", "namespace", &ns.name, "outrigger.dev/injection=enabled"]).unwrap();
    eventually("the webhook injecting", WAIT, || async {
        let pod = pods.create(&dry_run(), &probe).await?;
        Ok((pod.spec.unwrap().containers.len() == 2).then_some(()))
    })
    .await
    .unwrap();
    operator
}

#[tokio::test]
async fn app_logs_come_out_as_one_utc_record_per_event_and_survive_bad_input_and_a_kill() {
    let ns = TestNamespace::create("log-adapter").unwrap();
    let client = admin_client().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let _operator = injecting_operator(&ns, &pods).await;

    let testapp = image("OUTRIGGER_TESTAPP_IMAGE", "outrigger/testapp:dev");
    let nginx = image("OUTRIGGER_NGINX_IMAGE", "outrigger/nginx:dev");
    let service: ReplicatedService = serde_json::from_value(json!({
        "apiVersion": "outrigger.dev/v1alpha1", "kind": "ReplicatedService", "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "template": {"spec": {
                "containers": [{
                    "name": "app", "image": testapp, "imagePullPolicy": "Never",
                    "env": [
                        {"name": "LOG_DIR", "value": "/var/log/outrigger"},
                        {"name": "LOG_BAD", "value": "1"},
                        // nginx has 8080.
                        {"name": "PORT", "value": "8081"},
                        {"name": "LOG_LINES", "value": COUNTED.to_string()},
                        {"name": "LOG_RATE", "value": RATE.to_string()},
                    ],
                }, {
                    // Writes nginx-access.log and nginx-error.log on the shared volume.
                    "name": "nginx", "image": nginx, "imagePullPolicy": "Never",
                    "securityContext": {"readOnlyRootFilesystem": true, "runAsNonRoot": true},
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }],
                "volumes": [{"name": "tmp", "emptyDir": {}}],
            }},
            "sidecars": [{"name": "log-adapter"}],
        }
    }))
    .unwrap();
    Api::<ReplicatedService>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let pod = ready_pod(&pods, "web").await;
    let name = pod.metadata.name.clone().unwrap();
    let node = pod.spec.as_ref().unwrap().node_name.clone().unwrap();
    let ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();

    // Real nginx serves one page and misses one: an access line each, an error line for the miss.
    let nginx_at = format!("{ip}:8080");
    let served = eventually("nginx serving", WAIT, || async {
        Ok(http_get_from(&nginx_at, "/healthz")
            .ok()
            .filter(|(status, _)| *status == 200))
    })
    .await;
    assert!(served.is_ok(), "nginx answers /healthz");
    assert_eq!(http_get_from(&nginx_at, "/missing").unwrap().0, 404);

    // The fixed lines, nginx's and the first counted ones arrive.
    let text = eventually("the access, error and Java records", WAIT, || async {
        let text = adapter_logs(&ns.name, &name, false);
        let all = records(&text);
        let nginx_done = from_file(&all, "/nginx-access.log").len() >= 2
            && from_file(&all, "/nginx-error.log").iter().any(|r| {
                r["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("/srv/www/missing"))
            });
        let done = nginx_done
            && ["/access.log", "/error.log", "/app.log"]
                .iter()
                .all(|file| !from_file(&all, file).is_empty())
            && counted(&text).len() > 300;
        Ok(done.then_some(text))
    })
    .await
    .unwrap();
    let all = records(&text);
    let access = from_file(&all, "/access.log");
    assert_eq!(access.len(), 1, "{access:?}");
    assert_eq!(access[0]["format"], "combined");
    assert_eq!(access[0]["timestamp"], "2026-12-05T22:59:58Z", "read at +01:00");
    assert_eq!(access[0]["level"], "warn", "a 404");
    assert_eq!(access[0]["fields"]["status"], 404);
    let error = from_file(&all, "/error.log");
    assert_eq!(error.len(), 1, "{error:?}");
    assert_eq!(
        (&error[0]["format"], &error[0]["level"]),
        (&json!("nginx_error"), &json!("error"))
    );
    assert_eq!(error[0]["fields"]["client"], "10.1.2.3");
    let nginx_access = from_file(&all, "/nginx-access.log");
    let statuses: Vec<_> = nginx_access
        .iter()
        .map(|r| r["fields"]["status"].clone())
        .collect();
    assert_eq!(statuses, [json!(200), json!(404)], "{nginx_access:?}");
    for record in &nginx_access {
        assert_eq!(record["format"], "combined", "{record}");
        assert!(record.get("parse_error").is_none(), "{record}");
    }
    let nginx_error = from_file(&all, "/nginx-error.log");
    let miss = nginx_error
        .iter()
        .find(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.contains("/srv/www/missing"))
        })
        .unwrap();
    assert_eq!(
        (&miss["format"], &miss["level"]),
        (&json!("nginx_error"), &json!("error")),
        "{miss}"
    );
    assert!(miss.get("parse_error").is_none(), "{miss}");
    let java = from_file(&all, "/app.log");
    assert_eq!(java.len(), 1, "the stack trace joins its log line: {java:?}");
    let message = java[0]["message"].as_str().unwrap();
    assert!(
        message.contains("\tat com.example.Shop.checkout(Shop.java:42)") && message.ends_with("\t... 2 more"),
        "{message}"
    );
    assert_eq!(java[0]["lines"], 7);
    assert_eq!(java[0]["timestamp"], "2026-12-05T22:59:59.250Z");
    assert!(java[0].get("parse_error").is_none(), "{}", java[0]);
    for record in &all {
        let stamp = record["timestamp"].as_str().unwrap();
        assert!(is_rfc3339_utc(stamp), "{stamp} in {record}");
        assert_eq!(record["pod"], name.as_str());
        assert_eq!(record["namespace"], ns.name.as_str());
        assert_eq!(record["node"], node.as_str());
        assert_eq!(record["container"], "app");
        assert_eq!(record["owner"], "ReplicatedService/web");
    }

    // Bad input: handled, flagged, and no crash.
    let huge = from_file(&all, "/huge.log");
    assert!(
        text.contains("after the huge line"),
        "the line after the 10 MB one is read"
    );
    assert!(
        text.lines()
            .any(|line| line.contains("huge.log") && line.contains("\"truncated\":true")),
        "the 10 MB line is cut and flagged: {} records",
        huge.len()
    );
    assert!(
        !from_file(&all, "/garbage.log").is_empty(),
        "binary garbage is passed through escaped"
    );
    assert!(
        text.contains("Cannot read a log file") && text.contains("secret.log"),
        "the unreadable file is reported"
    );
    assert!(
        !text.contains("nobody may read this"),
        "the unreadable file stays unread"
    );
    let deleted = eventually("the file deleted while being read", WAIT, || async {
        let text = adapter_logs(&ns.name, &name, false);
        Ok(text.contains("written after the deletion").then_some(text))
    })
    .await;
    assert!(
        deleted.is_ok(),
        "what was written to the deleted file is read through the open file"
    );
    let (restarts, container) = adapter_status(&pods.get(&name).await.unwrap());
    assert_eq!(restarts, 0, "bad input did not crash the adapter");

    // Killed mid-stream (SIGKILL, no drain), restarted by the kubelet: it resumes at its checkpoint.
    let before = counted(&adapter_logs(&ns.name, &name, false));
    assert!(
        before.len() < COUNTED as usize,
        "the counted stream is still being written"
    );
    let container = container.unwrap();
    docker_ok(&["kill", container.trim_start_matches("docker://")]).unwrap();
    eventually("the adapter restarted", WAIT, || async {
        let pod = pods.get(&name).await?;
        Ok((adapter_status(&pod).0 >= 1).then_some(()))
    })
    .await
    .unwrap();
    let seen = eventually("every counted line after the restart", WAIT, || async {
        let mut seen = counted(&adapter_logs(&ns.name, &name, true));
        seen.extend(counted(&adapter_logs(&ns.name, &name, false)));
        Ok((seen.len() == COUNTED as usize).then_some(seen))
    })
    .await;
    let seen = match seen {
        Ok(seen) => seen,
        Err(error) => {
            let mut seen = counted(&adapter_logs(&ns.name, &name, true));
            seen.extend(counted(&adapter_logs(&ns.name, &name, false)));
            let missing: Vec<u32> = (0..COUNTED).filter(|n| !seen.contains(n)).take(20).collect();
            panic!("{error:#}: missing {missing:?}");
        }
    };
    assert_eq!(seen, (0..COUNTED).collect(), "no line lost across the kill");
    let after = from_file(&records(&adapter_logs(&ns.name, &name, false)), "/access.log").len();
    assert_eq!(
        after, 0,
        "the restart resumed at the checkpoint, not at the files' start"
    );
}

/// Lines of the stream shipped to the HTTP sink, at `RATE` a second: the sink is down for
/// `OUTAGE` in the middle of it.
const SHIPPED: u32 = 6000;
const OUTAGE: Duration = Duration::from_secs(30);

/// `POST path` with an empty body; the status.
fn http_post(address: &str, path: &str) -> anyhow::Result<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&address.parse()?, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: sink\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0))
}

/// `seq` numbers the sink pod printed.
fn shipped(ns: &str) -> BTreeSet<u32> {
    let text = kubectl_ok(&["logs", "-n", ns, "sink"]).unwrap_or_default();
    counted(&text)
}

/// Memory of a container as `docker stats` sees it (its cgroup), in bytes.
fn container_memory(container: &str) -> u64 {
    let usage = docker_ok(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.MemUsage}}",
        container.trim_start_matches("docker://"),
    ])
    .unwrap();
    let used = usage.split('/').next().unwrap().trim();
    let (number, unit) = used.split_at(used.find(|c: char| c.is_ascii_alphabetic()).unwrap());
    let number: f64 = number.parse().unwrap();
    let scale = match unit {
        "B" => 1.0,
        "KiB" | "kB" => 1024.0,
        "MiB" | "MB" => 1024.0 * 1024.0,
        "GiB" | "GB" => 1024.0 * 1024.0 * 1024.0,
        other => panic!("unit {other} in {usage}"),
    };
    (number * scale) as u64
}

/// The log adapter's Events about the ReplicatedService `shipper`: (type, reason, message).
async fn sink_events(events: &Api<Event>) -> Vec<(String, String, String)> {
    events
        .list(
            &ListParams::default()
                .fields("involvedObject.kind=ReplicatedService,involvedObject.name=shipper"),
        )
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.source.as_ref().and_then(|s| s.component.as_deref()) == Some("outrigger-log-adapter"))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_http_sink_down_for_thirty_seconds_loses_no_line_while_memory_stays_bounded() {
    let ns = TestNamespace::create("log-sink").unwrap();
    let client = admin_client().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let _operator = injecting_operator(&ns, &pods).await;

    let testapp = image("OUTRIGGER_TESTAPP_IMAGE", "outrigger/testapp:dev");
    let sink: Pod = serde_json::from_value(json!({
        "metadata": {"name": "sink"},
        "spec": {"containers": [{"name": "sink", "image": testapp, "imagePullPolicy": "Never", "args": ["sink"]}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &sink).await.unwrap();
    let sink_ip = eventually("the sink running", WAIT, || async {
        let pod = pods.get("sink").await?;
        let status = pod.status.unwrap_or_default();
        Ok((status.phase.as_deref() == Some("Running"))
            .then_some(status.pod_ip)
            .flatten())
    })
    .await
    .unwrap();
    let sink_at = format!("{sink_ip}:8080");

    let service: ReplicatedService = serde_json::from_value(json!({
        "apiVersion": "outrigger.dev/v1alpha1", "kind": "ReplicatedService", "metadata": {"name": "shipper"},
        "spec": {
            "replicas": 1,
            "template": {"spec": {"containers": [{
                "name": "app", "image": testapp, "imagePullPolicy": "Never",
                "env": [
                    {"name": "LOG_DIR", "value": "/var/log/outrigger"},
                    {"name": "LOG_LINES", "value": SHIPPED.to_string()},
                    {"name": "LOG_RATE", "value": RATE.to_string()},
                ],
            }]}},
            "sidecars": [{"name": "log-adapter", "settings": {
                "include": "/var/log/outrigger/count.log",
                "sinkUrl": format!("http://{sink_at}/ingest"),
            }}],
        }
    }))
    .unwrap();
    Api::<ReplicatedService>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let pod = ready_pod(&pods, "shipper").await;
    let (_, container) = adapter_status(&pod);
    let container = container.unwrap();

    eventually("the first lines at the sink", WAIT, || async {
        Ok((shipped(&ns.name).len() > 300).then_some(()))
    })
    .await
    .unwrap();
    let baseline = container_memory(&container);
    assert_eq!(
        http_post(&sink_at, &format!("/-/down/{}", OUTAGE.as_secs())).unwrap(),
        200
    );
    let down_at = Instant::now();
    let before = shipped(&ns.name).len();
    let mut peak = baseline;
    while down_at.elapsed() < OUTAGE - Duration::from_secs(2) {
        peak = peak.max(container_memory(&container));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let during = shipped(&ns.name).len();
    assert!(
        during <= before + 4096,
        "the sink was down: {before} lines before, {during} at the end of the outage"
    );
    assert!(
        during < SHIPPED as usize,
        "the stream was still being written during the outage"
    );

    let seen = eventually("every shipped line after the outage", WAIT, || async {
        let seen = shipped(&ns.name);
        Ok((seen.len() == SHIPPED as usize).then_some(seen))
    })
    .await;
    let after = container_memory(&container);
    peak = peak.max(after);
    let seen = match seen {
        Ok(seen) => seen,
        Err(error) => {
            let seen = shipped(&ns.name);
            let missing: Vec<u32> = (0..SHIPPED).filter(|n| !seen.contains(n)).take(20).collect();
            panic!("{error:#}: missing {missing:?}");
        }
    };
    assert_eq!(seen, (0..SHIPPED).collect(), "no line lost across the outage");
    eprintln!("log adapter memory: {baseline} bytes before the outage, peak {peak}, {after} after");
    assert!(
        peak < 40 << 20,
        "memory bounded through the outage: peak {peak} bytes"
    );
    assert_eq!(
        adapter_status(&pods.get(&pod.metadata.name.clone().unwrap()).await.unwrap()).0,
        0
    );

    // The outage and the recovery, as Events on the owning service.
    let reported = eventually("the sink's Events on the service", WAIT, || async {
        let all = sink_events(&events).await;
        let failing = all
            .iter()
            .any(|(t, r, m)| t == "Warning" && r == "LogSinkFailing" && m.contains(&sink_at));
        let recovered = all
            .iter()
            .any(|(t, r, _)| t == "Normal" && r == "LogSinkRecovered");
        Ok((failing && recovered).then_some(all))
    })
    .await;
    assert!(reported.is_ok(), "{:?}", sink_events(&events).await);
    let described = kubectl_ok(&["describe", "replicatedservice", "shipper", "-n", &ns.name]).unwrap();
    assert!(
        described.contains("LogSinkFailing") && described.contains("LogSinkRecovered"),
        "the Events carry the service's UID: {described}"
    );
}
