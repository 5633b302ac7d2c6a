//! Syslog lines as files hold them: RFC 5424 (`<PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD] MSG`)
//! and RFC 3164 (`[<PRI>]Mmm dd hh:mm:ss HOST TAG[PID]: MSG`, the priority absent in files that
//! rsyslog writes). Structured data params become fields named `sd_id.param`.

use super::{quoted, split_once, Context, ParseError};
use crate::{
    record::{Fields, Header, Level, Text},
    time::{digits, infer_year, month_abbrev, parse_clock, parse_iso8601_exact},
};

const RFC5424: &str = "syslog_rfc5424";
const RFC3164: &str = "syslog_rfc3164";

const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

/// `<PRI>`: the value and the rest.
fn priority(line: &[u8]) -> Option<(u8, &[u8])> {
    let rest = line.strip_prefix(b"<")?;
    let (pri, rest) = split_once(rest, b'>')?;
    if pri.is_empty() || pri.len() > 3 || !pri.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value: u16 = pri.iter().fold(0, |acc, &b| acc * 10 + u16::from(b - b'0'));
    u8::try_from(value).ok().filter(|&v| v < 192).map(|v| (v, rest))
}

pub fn looks_like_5424(line: &[u8]) -> bool {
    priority(line).is_some_and(|(_, rest)| rest.starts_with(b"1 "))
}

fn store_priority(pri: u8, fields: &mut Fields) -> Level {
    let facility = FACILITIES.get(usize::from(pri / 8)).copied().unwrap_or("unknown");
    fields.str(b"facility", facility.as_bytes());
    Level::from_syslog_severity(pri % 8)
}

fn nil_or(token: &[u8]) -> Option<&[u8]> {
    (token != b"-").then_some(token)
}

pub fn parse_5424<'a>(line: &'a [u8], ctx: &Context, fields: &mut Fields) -> Result<Header<'a>, ParseError> {
    let bad = |reason| ParseError::new(RFC5424, reason);
    let (pri, rest) = priority(line).ok_or_else(|| bad("missing <priority>"))?;
    let rest = rest.strip_prefix(b"1 ").ok_or_else(|| bad("missing version 1"))?;
    let mut tokens = [&b""[..]; 5];
    let mut rest = rest;
    for slot in &mut tokens {
        let (token, after) = split_once(rest, b' ').ok_or_else(|| bad("missing header field"))?;
        if token.is_empty() {
            return Err(bad("empty header field"));
        }
        *slot = token;
        rest = after;
    }
    let [stamp, host, app, procid, msgid] = tokens;
    let timestamp = match stamp {
        b"-" => None,
        stamp => Some(parse_iso8601_exact(stamp, ctx.offset).ok_or_else(|| bad("invalid timestamp"))?),
    };
    let level = store_priority(pri, fields);
    for (name, value) in [
        (&b"hostname"[..], host),
        (b"app_name", app),
        (b"procid", procid),
        (b"msgid", msgid),
    ] {
        if let Some(value) = nil_or(value) {
            fields.str(name, value);
        }
    }
    // Structured data: `-` or `[id k="v" ...][id2 ...]`.
    if let Some(after) = rest.strip_prefix(b"-") {
        rest = after;
    } else {
        while let Some(element) = rest.strip_prefix(b"[") {
            let id_len = element.iter().take_while(|&&b| b != b' ' && b != b']').count();
            let id = &element[..id_len];
            let mut params = &element[id_len..];
            loop {
                params = params.trim_ascii_start();
                if let Some(after) = params.strip_prefix(b"]") {
                    params = after;
                    break;
                }
                let (name, after) = split_once(params, b'=').ok_or_else(|| bad("invalid structured data"))?;
                let (value, after) = quoted(after).ok_or_else(|| bad("unquoted structured data value"))?;
                if id.len() + name.len() < 128 {
                    let mut key = [0u8; 128];
                    key[..id.len()].copy_from_slice(id);
                    key[id.len()] = b'.';
                    key[id.len() + 1..=id.len() + name.len()].copy_from_slice(name);
                    fields.quoted(&key[..=id.len() + name.len()], value);
                }
                params = after;
            }
            rest = params;
        }
    }
    let message = match rest.first() {
        None => b"".as_slice(),
        Some(b' ') => &rest[1..],
        Some(_) => return Err(bad("missing space before the message")),
    };
    let message = message.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(message);
    Ok(Header {
        timestamp,
        level: Some(level),
        message: Text::Raw(message),
    })
}

