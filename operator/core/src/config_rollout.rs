//! Config changes rolled out like code, pure: a ReplicatedService with a `rolloutStrategyRef` and
//! the config sync sidecar rolls out an edit of its synced ConfigMaps through the same steps and
//! analysis as a new template, without restarting a pod. The operator keeps the stable version in
//! the rollout document ([`ConfigRollout`]) every sidecar of the service watches, names the canary
//! pods in it, and labels the pods so the track Services (and so the request splitter) weigh and
//! measure the canary pods as the canary track.
//!
//! This module reads what the controller observed into the state machine's [`Observation`], and
//! turns its [`Decision`] into the document and the pods' labels. See `docs/config-sync.md`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ConfigMap;
use outrigger_api::{
    common::{SidecarKind, SidecarSpec},
    rollout::{CanaryStrategy, RolloutPhase},
};
use outrigger_contract::config_sync::{config_revision, ROLLOUT_KEY};
pub use outrigger_contract::config_sync::{
    rollout_config_map_name, ConfigMapData, ConfigRollout, ConfigSyncStatus, STATUS_ANNOTATION,
};

use crate::{
    labels,
    owner::{child_meta, BuildError, Owner},
    rollout::{self, Decision},
};

/// Pod label: `stable` or `canary`, the track a pod serves on. The track Services of a service with
/// config rollouts always select on it: during a config rollout it names the canary pods, otherwise
/// it repeats the pod's Deployment track. (The ReplicaSets select on other labels, so relabelling
/// a pod never re-creates it; and the Services never change their selector, which would leave them
/// without endpoints for a moment.)
pub const CONFIG_TRACK: &str = "outrigger.dev/config-track";

/// Prefix of config revisions in `status.rollout`, to tell them from template revisions.
const REVISION_PREFIX: &str = "config-";

/// A config revision as the rollout state machine and `status.rollout` see it.
pub fn rollout_revision(config_revision: &str) -> String {
    format!("{REVISION_PREFIX}{config_revision}")
}

/// Whether a rollout status revision is a config revision.
pub fn is_config_revision(revision: Option<&str>) -> bool {
    revision.is_some_and(|revision| revision.starts_with(REVISION_PREFIX))
}

/// The service's sidecars as its pods get them: with a `rolloutStrategyRef`, the config sync
/// sidecar learns the rollout document's name (`rolloutConfigMap`), unless the user named one.
pub fn sidecars_for(service: &str, has_strategy: bool, sidecars: &[SidecarSpec]) -> Vec<SidecarSpec> {
    let mut sidecars = sidecars.to_vec();
    if has_strategy {
        for sidecar in sidecars.iter_mut().filter(|s| s.name == SidecarKind::ConfigSync) {
            sidecar
                .settings
                .entry("rolloutConfigMap".to_owned())
                .or_insert_with(|| rollout_config_map_name(service));
        }
    }
    sidecars
}

/// The data of the named ConfigMaps, as read; `None` while one of them is missing (no rollout
/// starts from a ConfigMap that is not there: the sidecars refuse it anyway).
pub fn live_data(names: &[String], config_maps: &[ConfigMap]) -> Option<ConfigMapData> {
    names
        .iter()
        .map(|name| {
            let config_map = config_maps
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(name.as_str()))?;
            Some((name.clone(), config_map.data.clone().unwrap_or_default()))
        })
        .collect()
}

/// The document as the operator last wrote it, from its ConfigMap; `None` when absent or unreadable
/// (the live data then become stable).
pub fn read_document(config_map: Option<&ConfigMap>) -> Option<ConfigRollout> {
    let text = config_map?.data.as_ref()?.get(ROLLOUT_KEY)?;
    ConfigRollout::from_json(text).ok()
}

/// One pod of the service, as the controller saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    pub ready: bool,
    /// The ConfigMap revision its sidecar reports having applied.
    pub config_revision: Option<String>,
    /// The track of the Deployment it belongs to (`outrigger.dev/track`).
    pub deployment_track: Option<String>,
}

/// What a config rollout observes, besides what the template's rollout already knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigObservation {
    /// The stable revision: the document's, or the live one before there is a document.
    pub stable_revision: String,
    /// The revision of the ConfigMaps now.
    pub live_revision: String,
    /// Canary pods that are ready and report the live revision, when every canary pod does (the
    /// state machine moves nothing before the canary has settled); 0 otherwise.
    pub canary_ready: i32,
    /// Some canary pod is ready on the live revision: the splitter may send it traffic.
    pub canary_serving: bool,
}

