//! The ShardedService controller.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{ConfigMap, Pod, Service},
};
use kube::{
    api::ListParams,
    core::DeserializeGuard,
    runtime::{controller::Action, reflector::ObjectRef, watcher, Controller},
    Resource, ResourceExt,
};
use outrigger_api::{ShardedService, ShardedServiceStatus};
use outrigger_core::{inject, labels, owner::Owner, sharded, validate};

use super::{
    apply::{to_apply_value, typed, Applier},
    config_sync, error_action, status, Context, Error,
};
use crate::metrics::ControllerLabels;

const CONTROLLER: &str = "shardedservice";

/// How often a ShardedService is looked at again: client pods (whose ServiceAccounts may read the
/// shard map) and shard pods are listed, not watched (the operator may only list pods).
const RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the controller until `shutdown` completes.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let owned =
        watcher::Config::default().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE));
    let controller = Controller::new(
        ctx.api::<DeserializeGuard<ShardedService>>(),
        watcher::Config::default(),
    )
    .owns(ctx.api::<StatefulSet>(), owned.clone())
    .owns(ctx.api::<Service>(), owned.clone())
    .owns(ctx.api::<ConfigMap>(), owned.clone())
    // The config sync sidecars report in their pods' annotations.
    .watches(ctx.api::<Pod>(), owned, |pod| {
        let namespace = pod.namespace()?;
        let name = pod.labels().get(labels::SHARDED_SERVICE)?.clone();
        Some(ObjectRef::<DeserializeGuard<ShardedService>>::new(&name).within(&namespace))
    })
    .graceful_shutdown_on(shutdown);
    let store = controller.store();
    let managed = ctx
        .metrics
        .managed
        .get_or_create(&ControllerLabels {
            controller: CONTROLLER,
        })
        .clone();
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|_| {
            managed.set(i64::try_from(store.state().len()).unwrap_or(i64::MAX));
            futures::future::ready(())
        })
        .await;
}

fn key(object: &DeserializeGuard<ShardedService>) -> String {
    format!("{}/{}", object.namespace().unwrap_or_default(), object.name_any())
}

fn error_policy(object: Arc<DeserializeGuard<ShardedService>>, error: &Error, ctx: Arc<Context>) -> Action {
    error_action(&ctx, CONTROLLER, &key(&object), error)
}

#[tracing::instrument(skip_all, fields(namespace = %guard.namespace().unwrap_or_default(), name = %guard.name_any()))]
async fn reconcile(guard: Arc<DeserializeGuard<ShardedService>>, ctx: Arc<Context>) -> Result<Action, Error> {
    let run = async {
        match &guard.0 {
            Ok(shsvc) => reconcile_valid(shsvc, &ctx).await,
            Err(invalid) => {
                super::validity::report_undecodable::<ShardedService>(&ctx, CONTROLLER, invalid).await
            }
        }
    };
    ctx.measured(CONTROLLER, &key(&guard), run).await
}

async fn reconcile_valid(shsvc: &ShardedService, ctx: &Context) -> Result<Action, Error> {
    if shsvc.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let current_conditions = shsvc
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    match apply_children(shsvc, ctx).await {
        Ok((stateful_sets, selector, primaries)) => {
            let mut shards = sharded::shard_statuses(&shsvc.name_any(), shsvc.spec.shards, &stateful_sets);
            for (shard, primary) in shards.iter_mut().zip(primaries) {
                if let Some((name, uid)) = primary {
                    shard.primary = Some(name);
                    shard.primary_uid = Some(uid);
                }
            }
            let config_synced = config_sync::condition(
                ctx,
                &shsvc.namespace().unwrap_or_default(),
                &selector,
                &shsvc.spec.sidecars,
            )
            .await?;
            let mut desired = sharded::conditions(shsvc.spec.replicas_per_shard, &shards);
            desired.extend(config_synced.clone());
            let status = ShardedServiceStatus {
                observed_generation: shsvc.metadata.generation,
                conditions: status::merged_conditions(
                    current_conditions,
                    &desired,
                    shsvc.metadata.generation,
                ),
                shards: i32::try_from(shards.iter().filter(|s| s.replicas > 0).count()).unwrap_or(i32::MAX),
                ready_shards: i32::try_from(
                    shards
                        .iter()
                        .filter(|s| s.ready_replicas >= shsvc.spec.replicas_per_shard)
                        .count(),
                )
                .unwrap_or(i32::MAX),
                replicas: shards.iter().map(|s| s.replicas).sum(),
                ready_replicas: shards.iter().map(|s| s.ready_replicas).sum(),
                selector: Some(selector),
                shard_statuses: shards,
            };
            status::write(ctx, CONTROLLER, shsvc, shsvc.status.as_ref(), &status).await?;
            config_sync::announce(ctx, shsvc, current_conditions, config_synced.as_ref()).await;
            Ok(Action::requeue(RECHECK))
        }
        Err(error) if error.needs_user_change() => {
            tracing::info!(%error, "Spec cannot be reconciled; waiting for a change.");
            let mut status = shsvc.status.clone().unwrap_or_default();
            status.observed_generation = shsvc.metadata.generation;
            status.conditions = status::merged_conditions(
                current_conditions,
                &status::blocked_conditions(&error),
                shsvc.metadata.generation,
            );
            status::write(ctx, CONTROLLER, shsvc, shsvc.status.as_ref(), &status).await?;
            ctx.count_error(CONTROLLER, &error);
            Ok(Action::await_change())
        }
        Err(error) => Err(error),
    }
}

