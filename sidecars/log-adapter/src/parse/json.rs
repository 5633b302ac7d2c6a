//! JSON lines: one object per line. A hand-written validating scanner walks the top-level
//! members and copies each value's bytes verbatim (no tree, no allocation); well-known members
//! become the timestamp, level and message.

use super::{Context, ParseError};
use crate::{
    record::{Fields, Header, Level, Text},
    time::{parse_iso8601_exact, Timestamp},
};

const FORMAT: &str = "json";
/// Deeper nesting is rejected rather than recursed into: a hostile line must not blow the stack.
const MAX_DEPTH: usize = 64;

const TIME_KEYS: [&[u8]; 5] = [b"timestamp", b"time", b"ts", b"@timestamp", b"datetime"];
const LEVEL_KEYS: [&[u8]; 5] = [b"level", b"severity", b"lvl", b"loglevel", b"log.level"];
const MESSAGE_KEYS: [&[u8]; 3] = [b"message", b"msg", b"log"];

fn err(reason: &'static str) -> ParseError {
    ParseError::new(FORMAT, reason)
}

pub fn parse<'a>(line: &'a [u8], ctx: &Context, fields: &mut Fields) -> Result<Header<'a>, ParseError> {
    let mut cur = Cursor { input: line, pos: 0 };
    cur.skip_ws();
    cur.expect(b'{').map_err(|_| err("not an object"))?;
    let mut header = Header::default();
    let mut message_found = false;
    cur.skip_ws();
    if cur.peek() == Some(b'}') {
        cur.pos += 1;
    } else {
        loop {
            cur.skip_ws();
            let key = cur.string()?;
            cur.skip_ws();
            cur.expect(b':')?;
            cur.skip_ws();
            let start = cur.pos;
            cur.value(0)?;
            let value = &line[start..cur.pos];
            let taken = take_header_member(key, value, ctx, &mut header, &mut message_found);
            if !taken {
                fields.raw(key, value);
            }
            cur.skip_ws();
            match cur.next() {
                Some(b',') => {}
                Some(b'}') => break,
                _ => return Err(err("expected , or } after a member")),
            }
        }
    }
    cur.skip_ws();
    if cur.pos != line.len() {
        return Err(err("text after the object"));
    }
    Ok(header)
}

/// Stores a well-known member in the header; false when the member stays a field (an unknown
/// key, a second message, a stamp that does not parse).
fn take_header_member<'a>(
    key: &[u8],
    value: &'a [u8],
    ctx: &Context,
    header: &mut Header<'a>,
    message_found: &mut bool,
) -> bool {
    let string = value
        .strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
        .filter(|v| !v.contains(&b'\\'));
    if header.timestamp.is_none() && TIME_KEYS.contains(&key) {
        header.timestamp = match string {
            Some(text) => parse_iso8601_exact(text, ctx.offset),
            None => std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
                .and_then(Timestamp::from_epoch_number),
        };
        return header.timestamp.is_some();
    }
    if header.level.is_none() && LEVEL_KEYS.contains(&key) {
        header.level = match string {
            Some(text) => Level::from_name(text),
            None => std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
                .and_then(Level::from_number),
        };
        return header.level.is_some();
    }
    if !*message_found && MESSAGE_KEYS.contains(&key) && value.first() == Some(&b'"') {
        *message_found = true;
        header.message = Text::Escaped(&value[1..value.len() - 1]);
        return true;
    }
    false
}

