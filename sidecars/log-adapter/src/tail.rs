//! Tailing: finds the files the include patterns match, reads each as it grows, turns its lines
//! into records in a batch, writes full batches to the sink, and commits checkpoints after each
//! written batch.
//!
//! - A file is known by device and inode, so a rename keeps its stream. A file no pattern path
//!   leads to any more (renamed away by rotation, or deleted) is read to its end and closed once
//!   it has had no new data for `rotate_wait`: a writer may still append to it after the rename.
//!   Holding it open also keeps its inode from being reused meanwhile.
//! - A file that shrank below the offset read was truncated in place (copytruncate): reading
//!   starts again at its beginning. A truncation followed by more writes than had been read
//!   before the next look is not noticed (the same limit as Fluent Bit's and Vector's).
//! - A file that cannot be opened is logged once, skipped, and tried again every
//!   `retry_unreadable`.
//! - A file with a checkpoint resumes at it; any other file is read from its beginning. A restart
//!   writes again at most the records of the batch that was being written when it stopped.
//! - A line split over two reads waits for its end; the checkpoint never passes the start of a
//!   line (or stack trace) not yet in a batch.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use tracing::{debug, info, warn};

use crate::{
    checkpoint::{CheckpointError, Checkpoints, FileId},
    enrich::Enrichment,
    glob,
    line::{Line, LineSplitter},
    multiline::{Joined, Joiner},
    notice::{Notice, Notify},
    parse::{self, Choice, Context, Format, StreamParser},
    record::{self, escape_into, Fields, Meta},
    sink::{Batch, Sink, SinkError},
    time::{Timestamp, UtcOffset},
};

/// Everything the adapter is told.
#[derive(Debug, Clone)]
pub struct Config {
    /// Include patterns (see [`crate::glob`]).
    pub include: Vec<String>,
    pub parser: Choice,
    /// User patterns with named captures (see [`crate::parse::regex`]).
    pub patterns: Vec<String>,
    /// Offset of stamps without one.
    pub offset: UtcOffset,
    /// Longer lines are cut here and flagged; also bounds a joined stack trace.
    pub max_line_bytes: usize,
    /// Most lines joined into one stack-trace record.
    pub max_trace_lines: u32,
    /// Checkpoint file; `None` keeps checkpoints in memory only.
    pub checkpoint_path: Option<PathBuf>,
    pub batch_max_records: usize,
    pub batch_max_bytes: usize,
    /// Bytes read from a file at a time.
    pub read_chunk: usize,
    /// Wait between looks when nothing was read.
    pub poll_interval: Duration,
    /// How often the include patterns are expanded again.
    pub rescan_interval: Duration,
    /// How long a rotated or deleted file stays open after its last new data.
    pub rotate_wait: Duration,
    /// Wait before opening an unreadable file again.
    pub retry_unreadable: Duration,
    pub enrichment: Enrichment,
}

/// Defaults fit for a sidecar: the volume's `.log` files, auto-detection, 64 KiB lines.
impl Default for Config {
    fn default() -> Self {
        Config {
            include: vec![format!("{}/**/*.log", DEFAULT_LOG_DIR)],
            parser: Choice::Auto,
            patterns: Vec::new(),
            offset: UtcOffset(0),
            max_line_bytes: 64 * 1024,
            max_trace_lines: 500,
            checkpoint_path: Some(PathBuf::from(format!(
                "{DEFAULT_LOG_DIR}/.log-adapter-checkpoints.json"
            ))),
            batch_max_records: 4096,
            batch_max_bytes: 1 << 20,
            read_chunk: 256 * 1024,
            poll_interval: Duration::from_millis(250),
            rescan_interval: Duration::from_secs(1),
            rotate_wait: Duration::from_secs(5),
            retry_unreadable: Duration::from_secs(10),
            enrichment: Enrichment::default(),
        }
    }
}