/// Reads the pods against the document and the live data.
pub fn observe(
    document: Option<&ConfigRollout>,
    live: &ConfigMapData,
    pods: &[PodView],
) -> ConfigObservation {
    let live_revision = config_revision(live);
    let stable_revision = document.map_or_else(|| live_revision.clone(), |d| d.stable_revision.clone());
    let canaries: Vec<&PodView> = pods
        .iter()
        .filter(|pod| document.is_some_and(|d| d.canary_pods.contains(&pod.name)))
        .collect();
    let on_live =
        |pod: &&PodView| pod.ready && pod.config_revision.as_deref() == Some(live_revision.as_str());
    let settled = !canaries.is_empty() && canaries.iter().all(on_live);
    ConfigObservation {
        canary_ready: if settled {
            i32::try_from(canaries.len()).unwrap_or(i32::MAX)
        } else {
            0
        },
        canary_serving: canaries.iter().any(on_live),
        stable_revision,
        live_revision,
    }
}

/// Chooses `count` canary pods: the ones already chosen that still run first (so a step only adds
/// pods, and a pod keeps its version), then the others by name. Pods being deleted are not in
/// `pods`.
pub fn choose_canaries(pods: &[PodView], count: usize, previous: &BTreeSet<String>) -> BTreeSet<String> {
    let mut names: Vec<&str> = pods.iter().map(|pod| pod.name.as_str()).collect();
    names.sort_by_key(|name| (!previous.contains(*name), *name));
    names.into_iter().take(count).map(str::to_owned).collect()
}

/// How many pods the canary has at the decision's step: as many as a canary Deployment would have
/// replicas (growing to an upcoming weight first), at least one while there is a canary — but,
/// unlike a canary Deployment, taken from stable's pods, so one stays stable while stable gets
/// traffic (a service of one replica has no config canary below a weight of 100).
pub fn canary_count(strategy: &CanaryStrategy, decision: &Decision, replicas: i32) -> usize {
    let status = &decision.status;
    let upcoming = rollout::upcoming_weight(strategy, status);
    let (_, canary) = rollout::replica_split(replicas, Some(status), decision.canary, None, upcoming);
    let all_traffic = upcoming.unwrap_or(status.canary_weight).max(status.canary_weight) >= 100;
    let most = if all_traffic { replicas } else { replicas - 1 };
    usize::try_from(canary.min(most)).unwrap_or(0)
}

/// What the controller should make true for a config rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPlan {
    pub document: ConfigRollout,
    /// Every pod's [`CONFIG_TRACK`] label value.
    pub tracks: BTreeMap<String, String>,
}

/// The document and the pods' tracks.
///
/// - no config rollout (`decision` is `None`: the template's rollout has the service, or the
///   ConfigMaps are missing): the stable version stays, no pod is a config canary, and each pod's
///   track is its Deployment's;
/// - promotion: the live data become stable and no pod is a canary, so every pod moves;
/// - a canary the decision wants: `canary_pods` pods apply the live data, the rest stay;
/// - rolling back or aborted: no canary, so the canary pods swap the stable files back.
pub fn plan(
    previous: Option<&ConfigRollout>,
    live: Option<&ConfigMapData>,
    decision: Option<&Decision>,
    canary_pods: usize,
    pods: &[PodView],
) -> ConfigPlan {
    let mut document = match (previous, live) {
        (Some(previous), _) => ConfigRollout {
            canary_revision: None,
            canary_pods: BTreeSet::new(),
            ..previous.clone()
        },
        (None, Some(live)) => ConfigRollout::stable(live.clone()),
        (None, None) => ConfigRollout::stable(ConfigMapData::new()),
    };
    if let (Some(decision), Some(live)) = (decision, live) {
        let canary_wanted = decision.canary
            && !matches!(
                decision.status.phase,
                RolloutPhase::RollingBack | RolloutPhase::Aborted
            );
        if decision.promote {
            document = ConfigRollout::stable(live.clone());
        } else if canary_wanted && config_revision(live) != document.stable_revision {
            let previous_canaries = previous.map(|p| p.canary_pods.clone()).unwrap_or_default();
            document.canary_revision = Some(config_revision(live));
            document.canary_pods = choose_canaries(pods, canary_pods, &previous_canaries);
        }
    }
    let tracks = pods
        .iter()
        .map(|pod| {
            let track = match (decision, pod.deployment_track.as_deref()) {
                _ if document.canary_pods.contains(&pod.name) => "canary",
                (None, Some(track)) => track,
                _ => "stable",
            };
            (pod.name.clone(), track.to_owned())
        })
        .collect();
    ConfigPlan { document, tracks }
}

/// The ConfigMap holding the document.
pub fn document_config_map(owner: &Owner, document: &ConfigRollout) -> Result<ConfigMap, BuildError> {
    let text = document.to_json().map_err(|error| BuildError::Serialize {
        what: "config rollout document",
        message: error.to_string(),
    })?;
    Ok(ConfigMap {
        metadata: child_meta(
            owner,
            &rollout_config_map_name(&owner.name),
            &labels::owned_by(labels::REPLICATED_SERVICE, &owner.name),
        ),
        data: Some(BTreeMap::from([(ROLLOUT_KEY.to_owned(), text)])),
        ..ConfigMap::default()
    })
}

