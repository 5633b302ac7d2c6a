//! What the operator does for the config sync sidecar, pure: read its settings from
//! `spec.sidecars`, build the Role that lets the pods read exactly the named ConfigMaps and
//! Secrets, and turn the status each pod's sidecar writes into its annotation into the owner's
//! `ConfigSynced` condition ("2 of 3 pods on version …") and the Events worth announcing.
//!
//! The same Role carries what the other sidecars need of the API: the health and log adapters
//! write Events about the owning service ([`crate::inject::EVENT_WRITERS`]), so the pods' account
//! may create and patch Events when the service attaches one of them. One Role per service, named
//! [`access_name`], for every sidecar.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    core::v1::{Pod, PodTemplateSpec},
    rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
};
use outrigger_api::common::{SidecarKind, SidecarSpec};
use outrigger_contract::config_sync::{
    ConfigSyncSettings, ConfigSyncStatus, SettingsError, SyncState, STATUS_ANNOTATION,
};

use crate::{
    conditions::DesiredCondition,
    inject::EVENT_WRITERS,
    owner::{child_meta, Owner},
};

/// The condition type on ReplicatedServices and ShardedServices with the sidecar.
pub const CONDITION: &str = "ConfigSynced";

/// The sidecar's settings, when the service attaches it.
pub fn settings(sidecars: &[SidecarSpec]) -> Option<Result<ConfigSyncSettings, SettingsError>> {
    sidecars
        .iter()
        .find(|sidecar| sidecar.name == SidecarKind::ConfigSync)
        .map(|sidecar| ConfigSyncSettings::from_settings(&sidecar.settings))
}

/// Name of the Role and RoleBinding of a service's sidecars.
pub fn access_name(service: &str) -> String {
    format!("{service}-sidecars")
}

/// The name the Role had while only the config sync sidecar needed one; pruned.
pub fn former_access_name(service: &str) -> String {
    format!("{service}-config-sync")
}

/// What a service's sidecars need of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarAccess {
    /// The config sync sidecar's sources (valid settings only: invalid ones fail validation).
    pub config_sync: Option<ConfigSyncSettings>,
    /// A sidecar writes Events about the owner.
    pub events: bool,
}

/// What `sidecars` need; `None` when they need nothing (no Role then).
pub fn sidecar_access(sidecars: &[SidecarSpec]) -> Option<SidecarAccess> {
    let access = SidecarAccess {
        config_sync: settings(sidecars).and_then(Result::ok),
        events: sidecars
            .iter()
            .any(|sidecar| EVENT_WRITERS.contains(&sidecar.name)),
    };
    (access.config_sync.is_some() || access.events).then_some(access)
}

/// The service account the pods run as.
pub fn service_account(template: &PodTemplateSpec) -> String {
    template
        .spec
        .as_ref()
        .and_then(|pod| pod.service_account_name.clone())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "default".to_owned())
}

/// A Role for the sidecars, and its binding to the pods' service account. For config sync: `get`,
/// `list` and `watch` on exactly the named ConfigMaps and Secrets (the sidecar lists and watches by
/// a field selector on the name, which `resourceNames` admits), and `patch` on pods for the status
/// annotation (RBAC cannot name a pod that does not exist yet). For the sidecars that write Events:
/// `create` and `patch` on Events (a repeat patches its count), which cannot be narrowed by name
/// either.
pub fn access(
    owner: &Owner,
    owner_labels: &BTreeMap<String, String>,
    needs: &SidecarAccess,
    service_account: &str,
) -> (Role, RoleBinding) {
    let name = access_name(&owner.name);
    let rule = |resource: &str, names: Option<&[String]>, verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec![resource.to_owned()]),
        resource_names: names.map(<[String]>::to_vec),
        verbs: verbs.iter().map(|verb| (*verb).to_owned()).collect(),
        ..PolicyRule::default()
    };
    let read = ["get", "list", "watch"];
    let mut rules = Vec::new();
    if let Some(settings) = &needs.config_sync {
        // The rollout document is read like a source.
        let config_maps: Vec<String> = settings
            .config_maps
            .iter()
            .chain(&settings.rollout_config_map)
            .cloned()
            .collect();
        if !config_maps.is_empty() {
            rules.push(rule("configmaps", Some(&config_maps), &read));
        }
        if !settings.secrets.is_empty() {
            rules.push(rule("secrets", Some(&settings.secrets), &read));
        }
        rules.push(rule("pods", None, &["patch"]));
    }
    if needs.events {
        rules.push(rule("events", None, &["create", "patch"]));
    }
    let role = Role {
        metadata: child_meta(owner, &name, owner_labels),
        rules: Some(rules),
    };
    let binding = RoleBinding {
        metadata: child_meta(owner, &name, owner_labels),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: service_account.to_owned(),
            namespace: Some(owner.namespace.clone()),
            ..Subject::default()
        }]),
    };
    (role, binding)
}