/// Where injection mounts the shared log volume (`outrigger-core`'s `inject::LOGS_DIR`).
pub const DEFAULT_LOG_DIR: &str = "/var/log/outrigger";

/// Why the adapter could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error(transparent)]
    Pattern(#[from] parse::regex::PatternError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

impl TailError {
    /// A fixed label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            TailError::Pattern(_) => "pattern",
            TailError::Checkpoint(error) => error.category(),
            TailError::Sink(error) => error.category(),
        }
    }
}

/// Counters since start, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub lines: u64,
    /// Records made (a record may join several lines).
    pub records: u64,
    /// Records the sink acknowledged.
    pub records_written: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub batches: u64,
    pub parse_errors: u64,
    /// Parse failures by the format the line was taken for, in [`Format::ALL`] order.
    pub parse_errors_by_format: [u64; Format::ALL.len()],
    pub truncated: u64,
    pub rotations: u64,
    pub truncations: u64,
    pub unreadable: u64,
    pub sink_errors: u64,
    pub checkpoint_errors: u64,
}

/// What the tailer holds now, for gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    pub open_files: usize,
    /// See [`Tailer::bytes_behind`].
    pub bytes_behind: u64,
}

/// What a look at one stream ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Still open.
    Open,
    /// Gone from the patterns, read to its end and quiet: close it and drop its checkpoint.
    Drained,
    /// It could not be read: close it, keep its checkpoint, and open it again later.
    Failed,
}

/// One file being read.
struct Stream {
    id: FileId,
    path: PathBuf,
    /// The path as escaped JSON string contents, for every record.
    source: Vec<u8>,
    file: File,
    /// Unconsumed bytes (an incomplete line) and the file offset of their first byte.
    buf: Vec<u8>,
    buf_start: u64,
    splitter: LineSplitter,
    joiner: Joiner,
    parser: StreamParser,
    seen: bool,
    gone_since: Option<Instant>,
    last_data: Instant,
    /// The file's size at the last look, for the bytes not yet delivered.
    size: u64,
}

impl Stream {
    fn read_offset(&self) -> u64 {
        self.buf_start + self.buf.len() as u64
    }
}

/// What emitting a record needs besides the stream: shared by every stream.
struct Emitter<'c> {
    ctx: Context,
    patterns: &'c parse::regex::Patterns,
    enrichment: &'c [u8],
    fields: &'c mut Fields,
    batch: &'c mut Batch,
    stats: &'c mut Stats,
}

impl Emitter<'_> {
    fn emit(
        &mut self,
        parser: &mut StreamParser,
        source: &[u8],
        first: &[u8],
        continuation: &[u8],
        lines: u32,
        truncated: bool,
    ) {
        let parsed = parser.parse(first, &self.ctx, self.patterns, self.fields);
        let meta = Meta {
            format: parsed.format.name(),
            source,
            continuation,
            lines,
            parse_error: parsed.error,
            truncated,
            read_at: self.ctx.now,
            enrichment: self.enrichment,
        };
        record::encode(self.batch.buffer(), &parsed.header, self.fields, &meta);
        self.batch
            .finish_record(parsed.header.timestamp.unwrap_or(self.ctx.now));
        self.stats.records += 1;
        if parsed.error.is_some() {
            self.stats.parse_errors += 1;
            self.stats.parse_errors_by_format[parsed.format.index()] += 1;
        }
        self.stats.truncated += u64::from(truncated);
    }

    fn emit_joined(&mut self, parser: &mut StreamParser, source: &[u8], joined: Joined<'_>) {
        self.emit(
            parser,
            source,
            joined.first,
            joined.continuation,
            joined.lines,
            joined.truncated,
        );
    }

    /// One line of a stream: joined to the pending record, or ending it and starting the next.
    fn line(&mut self, stream: StreamParts<'_>, line: Line<'_>, buf_start: u64) {
        self.stats.lines += 1;
        let start = buf_start + line.start as u64;
        let end = buf_start + line.end as u64;
        if stream.parser.may_join() {
            if stream.joiner.continues(line.bytes) {
                stream.joiner.append(line.bytes, line.truncated);
                return;
            }
            if let Some(joined) = stream.joiner.take() {
                self.emit_joined(stream.parser, stream.source, joined);
            }
            self.batch.cover(stream.id, start);
            stream.joiner.start(line.bytes, line.truncated, start);
        } else {
            if let Some(joined) = stream.joiner.take() {
                self.emit_joined(stream.parser, stream.source, joined);
            }
            self.emit(stream.parser, stream.source, line.bytes, b"", 1, line.truncated);
            self.batch.cover(stream.id, end);
        }
    }

    /// Ends the pending record of an idle stream, and covers everything consumed.
    fn settle(&mut self, stream: StreamParts<'_>, consumed: u64) {
        if let Some(joined) = stream.joiner.take() {
            self.emit_joined(stream.parser, stream.source, joined);
        }
        self.batch.cover(stream.id, consumed);
    }
}