#[cfg(test)]
mod tests {
    use outrigger_api::rollout::RolloutStatus;

    use super::*;

    fn data(version: &str) -> ConfigMapData {
        ConfigMapData::from([(
            "app".to_owned(),
            BTreeMap::from([("app.json".to_owned(), format!("{{\"version\":\"{version}\"}}"))]),
        )])
    }

    fn pod(name: &str, ready: bool, revision: Option<&ConfigMapData>) -> PodView {
        PodView {
            name: name.to_owned(),
            ready,
            config_revision: revision.map(config_revision),
            deployment_track: Some("stable".to_owned()),
        }
    }

    fn pods(names: &[&str]) -> Vec<PodView> {
        names.iter().map(|name| pod(name, true, None)).collect()
    }

    fn decision(phase: RolloutPhase, canary: bool, promote: bool) -> Decision {
        Decision {
            status: RolloutStatus {
                phase,
                ..RolloutStatus::default()
            },
            promote,
            canary,
            requeue_after: None,
        }
    }

    fn names(set: &BTreeSet<String>) -> Vec<&str> {
        set.iter().map(String::as_str).collect()
    }

    #[test]
    fn canaries_keep_the_pods_already_chosen_then_take_the_others_by_name() {
        let all = pods(&["web-a", "web-b", "web-c", "web-d"]);
        let chosen = |previous: &[&str]| previous.iter().map(|p| (*p).to_owned()).collect::<BTreeSet<_>>();
        // (count, previous canaries, chosen)
        for (count, previous, expected) in [
            (1, vec![], vec!["web-a"]),
            (2, vec![], vec!["web-a", "web-b"]),
            (1, vec!["web-c"], vec!["web-c"]),
            (2, vec!["web-c"], vec!["web-a", "web-c"]),
            (2, vec!["web-gone", "web-d"], vec!["web-a", "web-d"]),
            (9, vec![], vec!["web-a", "web-b", "web-c", "web-d"]),
            (0, vec!["web-a"], vec![]),
        ] {
            assert_eq!(
                names(&choose_canaries(&all, count, &chosen(&previous))),
                expected,
                "{count} of them, previously {previous:?}"
            );
        }
    }

    #[test]
    fn the_plan_turns_each_decision_into_canary_pods_and_the_stable_snapshot() {
        let (v1, v2) = (data("v1"), data("v2"));
        let all = pods(&["web-a", "web-b", "web-c"]);
        let stable_v1 = ConfigRollout::stable(v1.clone());
        let mut canary_a = ConfigRollout::stable(v1.clone());
        canary_a.canary_revision = Some(config_revision(&v2));
        canary_a.canary_pods = BTreeSet::from(["web-a".to_owned()]);
        // (what, previous document, decision, canary pods wanted, canary pods, stable version)
        let cases = [
            ("a new service starts stable", None, None, 0, vec![], &v2),
            ("no rollout in flight", Some(&stable_v1), None, 0, vec![], &v1),
            (
                "a weight step picks canary pods",
                Some(&stable_v1),
                Some(decision(RolloutPhase::Progressing, true, false)),
                1,
                vec!["web-a"],
                &v1,
            ),
            (
                "a bigger weight adds pods",
                Some(&canary_a),
                Some(decision(RolloutPhase::Progressing, true, false)),
                2,
                vec!["web-a", "web-b"],
                &v1,
            ),
            (
                "a rollback empties the canary",
                Some(&canary_a),
                Some(decision(RolloutPhase::RollingBack, true, false)),
                1,
                vec![],
                &v1,
            ),
            (
                "aborted stays so",
                Some(&canary_a),
                Some(decision(RolloutPhase::Aborted, true, false)),
                1,
                vec![],
                &v1,
            ),
            (
                "a promotion makes the live data stable",
                Some(&canary_a),
                Some(decision(RolloutPhase::Promoted, true, true)),
                1,
                vec![],
                &v2,
            ),
        ];
        for (what, previous, decision, wanted, canaries, stable) in cases {
            let plan = plan(previous, Some(&v2), decision.as_ref(), wanted, &all);
            assert_eq!(names(&plan.document.canary_pods), canaries, "{what}");
            assert_eq!(&plan.document.stable, stable, "{what}");
            assert_eq!(plan.document.stable_revision, config_revision(stable), "{what}");
            for pod in &all {
                let expected = if canaries.contains(&pod.name.as_str()) {
                    "canary"
                } else {
                    "stable"
                };
                assert_eq!(plan.tracks[&pod.name], expected, "{what}: {}", pod.name);
            }
        }
    }

