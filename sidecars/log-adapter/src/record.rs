//! The output record: one JSON object per line, written into a reused buffer.
//!
//! ```json
//! {"timestamp":"2024-01-02T03:04:05.123Z","level":"error","message":"boom","format":"logfmt",
//!  "source":"/var/log/outrigger/app.log","fields":{"user":"42"},
//!  "pod":"web-0","namespace":"shop","container":"app","owner":"ReplicatedService/web"}
//! ```
//!
//! `timestamp` is the line's own stamp, or the time it was read when it has none (then
//! `timestamp_source` is `"read"`). `level` is one of [`Level`]'s names, absent when the line has
//! none. Parsed fields sit under `fields` so they never clash with these names. Flags appear only
//! when set: `parse_error` (the line is passed through whole as `message`), `truncated` (the line
//! was longer than the limit) and `lines` (how many lines a stack trace joined).

use crate::time::Timestamp;

/// One vocabulary for every format's severities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Fatal => "fatal",
        }
    }

    /// A level word as the formats write it (`WARNING`, `err`, `CRITICAL`, `I`, `notice`, ...).
    pub fn from_name(name: &[u8]) -> Option<Level> {
        let name = name.trim_ascii();
        if name.len() > 16 {
            return None;
        }
        let mut lower = [0u8; 16];
        for (slot, b) in lower.iter_mut().zip(name) {
            *slot = b.to_ascii_lowercase();
        }
        Some(match &lower[..name.len()] {
            b"trace" | b"trc" | b"finest" | b"finer" | b"t" => Level::Trace,
            b"debug" | b"dbg" | b"fine" | b"config" | b"d" | b"verbose" => Level::Debug,
            b"info" | b"inf" | b"information" | b"informational" | b"notice" | b"i" | b"n" => Level::Info,
            b"warn" | b"warning" | b"wrn" | b"w" => Level::Warn,
            b"error" | b"err" | b"eror" | b"severe" | b"e" => Level::Error,
            b"fatal" | b"critical" | b"crit" | b"alert" | b"emerg" | b"emergency" | b"panic" | b"f"
            | b"dpanic" => Level::Fatal,
            _ => return None,
        })
    }

    /// Syslog severity 0 (emergency) to 7 (debug).
    pub fn from_syslog_severity(severity: u8) -> Level {
        match severity {
            0..=2 => Level::Fatal,
            3 => Level::Error,
            4 => Level::Warn,
            5 | 6 => Level::Info,
            _ => Level::Debug,
        }
    }

    /// Numeric levels of pino and bunyan (10 trace ... 60 fatal).
    pub fn from_number(value: f64) -> Option<Level> {
        Some(match value {
            v if v < 5.0 => return None,
            v if v <= 10.0 => Level::Trace,
            v if v <= 20.0 => Level::Debug,
            v if v <= 30.0 => Level::Info,
            v if v <= 40.0 => Level::Warn,
            v if v <= 50.0 => Level::Error,
            v if v <= 60.0 => Level::Fatal,
            _ => return None,
        })
    }

    /// HTTP access lines: server errors are errors, client errors warnings.
    pub fn from_http_status(status: u16) -> Level {
        match status {
            500.. => Level::Error,
            400..=499 => Level::Warn,
            _ => Level::Info,
        }
    }
}

/// What a parser found in one line. Parsed fields go straight into a [`Fields`] buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header<'a> {
    pub timestamp: Option<Timestamp>,
    pub level: Option<Level>,
    pub message: Text<'a>,
}

