#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

//! Every view rendered from fixed statuses (`tests/fixtures/`) and compared with the text under
//! `tests/golden/`. After a deliberate change of the output, regenerate them with
//! `UPDATE_GOLDEN=1 cargo test -p kubectl-outrigger --test golden` and review the diff.

use std::path::PathBuf;

use k8s_openapi::jiff::Timestamp;
use kubectl_outrigger::render::{
    rollout::{self, RolloutView},
    scaling::{self, ScalingView},
    shards::{self, parse_ambassador_metrics, AmbassadorReport, ShardsView},
};
use outrigger_api::{AutoscalingPolicy, ReplicatedService, RolloutStrategy, ShardedService};
use serde::Deserialize;

const WIDTH: usize = 100;

fn now() -> Timestamp {
    "2026-12-06T06:00:00Z".parse().unwrap()
}

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join(name)
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(dir("fixtures").join(name)).unwrap()
}

fn documents(name: &str) -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(&fixture(name))
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .collect()
}

fn of_kind<T: serde::de::DeserializeOwned>(docs: &[serde_yaml::Value], kind: &str) -> Option<T> {
    docs.iter()
        .find(|d| d.get("kind").and_then(|k| k.as_str()) == Some(kind))
        .map(|d| serde_json::from_value(serde_json::to_value(d).unwrap()).unwrap())
}

/// Compares with the golden file, or rewrites it with `UPDATE_GOLDEN` set.
fn check(golden: &str, text: &str) {
    let path = dir("golden").join(golden);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing: run with UPDATE_GOLDEN=1", path.display()));
    assert!(
        text == want,
        "{golden} differs (UPDATE_GOLDEN=1 regenerates it):\n--- want\n{want}\n--- got\n{text}"
    );
    for line in text.lines() {
        assert!(
            line.chars().count() <= WIDTH,
            "{golden}: line longer than {WIDTH}: {line}"
        );
        assert!(line.is_ascii(), "{golden}: not plain ASCII: {line}");
    }
}

fn rollout_text(fixture_name: &str) -> String {
    let docs = documents(fixture_name);
    let service: ReplicatedService = of_kind(&docs, "ReplicatedService").unwrap();
    let strategy: Option<RolloutStrategy> = of_kind(&docs, "RolloutStrategy");
    rollout::render(&RolloutView {
        service: &service,
        strategy: strategy.as_ref(),
        now: now(),
        width: WIDTH,
    })
}

#[test]
fn a_canary_in_analysis_shows_steps_traffic_thresholds_and_history() {
    check("rollout-analysis.txt", &rollout_text("rollout-analysis.yaml"));
}

#[test]
fn a_rolled_back_canary_shows_the_failed_numbers_and_the_decision() {
    check(
        "rollout-rolled-back.txt",
        &rollout_text("rollout-rolled-back.yaml"),
    );
}

#[test]
fn a_service_without_a_strategy_says_how_to_start_a_rollout() {
    check("rollout-none.txt", &rollout_text("rollout-none.yaml"));
}

#[test]
fn shards_show_readiness_share_of_operations_and_skew_per_ambassador() {
    let service: ShardedService = of_kind(&documents("shards.yaml"), "ShardedService").unwrap();
    let reports = vec![
        AmbassadorReport {
            pod: "client-7d9f-abcde".into(),
            metrics: Ok(parse_ambassador_metrics(&fixture("shards-client-a.prom"))),
        },
        AmbassadorReport {
            pod: "client-7d9f-fghij".into(),
            metrics: Ok(parse_ambassador_metrics(&fixture("shards-client-b.prom"))),
        },
        AmbassadorReport {
            pod: "client-7d9f-klmno".into(),
            metrics: Err("no answer within 3s".into()),
        },
    ];
    let text = shards::render(&ShardsView {
        service: &service,
        ambassadors: &reports,
        now: now(),
        width: WIDTH,
    });
    check("shards.txt", &text);
}

#[test]
fn shards_without_clients_say_which_annotation_makes_one() {
    let service: ShardedService = of_kind(&documents("shards.yaml"), "ShardedService").unwrap();
    let text = shards::render(&ShardsView {
        service: &service,
        ambassadors: &[],
        now: now(),
        width: WIDTH,
    });
    check("shards-no-clients.txt", &text);
}

#[test]
fn scaling_shows_metrics_against_targets_and_decisions_with_their_limits() {
    let policy: AutoscalingPolicy = of_kind(&documents("scaling.yaml"), "AutoscalingPolicy").unwrap();
    let text = scaling::render(&ScalingView {
        policy: &policy,
        now: now(),
        width: WIDTH,
    });
    check("scaling.txt", &text);
}
