//! The sync loop: source updates in; validated versions written, the app reloaded, its health
//! watched and a bad version rolled back; the outcome reported. One task owns all of it, so a
//! version is never written while another is being checked.

use std::sync::Arc;

use outrigger_contract::{
    config_sync::{ConfigSyncSettings, ConfigSyncStatus, Reload, SyncState},
    ApiVersion,
};
use outrigger_sidecar_runtime::{admin::AdminState, apiserver::watcher::Backoff};
use tokio::{
    sync::{watch, Notify},
    time::Instant,
};

use crate::{
    debounce::Debounce,
    health::{can_roll_back, HealthGate, Verdict},
    metrics::Metrics,
    reload,
    sources::{Desired, Sources, Update},
    validate::{self, Invalid},
    writer::{version_of, AtomicWriter, FileSet},
};

/// The latest state of each source, left by the watches for the engine. Only the latest matters
/// (each update is a whole object), so it holds one entry per source however fast they change.
#[derive(Debug, Default)]
pub struct Mailbox {
    latest: std::sync::Mutex<Vec<Update>>,
    notify: Notify,
}

impl Mailbox {
    pub fn post(&self, update: Update) {
        {
            let mut latest = self
                .latest
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            latest.retain(|pending| (pending.kind, &pending.name) != (update.kind, &update.name));
            latest.push(update);
        }
        self.notify.notify_one();
    }

