//! Kubernetes Events from a sidecar about the service its pod belongs to, so that a user sees a
//! sidecar's trouble with `kubectl describe replicatedservice web`, not only in a log line.
//!
//! Who the Events are about comes from the pod's environment ([`Origin::from_env`]): the owning
//! service as injection names it (`OUTRIGGER_OWNER=ReplicatedService/web`, and
//! `OUTRIGGER_OWNER_UID`, which `kubectl describe` matches on), or, for a pod that belongs to no
//! service, the pod itself (`OUTRIGGER_POD_NAME`, `OUTRIGGER_POD_NAMESPACE`, `OUTRIGGER_POD_UID`).
//! The message names the pod, `source.component` and `reportingComponent` the sidecar.
//!
//! Writing never blocks the data path: [`Recorder::warning`] and [`Recorder::normal`] put a note in
//! a bounded queue (a full queue drops it, counted) and a [`Poster`] task writes it. As client-go's
//! correlator does, a repeat of the same type, reason and message is one Event whose `count` and
//! `lastTimestamp` are patched ([`Correlator`]), and a token bucket bounds the writes ([`Limiter`]);
//! what it refuses is counted. A `403` (the pod's ServiceAccount may not write Events) is logged
//! once and counted, never retried in a loop.
//!
//! The Event body, the aggregation and the limiter are pure and tested without an API server.

use std::{
    collections::VecDeque,
    time::{Duration, Instant, SystemTime},
};

use http::StatusCode;
use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{
    apiserver::{ApiClient, ApiError, ApiServerOptions},
    encode::percent_encode,
    metrics::{ReasonLabels, ResultLabels},
};

/// API version of the services Events are about.
pub const SERVICE_API_VERSION: &str = "outrigger.dev/v1alpha1";
/// The owners that are services; any other owner (a ReplicaSet of a plain pod) makes the pod itself
/// the subject.
pub const SERVICE_KINDS: [&str; 2] = ["ReplicatedService", "ShardedService"];
/// Notes waiting to be written; more are dropped.
pub const QUEUE_CAPACITY: usize = 64;
/// Distinct notes remembered for aggregation (client-go keeps 4096 per process; a sidecar says few
/// different things).
const CORRELATED: usize = 64;
/// Writes allowed at once, and the pace after (client-go: 25, then one per 5 minutes per object).
const BURST: u32 = 25;
const REFILL_EVERY: Duration = Duration::from_secs(30);
/// Longest message written; longer ones are cut at a character boundary.
pub const MESSAGE_LIMIT: usize = 1024;

/// Why Events cannot be written from this pod.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("{variable} is not set: the pod's name and namespace come from the downward API")]
    MissingVariable { variable: &'static str },
    #[error(transparent)]
    Client(#[from] ApiError),
}

/// `Normal` or `Warning`, the two types Kubernetes knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// What a sidecar has to say: a type, a short CamelCase reason and a message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Note {
    pub type_: EventType,
    pub reason: &'static str,
    pub message: String,
}

/// `involvedObject` of an Event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// Who reports (the sidecar, in a pod) and about what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub regarding: ObjectReference,
    /// The pod the sidecar runs in, named in every message.
    pub pod: String,
    /// The sidecar: `outrigger-health-adapter`.
    pub component: &'static str,
    /// The node, when known (`source.host`).
    pub host: Option<String>,
}

impl Origin {
    /// From the process environment.
    pub fn from_env(component: &'static str) -> Result<Origin, EventsError> {
        Self::from_lookup(component, |name| std::env::var(name).ok())
    }

