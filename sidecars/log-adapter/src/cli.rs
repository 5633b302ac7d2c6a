//! Command line of `outrigger-log-adapter`: the runtime's shared groups (log, admin, config
//! source, drain), flattened, plus the adapter's own flags; and the wiring: settings merged under
//! the flags, the tailer on a thread of its own, the admin server, signals and the drain on a
//! small async runtime.
//!
//! The adapter's own environment variables carry its prefix (`OUTRIGGER_LOG_ADAPTER_…`, and
//! through [`args::with_env_prefix`] `OUTRIGGER_LOG_ADAPTER_DRAIN_TIMEOUT`, …); what injection sets
//! for every sidecar of a pod keeps one name (`OUTRIGGER_CONFIG_DIR`, `OUTRIGGER_ADMIN_ADDR`,
//! `OUTRIGGER_LOG`, `OUTRIGGER_LOG_FORMAT`, `OUTRIGGER_SETTINGS`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use clap::{CommandFactory, FromArgMatches, Parser};
use outrigger_contract::sidecars::{SidecarsConfig, SIDECARS_CONFIG_KEY};
use outrigger_log_adapter::{
    enrich::Enrichment,
    metrics::Metrics,
    notice::{Notice, Notify},
    parse::Choice,
    settings::{parse_label, LabelError, Settings, SettingsError},
    sink::{
        http::{Format, HttpError, HttpSink, HttpSinkConfig},
        Sink, WriterSink,
    },
    tail::{Config, TailError, Tailer},
    time::UtcOffset,
};
use outrigger_sidecar_runtime::{
    admin::{self, AdminError, AdminState},
    args::{self, AdminArgs, ApiServerArgs, ConfigSourceArgs, DrainArgs, LogArgs},
    duration::ConfigDuration,
    events::{EventMetrics, Poster, Recorder},
    metrics::registry,
    shutdown::{self, DrainTiming},
    telemetry::TelemetryError,
};
use tracing::{info, warn};

/// The prefix of the adapter's own environment variables: `OUTRIGGER_LOG_ADAPTER_…`.
pub const ENV_PREFIX: &str = "LOG_ADAPTER";

/// The adapter's entry in the sidecars document.
pub const SIDECAR_NAME: &str = "log-adapter";

/// The admin port injection gives the log adapter (`outrigger-core`'s `inject::admin_port`).
pub const DEFAULT_ADMIN_ADDR: &str = "0.0.0.0:9904";

