//! The watch stream of the Kubernetes API, sans IO: newline-delimited JSON events, decoded from
//! chunks as they arrive. [`EventDecoder`] buffers bytes until a whole line is present, so an event
//! split across chunks and several events in one chunk decode the same. A stream that ends in the
//! middle of an event is an error.

use bytes::{Buf, BytesMut};
use serde::{de::DeserializeOwned, Deserialize};

/// Longest event line accepted. A ConfigMap holds at most 1 MiB of data; JSON escaping can grow it
/// a few times.
pub const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// Why the stream could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("a watch event is longer than {limit} bytes")]
    TooLong { limit: usize },
    #[error("decoding a watch event: {0}")]
    Json(#[source] serde_json::Error),
    #[error("the watch stream ended in the middle of an event ({pending} bytes)")]
    Truncated { pending: usize },
}

/// The metadata fields the watch and sidecars need.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub resource_version: Option<String>,
    #[serde(default)]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
}

/// A `metav1.Status`, as carried by `ERROR` events and error responses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub code: Option<u16>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

impl Status {
    /// `410 Gone`: the resource version asked for is no longer in the server's history, so the
    /// client has to read the object again.
    pub fn is_gone(&self) -> bool {
        self.code == Some(410)
            || self.reason.as_deref() == Some("Expired")
            || self.reason.as_deref() == Some("Gone")
    }

    /// `401 Unauthorized` or `403 Forbidden`.
    pub fn is_denied(&self) -> bool {
        matches!(self.code, Some(401 | 403))
            || matches!(self.reason.as_deref(), Some("Unauthorized" | "Forbidden"))
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.code.map_or_else(|| "?".to_owned(), |code| code.to_string()),
            self.reason.as_deref().unwrap_or("-"),
            self.message.as_deref().unwrap_or("-"),
        )
    }
}

/// The object of a `BOOKMARK` event: only its resource version means anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Bookmark {
    #[serde(default)]
    pub metadata: ObjectMeta,
}

/// One event of a watch on objects of type `T`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", content = "object")]
pub enum WatchEvent<T> {
    #[serde(rename = "ADDED")]
    Added(T),
    #[serde(rename = "MODIFIED")]
    Modified(T),
    #[serde(rename = "DELETED")]
    Deleted(T),
    #[serde(rename = "BOOKMARK")]
    Bookmark(Bookmark),
    #[serde(rename = "ERROR")]
    Error(Status),
}

/// Splits a byte stream into watch events.
#[derive(Debug)]
pub struct EventDecoder {
    buffer: BytesMut,
    /// How far `buffer` has been searched for a newline already.
    scanned: usize,
    limit: usize,
}

impl Default for EventDecoder {
    fn default() -> Self {
        EventDecoder::with_limit(MAX_EVENT_BYTES)
    }
}

impl EventDecoder {
    /// A decoder refusing lines longer than `limit` bytes.
    pub fn with_limit(limit: usize) -> EventDecoder {
        EventDecoder {
            buffer: BytesMut::new(),
            scanned: 0,
            limit,
        }
    }

    /// Adds bytes received from the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The next complete event, `None` when more bytes are needed. Empty lines are skipped.
    pub fn next_event<T: DeserializeOwned>(&mut self) -> Result<Option<WatchEvent<T>>, DecodeError> {
        loop {
            let Some(offset) = self.buffer[self.scanned..].iter().position(|byte| *byte == b'\n') else {
                self.scanned = self.buffer.len();
                if self.buffer.len() > self.limit {
                    return Err(DecodeError::TooLong { limit: self.limit });
                }
                return Ok(None);
            };
            let end = self.scanned + offset;
            self.scanned = 0;
            if end > self.limit {
                return Err(DecodeError::TooLong { limit: self.limit });
            }
            let line = self.buffer.split_to(end);
            self.buffer.advance(1);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return serde_json::from_slice(&line).map(Some).map_err(DecodeError::Json);
        }
    }