    /// From any lookup of environment variables. Injection sets `OUTRIGGER_POD_NAME` and
    /// `OUTRIGGER_POD_NAMESPACE` for the sidecars that write Events, and `POD_NAME` and
    /// `POD_NAMESPACE` for every sidecar.
    pub fn from_lookup(
        component: &'static str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Origin, EventsError> {
        let get = |name: &str| lookup(name).filter(|value| !value.is_empty());
        let pod =
            get("OUTRIGGER_POD_NAME")
                .or_else(|| get("POD_NAME"))
                .ok_or(EventsError::MissingVariable {
                    variable: "OUTRIGGER_POD_NAME",
                })?;
        let namespace = get("OUTRIGGER_POD_NAMESPACE")
            .or_else(|| get("POD_NAMESPACE"))
            .ok_or(EventsError::MissingVariable {
                variable: "OUTRIGGER_POD_NAMESPACE",
            })?;
        let service = get("OUTRIGGER_OWNER").and_then(|owner| {
            let (kind, name) = owner.split_once('/')?;
            (SERVICE_KINDS.contains(&kind) && !name.is_empty()).then(|| (kind.to_owned(), name.to_owned()))
        });
        let regarding = match service {
            Some((kind, name)) => ObjectReference {
                api_version: SERVICE_API_VERSION.to_owned(),
                kind,
                name,
                namespace: namespace.clone(),
                uid: get("OUTRIGGER_OWNER_UID"),
            },
            None => ObjectReference {
                api_version: "v1".to_owned(),
                kind: "Pod".to_owned(),
                name: pod.clone(),
                namespace,
                uid: get("OUTRIGGER_POD_UID"),
            },
        };
        Ok(Origin {
            regarding,
            pod,
            component,
            host: get("OUTRIGGER_NODE_NAME"),
        })
    }

    /// The collection Events of this pod are written to.
    pub fn events_path(&self) -> String {
        format!(
            "/api/v1/namespaces/{}/events",
            percent_encode(&self.regarding.namespace)
        )
    }
}

/// The message as written: the pod first, cut at [`MESSAGE_LIMIT`].
pub fn message(origin: &Origin, note: &Note) -> String {
    let mut text = format!("pod {}: {}", origin.pod, note.message);
    if text.len() > MESSAGE_LIMIT {
        let mut end = MESSAGE_LIMIT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// A new core/v1 Event. `eventTime` stays unset: these are the classic Events `kubectl describe`
/// lists, with `count`, `firstTimestamp` and `lastTimestamp`.
pub fn event_body(origin: &Origin, note: &Note, name: &str, stamps: Stamps) -> Value {
    let mut source = json!({"component": origin.component});
    if let Some(host) = &origin.host {
        source["host"] = json!(host);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": origin.regarding.namespace},
        "involvedObject": origin.regarding,
        "type": note.type_.as_str(),
        "reason": note.reason,
        "message": message(origin, note),
        "source": source,
        "reportingComponent": origin.component,
        "reportingInstance": origin.pod,
        "count": stamps.count,
        "firstTimestamp": rfc3339(stamps.first),
        "lastTimestamp": rfc3339(stamps.last),
    })
}

/// The merge patch that counts a repeat.
pub fn repeat_patch(stamps: Stamps) -> Value {
    json!({"count": stamps.count, "lastTimestamp": rfc3339(stamps.last)})
}

/// How often, and since when, one note was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamps {
    pub count: u32,
    pub first: SystemTime,
    pub last: SystemTime,
}

/// What to write for a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A new Event with this name.
    Create { name: String, stamps: Stamps },
    /// A repeat: patch the Event of that name.
    Patch { name: String, stamps: Stamps },
}

/// One remembered note and the Event that holds it.
#[derive(Debug, Clone)]
struct Correlated {
    note: Note,
    name: String,
    stamps: Stamps,
}

/// Aggregation of repeats, as client-go's `EventCorrelator` does for identical events: the key is
/// the type, reason and message (the subject and source are the same for every note of a sidecar).
#[derive(Debug, Default)]
pub struct Correlator {
    /// Most recently used last; the oldest is forgotten past [`CORRELATED`].
    entries: VecDeque<Correlated>,
    last_name_nanos: u128,
}

impl Correlator {
    /// Decides how to write `note`: a repeat of a note written before patches its Event.
    pub fn decide(&mut self, origin: &Origin, note: &Note, now: SystemTime) -> Decision {
        if let Some(at) = self.entries.iter().position(|entry| entry.note == *note) {
            if let Some(mut entry) = self.entries.remove(at) {
                entry.stamps.count = entry.stamps.count.saturating_add(1);
                entry.stamps.last = now;
                let decision = Decision::Patch {
                    name: entry.name.clone(),
                    stamps: entry.stamps,
                };
                self.entries.push_back(entry);
                return decision;
            }
        }
        Decision::Create {
            name: self.new_name(&origin.regarding.name, now),
            stamps: Stamps {
                count: 1,
                first: now,
                last: now,
            },
        }
    }

