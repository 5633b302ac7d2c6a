//! Where an HTTP request's key is: a header, a path segment or a query parameter, as the shard map
//! says (`httpKey`, else `keyHeader`, else the whole path). Pure: it sees the request's URI and
//! headers, never a socket.

use std::borrow::Cow;

use http::{header::HeaderName, HeaderMap, Uri};
use outrigger_contract::shard_map::{HttpKey, ShardMap};

/// Where the key of a request is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Header(HeaderName),
    /// Path segment by position from 0, percent-decoded.
    PathSegment(usize),
    /// Query parameter, percent-decoded (`+` is a space).
    QueryParameter(String),
    /// The whole path (without the query), as sent.
    Path,
}

/// Why a request has no key; the client gets `400 Bad Request` with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the shard map names an invalid key header {0:?}")]
    InvalidHeaderName(String),
    #[error("no key: the request has no {0} header")]
    MissingHeader(HeaderName),
    #[error("no key: the request path has no segment {0}")]
    MissingSegment(usize),
    #[error("no key: the request has no query parameter {0:?}")]
    MissingParameter(String),
    #[error("no key: the {0} is empty")]
    Empty(&'static str),
}

impl KeyError {
    /// A fixed label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            KeyError::InvalidHeaderName(_) => "invalid_map",
            _ => "no_key",
        }
    }
}

impl KeySource {
    /// The key source a shard map names.
    pub fn of(map: &ShardMap) -> Result<KeySource, KeyError> {
        let header = |name: &str| {
            HeaderName::from_bytes(name.as_bytes())
                .map(KeySource::Header)
                .map_err(|_| KeyError::InvalidHeaderName(name.to_owned()))
        };
        match (&map.http_key, &map.key_header) {
            (Some(HttpKey::Header(name)), _) | (None, Some(name)) => header(name),
            (Some(HttpKey::PathSegment(index)), _) => Ok(KeySource::PathSegment(
                usize::try_from(*index).unwrap_or(usize::MAX),
            )),
            (Some(HttpKey::QueryParameter(name)), _) => Ok(KeySource::QueryParameter(name.clone())),
            (None, None) => Ok(KeySource::Path),
        }
    }

    /// The key of a request with this URI and these headers.
    pub fn extract<'a>(&self, uri: &'a Uri, headers: &'a HeaderMap) -> Result<Cow<'a, [u8]>, KeyError> {
        let key = match self {
            KeySource::Header(name) => {
                let value = headers
                    .get(name)
                    .ok_or_else(|| KeyError::MissingHeader(name.clone()))?;
                non_empty(Cow::Borrowed(value.as_bytes()), "key header")?
            }
            KeySource::PathSegment(index) => {
                let segment = uri
                    .path()
                    .split('/')
                    .filter(|segment| !segment.is_empty())
                    .nth(*index)
                    .ok_or(KeyError::MissingSegment(*index))?;
                percent_decode(segment.as_bytes(), false)
            }
            KeySource::QueryParameter(name) => {
                let value = uri
                    .query()
                    .unwrap_or_default()
                    .split('&')
                    .find_map(|pair| {
                        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                        (percent_decode(key.as_bytes(), true) == name.as_bytes()).then_some(value)
                    })
                    .ok_or_else(|| KeyError::MissingParameter(name.clone()))?;
                non_empty(percent_decode(value.as_bytes(), true), "key parameter")?
            }
            KeySource::Path => Cow::Borrowed(uri.path().as_bytes()),
        };
        Ok(key)
    }
}

fn non_empty<'a>(key: Cow<'a, [u8]>, what: &'static str) -> Result<Cow<'a, [u8]>, KeyError> {
    if key.is_empty() {
        Err(KeyError::Empty(what))
    } else {
        Ok(key)
    }
}

