//! Command line of `outrigger-log-adapter`, and the wiring: settings merged under the flags, the
//! tailer on a thread of its own, the admin server and signals on a small async runtime.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use clap::Parser;
use outrigger_log_adapter::{
    enrich::Enrichment,
    metrics::Metrics,
    parse::Choice,
    settings::{Settings, SettingsError},
    sink::WriterSink,
    tail::{Config, TailError, Tailer},
    time::UtcOffset,
};
use outrigger_sidecar_runtime::{
    admin::{self, AdminError, AdminState},
    shutdown,
    telemetry::LogFormat,
};
use prometheus_client::registry::Registry;
use tracing::{info, warn};

/// Why the command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("invalid log filter {filter:?}: {message}")]
    LogFilter { filter: String, message: String },
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Tail(#[from] TailError),
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
    /// Settings from the service's spec, a JSON object of strings (set by injection); flags win.
    #[arg(long, env = "OUTRIGGER_SETTINGS", default_value = "", hide_env_values = true)]
    settings: String,
    /// Read the files to their current end once, write, and exit (no admin server).
    #[arg(long)]
    once: bool,
    /// Address of the admin server (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "OUTRIGGER_ADMIN_ADDR", default_value = "0.0.0.0:9904")]
    admin_addr: SocketAddr,
    /// Filter of the adapter's own logs (to stderr), in RUST_LOG syntax.
    #[arg(long, env = "OUTRIGGER_LOG", default_value = "info")]
    log: String,
    /// Format of the adapter's own logs: `json` or `text`.
    #[arg(long, env = "OUTRIGGER_LOG_FORMAT", default_value = "json")]
    log_format: LogFormat,
}

impl Cli {
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
            admin_addr,
            log,
            log_format,
        } = self;
        init_logging(&log, log_format)?;
        let settings = Settings::from_json(&settings)?;
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
        info!(include = ?config.include, parser = ?config.parser, checkpoint = ?config.checkpoint_path, "Starting the log adapter.");
        let mut tailer = Tailer::new(config, WriterSink::new(std::io::stdout()))?;
        if once {
            tailer.run_once()?;
            let stats = tailer.stats();
            info!(
                lines = stats.lines,
                records = stats.records,
                parse_errors = stats.parse_errors,
                "Read every file once."
            );
            return Ok(());
        }

        let mut registry = Registry::default();
        let mut metrics = Metrics::register(&mut registry);
        let admin = AdminState::new(registry);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CliError::Runtime)?;
        runtime.block_on(async move {
            let listener = admin::bind(admin_addr).await?;
            let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn(admin::serve(listener, admin.clone(), async move {
                let _ = admin_stopped.await;
            }));

            let stop = Arc::new(AtomicBool::new(false));
            let (done, finished) = tokio::sync::oneshot::channel();
            let thread_stop = stop.clone();
            std::thread::Builder::new()
                .name("tailer".to_owned())
                .spawn(move || {
                    let result = tailer.run(&thread_stop, |stats, files| metrics.publish(stats, files));
                    let _ = done.send(result);
                })
                .map_err(CliError::Thread)?;
            admin.set_ready(true);

            tokio::pin!(finished);
            let result = tokio::select! {
                () = shutdown::signal() => {
                    info!("Stopping: writing what is pending.");
                    admin.set_ready(false);
                    stop.store(true, Ordering::Relaxed);
                    finished.await
                }
                result = &mut finished => result,
            };
            let _ = admin_stop.send(());
            let _ = server.await;
            match result {
                Ok(result) => Ok(result?),
                Err(_) => Err(CliError::TailerLost),
            }
        })
    }
}

fn first_non_empty(a: Vec<String>, b: Vec<String>) -> Option<Vec<String>> {
    [a, b].into_iter().find(|v| !v.is_empty())
}

/// The adapter's own logs go to stderr: stdout is the record stream.
fn init_logging(filter: &str, format: LogFormat) -> Result<(), CliError> {
    let env_filter = tracing_subscriber::EnvFilter::try_new(filter).map_err(|error| CliError::LogFilter {
        filter: filter.to_owned(),
        message: error.to_string(),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second initialisation (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    Ok(())
}