/// One pod's report, as read from its annotation.
#[derive(Debug, Clone, PartialEq)]
pub struct PodReport {
    pub pod: String,
    /// `None` when the sidecar has not reported yet (or wrote something unreadable).
    pub status: Option<ConfigSyncStatus>,
}

/// Reads the status annotation of each running pod.
pub fn reports(pods: &[Pod]) -> Vec<PodReport> {
    let mut reports: Vec<PodReport> = pods
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .map(|pod| PodReport {
            pod: pod.metadata.name.clone().unwrap_or_default(),
            status: pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|annotations| annotations.get(STATUS_ANNOTATION))
                .and_then(|text| serde_json::from_str(text).ok()),
        })
        .collect();
    reports.sort_by(|a, b| a.pod.cmp(&b.pod));
    reports
}

/// The `ConfigSynced` condition: true when every pod reports `Synced` on one version. Its message
/// says how many pods are on which version, and names the first pod with a problem.
pub fn condition(reports: &[PodReport]) -> DesiredCondition {
    let total = reports.len();
    let mut versions: BTreeMap<&str, usize> = BTreeMap::new();
    for version in reports
        .iter()
        .filter_map(|report| report.status.as_ref()?.applied_version.as_deref())
    {
        *versions.entry(version).or_default() += 1;
    }
    // The version most pods are on; the larger name breaks a tie, so the message is stable.
    let (version, on_version) = versions
        .iter()
        .max_by_key(|(version, count)| (**count, **version))
        .map_or(("none", 0), |(version, count)| (*version, *count));
    let summary = format!("{on_version} of {total} pods on version {version}");
    let problem = reports.iter().find_map(|report| {
        let status = report.status.as_ref()?;
        (status.state != SyncState::Synced).then_some((report.pod.as_str(), status))
    });
    if let Some((pod, status)) = problem {
        let reason = match status.state {
            SyncState::Rejected => "InvalidConfig",
            SyncState::RolledBack => "RolledBack",
            SyncState::ReloadFailed => "ReloadFailed",
            SyncState::Synced => "Synced",
        };
        let detail = status.message.as_deref().unwrap_or("no detail");
        let refused = status
            .refused_version
            .as_deref()
            .map(|version| format!(" (version {version})"))
            .unwrap_or_default();
        return DesiredCondition::new(
            CONDITION,
            false,
            reason,
            format!("pod {pod}{refused}: {detail}; {summary}"),
        );
    }
    if total == 0 || reports.iter().any(|report| report.status.is_none()) {
        return DesiredCondition::new(CONDITION, false, "Waiting", summary);
    }
    if versions.len() > 1 {
        return DesiredCondition::new(CONDITION, false, "Progressing", summary);
    }
    DesiredCondition::new(CONDITION, true, "Synced", summary)
}