    /// An Event was created (anew, or again after it expired): its repeats patch it.
    pub fn created(&mut self, note: &Note, name: String, stamps: Stamps) {
        self.entries.retain(|entry| entry.note != *note);
        if self.entries.len() >= CORRELATED {
            self.entries.pop_front();
        }
        self.entries.push_back(Correlated {
            note: note.clone(),
            name,
            stamps,
        });
    }

    /// Forgets a note whose Event is gone or could not be written, so that the next one creates.
    pub fn forget(&mut self, note: &Note) {
        self.entries.retain(|entry| entry.note != *note);
    }

    /// `<subject>.<nanoseconds in hex>`, as client-go names Events, strictly increasing so that two
    /// notes in one clock tick do not collide.
    fn new_name(&mut self, subject: &str, now: SystemTime) -> String {
        let nanos = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos())
            .max(self.last_name_nanos + 1);
        self.last_name_nanos = nanos;
        // A name is at most 253 characters; the suffix takes up to 33.
        let mut end = subject.len().min(220);
        while !subject.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}.{nanos:x}", &subject[..end])
    }
}

/// A token bucket: `burst` writes at once, then one more every `every`.
#[derive(Debug, Clone)]
pub struct Limiter {
    burst: u32,
    every: Duration,
    tokens: u32,
    /// When the last token was added (or the bucket started).
    since: Instant,
}

impl Limiter {
    pub fn new(burst: u32, every: Duration, now: Instant) -> Limiter {
        Limiter {
            burst,
            every,
            tokens: burst,
            since: now,
        }
    }