/// A message as found: raw bytes to escape, the inside of a JSON string literal already escaped
/// (copied verbatim), or the inside of a backslash-quoted string (logfmt, syslog structured data,
/// Apache) decoded while it is escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text<'a> {
    Raw(&'a [u8]),
    Escaped(&'a [u8]),
    Quoted(&'a [u8]),
}

impl Default for Text<'_> {
    fn default() -> Self {
        Text::Raw(b"")
    }
}

/// Parsed fields as a JSON object body (`"k":v,"k2":v2`), written as the parser finds them so
/// that a line costs no allocation once the buffer has grown.
#[derive(Debug, Default, Clone)]
pub struct Fields {
    buf: Vec<u8>,
}

impl Fields {
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Drops the fields written after `len` bytes (a parser backing out of a guess).
    pub fn truncate(&mut self, len: usize) {
        self.buf.truncate(len);
    }

    fn key(&mut self, key: &[u8]) {
        if !self.buf.is_empty() {
            self.buf.push(b',');
        }
        write_json_string(&mut self.buf, key);
        self.buf.push(b':');
    }

    /// A string value from raw bytes.
    pub fn str(&mut self, key: &[u8], value: &[u8]) {
        self.key(key);
        write_json_string(&mut self.buf, value);
    }

    /// A string value from the inside of a backslash-quoted string.
    pub fn quoted(&mut self, key: &[u8], value: &[u8]) {
        self.key(key);
        self.buf.push(b'"');
        unquote_into(&mut self.buf, value);
        self.buf.push(b'"');
    }

    /// A value that is already valid JSON (a validated JSON member, a number).
    pub fn raw(&mut self, key_escaped: &[u8], value_json: &[u8]) {
        if !self.buf.is_empty() {
            self.buf.push(b',');
        }
        self.buf.push(b'"');
        self.buf.extend_from_slice(key_escaped);
        self.buf.extend_from_slice(b"\":");
        self.buf.extend_from_slice(value_json);
    }

    /// A value that is already valid JSON under a raw key.
    pub fn raw_key(&mut self, key: &[u8], value_json: &[u8]) {
        self.key(key);
        self.buf.extend_from_slice(value_json);
    }

    /// An integer value.
    pub fn int(&mut self, key: &[u8], value: u64) {
        self.key(key);
        push_u64(&mut self.buf, value);
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// Everything about one record the encoder needs beyond the parser's header.
#[derive(Debug, Clone, Copy)]
pub struct Meta<'a> {
    pub format: &'static str,
    /// The file's path, pre-escaped JSON string contents.
    pub source: &'a [u8],
    /// Joined continuation lines (each starting with `\n`), appended to the message.
    pub continuation: &'a [u8],
    pub lines: u32,
    pub parse_error: Option<crate::parse::ParseError>,
    pub truncated: bool,
    /// When the line was read: the timestamp of lines without one.
    pub read_at: Timestamp,
    /// Pre-encoded enrichment members (`,"pod":"..."`), see [`crate::enrich`].
    pub enrichment: &'a [u8],
}

/// Appends one record and a newline.
pub fn encode(out: &mut Vec<u8>, header: &Header<'_>, fields: &Fields, meta: &Meta<'_>) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    header.timestamp.unwrap_or(meta.read_at).write_rfc3339(out);
    out.push(b'"');
    if header.timestamp.is_none() {
        out.extend_from_slice(b",\"timestamp_source\":\"read\"");
    }
    if let Some(level) = header.level {
        out.extend_from_slice(b",\"level\":\"");
        out.extend_from_slice(level.as_str().as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b",\"message\":\"");
    match header.message {
        Text::Raw(bytes) => escape_into(out, bytes),
        Text::Escaped(bytes) => out.extend_from_slice(bytes),
        Text::Quoted(bytes) => unquote_into(out, bytes),
    }
    escape_into(out, meta.continuation);
    out.extend_from_slice(b"\",\"format\":\"");
    out.extend_from_slice(meta.format.as_bytes());
    out.extend_from_slice(b"\",\"source\":\"");
    out.extend_from_slice(meta.source);
    out.push(b'"');
    if !fields.is_empty() {
        out.extend_from_slice(b",\"fields\":{");
        out.extend_from_slice(fields.as_bytes());
        out.push(b'}');
    }
    if let Some(error) = meta.parse_error {
        out.extend_from_slice(b",\"parse_error\":\"");
        escape_into(out, error.format.as_bytes());
        out.extend_from_slice(b": ");
        escape_into(out, error.reason.as_bytes());
        out.push(b'"');
    }
    if meta.truncated {
        out.extend_from_slice(b",\"truncated\":true");
    }
    if meta.lines > 1 {
        out.extend_from_slice(b",\"lines\":");
        push_u64(out, u64::from(meta.lines));
    }
    out.extend_from_slice(meta.enrichment);
    out.extend_from_slice(b"}\n");
}

/// Decimal digits of `value`, without allocating.
pub fn push_u64(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        // The remainder is below 10.
        #[allow(clippy::cast_possible_truncation)]
        let digit = (value % 10) as u8;
        digits[at] = b'0' + digit;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// `"..."` with the contents escaped.
pub fn write_json_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    escape_into(out, bytes);
    out.push(b'"');
}

/// Bytes that need more than themselves inside a JSON string: 0 copies, 1 short escape, 2 `\u00XX`.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = 2;
        i += 1;
    }
    table[b'\n' as usize] = 1;
    table[b'\r' as usize] = 1;
    table[b'\t' as usize] = 1;
    table[b'"' as usize] = 1;
    table[b'\\' as usize] = 1;
    table[0x7f] = 2;
    table
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Escapes bytes into JSON string contents. Invalid UTF-8 (binary garbage) becomes the visible
/// text `\xNN` per byte: nothing is lost and the output stays valid JSON.
pub fn escape_into(out: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.is_ascii() {
        escape_valid(out, bytes);
        return;
    }
    for chunk in bytes.utf8_chunks() {
        escape_valid(out, chunk.valid().as_bytes());
        for &b in chunk.invalid() {
            out.extend_from_slice(b"\\\\x");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        }
    }
}

/// Decodes the inside of a backslash-quoted string (`\"`, `\\`, `\]`, `\n`, `\t`, `\r`)
/// into escaped JSON string contents. Other sequences are kept as written.
pub fn unquote_into(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut rest = bytes;
    while let Some(at) = rest.iter().position(|&b| b == b'\\') {
        escape_into(out, &rest[..at]);
        match rest.get(at + 1) {
            Some(b'n') => out.extend_from_slice(b"\\n"),
            Some(b't') => out.extend_from_slice(b"\\t"),
            Some(b'r') => out.extend_from_slice(b"\\r"),
            Some(&c @ (b'"' | b'\\' | b']')) => escape_into(out, &[c]),
            // Kept as written; the next byte is read again (it may start a UTF-8 sequence).
            Some(_) | None => {
                out.extend_from_slice(b"\\\\");
                rest = &rest[at + 1..];
                continue;
            }
        }
        rest = rest.get(at + 2..).unwrap_or_default();
    }
    escape_into(out, rest);
}

fn escape_valid(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let kind = ESCAPE[usize::from(b)];
        if kind == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            _ => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(bytes: &[u8]) -> String {
        let mut out = Vec::new();
        write_json_string(&mut out, bytes);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escaping_keeps_text_and_makes_binary_visible() {
        let cases: [(&[u8], &str); 6] = [
            (b"plain", r#""plain""#),
            (b"quote \" and \\ slash", r#""quote \" and \\ slash""#),
            (b"tab\tnl\ncr\r", r#""tab\tnl\ncr\r""#),
            (b"\x00\x1b[31m", r#""\u0000\u001b[31m""#),
            ("caf\u{e9} \u{1f600}".as_bytes(), "\"caf\u{e9} \u{1f600}\""),
            (b"\xff\xfebad", r#""\\xff\\xfebad""#),
        ];
        for (input, want) in cases {
            let got = escaped(input);
            assert_eq!(got, want);
            let back: String = serde_json::from_str(&got).unwrap();
            assert!(!back.is_empty());
        }
    }

    #[test]
    fn integers_are_written_in_decimal() {
        for value in [0, 7, 10, 12_345, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, value);
            assert_eq!(out, value.to_string().as_bytes());
        }
    }

    #[test]
    fn every_byte_sequence_escapes_to_valid_json() {
        let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        let _: String = serde_json::from_str(&escaped(&all)).unwrap();
    }

    #[test]
    fn level_words_from_every_format_map_to_one_vocabulary() {
        let cases: [(&[u8], Option<Level>); 10] = [
            (b"WARNING", Some(Level::Warn)),
            (b"err", Some(Level::Error)),
            (b"CRITICAL", Some(Level::Fatal)),
            (b"notice", Some(Level::Info)),
            (b"I", Some(Level::Info)),
            (b"Debug", Some(Level::Debug)),
            (b"finest", Some(Level::Trace)),
            (b"panic", Some(Level::Fatal)),
            (b"loud", None),
            (b"a very long level word indeed", None),
        ];
        for (input, want) in cases {
            assert_eq!(
                Level::from_name(input),
                want,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(Level::from_number(30.0), Some(Level::Info));
        assert_eq!(Level::from_syslog_severity(3), Level::Error);
        assert_eq!(Level::from_http_status(503), Level::Error);
    }

    #[test]
    fn a_record_encodes_as_one_json_line_with_flags_only_when_set() {
        let mut fields = Fields::default();
        fields.str(b"user", b"42");
        fields.int(b"status", 200);
        let header = Header {
            timestamp: Some(Timestamp { secs: 0, nanos: 0 }),
            level: Some(Level::Warn),
            message: Text::Raw(b"hi \"there\""),
        };
        let meta = Meta {
            format: "logfmt",
            source: b"/var/log/outrigger/app.log",
            continuation: b"\n\tat x",
            lines: 2,
            parse_error: None,
            truncated: true,
            read_at: Timestamp { secs: 5, nanos: 0 },
            enrichment: b",\"pod\":\"web-0\"",
        };
        let mut out = Vec::new();
        encode(&mut out, &header, &fields, &meta);
        assert_eq!(out.last(), Some(&b'\n'));
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "timestamp": "1970-01-01T00:00:00Z",
                "level": "warn",
                "message": "hi \"there\"\n\tat x",
                "format": "logfmt",
                "source": "/var/log/outrigger/app.log",
                "fields": {"user": "42", "status": 200},
                "truncated": true,
                "lines": 2,
                "pod": "web-0",
            })
        );
    }
}
