//! The controllers. Every reconcile is a pipeline: read what the spec refers to → validate (pure,
//! `outrigger_core::validate`) → build the desired children (pure, `outrigger_core::{replicated,
//! sharded}`) → apply them with server-side apply → write status from what was observed.

mod apply;
mod autoscaling;
mod cache;
mod config_rollout;
mod config_sync;
mod replicated;
mod rollout;
mod sharded;
mod status;
mod validity;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{
    api::{core::v1::ObjectReference, events},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    runtime::{
        controller::Action,
        events::{EventType, Reporter},
    },
    Client, Resource,
};
use outrigger_core::{owner::BuildError, replicated::PdbApi, validate::InvalidSpec};

use crate::metrics::Metrics;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] InvalidSpec),
    #[error("{0}")]
    MissingReference(String),
    #[error("{kind} {name} already exists and is not managed by this resource")]
    NameClash { kind: String, name: String },
    #[error("building desired objects: {0}")]
    Build(#[from] BuildError),
    #[error("the object changed while it was being written: {0}")]
    Conflict(#[source] kube::Error),
    /// The API server refused a write for a reason a retry cannot fix (the request is invalid, or
    /// forbidden by RBAC, an admission webhook or a ResourceQuota): shown on the object.
    #[error("the API server refused it: {}", rejection_message(.0))]
    Rejected(#[source] kube::Error),
    #[error("kubernetes API request failed: {0}")]
    Api(#[source] kube::Error),
    #[error("encoding an object: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("the watch of {0} has not listed them yet")]
    CacheNotFilled(&'static str),
    /// The password Secret a ShardedService names is missing or unusable: shown on the object,
    /// and retried with backoff (Secrets are not watched; creating it is noticed at the retry).
    #[error("the shards' password: {0}")]
    SecretUnusable(String),
}

impl From<kube::Error> for Error {
    fn from(error: kube::Error) -> Self {
        match &error {
            kube::Error::Api(status) if status.code == 409 => Error::Conflict(error),
            kube::Error::Api(status) if matches!(status.code, 400 | 403 | 422) => Error::Rejected(error),
            _ => Error::Api(error),
        }
    }
}

impl Error {
    /// A small fixed category for metric labels and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "invalid_spec",
            Error::MissingReference(_) => "missing_reference",
            Error::NameClash { .. } => "name_clash",
            Error::Build(_) => "build",
            Error::Conflict(_) => "conflict",
            Error::Rejected(_) => "rejected",
            Error::Api(_) => "api",
            Error::Encode(_) => "encode",
            Error::CacheNotFilled(_) => "cache",
            Error::SecretUnusable(_) => "secret",
        }
    }

    /// Errors that only a change of the object (or of what it refers to) can fix: they become a
    /// status condition, and the controller waits instead of retrying.
    pub fn needs_user_change(&self) -> bool {
        matches!(
            self,
            Error::InvalidSpec(_) | Error::MissingReference(_) | Error::NameClash { .. }
        )
    }

    /// Errors a person must see on the object: a spec to change, or an API server refusal (a quota
    /// or a policy to change). Transient errors only requeue.
    pub fn shown_on_status(&self) -> bool {
        self.needs_user_change() || matches!(self, Error::Rejected(_) | Error::SecretUnusable(_))
    }

    /// Reason for the status condition and Event.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::MissingReference(_) => "MissingReference",
            Error::NameClash { .. } => "NameClash",
            Error::Build(_) => "BuildFailed",
            Error::Conflict(_) => "Conflict",
            Error::Rejected(kube::Error::Api(status)) => match status.code {
                403 => "Forbidden",
                422 => "Invalid",
                _ => "BadRequest",
            },
            Error::Rejected(_) => "Rejected",
            Error::Api(_) => "ApiError",
            Error::Encode(_) => "EncodeFailed",
            Error::CacheNotFilled(_) => "CacheNotFilled",
            Error::SecretUnusable(_) => "AuthSecretUnusable",
        }
    }
}

/// The API server's own message for a refused request.
fn rejection_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

