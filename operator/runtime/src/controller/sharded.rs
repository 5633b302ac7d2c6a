//! The ShardedService controller.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{ConfigMap, Event, Pod, Secret, Service},
    rbac::v1::{Role, RoleBinding},
};
use k8s_openapi::jiff::Timestamp;
use kube::{
    runtime::{
        controller::Action,
        reflector::{ObjectRef, Store},
        watcher, Controller,
    },
    Resource, ResourceExt,
};
use outrigger_api::{ShardedService, ShardedServiceStatus};
use outrigger_core::{inject, labels, owner::Owner, reshard, sharded, validate};

use super::{
    apply::{to_apply_value, typed, Applier},
    cache::{self, Children, Stored},
    config_sync, error_action, status, Context, Error, RESYNC,
};
use crate::metrics::ControllerLabels;

const CONTROLLER: &str = "shardedservice";

/// How often a ShardedService with replicas in its shards is looked at again even without a change:
/// a replication command that failed is sent again.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// The context of this controller's reconciles: the shared one, and the caches of its watches.
pub struct Sharded {
    ctx: Arc<Context>,
    children: Children,
    /// `FailedCreate` Events about StatefulSets: how a shard that cannot create pods says why.
    failed_creates: Store<Event>,
    /// The shards' pods: their IPs go into the map, their readiness decides the primaries, and
    /// their config sync sidecars report in their annotations.
    shard_pods: Store<Pod>,
    /// The pods using a ShardedService, whose ServiceAccounts may read its shard map.
    client_pods: Store<Pod>,
    /// The shards' passwords seen, for pods that still require the previous one.
    passwords: Passwords,
}

impl Sharded {
    /// The password before `current` for a service, remembering `current`.
    fn previous_password(&self, namespace: &str, name: &str, current: &str) -> Option<String> {
        self.passwords.previous(&format!("{namespace}/{name}"), current)
    }
}

/// The password of each ShardedService (`namespace/name`) and the one before it: a pod that still
/// requires the previous one is opened with it and given the new one. In memory only: after a
/// restart of the operator in the middle of a change, such a pod needs a restart.
#[derive(Default)]
struct Passwords(Mutex<HashMap<String, (String, Option<String>)>>);

impl Passwords {
    /// The password before `current` for `service`, remembering `current`.
    fn previous(&self, service: &str, current: &str) -> Option<String> {
        let mut passwords = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = passwords
            .entry(service.to_owned())
            .or_insert_with(|| (current.to_owned(), None));
        if entry.0 != current {
            let before = std::mem::replace(&mut entry.0, current.to_owned());
            entry.1 = Some(before);
        }
        entry.1.clone()
    }
}

impl std::ops::Deref for Sharded {
    type Target = Context;

    fn deref(&self) -> &Context {
        &self.ctx
    }
}