    /// Takes a token if there is one.
    pub fn allow(&mut self, now: Instant) -> bool {
        if !self.every.is_zero() {
            let elapsed = now.saturating_duration_since(self.since);
            let earned = elapsed.as_nanos() / self.every.as_nanos();
            if self.tokens >= self.burst {
                self.since = now;
            } else if earned > 0 {
                let earned = u32::try_from(earned).unwrap_or(u32::MAX);
                self.tokens = self.tokens.saturating_add(earned).min(self.burst);
                self.since += self.every * earned.min(self.burst);
                if self.tokens >= self.burst {
                    self.since = now;
                }
            }
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// `events_written_total{result}` and `events_dropped_total{reason}`; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct EventMetrics {
    /// `created`, `patched`, `forbidden`, `error`.
    pub written: Family<ResultLabels, Counter>,
    /// `queue_full`, `rate_limited`.
    pub dropped: Family<ReasonLabels, Counter>,
}

impl EventMetrics {
    /// Creates the counters and registers them in `registry` (the sidecar's, with its prefix).
    pub fn register(registry: &mut Registry) -> EventMetrics {
        let metrics = EventMetrics::default();
        registry.register(
            "events_written",
            "Kubernetes Events written about the owning service, by result: created, patched, forbidden, error",
            metrics.written.clone(),
        );
        registry.register(
            "events_dropped",
            "Kubernetes Events not written, by reason: queue_full, rate_limited",
            metrics.dropped.clone(),
        );
        metrics
    }

    fn written(&self, result: &'static str) {
        self.written.get_or_create(&ResultLabels { result }).inc();
    }

    fn dropped(&self, reason: &'static str) {
        self.dropped.get_or_create(&ReasonLabels { reason }).inc();
    }
}

/// Where notes are recorded; cheap to clone, usable from any thread, never blocks.
#[derive(Debug, Clone)]
pub struct Recorder {
    queue: Option<mpsc::Sender<Note>>,
    metrics: EventMetrics,
}

impl Recorder {
    /// A recorder that writes nothing (outside a pod, in tests).
    pub fn disabled() -> Recorder {
        Recorder {
            queue: None,
            metrics: EventMetrics::default(),
        }
    }

    /// A recorder and the task that writes its notes; run the [`Poster`] on the sidecar's async
    /// runtime.
    pub fn new(client: ApiClient, origin: Origin, metrics: EventMetrics) -> (Recorder, Poster) {
        let (queue, notes) = mpsc::channel(QUEUE_CAPACITY);
        let recorder = Recorder {
            queue: Some(queue),
            metrics: metrics.clone(),
        };
        let poster = Poster {
            client,
            origin,
            notes,
            correlator: Correlator::default(),
            limiter: Limiter::new(BURST, REFILL_EVERY, Instant::now()),
            metrics,
            forbidden_logged: false,
        };
        (recorder, poster)
    }

    /// In a pod: the subject from the environment and the in-cluster API client (or `options`). When
    /// either is missing, Events are off (logged once) and the sidecar runs on.
    pub fn from_env(
        component: &'static str,
        options: &ApiServerOptions,
        metrics: EventMetrics,
    ) -> (Recorder, Option<Poster>) {
        let started = Origin::from_env(component).and_then(|origin| {
            let client = ApiClient::new(options)?.with_user_agent(component);
            Ok((client, origin))
        });
        match started {
            Ok((client, origin)) => {
                info!(
                    kind = %origin.regarding.kind,
                    name = %origin.regarding.name,
                    "Reporting to Kubernetes Events."
                );
                let (recorder, poster) = Recorder::new(client, origin, metrics);
                (recorder, Some(poster))
            }
            Err(error) => {
                info!(%error, "Not writing Kubernetes Events.");
                (Recorder { queue: None, metrics }, None)
            }
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.queue.is_some()
    }

    pub fn warning(&self, reason: &'static str, message: impl Into<String>) {
        self.record(Note {
            type_: EventType::Warning,
            reason,
            message: message.into(),
        });
    }

    pub fn normal(&self, reason: &'static str, message: impl Into<String>) {
        self.record(Note {
            type_: EventType::Normal,
            reason,
            message: message.into(),
        });
    }

    /// Queues a note; a full queue drops it (counted).
    pub fn record(&self, note: Note) {
        let Some(queue) = &self.queue else {
            return;
        };
        if queue.try_send(note).is_err() {
            self.metrics.dropped("queue_full");
        }
    }
}

/// Writes the recorded notes as Events, one at a time.
pub struct Poster {
    client: ApiClient,
    origin: Origin,
    notes: mpsc::Receiver<Note>,
    correlator: Correlator,
    limiter: Limiter,
    metrics: EventMetrics,
    forbidden_logged: bool,
}

impl std::fmt::Debug for Poster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poster")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Poster {
    /// Runs until every [`Recorder`] is dropped.
    pub async fn run(mut self) {
        while let Some(note) = self.notes.recv().await {
            self.post(note).await;
        }
    }

    async fn post(&mut self, note: Note) {
        let decision = self.correlator.decide(&self.origin, &note, SystemTime::now());
        if !self.limiter.allow(Instant::now()) {
            // A refused repeat still counts: the next patch carries the total.
            self.metrics.dropped("rate_limited");
            return;
        }
        let path = self.origin.events_path();
        let written = match &decision {
            Decision::Patch { name, stamps } => {
                let patched = self
                    .client
                    .merge_patch(
                        &format!("{path}/{}", percent_encode(name)),
                        &repeat_patch(*stamps),
                    )
                    .await;
                match patched {
                    // Events expire (an hour by default); the repeat starts a new one.
                    Err(error) if error.status() == Some(StatusCode::NOT_FOUND) => {
                        self.correlator.forget(&note);
                        self.create(&note, SystemTime::now()).await
                    }
                    other => other.map(|()| "patched"),
                }
            }
            Decision::Create { name, stamps } => {
                let created = self
                    .client
                    .create(&path, &event_body(&self.origin, &note, name, *stamps))
                    .await;
                if created.is_ok() {
                    self.correlator.created(&note, name.clone(), *stamps);
                }
                created.map(|()| "created")
            }
        };
        match written {
            Ok(result) => {
                debug!(reason = note.reason, result, "Event written.");
                self.metrics.written(result);
            }
            Err(error) if error.status() == Some(StatusCode::FORBIDDEN) => {
                self.correlator.forget(&note);
                self.metrics.written("forbidden");
                if !self.forbidden_logged {
                    self.forbidden_logged = true;
                    warn!(%error, namespace = %self.origin.regarding.namespace, "The pod's ServiceAccount may not write Events; they are counted and dropped.");
                }
            }
            Err(error) => {
                self.correlator.forget(&note);
                self.metrics.written("error");
                warn!(%error, reason = note.reason, "Writing an Event failed.");
            }
        }
    }

    async fn create(&mut self, note: &Note, now: SystemTime) -> Result<&'static str, ApiError> {
        let Decision::Create { name, stamps } = self.correlator.decide(&self.origin, note, now) else {
            return Ok("patched");
        };
        self.client
            .create(
                &self.origin.events_path(),
                &event_body(&self.origin, note, &name, stamps),
            )
            .await?;
        self.correlator.created(note, name, stamps);
        Ok("created")
    }
}

/// `2026-12-06T02:50:00Z`: seconds, as `metav1.Time` writes them.
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rest = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    fn origin() -> Origin {
        Origin::from_lookup(
            "outrigger-health-adapter",
            lookup(&[
                ("OUTRIGGER_POD_NAME", "web-7d4b9-x2x1p"),
                ("OUTRIGGER_POD_NAMESPACE", "shop"),
                ("OUTRIGGER_OWNER", "ReplicatedService/web"),
                ("OUTRIGGER_OWNER_UID", "0a1b"),
                ("OUTRIGGER_NODE_NAME", "node-1"),
            ]),
        )
        .unwrap()
    }