/// The parts of a stream the emitter changes, borrowed apart from its buffer.
struct StreamParts<'s> {
    id: FileId,
    source: &'s [u8],
    joiner: &'s mut Joiner,
    parser: &'s mut StreamParser,
}

/// The adapter: streams, batch, sink and checkpoints.
pub struct Tailer<S> {
    config: Config,
    patterns: parse::regex::Patterns,
    streams: Vec<Stream>,
    checkpoints: Checkpoints,
    /// Files whose entries are dropped once the batch holding their last records is written.
    closing: Vec<FileId>,
    exclude: Vec<PathBuf>,
    unreadable: HashMap<PathBuf, Instant>,
    /// Paths warned about, so that a file that keeps failing is logged once, until it reads.
    warned: HashSet<PathBuf>,
    last_scan: Option<Instant>,
    scanned_once: bool,
    checkpoint_failing: bool,
    sink: S,
    batch: Batch,
    fields: Fields,
    stats: Stats,
    on_flush: Option<FlushObserver>,
    notify: Option<Notify>,
}

/// Sees every batch write (see [`Tailer::on_flush`]).
type FlushObserver = Box<dyn FnMut(&Flushed) + Send>;

/// One batch handed to the sink, for metrics.
#[derive(Debug, Clone, Copy)]
pub struct Flushed {
    /// How long the sink took, retries within it included.
    pub took: Duration,
    /// Whether the sink acknowledged the batch.
    pub ok: bool,
    /// From the oldest record's read to the acknowledgment (`None` when not acknowledged).
    pub lag: Option<Duration>,
}