/// Runs the controller until `shutdown` completes.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    // Only the children of ShardedServices: the ReplicatedService controller caches its own.
    let owned = || cache::children_of(labels::SHARDED_SERVICE);
    let (stateful_sets, stateful_set_events) = cache::watch_typed_children(ctx.api::<StatefulSet>(), owned());
    let (services, service_events) = cache::watch_typed_children(ctx.api::<Service>(), owned());
    let (config_maps, config_map_events) = cache::watch_typed_children(ctx.api::<ConfigMap>(), owned());
    let (roles, role_events) = cache::watch_typed_children(ctx.api::<Role>(), owned());
    let (bindings, binding_events) = cache::watch_typed_children(ctx.api::<RoleBinding>(), owned());
    let (shard_pods, shard_pod_events) = cache::watch(ctx.api::<Pod>(), owned());
    let (client_pods, client_pod_events) = cache::watch(
        ctx.api::<Pod>(),
        watcher::Config::default().labels(inject::SHARDED_CLIENT_LABEL),
    );
    let (failed_creates, failed_create_events) = cache::watch(
        ctx.api::<Event>(),
        watcher::Config::default().fields("involvedObject.kind=StatefulSet,reason=FailedCreate"),
    );
    let (services_store, service_triggers) =
        cache::watch_reconciled(ctx.api::<Stored<ShardedService>>(), watcher::Config::default());
    let controller = Controller::for_stream(service_triggers, services_store)
        .with_config(super::controller_config())
        .owns_stream(stateful_set_events)
        .owns_stream(service_events)
        .owns_stream(config_map_events)
        .owns_stream(role_events)
        .owns_stream(binding_events)
        .watches_stream(failed_create_events, |event: Event| {
            let namespace = event.involved_object.namespace.unwrap_or_default();
            let shard = event.involved_object.name.unwrap_or_default();
            sharded::service_of_shard(&shard).map(|service| ObjectRef::new(service).within(&namespace))
        })
        .watches_stream(shard_pod_events, |pod: Pod| {
            let namespace = pod.namespace()?;
            let name = pod.labels().get(labels::SHARDED_SERVICE)?.clone();
            Some(ObjectRef::<Stored<ShardedService>>::new(&name).within(&namespace))
        })
        .watches_stream(client_pod_events, |pod: Pod| {
            let namespace = pod.namespace()?;
            let name = pod.labels().get(inject::SHARDED_CLIENT_LABEL)?.clone();
            Some(ObjectRef::<Stored<ShardedService>>::new(&name).within(&namespace))
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
    let context = Arc::new(Sharded {
        ctx,
        children: Children {
            stateful_sets: Some(stateful_sets),
            services: Some(services),
            config_maps: Some(config_maps),
            roles: Some(roles),
            role_bindings: Some(bindings),
            ..Children::default()
        },
        failed_creates,
        shard_pods,
        client_pods,
        passwords: Passwords::default(),
    });
    controller
        .run(reconcile, error_policy, context)
        .for_each(|_| {
            managed.set(i64::try_from(store.len()).unwrap_or(i64::MAX));
            futures::future::ready(())
        })
        .await;
}

fn key(object: &Stored<ShardedService>) -> String {
    format!("{}/{}", object.namespace().unwrap_or_default(), object.name_any())
}

fn error_policy(object: Arc<Stored<ShardedService>>, error: &Error, ctx: Arc<Sharded>) -> Action {
    error_action(&ctx, CONTROLLER, &key(&object), error)
}

#[tracing::instrument(skip_all, fields(namespace = %stored.namespace().unwrap_or_default(), name = %stored.name_any()))]
async fn reconcile(stored: Arc<Stored<ShardedService>>, ctx: Arc<Sharded>) -> Result<Action, Error> {
    let guard = stored.decode();
    let run = async {
        match &guard.0 {
            Ok(shsvc) => reconcile_valid(shsvc, &ctx).await,
            Err(invalid) => {
                super::validity::report_undecodable::<ShardedService>(&ctx, CONTROLLER, invalid).await
            }
        }
    };
    ctx.measured(
        CONTROLLER,
        &key(&stored),
        stored.meta().resource_version.as_deref(),
        run,
    )
    .await
}

impl cache::Reconciled for ShardedService {}

async fn reconcile_valid(shsvc: &ShardedService, ctx: &Sharded) -> Result<Action, Error> {
    if shsvc.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let current_conditions = shsvc
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let rings = reshard::plan(&reshard_observed(
        shsvc,
        &ready_shards(shsvc, ctx),
        Timestamp::now(),
    ));
    match apply_children(shsvc, ctx, &rings).await {
        Ok((stateful_sets, selector, primaries)) => {
            let mut shards = sharded::shard_statuses(&shsvc.name_any(), rings.keep_shards, &stateful_sets);
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
            let failures = sharded::failures(&stateful_sets, &failed_creates(ctx, shsvc));
            let mut desired = sharded::conditions(shsvc.spec.replicas_per_shard, &shards, &failures);
            desired.extend(config_synced.clone());
            desired.push(rings.condition.clone());
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
                ring_shards: rings.ring_shards,
                resharding: rings.status.clone(),
            };
            status::write(ctx, CONTROLLER, shsvc, shsvc.status.as_ref(), &status).await?;
            config_sync::announce(ctx, shsvc, current_conditions, config_synced.as_ref()).await;
            // A primary to re-check, a new password to set on every pod, a reshard's next step.
            let recheck = if shsvc.spec.replicas_per_shard > 1 || shsvc.spec.auth.is_some() {
                RECHECK
            } else {
                RESYNC
            };
            Ok(Action::requeue(
                rings.recheck_in.map_or(recheck, |soon| soon.min(recheck)),
            ))
        }
        Err(error) if error.shown_on_status() => {
            let mut status = shsvc.status.clone().unwrap_or_default();
            status.observed_generation = shsvc.metadata.generation;
            status.conditions = status::merged_conditions(
                current_conditions,
                &status::blocked_conditions(&error),
                shsvc.metadata.generation,
            );
            status::write(ctx, CONTROLLER, shsvc, shsvc.status.as_ref(), &status).await?;
            if !error.needs_user_change() {
                // A refusal may end without a change of the object (a quota raised): retried with backoff.
                return Err(error);
            }
            tracing::info!(%error, "Spec cannot be reconciled; waiting for a change.");
            ctx.count_error(CONTROLLER, &error);
            Ok(Action::await_change())
        }
        Err(error) => Err(error),
    }
}