/// The primary `(pod name, uid)` of each shard, when it has one.
type Primaries = Vec<Option<(String, String)>>;

async fn apply_children(
    shsvc: &ShardedService,
    ctx: &Context,
) -> Result<(Vec<StatefulSet>, String, Primaries), Error> {
    let namespace = shsvc.namespace().unwrap_or_default();
    validate::sharded_service(&shsvc.spec)?;
    let (observed, primaries) = observe_and_replicate(shsvc, ctx, &namespace).await?;
    let children = sharded::build_observed(shsvc, &observed)?;

    let uid = shsvc.uid().unwrap_or_default();
    let applier = Applier {
        client: &ctx.client,
        metrics: &ctx.metrics,
        controller: CONTROLLER,
        owner_uid: &uid,
    };
    // The map goes first: the ambassadors learn the new shards while they start, and a shrink only
    // deletes shards after no map points at them.
    applier.apply(to_apply_value(&children.shard_map)?).await?;
    let pods: kube::Api<Pod> = kube::Api::namespaced(ctx.client.clone(), &namespace);
    let clients = pods
        .list(&ListParams::default().labels(&format!(
            "{}={}",
            inject::SHARDED_CLIENT_LABEL,
            shsvc.name_any()
        )))
        .await?;
    let accounts = sharded::client_service_accounts(clients.items.iter().map(|pod| {
        pod.spec
            .as_ref()
            .and_then(|spec| spec.service_account_name.as_deref())
    }));
    let (role, binding) = sharded::shard_map_access(shsvc, &accounts)?;
    applier.apply(to_apply_value(&role)?).await?;
    applier.apply(to_apply_value(&binding)?).await?;
    // The config-sync Roles, and the shard-map reader's, are the only Roles this service keeps.
    let mut access: Vec<String> = config_sync::apply_access(
        &applier,
        &Owner::of(shsvc)?,
        &labels::owned_by(labels::SHARDED_SERVICE, &shsvc.name_any()),
        &shsvc.spec.sidecars,
        &shsvc.spec.template,
    )
    .await?
    .into_iter()
    .collect();
    access.extend(role.metadata.name.clone());
    access.extend(binding.metadata.name.clone());
    for service in &children.services {
        applier.apply(to_apply_value(service)?).await?;
    }
    let mut stateful_sets = Vec::new();
    for sts in &children.stateful_sets {
        stateful_sets.push(typed::<StatefulSet>(applier.apply(to_apply_value(sts)?).await?)?);
    }
    let selector = format!("{}={}", labels::SHARDED_SERVICE, shsvc.name_any());
    let keep: Vec<String> = children
        .stateful_sets
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    applier
        .prune("apps/v1", "StatefulSet", &namespace, &selector, &keep)
        .await?;
    applier
        .prune("v1", "Service", &namespace, &selector, &keep)
        .await?;
    for kind in ["Role", "RoleBinding"] {
        applier
            .prune(
                "rbac.authorization.k8s.io/v1",
                kind,
                &namespace,
                &selector,
                &access,
            )
            .await?;
    }
    Ok((stateful_sets, children.selector, primaries))
}