/// Percent-decodes `text` (and `+` as a space in a query); borrowed when there is nothing to
/// decode. A `%` not followed by two hex digits stays as it is.
fn percent_decode(text: &[u8], plus_is_space: bool) -> Cow<'_, [u8]> {
    if !text.iter().any(|b| *b == b'%' || (plus_is_space && *b == b'+')) {
        return Cow::Borrowed(text);
    }
    let hex = |b: u8| char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'%' => match (
                text.get(i + 1).and_then(|b| hex(*b)),
                text.get(i + 2).and_then(|b| hex(*b)),
            ) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use outrigger_contract::shard_map::{KeyHash, ReadPolicy, ShardProtocol, ShardingFunction};

    use super::*;

    fn map(http_key: Option<HttpKey>, key_header: Option<&str>) -> ShardMap {
        ShardMap {
            api_version: outrigger_contract::ApiVersion::V1alpha1,
            protocol: ShardProtocol::Http,
            function: ShardingFunction::Ketama,
            hash: KeyHash::Fnv1a64,
            virtual_nodes: 160,
            hash_tag: None,
            key_header: key_header.map(str::to_owned),
            http_key,
            read_policy: ReadPolicy::Primary,
            shards: Vec::new(),
            key_ranges: Vec::new(),
            migration: None,
            auth: None,
        }
    }

    fn key(source: &KeySource, uri: &str, headers: &[(&str, &str)]) -> Result<Vec<u8>, KeyError> {
        let uri: Uri = uri.parse().unwrap();
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        source.extract(&uri, &map).map(Cow::into_owned)
    }

    #[test]
    fn the_map_chooses_the_key_source_and_http_key_wins_over_key_header() {
        let header = KeySource::Header(HeaderName::from_static("x-tenant"));
        assert_eq!(KeySource::of(&map(None, Some("X-Tenant"))).unwrap(), header);
        assert_eq!(
            KeySource::of(&map(Some(HttpKey::PathSegment(1)), Some("x-tenant"))).unwrap(),
            KeySource::PathSegment(1)
        );
        assert_eq!(
            KeySource::of(&map(Some(HttpKey::QueryParameter("id".into())), None)).unwrap(),
            KeySource::QueryParameter("id".into())
        );
        assert_eq!(KeySource::of(&map(None, None)).unwrap(), KeySource::Path);
        assert!(matches!(
            KeySource::of(&map(Some(HttpKey::Header("bad header".into())), None)),
            Err(KeyError::InvalidHeaderName(_))
        ));
    }

    #[test]
    fn a_header_key_is_its_value_and_a_missing_or_empty_header_is_an_error() {
        let source = KeySource::Header(HeaderName::from_static("x-tenant"));
        assert_eq!(key(&source, "/any", &[("x-tenant", "acme")]).unwrap(), b"acme");
        assert_eq!(
            key(&source, "/any", &[]),
            Err(KeyError::MissingHeader(HeaderName::from_static("x-tenant")))
        );
        assert_eq!(
            key(&source, "/any", &[("x-tenant", "")]),
            Err(KeyError::Empty("key header"))
        );
    }

    #[test]
    fn a_path_segment_key_counts_from_zero_and_is_percent_decoded() {
        let source = KeySource::PathSegment(1);
        assert_eq!(key(&source, "/users/42/cart", &[]).unwrap(), b"42");
        assert_eq!(
            key(&source, "//users//42", &[]).unwrap(),
            b"42",
            "empty segments skipped"
        );
        assert_eq!(
            key(&source, "/users/user%3A%7B42%7D%3Acart?x=1", &[]).unwrap(),
            b"user:{42}:cart"
        );
        assert_eq!(key(&source, "/users", &[]), Err(KeyError::MissingSegment(1)));
    }

    #[test]
    fn a_query_parameter_key_is_found_by_name_and_decoded() {
        let source = KeySource::QueryParameter("id".into());
        assert_eq!(key(&source, "/items?page=2&id=a+b%2Fc", &[]).unwrap(), b"a b/c");
        assert_eq!(key(&source, "/items?idx=1&id=7", &[]).unwrap(), b"7");
        assert_eq!(
            key(&source, "/items?page=2", &[]),
            Err(KeyError::MissingParameter("id".into()))
        );
        assert_eq!(
            key(&source, "/items?id=", &[]),
            Err(KeyError::Empty("key parameter"))
        );
    }

    #[test]
    fn without_a_key_setting_the_path_is_the_key() {
        assert_eq!(key(&KeySource::Path, "/a/b?c=d", &[]).unwrap(), b"/a/b");
    }

    #[test]
    fn a_stray_percent_stays_as_it_is() {
        assert_eq!(&*percent_decode(b"100%", false), b"100%");
        assert_eq!(&*percent_decode(b"%zz%41", false), b"%zzA");
    }
}