    fn take(&self) -> Vec<Update> {
        std::mem::take(
            &mut *self
                .latest
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// Where outcomes go (the pod annotation in a pod; a list in tests).
pub trait Reporter: Send {
    fn report(&mut self, status: &ConfigSyncStatus) -> impl std::future::Future<Output = ()> + Send;
}

#[derive(Debug, Clone)]
struct Version {
    id: String,
    files: FileSet,
    /// The revision of the ConfigMap data in it; unknown for a version found on disk.
    config_revision: Option<String>,
}

/// A reload still to be made, retried with backoff.
#[derive(Debug)]
struct PendingReload {
    at: Instant,
    backoff: Backoff,
    /// Start the health gate once it succeeds (not after a rollback's own reload).
    gate_after: bool,
}

/// The sync engine's state.
pub struct Engine<R> {
    settings: Arc<ConfigSyncSettings>,
    writer: AtomicWriter,
    sources: Sources,
    debounce: Debounce,
    applied: Option<Version>,
    previous: Option<Version>,
    /// The version rolled back last: not applied again until the sources change to another.
    rolled_back: Option<String>,
    /// The refusal reported last, so a refused version is reported once.
    last_status: Option<ConfigSyncStatus>,
    reload: Option<PendingReload>,
    gate: Option<(HealthGate, Instant)>,
    admin: AdminState,
    metrics: Metrics,
    reporter: R,
    /// When the first change of the pending batch was seen, for the latency histogram.
    changed_at: Option<Instant>,
}

impl<R: Reporter> Engine<R> {
    /// An engine resuming from what the volume holds: a restarted sidecar finds its last version
    /// there and neither rewrites it nor reloads the app for it.
    pub fn new(
        settings: Arc<ConfigSyncSettings>,
        pod: Option<String>,
        writer: AtomicWriter,
        admin: AdminState,
        metrics: Metrics,
        reporter: R,
    ) -> Engine<R> {
        let applied = match writer.read_current() {
            Ok(Some(files)) => {
                let id = version_of(&files);
                tracing::info!(version = %id, dir = %writer.dir().display(), "Resuming from the files on disk.");
                Some(Version {
                    id,
                    files,
                    config_revision: None,
                })
            }
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(%error, "Cannot read the files on disk; writing them afresh.");
                None
            }
        };
        Engine {
            sources: Sources::new(&settings, pod),
            debounce: Debounce::new(settings.debounce.0),
            settings,
            writer,
            applied,
            previous: None,
            rolled_back: None,
            last_status: None,
            reload: None,
            gate: None,
            admin,
            metrics,
            reporter,
            changed_at: None,
        }
    }

    /// The version on disk, if any.
    pub fn applied_version(&self) -> Option<&str> {
        self.applied.as_ref().map(|version| version.id.as_str())
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mailbox: Arc<Mailbox>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let next = [
                self.debounce.due(),
                self.reload.as_ref().map(|pending| pending.at),
                self.gate.as_ref().map(|(_, at)| *at),
            ]
            .into_iter()
            .flatten()
            .min();
            tokio::select! {
                () = mailbox.notify.notified() => {
                    let now = Instant::now();
                    for update in mailbox.take() {
                        self.on_update(update, now);
                    }
                }
                () = sleep_until(next) => self.tick(Instant::now()).await,
                () = stop_requested(&mut shutdown) => return,
            }
        }
    }

    /// Records a source update.
    pub fn on_update(&mut self, update: Update, now: Instant) {
        if self.sources.update(update) && self.sources.all_known() {
            self.changed_at.get_or_insert(now);
            self.debounce.changed(now);
        }
    }

    /// Does whatever is due at `now`.
    pub async fn tick(&mut self, now: Instant) {
        if self.debounce.take_if_due(now) {
            self.sync(now).await;
        }
        if self.reload.as_ref().is_some_and(|pending| pending.at <= now) {
            self.try_reload(now).await;
        }
        if self.gate.as_ref().is_some_and(|(_, at)| *at <= now) {
            self.check_health(now).await;
        }
    }

    async fn sync(&mut self, now: Instant) {
        let desired = self
            .sources
            .desired()
            .and_then(|desired| validate::validate(&desired.files, &self.settings).map(|()| desired));
        let Desired {
            files,
            config_revision,
        } = match desired {
            Ok(desired) => desired,
            Err(invalid) => return self.refuse(&invalid).await,
        };
        let id = version_of(&files);
        if let Some(applied) = self.applied.as_mut().filter(|applied| applied.id == id) {
            // A version resumed from disk learns its revision here.
            applied.config_revision = Some(config_revision);
            self.metrics.syncs("unchanged");
            self.ready();
            if self.gate.is_none() && self.reload.is_none() {
                self.report(SyncState::Synced, None, None, None).await;
            }
            return;
        }
        if self.rolled_back.as_deref() == Some(id.as_str()) {
            tracing::debug!(version = %id, "The sources still hold the version that was rolled back.");
            return;
        }
        if let Err(error) = self.writer.write(&files) {
            tracing::error!(%error, category = error.category(), version = %id, "Writing the files failed; retrying.");
            self.metrics.syncs("write_failed");
            self.debounce.changed(now);
            return;
        }
        let fresh = self.applied.is_none();
        self.previous = self.applied.replace(Version {
            id: id.clone(),
            files,
            config_revision: Some(config_revision),
        });
        self.rolled_back = None;
        self.gate = None;
        self.metrics.syncs("applied");
        if let Some(changed) = self.changed_at.take() {
            self.metrics
                .observe_latency(now.saturating_duration_since(changed));
        }
        tracing::info!(version = %id, previous = ?self.previous.as_ref().map(|v| &v.id), "Wrote a new version.");
        self.ready();
        if fresh || self.settings.reload == Reload::None {
            // The first files of a pod are there before the app starts: nothing to reload.
            self.start_gate(!fresh, now);
            if self.gate.is_none() {
                self.report(SyncState::Synced, None, None, None).await;
            }
            return;
        }
        self.reload = Some(PendingReload {
            at: now,
            backoff: Backoff::default(),
            gate_after: true,
        });
        self.try_reload(now).await;
    }

    async fn refuse(&mut self, invalid: &Invalid) {
        self.changed_at = None;
        self.metrics.rejected(invalid.category);
        tracing::error!(
            file = %invalid.file,
            line = invalid.line,
            column = invalid.column,
            category = invalid.category,
            error = %invalid.message,
            "Refused a new version; the app keeps the last good files."
        );
        // Readiness: a pod whose volume has a version (a restart) serves it; a new pod waits.
        if self.applied.is_some() {
            self.ready();
        }
        self.report(
            SyncState::Rejected,
            Some(invalid.file.clone()),
            Some(invalid.to_string()),
            None,
        )
        .await;
    }

    async fn try_reload(&mut self, now: Instant) {
        let Some(mut pending) = self.reload.take() else {
            return;
        };
        match reload::reload(&self.settings.reload).await {
            Ok(()) => {
                self.metrics.reloads("ok");
                tracing::info!(version = ?self.applied_version(), "The app reloaded.");
                // After a rollback's own reload the rollback stays the news; no gate, no "Synced".
                if pending.gate_after {
                    self.start_gate(true, now);
                    if self.gate.is_none() {
                        self.report(SyncState::Synced, None, None, None).await;
                    }
                }
            }
            Err(error) => {
                self.metrics.reloads("failed");
                let delay = pending.backoff.next_delay();
                tracing::warn!(%error, category = error.category(), retry_in = ?delay, "Reloading the app failed; retrying.");
                pending.at = now + delay;
                self.reload = Some(pending);
                self.report(SyncState::ReloadFailed, None, Some(error.to_string()), None)
                    .await;
            }
        }
    }

    fn start_gate(&mut self, reloaded: bool, now: Instant) {
        self.gate = match (&self.settings.health, reloaded) {
            (Some(health), true) => Some((
                HealthGate::new(now, health.window.0, health.failures),
                now + health.interval.0,
            )),
            _ => None,
        };
    }

    async fn check_health(&mut self, now: Instant) {
        let Some(health) = self.settings.health.clone() else {
            self.gate = None;
            return;
        };
        let healthy = reload::healthy(&health.url).await;
        let Some((gate, next)) = self.gate.as_mut() else {
            return;
        };
        match gate.observe(now, healthy) {
            Verdict::Watching => *next = now + health.interval.0,
            Verdict::Healthy => {
                self.gate = None;
                tracing::info!(version = ?self.applied_version(), "The app stayed healthy through the window.");
                self.report(SyncState::Synced, None, None, None).await;
            }
            Verdict::RollBack => {
                self.gate = None;
                self.roll_back(now).await;
            }
        }
    }

    async fn roll_back(&mut self, now: Instant) {
        let bad = self.applied.clone();
        let bad_id = bad.as_ref().map(|version| version.id.clone()).unwrap_or_default();
        let previous = self.previous.clone();
        let Some(previous) = previous.filter(|previous| can_roll_back(Some(&previous.id), &bad_id)) else {
            tracing::error!(version = %bad_id, "The app is unhealthy after a reload and there is no previous version to go back to.");
            self.metrics.syncs("unhealthy");
            self.report(
                SyncState::RolledBack,
                None,
                Some("the app turned unhealthy; no previous version to roll back to".to_owned()),
                Some(bad_id),
            )
            .await;
            return;
        };
        if let Err(error) = self.writer.write(&previous.files) {
            tracing::error!(%error, "Writing the previous version back failed.");
            self.metrics.syncs("write_failed");
            return;
        }
        tracing::warn!(bad = %bad_id, restored = %previous.id, "The app turned unhealthy; restored the previous version.");
        self.metrics.syncs("rolled_back");
        self.applied = Some(previous);
        self.previous = None;
        self.rolled_back = Some(bad_id.clone());
        self.report(
            SyncState::RolledBack,
            None,
            Some("the app turned unhealthy within the health window after the reload".to_owned()),
            Some(bad_id),
        )
        .await;
        self.reload = Some(PendingReload {
            at: now,
            backoff: Backoff::default(),
            gate_after: false,
        });
        self.try_reload(now).await;
    }

    fn ready(&self) {
        self.admin.set_ready(true);
    }

    async fn report(
        &mut self,
        state: SyncState,
        file: Option<String>,
        message: Option<String>,
        refused_version: Option<String>,
    ) {
        let status = ConfigSyncStatus {
            api_version: ApiVersion::default(),
            applied_version: self.applied_version().map(str::to_owned),
            state,
            file,
            message,
            refused_version,
            config_revision: self
                .applied
                .as_ref()
                .and_then(|version| version.config_revision.clone()),
        };
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        self.metrics.state(state);
        self.reporter.report(&status).await;
        self.last_status = Some(status);
    }
}

async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use prometheus_client::registry::Registry;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use std::time::Duration;

