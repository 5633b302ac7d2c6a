//! Joining stack traces into the record they belong to: Java (`\tat ...`, `Caused by:`), Python
//! (`Traceback (most recent call last):` to the exception line) and Go (`panic:` then
//! `goroutine N [running]:` and its frames). One joiner per stream, so one file's lines never
//! join another's. Sans-IO: the caller feeds lines and decides when an idle stream is flushed.
//!
//! The rules follow Fluent Bit's built-in `java`, `python` and `go` multiline parsers, reduced to
//! prefix checks (no regex on the hot path).

/// Which trace the pending record is in, deciding what may continue it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Trace {
    #[default]
    None,
    Java,
    /// Inside a traceback, before its exception line.
    Python,
    /// After the exception line: blank lines and the chaining sentences still continue.
    PythonEnd,
    Go,
}

/// A record being assembled: the first line, then continuation lines each after a `\n`.
#[derive(Debug, Default)]
pub struct Joiner {
    pending: Vec<u8>,
    first_len: usize,
    lines: u32,
    truncated: bool,
    trace: Trace,
    active: bool,
    /// Where the pending record starts in its file: the checkpoint may not pass it.
    start_offset: u64,
    max_bytes: usize,
    max_lines: u32,
}

/// A finished record, borrowed from the joiner until the next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined<'a> {
    pub first: &'a [u8],
    /// Continuation lines, each after a `\n`; empty for a single line.
    pub continuation: &'a [u8],
    pub lines: u32,
    pub truncated: bool,
}

impl Joiner {
    /// `max_bytes` bounds a joined record (further lines are counted and dropped, the record
    /// flagged), as `max_lines` bounds its line count.
    pub fn new(max_bytes: usize, max_lines: u32) -> Self {
        Joiner {
            max_bytes,
            max_lines: max_lines.max(1),
            ..Joiner::default()
        }
    }

    pub fn is_pending(&self) -> bool {
        self.active
    }

    pub fn start_offset(&self) -> u64 {
        self.start_offset
    }

    /// Whether `line` continues the pending record.
    pub fn continues(&self, line: &[u8]) -> bool {
        self.active && continuation(self.trace, line).is_some()
    }

    /// Appends a continuation line (after [`Joiner::continues`] said so).
    pub fn append(&mut self, line: &[u8], truncated: bool) {
        if let Some(trace) = continuation(self.trace, line) {
            self.trace = trace;
        }
        self.lines = self.lines.saturating_add(1);
        if self.lines > self.max_lines || self.pending.len() + 1 + line.len() > self.max_bytes {
            self.truncated = true;
            return;
        }
        self.pending.push(b'\n');
        self.pending.extend_from_slice(line);
        self.truncated |= truncated;
    }

    /// Starts a new pending record with `line`, which starts at `offset` in the file. The previous
    /// one must have been taken.
    pub fn start(&mut self, line: &[u8], truncated: bool, offset: u64) {
        self.pending.clear();
        self.pending.extend_from_slice(line);
        self.first_len = line.len();
        self.lines = 1;
        self.truncated = truncated;
        self.trace = opening(line);
        self.active = true;
        self.start_offset = offset;
    }

    /// The pending record, ended. Trailing blank continuation lines are dropped.
    pub fn take(&mut self) -> Option<Joined<'_>> {
        if !std::mem::take(&mut self.active) {
            return None;
        }
        let mut continuation = &self.pending[self.first_len..];
        let mut lines = self.lines;
        while let Some(rest) = continuation.strip_suffix(b"\n") {
            continuation = rest;
            lines = lines.saturating_sub(1);
        }
        Some(Joined {
            first: &self.pending[..self.first_len],
            continuation,
            lines,
            truncated: self.truncated,
        })
    }
}

/// The trace a record's first line opens, if any.
fn opening(line: &[u8]) -> Trace {
    if line.starts_with(b"Traceback (most recent call last):") {
        Trace::Python
    } else if line.starts_with(b"panic: ") || line.starts_with(b"fatal error: ") {
        Trace::Go
    } else if is_java_exception_header(line) {
        Trace::Java
    } else {
        Trace::None
    }
}

/// The trace state after `line` when it continues a record in `trace`; `None` when it starts a
/// new record.
fn continuation(trace: Trace, line: &[u8]) -> Option<Trace> {
    let indented = matches!(line.first(), Some(b' ' | b'\t'));
    let body = line.trim_ascii_start();
    // Java frames and causes continue any record: loggers print the trace after their own line.
    if indented && (body.starts_with(b"at ") || body.starts_with(b"... ")) {
        return Some(Trace::Java);
    }
    if body.starts_with(b"Caused by: ") || (indented && body.starts_with(b"Suppressed: ")) {
        return Some(Trace::Java);
    }
    if line.starts_with(b"Traceback (most recent call last):") {
        return Some(Trace::Python);
    }
    if line.starts_with(b"goroutine ") && line.contains(&b'[') {
        return Some(Trace::Go);
    }
    match trace {
        Trace::None => is_java_exception_header(line).then_some(Trace::Java),
        Trace::Java => (indented || is_java_exception_header(line)).then_some(Trace::Java),
        Trace::Python => {
            if indented || line.is_empty() || is_python_chain(line) {
                Some(Trace::Python)
            } else if is_python_exception(line) {
                Some(Trace::PythonEnd)
            } else {
                None
            }
        }
        Trace::PythonEnd => (line.is_empty() || is_python_chain(line)).then_some(Trace::Python),
        Trace::Go => {
            let frame = !indented && line.ends_with(b")") && line.contains(&b'(');
            (indented
                || line.is_empty()
                || frame
                || line.starts_with(b"created by ")
                || line.starts_with(b"exit status ")
                || line.starts_with(b"[signal "))
            .then_some(Trace::Go)
        }
    }
}

