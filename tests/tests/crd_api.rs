#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // integration tests fail by panicking

//! The CRDs on a real API server: valid objects are accepted (with defaults filled in), invalid ones
//! are rejected with a message naming the field, `kubectl explain`, `get` and `scale` work.

use std::time::Duration;

use kube::{
    api::{Api, DynamicObject, PostParams},
    core::{ApiResource, GroupVersionKind},
};
use outrigger_tests::{
    admin_client, ensure_crds, eventually, example, kubectl_ok, merge_patch, TestNamespace,
};
use serde_json::{json, Value};

fn api_resource(kind: &str) -> ApiResource {
    let plural = match kind {
        "ReplicatedService" => "replicatedservices",
        "ShardedService" => "shardedservices",
        "AutoscalingPolicy" => "autoscalingpolicies",
        "RolloutStrategy" => "rolloutstrategies",
        other => panic!("unknown kind {other}"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("outrigger.dev", "v1alpha1", kind), plural)
}

fn example_file(kind: &str) -> &'static str {
    match kind {
        "ReplicatedService" => "replicatedservice.yaml",
        "ShardedService" => "shardedservice.yaml",
        "AutoscalingPolicy" => "autoscalingpolicy.yaml",
        "RolloutStrategy" => "rolloutstrategy.yaml",
        other => panic!("unknown kind {other}"),
    }
}

async fn create(namespace: &str, object: &Value) -> Result<DynamicObject, kube::Error> {
    let kind = object["kind"].as_str().unwrap_or_default();
    let client = admin_client().await.expect("client");
    let api: Api<DynamicObject> = Api::namespaced_with(client, namespace, &api_resource(kind));
    let object: DynamicObject = serde_json::from_value(object.clone()).expect("object");
    api.create(&PostParams::default(), &object).await
}

#[tokio::test]
async fn every_example_is_accepted_and_defaults_are_filled_in() {
    ensure_crds().unwrap();
    let namespace = TestNamespace::create("crd-valid").unwrap();
    for kind in [
        "ReplicatedService",
        "ShardedService",
        "AutoscalingPolicy",
        "RolloutStrategy",
    ] {
        let object = example(example_file(kind)).unwrap();
        let created = create(&namespace.name, &object)
            .await
            .unwrap_or_else(|error| panic!("{kind} example rejected: {error}"));
        let spec = &created.data["spec"];
        match kind {
            "ReplicatedService" => assert_eq!(spec["sessionAffinity"]["virtualNodes"], json!(160)),
            "ShardedService" => assert_eq!(spec["sharding"]["virtualNodes"], json!(160)),
            "AutoscalingPolicy" => {
                assert_eq!(
                    spec["scaleTargetRef"]["apiVersion"],
                    json!("outrigger.dev/v1alpha1")
                );
                assert_eq!(spec["behavior"]["scaleDown"]["selectPolicy"], json!("Max"));
            }
            "RolloutStrategy" => {
                let analysis = &spec["strategy"]["canary"]["steps"][1]["analysis"];
                assert_eq!(analysis["failureLimit"], json!(1));
                assert_eq!(analysis["minRequestCount"], json!(20));
                assert_eq!(spec["strategy"]["canary"]["scaleDownDelaySeconds"], json!(30));
            }
            _ => unreachable!(),
        }
    }
}

/// One invalid object: the example of `kind` with `patch` merged in, and the text the API server's
/// rejection must contain (the field path, and what is wrong with it).
struct Invalid {
    kind: &'static str,
    patch: Value,
    expected: &'static [&'static str],
}