/// The Event to announce when the condition changed to a problem: `(type, reason, note)`.
pub fn event(
    previous_message: Option<&str>,
    condition: &DesiredCondition,
) -> Option<(&'static str, &'static str, String)> {
    if condition.status || previous_message == Some(condition.message.as_str()) {
        return None;
    }
    match condition.reason {
        "InvalidConfig" | "RolledBack" | "ReloadFailed" => {
            Some(("Warning", condition.reason, condition.message.clone()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use outrigger_contract::ApiVersion;
    use serde_json::json;

    use super::*;

    fn report(pod: &str, state: SyncState, version: &str, message: Option<&str>) -> PodReport {
        PodReport {
            pod: pod.to_owned(),
            status: Some(ConfigSyncStatus {
                api_version: ApiVersion::default(),
                applied_version: Some(version.to_owned()),
                state,
                file: None,
                message: message.map(str::to_owned),
                refused_version: None,
                config_revision: None,
            }),
        }
    }

    fn owner() -> Owner {
        Owner {
            name: "web".to_owned(),
            namespace: "shop".to_owned(),
            reference: serde_json::from_value(json!({
                "apiVersion": "outrigger.dev/v1alpha1", "kind": "ReplicatedService",
                "name": "web", "uid": "u1", "controller": true,
            }))
            .unwrap(),
        }
    }

    #[test]
    fn every_pod_on_one_version_is_synced_and_says_n_of_m() {
        let condition = condition(&[
            report("web-a", SyncState::Synced, "v2", None),
            report("web-b", SyncState::Synced, "v2", None),
        ]);
        assert!(condition.status);
        assert_eq!(condition.message, "2 of 2 pods on version v2");
    }

    #[test]
    fn a_rejection_names_the_pod_and_the_error_and_still_counts_versions() {
        let condition = condition(&[
            report("web-a", SyncState::Synced, "v1", None),
            report(
                "web-b",
                SyncState::Rejected,
                "v1",
                Some("app.json line 3 column 3: expected value"),
            ),
        ]);
        assert!(!condition.status);
        assert_eq!(condition.reason, "InvalidConfig");
        assert_eq!(
            condition.message,
            "pod web-b: app.json line 3 column 3: expected value; 2 of 2 pods on version v1"
        );
        let announced = event(None, &condition).unwrap();
        assert_eq!((announced.0, announced.1), ("Warning", "InvalidConfig"));
        assert_eq!(
            event(Some(&condition.message), &condition),
            None,
            "announced once"
        );
    }

    #[test]
    fn pods_on_different_versions_are_progressing_and_silent_pods_are_waited_for() {
        let mixed = condition(&[
            report("a", SyncState::Synced, "v1", None),
            report("b", SyncState::Synced, "v2", None),
            report("c", SyncState::Synced, "v2", None),
        ]);
        assert_eq!((mixed.status, mixed.reason), (false, "Progressing"));
        assert_eq!(mixed.message, "2 of 3 pods on version v2");
        let waiting = condition(&[PodReport {
            pod: "a".to_owned(),
            status: None,
        }]);
        assert_eq!(waiting.reason, "Waiting");
    }

    #[test]
    fn the_role_names_exactly_the_sources_and_binds_the_pods_account() {
        let sidecars: Vec<SidecarSpec> = serde_json::from_value(serde_json::json!([
            {"name": "config-sync", "settings": {"configMaps": "app,flags", "secrets": "db"}},
        ]))
        .unwrap();
        let needs = sidecar_access(&sidecars).unwrap();
        let (role, binding) = access(&owner(), &BTreeMap::new(), &needs, "web-sa");
        let rules = role.rules.unwrap();
        assert_eq!(rules[0].resources.as_deref().unwrap(), ["configmaps"]);
        assert_eq!(rules[0].resource_names.as_deref().unwrap(), ["app", "flags"]);
        assert_eq!(rules[0].verbs, ["get", "list", "watch"]);
        assert_eq!(rules[1].resource_names.as_deref().unwrap(), ["db"]);
        assert_eq!(rules[2].verbs, ["patch"]);
        assert_eq!(rules.len(), 3, "no Events without a sidecar that writes them");
        assert_eq!(role.metadata.name.as_deref(), Some("web-sidecars"));
        assert_eq!(binding.subjects.unwrap()[0].name, "web-sa");
        assert_eq!(service_account(&PodTemplateSpec::default()), "default");
    }

    #[test]
    fn sidecars_that_write_events_may_create_and_patch_them() {
        // (sidecars, resources of the rules, or no Role at all)
        let cases: [(serde_json::Value, Option<&[&str]>); 5] = [
            (serde_json::json!([{"name": "health-adapter"}]), Some(&["events"])),
            (
                serde_json::json!([{"name": "log-adapter"}, {"name": "metrics-adapter"}]),
                Some(&["events"]),
            ),
            (
                serde_json::json!([{"name": "config-sync", "settings": {"configMaps": "app"}}, {"name": "log-adapter"}]),
                Some(&["configmaps", "pods", "events"]),
            ),
            (
                serde_json::json!([{"name": "metrics-adapter"}, {"name": "request-splitter"}]),
                None,
            ),
            (serde_json::json!([]), None),
        ];
        for (sidecars, expected) in cases {
            let specs: Vec<SidecarSpec> = serde_json::from_value(sidecars.clone()).unwrap();
            let role =
                sidecar_access(&specs).map(|needs| access(&owner(), &BTreeMap::new(), &needs, "default").0);
            let resources: Option<Vec<String>> = role.as_ref().map(|role| {
                role.rules
                    .iter()
                    .flatten()
                    .flat_map(|rule| rule.resources.clone().unwrap_or_default())
                    .collect()
            });
            assert_eq!(
                resources,
                expected.map(|r| r.iter().map(|s| (*s).to_owned()).collect()),
                "{sidecars}"
            );
            if let Some(events) = role
                .iter()
                .flat_map(|role| role.rules.iter().flatten())
                .find(|rule| rule.resources.as_deref() == Some(&["events".to_owned()][..]))
            {
                assert_eq!(events.verbs, ["create", "patch"]);
                assert_eq!(events.resource_names, None);
            }
        }
    }

    #[test]
    fn the_role_also_names_the_rollout_document() {
        let settings = ConfigSyncSettings::from_settings(
            &[("configMaps", "app"), ("rolloutConfigMap", "web-config-rollout")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
        .unwrap();
        let needs = SidecarAccess {
            config_sync: Some(settings),
            events: false,
        };
        let (role, _) = access(&owner(), &BTreeMap::new(), &needs, "default");
        assert_eq!(
            role.rules.unwrap()[0].resource_names.as_deref().unwrap(),
            ["app", "web-config-rollout"]
        );
    }
}