struct Cursor<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn expect(&mut self, want: u8) -> Result<(), ParseError> {
        match self.next() {
            Some(b) if b == want => Ok(()),
            _ => Err(err("unexpected character")),
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.pos += 1;
        }
    }

    /// A string; returns its escaped contents, checked to be valid JSON and UTF-8.
    fn string(&mut self) -> Result<&'a [u8], ParseError> {
        self.expect(b'"').map_err(|_| err("expected a string"))?;
        let start = self.pos;
        loop {
            match self.next() {
                None => return Err(err("unterminated string")),
                Some(b'"') => break,
                Some(b'\\') => self.escape()?,
                Some(0..=0x1f) => return Err(err("control character in a string")),
                Some(_) => {}
            }
        }
        let contents = &self.input[start..self.pos - 1];
        if !contents.is_ascii() && std::str::from_utf8(contents).is_err() {
            return Err(err("invalid UTF-8 in a string"));
        }
        Ok(contents)
    }

    fn escape(&mut self) -> Result<(), ParseError> {
        match self.next() {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(()),
            Some(b'u') => {
                let unit = self.hex4()?;
                match unit {
                    // A high surrogate must be followed by a low one, or readers reject the
                    // string; a lone low surrogate is as bad.
                    0xd800..=0xdbff => {
                        if self.next() != Some(b'\\') || self.next() != Some(b'u') {
                            return Err(err("lone surrogate"));
                        }
                        if !(0xdc00..=0xdfff).contains(&self.hex4()?) {
                            return Err(err("lone surrogate"));
                        }
                        Ok(())
                    }
                    0xdc00..=0xdfff => Err(err("lone surrogate")),
                    _ => Ok(()),
                }
            }
            _ => Err(err("invalid escape")),
        }
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let mut value = 0;
        for _ in 0..4 {
            let digit = self
                .next()
                .and_then(|b| char::from(b).to_digit(16))
                .ok_or_else(|| err("invalid \\u escape"))?;
            value = value * 16 + digit;
        }
        Ok(value)
    }

    fn value(&mut self, depth: usize) -> Result<(), ParseError> {
        if depth > MAX_DEPTH {
            return Err(err("nested too deeply"));
        }
        match self.peek() {
            Some(b'"') => self.string().map(|_| ()),
            Some(b'{') => {
                self.pos += 1;
                self.skip_ws();
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    self.skip_ws();
                    self.string()?;
                    self.skip_ws();
                    self.expect(b':')?;
                    self.skip_ws();
                    self.value(depth + 1)?;
                    self.skip_ws();
                    match self.next() {
                        Some(b',') => {}
                        Some(b'}') => return Ok(()),
                        _ => return Err(err("expected , or }")),
                    }
                }
            }
            Some(b'[') => {
                self.pos += 1;
                self.skip_ws();
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    self.skip_ws();
                    self.value(depth + 1)?;
                    self.skip_ws();
                    match self.next() {
                        Some(b',') => {}
                        Some(b']') => return Ok(()),
                        _ => return Err(err("expected , or ]")),
                    }
                }
            }
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(err("expected a value")),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), ParseError> {
        if self.input[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(err("invalid literal"))
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<(), ParseError> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(err("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(err("invalid number"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(err("invalid number"));
            }
        }
        Ok(())
    }
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
    fn json_lines_parse_into_header_and_fields() {
        let cases = [
            (
                r#"{"time":"2024-01-02T03:04:05Z","level":"WARN","msg":"disk \"full\"","disk":"/"}"#,
                json!({"timestamp": "2024-01-02T03:04:05Z", "level": "warn",
                       "message": "disk \"full\"", "fields": {"disk": "/"}}),
            ),
            (
                r#"{"level":30,"time":1700000000000,"msg":"pino","pid":7,"req":{"id":[1,2.5e3,null,true]}}"#,
                json!({"timestamp": "2023-11-14T22:13:20Z", "level": "info", "message": "pino",
                       "fields": {"pid": 7, "req": {"id": [1, 2500.0, null, true]}}}),
            ),
            (
                r#"  { "@timestamp" : "2024-01-02 03:04:05.5" , "message" : "é \u00e9 \ud83d\ude00" }  "#,
                json!({"timestamp": "2024-01-02T03:04:05.500Z", "level": null,
                       "message": "é é 😀", "fields": {}}),
            ),
            (
                r#"{"ts":"yesterday","level":"chatty","msg":1}"#,
                json!({"timestamp": null, "level": null, "message": "",
                       "fields": {"ts": "yesterday", "level": "chatty", "msg": 1}}),
            ),
            (
                "{}",
                json!({"timestamp": null, "level": null, "message": "", "fields": {}}),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(run(line).unwrap(), want, "{line}");
        }
    }

    #[test]
    fn invalid_json_is_rejected_with_a_reason() {
        let cases = [
            "",
            "[1,2]",
            r#"{"a":1"#,
            r#"{"a":1} trailing"#,
            r#"{"a":01}"#,
            r#"{"a":tru}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\ud800"}"#,
            "{\"a\":\"tab\there\"}",
            r#"{a:1}"#,
            r#"{"a":1,}"#,
        ];
        for line in cases {
            assert!(run(line).is_err(), "{line}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100), "]".repeat(100));
        assert_eq!(run(&deep), Err(err("nested too deeply")));
    }

    #[test]
    fn invalid_utf8_inside_a_string_is_rejected_not_copied() {
        let mut fields = Fields::default();
        assert!(parse(b"{\"a\":\"\xff\"}", &ctx(), &mut fields).is_err());
    }
}