impl<S: Sink> Tailer<S> {
    /// Compiles the patterns and loads the checkpoints. Corrupt checkpoints are logged and
    /// replaced: reading files again from the start duplicates records, losing them would be worse.
    pub fn new(config: Config, sink: S) -> Result<Self, TailError> {
        let patterns = parse::regex::Patterns::new(&config.patterns)?;
        let checkpoints = match Checkpoints::load(config.checkpoint_path.clone()) {
            Ok(checkpoints) => checkpoints,
            Err(error @ CheckpointError::Invalid { .. }) => {
                warn!(%error, "Checkpoints are corrupt; reading every file from its start.");
                let mut fresh = Checkpoints::load(None)?;
                fresh.set_path(config.checkpoint_path.clone());
                fresh
            }
            Err(error) => return Err(error.into()),
        };
        let exclude = config
            .checkpoint_path
            .iter()
            .flat_map(|path| [path.clone(), crate::checkpoint::temporary_path(path)])
            .collect();
        Ok(Tailer {
            config,
            patterns,
            streams: Vec::new(),
            checkpoints,
            closing: Vec::new(),
            exclude,
            unreadable: HashMap::new(),
            warned: HashSet::new(),
            last_scan: None,
            scanned_once: false,
            checkpoint_failing: false,
            sink,
            batch: Batch::default(),
            fields: Fields::default(),
            stats: Stats::default(),
            on_flush: None,
            notify: None,
        })
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Calls `observe` after every write of a batch to the sink, failed ones included.
    pub fn on_flush(&mut self, observe: impl FnMut(&Flushed) + Send + 'static) {
        self.on_flush = Some(Box::new(observe));
    }

    /// `notify` hears of files that cannot be read (once per file until it reads again).
    pub fn on_notice(&mut self, notify: Notify) {
        self.notify = Some(notify);
    }

    fn notify_unreadable(&self, path: &Path, error: &std::io::Error) {
        if let Some(notify) = &self.notify {
            notify(Notice::Unreadable {
                path: path.to_owned(),
                error: error.to_string(),
            });
        }
    }

    pub fn gauges(&self) -> Gauges {
        Gauges {
            open_files: self.streams.len(),
            bytes_behind: self.bytes_behind(),
        }
    }

    /// Bytes of the open files not yet acknowledged by the sink: what a restart would read again
    /// or for the first time.
    pub fn bytes_behind(&self) -> u64 {
        self.streams
            .iter()
            .map(|s| s.size.saturating_sub(self.checkpoints.offset(s.id).unwrap_or(0)))
            .sum()
    }

    pub fn sink(&self) -> &S {
        &self.sink
    }

    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// Paths of the files open now.
    pub fn files(&self) -> Vec<&Path> {
        self.streams.iter().map(|s| s.path.as_path()).collect()
    }

    /// Runs until `stop` is set, then writes what is pending and commits. Sink failures are
    /// logged and retried after a pause, holding the batch (nothing more is read meanwhile).
    /// `observe` sees the counters and the gauges after each look.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        mut observe: impl FnMut(&Stats, Gauges),
    ) -> Result<(), TailError> {
        while !stop.load(Ordering::Relaxed) {
            let polled = self.poll(Instant::now());
            observe(&self.stats, self.gauges());
            match polled {
                Ok(true) => {}
                Ok(false) => sleep_unless(stop, self.config.poll_interval),
                Err(TailError::Sink(error)) => {
                    self.stats.sink_errors += 1;
                    warn!(%error, category = error.category(), "Writing records failed; retrying.");
                    sleep_unless(stop, Duration::from_secs(1));
                }
                Err(error) => return Err(error),
            }
        }
        let result = self.shutdown();
        observe(&self.stats, self.gauges());
        result
    }

    /// Reads every file to its current end, writes and commits, and returns: one pass, for
    /// batch use and benchmarks.
    pub fn run_once(&mut self) -> Result<(), TailError> {
        let mut quiet = 0;
        while quiet < 2 {
            if self.poll(Instant::now())? {
                quiet = 0;
            } else {
                quiet += 1;
            }
        }
        self.shutdown()
    }

    /// Ends pending stack traces, writes the batch and commits. Incomplete lines stay unread.
    pub fn shutdown(&mut self) -> Result<(), TailError> {
        let mut emitter = Emitter {
            ctx: self.context(),
            patterns: &self.patterns,
            enrichment: self.config.enrichment.encoded(),
            fields: &mut self.fields,
            batch: &mut self.batch,
            stats: &mut self.stats,
        };
        for stream in &mut self.streams {
            let consumed = stream.buf_start;
            emitter.settle(
                StreamParts {
                    id: stream.id,
                    source: &stream.source,
                    joiner: &mut stream.joiner,
                    parser: &mut stream.parser,
                },
                consumed,
            );
        }
        self.flush()
    }

    fn context(&self) -> Context {
        Context {
            offset: self.config.offset,
            now: Timestamp::now(),
        }
    }