/// What every reconcile gets.
pub struct Context {
    pub client: Client,
    pub metrics: Metrics,
    /// Who publishes the Events: this controller, this instance.
    reporter: Reporter,
    pub pdb_api: PdbApi,
    /// Only this namespace is watched, when set.
    pub watch_namespace: Option<String>,
    /// Image of the request splitter that fronts services during rollouts.
    pub splitter_image: String,
    /// Requests and limits of the splitter's container.
    pub splitter_resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    /// Analysis baselines of the rollouts in progress.
    baselines: rollout::Baselines,
    /// The pollers of the AutoscalingPolicies.
    autoscalers: Arc<autoscaling::Pollers>,
    /// Consecutive failures per object, for backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// The versions this operator's own writes replaced.
    superseded: Superseded,
}

/// Per object, the resourceVersion this operator's last write replaced: while the watch still
/// delivers that version, the cache is behind the operator's own write.
#[derive(Default)]
struct Superseded(Mutex<HashMap<String, String>>);

impl Superseded {
    /// Remembers that a write replaced `version` of the object `key`.
    fn note(&self, key: String, version: String) {
        if let Ok(mut replaced) = self.0.lock() {
            replaced.insert(key, version);
        }
    }

    /// Whether `cached` is the version of `key` that the last write replaced. Once the cache holds
    /// another, the entry is forgotten.
    fn is_behind(&self, key: &str, cached: Option<&str>) -> bool {
        let Ok(mut replaced) = self.0.lock() else {
            return false;
        };
        match (replaced.get(key), cached) {
            (Some(version), Some(cached)) if version == cached => true,
            (Some(_), _) => {
                replaced.remove(key);
                false
            }
            (None, _) => false,
        }
    }
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Metrics,
        pdb_api: PdbApi,
        identity: &str,
        watch_namespace: Option<String>,
        splitter_image: String,
    ) -> Context {
        Context {
            reporter: Reporter {
                controller: "outrigger-operator".to_owned(),
                instance: Some(identity.to_owned()),
            },
            client,
            metrics,
            pdb_api,
            watch_namespace,
            splitter_image,
            splitter_resources: None,
            baselines: rollout::Baselines::default(),
            autoscalers: Arc::default(),
            failures: Mutex::new(HashMap::new()),
            superseded: Superseded::default(),
        }
    }

    /// The same context, giving the splitters of rollouts these requests and limits.
    #[must_use]
    pub fn with_splitter_resources(
        self,
        resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    ) -> Context {
        Context {
            splitter_resources: resources,
            ..self
        }
    }

    /// An API for watching `K`: in the watched namespace, or cluster-wide.
    pub fn api<K>(&self) -> kube::Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match &self.watch_namespace {
            Some(namespace) => kube::Api::namespaced(self.client.clone(), namespace),
            None => kube::Api::all(self.client.clone()),
        }
    }

    /// Records a success, resetting the backoff of `key`.
    fn succeeded(&self, key: &str) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(key);
        }
    }

    /// Records a failure and returns how long to wait before retrying: 1 s, doubling to 5 min.
    fn backoff(&self, key: &str) -> Duration {
        let attempt = self
            .failures
            .lock()
            .map(|mut failures| {
                let count = failures.entry(key.to_owned()).or_insert(0);
                *count = count.saturating_add(1);
                *count
            })
            .unwrap_or(1);
        backoff_delay(attempt)
    }

    /// Counts a failed reconcile under its error category.
    fn count_error(&self, controller: &'static str, error: &Error) {
        self.metrics
            .errors
            .get_or_create(&crate::metrics::ErrorLabels {
                controller,
                category: error.category(),
            })
            .inc();
    }

    /// Remembers that a write of `controller` replaced `version` of the object `key`.
    fn superseded(&self, controller: &'static str, key: &str, version: String) {
        self.superseded.note(format!("{controller}:{key}"), version);
    }

    /// Whether the cache still holds the version of `key` that this operator's last write replaced.
    fn cache_behind_own_write(&self, controller: &'static str, key: &str, cached: Option<&str>) -> bool {
        self.superseded.is_behind(&format!("{controller}:{key}"), cached)
    }

    /// Runs one reconcile with its metrics: counted, timed, and the object's backoff reset when
    /// it succeeds. A reconcile of a version this operator has already written over is skipped:
    /// computed from it, the status would differ from the cached one and its write would meet a
    /// 409. The watch delivers the written version soon and triggers the reconcile again; the
    /// requeue is only the fallback.
    async fn measured(
        &self,
        controller: &'static str,
        key: &str,
        cached_version: Option<&str>,
        reconcile: impl std::future::Future<Output = Result<Action, Error>>,
    ) -> Result<Action, Error> {
        if self.cache_behind_own_write(controller, key, cached_version) {
            tracing::debug!(
                object = key,
                "The cache is behind this operator's own write; waiting for the watch."
            );
            return Ok(Action::requeue(CACHE_BEHIND_FALLBACK));
        }
        let started = std::time::Instant::now();
        let labels = crate::metrics::ControllerLabels { controller };
        self.metrics.reconciles.get_or_create(&labels).inc();
        let result = reconcile.await;
        self.metrics
            .duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        if result.is_ok() {
            self.succeeded(key);
        }
        result
    }

    /// Publishes an Event about `object`; failures to publish are logged, never fatal. Events are
    /// created directly rather than through kube's `Recorder`, which keeps every Event it published
    /// for six minutes to count repeats into a series: 10,000 services becoming Ready kept 10,000
    /// Events in memory. The operator publishes on transitions only, so repeats are rare.
    async fn event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let event = new_event(&self.reporter, &object.object_ref(&()), type_, reason, note);
        let namespace = event.metadata.namespace.clone().unwrap_or_default();
        let api: kube::Api<events::v1::Event> = kube::Api::namespaced(self.client.clone(), &namespace);
        if let Err(error) = api.create(&kube::api::PostParams::default(), &event).await {
            tracing::warn!(%error, reason, "Publishing an event failed.");
        }
    }
}

