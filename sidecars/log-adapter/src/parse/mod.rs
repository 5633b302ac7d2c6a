//! Line parsers: pure functions from one line's bytes to a [`Header`] plus [`Fields`], no I/O.
//!
//! Each format has its module and a table of cases. [`StreamParser`] picks the parser for one
//! stream (one file): the one the settings name, or auto-detection, which locks onto the first
//! format a stream shows and still reads an odd line of another format by what it starts with.

pub mod combined;
pub mod json;
pub mod klog;
pub mod logfmt;
pub mod plain;
pub mod regex;
pub mod syslog;

use crate::{
    record::{Fields, Header, Text},
    time::{Timestamp, UtcOffset},
};

/// What a parser needs besides the line.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// Offset of stamps that carry none.
    pub offset: UtcOffset,
    /// Now, for the year of stamps that carry none (syslog, klog).
    pub now: Timestamp,
}

/// Why a line did not parse as its format. Static text: a failed line costs no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{format}: {reason}")]
pub struct ParseError {
    pub format: &'static str,
    pub reason: &'static str,
}

impl ParseError {
    pub const fn new(format: &'static str, reason: &'static str) -> Self {
        ParseError { format, reason }
    }
}

/// The formats a line can be read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Logfmt,
    /// nginx / Apache access lines, combined or common log format.
    Combined,
    NginxError,
    Klog,
    Syslog3164,
    Syslog5424,
    Regex,
    Plain,
}

impl Format {
    /// Every format, in [`Format::index`] order (metrics count parse failures per format).
    pub const ALL: [Format; 9] = [
        Format::Json,
        Format::Logfmt,
        Format::Combined,
        Format::NginxError,
        Format::Klog,
        Format::Syslog3164,
        Format::Syslog5424,
        Format::Regex,
        Format::Plain,
    ];

    /// Position in [`Format::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Logfmt => "logfmt",
            Format::Combined => "combined",
            Format::NginxError => "nginx_error",
            Format::Klog => "klog",
            Format::Syslog3164 => "syslog_rfc3164",
            Format::Syslog5424 => "syslog_rfc5424",
            Format::Regex => "regex",
            Format::Plain => "plain",
        }
    }

    /// Whether lines of this format can be followed by stack-trace lines to join: formats that
    /// carry a whole event in one line (JSON, access logs) never are.
    pub fn may_continue(self) -> bool {
        !matches!(self, Format::Json | Format::Combined)
    }
}

/// The parser setting: one format, or auto-detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Choice {
    #[default]
    Auto,
    Json,
    Logfmt,
    Combined,
    NginxError,
    Klog,
    /// RFC 5424 or RFC 3164, told apart per line.
    Syslog,
    Regex,
    Plain,
}

/// Why a `--parser` value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown parser {0:?}: expected auto, json, logfmt, combined (nginx, apache), nginx-error, klog, syslog, regex or plain"
)]
pub struct ChoiceError(pub String);

impl std::str::FromStr for Choice {
    type Err = ChoiceError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(match value.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Choice::Auto,
            "json" => Choice::Json,
            "logfmt" => Choice::Logfmt,
            "combined" | "nginx" | "apache" | "common" => Choice::Combined,
            "nginx-error" | "nginx_error" => Choice::NginxError,
            "klog" | "glog" => Choice::Klog,
            "syslog" | "rfc3164" | "rfc5424" => Choice::Syslog,
            "regex" => Choice::Regex,
            "plain" | "none" => Choice::Plain,
            _ => return Err(ChoiceError(value.to_owned())),
        })
    }
}

/// One line's result: how it was read, and why not when it was passed through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub header: Header<'a>,
    pub format: Format,
    pub error: Option<ParseError>,
}

/// Parses one format.
pub fn parse_as<'a>(
    format: Format,
    line: &'a [u8],
    ctx: &Context,
    regexes: &regex::Patterns,
    fields: &mut Fields,
) -> Result<Header<'a>, ParseError> {
    match format {
        Format::Json => json::parse(line, ctx, fields),
        Format::Logfmt => logfmt::parse(line, ctx, fields),
        Format::Combined => combined::parse_access(line, fields),
        Format::NginxError => combined::parse_error_log(line, ctx, fields),
        Format::Klog => klog::parse(line, ctx, fields),
        Format::Syslog3164 => syslog::parse_3164(line, ctx, fields),
        Format::Syslog5424 => syslog::parse_5424(line, ctx, fields),
        Format::Regex => regexes.parse(line, ctx, fields),
        Format::Plain => Ok(plain::parse(line, ctx)),
    }
}

