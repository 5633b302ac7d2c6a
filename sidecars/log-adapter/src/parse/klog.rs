//! klog / glog, as Kubernetes components write it: `Lmmdd hh:mm:ss.uuuuuu threadid file:line] msg`,
//! where the message of structured logging is a quoted string followed by `key=value` pairs.

use super::{logfmt, quoted, split_once, Context, ParseError};
use crate::{
    record::{Fields, Header, Level, Text},
    time::{digits, infer_year, parse_clock},
};

const FORMAT: &str = "klog";

fn err(reason: &'static str) -> ParseError {
    ParseError::new(FORMAT, reason)
}

pub fn parse<'a>(line: &'a [u8], ctx: &Context, fields: &mut Fields) -> Result<Header<'a>, ParseError> {
    let level = match line.first() {
        Some(b'I') => Level::Info,
        Some(b'W') => Level::Warn,
        Some(b'E') => Level::Error,
        Some(b'F') => Level::Fatal,
        _ => return Err(err("missing severity letter")),
    };
    let month = digits(&line[1..], 2).ok_or_else(|| err("invalid month"))?;
    let day = digits(&line[3..], 2).ok_or_else(|| err("invalid day"))?;
    if line.get(5) != Some(&b' ') {
        return Err(err("invalid date"));
    }
    let (hms, nanos, used) = parse_clock(&line[6..]).ok_or_else(|| err("invalid time"))?;
    let timestamp =
        infer_year(ctx.now, month, day, hms, nanos, ctx.offset).ok_or_else(|| err("invalid date"))?;
    let rest = line[6 + used..].trim_ascii_start();
    let (thread, rest) = split_once(rest, b' ').ok_or_else(|| err("missing thread id"))?;
    if thread.is_empty() || !thread.iter().all(u8::is_ascii_digit) {
        return Err(err("invalid thread id"));
    }
    let (caller, rest) = split_once(rest, b']').ok_or_else(|| err("missing file:line]"))?;
    fields.raw_key(b"thread", thread);
    fields.str(b"caller", caller);
    let rest = rest.strip_prefix(b" ").unwrap_or(rest);

    // Structured: `"msg" key="value" key2=value2`. Anything else is the whole message.
    if let Some((msg, mut pairs)) = quoted(rest) {
        let mark = fields.as_bytes().len();
        let mut header = Header {
            timestamp: Some(timestamp),
            level: Some(level),
            message: Text::Quoted(msg),
        };
        let mut ok = true;
        loop {
            match logfmt::next_pair(&mut pairs) {
                Ok(Some((key, Some(value)))) => match value {
                    Text::Quoted(b) => fields.quoted(key, b),
                    Text::Raw(b) | Text::Escaped(b) => fields.str(key, b),
                },
                Ok(None) => break,
                Ok(Some((_, None))) | Err(_) => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            return Ok(header);
        }
        fields.truncate(mark);
        header.message = Text::Raw(rest);
        return Ok(header);
    }
    Ok(Header {
        timestamp: Some(timestamp),
        level: Some(level),
        message: Text::Raw(rest),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::parse::test_support::{ctx, render};

    fn run(line: &str) -> Result<serde_json::Value, ParseError> {
        let mut fields = Fields::default();
        parse(line.as_bytes(), &ctx(), &mut fields).map(|h| render(&h, &fields))
    }

    #[test]
    fn klog_lines_parse_with_inferred_year() {
        let cases = [
            (
                "I0102 03:04:05.123456    1234 main.go:42] Starting server on :8080",
                json!({"timestamp": "2024-01-02T03:04:05.123456Z", "level": "info",
                       "message": "Starting server on :8080",
                       "fields": {"thread": 1234, "caller": "main.go:42"}}),
            ),
            (
                r#"E1231 23:59:59.000001       7 controller.go:9] "Reconcile failed" err="not \"found\"" pod="ns/p""#,
                json!({"timestamp": "2023-12-31T23:59:59.000001Z", "level": "error",
                       "message": "Reconcile failed",
                       "fields": {"thread": 7, "caller": "controller.go:9",
                                  "err": "not \"found\"", "pod": "ns/p"}}),
            ),
            (
                r#"W0601 00:00:00.000000 1 x.go:1] "quoted" then words"#,
                json!({"timestamp": "2024-06-01T00:00:00Z", "level": "warn",
                       "message": "\"quoted\" then words",
                       "fields": {"thread": 1, "caller": "x.go:1"}}),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(run(line).unwrap(), want, "{line}");
        }
    }

    #[test]
    fn lines_that_are_not_klog_are_rejected() {
        for line in [
            "X0102 03:04:05.1 1 a.go:1] x",
            "I1302 03:04:05.1 1 a.go:1] x",
            "I0102 03:04:05.1 abc a.go:1] x",
            "I0102 03:04:05.1 1 a.go:1 x",
            "I0102",
        ] {
            assert!(run(line).is_err(), "{line}");
        }
    }
}