    /// Checks that the stream ended between events.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.buffer.iter().all(u8::is_ascii_whitespace) {
            Ok(())
        } else {
            Err(DecodeError::Truncated {
                pending: self.buffer.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[derive(Debug, PartialEq, Eq, Deserialize)]
    struct Object {
        metadata: ObjectMeta,
        #[serde(default)]
        data: BTreeMap<String, String>,
    }

    fn added(name: &str, version: &str) -> String {
        format!(
            r#"{{"type":"ADDED","object":{{"kind":"ConfigMap","apiVersion":"v1","metadata":{{"name":"{name}","namespace":"shop","resourceVersion":"{version}"}},"data":{{"k":"v"}}}}}}"#
        ) + "\n"
    }

    fn drain(decoder: &mut EventDecoder) -> Vec<WatchEvent<Object>> {
        let mut events = Vec::new();
        while let Some(event) = decoder.next_event().unwrap() {
            events.push(event);
        }
        events
    }

    fn version(event: &WatchEvent<Object>) -> Option<&str> {
        match event {
            WatchEvent::Added(object) | WatchEvent::Modified(object) | WatchEvent::Deleted(object) => {
                object.metadata.resource_version.as_deref()
            }
            WatchEvent::Bookmark(bookmark) => bookmark.metadata.resource_version.as_deref(),
            WatchEvent::Error(_) => None,
        }
    }

    #[test]
    fn an_event_split_across_chunks_decodes_once_the_line_is_complete() {
        let line = added("cm", "7");
        let mut decoder = EventDecoder::default();
        let mut events = Vec::new();
        for chunk in line.as_bytes().chunks(5) {
            assert!(events.is_empty(), "an event before its line was complete");
            decoder.push(chunk);
            events.extend(drain(&mut decoder));
        }
        assert_eq!(events.len(), 1);
        assert_eq!(version(&events[0]), Some("7"));
        assert!(decoder.finish().is_ok());
    }

    #[test]
    fn a_partial_line_yields_nothing_until_its_newline_arrives() {
        let line = added("cm", "8");
        let (head, tail) = line.split_at(line.len() - 1);
        let mut decoder = EventDecoder::default();
        decoder.push(head.as_bytes());
        assert!(drain(&mut decoder).is_empty());
        assert!(matches!(decoder.finish(), Err(DecodeError::Truncated { .. })));
        decoder.push(tail.as_bytes());
        assert_eq!(drain(&mut decoder).len(), 1);
    }

    #[test]
    fn several_events_in_one_chunk_come_out_in_order() {
        let chunk = added("cm", "1")
            + "\n"
            + &added("cm", "2").replace("ADDED", "MODIFIED")
            + r#"{"type":"BOOKMARK","object":{"kind":"ConfigMap","apiVersion":"v1","metadata":{"resourceVersion":"3","creationTimestamp":null}}}"#
            + "\n"
            + &added("cm", "4").replace("ADDED", "DELETED")
            + &added("cm", "5")[..20];
        let mut decoder = EventDecoder::default();
        decoder.push(chunk.as_bytes());
        let events = drain(&mut decoder);
        let kinds: Vec<_> = events
            .iter()
            .map(|event| match event {
                WatchEvent::Added(_) => "added",
                WatchEvent::Modified(_) => "modified",
                WatchEvent::Deleted(_) => "deleted",
                WatchEvent::Bookmark(_) => "bookmark",
                WatchEvent::Error(_) => "error",
            })
            .collect();
        assert_eq!(kinds, ["added", "modified", "bookmark", "deleted"]);
        let versions: Vec<_> = events.iter().map(version).collect();
        assert_eq!(versions, [Some("1"), Some("2"), Some("3"), Some("4")]);
        assert!(decoder.finish().is_err(), "the fifth event is incomplete");
    }

    #[test]
    fn an_expired_resource_version_is_an_error_event_with_410_gone() {
        let mut decoder = EventDecoder::default();
        decoder.push(
            br#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 1 (250)","reason":"Expired","code":410}}
"#,
        );
        let Some(WatchEvent::<Object>::Error(status)) = decoder.next_event().unwrap() else {
            panic!("expected an ERROR event");
        };
        assert!(status.is_gone());
        assert_eq!(
            status.to_string(),
            "410 Expired: too old resource version: 1 (250)"
        );
        let other = Status {
            code: Some(500),
            reason: Some("InternalError".to_owned()),
            message: None,
        };
        assert!(!other.is_gone());
    }

    #[test]
    fn garbage_and_unknown_event_types_are_errors() {
        for line in ["{not json}\n", "{\"type\":\"SURPRISE\",\"object\":{}}\n"] {
            let mut decoder = EventDecoder::default();
            decoder.push(line.as_bytes());
            assert!(
                matches!(decoder.next_event::<Object>(), Err(DecodeError::Json(_))),
                "{line}"
            );
        }
    }

    #[test]
    fn a_line_longer_than_the_limit_is_refused_before_it_completes() {
        let mut decoder = EventDecoder::with_limit(64);
        decoder.push(&[b'x'; 65]);
        assert!(matches!(
            decoder.next_event::<Object>(),
            Err(DecodeError::TooLong { limit: 64 })
        ));
        let mut decoder = EventDecoder::with_limit(64);
        decoder.push(&[b' '; 100]);
        decoder.push(b"\n");
        assert!(matches!(
            decoder.next_event::<Object>(),
            Err(DecodeError::TooLong { .. })
        ));
    }
}