    fn warning(message: &str) -> Note {
        Note {
            type_: EventType::Warning,
            reason: "ReadinessFailing",
            message: message.to_owned(),
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// A case name, the environment, and the subject expected (api version, kind, name, uid).
    type SubjectCase = (
        &'static str,
        &'static [(&'static str, &'static str)],
        Option<(&'static str, &'static str, &'static str, Option<&'static str>)>,
    );

    #[test]
    fn the_subject_is_the_owning_service_or_else_the_pod() {
        let cases: [SubjectCase; 5] = [
            (
                "a service's pod",
                &[
                    ("OUTRIGGER_POD_NAME", "cache-0"),
                    ("OUTRIGGER_POD_NAMESPACE", "shop"),
                    ("OUTRIGGER_OWNER", "ShardedService/cache"),
                    ("OUTRIGGER_OWNER_UID", "u-1"),
                ],
                Some((SERVICE_API_VERSION, "ShardedService", "cache", Some("u-1"))),
            ),
            (
                "a plain pod of a ReplicaSet",
                &[
                    ("POD_NAME", "web-1"),
                    ("POD_NAMESPACE", "shop"),
                    ("OUTRIGGER_OWNER", "ReplicaSet/web-7d4b9"),
                    ("OUTRIGGER_POD_UID", "p-1"),
                ],
                Some(("v1", "Pod", "web-1", Some("p-1"))),
            ),
            (
                "a pod with no owner",
                &[
                    ("OUTRIGGER_POD_NAME", "solo"),
                    ("OUTRIGGER_POD_NAMESPACE", "shop"),
                ],
                Some(("v1", "Pod", "solo", None)),
            ),
            (
                "an owner without a name",
                &[
                    ("OUTRIGGER_POD_NAME", "solo"),
                    ("OUTRIGGER_POD_NAMESPACE", "shop"),
                    ("OUTRIGGER_OWNER", "ReplicatedService/"),
                ],
                Some(("v1", "Pod", "solo", None)),
            ),
            (
                "outside a pod",
                &[("OUTRIGGER_OWNER", "ReplicatedService/web")],
                None,
            ),
        ];
        for (case, vars, expected) in cases {
            let origin = Origin::from_lookup("c", lookup(vars)).ok();
            let got = origin.as_ref().map(|o| {
                (
                    o.regarding.api_version.as_str(),
                    o.regarding.kind.as_str(),
                    o.regarding.name.as_str(),
                    o.regarding.uid.as_deref(),
                )
            });
            assert_eq!(got, expected, "{case}");
            if let Some(origin) = origin {
                assert_eq!(origin.regarding.namespace, "shop", "{case}");
            }
        }
    }

    #[test]
    fn an_event_names_the_service_the_sidecar_and_the_pod() {
        let origin = origin();
        let stamps = Stamps {
            count: 1,
            first: at(1_796_525_400),
            last: at(1_796_525_400),
        };
        let body = event_body(
            &origin,
            &warning("check redis failing: timed out"),
            "web.1",
            stamps,
        );
        assert_eq!(
            body,
            json!({
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": "web.1", "namespace": "shop"},
                "involvedObject": {"apiVersion": "outrigger.dev/v1alpha1", "kind": "ReplicatedService",
                                   "name": "web", "namespace": "shop", "uid": "0a1b"},
                "type": "Warning", "reason": "ReadinessFailing",
                "message": "pod web-7d4b9-x2x1p: check redis failing: timed out",
                "source": {"component": "outrigger-health-adapter", "host": "node-1"},
                "reportingComponent": "outrigger-health-adapter",
                "reportingInstance": "web-7d4b9-x2x1p",
                "count": 1,
                "firstTimestamp": "2026-12-06T02:50:00Z",
                "lastTimestamp": "2026-12-06T02:50:00Z",
            })
        );
        assert_eq!(origin.events_path(), "/api/v1/namespaces/shop/events");
    }

    #[test]
    fn messages_are_cut_at_the_limit_on_a_character_boundary() {
        let origin = origin();
        let prefix = "pod web-7d4b9-x2x1p: ".len();
        for (text, length) in [
            ("é".repeat(5), prefix + 10),
            ("é".repeat(1000), MESSAGE_LIMIT - 1),
            ("a".repeat(2000), MESSAGE_LIMIT),
        ] {
            let written = message(&origin, &warning(&text));
            assert_eq!(written.len(), length);
            assert!(written.starts_with("pod web-7d4b9-x2x1p: "));
        }
    }

    #[test]
    fn repeats_patch_the_count_and_other_notes_create() {
        let origin = origin();
        let mut correlator = Correlator::default();
        let steps: [(Note, u64, &str, u32); 5] = [
            (warning("redis down"), 10, "create", 1),
            (warning("redis down"), 20, "patch", 2),
            (warning("redis timed out"), 25, "create", 1),
            (warning("redis down"), 30, "patch", 3),
            (
                Note {
                    type_: EventType::Normal,
                    ..warning("redis down")
                },
                40,
                "create",
                1,
            ),
        ];
        let mut first_name = None;
        for (index, (note, secs, kind, count)) in steps.into_iter().enumerate() {
            match correlator.decide(&origin, &note, at(secs)) {
                Decision::Create { name, stamps } => {
                    assert_eq!(
                        (kind, stamps.count, stamps.first),
                        ("create", count, at(secs)),
                        "step {index}"
                    );
                    assert!(name.starts_with("web."), "{name}");
                    first_name.get_or_insert(name.clone());
                    correlator.created(&note, name, stamps);
                }
                Decision::Patch { name, stamps } => {
                    assert_eq!(
                        (kind, stamps.count, stamps.first, stamps.last),
                        ("patch", count, at(10), at(secs)),
                        "step {index}"
                    );
                    assert_eq!(Some(&name), first_name.as_ref(), "step {index}");
                    assert_eq!(
                        repeat_patch(stamps),
                        json!({"count": count, "lastTimestamp": rfc3339(at(secs))})
                    );
                }
            }
        }
    }

    #[test]
    fn a_forgotten_note_creates_again_and_names_never_collide() {
        let origin = origin();
        let mut correlator = Correlator::default();
        let note = warning("x");
        let Decision::Create { name: first, stamps } = correlator.decide(&origin, &note, at(5)) else {
            panic!("a new note creates");
        };
        correlator.created(&note, first.clone(), stamps);
        correlator.forget(&note);
        let Decision::Create { name: second, .. } = correlator.decide(&origin, &note, at(5)) else {
            panic!("a forgotten note creates");
        };
        assert_ne!(first, second, "same clock tick, different names");
        // Only the most recent notes are remembered.
        for index in 0..CORRELATED {
            let other = warning(&index.to_string());
            correlator.created(&other, format!("n{index}"), stamps);
        }
        assert!(matches!(
            correlator.decide(&origin, &note, at(6)),
            Decision::Create { .. }
        ));
    }

    #[test]
    fn the_limiter_allows_a_burst_then_one_per_interval() {
        let start = Instant::now();
        let mut limiter = Limiter::new(3, Duration::from_secs(10), start);
        let steps: [(u64, bool); 9] = [
            (0, true),
            (0, true),
            (1, true),
            (2, false),
            (10, true),
            (11, false),
            (20, true),
            (100, true),
            (100, true),
        ];
        for (secs, allowed) in steps {
            assert_eq!(
                limiter.allow(start + Duration::from_secs(secs)),
                allowed,
                "at {secs}s"
            );
        }
        assert!(
            limiter.allow(start + Duration::from_secs(100)),
            "refilled to the burst, no more"
        );
        assert!(!limiter.allow(start + Duration::from_secs(100)));
    }

    #[test]
    fn timestamps_are_utc_seconds() {
        for (secs, text) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_796_525_400, "2026-12-06T02:50:00Z"),
        ] {
            assert_eq!(rfc3339(at(secs)), text);
        }
    }