    #[test]
    fn the_canary_has_settled_when_every_canary_pod_is_ready_on_the_live_revision() {
        let (v1, v2) = (data("v1"), data("v2"));
        let mut document = ConfigRollout::stable(v1.clone());
        document.canary_pods = BTreeSet::from(["web-a".to_owned(), "web-b".to_owned()]);
        // (pods, canary ready, canary serving)
        for (pods, ready, serving) in [
            (
                vec![
                    pod("web-a", true, Some(&v2)),
                    pod("web-b", true, Some(&v2)),
                    pod("web-c", true, Some(&v1)),
                ],
                2,
                true,
            ),
            (
                vec![
                    pod("web-a", true, Some(&v2)),
                    pod("web-b", true, Some(&v1)),
                    pod("web-c", true, Some(&v1)),
                ],
                0,
                true,
            ),
            (
                vec![
                    pod("web-a", false, Some(&v2)),
                    pod("web-b", true, None),
                    pod("web-c", true, Some(&v1)),
                ],
                0,
                false,
            ),
        ] {
            let observed = observe(Some(&document), &v2, &pods);
            assert_eq!(
                (observed.canary_ready, observed.canary_serving),
                (ready, serving),
                "{pods:?}"
            );
            assert_eq!(observed.stable_revision, config_revision(&v1));
            assert_eq!(observed.live_revision, config_revision(&v2));
        }
        let fresh = observe(None, &v2, &pods(&["web-a"]));
        assert_eq!(
            fresh.stable_revision, fresh.live_revision,
            "a new service starts stable"
        );
    }

    #[test]
    fn with_a_strategy_the_config_sync_sidecar_learns_the_document_name() {
        let sidecars: Vec<SidecarSpec> = serde_json::from_value(serde_json::json!([
            {"name": "config-sync", "settings": {"configMaps": "app"}},
            {"name": "health-adapter"},
        ]))
        .unwrap();
        let with = sidecars_for("web", true, &sidecars);
        assert_eq!(with[0].settings["rolloutConfigMap"], "web-config-rollout");
        assert!(with[1].settings.is_empty());
        assert_eq!(sidecars_for("web", false, &sidecars), sidecars);
    }

    #[test]
    fn missing_configmaps_make_no_live_data_and_revisions_are_marked() {
        let config_map: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "app"}, "data": {"k": "v"},
        }))
        .unwrap();
        let live = live_data(&["app".to_owned()], std::slice::from_ref(&config_map)).unwrap();
        assert_eq!(live["app"]["k"], "v");
        assert_eq!(
            live_data(&["app".to_owned(), "flags".to_owned()], &[config_map]),
            None
        );
        assert!(is_config_revision(Some(&rollout_revision("abc"))));
        assert!(!is_config_revision(Some("abc")));
        assert!(!is_config_revision(None));
    }

    #[test]
    fn outside_a_config_rollout_each_pod_serves_on_its_deployments_track() {
        let v1 = data("v1");
        let mut all = pods(&["web-a", "web-canary-b"]);
        all[1].deployment_track = Some("canary".to_owned());
        let plan = plan(Some(&ConfigRollout::stable(v1.clone())), Some(&v1), None, 0, &all);
        assert_eq!(plan.tracks["web-a"], "stable");
        assert_eq!(
            plan.tracks["web-canary-b"], "canary",
            "a template canary stays a canary"
        );
    }

    #[test]
    fn the_canary_grows_with_the_weight_and_is_empty_without_one() {
        let strategy: CanaryStrategy = serde_json::from_value(serde_json::json!({
            "steps": [{"setWeight": 33}, {"setWeight": 67}, {"setWeight": 100}],
        }))
        .unwrap();
        let at = |step: i32, weight: i32, canary: bool| Decision {
            status: RolloutStatus {
                phase: RolloutPhase::Progressing,
                current_step: Some(step),
                canary_weight: weight,
                ..RolloutStatus::default()
            },
            promote: false,
            canary,
            requeue_after: None,
        };
        // (decision, replicas, canary pods)
        for (decision, replicas, expected) in [
            (at(0, 0, true), 3, 1),
            (at(0, 33, true), 3, 1),
            // 67% of three would be three pods: one stays stable.
            (at(1, 33, true), 3, 2),
            (at(1, 67, true), 3, 2),
            (at(2, 67, true), 3, 3),
            (at(0, 0, true), 10, 4),
            (at(0, 0, true), 1, 0),
            (at(2, 67, true), 1, 1),
            (at(0, 0, false), 3, 0),
        ] {
            assert_eq!(
                canary_count(&strategy, &decision, replicas),
                expected,
                "{decision:?} of {replicas}"
            );
        }
    }
}