/// Why the command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("reading the sidecars document {path}: {source}")]
    Document {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the sidecars document {path} is not valid: {source}")]
    InvalidDocument {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Tail(#[from] TailError),
    #[error("the HTTP sink: {0}")]
    Sink(#[from] HttpError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("starting the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("starting the tailer thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the tailer thread stopped unexpectedly")]
    TailerLost,
}

/// The log adapter: tails the app's log files on the shared volume and writes one JSON record
/// per line (or joined stack trace) to stdout.
#[derive(Debug, Parser)]
#[command(name = "outrigger-log-adapter", version, about)]
pub struct Cli {
    /// Include pattern of log files (`*`, `?`, `[a-z]`, `**`); repeatable or comma-separated.
    /// Default `/var/log/outrigger/**/*.log`.
    #[arg(
        long = "include",
        env = "OUTRIGGER_LOG_ADAPTER_INCLUDE",
        value_delimiter = ','
    )]
    include: Vec<String>,
    /// Parser: auto, json, logfmt, combined (nginx, apache), nginx-error, klog, syslog, regex,
    /// plain. Default auto.
    #[arg(long, env = "OUTRIGGER_LOG_ADAPTER_PARSER")]
    parser: Option<Choice>,
    /// Regex with named captures (`timestamp`, `level`, `message`, any other becomes a field);
    /// repeatable. Tried first in auto mode.
    #[arg(
        long = "pattern",
        env = "OUTRIGGER_LOG_ADAPTER_PATTERN",
        value_delimiter = '\n'
    )]
    patterns: Vec<String>,
    /// Offset of timestamps that carry none: UTC, +02:00, -0530. Default UTC.
    #[arg(long, env = "OUTRIGGER_LOG_ADAPTER_TIMEZONE")]
    timezone: Option<UtcOffset>,
    /// Checkpoint file. Default `/var/log/outrigger/.log-adapter-checkpoints.json`.
    #[arg(long, env = "OUTRIGGER_LOG_ADAPTER_CHECKPOINT")]
    checkpoint_path: Option<PathBuf>,
    /// Keep no checkpoint: every start reads every file from its beginning.
    #[arg(long, env = "OUTRIGGER_LOG_ADAPTER_NO_CHECKPOINT")]
    no_checkpoint: bool,
    /// Longest line kept whole; longer ones are cut and flagged `truncated`. Default 65536.
    #[arg(long, env = "OUTRIGGER_LOG_ADAPTER_MAX_LINE_BYTES")]
    max_line_bytes: Option<usize>,
    /// Wait between looks at the files when nothing was new, in milliseconds.
    #[arg(long, env = "OUTRIGGER_LOG_ADAPTER_POLL_MS", default_value_t = 250)]
    poll_interval_ms: u64,
    /// How long a rotated or deleted file stays open after its last new data, in milliseconds.
    #[arg(long, env = "OUTRIGGER_LOG_ADAPTER_ROTATE_WAIT_MS", default_value_t = 5000)]
    rotate_wait_ms: u64,
    /// Wait before opening a file that could not be read again, in milliseconds.
    #[arg(long, env = "OUTRIGGER_LOG_ADAPTER_RETRY_MS", default_value_t = 10_000)]
    retry_unreadable_ms: u64,
    /// Settings from the service's spec, a JSON object of strings (set by injection); the
    /// `log-adapter` entry of the sidecars document, when there is one, wins over them, and flags
    /// win over both.
    #[arg(long, env = "OUTRIGGER_SETTINGS", default_value = "", hide_env_values = true)]
    settings: String,
    /// Read the files to their current end once, write, and exit (no admin server).
    #[arg(long)]
    once: bool,
    /// Send records to this endpoint (`http://host:port/path`) instead of writing them to stdout.
    #[arg(long, env = "OUTRIGGER_LOG_ADAPTER_SINK_URL")]
    sink_url: Option<String>,
    /// Request format of the HTTP sink: json-lines, loki or elasticsearch. Default json-lines.
    #[arg(long, env = "OUTRIGGER_LOG_ADAPTER_SINK_FORMAT")]
    sink_format: Option<Format>,
    /// Loki stream label `name=value`; repeatable or comma-separated. Default
    /// `job=outrigger-log-adapter`.
    #[arg(
        long = "sink-label",
        env = "OUTRIGGER_LOG_ADAPTER_SINK_LABELS",
        value_delimiter = ',',
        value_parser = parse_label_arg
    )]
    sink_labels: Vec<(String, String)>,
    /// Longest wait for the HTTP sink's answer to one request.
    #[arg(long, env = "OUTRIGGER_LOG_ADAPTER_SINK_TIMEOUT", default_value = "10s")]
    sink_timeout: ConfigDuration,
    /// How long the HTTP sink tries one batch again (backoff 100 ms to 5 s) before reporting the
    /// failure; the batch is then offered again after a pause, and nothing more is read meanwhile.
    #[arg(long, env = "OUTRIGGER_LOG_ADAPTER_SINK_RETRY_FOR", default_value = "30s")]
    sink_retry_for: ConfigDuration,
    /// Where the sidecars document is (`--config`, or `sidecars.json` in `--config-dir`).
    #[command(flatten)]
    source: ConfigSourceArgs,
    #[command(flatten)]
    admin: AdminArgs,
    /// The API server Events are written to (in a pod, nothing to set).
    #[command(flatten)]
    api: ApiServerArgs,
    #[command(flatten)]
    drain: DrainArgs,
    #[command(flatten)]
    log: LogArgs,
}

impl Cli {
    /// The command with the adapter's defaults and variable names.
    pub fn command_with_defaults() -> clap::Command {
        args::with_env_prefix(Cli::command(), ENV_PREFIX)
            .mut_arg("admin_addr", |arg| arg.default_value(DEFAULT_ADMIN_ADDR))
    }

    /// Parses the process's arguments and environment (exits with a message when they are wrong).
    pub fn from_env() -> Cli {
        let matches = Self::command_with_defaults().get_matches();
        match Cli::from_arg_matches(&matches) {
            Ok(cli) => cli,
            Err(error) => error.exit(),
        }
    }