/// The cached `FailedCreate` Events about the shards of `shsvc`.
fn failed_creates(ctx: &Sharded, shsvc: &ShardedService) -> Vec<Event> {
    let (namespace, name) = (shsvc.namespace(), shsvc.name_any());
    ctx.failed_creates
        .state()
        .iter()
        .filter(|event| {
            event.involved_object.namespace == namespace
                && event
                    .involved_object
                    .name
                    .as_deref()
                    .and_then(sharded::service_of_shard)
                    == Some(name.as_str())
        })
        .map(|event| (**event).clone())
        .collect()
}

/// The primary `(pod name, uid)` of each shard, when it has one.
type Primaries = Vec<Option<(String, String)>>;

async fn apply_children(
    shsvc: &ShardedService,
    ctx: &Sharded,
    rings: &reshard::RingPlan,
) -> Result<(Vec<StatefulSet>, String, Primaries), Error> {
    ctx.children.ready().await?;
    for (store, kind) in [(&ctx.shard_pods, "shard Pods"), (&ctx.client_pods, "client Pods")] {
        if tokio::time::timeout(cache::FILL_TIMEOUT, store.wait_until_ready())
            .await
            .is_err()
        {
            return Err(Error::CacheNotFilled(kind));
        }
    }
    let namespace = shsvc.namespace().unwrap_or_default();
    let name = shsvc.name_any();
    validate::all([
        validate::sharded_service(&shsvc.spec),
        validate::sharded_service_name(&name, &shsvc.spec),
    ])?;
    let password = read_password(shsvc, ctx, &namespace).await?;
    let (observed, primaries) =
        observe_and_replicate(shsvc, ctx, &namespace, rings.keep_shards, password.as_deref()).await?;
    let children = sharded::build_observed(
        shsvc,
        &observed,
        &sharded::Rings {
            ring: rings.ring_shards,
            previous: rings.previous_shards,
            keep: rings.keep_shards,
            started_at: rings
                .status
                .as_ref()
                .and_then(|status| status.migration_started_at.as_ref())
                .map(|time| time.0.to_string()),
        },
    )?;

    let uid = shsvc.uid().unwrap_or_default();
    let applier = Applier {
        client: &ctx.client,
        metrics: &ctx.metrics,
        controller: CONTROLLER,
        owner_uid: &uid,
        cache: &ctx.children,
    };
    // The map goes first: it names only shards that are ready (a new shard joins the ring once
    // ready, `reshard::plan`), and a shrink deletes shards only after no map points at them.
    applier.apply(to_apply_value(&children.shard_map)?).await?;
    let clients = pods_labelled(&ctx.client_pods, &namespace, inject::SHARDED_CLIENT_LABEL, &name);
    let accounts = sharded::client_service_accounts(clients.iter().map(|pod| {
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
    // Shards beyond the spec: from the first one not desired, up to the last the cache holds.
    let mut beyond = Vec::new();
    for index in rings.keep_shards.max(0).. {
        let shard = sharded::shard_name(&name, index);
        let cached = ["StatefulSet", "Service"]
            .iter()
            .any(|kind| ctx.children.get(kind, &namespace, &shard).is_some());
        if !cached {
            break;
        }
        beyond.push(shard);
    }
    applier
        .prune("apps/v1", "StatefulSet", &namespace, &beyond, &[])
        .await?;
    applier.prune("v1", "Service", &namespace, &beyond, &[]).await?;
    let possible_access = [
        outrigger_core::config_sync::access_name(&name),
        outrigger_core::config_sync::former_access_name(&name),
        sharded::shard_map_reader_name(&name),
    ];
    for kind in ["Role", "RoleBinding"] {
        applier
            .prune(
                "rbac.authorization.k8s.io/v1",
                kind,
                &namespace,
                &possible_access,
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
    ctx: &Sharded,
    namespace: &str,
    shards: i32,
    password: Option<&str>,
) -> Result<(Vec<sharded::ObservedShard>, Primaries), Error> {
    let previous_password =
        password.and_then(|password| ctx.previous_password(namespace, &shsvc.name_any(), password));
    let credentials = password.map(|password| resp::Credentials {
        password,
        previous: previous_password.as_deref(),
    });
    let service = shsvc.name_any();
    let listed = pods_labelled(&ctx.shard_pods, namespace, labels::SHARDED_SERVICE, &service);
    let previous = shsvc
        .status
        .as_ref()
        .map(|status| status.shard_statuses.as_slice())
        .unwrap_or_default();
    let mut primaries = Vec::new();
    let mut observed = Vec::new();
    for index in 0..shards {
        let shard = sharded::shard_name(&service, index);
        let replicas: Vec<sharded::ReplicaPod> =
            listed.iter().filter_map(|pod| replica_pod(pod, &shard)).collect();
        if let Some(credentials) = credentials {
            // Every pod requires the password, replicas authenticate to their primary with it;
            // idempotent, so sent at every look.
            for pod in replicas.iter().filter(|pod| pod.ready) {
                let Some(ip) = &pod.ip else { continue };
                let address = format!("{ip}:{}", shsvc.spec.port);
                if let Err(error) = resp::command(&address, Some(credentials), &[]).await {
                    tracing::warn!(%error, shard = %shard, pod = %pod.name, "Setting the password failed; trying again at the next look.");
                }
            }
        }
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
            if let Err(error) = resp::command(address, credentials, &args).await {
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

/// Whether each shard has every replica ready, from the cached StatefulSets (whose status changes
/// bring a reconcile): a growth migrates as soon as its new shards are ready.
fn ready_shards(shsvc: &ShardedService, ctx: &Sharded) -> Vec<bool> {
    let namespace = shsvc.namespace().unwrap_or_default();
    (0..shsvc.spec.shards.max(0))
        .map(|index| {
            let name = sharded::shard_name(&shsvc.name_any(), index);
            ctx.children
                .get("StatefulSet", &namespace, &name)
                .and_then(|sts| sts.pointer("/status/readyReplicas")?.as_i64())
                .is_some_and(|ready| ready >= i64::from(shsvc.spec.replicas_per_shard))
        })
        .collect()
}

fn reshard_observed<'a>(
    shsvc: &'a ShardedService,
    ready: &'a [bool],
    now: Timestamp,
) -> reshard::Observed<'a> {
    let status = shsvc.status.as_ref();
    reshard::Observed {
        spec_shards: shsvc.spec.shards,
        window: shsvc.spec.resharding.migration_window.0,
        ring_shards: status.map_or(0, |status| status.ring_shards),
        resharding: status.and_then(|status| status.resharding.as_ref()),
        ready,
        now,
    }
}

/// The password of `spec.auth`, read from its Secret at every look (a new value is set on every
/// pod at the next look). A missing Secret, key or value is shown on the ShardedService.
async fn read_password(
    shsvc: &ShardedService,
    ctx: &Sharded,
    namespace: &str,
) -> Result<Option<String>, Error> {
    let Some(auth) = &shsvc.spec.auth else {
        return Ok(None);
    };
    let secrets: kube::Api<Secret> = kube::Api::namespaced(ctx.client.clone(), namespace);
    let secret = secrets.get_opt(&auth.secret_name).await?;
    sharded::password(secret.as_ref(), auth)
        .map(Some)
        .map_err(|error| Error::SecretUnusable(error.to_string()))
}

/// The cached pods of `namespace` whose label `key` is `value`.
fn pods_labelled(store: &Store<Pod>, namespace: &str, key: &str, value: &str) -> Vec<Arc<Pod>> {
    store
        .state()
        .into_iter()
        .filter(|pod| {
            pod.metadata.namespace.as_deref() == Some(namespace)
                && pod.labels().get(key).map(String::as_str) == Some(value)
        })
        .collect()
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

/// Just enough RESP to configure a shard pod: authenticate, set its password, send one command and
/// read one-line replies.
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

    /// The password a shard pod must require, and the one it may still require (the Secret's
    /// previous value, while a new one is set pod by pod).
    #[derive(Debug, Clone, Copy)]
    pub struct Credentials<'a> {
        pub password: &'a str,
        pub previous: Option<&'a str>,
    }

    /// Sends `args` to `address` and expects a `+` reply; with `credentials`, first authenticates
    /// (with the previous password when the pod does not take the current one yet) and sets the
    /// current password as the pod's `requirepass` and `masterauth`.
    pub async fn command(
        address: &str,
        credentials: Option<Credentials<'_>>,
        args: &[String],
    ) -> Result<(), RespError> {
        let exchange = async {
            let mut stream = TcpStream::connect(address).await?;
            let mut buf = Vec::new();
            if let Some(credentials) = credentials {
                let reply = call(&mut stream, &mut buf, &["AUTH", credentials.password]).await?;
                let accepted = reply.starts_with('+') || outrigger_core::sharded::no_password_set(&reply);
                if !accepted {
                    let Some(previous) = credentials.previous else {
                        return Ok(reply);
                    };
                    let reply = call(&mut stream, &mut buf, &["AUTH", previous]).await?;
                    if !reply.starts_with('+') {
                        return Ok(reply);
                    }
                }
                for setting in outrigger_core::sharded::password_settings(credentials.password) {
                    let words: Vec<&str> = setting.iter().map(String::as_str).collect();
                    let reply = call(&mut stream, &mut buf, &words).await?;
                    if !reply.starts_with('+') {
                        return Ok(reply);
                    }
                }
            }
            if args.is_empty() {
                return Ok("+OK".to_owned());
            }
            let words: Vec<&str> = args.iter().map(String::as_str).collect();
            call(&mut stream, &mut buf, &words).await
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
                // A refused AUTH echoes nothing secret; a command's reply is one line.
                reply,
            })
        }
    }

    /// Sends one command and reads its one-line reply.
    async fn call(stream: &mut TcpStream, buf: &mut Vec<u8>, words: &[&str]) -> std::io::Result<String> {
        let mut request = format!("*{}\r\n", words.len());
        for word in words {
            request.push_str(&format!("${}\r\n{word}\r\n", word.len()));
        }
        stream.write_all(request.as_bytes()).await?;
        let mut chunk = [0u8; 512];
        loop {
            if let Some(end) = buf.windows(2).position(|pair| pair == b"\r\n") {
                let line = String::from_utf8_lossy(&buf[..end]).into_owned();
                buf.drain(..end + 2);
                return Ok(line);
            }
            if buf.len() > 4096 {
                return Err(std::io::Error::other("reply line too long"));
            }
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
            buf.extend_from_slice(&chunk[..read]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_password_is_remembered_until_the_next_change() {
        let passwords = Passwords::default();
        assert_eq!(passwords.previous("shop/cache", "one"), None);
        assert_eq!(passwords.previous("shop/cache", "one"), None);
        assert_eq!(passwords.previous("shop/cache", "two").as_deref(), Some("one"));
        assert_eq!(
            passwords.previous("shop/cache", "two").as_deref(),
            Some("one"),
            "kept for pods not yet given the new one"
        );
        assert_eq!(passwords.previous("shop/cache", "three").as_deref(), Some("two"));
        assert_eq!(passwords.previous("shop/other", "x"), None, "per service");
    }
}