/// An Event about `regarding`, as kube's `Recorder` would first publish it.
fn new_event(
    reporter: &Reporter,
    regarding: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) -> events::v1::Event {
    let now = Timestamp::now();
    events::v1::Event {
        metadata: ObjectMeta {
            namespace: regarding.namespace.clone(),
            name: Some(format!(
                "{}.{:x}",
                regarding.name.as_deref().unwrap_or(&reporter.controller),
                now.as_nanosecond()
            )),
            ..ObjectMeta::default()
        },
        action: Some("Reconcile".to_owned()),
        reason: Some(reason.to_owned()),
        note: Some(note),
        event_time: Some(MicroTime(now)),
        regarding: Some(regarding.clone()),
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| reporter.controller.clone()),
        ),
        type_: Some(
            match type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .to_owned(),
        ),
        ..events::v1::Event::default()
    }
}

/// Exponential backoff: 1 s, 2 s, 4 s … capped at 300 s.
pub fn backoff_delay(attempt: u32) -> Duration {
    Duration::from_secs(
        1u64.checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u64::MAX)
            .min(300),
    )
}

/// How many reconciles of one controller run at once. Each one in flight holds its decoded object
/// and its future; unbounded, a start ran every object's at once (all waiting for the caches to
/// fill), which with 10,000 objects was most of the operator's memory. A reconcile that writes
/// nothing takes well under a millisecond, and one that writes waits on the API server, so a few
/// dozen keep up with any pace the API server takes writes at.
const CONCURRENCY: u16 = 32;

fn controller_config() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(CONCURRENCY)
}

/// How long after a successful reconcile to check again anyway (drift from outside).
pub const RESYNC: Duration = Duration::from_secs(300);

/// When to reconcile again an object whose cached version the operator has written over, if the
/// watch has not delivered the new version by then.
const CACHE_BEHIND_FALLBACK: Duration = Duration::from_secs(10);

/// When to retry after a 409: the object changed, and the watch event of its newer version triggers
/// the reconcile anyway, so a conflict does not grow the backoff (on a loaded API server the
/// watch lags, and doubling on each conflict left objects waiting minutes for nothing).
const CONFLICT_RETRY: Duration = Duration::from_secs(2);

