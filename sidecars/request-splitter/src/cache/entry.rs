//! A stored response and the variants of one URL (one per value of the headers its `Vary` names).
//! Pure.

use std::{sync::Arc, time::SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode};

use crate::cache::{
    policy::{vary_key, Freshness},
    store::Weigh,
};

/// Variants kept per URL; a new one past this replaces the oldest.
pub const MAX_VARIANTS: usize = 16;

/// Bytes counted per header line beside its name and value (the map's own bookkeeping).
const HEADER_OVERHEAD: u64 = 32;

/// One stored response.
#[derive(Debug)]
pub struct Entry {
    pub status: StatusCode,
    /// Its headers, without hop-by-hop ones and without the request id of the request that
    /// fetched it.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The request headers its `Vary` names, and their values in the request that fetched it.
    pub vary: Vec<HeaderName>,
    pub vary_key: Vec<Option<Vec<u8>>>,
    pub freshness: Freshness,
}

impl Entry {
    /// Whether this variant answers a request with these headers.
    pub fn selected_by(&self, request: &HeaderMap) -> bool {
        self.vary.is_empty() || vary_key(&self.vary, request) == self.vary_key
    }

    /// Whether the stored response can be revalidated.
    pub fn has_validator(&self) -> bool {
        crate::cache::policy::has_validator(&self.headers)
    }

    /// The same response with refreshed headers and freshness (after a `304`).
    pub fn refreshed(&self, headers: HeaderMap, freshness: Freshness) -> Entry {
        Entry {
            status: self.status,
            headers,
            body: self.body.clone(),
            vary: self.vary.clone(),
            vary_key: self.vary_key.clone(),
            freshness,
        }
    }

    /// Whether it is fresh now for a request with these directives.
    pub fn is_fresh(&self, now: SystemTime, request: &crate::cache::policy::RequestDirectives) -> bool {
        self.freshness.is_fresh(now, request)
    }
}

impl Weigh for Entry {
    fn weight(&self) -> u64 {
        let headers: u64 = self
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().len() + value.len()) as u64 + HEADER_OVERHEAD)
            .sum();
        let vary: u64 = self
            .vary_key
            .iter()
            .map(|value| value.as_ref().map_or(0, Vec::len) as u64 + HEADER_OVERHEAD)
            .sum();
        self.body.len() as u64 + headers + vary
    }
}

/// The stored variants of one URL, the most recently stored last.
#[derive(Debug, Default, Clone)]
pub struct Variants(pub Vec<Arc<Entry>>);

impl Variants {
    /// The variant a request selects.
    pub fn select(&self, request: &HeaderMap) -> Option<&Arc<Entry>> {
        self.0.iter().rev().find(|entry| entry.selected_by(request))
    }

    /// With `entry` added, replacing the variant with the same `Vary` key, and the oldest variant
    /// when there are too many. A response that varies on other headers than the stored ones
    /// replaces them all (the resource changed what it varies on).
    #[must_use]
    pub fn with(mut self, entry: Arc<Entry>) -> Variants {
        self.0
            .retain(|stored| stored.vary == entry.vary && stored.vary_key != entry.vary_key);
        if self.0.len() >= MAX_VARIANTS {
            self.0.remove(0);
        }
        self.0.push(entry);
        self
    }

    /// Without the variant a request selects; `None` when nothing is left.
    #[must_use]
    pub fn without_selected(mut self, request: &HeaderMap) -> Option<Variants> {
        if let Some(position) = self.0.iter().rposition(|entry| entry.selected_by(request)) {
            self.0.remove(position);
        }
        (!self.0.is_empty()).then_some(self)
    }
}

impl Weigh for Variants {
    fn weight(&self) -> u64 {
        self.0.iter().map(|entry| entry.weight()).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{header, HeaderValue};

    use super::*;

    fn entry(vary: &[HeaderName], request: &HeaderMap, body: &'static str) -> Arc<Entry> {
        Arc::new(Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body.as_bytes()),
            vary: vary.to_vec(),
            vary_key: vary_key(vary, request),
            freshness: Freshness {
                stored_at: SystemTime::UNIX_EPOCH,
                age_at_store: Duration::ZERO,
                lifetime: Duration::from_secs(60),
            },
        })
    }

    fn accepting(encoding: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(encoding).unwrap());
        headers
    }

    #[test]
    fn each_request_gets_the_variant_of_its_vary_headers() {
        let vary = [header::ACCEPT_ENCODING];
        let variants = Variants::default()
            .with(entry(&vary, &accepting("gzip"), "zipped"))
            .with(entry(&vary, &accepting("identity"), "plain"));
        assert_eq!(&variants.select(&accepting("gzip")).unwrap().body[..], b"zipped");
        assert_eq!(
            &variants.select(&accepting("identity")).unwrap().body[..],
            b"plain"
        );
        assert!(variants.select(&accepting("br")).is_none());
        assert!(variants.select(&HeaderMap::new()).is_none());
        // Storing the gzip variant again replaces it.
        let variants = variants.with(entry(&vary, &accepting("gzip"), "zipped again"));
        assert_eq!(variants.0.len(), 2);
        assert_eq!(
            &variants.select(&accepting("gzip")).unwrap().body[..],
            b"zipped again"
        );
        let variants = variants.without_selected(&accepting("gzip")).unwrap();
        assert!(variants.select(&accepting("gzip")).is_none());
        assert!(variants.without_selected(&accepting("identity")).is_none());
    }

    #[test]
    fn a_response_without_vary_answers_everyone_and_replaces_the_variants() {
        let vary = [header::ACCEPT_ENCODING];
        let variants = Variants::default()
            .with(entry(&vary, &accepting("gzip"), "zipped"))
            .with(entry(&[], &HeaderMap::new(), "one for all"));
        assert_eq!(variants.0.len(), 1);
        assert_eq!(
            &variants.select(&accepting("br")).unwrap().body[..],
            b"one for all"
        );
    }

    #[test]
    fn the_number_of_variants_is_bounded() {
        let vary = [header::ACCEPT_ENCODING];
        let mut variants = Variants::default();
        for index in 0..(MAX_VARIANTS + 5) {
            variants = variants.with(entry(&vary, &accepting(&format!("x{index}")), "v"));
        }
        assert_eq!(variants.0.len(), MAX_VARIANTS);
        assert!(variants.select(&accepting("x0")).is_none(), "the oldest went");
        assert!(variants
            .select(&accepting(&format!("x{}", MAX_VARIANTS + 4)))
            .is_some());
    }

    #[test]
    fn the_weight_counts_body_headers_and_vary_values() {
        let bare = entry(&[], &HeaderMap::new(), "12345");
        assert_eq!(bare.weight(), 5);
        let varied = entry(&[header::ACCEPT_ENCODING], &accepting("gzip"), "12345");
        assert_eq!(varied.weight(), 5 + 4 + HEADER_OVERHEAD);
    }
}
