#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // integration tests fail by panicking

//! The log adapter in a real pod: injected by the operator's webhook next to the test app, it
//! reads the app's files on the shared volume and writes one JSON record per event to its stdout,
//! where `kubectl logs -c log-adapter` shows them. nginx access and error lines and a Java stack
//! trace come out as one record each, stamped in RFC 3339 UTC and enriched with the pod, namespace,
//! node, container and owning service; binary garbage, a 10 MB line, a file deleted while being
//! read and an unreadable file do not stop it; killed (SIGKILL) mid-stream and restarted by the
//! kubelet, it loses no line of a counted stream.
//!
//! Needs the images `outrigger/log-adapter:dev` and `outrigger/testapp:dev` built from this tree:
//! `OUTRIGGER_IMAGE_PROFILE=image-test hack/images.sh log-adapter testapp`. Other tags (when other
//! trees build `:dev` too): `OUTRIGGER_LOG_ADAPTER_IMAGE`, `OUTRIGGER_TESTAPP_IMAGE`.

use std::{collections::BTreeSet, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use outrigger_api::ReplicatedService;
use outrigger_tests::{
    admin_client, docker_ok, dry_run, eventually, kubectl_ok, TestNamespace, WebhookOperator,
};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);
/// Lines of the counted stream, written at `RATE` a second: long enough to kill the adapter in the
/// middle of it.
const COUNTED: u32 = 3000;
const RATE: u32 = 100;

fn image(variable: &str, default: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| default.to_owned())
}

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

async fn ready_pod(pods: &Api<Pod>) -> Pod {
    eventually("a ready pod with the log adapter", WAIT, || async {
        let list = pods
            .list(&ListParams::default().labels("outrigger.dev/replicatedservice=web"))
            .await?;
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

#[tokio::test]
async fn app_logs_come_out_as_one_utc_record_per_event_and_survive_bad_input_and_a_kill() {
    let ns = TestNamespace::create("log-adapter").unwrap();
    let _operator = WebhookOperator::start(
        &ns,
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
    let client = admin_client().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
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

    let testapp = image("OUTRIGGER_TESTAPP_IMAGE", "outrigger/testapp:dev");
    let service: ReplicatedService = serde_json::from_value(json!({
        "apiVersion": "outrigger.dev/v1alpha1", "kind": "ReplicatedService", "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "template": {"spec": {"containers": [{
                "name": "app", "image": testapp, "imagePullPolicy": "Never",
                "env": [
                    {"name": "LOG_DIR", "value": "/var/log/outrigger"},
                    {"name": "LOG_BAD", "value": "1"},
                    {"name": "LOG_LINES", "value": COUNTED.to_string()},
                    {"name": "LOG_RATE", "value": RATE.to_string()},
                ],
            }]}},
            "sidecars": [{"name": "log-adapter"}],
        }
    }))
    .unwrap();
    Api::<ReplicatedService>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let pod = ready_pod(&pods).await;
    let name = pod.metadata.name.clone().unwrap();
    let node = pod.spec.as_ref().unwrap().node_name.clone().unwrap();

    // The fixed lines and the first counted ones arrive.
    let text = eventually("the access, error and Java records", WAIT, || async {
        let text = adapter_logs(&ns.name, &name, false);
        let all = records(&text);
        let done = ["/access.log", "/error.log", "/app.log"]
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