    /// An API server answering each request with the next status of `script`; returns the
    /// requests seen (method, path, body).
    async fn scripted_api(
        script: Vec<u16>,
    ) -> (String, tokio::task::JoinHandle<Vec<(String, String, Value)>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            for status in script {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buf = Vec::new();
                let (head_end, length) = loop {
                    let mut chunk = [0u8; 4096];
                    let read = stream.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..read]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .map_or(0, |n| n.trim().parse::<usize>().unwrap());
                        break (end + 4, length);
                    }
                };
                while buf.len() < head_end + length {
                    let mut chunk = [0u8; 4096];
                    let read = stream.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..read]);
                }
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let mut words = head.split_whitespace();
                let (method, path) = (words.next().unwrap().to_owned(), words.next().unwrap().to_owned());
                seen.push((method, path, serde_json::from_slice(&buf[head_end..]).unwrap()));
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
                );
                stream.write_all(answer.as_bytes()).await.unwrap();
            }
            seen
        });
        (url, server)
    }

    #[tokio::test]
    async fn the_poster_creates_patches_repeats_recreates_expired_events_and_counts_refusals() {
        let (url, server) = scripted_api(vec![201, 200, 404, 201, 403, 403]).await;
        let token = std::env::temp_dir().join(format!("events-poster-{}", std::process::id()));
        std::fs::write(&token, "t").unwrap();
        let client = ApiClient::new(&ApiServerOptions {
            server: Some(url),
            token_file: Some(token.clone()),
            ca_file: None,
        })
        .unwrap();
        let metrics = EventMetrics::default();
        let (recorder, poster) = Recorder::new(client, origin(), metrics.clone());
        for message in ["redis down", "redis down", "redis down", "other", "third"] {
            recorder.warning("ReadinessFailing", message);
        }
        drop(recorder);
        tokio::time::timeout(Duration::from_secs(10), poster.run())
            .await
            .unwrap();
        std::fs::remove_file(&token).unwrap();
        let seen = server.await.unwrap();
        let calls: Vec<(&str, &str)> = seen.iter().map(|(m, p, _)| (m.as_str(), p.as_str())).collect();
        let first = seen[0].2["metadata"]["name"].as_str().unwrap();
        let named = format!("/api/v1/namespaces/shop/events/{first}");
        assert_eq!(
            calls,
            [
                ("POST", "/api/v1/namespaces/shop/events"),
                ("PATCH", named.as_str()),
                ("PATCH", named.as_str()),
                ("POST", "/api/v1/namespaces/shop/events"),
                ("POST", "/api/v1/namespaces/shop/events"),
                ("POST", "/api/v1/namespaces/shop/events"),
            ]
        );
        assert_eq!(seen[1].2["count"], 2);
        assert_eq!(seen[3].2["count"], 1, "an expired Event starts over");
        assert_ne!(seen[3].2["metadata"]["name"].as_str(), Some(first));
        let written = |result| metrics.written.get_or_create(&ResultLabels { result }).get();
        assert_eq!(
            (
                written("created"),
                written("patched"),
                written("forbidden"),
                written("error")
            ),
            (2, 1, 2, 0)
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_blocking() {
        let origin = origin();
        let token = std::env::temp_dir().join(format!("events-token-{}", std::process::id()));
        std::fs::write(&token, "t").unwrap();
        let client = ApiClient::new(&ApiServerOptions {
            server: Some("http://127.0.0.1:1".to_owned()),
            token_file: Some(token.clone()),
            ca_file: None,
        })
        .unwrap();
        std::fs::remove_file(&token).unwrap();
        let metrics = EventMetrics::default();
        let (recorder, _poster) = Recorder::new(client, origin, metrics.clone());
        for index in 0..QUEUE_CAPACITY + 5 {
            recorder.warning("Test", index.to_string());
        }
        assert_eq!(
            metrics
                .dropped
                .get_or_create(&ReasonLabels { reason: "queue_full" })
                .get(),
            5
        );
        assert!(!Recorder::disabled().is_enabled());
        Recorder::disabled().warning("Test", "goes nowhere");
    }
}