    /// One look at every file: rescans when due, reads what is new, writes full batches and, at
    /// the end, whatever the look produced. Returns whether anything was read.
    pub fn poll(&mut self, now: Instant) -> Result<bool, TailError> {
        // A batch left by a failed write goes first.
        if !self.batch.is_empty() {
            self.flush()?;
        }
        if self
            .last_scan
            .is_none_or(|last| now.duration_since(last) >= self.config.rescan_interval)
        {
            self.scan(now);
            self.last_scan = Some(now);
        }
        let mut worked = false;
        let mut index = 0;
        while index < self.streams.len() {
            let (read, outcome) = self.pump(index, now)?;
            worked |= read;
            match outcome {
                Outcome::Open => index += 1,
                Outcome::Drained => {
                    let stream = self.streams.swap_remove(index);
                    info!(path = %stream.path.display(), offset = stream.read_offset(), "Closed a rotated or deleted file read to its end.");
                    self.closing.push(stream.id);
                }
                Outcome::Failed => {
                    let stream = self.streams.swap_remove(index);
                    self.unreadable
                        .insert(stream.path, now + self.config.retry_unreadable);
                }
            }
        }
        if !self.batch.is_empty() || !self.closing.is_empty() {
            self.flush()?;
        }
        Ok(worked)
    }

    /// Writes the batch and commits what it covers.
    fn flush(&mut self) -> Result<(), TailError> {
        if self.batch.records() > 0 {
            let started = Instant::now();
            let written = self.sink.write_batch(&self.batch);
            if let Some(observe) = &mut self.on_flush {
                let now = Instant::now();
                observe(&Flushed {
                    took: now.saturating_duration_since(started),
                    ok: written.is_ok(),
                    lag: written
                        .is_ok()
                        .then(|| {
                            self.batch
                                .first_read()
                                .map(|read| now.saturating_duration_since(read))
                        })
                        .flatten(),
                });
            }
            written?;
            self.stats.records_written += self.batch.records() as u64;
            self.stats.batches += 1;
            self.stats.bytes_written += self.batch.len_bytes() as u64;
        }
        for &(id, offset) in self.batch.offsets() {
            let path = self
                .streams
                .iter()
                .find(|s| s.id == id)
                .map_or_else(PathBuf::new, |s| s.path.clone());
            self.checkpoints.set(id, offset, &path);
        }
        for id in self.closing.drain(..) {
            self.checkpoints.remove(id);
        }
        self.batch.clear();
        match self.checkpoints.persist() {
            // Records flow on; a restart would repeat more of them. Logged when it starts and
            // when it ends, not at every batch.
            Err(error) if !self.checkpoint_failing => {
                warn!(%error, category = error.category(), "Cannot write checkpoints; a restart will repeat records.");
                self.checkpoint_failing = true;
                self.stats.checkpoint_errors += 1;
            }
            Err(_) => self.stats.checkpoint_errors += 1,
            Ok(()) if self.checkpoint_failing => {
                info!("Checkpoints written again.");
                self.checkpoint_failing = false;
            }
            Ok(()) => {}
        }
        Ok(())
    }

