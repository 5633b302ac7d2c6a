#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // integration tests fail by panicking

//! A real Redis pod with the metrics and health adapters as sidecars, injected by the webhook's
//! own `mutate` (the health adapter asked to answer the Redis container's probes): the test scrapes
//! the metrics adapter by pod IP, stalls Redis with `DEBUG SLEEP`, and sees the pod turn unready
//! and ready again while liveness never fails. The health adapter reports both transitions as
//! Events on the pod's owning ReplicatedService, where `kubectl describe` shows them.
//!
//! The pod is made here rather than by an operator: it carries the labels of a ReplicatedService
//! created without an operator, and injection's plan its UID, so injection names the owner as it
//! does for a service's pods; the test grants the Role the operator gives a service's pods (Events
//! created and patched by their ServiceAccount).
//!
//! Needs the images `outrigger/metrics-adapter:dev` and `outrigger/health-adapter:dev`
//! (`OUTRIGGER_IMAGE_PROFILE=image-test hack/images.sh metrics-adapter health-adapter`) and
//! `outrigger/redis:dev`; other tags through `OUTRIGGER_HEALTH_ADAPTER_IMAGE` and
//! `OUTRIGGER_METRICS_ADAPTER_IMAGE`.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::{Event, Pod},
    jiff::Timestamp,
};
use kube::api::{Api, ListParams, PostParams};
use outrigger_api::{common::SidecarKind, ReplicatedService};
use outrigger_core::{
    inject::{mutate, Plan, SidecarToInject},
    labels,
};
use outrigger_tests::{
    admin_client, ensure_crds, eventually, http_get_from, kubectl_ok, kubectl_stdin, TestNamespace,
};
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
    let variable = format!(
        "OUTRIGGER_{}_IMAGE",
        kind.to_string().to_uppercase().replace('-', "_")
    );
    SidecarToInject {
        kind,
        image: std::env::var(variable).unwrap_or_else(|_| format!("outrigger/{kind}:dev")),
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

/// What the operator grants a service's pods: Events written by their sidecars.
fn allow_events(namespace: &str) {
    let rbac = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "sidecar-events", "namespace": namespace},
         "rules": [{"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "sidecar-events", "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "sidecar-events"},
         "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": namespace}]},
    ]});
    let output = kubectl_stdin(&["apply", "-f", "-"], &rbac.to_string()).unwrap();
    assert!(output.status.success(), "{output:?}");
}

/// The health adapter's Events about the ReplicatedService `redis`.
async fn owner_events(events: &Api<Event>) -> Vec<Event> {
    events
        .list(
            &ListParams::default().fields("involvedObject.kind=ReplicatedService,involvedObject.name=redis"),
        )
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.source.as_ref().and_then(|s| s.component.as_deref()) == Some("outrigger-health-adapter")
        })
        .collect()
}

fn last_seen(event: &Event) -> Option<Timestamp> {
    event.last_timestamp.as_ref().map(|time| time.0)
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
        owner_uid: None,
    };
    ensure_crds().unwrap();
    let service: ReplicatedService = serde_json::from_value(json!({
        "apiVersion": "outrigger.dev/v1alpha1", "kind": "ReplicatedService", "metadata": {"name": "redis"},
        "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "redis", "image": "outrigger/redis:dev"}]}}},
    }))
    .unwrap();
    let service = Api::<ReplicatedService>::namespaced(client.clone(), &namespace.name)
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let uid = service.metadata.uid.clone().unwrap();
    allow_events(&namespace.name);
    let plan = Plan {
        owner_uid: Some(uid.clone()),
        ..plan
    };
    let mut owned = redis_pod();
    owned.metadata.labels.get_or_insert_with(Default::default).extend(
        [
            (labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
            (labels::REPLICATED_SERVICE, "redis"),
        ]
        .map(|(key, value)| (key.to_owned(), value.to_owned())),
    );
    let pod = mutate(&owned, &plan).unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), &namespace.name);
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
    let stalled_at = Timestamp::now();
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

    // The stall and the recovery, as Events on the owning service.
    let reported = eventually("a Warning and a Normal Event on the service", WAIT, || {
        let events = events.clone();
        async move {
            let all = owner_events(&events).await;
            let warning = all.iter().find(|e| {
                e.type_.as_deref() == Some("Warning")
                    && e.reason.as_deref() == Some("ReadinessFailing")
                    && e.message
                        .as_deref()
                        .is_some_and(|m| m.contains("check redis: timed out"))
            });
            let recovered = all.iter().find(|e| {
                e.type_.as_deref() == Some("Normal")
                    && e.reason.as_deref() == Some("ReadinessRecovered")
                    && last_seen(e) >= Some(stalled_at)
            });
            Ok(warning.cloned().zip(recovered.cloned()))
        }
    })
    .await;
    let (warning, recovered) = match reported {
        Ok(found) => found,
        Err(error) => panic!("{error:#}: {:#?}", owner_events(&events).await),
    };
    assert_eq!(
        warning.message.as_deref(),
        Some("pod redis: readiness failing: check redis: timed out")
    );
    for event in [&warning, &recovered] {
        let object = &event.involved_object;
        assert_eq!(
            (object.api_version.as_deref(), object.uid.as_deref()),
            (Some("outrigger.dev/v1alpha1"), Some(uid.as_str()))
        );
        assert_eq!(
            event.reporting_component.as_deref(),
            Some("outrigger-health-adapter")
        );
        assert_eq!(event.reporting_instance.as_deref(), Some("redis"));
    }
    let described = kubectl_ok(&["describe", "replicatedservice", "redis", "-n", &namespace.name]).unwrap();
    assert!(
        described.contains("ReadinessFailing") && described.contains("ReadinessRecovered"),
        "{described}"
    );
    let (_, health) = http_get_from(&format!("{ip}:9906"), "/metrics").unwrap();
    assert!(
        !health.contains("health_adapter_events_written_total{result=\"forbidden\"}"),
        "{health}"
    );
}
