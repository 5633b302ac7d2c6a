//! What the HTTP sink sends and how it reads the answer, without IO: the request body of each
//! format, and the verdict on a response (delivered, retry, refused, or for Elasticsearch's bulk
//! API, which records to send again).

use crate::{record::write_json_string, time::Timestamp};

/// The request format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// The records as they are, one JSON object per line (Vector's and Fluent Bit's HTTP sources,
    /// any endpoint that takes NDJSON).
    #[default]
    JsonLines,
    /// Grafana Loki's push API (`/loki/api/v1/push`): one stream with fixed labels, each record a
    /// line with its own timestamp.
    Loki,
    /// Elasticsearch's bulk API (`/<index>/_bulk`): a `create` action before each record.
    Elasticsearch,
}

/// The format was not one of the known names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown sink format {0:?}: expected json-lines, loki or elasticsearch")]
pub struct FormatError(pub String);

impl std::str::FromStr for Format {
    type Err = FormatError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "json" | "json-lines" | "jsonl" | "ndjson" => Ok(Format::JsonLines),
            "loki" => Ok(Format::Loki),
            "elasticsearch" | "es" | "opensearch" => Ok(Format::Elasticsearch),
            _ => Err(FormatError(text.to_owned())),
        }
    }
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::JsonLines | Format::Elasticsearch => "application/x-ndjson",
            Format::Loki => "application/json",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::JsonLines => "json-lines",
            Format::Loki => "loki",
            Format::Elasticsearch => "elasticsearch",
        }
    }
}

/// Loki's stream labels, encoded once as the `stream` object.
pub fn loki_stream(labels: &[(String, String)]) -> Vec<u8> {
    let mut out = vec![b'{'];
    for (index, (name, value)) in labels.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_json_string(&mut out, name.as_bytes());
        out.push(b':');
        write_json_string(&mut out, value.as_bytes());
    }
    out.push(b'}');
    out
}

/// Encodes `records` (each record's JSON without its newline, and its timestamp) into `out`.
/// `stream` is [`loki_stream`]'s output (used by Loki only).
pub fn encode<'r>(
    format: Format,
    records: impl Iterator<Item = (&'r [u8], Timestamp)>,
    stream: &[u8],
    out: &mut Vec<u8>,
) {
    out.clear();
    match format {
        Format::JsonLines => {
            for (record, _) in records {
                out.extend_from_slice(record);
                out.push(b'\n');
            }
        }
        Format::Elasticsearch => {
            for (record, _) in records {
                out.extend_from_slice(b"{\"create\":{}}\n");
                out.extend_from_slice(record);
                out.push(b'\n');
            }
        }
        Format::Loki => {
            out.extend_from_slice(b"{\"streams\":[{\"stream\":");
            out.extend_from_slice(stream);
            out.extend_from_slice(b",\"values\":[");
            for (index, (record, timestamp)) in records.enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                // Nanoseconds since the epoch, as a string; stamps before 1970 are sent as 0.
                let nanos =
                    u128::try_from(timestamp.secs).unwrap_or(0) * 1_000_000_000 + u128::from(timestamp.nanos);
                out.extend_from_slice(b"[\"");
                out.extend_from_slice(nanos.to_string().as_bytes());
                out.extend_from_slice(b"\",");
                write_json_string(out, record);
                out.push(b']');
            }
            out.extend_from_slice(b"]}]}");
        }
    }
}

/// What a response means for the records sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every record is stored.
    Delivered,
    /// Nothing is known to be stored; send everything again later (429, 408, 5xx).
    Retry { status: u16 },
    /// The sink refuses these records for good (another 4xx): sending them again cannot help.
    Refused { status: u16 },
    /// Elasticsearch stored some: `retry` are the positions (in the request) to send again (429
    /// or 5xx per item); `refused` items were refused for good (a mapping error, say).
    Partial { retry: Vec<usize>, refused: usize },
}

