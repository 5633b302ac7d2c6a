//! Lines of no known format: the whole line is the message, with a leading stamp and level word
//! taken out when present (`2024-01-02 03:04:05,123 ERROR [main] Foo - boom`, `[2024-...] WARN:`,
//! Go's `2024/01/02 03:04:05 boom`, Python's `ERROR:root:boom`).

use super::Context;
use crate::{
    record::{Header, Level, Text},
    time::{parse_iso8601, parse_slashed_prefix},
};

pub fn parse<'a>(line: &'a [u8], ctx: &Context) -> Header<'a> {
    let mut rest = line;
    let mut timestamp = None;
    let bracketed = rest.strip_prefix(b"[");
    let inner = bracketed.unwrap_or(rest);
    let stamp = parse_iso8601(inner, ctx.offset).or_else(|| parse_slashed_prefix(inner, ctx.offset));
    if let Some((ts, used)) = stamp {
        let after = &bracketed.unwrap_or(rest)[used..];
        let after = if bracketed.is_some() {
            after.strip_prefix(b"]")
        } else {
            Some(after)
        };
        if let Some(after) = after.filter(|a| a.is_empty() || a[0] == b' ') {
            timestamp = Some(ts);
            rest = after.trim_ascii_start();
        }
    }
    // A level word: `ERROR`, `[ERROR]`, `ERROR:`, `<ERROR>`.
    let word_len = rest
        .iter()
        .take_while(|&&b| b != b' ' && b != b':')
        .count()
        .min(rest.len());
    let word = &rest[..word_len];
    let inner = word
        .strip_prefix(b"[")
        .and_then(|w| w.strip_suffix(b"]"))
        .or_else(|| word.strip_prefix(b"<").and_then(|w| w.strip_suffix(b">")))
        .unwrap_or(word);
    let mut level = None;
    // Single letters are klog's and too easy to meet as words; and a capitalised word opening a
    // sentence ("Information is ...") is not a level: it must be upper case, bracketed or end in
    // a colon.
    let marked = inner.len() != word.len()
        || rest.get(word_len) == Some(&b':')
        || inner.iter().all(|b| !b.is_ascii_lowercase());
    if inner.len() > 1 && marked {
        if let Some(found) = Level::from_name(inner) {
            level = Some(found);
            rest = &rest[word_len..];
            rest = rest.strip_prefix(b":").unwrap_or(rest).trim_ascii_start();
        }
    }
    Header {
        timestamp,
        level,
        message: Text::Raw(if timestamp.is_none() && level.is_none() {
            line
        } else {
            rest
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        parse::test_support::{ctx, render},
        record::Fields,
    };

    #[test]
    fn plain_lines_give_up_a_leading_stamp_and_level() {
        let cases = [
            (
                "2024-01-02 03:04:05,123 ERROR [main] c.e.Foo - boom",
                json!({"timestamp": "2024-01-02T03:04:05.123Z", "level": "error",
                       "message": "[main] c.e.Foo - boom", "fields": {}}),
            ),
            (
                "[2024-01-02T03:04:05Z] [warn] low disk",
                json!({"timestamp": "2024-01-02T03:04:05Z", "level": "warn",
                       "message": "low disk", "fields": {}}),
            ),
            (
                "2024/01/02 03:04:05.000123 listening on :8080",
                json!({"timestamp": "2024-01-02T03:04:05.000123Z", "level": null,
                       "message": "listening on :8080", "fields": {}}),
            ),
            (
                "ERROR:root:division by zero",
                json!({"timestamp": null, "level": "error", "message": "root:division by zero",
                       "fields": {}}),
            ),
            (
                "Information is power",
                json!({"timestamp": null, "level": null, "message": "Information is power",
                       "fields": {}}),
            ),
            (
                "2024-01-02T03:04:05Zsuffix words",
                json!({"timestamp": null, "level": null, "message": "2024-01-02T03:04:05Zsuffix words",
                       "fields": {}}),
            ),
            (
                "",
                json!({"timestamp": null, "level": null, "message": "", "fields": {}}),
            ),
        ];
        for (line, want) in cases {
            let header = parse(line.as_bytes(), &ctx());
            assert_eq!(render(&header, &Fields::default()), want, "{line}");
        }
    }
}