    /// Expands the include patterns: opens new files, follows renamed ones, and marks the
    /// ones no path leads to any more.
    fn scan(&mut self, now: Instant) {
        for stream in &mut self.streams {
            stream.seen = false;
        }
        let mut paths: Vec<PathBuf> = self.config.include.iter().flat_map(|p| glob::expand(p)).collect();
        paths.sort();
        paths.dedup();
        for path in paths {
            if self.exclude.contains(&path) {
                continue;
            }
            if self.unreadable.get(&path).is_some_and(|retry| now < *retry) {
                continue;
            }
            // Only regular files: opening a FIFO would block the adapter.
            let Some(meta) = std::fs::metadata(&path).ok().filter(std::fs::Metadata::is_file) else {
                continue;
            };
            let id = FileId::of(&meta);
            if let Some(stream) = self.streams.iter_mut().find(|s| s.id == id) {
                stream.seen = true;
                if stream.path != path {
                    info!(from = %stream.path.display(), to = %path.display(), "Following a renamed file.");
                    stream.source = escaped_path(&path);
                    stream.path = path;
                }
                continue;
            }
            self.open(path, now);
        }
        for stream in &mut self.streams {
            match (stream.seen, stream.gone_since) {
                (false, None) => {
                    debug!(path = %stream.path.display(), "File rotated away or deleted; reading it to its end.");
                    self.stats.rotations += 1;
                    stream.gone_since = Some(now);
                }
                (true, Some(_)) => stream.gone_since = None,
                _ => {}
            }
        }
        if !self.scanned_once {
            // Entries of files that are gone would only wait for a reused inode. A file that
            // exists but cannot be opened yet keeps its entry.
            let streams = &self.streams;
            let unreadable = &self.unreadable;
            self.checkpoints
                .retain(|id, path| streams.iter().any(|s| s.id == id) || unreadable.contains_key(path));
            self.scanned_once = true;
        }
    }