pub fn parse_3164<'a>(line: &'a [u8], ctx: &Context, fields: &mut Fields) -> Result<Header<'a>, ParseError> {
    let bad = |reason| ParseError::new(RFC3164, reason);
    let (level, rest) = match priority(line) {
        Some((pri, rest)) => (Some(store_priority(pri, fields)), rest),
        None if line.first() == Some(&b'<') => return Err(bad("invalid <priority>")),
        None => (None, line),
    };
    let month = month_abbrev(rest).ok_or_else(|| bad("invalid month"))?;
    if rest.get(3) != Some(&b' ') {
        return Err(bad("invalid date"));
    }
    // The day is space-padded: `Jan  2`.
    let day_field = rest.get(4..6).ok_or_else(|| bad("invalid day"))?;
    let day = match day_field {
        [b' ', d] if d.is_ascii_digit() => u32::from(d - b'0'),
        _ => digits(day_field, 2).ok_or_else(|| bad("invalid day"))?,
    };
    if rest.get(6) != Some(&b' ') {
        return Err(bad("invalid date"));
    }
    let (hms, nanos, used) = parse_clock(&rest[7..]).ok_or_else(|| bad("invalid time"))?;
    let timestamp =
        infer_year(ctx.now, month, day, hms, nanos, ctx.offset).ok_or_else(|| bad("invalid date"))?;
    let rest = rest[7 + used..]
        .strip_prefix(b" ")
        .ok_or_else(|| bad("missing host"))?;
    let (host, rest) = split_once(rest, b' ').unwrap_or((rest, b""));
    fields.str(b"hostname", host);
    // `tag[pid]: message` or `tag: message`; a message without a tag is kept whole.
    let tag_len = rest
        .iter()
        .take_while(|&&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
        .count();
    let mut message = rest;
    if tag_len > 0 && tag_len <= 48 {
        let tag = &rest[..tag_len];
        let after = &rest[tag_len..];
        let (pid, after) = match after.strip_prefix(b"[").and_then(|a| split_once(a, b']')) {
            Some((pid, after)) if pid.iter().all(u8::is_ascii_digit) => (Some(pid), after),
            _ => (None, after),
        };
        if let Some(after) = after.strip_prefix(b":") {
            fields.str(b"app_name", tag);
            if let Some(pid) = pid {
                fields.str(b"procid", pid);
            }
            message = after.strip_prefix(b" ").unwrap_or(after);
        }
    }
    Ok(Header {
        timestamp: Some(timestamp),
        level,
        message: Text::Raw(message),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::parse::test_support::{ctx, render};

    fn run(
        parse: for<'a> fn(&'a [u8], &Context, &mut Fields) -> Result<Header<'a>, ParseError>,
        line: &str,
    ) -> Result<serde_json::Value, ParseError> {
        let mut fields = Fields::default();
        parse(line.as_bytes(), &ctx(), &mut fields).map(|h| render(&h, &fields))
    }

    #[test]
    fn rfc5424_lines_parse_with_structured_data() {
        let cases = [
            (
                r#"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" eventSource="Application"][x@1 a="q\"uote\]"] An application event"#,
                json!({"timestamp": "2003-10-11T22:14:15.003Z", "level": "info",
                       "message": "An application event",
                       "fields": {"facility": "local4", "hostname": "mymachine.example.com",
                                  "app_name": "evntslog", "msgid": "ID47",
                                  "exampleSDID@32473.iut": "3",
                                  "exampleSDID@32473.eventSource": "Application",
                                  "x@1.a": "q\"uote]"}}),
            ),
            (
                "<34>1 - - su 42 - - \u{feff}'su root' failed",
                json!({"timestamp": null, "level": "fatal", "message": "'su root' failed",
                       "fields": {"facility": "auth", "app_name": "su", "procid": "42"}}),
            ),
            (
                "<11>1 2024-01-02T03:04:05+01:00 h a p m -",
                json!({"timestamp": "2024-01-02T02:04:05Z", "level": "error", "message": "",
                       "fields": {"facility": "user", "hostname": "h", "app_name": "a",
                                  "procid": "p", "msgid": "m"}}),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(run(parse_5424, line).unwrap(), want, "{line}");
        }
        for line in [
            "<999>1 - - - - - - x",
            "<34>2 - - - - - - x",
            "<34>1 yesterday h a p m - x",
            "<34>1 - h a p m [unclosed x",
            "<34>1 - h a p",
        ] {
            assert!(run(parse_5424, line).is_err(), "{line}");
        }
    }

    #[test]
    fn rfc3164_lines_parse_with_and_without_priority() {
        let cases = [
            (
                "<34>Oct 11 22:14:15 mymachine su[123]: 'su root' failed for lonvick on /dev/pts/8",
                json!({"timestamp": "2023-10-11T22:14:15Z", "level": "fatal",
                       "message": "'su root' failed for lonvick on /dev/pts/8",
                       "fields": {"facility": "auth", "hostname": "mymachine", "app_name": "su",
                                  "procid": "123"}}),
            ),
            (
                "Jan  2 03:04:05 host kernel: [ 0.000000] Linux version 6.1",
                json!({"timestamp": "2024-01-02T03:04:05Z", "level": null,
                       "message": "[ 0.000000] Linux version 6.1",
                       "fields": {"hostname": "host", "app_name": "kernel"}}),
            ),
            (
                "May 31 23:59:59 host no tag here",
                json!({"timestamp": "2024-05-31T23:59:59Z", "level": null,
                       "message": "no tag here", "fields": {"hostname": "host"}}),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(run(parse_3164, line).unwrap(), want, "{line}");
        }
        for line in [
            "<34 Oct",
            "Foo 11 22:14:15 h x",
            "Oct 32 22:14:15 h x",
            "Oct 11 22:14",
        ] {
            assert!(run(parse_3164, line).is_err(), "{line}");
        }
    }
}
