#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Every document the operator's builders write is accepted by the reader on the other side: the
//! splitter's configuration through the splitter's own ConfigMap and file paths (parse, merge,
//! validate, compile), the shard map and the sidecars' document through the contract's parser. The reader must get back
//! exactly what the builder built, so a field spelt differently on one side fails here.
//!
//! The operator may depend on a sidecar for its tests; a sidecar never depends on the operator.

use std::{collections::BTreeSet, path::PathBuf};

use k8s_openapi::{api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::OwnerReference};
use outrigger_api::{common::SessionAffinity, rollout::CanaryStrategy, ReplicatedService, ShardedService};
use outrigger_contract::{
    json::merge_patch,
    shard_map::{ShardMap, SHARD_MAP_KEY},
    sidecars::{SidecarsConfig, SIDECARS_CONFIG_KEY},
    splitter::SplitterConfig,
    ApiVersion,
};
use outrigger_core::{
    canary::{self, Traffic, SPLITTER_CONFIG_KEY},
    owner::Owner,
    replicated::{self, PdbApi},
    sharded,
};
use outrigger_request_splitter::{
    metrics::Metrics,
    store::{Applied, ConfigStore},
};
use outrigger_sidecar_runtime::{
    apiserver::{self, ObjectRef},
    config::{configmap::ConfigMapLayer, file::FileLayer},
};
use prometheus_client::registry::Registry;
use serde_json::{json, Value};