    fn open(&mut self, path: PathBuf, now: Instant) {
        let opened = File::open(&path).and_then(|file| file.metadata().map(|meta| (file, meta)));
        let (file, meta) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                if self.warned.insert(path.clone()) {
                    warn!(%error, path = %path.display(), "Cannot read a log file; skipping it and trying again later.");
                    self.stats.unreadable += 1;
                    self.notify_unreadable(&path, &error);
                } else {
                    debug!(%error, path = %path.display(), "Log file still unreadable.");
                }
                self.unreadable.insert(path, now + self.config.retry_unreadable);
                return;
            }
        };
        self.unreadable.remove(&path);
        let id = FileId::of(&meta);
        let offset = self
            .checkpoints
            .offset(id)
            .filter(|&offset| offset <= meta.len())
            .unwrap_or(0);
        info!(path = %path.display(), offset, "Tailing a file.");
        self.streams.push(Stream {
            id,
            source: escaped_path(&path),
            path,
            file,
            buf: Vec::new(),
            buf_start: offset,
            splitter: LineSplitter::new(self.config.max_line_bytes),
            joiner: Joiner::new(self.config.max_line_bytes, self.config.max_trace_lines),
            parser: StreamParser::new(self.config.parser),
            seen: true,
            gone_since: None,
            last_data: now,
            size: meta.len(),
        });
    }

    /// Reads what is new in one stream, a few chunks at a time so that one busy file does not
    /// starve the others. Returns whether anything was read, and whether the stream is finished
    /// (gone, drained and quiet for `rotate_wait`).
    fn pump(&mut self, index: usize, now: Instant) -> Result<(bool, Outcome), TailError> {
        const CHUNKS_PER_LOOK: usize = 16;
        let mut read_any = false;
        for _ in 0..CHUNKS_PER_LOOK {
            let stream = &mut self.streams[index];
            let size = match stream.file.metadata() {
                Ok(meta) => meta.len(),
                Err(error) => {
                    if self.warned.insert(stream.path.clone()) {
                        warn!(%error, path = %stream.path.display(), "Cannot stat an open log file; closing it and trying again later.");
                        self.stats.unreadable += 1;
                        if let Some(notify) = &self.notify {
                            notify(Notice::Unreadable {
                                path: stream.path.clone(),
                                error: error.to_string(),
                            });
                        }
                    }
                    return Ok((read_any, Outcome::Failed));
                }
            };
            let mut emitter = Emitter {
                ctx: Context {
                    offset: self.config.offset,
                    now: Timestamp::now(),
                },
                patterns: &self.patterns,
                enrichment: self.config.enrichment.encoded(),
                fields: &mut self.fields,
                batch: &mut self.batch,
                stats: &mut self.stats,
            };
            stream.size = size;
            if size < stream.read_offset() {
                info!(path = %stream.path.display(), size, offset = stream.read_offset(), "File truncated in place; reading it from its start.");
                emitter.stats.truncations += 1;
                let consumed = stream.buf_start;
                emitter.settle(
                    StreamParts {
                        id: stream.id,
                        source: &stream.source,
                        joiner: &mut stream.joiner,
                        parser: &mut stream.parser,
                    },
                    consumed,
                );
                emitter.batch.cover(stream.id, 0);
                stream.buf.clear();
                stream.buf_start = 0;
                stream.splitter.reset();
            }
            let at = stream.read_offset();
            let len = stream.buf.len();
            let want = usize::try_from(size - at)
                .unwrap_or(usize::MAX)
                .min(self.config.read_chunk);
            let read = if want == 0 {
                Ok(0)
            } else {
                stream.buf.resize(len + want, 0);
                let read = stream.file.read_at(&mut stream.buf[len..], at);
                stream.buf.truncate(len + *read.as_ref().unwrap_or(&0));
                read
            };
            let read = match read {
                Ok(read) => read,
                Err(error) => {
                    if self.warned.insert(stream.path.clone()) {
                        warn!(%error, path = %stream.path.display(), "Cannot read a log file; closing it and trying again later.");
                        emitter.stats.unreadable += 1;
                        if let Some(notify) = &self.notify {
                            notify(Notice::Unreadable {
                                path: stream.path.clone(),
                                error: error.to_string(),
                            });
                        }
                    } else {
                        debug!(%error, path = %stream.path.display(), "Log file still unreadable.");
                    }
                    return Ok((read_any, Outcome::Failed));
                }
            };
            if read == 0 {
                let quiet = now.saturating_duration_since(stream.last_data);
                let finished = stream
                    .gone_since
                    .is_some_and(|_| quiet >= self.config.rotate_wait);
                // A pending stack trace is complete once a whole look found nothing after it
                // (a poll interval at least): writers may write a trace in several pieces.
                if !finished && read_any {
                    return Ok((read_any, Outcome::Open));
                }
                let Stream {
                    id,
                    source,
                    buf,
                    buf_start,
                    splitter,
                    joiner,
                    parser,
                    ..
                } = stream;
                if finished {
                    let consumed = splitter.split(buf, true, |line| {
                        emitter.line(
                            StreamParts {
                                id: *id,
                                source,
                                joiner,
                                parser,
                            },
                            line,
                            *buf_start,
                        );
                    });
                    *buf_start += consumed as u64;
                    buf.clear();
                }
                emitter.settle(
                    StreamParts {
                        id: *id,
                        source,
                        joiner,
                        parser,
                    },
                    *buf_start,
                );
                return Ok((read_any, if finished { Outcome::Drained } else { Outcome::Open }));
            }
            if !read_any && !self.warned.is_empty() {
                self.warned.remove(&stream.path);
            }
            read_any = true;
            stream.last_data = now;
            emitter.stats.bytes_read += read as u64;
            let Stream {
                id,
                source,
                buf,
                buf_start,
                splitter,
                joiner,
                parser,
                ..
            } = stream;
            let consumed = splitter.split(buf, false, |line| {
                emitter.line(
                    StreamParts {
                        id: *id,
                        source,
                        joiner,
                        parser,
                    },
                    line,
                    *buf_start,
                );
            });
            buf.drain(..consumed);
            *buf_start += consumed as u64;
            if self.batch.records() >= self.config.batch_max_records
                || self.batch.len_bytes() >= self.config.batch_max_bytes
            {
                self.flush()?;
            }
        }
        Ok((read_any, Outcome::Open))
    }
}

fn escaped_path(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    escape_into(&mut out, path.as_os_str().as_encoded_bytes());
    out
}

/// Sleeps in short steps so that a stop request is seen promptly.
fn sleep_unless(stop: &AtomicBool, total: Duration) {
    let step = Duration::from_millis(50);
    let deadline = Instant::now() + total;
    while !stop.load(Ordering::Relaxed) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(step));
    }
}