fn error_action(ctx: &Context, controller: &'static str, key: &str, error: &Error) -> Action {
    ctx.count_error(controller, error);
    if matches!(error, Error::Conflict(_)) {
        tracing::debug!(%error, object = key, "Reconcile met a newer version; retrying when the watch delivers it.");
        return Action::requeue(CONFLICT_RETRY);
    }
    let delay = ctx.backoff(key);
    tracing::warn!(%error, object = key, category = error.category(), retry_in = ?delay, "Reconcile failed.");
    Action::requeue(delay)
}

pub use self::{
    replicated::run as run_replicated, sharded::run as run_sharded, validity::run as run_validity,
};

/// Runs every controller until `shutdown` completes.
pub async fn run_all(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stopped| *stopped).await;
    };
    tokio::join!(
        run_replicated(ctx.clone(), stop(rx.clone())),
        run_sharded(ctx.clone(), stop(rx.clone())),
        run_validity(ctx.clone(), stop(rx.clone())),
        autoscaling::run(ctx.clone(), stop(rx)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(
            serde_json::from_value(serde_json::json!({
                "status": "Failure", "code": code, "reason": reason, "message": message,
            }))
            .unwrap(),
        ))
    }

    #[test]
    fn refusals_a_retry_cannot_fix_are_shown_with_the_api_servers_message() {
        let forbidden = Error::from(api_error(
            403,
            "Forbidden",
            "services \"web\" is forbidden: exceeded quota: q",
        ));
        assert!(forbidden.shown_on_status() && !forbidden.needs_user_change());
        assert_eq!(forbidden.reason(), "Forbidden");
        assert_eq!(
            forbidden.to_string(),
            "the API server refused it: services \"web\" is forbidden: exceeded quota: q"
        );
        assert_eq!(Error::from(api_error(422, "Invalid", "x")).reason(), "Invalid");
        for transient in [409, 429, 500, 503] {
            assert!(
                !Error::from(api_error(transient, "x", "x")).shown_on_status(),
                "{transient} is retried quietly"
            );
        }
    }

    #[test]
    fn an_event_is_about_its_object_in_its_namespace_and_names_the_reporting_instance() {
        let reporter = Reporter {
            controller: "outrigger-operator".to_owned(),
            instance: Some("op-0".to_owned()),
        };
        let regarding = ObjectReference {
            kind: Some("ReplicatedService".to_owned()),
            namespace: Some("shop".to_owned()),
            name: Some("web".to_owned()),
            ..ObjectReference::default()
        };
        let event = new_event(
            &reporter,
            &regarding,
            EventType::Warning,
            "Forbidden",
            "no".to_owned(),
        );
        assert_eq!(event.metadata.namespace.as_deref(), Some("shop"));
        assert!(event.metadata.name.unwrap_or_default().starts_with("web."));
        assert_eq!(
            (
                event.type_.as_deref(),
                event.reason.as_deref(),
                event.note.as_deref()
            ),
            (Some("Warning"), Some("Forbidden"), Some("no"))
        );
        assert_eq!(event.reporting_instance.as_deref(), Some("op-0"));
        assert_eq!(event.regarding, Some(regarding));
    }

    #[test]
    fn a_cached_version_the_last_write_replaced_is_behind_until_another_arrives() {
        let superseded = Superseded::default();
        assert!(
            !superseded.is_behind("rs:ns/a", Some("10")),
            "nothing written yet"
        );
        superseded.note("rs:ns/a".to_owned(), "10".to_owned());
        assert!(superseded.is_behind("rs:ns/a", Some("10")));
        assert!(
            superseded.is_behind("rs:ns/a", Some("10")),
            "still behind on a second trigger"
        );
        assert!(!superseded.is_behind("rs:ns/b", Some("10")), "another object");
        assert!(
            !superseded.is_behind("rs:ns/a", Some("11")),
            "the written version arrived"
        );
        assert!(
            !superseded.is_behind("rs:ns/a", Some("10")),
            "forgotten once caught up"
        );
    }

    #[test]
    fn backoff_doubles_from_one_second_and_caps_at_five_minutes() {
        let delays: Vec<u64> = [1, 2, 3, 4, 9, 10, 64, 1000]
            .into_iter()
            .map(|a| backoff_delay(a).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 256, 300, 300, 300]);
    }
}