fn invalid_objects() -> Vec<Invalid> {
    let rsvc = "ReplicatedService";
    let shsvc = "ShardedService";
    let asp = "AutoscalingPolicy";
    let rost = "RolloutStrategy";
    vec![
        Invalid {
            kind: rsvc,
            patch: json!({"spec": {"replicas": -1}}),
            expected: &["spec.replicas", "greater than or equal to 0"],
        },
        Invalid {
            kind: rsvc,
            patch: json!({"spec": {"replicas": "three"}}),
            expected: &["spec.replicas", "must be of type integer"],
        },
        Invalid {
            kind: rsvc,
            patch: json!({"spec": {"template": null}}),
            expected: &["spec.template", "Required"],
        },
        Invalid {
            kind: rsvc,
            patch: json!({"spec": {"ports": [{"name": "http", "port": 70000}]}}),
            expected: &["spec.ports.port", "less than or equal to 65535"],
        },
        Invalid {
            kind: rsvc,
            patch: json!({"spec": {"ports": [{"name": "Not_A_Label", "port": 80}]}}),
            expected: &["spec.ports.name"],
        },
        Invalid {
            kind: rsvc,
            patch: json!({"spec": {"sessionAffinity": {"source": "cookiez"}}}),
            expected: &["spec.sessionAffinity.source", "Unsupported value", "cookiez"],
        },
        Invalid {
            kind: rsvc,
            patch: json!({"spec": {"sidecars": [{"name": "teleporter"}]}}),
            expected: &["spec.sidecars.name", "Unsupported value", "teleporter"],
        },
        Invalid {
            kind: rsvc,
            patch: json!({"spec": {"readiness": {"port": 8080, "periodSeconds": 0}}}),
            expected: &["spec.readiness.periodSeconds", "greater than or equal to 1"],
        },
        Invalid {
            kind: rsvc,
            patch: json!({"spec": {"readiness": {"port": 8080, "httpPath": "healthz"}}}),
            expected: &["spec.readiness.httpPath"],
        },
        Invalid {
            kind: rsvc,
            patch: json!({"spec": {"rolloutStrategyRef": {"name": ""}}}),
            expected: &["spec.rolloutStrategyRef.name"],
        },
        Invalid {
            kind: shsvc,
            patch: json!({"spec": {"shards": 0}}),
            expected: &["spec.shards", "greater than or equal to 1"],
        },
        Invalid {
            kind: shsvc,
            patch: json!({"spec": {"protocol": "memcache"}}),
            expected: &["spec.protocol", "Unsupported value", "memcache"],
        },
        Invalid {
            kind: shsvc,
            patch: json!({"spec": {"replicasPerShard": 0}}),
            expected: &["spec.replicasPerShard", "greater than or equal to 1"],
        },
        Invalid {
            kind: shsvc,
            patch: json!({"spec": {"sharding": {"function": "modulo"}}}),
            expected: &["spec.sharding.function", "Unsupported value", "modulo"],
        },
        Invalid {
            kind: shsvc,
            patch: json!({"spec": {"sharding": {"hashTag": "{"}}}),
            expected: &["spec.sharding.hashTag"],
        },
        Invalid {
            kind: shsvc,
            patch: json!({"spec": {"storage": {"size": "lots", "mountPath": "/data"}}}),
            expected: &["spec.storage.size"],
        },
        Invalid {
            kind: asp,
            patch: json!({"spec": {"metrics": []}}),
            expected: &["spec.metrics", "at least 1 items"],
        },
        Invalid {
            kind: asp,
            patch: json!({"spec": {"maxReplicas": 0}}),
            expected: &["spec.maxReplicas", "greater than or equal to 1"],
        },
        Invalid {
            kind: asp,
            patch: json!({"spec": {"metrics": [{"type": "vibes", "target": {"type": "Value", "value": "1"}}]}}),
            expected: &["spec.metrics.type", "Unsupported value", "vibes"],
        },
        Invalid {
            kind: asp,
            patch: json!({"spec": {"metrics": [{"type": "latency", "percentile": 100, "target": {"type": "Value", "value": "1"}}]}}),
            expected: &["spec.metrics.percentile", "less than or equal to 99"],
        },
        Invalid {
            kind: asp,
            patch: json!({"spec": {"behavior": {"scaleUp": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 5000}]}}}}),
            expected: &[
                "spec.behavior.scaleUp.policies.periodSeconds",
                "less than or equal to 1800",
            ],
        },
        Invalid {
            kind: rost,
            patch: json!({"spec": {"strategy": {"canary": {"steps": []}}}}),
            expected: &["spec.strategy.canary.steps", "at least 1 items"],
        },
        Invalid {
            kind: rost,
            patch: json!({"spec": {"strategy": {"canary": {"steps": [{"setWeight": 150}]}}}}),
            expected: &[
                "spec.strategy.canary.steps.setWeight",
                "less than or equal to 100",
            ],
        },
        Invalid {
            kind: rost,
            patch: json!({"spec": {"strategy": {"canary": {"steps": [{"setWeight": -5}]}}}}),
            expected: &[
                "spec.strategy.canary.steps.setWeight",
                "greater than or equal to 0",
            ],
        },
        Invalid {
            kind: rost,
            patch: json!({"spec": {"strategy": {"canary": {"steps": [{"setWeight": 10, "pause": {}}]}}}}),
            expected: &["spec.strategy.canary.steps", "one and only one"],
        },
        Invalid {
            kind: rost,
            patch: json!({"spec": {"strategy": {"canary": {"steps": [{"pause": {"duration": "soon"}}]}}}}),
            expected: &["spec.strategy.canary.steps.pause.duration"],
        },
        Invalid {
            kind: rost,
            patch: json!({"spec": {"strategy": {"blueGreen": {"autoPromotion": true}}}}),
            expected: &["spec.strategy", "one and only one"],
        },
        Invalid {
            kind: rost,
            patch: json!({"spec": {"strategy": {"canary": {"steps": [{"analysis": {"metrics": [{"name": "x", "type": "vibes"}]}}]}}}}),
            expected: &[
                "spec.strategy.canary.steps.analysis.metrics.type",
                "Unsupported value",
            ],
        },
    ]
}

