#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // integration tests fail by panicking

//! A real Redis pod with the metrics and health adapters as sidecars, injected by the webhook's
//! own `mutate` (the health adapter asked to answer the Redis container's probes): the test scrapes
//! the metrics adapter by pod IP, stalls Redis with `DEBUG SLEEP`, and sees the pod turn unready
//! and ready again while liveness never fails.
//!
//! Needs the images `outrigger/metrics-adapter:dev` and `outrigger/health-adapter:dev`
//! (`OUTRIGGER_IMAGE_PROFILE=image-test hack/images.sh metrics-adapter health-adapter`) and
//! `outrigger/redis:dev`.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use outrigger_api::common::SidecarKind;
use outrigger_core::inject::{mutate, Plan, SidecarToInject};
use outrigger_tests::{admin_client, eventually, http_get_from, TestNamespace};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(180);

fn redis_pod() -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "redis", "labels": {"app": "redis"}},
        "spec": {
            "containers": [{
                "name": "redis",
                "image": "outrigger/redis:dev",
                "imagePullPolicy": "Never",
                // DEBUG is off by default in Redis 7; the test stalls Redis with DEBUG SLEEP.
                "args": ["--bind", "0.0.0.0", "--protected-mode", "no", "--dir", "/data", "--save", "",
                         "--appendonly", "no", "--enable-debug-command", "yes"],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    }))
    .unwrap()
}

fn sidecar(kind: SidecarKind, settings: serde_json::Value) -> SidecarToInject {
    SidecarToInject {
        kind,
        image: format!("outrigger/{kind}:dev"),
        resources: None,
        settings: serde_json::from_value::<BTreeMap<String, String>>(settings).unwrap(),
    }
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |statuses| statuses.iter().map(|c| c.restart_count).sum())
}

/// Sends one RESP command and waits up to `wait` for the reply.
fn redis_command(address: &str, args: &[&str], wait: Duration) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address.parse()?, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(wait))?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes())?;
    let mut reply = vec![0; 4096];
    let read = stream.read(&mut reply)?;
    Ok(String::from_utf8_lossy(&reply[..read]).into_owned())
}

#[tokio::test]
async fn redis_with_metrics_and_health_adapters_turns_unready_while_stalled_and_is_never_restarted() {
    let namespace = TestNamespace::create("adapters").unwrap();
    let client = admin_client().await.unwrap();
    let checks = json!([
        {"name": "redis-port", "type": "tcp", "address": "127.0.0.1:6379", "probes": ["liveness", "startup"],
         "intervalMs": 500},
        {"name": "redis", "type": "redis", "address": "127.0.0.1:6379", "intervalMs": 500, "timeoutMs": 500,
         "failureThreshold": 2},
    ]);
    let plan = Plan {
        sidecars: vec![
            sidecar(
                SidecarKind::MetricsAdapter,
                json!({"redis": "127.0.0.1:6379", "scrapeBudgetMs": "1000"}),
            ),
            sidecar(
                SidecarKind::HealthAdapter,
                json!({"probeApp": "true", "checks": checks.to_string()}),
            ),
        ],
        config_map: None,
        native_sidecars: false,
    };
    let pod = mutate(&redis_pod(), &plan).unwrap();
    let pods: Api<Pod> = Api::namespaced(client, &namespace.name);
    pods.create(&PostParams::default(), &pod).await.unwrap();

    let ip = eventually("the pod ready", WAIT, || {
        let pods = pods.clone();
        async move {
            let pod = pods.get("redis").await?;
            Ok(pod_ready(&pod)
                .then(|| pod.status.and_then(|s| s.pod_ip))
                .flatten())
        }
    })
    .await
    .unwrap();
    let redis = format!("{ip}:6379");
    for i in 0..100 {
        redis_command(&redis, &["SET", &format!("key{i}"), "v"], Duration::from_secs(5)).unwrap();
    }

    let (status, metrics) = http_get_from(&format!("{ip}:9905"), "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.lines().any(|l| l == "redis_up 1"), "{metrics}");
    assert!(
        metrics.lines().any(|l| l == "redis_db_keys{db=\"db0\"} 100"),
        "{metrics}"
    );
    assert!(metrics.contains("redis_connected_clients "), "{metrics}");

    // The health adapter may have seen Redis fail while the pod started (it starts first).
    let failing = |metrics: &str| {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix("health_adapter_check_transitions_total{check=\"redis\",to=\"failing\"} ")
            })
            .map_or(0, |v| v.parse::<u32>().unwrap())
    };
    let failing_before = failing(&http_get_from(&format!("{ip}:9906"), "/metrics").unwrap().1);

    // Redis stops answering for 12 seconds: readiness must fail, liveness must not.
    let stall = redis.clone();
    let sleeper =
        std::thread::spawn(move || redis_command(&stall, &["DEBUG", "SLEEP", "12"], Duration::from_secs(30)));
    let started = Instant::now();
    let mut saw_unready = false;
    while started.elapsed() < Duration::from_secs(11) {
        let (live, _) = http_get_from(&format!("{ip}:9926"), "/livez").unwrap();
        assert_eq!(
            live,
            200,
            "liveness failed {:?} into the stall",
            started.elapsed()
        );
        saw_unready |= !pod_ready(&pods.get("redis").await.unwrap());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(sleeper.join().unwrap().unwrap(), "+OK\r\n");
    assert!(saw_unready, "the pod stayed ready while Redis did not answer");

    eventually("the pod ready again", Duration::from_secs(60), || {
        let pods = pods.clone();
        async move { Ok(pod_ready(&pods.get("redis").await?).then_some(())) }
    })
    .await
    .unwrap();
    assert_eq!(
        restarts(&pods.get("redis").await.unwrap()),
        0,
        "no container was restarted"
    );
    let (_, health) = http_get_from(&format!("{ip}:9906"), "/metrics").unwrap();
    assert_eq!(
        failing(&health),
        failing_before + 1,
        "one transition to failing: {health}"
    );
}
