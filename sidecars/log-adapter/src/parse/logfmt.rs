//! logfmt: `key=value key2="quoted value" flag`, as Go's logfmt, logrus and Heroku write it.

use super::{quoted, Context, ParseError};
use crate::{
    record::{Fields, Header, Level, Text},
    time::parse_iso8601_exact,
};

const FORMAT: &str = "logfmt";

fn err(reason: &'static str) -> ParseError {
    ParseError::new(FORMAT, reason)
}

/// Starts with `key=`: enough to try the parser.
pub fn looks_like(line: &[u8]) -> bool {
    let key_len = line.iter().take_while(|&&b| is_key_byte(b)).count();
    key_len > 0 && line.get(key_len) == Some(&b'=')
}

fn is_key_byte(b: u8) -> bool {
    b > b' ' && b != b'=' && b != b'"' && b != 0x7f
}

/// A key and its value, if it has one.
pub(crate) type Pair<'a> = (&'a [u8], Option<Text<'a>>);

/// One `key[=value]` pair; the value is `Text::Quoted` or `Text::Raw`. `None` at the end.
pub(crate) fn next_pair<'a>(input: &mut &'a [u8]) -> Result<Option<Pair<'a>>, ParseError> {
    let rest = input.trim_ascii_start();
    if rest.is_empty() {
        *input = rest;
        return Ok(None);
    }
    let key_len = rest.iter().take_while(|&&b| is_key_byte(b)).count();
    if key_len == 0 {
        return Err(err("expected a key"));
    }
    let key = &rest[..key_len];
    let after = &rest[key_len..];
    match after.first() {
        Some(b'=') => {
            let value = &after[1..];
            if value.first() == Some(&b'"') {
                let (contents, remaining) = quoted(value).ok_or_else(|| err("unterminated quote"))?;
                if remaining.first().is_some_and(|b| !b.is_ascii_whitespace()) {
                    return Err(err("text after a quoted value"));
                }
                *input = remaining;
                Ok(Some((key, Some(Text::Quoted(contents)))))
            } else {
                let len = value.iter().take_while(|b| !b.is_ascii_whitespace()).count();
                if value[..len].contains(&b'"') {
                    return Err(err("quote inside an unquoted value"));
                }
                *input = &value[len..];
                Ok(Some((key, Some(Text::Raw(&value[..len])))))
            }
        }
        Some(b) if b.is_ascii_whitespace() => {
            *input = after;
            Ok(Some((key, None)))
        }
        None => {
            *input = after;
            Ok(Some((key, None)))
        }
        Some(_) => Err(err("unexpected character after a key")),
    }
}

/// Stores one pair: well-known keys go to the header, the rest to fields.
pub(crate) fn store<'a>(
    key: &[u8],
    value: Option<Text<'a>>,
    ctx: &Context,
    header: &mut Header<'a>,
    fields: &mut Fields,
) {
    let Some(value) = value else {
        fields.raw_key(key, b"true");
        return;
    };
    let bytes = match value {
        Text::Raw(b) | Text::Quoted(b) | Text::Escaped(b) => b,
    };
    match key {
        b"time" | b"ts" | b"timestamp" | b"t" if header.timestamp.is_none() => {
            if let Some(ts) = parse_iso8601_exact(bytes, ctx.offset) {
                header.timestamp = Some(ts);
                return;
            }
        }
        b"level" | b"lvl" | b"severity" | b"loglevel" if header.level.is_none() => {
            if let Some(level) = Level::from_name(bytes) {
                header.level = Some(level);
                return;
            }
        }
        b"msg" | b"message" if header.message == Text::Raw(b"") => {
            header.message = value;
            return;
        }
        _ => {}
    }
    match value {
        Text::Quoted(b) => fields.quoted(key, b),
        Text::Raw(b) | Text::Escaped(b) => fields.str(key, b),
    }
}

pub fn parse<'a>(line: &'a [u8], ctx: &Context, fields: &mut Fields) -> Result<Header<'a>, ParseError> {
    let mut header = Header::default();
    let mut rest = line;
    let mut pairs = 0;
    while let Some((key, value)) = next_pair(&mut rest)? {
        pairs += usize::from(value.is_some());
        store(key, value, ctx, &mut header, fields);
    }
    if pairs == 0 {
        return Err(err("no key=value pair"));
    }
    Ok(header)
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
    fn logfmt_lines_parse_into_header_and_fields() {
        let cases = [
            (
                r#"time=2024-01-02T03:04:05Z level=error msg="db \"down\"" retries=3 dry"#,
                json!({"timestamp": "2024-01-02T03:04:05Z", "level": "error",
                       "message": "db \"down\"", "fields": {"retries": "3", "dry": true}}),
            ),
            (
                "ts=2024-01-02T03:04:05.123+01:00 lvl=dbug component=api path=/x",
                json!({"timestamp": "2024-01-02T02:04:05.123Z", "level": null, "message": "",
                       "fields": {"lvl": "dbug", "component": "api", "path": "/x"}}),
            ),
            (
                r#"msg="line\nbreak" empty="" eq=a=b"#,
                json!({"timestamp": null, "level": null, "message": "line\nbreak",
                       "fields": {"empty": "", "eq": "a=b"}}),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(run(line).unwrap(), want, "{line}");
        }
    }

    #[test]
    fn lines_that_are_not_logfmt_are_rejected() {
        for line in ["just words", r#"a="open"#, r#"a="x"y"#, "=value", r#"a=b"c"#, ""] {
            assert!(run(line).is_err(), "{line}");
        }
    }
}
