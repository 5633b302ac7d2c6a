//! Correlation headers: an `x-request-id` (kept when the client sent a sane one, generated
//! otherwise) and a W3C `traceparent` (kept when valid, started otherwise), both sent to the
//! backend and written to the access log.

use http::{header::HeaderName, HeaderMap, HeaderValue};

use crate::rng;

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A request's id: the client's own, or one the splitter made, which stays on the stack until a
/// header needs it.
#[derive(Debug, Clone)]
pub enum RequestId {
    /// The client's, which stays in the request's header map.
    Received(HeaderValue),
    /// Made by the splitter; the request gets it by [`crate::transport::added::AddedHeaders`].
    Generated([u8; 32]),
}

impl RequestId {
    pub fn generate() -> RequestId {
        let mut id = [0u8; 32];
        rng::hex_into(&mut id);
        RequestId::Generated(id)
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Received(value) => value.as_bytes(),
            RequestId::Generated(digits) => digits,
        }
    }

    /// The id for logs; a received id is visible ASCII, so the fallback is unreachable.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("-")
    }

    /// The id as a header value (a generated one is copied for it).
    pub fn to_value(&self) -> HeaderValue {
        match self {
            RequestId::Received(value) => value.clone(),
            RequestId::Generated(digits) => hex_value(digits),
        }
    }
}

/// The request's id: the client's when it sent a sane one, a new one otherwise. An unusable one is
/// removed; a new one is not put in the map.
pub fn request_id(headers: &mut HeaderMap) -> RequestId {
    if let Some(value) = headers.get(&REQUEST_ID) {
        let bytes = value.as_bytes();
        if !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(u8::is_ascii_graphic) {
            return RequestId::Received(value.clone());
        }
        headers.remove(&REQUEST_ID);
    }
    RequestId::generate()
}

/// A W3C trace id: 32 lowercase hex digits, kept on the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId([u8; 32]);

impl TraceId {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("-")
    }
}

/// The request's trace, and the `traceparent` to send when the splitter started it.
#[derive(Debug, Clone, Copy)]
pub struct Trace {
    pub id: TraceId,
    pub started: Option<[u8; 55]>,
}

impl Trace {
    /// A new trace, with a random trace id and parent id, not sampled.
    pub fn start() -> Trace {
        let mut traceparent = *b"00-00000000000000000000000000000000-0000000000000000-00";
        rng::hex_into(&mut traceparent[3..35]);
        rng::hex_into(&mut traceparent[36..52]);
        let mut trace_id = [0u8; 32];
        trace_id.copy_from_slice(&traceparent[3..35]);
        Trace {
            id: TraceId(trace_id),
            started: Some(traceparent),
        }
    }
}

/// The request's trace: a valid `traceparent` is kept (in the map, unchanged); without one a new
/// trace starts, and an invalid one is removed with its `tracestate`, as the W3C recommendation
/// says. A new `traceparent` is not put in the map.
pub fn trace(headers: &mut HeaderMap) -> Trace {
    let mut trace_id = [0u8; 32];
    if let Some(value) = headers.get(&TRACEPARENT) {
        if let Some(valid) = parse_trace_id(value.as_bytes()) {
            trace_id.copy_from_slice(valid);
            return Trace {
                id: TraceId(trace_id),
                started: None,
            };
        }
        headers.remove(&TRACEPARENT);
        headers.remove(&TRACESTATE);
    }
    Trace::start()
}

fn hex_value(bytes: &[u8]) -> HeaderValue {
    // Only ASCII hex digits and '-' are ever passed here; the fallback is unreachable.
    HeaderValue::from_bytes(bytes).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// The trace id of a valid `traceparent` (`version-traceid-parentid-flags`).
pub fn parse_trace_id(value: &[u8]) -> Option<&[u8]> {
    if value.len() < 55 || (value.len() > 55 && value[55] != b'-') {
        return None;
    }
    let (version, trace_id, parent_id, flags) = (&value[0..2], &value[3..35], &value[36..52], &value[53..55]);
    let lower_hex = |part: &[u8]| {
        part.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let all_zero = |part: &[u8]| part.iter().all(|c| *c == b'0');
    let well_formed = value[2] == b'-'
        && value[35] == b'-'
        && value[52] == b'-'
        && [version, trace_id, parent_id, flags].into_iter().all(lower_hex)
        && version != b"ff"
        && (version != b"00" || value.len() == 55)
        && !all_zero(trace_id)
        && !all_zero(parent_id);
    well_formed.then_some(trace_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(&TRACEPARENT, HeaderValue::from_static(VALID));
        headers.insert(&TRACESTATE, HeaderValue::from_static("vendor=1"));
        let trace = trace(&mut headers);
        assert_eq!(trace.id.as_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace.started, None);
        assert_eq!(headers[&TRACEPARENT], VALID);
        assert_eq!(headers[&TRACESTATE], "vendor=1");
    }

    #[test]
    fn an_invalid_or_missing_traceparent_is_replaced_with_its_tracestate_dropped() {
        for bad in [
            None,
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
            Some("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"),
            Some("garbage"),
        ] {
            let mut headers = HeaderMap::new();
            if let Some(bad) = bad {
                headers.insert(&TRACEPARENT, HeaderValue::from_static(bad));
                headers.insert(&TRACESTATE, HeaderValue::from_static("vendor=1"));
            }
            let trace = trace(&mut headers);
            let started = trace.started.expect("a new trace");
            assert_eq!(
                parse_trace_id(&started),
                Some(trace.id.as_str().as_bytes()),
                "{bad:?}"
            );
            assert!(headers.is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn future_versions_may_carry_more_fields() {
        let value = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more";
        assert!(parse_trace_id(value).is_some());
    }

    #[test]
    fn a_request_id_is_generated_only_when_missing_or_unusable() {
        let cases = [
            (None, None),
            (Some(&b"client-chosen-42"[..]), Some("client-chosen-42")),
            (Some(b""), None),
            (Some(b"has space"), None),
            (Some(&[b'x'; 129][..]), None),
        ];
        for (sent, kept) in cases {
            let mut headers = HeaderMap::new();
            if let Some(sent) = sent {
                headers.insert(&REQUEST_ID, HeaderValue::from_bytes(sent).unwrap());
            }
            let id = request_id(&mut headers);
            match kept {
                Some(kept) => {
                    assert_eq!(id.as_str(), kept);
                    assert_eq!(headers[&REQUEST_ID], kept);
                }
                None => {
                    assert!(matches!(id, RequestId::Generated(_)), "{sent:?}");
                    assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
                    assert_eq!(id.to_value(), id.as_str());
                    assert!(headers.is_empty(), "{sent:?}");
                }
            }
        }
    }
}