/// Reads the shard pods (their IPs go into the map) and, with more than one replica per shard,
/// decides every shard's primary ([`sharded::replication`], pure) and sends the replication
/// commands: the primary leads, the other ready replicas follow it. A primary that cannot be told
/// to lead is not put first in the map; the next look tries again.
async fn observe_and_replicate(
    shsvc: &ShardedService,
    ctx: &Context,
    namespace: &str,
) -> Result<(Vec<sharded::ObservedShard>, Primaries), Error> {
    let service = shsvc.name_any();
    let pods: kube::Api<Pod> = kube::Api::namespaced(ctx.client.clone(), namespace);
    let listed = pods
        .list(&ListParams::default().labels(&format!("{}={service}", labels::SHARDED_SERVICE)))
        .await?;
    let previous = shsvc
        .status
        .as_ref()
        .map(|status| status.shard_statuses.as_slice())
        .unwrap_or_default();
    let mut primaries = Vec::new();
    let mut observed = Vec::new();
    for index in 0..shsvc.spec.shards {
        let shard = sharded::shard_name(&service, index);
        let replicas: Vec<sharded::ReplicaPod> = listed
            .items
            .iter()
            .filter_map(|pod| replica_pod(pod, &shard))
            .collect();
        let addresses = replicas
            .iter()
            .filter_map(|pod| Some((pod.ordinal, pod.ip.clone()?)))
            .collect();
        if shsvc.spec.replicas_per_shard <= 1 {
            observed.push(sharded::ObservedShard {
                primary: None,
                addresses,
            });
            primaries.push(None);
            continue;
        }
        let recorded = previous.iter().find(|status| status.name == shard);
        let decision = sharded::replication(recorded, &replicas, shsvc.spec.port);
        let mut led = true;
        for command in &decision.commands {
            let (pod, address, args) = match command {
                sharded::ReplicationCommand::Lead { pod, address } => (
                    pod,
                    address,
                    vec!["REPLICAOF".to_owned(), "NO".to_owned(), "ONE".to_owned()],
                ),
                sharded::ReplicationCommand::Follow {
                    pod,
                    address,
                    primary_ip,
                    port,
                } => (
                    pod,
                    address,
                    vec!["REPLICAOF".to_owned(), primary_ip.clone(), port.to_string()],
                ),
            };
            if let Err(error) = resp::command(address, &args).await {
                let leading = matches!(command, sharded::ReplicationCommand::Lead { .. });
                tracing::warn!(%error, shard = %shard, pod = %pod, leading, "Replication command failed; trying again at the next look.");
                led &= !leading;
            }
        }
        if decision.promoted && led {
            if let Some((_, name, _)) = &decision.primary {
                tracing::info!(shard = %shard, primary = %name, "Primary lost; promoted a replica.");
            }
        }
        let primary = match (led, decision.primary) {
            (true, Some((_, name, uid))) => Some((name, uid)),
            // Keep what was recorded: the map stays as it was until a primary can lead.
            _ => recorded.and_then(|status| Some((status.primary.clone()?, status.primary_uid.clone()?))),
        };
        observed.push(sharded::ObservedShard {
            primary: primary
                .as_ref()
                .and_then(|(name, _)| name.rsplit_once('-')?.1.parse().ok()),
            addresses,
        });
        primaries.push(primary);
    }
    Ok((observed, primaries))
}

/// A pod of `shard` (`<shard>-<ordinal>`) as the replication decision sees it.
fn replica_pod(pod: &Pod, shard: &str) -> Option<sharded::ReplicaPod> {
    let name = pod.metadata.name.clone()?;
    let ordinal = name.strip_prefix(shard)?.strip_prefix('-')?.parse().ok()?;
    let status = pod.status.as_ref();
    let ready = pod.metadata.deletion_timestamp.is_none()
        && status
            .and_then(|status| status.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|condition| condition.type_ == "Ready" && condition.status == "True")
            });
    Some(sharded::ReplicaPod {
        ordinal,
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        ip: status.and_then(|status| status.pod_ip.clone()),
        ready,
        name,
    })
}

/// Just enough RESP to send one command and read a one-line reply.
mod resp {
    use std::time::Duration;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    const TIMEOUT: Duration = Duration::from_secs(2);

    /// Why a command failed.
    #[derive(Debug, thiserror::Error)]
    pub enum RespError {
        #[error("talking to {address}: {source}")]
        Io { address: String, source: std::io::Error },
        #[error("{address} took longer than {TIMEOUT:?}")]
        Timeout { address: String },
        #[error("{address} answered {reply:?}")]
        Refused { address: String, reply: String },
    }

    /// Sends `args` to `address` and expects a `+` reply.
    pub async fn command(address: &str, args: &[String]) -> Result<(), RespError> {
        let exchange = async {
            let mut stream = TcpStream::connect(address).await?;
            let mut request = format!("*{}\r\n", args.len());
            for arg in args {
                request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
            }
            stream.write_all(request.as_bytes()).await?;
            let mut reply = Vec::new();
            let mut chunk = [0u8; 512];
            while !reply.ends_with(b"\r\n") && reply.len() < 4096 {
                let read = stream.read(&mut chunk).await?;
                if read == 0 {
                    break;
                }
                reply.extend_from_slice(&chunk[..read]);
            }
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&reply).trim_end().to_owned())
        };
        let reply = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| RespError::Timeout {
                address: address.to_owned(),
            })?
            .map_err(|source| RespError::Io {
                address: address.to_owned(),
                source,
            })?;
        if reply.starts_with('+') {
            Ok(())
        } else {
            Err(RespError::Refused {
                address: address.to_owned(),
                reply,
            })
        }
    }
}