    /// Runs until SIGTERM (or, with `--once`, until the files are read).
    pub fn run(self) -> Result<(), CliError> {
        let Self {
            include,
            parser,
            patterns,
            timezone,
            checkpoint_path,
            no_checkpoint,
            max_line_bytes,
            poll_interval_ms,
            rotate_wait_ms,
            retry_unreadable_ms,
            settings,
            once,
            sink_url,
            sink_format,
            sink_labels,
            sink_timeout,
            sink_retry_for,
            source,
            admin,
            api,
            drain,
            log,
        } = self;
        log.init_stderr()?;
        let source = source.resolve(SIDECARS_CONFIG_KEY);
        if source.configmap.is_some() {
            warn!("The log adapter reads its settings at start from the mounted sidecars document; the ConfigMap is not watched.");
        }
        let mut map = Settings::map_from_json(&settings)?;
        if let Some(path) = &source.file {
            map.extend(document_settings(path)?);
        }
        let settings = Settings::from_map(map)?;
        if !settings.unknown.is_empty() {
            warn!(keys = ?settings.unknown, "Ignoring settings this log adapter does not know.");
        }
        let defaults = Config::default();
        let config = Config {
            include: first_non_empty(include, settings.include).unwrap_or(defaults.include),
            parser: parser.or(settings.parser).unwrap_or_default(),
            patterns: first_non_empty(patterns, settings.patterns).unwrap_or_default(),
            offset: timezone.or(settings.timezone).unwrap_or_default(),
            max_line_bytes: max_line_bytes
                .or(settings.max_line_bytes)
                .unwrap_or(defaults.max_line_bytes),
            checkpoint_path: if no_checkpoint {
                None
            } else {
                checkpoint_path
                    .or(settings.checkpoint_path)
                    .or(defaults.checkpoint_path)
            },
            poll_interval: Duration::from_millis(poll_interval_ms.max(1)),
            rotate_wait: Duration::from_millis(rotate_wait_ms),
            retry_unreadable: Duration::from_millis(retry_unreadable_ms),
            enrichment: Enrichment::from_env(),
            ..defaults
        };
        let mut registry = registry("outrigger");
        let metrics = Metrics::register(&mut registry);
        // Events are written from the async runtime `serve` starts; a single pass writes none.
        let (events, poster) = if once {
            (Recorder::disabled(), None)
        } else {
            Recorder::from_env(
                "outrigger-log-adapter",
                &api.into(),
                EventMetrics::register(registry.sub_registry_with_prefix("log_adapter")),
            )
        };
        let notify: Notify = Arc::new(move |notice: Notice| events.record(notice.note()));
        let stop = Arc::new(AtomicBool::new(false));
        let sink: Box<dyn Sink + Send> = match sink_url.or(settings.sink_url) {
            Some(url) => {
                let defaults = HttpSinkConfig::default();
                let config = HttpSinkConfig {
                    url,
                    format: sink_format.or(settings.sink_format).unwrap_or_default(),
                    labels: [sink_labels, settings.sink_labels]
                        .into_iter()
                        .find(|labels| !labels.is_empty())
                        .unwrap_or(defaults.labels),
                    request_timeout: sink_timeout.0,
                    retry_for: sink_retry_for.0,
                    ..defaults
                };
                info!(url = %config.url, format = config.format.name(), "Sending records over HTTP.");
                Box::new(
                    HttpSink::new(config, metrics.http_sink())?
                        .with_stop(stop.clone())
                        .with_notify(notify.clone()),
                )
            }
            None => Box::new(WriterSink::new(std::io::stdout())),
        };
        info!(include = ?config.include, parser = ?config.parser, checkpoint = ?config.checkpoint_path, "Starting the log adapter.");
        let mut tailer = Tailer::new(config, sink)?;
        tailer.on_notice(notify);
        if once {
            return run_once(tailer);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CliError::Runtime)?;
        let wiring = Wiring {
            registry,
            metrics,
            stop,
            admin,
            timing: drain.into(),
            poster,
        };
        runtime.block_on(serve(tailer, wiring))
    }
}

fn parse_label_arg(text: &str) -> Result<(String, String), LabelError> {
    parse_label(text)
}

/// What the running adapter shares between the tailer's thread and the admin server.
struct Wiring {
    registry: prometheus_client::registry::Registry,
    metrics: Metrics,
    stop: Arc<AtomicBool>,
    admin: AdminArgs,
    timing: DrainTiming,
    poster: Option<Poster>,
}

