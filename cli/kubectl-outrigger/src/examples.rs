//! `example NAME`: the manifests under `manifests/examples/`, compiled in, so a first service needs
//! nothing but the plugin: `kubectl outrigger example web | kubectl apply -f -`.

/// Every example: its name, what it is, and its documents.
pub const EXAMPLES: &[(&str, &str, &[&str])] = &[
    (
        "web",
        "a web service of three replicas behind the request splitter, rolled out as a canary",
        &[
            include_str!("../../../manifests/examples/rolloutstrategy.yaml"),
            include_str!("../../../manifests/examples/replicatedservice.yaml"),
        ],
    ),
    (
        "cache",
        "a Redis cache of three shards, two replicas each, routed by the sharding ambassador",
        &[include_str!("../../../manifests/examples/shardedservice.yaml")],
    ),
    (
        "autoscaling",
        "autoscaling for `web` on request rate and p99 latency (apply `web` first)",
        &[include_str!("../../../manifests/examples/autoscalingpolicy.yaml")],
    ),
];

/// The example's manifest, documents separated by `---`.
pub fn manifest(name: &str) -> Option<String> {
    let (_, _, documents) = EXAMPLES.iter().find(|(n, _, _)| *n == name)?;
    let parts: Vec<&str> = documents.iter().map(|d| d.trim_end()).collect();
    Some(parts.join("\n---\n") + "\n")
}

/// One line per example, for `example` without a name and for errors.
pub fn list() -> String {
    EXAMPLES
        .iter()
        .map(|(name, what, _)| format!("  {name:<12} {what}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_parses_as_yaml_documents_with_a_kind() {
        for (name, _, _) in EXAMPLES {
            let text = manifest(name).unwrap_or_default();
            let mut kinds = 0;
            for document in text.split("\n---\n") {
                let value: serde_yaml::Value = serde_yaml::from_str(document).unwrap_or_default();
                assert!(value.get("kind").is_some(), "{name}: a document without a kind");
                kinds += 1;
            }
            assert!(kinds >= 1);
        }
    }

    #[test]
    fn the_web_example_holds_the_strategy_it_names() {
        let text = manifest("web").unwrap_or_default();
        assert!(text.contains("kind: RolloutStrategy"));
        assert!(text.contains("kind: ReplicatedService"));
        assert!(manifest("nope").is_none());
    }
}