/// The format a line most likely is, from its first bytes: one guess, tried by the caller.
pub fn sniff(line: &[u8]) -> Format {
    match line.first() {
        Some(b'{') => Format::Json,
        Some(b'<') => {
            if syslog::looks_like_5424(line) {
                Format::Syslog5424
            } else {
                Format::Syslog3164
            }
        }
        Some(b'I' | b'W' | b'E' | b'F')
            if line.len() > 6 && line[1..5].iter().all(u8::is_ascii_digit) && line[5] == b' ' =>
        {
            Format::Klog
        }
        // `2024/01/02 03:04:05 [`: Go's `log` writes the same stamp without the bracket.
        Some(b) if b.is_ascii_digit() && line.get(4) == Some(&b'/') && line.get(19..21) == Some(b" [") => {
            Format::NginxError
        }
        // `Mmm dd hh:` (the day may be space-padded): prose starting with "May " is not syslog.
        Some(_)
            if crate::time::month_abbrev(line).is_some()
                && line.get(3) == Some(&b' ')
                && line.get(6) == Some(&b' ')
                && line.get(9) == Some(&b':') =>
        {
            Format::Syslog3164
        }
        Some(_) if combined::looks_like_access(line) => Format::Combined,
        Some(_) if logfmt::looks_like(line) => Format::Logfmt,
        _ => Format::Plain,
    }
}

/// The parser of one stream.
#[derive(Debug, Clone)]
pub struct StreamParser {
    choice: Choice,
    /// Auto-detection's format for this stream: the first one a line parsed as.
    locked: Option<Format>,
}

impl StreamParser {
    pub fn new(choice: Choice) -> Self {
        let locked = match choice {
            Choice::Auto | Choice::Syslog => None,
            Choice::Json => Some(Format::Json),
            Choice::Logfmt => Some(Format::Logfmt),
            Choice::Combined => Some(Format::Combined),
            Choice::NginxError => Some(Format::NginxError),
            Choice::Klog => Some(Format::Klog),
            Choice::Regex => Some(Format::Regex),
            Choice::Plain => Some(Format::Plain),
        };
        StreamParser { choice, locked }
    }

    /// Whether stack-trace lines may be joined to this stream's records: not when the chosen
    /// format carries a whole event per line. Auto-detection always may (a stream can mix).
    pub fn may_join(&self) -> bool {
        !matches!(self.choice, Choice::Json | Choice::Combined)
    }

    /// The format the stream's next record is expected in, if known (the joiner asks whether it
    /// can continue).
    pub fn locked(&self) -> Option<Format> {
        self.locked
    }

    /// Parses a line; never fails: a line no parser takes is passed through whole, with the
    /// error when a format was chosen or the line looked like one.
    pub fn parse<'a>(
        &mut self,
        line: &'a [u8],
        ctx: &Context,
        regexes: &regex::Patterns,
        fields: &mut Fields,
    ) -> Parsed<'a> {
        fields.clear();
        match self.choice {
            Choice::Auto => self.parse_auto(line, ctx, regexes, fields),
            Choice::Syslog => {
                let format = if syslog::looks_like_5424(line) {
                    Format::Syslog5424
                } else {
                    Format::Syslog3164
                };
                Self::parse_or_pass(format, line, ctx, regexes, fields)
            }
            _ => {
                let format = self.locked.unwrap_or(Format::Plain);
                Self::parse_or_pass(format, line, ctx, regexes, fields)
            }
        }
    }

    fn parse_or_pass<'a>(
        format: Format,
        line: &'a [u8],
        ctx: &Context,
        regexes: &regex::Patterns,
        fields: &mut Fields,
    ) -> Parsed<'a> {
        match parse_as(format, line, ctx, regexes, fields) {
            Ok(header) => Parsed {
                header,
                format,
                error: None,
            },
            Err(error) => {
                fields.clear();
                Parsed {
                    header: Header {
                        message: Text::Raw(line),
                        ..Header::default()
                    },
                    format,
                    error: Some(error),
                }
            }
        }
    }

    fn parse_auto<'a>(
        &mut self,
        line: &'a [u8],
        ctx: &Context,
        regexes: &regex::Patterns,
        fields: &mut Fields,
    ) -> Parsed<'a> {
        // User patterns come first: they are what the user knows about their app.
        if !regexes.is_empty() {
            if let Ok(header) = regexes.parse(line, ctx, fields) {
                return Parsed {
                    header,
                    format: Format::Regex,
                    error: None,
                };
            }
            fields.clear();
        }
        let mut locked_error = None;
        if let Some(format) = self.locked {
            match parse_as(format, line, ctx, regexes, fields) {
                Ok(header) => {
                    return Parsed {
                        header,
                        format,
                        error: None,
                    }
                }
                Err(error) => locked_error = Some(error),
            }
            fields.clear();
        }
        let guess = sniff(line);
        if guess == Format::Plain || Some(guess) == self.locked {
            // A line that looks like the stream's format but does not parse is flagged; one that
            // looks like no format is plain text, which apps mix into any stream.
            return Parsed {
                header: plain::parse(line, ctx),
                format: Format::Plain,
                error: locked_error.filter(|_| guess != Format::Plain),
            };
        }
        match parse_as(guess, line, ctx, regexes, fields) {
            Ok(header) => {
                self.locked.get_or_insert(guess);
                Parsed {
                    header,
                    format: guess,
                    error: None,
                }
            }
            Err(error) => {
                fields.clear();
                // A line that starts like a format but is not is flagged; the plain parser still
                // finds its stamp and level.
                Parsed {
                    header: plain::parse(line, ctx),
                    format: Format::Plain,
                    error: Some(error),
                }
            }
        }
    }
}