fn run_once<S: Sink>(mut tailer: Tailer<S>) -> Result<(), CliError> {
    tailer.run_once()?;
    let stats = tailer.stats();
    info!(
        lines = stats.lines,
        records = stats.records,
        parse_errors = stats.parse_errors,
        "Read every file once."
    );
    Ok(())
}

/// The tailer on its own thread, the admin server beside it; on SIGTERM the drain: readiness
/// fails, then the tailer writes what it holds, for at most the drain timeout.
async fn serve<S>(mut tailer: Tailer<S>, wiring: Wiring) -> Result<(), CliError>
where
    S: Sink + Send + 'static,
{
    let Wiring {
        registry,
        mut metrics,
        stop,
        admin: AdminArgs { admin_addr },
        timing,
        poster,
    } = wiring;
    if let Some(poster) = poster {
        tokio::spawn(poster.run());
    }
    let admin = AdminState::new(registry);
    let listener = admin::bind(admin_addr).await?;
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(admin::serve(listener, admin.clone(), async move {
        let _ = admin_stopped.await;
    }));

    let (done, finished) = tokio::sync::oneshot::channel();
    let thread_stop = stop.clone();
    let flush_metrics = metrics.clone();
    tailer.on_flush(move |flushed| flush_metrics.observe_flush(flushed));
    std::thread::Builder::new()
        .name("tailer".to_owned())
        .spawn(move || {
            let result = tailer.run(&thread_stop, |stats, gauges| metrics.publish(stats, gauges));
            let _ = done.send(result);
        })
        .map_err(CliError::Thread)?;
    admin.set_ready(true);

    tokio::pin!(finished);
    let result = tokio::select! {
        () = shutdown::signal() => {
            info!("Stopping: writing what is pending.");
            let mut result = None;
            let close = async { stop.store(true, Ordering::Relaxed) };
            let wait = async { result = (&mut finished).await.ok() };
            if shutdown::drain(&admin, timing, close, wait).await {
                result.ok_or(CliError::TailerLost)
            } else {
                // What was not acknowledged is read again after the restart.
                Ok(Ok(()))
            }
        }
        result = &mut finished => result.map_err(|_| CliError::TailerLost),
    };
    let _ = admin_stop.send(());
    let _ = server.await;
    Ok(result??)
}

/// The adapter's entry of the sidecars document (none when the document has none).
fn document_settings(path: &Path) -> Result<BTreeMap<String, String>, CliError> {
    let text = std::fs::read(path).map_err(|source| CliError::Document {
        path: path.to_owned(),
        source,
    })?;
    let mut document = SidecarsConfig::from_json(&text).map_err(|source| CliError::InvalidDocument {
        path: path.to_owned(),
        source,
    })?;
    Ok(document.sidecars.remove(SIDECAR_NAME).unwrap_or_default())
}

fn first_non_empty(a: Vec<String>, b: Vec<String>) -> Option<Vec<String>> {
    [a, b].into_iter().find(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Injection, the cluster tests, the benchmark and the docs set these names.
    #[test]
    fn every_flag_keeps_its_name_and_environment_variable() {
        Cli::command().debug_assert();
        let command = Cli::command_with_defaults();
        for (id, env) in [
            ("include", "OUTRIGGER_LOG_ADAPTER_INCLUDE"),
            ("checkpoint_path", "OUTRIGGER_LOG_ADAPTER_CHECKPOINT"),
            ("settings", "OUTRIGGER_SETTINGS"),
            ("config_dir", "OUTRIGGER_CONFIG_DIR"),
            ("config", "OUTRIGGER_LOG_ADAPTER_CONFIG"),
            ("drain_timeout", "OUTRIGGER_LOG_ADAPTER_DRAIN_TIMEOUT"),
            ("admin_addr", "OUTRIGGER_ADMIN_ADDR"),
            ("log", "OUTRIGGER_LOG"),
            ("log_format", "OUTRIGGER_LOG_FORMAT"),
        ] {
            let arg = command.get_arguments().find(|arg| arg.get_id() == id).unwrap();
            assert_eq!(
                arg.get_env().map(|e| e.to_string_lossy().into_owned()).as_deref(),
                Some(env),
                "{id}"
            );
        }
        let matches = command.try_get_matches_from(["outrigger-log-adapter"]).unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        assert_eq!(cli.admin.admin_addr.to_string(), DEFAULT_ADMIN_ADDR);
    }
}