/// The verdict on a response with `status` and (up to a limit) `body`; `None` when the body was
/// too large to read.
pub fn judge(format: Format, status: u16, body: Option<&[u8]>) -> Verdict {
    match status {
        200..=299 => match (format, body) {
            (Format::Elasticsearch, Some(body)) => bulk_items(body),
            _ => Verdict::Delivered,
        },
        408 | 429 | 500..=599 => Verdict::Retry { status },
        _ => Verdict::Refused { status },
    }
}

/// Reads a bulk response's per-item statuses. A body that does not parse is taken as delivered:
/// the request as a whole succeeded, and sending it again would store the records twice.
fn bulk_items(body: &[u8]) -> Verdict {
    #[derive(serde::Deserialize)]
    struct Bulk {
        #[serde(default)]
        errors: bool,
        #[serde(default)]
        items: Vec<std::collections::BTreeMap<String, Item>>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        status: u16,
    }
    let Ok(bulk) = serde_json::from_slice::<Bulk>(body) else {
        return Verdict::Delivered;
    };
    if !bulk.errors {
        return Verdict::Delivered;
    }
    let mut retry = Vec::new();
    let mut refused = 0;
    for (position, item) in bulk.items.iter().enumerate() {
        let Some(status) = item.values().next().map(|item| item.status) else {
            continue;
        };
        match status {
            200..=299 => {}
            429 | 500..=599 => retry.push(position),
            _ => refused += 1,
        }
    }
    if retry.is_empty() && refused == 0 {
        Verdict::Delivered
    } else {
        Verdict::Partial { retry, refused }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Vec<(&'static [u8], Timestamp)> {
        vec![
            (br#"{"message":"a"}"#.as_slice(), Timestamp { secs: 1, nanos: 5 }),
            (
                br#"{"message":"b \"q\""}"#.as_slice(),
                Timestamp { secs: 2, nanos: 0 },
            ),
        ]
    }

    fn encoded(format: Format) -> String {
        let mut out = Vec::new();
        let stream = loki_stream(&[("job".to_owned(), "outrigger-log-adapter".to_owned())]);
        encode(format, records().into_iter(), &stream, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn each_format_encodes_every_record() {
        assert_eq!(
            encoded(Format::JsonLines),
            "{\"message\":\"a\"}\n{\"message\":\"b \\\"q\\\"\"}\n"
        );
        assert_eq!(
            encoded(Format::Elasticsearch),
            "{\"create\":{}}\n{\"message\":\"a\"}\n{\"create\":{}}\n{\"message\":\"b \\\"q\\\"\"}\n"
        );
        let loki: serde_json::Value = serde_json::from_str(&encoded(Format::Loki)).unwrap();
        assert_eq!(
            loki,
            serde_json::json!({"streams": [{
                "stream": {"job": "outrigger-log-adapter"},
                "values": [["1000000005", "{\"message\":\"a\"}"], ["2000000000", "{\"message\":\"b \\\"q\\\"\"}"]],
            }]})
        );
    }

    #[test]
    fn overload_and_server_errors_are_retried_and_other_refusals_are_final() {
        for (status, verdict) in [
            (204, Verdict::Delivered),
            (429, Verdict::Retry { status: 429 }),
            (503, Verdict::Retry { status: 503 }),
            (400, Verdict::Refused { status: 400 }),
            (413, Verdict::Refused { status: 413 }),
        ] {
            assert_eq!(judge(Format::Loki, status, Some(b"")), verdict, "{status}");
        }
    }

    #[test]
    fn a_bulk_answer_sends_again_only_the_items_refused_for_now() {
        let body = br#"{"took":3,"errors":true,"items":[
            {"create":{"status":429,"error":{"type":"es_rejected_execution_exception"}}},
            {"create":{"status":201}},
            {"create":{"status":400,"error":{"type":"mapper_parsing_exception"}}},
            {"create":{"status":503}}]}"#;
        assert_eq!(
            judge(Format::Elasticsearch, 200, Some(body)),
            Verdict::Partial {
                retry: vec![0, 3],
                refused: 1
            }
        );
        assert_eq!(
            judge(
                Format::Elasticsearch,
                200,
                Some(br#"{"errors":false,"items":[]}"#)
            ),
            Verdict::Delivered
        );
        assert_eq!(judge(Format::Elasticsearch, 200, None), Verdict::Delivered);
    }
}