/// Splits at the first byte equal to `sep`.
pub(crate) fn split_once(input: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let at = input.iter().position(|&b| b == sep)?;
    Some((&input[..at], &input[at + 1..]))
}

/// A double-quoted token at the start of `input` (`"..."`, backslash escapes skipped): its
/// contents and the rest after the closing quote.
pub(crate) fn quoted(input: &[u8]) -> Option<(&[u8], &[u8])> {
    if input.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1;
    while i < input.len() {
        match input[i] {
            b'\\' => i += 2,
            b'"' => return Some((&input[1..i], &input[i + 1..])),
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub fn ctx() -> Context {
        Context {
            offset: UtcOffset(0),
            // 2024-06-01T00:00:00Z
            now: Timestamp {
                secs: 1_717_200_000,
                nanos: 0,
            },
        }
    }

    /// The header and fields of a parsed line as JSON, for table-driven tests.
    pub fn render(header: &Header<'_>, fields: &Fields) -> serde_json::Value {
        let mut message = Vec::new();
        match header.message {
            Text::Raw(bytes) => crate::record::escape_into(&mut message, bytes),
            Text::Escaped(bytes) => message.extend_from_slice(bytes),
            Text::Quoted(bytes) => crate::record::unquote_into(&mut message, bytes),
        }
        let fields: serde_json::Value =
            serde_json::from_slice(&[b"{", fields.as_bytes(), b"}"].concat()).unwrap();
        let message: String = serde_json::from_slice(&[b"\"", &message[..], b"\""].concat()).unwrap();
        serde_json::json!({
            "timestamp": header.timestamp.map(Timestamp::to_rfc3339),
            "level": header.level.map(crate::record::Level::as_str),
            "message": message,
            "fields": fields,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{test_support::ctx, *};

    #[test]
    fn sniffing_guesses_the_format_from_the_first_bytes() {
        let cases: [(&[u8], Format); 12] = [
            (br#"{"msg":"x"}"#, Format::Json),
            (
                b"<34>1 2003-10-11T22:14:15.003Z host app - - - hi",
                Format::Syslog5424,
            ),
            (b"<34>Oct 11 22:14:15 host su: hi", Format::Syslog3164),
            (b"Oct 11 22:14:15 host su: hi", Format::Syslog3164),
            (b"I0102 03:04:05.000006    1 main.go:10] hi", Format::Klog),
            (b"2024/01/02 03:04:05 [error] 1#1: boom", Format::NginxError),
            (
                b"127.0.0.1 - - [10/Oct/2000:13:55:36 -0700] \"GET / HTTP/1.0\" 200 2326",
                Format::Combined,
            ),
            (b"level=info msg=hi", Format::Logfmt),
            (
                b"2024-01-02 03:04:05.678 ERROR [main] c.e.Shop - boom",
                Format::Plain,
            ),
            (b"Information: all good", Format::Plain),
            (b"2024/01/02 03:04:05 Go's log package", Format::Plain),
            (b"", Format::Plain),
        ];
        for (line, want) in cases {
            assert_eq!(sniff(line), want, "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn a_chosen_parser_passes_failing_lines_through_with_the_error() {
        let mut parser = StreamParser::new(Choice::Json);
        let mut fields = Fields::default();
        let parsed = parser.parse(b"not json", &ctx(), &regex::Patterns::default(), &mut fields);
        assert_eq!(parsed.header.message, Text::Raw(b"not json"));
        assert_eq!(parsed.error.map(|e| e.format), Some("json"));
        assert!(fields.is_empty());
    }

    #[test]
    fn auto_detection_locks_onto_the_stream_format_and_still_reads_odd_lines() {
        let mut parser = StreamParser::new(Choice::Auto);
        let mut fields = Fields::default();
        let patterns = regex::Patterns::default();
        let first = parser.parse(b"level=info msg=started", &ctx(), &patterns, &mut fields);
        assert_eq!(first.format, Format::Logfmt);
        assert_eq!(parser.locked(), Some(Format::Logfmt));
        let odd = parser.parse(br#"{"level":"warn","msg":"x"}"#, &ctx(), &patterns, &mut fields);
        assert_eq!(odd.format, Format::Json);
        let plain = parser.parse(b"just words", &ctx(), &patterns, &mut fields);
        assert_eq!((plain.format, plain.error), (Format::Plain, None));
        let prose = parser.parse(b"May I ask: why?", &ctx(), &patterns, &mut fields);
        assert_eq!((prose.format, prose.error), (Format::Plain, None));
        let broken = parser.parse(b"level=\"open", &ctx(), &patterns, &mut fields);
        assert_eq!(
            broken.error.map(|e| e.format),
            Some("logfmt"),
            "looks like the stream's format"
        );
        let broken = parser.parse(b"{\"unterminated", &ctx(), &patterns, &mut fields);
        assert_eq!(broken.format, Format::Plain);
        assert!(
            broken.error.is_some(),
            "a line that starts like JSON but is not is flagged"
        );
    }

    #[test]
    fn parser_names_from_settings() {
        assert_eq!("nginx".parse(), Ok(Choice::Combined));
        assert_eq!("AUTO".parse(), Ok(Choice::Auto));
        assert!("yaml".parse::<Choice>().is_err());
    }
}

#[cfg(test)]
mod robustness {
    use super::{test_support::ctx, *};
    use crate::record::{encode, Meta};

    /// Fragments that lead each parser down its paths, glued at random: whatever comes out,
    /// every line must encode to one valid JSON object.
    const FRAGMENTS: [&[u8]; 24] = [
        b"{",
        b"}",
        b"\"",
        b"\\",
        b":",
        b",",
        b"=",
        b" ",
        b"[",
        b"]",
        b"<34>",
        b"<165>1 ",
        b"I0102 ",
        b"03:04:05.1 ",
        b"2024-01-02T03:04:05Z",
        b"10/Oct/2000:13:55:36 -0700",
        b"level",
        b"msg",
        b"\xff\xfe",
        b"\xe2\x82",
        b"\x00\x1b",
        b"\\u00",
        b"\\ud800",
        b"1e9",
    ];

    /// xorshift64: deterministic, so a failure is repeatable.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn any_line_in_any_mode_encodes_to_valid_json() {
        let choices = [
            Choice::Auto,
            Choice::Json,
            Choice::Logfmt,
            Choice::Combined,
            Choice::NginxError,
            Choice::Klog,
            Choice::Syslog,
            Choice::Plain,
        ];
        let patterns = regex::Patterns::default();
        let mut fields = Fields::default();
        let mut state = 0x2545_f491_4f6c_dd1d;
        let mut line = Vec::new();
        let mut out = Vec::new();
        for round in 0..20_000 {
            line.clear();
            for _ in 0..next(&mut state) % 12 {
                line.extend_from_slice(FRAGMENTS[(next(&mut state) % FRAGMENTS.len() as u64) as usize]);
            }
            let choice = choices[round % choices.len()];
            let mut parser = StreamParser::new(choice);
            let parsed = parser.parse(&line, &ctx(), &patterns, &mut fields);
            let meta = Meta {
                format: parsed.format.name(),
                source: b"/x",
                continuation: b"",
                lines: 1,
                parse_error: parsed.error,
                truncated: false,
                read_at: ctx().now,
                enrichment: b"",
            };
            out.clear();
            encode(&mut out, &parsed.header, &fields, &meta);
            if let Err(error) = serde_json::from_slice::<serde_json::Value>(&out) {
                panic!(
                    "{choice:?} {:?} -> {} : {error}",
                    String::from_utf8_lossy(&line),
                    String::from_utf8_lossy(&out)
                );
            }
        }
    }
}