fn is_python_chain(line: &[u8]) -> bool {
    line.starts_with(b"During handling of the above exception")
        || line.starts_with(b"The above exception was the direct cause")
}

/// `ValueError: bad`, `KeyError`, `requests.exceptions.HTTPError: 500`.
fn is_python_exception(line: &[u8]) -> bool {
    let name_len = line
        .iter()
        .take_while(|&&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        .count();
    name_len > 0 && (name_len == line.len() || line[name_len..].starts_with(b": "))
}

/// `java.lang.IllegalStateException: msg`, `com.x.MyError`: a dotted class name ending in
/// Exception, Error or Throwable, then the end or `: `.
fn is_java_exception_header(line: &[u8]) -> bool {
    let name_len = line
        .iter()
        .take_while(|&&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'$' | b'.'))
        .count();
    let name = &line[..name_len];
    name.contains(&b'.')
        && (name.ends_with(b"Exception") || name.ends_with(b"Error") || name.ends_with(b"Throwable"))
        && (name_len == line.len() || line[name_len..].starts_with(b": "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `text` line by line and returns the records, each as its lines joined by `\n`.
    fn join(text: &str) -> Vec<String> {
        let mut joiner = Joiner::new(1 << 20, 1000);
        let mut out = Vec::new();
        let mut take = |joiner: &mut Joiner| {
            if let Some(joined) = joiner.take() {
                let mut record = String::from_utf8_lossy(joined.first).into_owned();
                record.push_str(&String::from_utf8_lossy(joined.continuation));
                assert_eq!(joined.lines as usize, record.lines().count());
                out.push(record);
            }
        };
        for line in text.lines() {
            if joiner.continues(line.as_bytes()) {
                joiner.append(line.as_bytes(), false);
            } else {
                take(&mut joiner);
                joiner.start(line.as_bytes(), false, 0);
            }
        }
        take(&mut joiner);
        out
    }

    const JAVA: &str = "2024-01-02 03:04:05 ERROR [main] Handler - request failed
java.lang.IllegalStateException: boom
\tat com.example.Handler.handle(Handler.java:42)
\tat java.base/java.lang.Thread.run(Thread.java:833)
Caused by: java.io.IOException: disk
\tat com.example.Disk.write(Disk.java:7)
\t... 2 more";

    const PYTHON: &str = "ERROR:root:failed
Traceback (most recent call last):
  File \"app.py\", line 3, in <module>
    1 / 0
ZeroDivisionError: division by zero

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File \"app.py\", line 5, in <module>
    raise ValueError(\"x\")
ValueError: x";

    const GO: &str = "panic: runtime error: index out of range [3] with length 2

goroutine 1 [running]:
main.main()
\t/app/main.go:8 +0x1d
exit status 2";

    #[test]
    fn stack_traces_join_into_the_record_they_follow() {
        let cases = [(JAVA, 1), (PYTHON, 1), (GO, 1)];
        for (text, want) in cases {
            let records = join(&format!("before\n{text}\nafter"));
            assert_eq!(records.len(), want + 2, "{records:#?}");
            assert_eq!(records[0], "before");
            assert_eq!(records[1], text);
            assert_eq!(records[2], "after");
        }
    }

    #[test]
    fn ordinary_lines_stay_apart() {
        let text = "one\n  indented but no trace\nValueError: not in a traceback\nmain.main()\nlast";
        assert_eq!(join(text), text.lines().collect::<Vec<_>>());
    }

    #[test]
    fn a_runaway_trace_is_bounded_and_flagged() {
        let mut joiner = Joiner::new(64, 3);
        joiner.start(b"java.lang.Error: x", false, 7);
        for _ in 0..10 {
            assert!(joiner.continues(b"\tat a.b(C.java:1)"));
            joiner.append(b"\tat a.b(C.java:1)", false);
        }
        assert_eq!(joiner.start_offset(), 7);
        let joined = joiner.take().unwrap();
        assert!(joined.truncated);
        assert_eq!(joined.lines, 11, "every line is counted, kept or not");
        assert_eq!(joined.continuation.iter().filter(|&&b| b == b'\n').count(), 2);
        assert!(joiner.take().is_none());
    }
}