#[tokio::test]
async fn invalid_objects_are_rejected_with_a_message_naming_the_field() {
    ensure_crds().unwrap();
    let namespace = TestNamespace::create("crd-invalid").unwrap();
    let cases = invalid_objects();
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        let mut object = example(example_file(case.kind)).unwrap();
        object["metadata"]["name"] = json!(format!("invalid-{index}"));
        merge_patch(&mut object, &case.patch);
        match create(&namespace.name, &object).await {
            Ok(_) => failures.push(format!(
                "case {index} ({} {}) was accepted",
                case.kind, case.patch
            )),
            Err(kube::Error::Api(status)) => {
                let missing: Vec<_> = case
                    .expected
                    .iter()
                    .filter(|text| !status.message.contains(*text))
                    .collect();
                if status.code != 422 || !missing.is_empty() {
                    failures.push(format!(
                        "case {index} ({}): code {} message {:?} lacks {missing:?}",
                        case.kind, status.code, status.message
                    ));
                }
            }
            Err(other) => failures.push(format!("case {index}: unexpected error {other}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn kubectl_explain_shows_the_field_descriptions() {
    ensure_crds().unwrap();
    let expectations = [
        ("replicatedservices.spec", "Number of replicas"),
        ("replicatedservices.spec.sessionAffinity", "virtualNodes"),
        ("shardedservices.spec", "Number of shards"),
        ("shardedservices.spec.sharding", "ketama"),
        ("autoscalingpolicies.spec", "Fewest replicas"),
        ("autoscalingpolicies.spec.behavior.scaleDown", "stabilization"),
        ("rolloutstrategies.spec.strategy.canary", "Steps run in order"),
        ("rolloutstrategies.spec.strategy.canary.steps", "setWeight"),
    ];
    for (field, text) in expectations {
        // The API server republishes its OpenAPI document a few seconds after CRDs change.
        eventually(
            &format!("kubectl explain {field}"),
            Duration::from_secs(60),
            || async move {
                let output = kubectl_ok(&["explain", field])?;
                Ok(output.contains(text).then_some(()))
            },
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn kubectl_get_by_short_name_shows_the_columns_and_scale_works() {
    ensure_crds().unwrap();
    let namespace = TestNamespace::create("crd-columns").unwrap();
    create(&namespace.name, &example("replicatedservice.yaml").unwrap())
        .await
        .unwrap();
    create(&namespace.name, &example("shardedservice.yaml").unwrap())
        .await
        .unwrap();
    create(&namespace.name, &example("autoscalingpolicy.yaml").unwrap())
        .await
        .unwrap();
    create(&namespace.name, &example("rolloutstrategy.yaml").unwrap())
        .await
        .unwrap();

    let rsvc = kubectl_ok(&["get", "rsvc", "-n", &namespace.name]).unwrap();
    let header: Vec<&str> = rsvc.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "DESIRED", "READY", "STATUS", "ROLLOUT", "CANARY%", "AGE"],
        "{rsvc}"
    );
    assert!(rsvc.lines().nth(1).unwrap().starts_with("web "), "{rsvc}");

    let shsvc = kubectl_ok(&["get", "shsvc", "-n", &namespace.name]).unwrap();
    assert!(shsvc.starts_with("NAME"), "{shsvc}");
    assert!(shsvc.contains("PROTOCOL") && shsvc.contains("redis"), "{shsvc}");
    let asp = kubectl_ok(&["get", "asp", "-n", &namespace.name]).unwrap();
    assert!(asp.contains("TARGET") && asp.contains("web"), "{asp}");
    let rost = kubectl_ok(&["get", "rost", "-n", &namespace.name]).unwrap();
    assert!(rost.contains("progressive"), "{rost}");
    let all = kubectl_ok(&["get", "outrigger", "-n", &namespace.name, "-o", "name"]).unwrap();
    assert_eq!(
        all.lines().count(),
        4,
        "the `outrigger` category lists every kind: {all}"
    );

    kubectl_ok(&["scale", "rsvc", "web", "--replicas=5", "-n", &namespace.name]).unwrap();
    let replicas = kubectl_ok(&[
        "get",
        "rsvc",
        "web",
        "-n",
        &namespace.name,
        "-o",
        "jsonpath={.spec.replicas}",
    ])
    .unwrap();
    assert_eq!(replicas, "5");
    kubectl_ok(&["scale", "shsvc", "cache", "--replicas=4", "-n", &namespace.name]).unwrap();
    let shards = kubectl_ok(&[
        "get",
        "shsvc",
        "cache",
        "-n",
        &namespace.name,
        "-o",
        "jsonpath={.spec.shards}",
    ])
    .unwrap();
    assert_eq!(shards, "4");
}
