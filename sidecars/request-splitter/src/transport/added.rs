//! The headers the splitter adds to a request on its way to a backend: a generated
//! `x-request-id`, a started `traceparent`, `x-forwarded-for` and `x-forwarded-proto`. They are
//! kept beside the client's header map, not inserted in it: the HTTP/1.1 encoder writes them after
//! the client's lines, and only a request that leaves another way (through hyper, or as a mirror
//! copy) gets them in its map. Inserting four headers and dropping them again cost more than the
//! rest of building the request.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::transport::correlation::{REQUEST_ID, TRACEPARENT};

pub static FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// What a request gets on top of the client's headers; each is `None` when the map has it.
#[derive(Debug, Clone, Default)]
pub struct AddedHeaders {
    pub request_id: Option<[u8; 32]>,
    pub traceparent: Option<[u8; 55]>,
    pub forwarded_for: Option<HeaderValue>,
    pub forwarded_proto: Option<&'static str>,
}

impl AddedHeaders {
    /// Name and value of each added header.
    pub fn lines(&self) -> impl Iterator<Item = (&'static HeaderName, &[u8])> {
        [
            self.request_id.as_ref().map(|id| (&REQUEST_ID, &id[..])),
            self.traceparent.as_ref().map(|value| (&TRACEPARENT, &value[..])),
            self.forwarded_for
                .as_ref()
                .map(|value| (&FORWARDED_FOR, value.as_bytes())),
            self.forwarded_proto
                .map(|proto| (&FORWARDED_PROTO, proto.as_bytes())),
        ]
        .into_iter()
        .flatten()
    }

    /// Puts the added headers in `headers`, for a request that leaves with a map.
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        for (name, value) in self.lines() {
            // Ids are hex digits and `-`, the rest came from header values: all valid.
            if let Ok(value) = HeaderValue::from_bytes(value) {
                headers.insert(name, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_present_header_is_a_line_and_goes_into_a_map() {
        let cases = [
            (AddedHeaders::default(), &[][..]),
            (
                AddedHeaders {
                    request_id: Some([b'a'; 32]),
                    traceparent: Some([b'0'; 55]),
                    forwarded_for: Some(HeaderValue::from_static("10.0.0.1")),
                    forwarded_proto: Some("http"),
                },
                &[
                    ("x-request-id", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
                    (
                        "traceparent",
                        "0000000000000000000000000000000000000000000000000000000",
                    ),
                    ("x-forwarded-for", "10.0.0.1"),
                    ("x-forwarded-proto", "http"),
                ][..],
            ),
            (
                AddedHeaders {
                    forwarded_proto: Some("https"),
                    ..AddedHeaders::default()
                },
                &[("x-forwarded-proto", "https")][..],
            ),
        ];
        for (added, expected) in cases {
            let lines: Vec<(&str, &[u8])> = added
                .lines()
                .map(|(name, value)| (name.as_str(), value))
                .collect();
            let expected_lines: Vec<(&str, &[u8])> = expected
                .iter()
                .map(|(name, value)| (*name, value.as_bytes()))
                .collect();
            assert_eq!(lines, expected_lines);
            let mut map = HeaderMap::new();
            added.insert_into(&mut map);
            let entries: Vec<(&str, &str)> = map
                .iter()
                .map(|(name, value)| (name.as_str(), value.to_str().unwrap()))
                .collect();
            assert_eq!(entries, expected);
        }
    }
}
