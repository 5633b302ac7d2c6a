//! The reads and writes of config rollouts (`outrigger_core::config_rollout` decides): the synced
//! ConfigMaps, the rollout document and the pods with what their sidecars applied; then the
//! document and each pod's config track label.

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::{
    api::{Api, ListParams, Patch, PatchParams},
    ResourceExt,
};
use outrigger_api::ReplicatedService;
use outrigger_core::{
    config_rollout::{
        self, rollout_config_map_name, ConfigMapData, ConfigPlan, ConfigRollout, ConfigSyncStatus, PodView,
        CONFIG_TRACK, STATUS_ANNOTATION,
    },
    config_sync, labels,
};
use serde_json::json;

use super::{Context, Error};

/// What a config rollout reads.
#[derive(Debug, Clone)]
pub struct ConfigRead {
    /// The synced ConfigMaps' data; `None` while one of them is missing.
    pub live: Option<ConfigMapData>,
    /// The document as last written.
    pub document: Option<ConfigRollout>,
    /// The service's pods that are not being deleted, with their labels.
    pub pods: Vec<(PodView, Option<String>)>,
}

impl ConfigRead {
    pub fn views(&self) -> Vec<PodView> {
        self.pods.iter().map(|(view, _)| view.clone()).collect()
    }
}

/// Reads what a config rollout needs, for a service with a strategy and the config sync sidecar.
pub async fn read(rsvc: &ReplicatedService, ctx: &Context) -> Result<Option<ConfigRead>, Error> {
    if rsvc.spec.rollout_strategy_ref.is_none() {
        return Ok(None);
    }
    let Some(Ok(settings)) = config_sync::settings(&rsvc.spec.sidecars) else {
        return Ok(None);
    };
    let namespace = rsvc.namespace().unwrap_or_default();
    let name = rsvc.name_any();
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut sources = Vec::new();
    for source in &settings.config_maps {
        sources.extend(config_maps.get_opt(source).await?);
    }
    let document = config_maps.get_opt(&rollout_config_map_name(&name)).await?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let selector = format!("{}={name}", labels::REPLICATED_SERVICE);
    let pods = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .map(|pod| {
            let status: Option<ConfigSyncStatus> = pod
                .annotations()
                .get(STATUS_ANNOTATION)
                .and_then(|text| serde_json::from_str(text).ok());
            let ready = pod
                .status
                .as_ref()
                .and_then(|status| status.conditions.as_ref())
                .is_some_and(|conditions| {
                    conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                });
            let view = PodView {
                name: pod.name_any(),
                ready,
                config_revision: status.and_then(|status| status.config_revision),
                deployment_track: pod.labels().get(labels::TRACK).cloned(),
            };
            (view, pod.labels().get(CONFIG_TRACK).cloned())
        })
        .collect();
    Ok(Some(ConfigRead {
        live: config_rollout::live_data(&settings.config_maps, &sources),
        document: config_rollout::read_document(document.as_ref()),
        pods,
    }))
}

/// Labels each pod with its config track where it differs (a label patch: the ReplicaSets select on
/// other labels, so no pod is re-created). A pod gone meanwhile is skipped.
pub async fn label_pods(
    ctx: &Context,
    namespace: &str,
    read: &ConfigRead,
    plan: &ConfigPlan,
) -> Result<(), Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    for (view, current) in &read.pods {
        let Some(track) = plan.tracks.get(&view.name) else {
            continue;
        };
        if current.as_deref() == Some(track.as_str()) {
            continue;
        }
        let patch = json!({"metadata": {"labels": {CONFIG_TRACK: track}}});
        match pods
            .patch(&view.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => tracing::info!(pod = %view.name, %track, "Moved a pod to a track."),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}