    use super::*;
    use crate::sources::{Kind, Seen};

    #[derive(Default, Clone)]
    struct Recorded(Arc<std::sync::Mutex<Vec<ConfigSyncStatus>>>);

    impl Reporter for Recorded {
        async fn report(&mut self, status: &ConfigSyncStatus) {
            self.0.lock().unwrap().push(status.clone());
        }
    }

    impl Recorded {
        fn states(&self) -> Vec<SyncState> {
            self.0.lock().unwrap().iter().map(|status| status.state).collect()
        }
        fn last(&self) -> ConfigSyncStatus {
            self.0.lock().unwrap().last().cloned().unwrap()
        }
    }

    /// A fake app: answers reloads with 200, counts them, and reports health from a flag.
    async fn app(
        healthy: Arc<std::sync::atomic::AtomicBool>,
        reloads: Arc<std::sync::atomic::AtomicU32>,
    ) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buffer = vec![0u8; 1024];
                let count = stream.read(&mut buffer).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buffer[..count]).into_owned();
                let answer = if head.starts_with("POST /reload") {
                    reloads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    "HTTP/1.1 200 OK\r\n\r\n"
                } else if healthy.load(std::sync::atomic::Ordering::SeqCst) {
                    "HTTP/1.1 200 OK\r\n\r\n"
                } else {
                    "HTTP/1.1 503 Service Unavailable\r\n\r\n"
                };
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        format!("http://{address}")
    }

    fn settings(base: &str) -> Arc<ConfigSyncSettings> {
        let map: BTreeMap<String, String> = [
            ("configMaps", "app"),
            ("reloadUrl", &format!("{base}/reload")),
            ("healthUrl", &format!("{base}/healthz")),
            ("healthWindow", "3s"),
            ("healthInterval", "1s"),
            ("healthFailures", "2"),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
        Arc::new(ConfigSyncSettings::from_settings(&map).unwrap())
    }

    fn update(text: &str) -> Update {
        Update {
            kind: Kind::ConfigMap,
            name: "app".to_owned(),
            seen: Seen::Present([("app.json".to_owned(), text.as_bytes().to_vec())].into()),
        }
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("config-sync-engine-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    struct Fixture {
        engine: Engine<Recorded>,
        recorded: Recorded,
        healthy: Arc<std::sync::atomic::AtomicBool>,
        reloads: Arc<std::sync::atomic::AtomicU32>,
        dir: std::path::PathBuf,
        admin: AdminState,
    }

    async fn fixture(name: &str) -> Fixture {
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let reloads = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let base = app(healthy.clone(), reloads.clone()).await;
        let dir = temp_dir(name);
        let recorded = Recorded::default();
        let admin = AdminState::new(Registry::default());
        let engine = Engine::new(
            settings(&base),
            None,
            AtomicWriter::new(&dir, 0o644),
            admin.clone(),
            Metrics::register(&mut Registry::default()),
            recorded.clone(),
        );
        Fixture {
            engine,
            recorded,
            healthy,
            reloads,
            dir,
            admin,
        }
    }

    impl Fixture {
        async fn push(&mut self, text: &str) {
            let now = Instant::now();
            self.engine.on_update(update(text), now);
            self.engine.tick(now + Duration::from_secs(1)).await;
        }

        fn on_disk(&self) -> String {
            std::fs::read_to_string(self.dir.join("app.json")).unwrap()
        }

        async fn run_gate(&mut self) {
            for _ in 0..10 {
                let Some((_, at)) = self.engine.gate.as_ref().map(|(gate, at)| (gate.clone(), *at)) else {
                    return;
                };
                self.engine.tick(at + Duration::from_secs(1)).await;
            }
        }
    }

    #[tokio::test]
    async fn the_first_version_is_written_without_a_reload_and_makes_the_sidecar_ready() {
        let mut fixture = fixture("first").await;
        assert!(!fixture.admin.is_ready());
        fixture.push(r#"{"v":1}"#).await;
        assert_eq!(fixture.on_disk(), r#"{"v":1}"#);
        assert!(fixture.admin.is_ready());
        assert_eq!(fixture.reloads.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert_eq!(fixture.recorded.states(), [SyncState::Synced]);
    }

    #[tokio::test]
    async fn an_edit_is_written_reloaded_and_kept_when_the_app_stays_healthy() {
        let mut fixture = fixture("edit").await;
        fixture.push(r#"{"v":1}"#).await;
        fixture.push(r#"{"v":2}"#).await;
        assert_eq!(fixture.on_disk(), r#"{"v":2}"#);
        assert_eq!(fixture.reloads.load(std::sync::atomic::Ordering::SeqCst), 1);
        fixture.run_gate().await;
        assert_eq!(fixture.recorded.last().state, SyncState::Synced);
        assert_eq!(
            fixture.recorded.last().applied_version,
            fixture.engine.applied_version().map(str::to_owned)
        );
    }

    #[tokio::test]
    async fn an_invalid_edit_is_refused_and_the_last_good_files_stay() {
        let mut fixture = fixture("invalid").await;
        fixture.push(r#"{"v":1}"#).await;
        fixture.push(r#"{"v":"#).await;
        assert_eq!(fixture.on_disk(), r#"{"v":1}"#);
        let status = fixture.recorded.last();
        assert_eq!(status.state, SyncState::Rejected);
        assert_eq!(status.file.as_deref(), Some("app.json"));
        assert!(status.message.unwrap().starts_with("app.json line 1 column 5"));
        fixture.push(r#"{"v":3}"#).await;
        assert_eq!(
            fixture.on_disk(),
            r#"{"v":3}"#,
            "a fixed source recovers without a restart"
        );
    }

    #[tokio::test]
    async fn a_version_that_makes_the_app_unhealthy_is_rolled_back_and_not_applied_again() {
        let mut fixture = fixture("rollback").await;
        fixture.push(r#"{"v":1}"#).await;
        fixture.push(r#"{"v":2}"#).await;
        fixture.run_gate().await;
        fixture.healthy.store(false, std::sync::atomic::Ordering::SeqCst);
        fixture.push(r#"{"v":"bad"}"#).await;
        fixture.run_gate().await;
        assert_eq!(fixture.on_disk(), r#"{"v":2}"#);
        let status = fixture.recorded.last();
        assert_eq!(status.state, SyncState::RolledBack);
        assert!(status.refused_version.is_some());
        assert_eq!(
            fixture.reloads.load(std::sync::atomic::Ordering::SeqCst),
            3,
            "the rollback reloads too"
        );
        fixture.healthy.store(true, std::sync::atomic::Ordering::SeqCst);
        fixture.engine.on_update(update(r#"{"v":"bad"}"#), Instant::now());
        fixture.engine.tick(Instant::now() + Duration::from_secs(1)).await;
        assert_eq!(
            fixture.on_disk(),
            r#"{"v":2}"#,
            "the same bad version is not tried again"
        );
    }

    #[tokio::test]
    async fn a_restarted_sidecar_resumes_from_disk_without_a_reload() {
        let mut fixture = fixture("restart").await;
        fixture.push(r#"{"v":1}"#).await;
        fixture.push(r#"{"v":2}"#).await;
        let reloads = fixture.reloads.load(std::sync::atomic::Ordering::SeqCst);
        let settings = fixture.engine.settings.clone();
        let admin = AdminState::new(Registry::default());
        let mut restarted = Engine::new(
            settings,
            None,
            AtomicWriter::new(&fixture.dir, 0o644),
            admin.clone(),
            Metrics::register(&mut Registry::default()),
            Recorded::default(),
        );
        assert!(restarted.applied_version().is_some());
        let now = Instant::now();
        restarted.on_update(update(r#"{"v":2}"#), now);
        restarted.tick(now + Duration::from_secs(1)).await;
        assert!(admin.is_ready());
        assert_eq!(
            fixture.reloads.load(std::sync::atomic::Ordering::SeqCst),
            reloads,
            "no spurious reload"
        );
    }

    #[tokio::test]
    async fn a_deleted_configmap_keeps_the_files_and_is_reported() {
        let mut fixture = fixture("deleted").await;
        fixture.push(r#"{"v":1}"#).await;
        let now = Instant::now();
        fixture.engine.on_update(
            Update {
                kind: Kind::ConfigMap,
                name: "app".to_owned(),
                seen: Seen::Absent,
            },
            now,
        );
        fixture.engine.tick(now + Duration::from_secs(1)).await;
        assert_eq!(fixture.on_disk(), r#"{"v":1}"#);
        assert_eq!(fixture.recorded.last().state, SyncState::Rejected);
        assert_eq!(fixture.recorded.last().file.as_deref(), Some("ConfigMap/app"));
    }

    #[tokio::test]
    async fn a_restarted_sidecar_that_may_not_read_a_secret_serves_its_files_and_recovers_once_granted() {
        let fixture = fixture("forbidden").await;
        let settings = {
            let mut settings = (*fixture.engine.settings).clone();
            settings.secrets = vec!["db".to_owned()];
            Arc::new(settings)
        };
        let secret = |seen: Seen| Update {
            kind: Kind::Secret,
            name: "db".to_owned(),
            seen,
        };
        let mut engine = Engine::new(
            settings.clone(),
            None,
            AtomicWriter::new(&fixture.dir, 0o644),
            fixture.admin.clone(),
            Metrics::register(&mut Registry::default()),
            fixture.recorded.clone(),
        );
        let now = Instant::now();
        engine.on_update(update(r#"{"v":1}"#), now);
        engine.on_update(
            secret(Seen::Present([("password".to_owned(), b"s1".to_vec())].into())),
            now,
        );
        engine.tick(now + Duration::from_secs(1)).await;
        let version = engine.applied_version().map(str::to_owned);

        // Restarted, and the Secret's access is gone meanwhile.
        let admin = AdminState::new(Registry::default());
        let mut restarted = Engine::new(
            settings,
            None,
            AtomicWriter::new(&fixture.dir, 0o644),
            admin.clone(),
            Metrics::register(&mut Registry::default()),
            fixture.recorded.clone(),
        );
        let now = Instant::now();
        restarted.on_update(update(r#"{"v":1}"#), now);
        restarted.on_update(secret(Seen::Unreadable("403 Forbidden: no".to_owned())), now);
        restarted.tick(now + Duration::from_secs(1)).await;
        assert!(admin.is_ready(), "the files on disk are served");
        assert_eq!(fixture.on_disk(), r#"{"v":1}"#);
        let status = fixture.recorded.last();
        assert_eq!(status.state, SyncState::Rejected);
        assert_eq!(status.file.as_deref(), Some("Secret/db"));
        assert!(status.message.unwrap().contains("403 Forbidden"));
        assert_eq!(status.applied_version, version);

        let now = Instant::now();
        restarted.on_update(
            secret(Seen::Present([("password".to_owned(), b"s1".to_vec())].into())),
            now,
        );
        restarted.tick(now + Duration::from_secs(1)).await;
        assert_eq!(fixture.recorded.last().state, SyncState::Synced);
        assert_eq!(
            fixture.reloads.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the same version again: nothing to reload"
        );
    }

    #[tokio::test]
    async fn a_canary_pod_applies_the_edit_and_swaps_the_stable_files_back_when_it_stops_being_one() {
        use outrigger_contract::config_sync::{config_revision, ConfigMapData, ConfigRollout, ROLLOUT_KEY};

        let fixture = fixture("canary").await;
        let settings = {
            let mut settings = (*fixture.engine.settings).clone();
            settings.rollout_config_map = Some("web-config-rollout".to_owned());
            settings.health = None;
            Arc::new(settings)
        };
        let mut engine = Engine::new(
            settings,
            Some("web-a".to_owned()),
            AtomicWriter::new(&fixture.dir, 0o644),
            fixture.admin.clone(),
            Metrics::register(&mut Registry::default()),
            fixture.recorded.clone(),
        );
        let stable = ConfigMapData::from([(
            "app".to_owned(),
            [("app.json".to_owned(), r#"{"v":1}"#.to_owned())].into(),
        )]);
        let document = |canary_pods: &[&str]| {
            let mut rollout = ConfigRollout::stable(stable.clone());
            rollout.canary_pods = canary_pods.iter().map(|pod| (*pod).to_owned()).collect();
            Update {
                kind: Kind::Rollout,
                name: "web-config-rollout".to_owned(),
                seen: Seen::Present(
                    [(ROLLOUT_KEY.to_owned(), rollout.to_json().unwrap().into_bytes())].into(),
                ),
            }
        };
        let step = |engine: &mut Engine<Recorded>, updates: Vec<Update>| {
            let now = Instant::now();
            for update in updates {
                engine.on_update(update, now);
            }
            now + Duration::from_secs(1)
        };
        let reloads = || fixture.reloads.load(std::sync::atomic::Ordering::SeqCst);

        // The ConfigMap already holds an edit, but the document pins this pod to stable.
        let at = step(&mut engine, vec![update(r#"{"v":2}"#), document(&[])]);
        engine.tick(at).await;
        assert_eq!(fixture.on_disk(), r#"{"v":1}"#);
        assert_eq!(
            fixture.recorded.last().config_revision,
            Some(config_revision(&stable))
        );
        // Chosen as a canary: the edit is applied and the app reloaded.
        let at = step(&mut engine, vec![document(&["web-a"])]);
        engine.tick(at).await;
        assert_eq!(fixture.on_disk(), r#"{"v":2}"#);
        assert_eq!(reloads(), 1);
        assert_ne!(
            fixture.recorded.last().config_revision,
            Some(config_revision(&stable))
        );
        // Rolled back: the stable files are swapped back in place and the app reloaded again.
        let at = step(&mut engine, vec![document(&[])]);
        engine.tick(at).await;
        assert_eq!(fixture.on_disk(), r#"{"v":1}"#);
        assert_eq!(reloads(), 2);
        assert_eq!(fixture.recorded.last().state, SyncState::Synced);
    }
}
