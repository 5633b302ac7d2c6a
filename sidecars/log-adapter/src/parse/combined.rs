//! nginx and Apache: access lines in the combined (or common) log format, and nginx's error log.
//!
//! Access: `$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent
//! "$http_referer" "$http_user_agent"`, with any further quoted values (nginx setups often add
//! `"$http_x_forwarded_for"`) kept as `extra`. The message is the request line; the level comes
//! from the status. Error: `2024/01/02 03:04:05 [error] 1234#5678: *99 message, client: ...`.

use super::{quoted, split_once, Context, ParseError};
use crate::{
    record::{Fields, Header, Level, Text},
    time::{digits, parse_clf, parse_slashed},
};

const ACCESS: &str = "combined";
const ERROR: &str = "nginx_error";

fn err(reason: &'static str) -> ParseError {
    ParseError::new(ACCESS, reason)
}

/// `addr ident user [`: three tokens, then a bracket.
pub fn looks_like_access(line: &[u8]) -> bool {
    let mut rest = line;
    for _ in 0..3 {
        let Some((token, after)) = split_once(rest, b' ') else {
            return false;
        };
        if token.is_empty() {
            return false;
        }
        rest = after;
    }
    // `[10/Oct/2000:`: logback's `2024-01-02 03:04:05.678 ERROR [main]` also has three tokens
    // before a bracket.
    rest.first() == Some(&b'[')
        && rest
            .get(1..3)
            .is_some_and(|day| day.iter().all(u8::is_ascii_digit))
        && rest.get(3) == Some(&b'/')
}

fn token(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let (token, rest) = split_once(input, b' ').unwrap_or((input, b""));
    (!token.is_empty()).then_some((token, rest))
}

pub fn parse_access<'a>(line: &'a [u8], fields: &mut Fields) -> Result<Header<'a>, ParseError> {
    let (addr, rest) = token(line).ok_or_else(|| err("missing remote address"))?;
    let (ident, rest) = token(rest).ok_or_else(|| err("missing ident"))?;
    let (user, rest) = token(rest).ok_or_else(|| err("missing user"))?;
    let rest = rest.strip_prefix(b"[").ok_or_else(|| err("missing [time]"))?;
    let (time, rest) = split_once(rest, b']').ok_or_else(|| err("unterminated [time]"))?;
    let timestamp = parse_clf(time).ok_or_else(|| err("invalid time"))?;
    let rest = rest.strip_prefix(b" ").ok_or_else(|| err("missing request"))?;
    let (request, rest) = quoted(rest).ok_or_else(|| err("missing quoted request"))?;
    let rest = rest.strip_prefix(b" ").ok_or_else(|| err("missing status"))?;
    let (status, rest) = token(rest).ok_or_else(|| err("missing status"))?;
    let status = (status.len() == 3)
        .then(|| digits(status, 3))
        .flatten()
        .ok_or_else(|| err("invalid status"))?;
    let (bytes, mut rest) = token(rest).ok_or_else(|| err("missing bytes"))?;
    let bytes = match bytes {
        b"-" => None,
        digits if digits.iter().all(u8::is_ascii_digit) => Some(
            std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse::<u64>().ok()),
        ),
        _ => return Err(err("invalid byte count")),
    };

    fields.str(b"remote_addr", addr);
    if ident != b"-" {
        fields.str(b"ident", ident);
    }
    if user != b"-" {
        fields.str(b"remote_user", user);
    }
    let mut parts = request.splitn(3, |&b| b == b' ');
    if let (Some(method), Some(path), Some(protocol)) = (parts.next(), parts.next(), parts.next()) {
        fields.quoted(b"method", method);
        fields.quoted(b"path", path);
        fields.quoted(b"protocol", protocol);
    }
    fields.int(b"status", u64::from(status));
    if let Some(Some(bytes)) = bytes {
        fields.int(b"body_bytes", bytes);
    }
    for (index, name) in [&b"referer"[..], b"user_agent"]
        .into_iter()
        .chain(std::iter::repeat(&b"extra"[..]))
        .enumerate()
    {
        rest = rest.trim_ascii_start();
        if rest.is_empty() {
            break;
        }
        if index >= 8 {
            return Err(err("too many trailing values"));
        }
        let (value, after) = quoted(rest).ok_or_else(|| err("expected a quoted value"))?;
        if value != b"-" {
            if name == b"extra" {
                let mut key = *b"extra_0";
                key[6] = b'0' + u8::try_from(index - 2).unwrap_or(0);
                fields.quoted(&key, value);
            } else {
                fields.quoted(name, value);
            }
        }
        rest = after;
    }
    #[allow(clippy::cast_possible_truncation)]
    let level = Level::from_http_status(status as u16);
    Ok(Header {
        timestamp: Some(timestamp),
        level: Some(level),
        message: Text::Quoted(request),
    })
}