fn owner() -> Owner {
    Owner {
        name: "web".to_owned(),
        namespace: "shop".to_owned(),
        reference: OwnerReference {
            api_version: "outrigger.dev/v1alpha1".to_owned(),
            kind: "ReplicatedService".to_owned(),
            name: "web".to_owned(),
            uid: "u-1".to_owned(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        },
    }
}

fn store() -> ConfigStore {
    ConfigStore::new(Metrics::register(&mut Registry::default()))
}

/// What the splitter in front of a service reads: the ConfigMap the operator applies, as the
/// splitter's watch decodes it, applied the way the watch applies it.
fn read_by_the_splitter(config_map: &ConfigMap) -> SplitterConfig {
    let store = store();
    let object: apiserver::ConfigMap =
        serde_json::from_value(serde_json::to_value(config_map).unwrap()).unwrap();
    let reference: ObjectRef = "shop/web-splitter".parse().unwrap();
    let layer = ConfigMapLayer::new(store.source().clone(), reference, SPLITTER_CONFIG_KEY.to_owned());
    let applied = layer.apply(&object);
    assert!(
        matches!(applied, Ok(Applied::Changed { .. })),
        "the splitter refused the operator's document: {applied:?}\n{}",
        config_map.data.as_ref().unwrap()[SPLITTER_CONFIG_KEY]
    );
    store.current().unwrap().config.clone()
}

struct TrafficCase {
    name: &'static str,
    canary: bool,
    weight: i32,
    mirror: i32,
    routes: Value,
    affinity: Option<Value>,
}

fn traffic_cases() -> Vec<TrafficCase> {
    let case = |name, canary, weight, mirror, routes, affinity| TrafficCase {
        name,
        canary,
        weight,
        mirror,
        routes,
        affinity,
    };
    let header_exact =
        json!([{"name": "testers", "match": {"header": {"name": "x-canary", "exact": "always"}}}]);
    let header_regex =
        json!([{"name": "beta", "match": {"header": {"name": "x-user-group", "regex": "beta-[0-9]+"}}}]);
    let cookie_exact = json!([{"name": "opt-in", "match": {"cookie": {"name": "canary", "exact": "yes"}}}]);
    let cookie_regex =
        json!([{"name": "staff", "match": {"cookie": {"name": "team", "regex": "(ops|dev)"}}}]);
    let presence = json!([{"name": "debug", "match": {"header": {"name": "x-debug"}}}]);
    let several = json!([
        {"name": "testers", "match": {"header": {"name": "x-canary", "exact": "always"}}},
        {"name": "staff", "match": {"cookie": {"name": "team", "regex": "(ops|dev)"}}},
    ]);
    let header = json!({"source": "header", "name": "x-user"});
    let cookie = json!({"source": "cookie", "name": "session", "virtualNodes": 40});
    let source_ip = json!({"source": "sourceIP"});
    vec![
        case("no canary", false, 0, 0, json!([]), None),
        case(
            "no canary yet, weight, mirror and routes wait for it",
            false,
            30,
            10,
            header_exact.clone(),
            None,
        ),
        case("canary at its first weight", true, 10, 0, json!([]), None),
        case("canary with no weight yet", true, 0, 0, json!([]), None),
        case("canary with all the weight", true, 100, 0, json!([]), None),
        case("header route, exact", true, 10, 0, header_exact, None),
        case("header route, regex", true, 10, 0, header_regex, None),
        case("cookie route, exact", true, 10, 0, cookie_exact, None),
        case("cookie route, regex", true, 10, 0, cookie_regex, None),
        case("header route on presence", true, 10, 0, presence, None),
        case("mirroring without weight", true, 0, 20, json!([]), None),
        case("mirroring everything", true, 50, 100, json!([]), None),
        case("header affinity", true, 25, 0, json!([]), Some(header)),
        case("cookie affinity", true, 25, 0, json!([]), Some(cookie.clone())),
        case(
            "source IP affinity",
            true,
            25,
            0,
            json!([]),
            Some(source_ip.clone()),
        ),
        case(
            "source IP affinity without a canary",
            false,
            0,
            0,
            json!([]),
            Some(source_ip),
        ),
        case("everything at once", true, 40, 5, several, Some(cookie)),
    ]
}

#[test]
fn every_traffic_state_the_operator_writes_is_read_back_unchanged_by_the_splitter() {
    for case in traffic_cases() {
        let strategy: CanaryStrategy =
            serde_json::from_value(json!({"steps": [{"setWeight": 10}], "routes": case.routes})).unwrap();
        let affinity: Option<SessionAffinity> = case.affinity.map(|a| serde_json::from_value(a).unwrap());
        let built = canary::splitter_config(&Traffic {
            stable_endpoint: "10.96.0.5:80".to_owned(),
            canary_endpoint: case.canary.then(|| "10.96.0.6:80".to_owned()),
            canary_weight: case.weight,
            mirror_percent: case.mirror,
            strategy: &strategy,
            affinity: affinity.as_ref(),
        });
        let config_map = canary::splitter_config_map(&owner(), &built);
        let written: Value =
            serde_json::from_str(&config_map.data.as_ref().unwrap()[SPLITTER_CONFIG_KEY]).unwrap();
        assert_eq!(written["apiVersion"], "outrigger.dev/v1alpha1", "{}", case.name);
        assert_eq!(read_by_the_splitter(&config_map), built, "{}", case.name);
    }
}

#[test]
fn the_splitter_in_front_of_a_service_scaled_to_zero_reads_its_hold_settings_back_unchanged() {
    let mut built = canary::stable_splitter_config("10.96.0.5:80", None);
    built.hold = Some(outrigger_core::replicated::HoldConfig::default());
    let config_map = canary::splitter_config_map(&owner(), &built);
    assert_eq!(read_by_the_splitter(&config_map), built);
}

#[test]
fn the_edge_settings_of_a_spec_are_read_back_unchanged_by_the_splitter() {
    // Per-pod affinity (EndpointSlice discovery on each track) and rate limits divided among the
    // splitter replicas, on top of a rollout's two tracks.
    let rsvc = replicated_service(json!({
        "ports": [{"name": "http", "port": 80}],
        "sessionAffinity": {"source": "header", "name": "x-user", "virtualNodes": 100},
        "rateLimits": {
            "key": {"source": "cookie", "name": "sid"},
            "identityHeader": "x-api-key",
            "anonymous": {"requests": 3, "burst": 5},
            "identified": {"requests": 100, "period": "1m"},
            "routes": [{"pathPrefix": "/search", "anonymous": {"requests": 1}}],
            "maxKeys": 5000,
        },
    }));
    let strategy: CanaryStrategy = serde_json::from_value(json!({"steps": [{"setWeight": 10}]})).unwrap();
    let mut built = canary::splitter_config(&Traffic {
        stable_endpoint: "10.96.0.5:80".to_owned(),
        canary_endpoint: Some("10.96.0.6:80".to_owned()),
        canary_weight: 10,
        mirror_percent: 0,
        strategy: &strategy,
        affinity: rsvc.spec.session_affinity.as_ref(),
    });
    outrigger_core::edge::apply_to_splitter_config(&mut built, "shop", "web", &rsvc.spec, 2);
    assert!(built.rate_limits.is_some() && built.backends.iter().all(|b| b.discovery.is_some()));
    let config_map = canary::splitter_config_map(&owner(), &built);
    assert_eq!(read_by_the_splitter(&config_map), built);
}

fn replicated_service(spec: Value) -> ReplicatedService {
    let mut full = json!({
        "replicas": 2,
        "template": {"spec": {"containers": [{"name": "app", "image": "app:1", "ports": [{"containerPort": 9000}]}]}},
    });
    merge_patch(&mut full, &spec);
    serde_json::from_value(json!({
        "apiVersion": "outrigger.dev/v1alpha1", "kind": "ReplicatedService",
        "metadata": {"name": "web", "namespace": "shop", "uid": "u-1"},
        "spec": full,
    }))
    .unwrap()
}

#[test]
fn the_injected_splitters_file_is_read_back_unchanged_by_the_splitter() {
    let splitter =
        |settings: Value| json!({"sidecars": [{"name": "request-splitter", "settings": settings}]});
    let cases = [
        ("defaults", splitter(json!({}))),
        (
            "both ports set",
            splitter(json!({"listenPort": "8000", "appPort": "7000"})),
        ),
        (
            "the service's target port",
            merge(
                splitter(json!({})),
                json!({"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
            ),
        ),
        (
            "with affinity and another sidecar",
            json!({
                "sidecars": [{"name": "request-splitter"}, {"name": "log-adapter", "settings": {"format": "nginx"}}],
                "sessionAffinity": {"source": "header", "name": "x-user"},
            }),
        ),
    ];
    for (name, spec) in cases {
        let children = replicated::build(&replicated_service(spec), PdbApi::None, None).unwrap();
        let text = &children.config_map.data.as_ref().unwrap()[SPLITTER_CONFIG_KEY];
        let built: SplitterConfig = serde_json::from_str(text).unwrap();
        // The ConfigMap is mounted into the pod; the injected splitter reads the file.
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("injected-request-splitter.json");
        std::fs::write(&path, text).unwrap();
        let store = store();
        let file = FileLayer::new(store.source().clone(), path.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (_, applied) = runtime.block_on(file.reload());
        assert!(
            matches!(applied, Ok(Applied::Changed { .. })),
            "{name}: {applied:?}\n{text}"
        );
        assert_eq!(store.current().unwrap().config, built, "{name}");
    }
}

#[test]
fn the_sidecars_document_is_read_back_unchanged_by_the_contracts_parser() {
    let cases = [
        ("no sidecars", json!({})),
        (
            "sidecars with settings and affinity",
            json!({
                "sidecars": [{"name": "log-adapter", "settings": {"format": "nginx"}}, {"name": "metrics-adapter"}],
                "sessionAffinity": {"source": "sourceIP"},
            }),
        ),
        (
            "cookie affinity",
            json!({"sessionAffinity": {"source": "cookie", "name": "sid", "virtualNodes": 32}}),
        ),
    ];
    for (name, spec) in cases {
        let rsvc = replicated_service(spec);
        let children = replicated::build(&rsvc, PdbApi::None, None).unwrap();
        let text = &children.config_map.data.as_ref().unwrap()[SIDECARS_CONFIG_KEY];
        let config = SidecarsConfig::from_json(text.as_bytes())
            .unwrap_or_else(|error| panic!("{name}: {error}\n{text}"));
        assert_eq!(config.api_version, ApiVersion::V1alpha1, "{name}");
        assert_eq!(
            (config.service.as_str(), config.namespace.as_str()),
            ("web", "shop"),
            "{name}"
        );
        assert_eq!(config.session_affinity, rsvc.spec.session_affinity, "{name}");
        let sidecars: Vec<&str> = config.sidecars.keys().map(String::as_str).collect();
        let expected: Vec<&str> = rsvc
            .spec
            .sidecars
            .iter()
            .map(|sidecar| sidecar.name.as_str())
            .collect();
        assert_eq!(sidecars, expected, "{name}");
        assert_eq!(
            config.to_json().unwrap(),
            *text,
            "{name}: written again, the document is the same text"
        );
    }
}

fn merge(mut base: Value, patch: Value) -> Value {
    merge_patch(&mut base, &patch);
    base
}

fn sharded_service(sharding: Value, protocol: &str, shards: i32) -> ShardedService {
    serde_json::from_value(json!({
        "apiVersion": "outrigger.dev/v1alpha1", "kind": "ShardedService",
        "metadata": {"name": "cache", "namespace": "shop", "uid": "u-2"},
        "spec": {
            "shards": shards, "replicasPerShard": 2, "protocol": protocol, "port": 6379,
            "sharding": sharding,
            "template": {"spec": {"containers": [{"name": "cache", "image": "redis:7"}]}},
        },
    }))
    .unwrap()
}

#[test]
fn every_shard_map_the_operator_writes_is_read_back_unchanged_by_the_contracts_parser() {
    let cases = [
        ("defaults", json!({}), "redis", 3),
        (
            "ketama with a hash tag and fewer points",
            json!({"hashTag": "{}", "virtualNodes": 40}),
            "redis",
            4,
        ),
        (
            "jump with murmur3",
            json!({"function": "jump", "hash": "murmur3"}),
            "redis",
            2,
        ),
        (
            "rendezvous with md5",
            json!({"function": "rendezvous", "hash": "md5"}),
            "redis",
            5,
        ),
        (
            "http keyed by a header",
            json!({"keyHeader": "x-tenant"}),
            "http",
            3,
        ),
        (
            "http keyed by a path segment",
            json!({"httpKey": {"pathSegment": 1}}),
            "http",
            3,
        ),
        (
            "http keyed by a query parameter",
            json!({"httpKey": {"queryParameter": "id"}}),
            "http",
            2,
        ),
        (
            "key ranges",
            json!({"function": "keyRange", "keyRanges": [
                {"shard": 0, "end": "m"},
                {"shard": 1, "start": "m"},
            ]}),
            "redis",
            2,
        ),
    ];
    for (name, sharding, protocol, shards) in cases {
        let shsvc = sharded_service(sharding, protocol, shards);
        let children = sharded::build(&shsvc).unwrap();
        let text = &children.shard_map.data.as_ref().unwrap()[SHARD_MAP_KEY];
        let map =
            ShardMap::from_json(text.as_bytes()).unwrap_or_else(|error| panic!("{name}: {error}\n{text}"));
        let spec = &shsvc.spec;
        assert_eq!(map.api_version, ApiVersion::V1alpha1, "{name}");
        assert_eq!(
            (map.protocol, map.function, map.hash),
            (spec.protocol, spec.sharding.function, spec.sharding.hash),
            "{name}"
        );
        assert_eq!(
            i64::from(map.virtual_nodes),
            i64::from(spec.sharding.virtual_nodes),
            "{name}"
        );
        assert_eq!(map.hash_tag, spec.sharding.hash_tag, "{name}");
        assert_eq!(map.key_header, spec.sharding.key_header, "{name}");
        assert_eq!(map.http_key, spec.sharding.http_key, "{name}");
        assert_eq!(map.key_ranges, spec.sharding.key_ranges, "{name}");
        let names: Vec<String> = (0..shards)
            .map(|index| sharded::shard_name("cache", index))
            .collect();
        let read: Vec<String> = map.shards.iter().map(|shard| shard.name.clone()).collect();
        assert_eq!(read, names, "{name}");
        assert!(
            map.shards.iter().all(|shard| shard.endpoints.len() == 2),
            "{name}"
        );
        assert_eq!(
            map.to_json().unwrap(),
            *text,
            "{name}: written again, the map is the same text"
        );
    }
}

#[test]
fn the_round_trip_tables_cover_every_affinity_source_and_both_route_kinds() {
    // The tables above are only as good as their coverage; this keeps a new source or match kind
    // from slipping past them.
    let cases = traffic_cases();
    let sources: BTreeSet<&str> = cases
        .iter()
        .filter_map(|case| case.affinity.as_ref()?["source"].as_str())
        .collect();
    assert_eq!(sources, BTreeSet::from(["cookie", "header", "sourceIP"]));
    let matches: Vec<String> = cases
        .iter()
        .flat_map(|case| case.routes.as_array().unwrap().clone())
        .map(|route| {
            let (kind, value) = route["match"].as_object().unwrap().iter().next().unwrap();
            let how = ["exact", "regex"]
                .into_iter()
                .find(|how| value.get(*how).is_some())
                .unwrap_or("presence");
            format!("{kind} {how}")
        })
        .collect();
    for expected in [
        "header exact",
        "header regex",
        "cookie exact",
        "cookie regex",
        "header presence",
    ] {
        assert!(
            matches.iter().any(|m| m == expected),
            "no case with a {expected} route"
        );
    }
}
