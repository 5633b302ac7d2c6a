//! Correlation headers: an `x-request-id` (kept when the client sent a sane one, generated
//! otherwise) and a W3C `traceparent` (kept when valid, started otherwise), both sent to the
//! backend and written to the access log.

use http::{
    header::{Entry, HeaderName},
    HeaderMap, HeaderValue,
};

use crate::rng;

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Returns the request id, inserting a generated one when the request has none (or an unusable one).
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    // One lookup for both the check and the insert: ids are added to every request.
    let entry = headers.entry(&REQUEST_ID);
    if let Entry::Occupied(id) = &entry {
        let bytes = id.get().as_bytes();
        if !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(u8::is_ascii_graphic) {
            return id.get().clone();
        }
    }
    let mut id = [0u8; 32];
    rng::hex_into(&mut id);
    let value = hex_value(&id);
    match entry {
        Entry::Occupied(mut unusable) => {
            unusable.insert(value.clone());
        }
        Entry::Vacant(missing) => {
            missing.insert(value.clone());
        }
    }
    value
}

/// A W3C trace id: 32 lowercase hex digits, kept on the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId([u8; 32]);

impl TraceId {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("-")
    }
}

/// Returns the trace id, starting a new trace when the request carries no valid `traceparent`.
/// A valid one is passed on unchanged; an invalid one is replaced, with its `tracestate`, as the
/// W3C recommendation says.
pub fn ensure_traceparent(headers: &mut HeaderMap) -> TraceId {
    let mut trace_id = [0u8; 32];
    let entry = headers.entry(&TRACEPARENT);
    if let Entry::Occupied(value) = &entry {
        if let Some(valid) = parse_trace_id(value.get().as_bytes()) {
            trace_id.copy_from_slice(valid);
            return TraceId(trace_id);
        }
    }
    let mut traceparent = *b"00-00000000000000000000000000000000-0000000000000000-00";
    rng::hex_into(&mut traceparent[3..35]);
    rng::hex_into(&mut traceparent[36..52]);
    trace_id.copy_from_slice(&traceparent[3..35]);
    let value = hex_value(&traceparent);
    match entry {
        Entry::Occupied(mut invalid) => {
            invalid.insert(value);
            headers.remove(&TRACESTATE);
        }
        Entry::Vacant(missing) => {
            missing.insert(value);
        }
    }
    TraceId(trace_id)
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
        assert_eq!(
            ensure_traceparent(&mut headers).as_str(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(headers[&TRACEPARENT], VALID);
        assert_eq!(headers[&TRACESTATE], "vendor=1");
    }

    #[test]
    fn an_invalid_traceparent_is_replaced_with_its_tracestate_dropped() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(&TRACEPARENT, HeaderValue::from_static(bad));
            headers.insert(&TRACESTATE, HeaderValue::from_static("vendor=1"));
            let trace_id = ensure_traceparent(&mut headers);
            let new = headers[&TRACEPARENT].as_bytes();
            assert_eq!(parse_trace_id(new), Some(trace_id.as_str().as_bytes()), "{bad}");
            assert!(!headers.contains_key(&TRACESTATE), "{bad}");
        }
    }

    #[test]
    fn future_versions_may_carry_more_fields() {
        let value = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more";
        assert!(parse_trace_id(value).is_some());
    }

    #[test]
    fn a_request_id_is_generated_only_when_missing() {
        let mut headers = HeaderMap::new();
        let generated = ensure_request_id(&mut headers);
        assert_eq!(generated.len(), 32);
        assert_eq!(headers[&REQUEST_ID], generated);
        let mut headers = HeaderMap::new();
        headers.insert(&REQUEST_ID, HeaderValue::from_static("client-chosen-42"));
        assert_eq!(ensure_request_id(&mut headers), "client-chosen-42");
    }
}