/// Keys nginx appends to an error message as `, key: value`.
const ERROR_TAIL_KEYS: [&[u8]; 6] = [
    b", client: ",
    b", server: ",
    b", request: ",
    b", upstream: ",
    b", host: ",
    b", referrer: ",
];

pub fn parse_error_log<'a>(
    line: &'a [u8],
    ctx: &Context,
    fields: &mut Fields,
) -> Result<Header<'a>, ParseError> {
    let bad = |reason| ParseError::new(ERROR, reason);
    let stamp = line.get(..19).ok_or_else(|| bad("too short"))?;
    let timestamp = parse_slashed(stamp, ctx.offset).ok_or_else(|| bad("invalid time"))?;
    let rest = line[19..]
        .strip_prefix(b" [")
        .ok_or_else(|| bad("missing [level]"))?;
    let (level, rest) = split_once(rest, b']').ok_or_else(|| bad("unterminated [level]"))?;
    let level = Level::from_name(level).ok_or_else(|| bad("unknown level"))?;
    let rest = rest.strip_prefix(b" ").unwrap_or(rest);
    // `pid#tid: ` then an optional `*connection `.
    let mut message = rest;
    if let Some((ids, after)) = split_once(rest, b':') {
        if let Some((pid, tid)) = split_once(ids, b'#') {
            if !pid.is_empty() && pid.iter().chain(tid).all(u8::is_ascii_digit) {
                fields.raw_key(b"pid", pid);
                fields.raw_key(b"tid", tid);
                message = after.strip_prefix(b" ").unwrap_or(after);
                if let Some(conn) = message.strip_prefix(b"*") {
                    let len = conn.iter().take_while(|b| b.is_ascii_digit()).count();
                    if len > 0 && conn.get(len) == Some(&b' ') {
                        fields.raw_key(b"connection", &conn[..len]);
                        message = &conn[len + 1..];
                    }
                }
            }
        }
    }
    // The tail starts at the first known key; each key's value runs to the next known key.
    let tail_at = ERROR_TAIL_KEYS.iter().filter_map(|key| find(message, key)).min();
    if let Some(at) = tail_at {
        let mut tail = &message[at..];
        message = &message[..at];
        while !tail.is_empty() {
            let Some(key) = ERROR_TAIL_KEYS.iter().find(|k| tail.starts_with(k)) else {
                break;
            };
            let value_start = &tail[key.len()..];
            let end = ERROR_TAIL_KEYS
                .iter()
                .filter_map(|k| find(value_start, k))
                .min()
                .unwrap_or(value_start.len());
            let value = &value_start[..end];
            let name = &key[2..key.len() - 2];
            match quoted(value) {
                Some((inner, b"")) => fields.quoted(name, inner),
                _ => fields.str(name, value),
            }
            tail = &value_start[end..];
        }
    }
    Ok(Header {
        timestamp: Some(timestamp),
        level: Some(level),
        message: Text::Raw(message),
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::parse::test_support::{ctx, render};

    fn access(line: &str) -> Result<serde_json::Value, ParseError> {
        let mut fields = Fields::default();
        parse_access(line.as_bytes(), &mut fields).map(|h| render(&h, &fields))
    }

    fn error_log(line: &str) -> Result<serde_json::Value, ParseError> {
        let mut fields = Fields::default();
        parse_error_log(line.as_bytes(), &ctx(), &mut fields).map(|h| render(&h, &fields))
    }

    #[test]
    fn access_lines_parse_in_combined_and_common_format() {
        let cases = [
            (
                r#"203.0.113.9 - alice [10/Oct/2000:13:55:36 -0700] "GET /a?b=1 HTTP/1.1" 200 2326 "http://x/" "curl/8.0" "10.0.0.1""#,
                json!({"timestamp": "2000-10-10T20:55:36Z", "level": "info",
                       "message": "GET /a?b=1 HTTP/1.1",
                       "fields": {"remote_addr": "203.0.113.9", "remote_user": "alice", "method": "GET",
                                  "path": "/a?b=1", "protocol": "HTTP/1.1", "status": 200,
                                  "body_bytes": 2326, "referer": "http://x/", "user_agent": "curl/8.0",
                                  "extra_0": "10.0.0.1"}}),
            ),
            (
                r#"::1 - - [01/Jan/2024:00:00:00 +0000] "POST /q HTTP/2.0" 503 - "-" "Mozilla/5.0 (X11; \"quoted\")""#,
                json!({"timestamp": "2024-01-01T00:00:00Z", "level": "error",
                       "message": "POST /q HTTP/2.0",
                       "fields": {"remote_addr": "::1", "method": "POST", "path": "/q",
                                  "protocol": "HTTP/2.0", "status": 503,
                                  "user_agent": "Mozilla/5.0 (X11; \"quoted\")"}}),
            ),
            (
                r#"10.0.0.1 - - [01/Jan/2024:00:00:00 +0000] "\x16\x03\x01" 400 157"#,
                json!({"timestamp": "2024-01-01T00:00:00Z", "level": "warn",
                       "message": "\\x16\\x03\\x01",
                       "fields": {"remote_addr": "10.0.0.1", "status": 400, "body_bytes": 157}}),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(access(line).unwrap(), want, "{line}");
        }
    }

    #[test]
    fn broken_access_lines_are_rejected() {
        for line in [
            "",
            "1.2.3.4 - - 10/Oct/2000",
            r#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 2000 1"#,
            r#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1 200 1"#,
            r#"1.2.3.4 - - [yesterday] "GET / HTTP/1.1" 200 1"#,
            r#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 1 unquoted"#,
        ] {
            assert!(access(line).is_err(), "{line}");
        }
    }

    #[test]
    fn nginx_error_lines_parse_with_their_tail() {
        let cases = [
            (
                r#"2024/01/02 03:04:05 [error] 1234#5678: *99 open() "/x" failed (2: No such file), client: 10.0.0.1, server: web, request: "GET /x HTTP/1.1", host: "example.com""#,
                json!({"timestamp": "2024-01-02T03:04:05Z", "level": "error",
                       "message": "open() \"/x\" failed (2: No such file)",
                       "fields": {"pid": 1234, "tid": 5678, "connection": 99, "client": "10.0.0.1",
                                  "server": "web", "request": "GET /x HTTP/1.1", "host": "example.com"}}),
            ),
            (
                "2024/01/02 03:04:05 [notice] 1#1: signal process started",
                json!({"timestamp": "2024-01-02T03:04:05Z", "level": "info",
                       "message": "signal process started", "fields": {"pid": 1, "tid": 1}}),
            ),
            (
                "2024/01/02 03:04:05 [emerg] bind() failed",
                json!({"timestamp": "2024-01-02T03:04:05Z", "level": "fatal",
                       "message": "bind() failed", "fields": {}}),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(error_log(line).unwrap(), want, "{line}");
        }
        assert!(error_log("2024/01/02 03:04:05 [loud] x").is_err());
        assert!(error_log("2024/01/02").is_err());
    }
}
