//! Typed calls on one collection of the API: [`Api<K>`] is a collection path plus a serde type.
//! ConfigMaps, Secrets and EndpointSlices have constructors; any other document (a custom
//! resource, a subresource) works with [`Api::at`] and a type implementing [`Resource`].

use std::{collections::BTreeMap, marker::PhantomData, str::FromStr};

use hyper::body::Incoming;
use serde::{de::DeserializeOwned, Deserialize};

use super::{discovery::EndpointSliceVersion, ApiClient, ApiError, ObjectMeta};
use crate::encode::percent_encode;

/// How long the API server keeps one watch open before it ends it (and the watcher starts the next
/// from the last resource version seen).
pub const WATCH_TIMEOUT_SECONDS: u64 = 290;

/// An object of the API, as far as a sidecar reads it.
pub trait Resource: DeserializeOwned + Send + 'static {
    fn metadata(&self) -> &ObjectMeta;
}

/// The fields of a ConfigMap a sidecar reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMap {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub data: Option<BTreeMap<String, String>>,
}

/// The fields of a Secret a sidecar reads; `data` values are base64, as the API sends them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    #[serde(default)]
    pub data: Option<BTreeMap<String, String>>,
}

impl Secret {
    /// The decoded value of `key`; `None` when it is absent or not valid base64.
    pub fn decoded(&self, key: &str) -> Option<Vec<u8>> {
        base64_decode(self.data.as_ref()?.get(key)?)
    }
}

/// Standard base64 with padding, as the API encodes Secret data.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let digit = |byte: u8| -> Option<u32> {
        Some(u32::from(match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    };
    let text = text.trim_end_matches('=').as_bytes();
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        let mut bits = 0u32;
        for (index, byte) in chunk.iter().enumerate() {
            bits |= digit(*byte)? << (18 - 6 * index);
        }
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// The fields of an EndpointSlice a sidecar reads; the same in `discovery.k8s.io/v1beta1` and `v1`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub address_type: String,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub ports: Option<Vec<EndpointPort>>,
}

/// One endpoint of a slice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: Option<EndpointConditions>,
    #[serde(default)]
    pub hostname: Option<String>,
    /// The object behind the endpoint (a Pod, for a Service with a selector).
    #[serde(default)]
    pub target_ref: Option<EndpointTargetRef>,
}

/// What an endpoint stands for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct EndpointTargetRef {
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

impl Endpoint {
    /// An endpoint is ready unless it says otherwise (the API's own reading of an absent field).
    pub fn is_ready(&self) -> bool {
        self.conditions
            .as_ref()
            .and_then(|conditions| conditions.ready)
            .unwrap_or(true)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct EndpointConditions {
    #[serde(default)]
    pub ready: Option<bool>,
}

/// A port of a slice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct EndpointPort {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub port: Option<i32>,
    #[serde(default)]
    pub protocol: Option<String>,
}

impl Resource for ConfigMap {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
}

impl Resource for Secret {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
}

impl Resource for EndpointSlice {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
}

/// The answer to a LIST.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ObjectList<K> {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default = "Vec::new")]
    pub items: Vec<K>,
}

/// `namespace/name` of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

/// Why a `namespace/name` reference was refused.
#[derive(Debug, thiserror::Error)]
#[error("an object is named namespace/name, not {0:?}")]
pub struct ObjectRefError(pub String);

impl FromStr for ObjectRef {
    type Err = ObjectRefError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(ObjectRef {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(ObjectRefError(text.to_owned())),
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Which objects of a collection a watch covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// One object by name: read with a `GET`, watched with a field selector on its name.
    Named(String),
    /// Every object matching the label selector (all when `None`): read with a `LIST`.
    Labels(Option<String>),
}

impl Selector {
    fn query(&self) -> Option<String> {
        match self {
            Selector::Named(name) => Some(format!(
                "fieldSelector={}",
                percent_encode(&format!("metadata.name={name}"))
            )),
            Selector::Labels(Some(labels)) => Some(format!("labelSelector={}", percent_encode(labels))),
            Selector::Labels(None) => None,
        }
    }
}

/// Typed calls on one collection, such as `/api/v1/namespaces/shop/configmaps`. Cheap to clone.
pub struct Api<K> {
    client: ApiClient,
    collection: String,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Api<K> {
    fn clone(&self) -> Self {
        Api {
            client: self.client.clone(),
            collection: self.collection.clone(),
            kind: PhantomData,
        }
    }
}

impl<K> std::fmt::Debug for Api<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("collection", &self.collection)
            .finish_non_exhaustive()
    }
}

impl Api<ConfigMap> {
    /// The ConfigMaps of `namespace`.
    pub fn configmaps(client: ApiClient, namespace: &str) -> Api<ConfigMap> {
        Api::at(
            client,
            format!("/api/v1/namespaces/{}/configmaps", percent_encode(namespace)),
        )
    }
}

impl Api<Secret> {
    /// The Secrets of `namespace`.
    pub fn secrets(client: ApiClient, namespace: &str) -> Api<Secret> {
        Api::at(
            client,
            format!("/api/v1/namespaces/{}/secrets", percent_encode(namespace)),
        )
    }
}

impl Api<EndpointSlice> {
    /// The EndpointSlices of `namespace`, in the version the server serves (see
    /// [`super::discovery::endpoint_slice_version`]).
    pub fn endpoint_slices(
        client: ApiClient,
        namespace: &str,
        version: EndpointSliceVersion,
    ) -> Api<EndpointSlice> {
        Api::at(
            client,
            format!(
                "/apis/{}/namespaces/{}/endpointslices",
                version.group_version(),
                percent_encode(namespace)
            ),
        )
    }
}

impl<K: Resource> Api<K> {
    /// The collection at `collection` (a path such as
    /// `/apis/outrigger.dev/v1alpha1/namespaces/shop/rollouts`), decoded as `K`.
    pub fn at(client: ApiClient, collection: impl Into<String>) -> Api<K> {
        Api {
            client,
            collection: collection.into(),
            kind: PhantomData,
        }
    }

    /// The collection's path.
    pub fn collection(&self) -> &str {
        &self.collection
    }

    /// The client the calls go through.
    pub fn client(&self) -> &ApiClient {
        &self.client
    }

    /// Path of one object.
    pub fn object_path(&self, name: &str) -> String {
        format!("{}/{}", self.collection, percent_encode(name))
    }

    /// `GET` of one object; `None` when it does not exist.
    pub async fn get(&self, name: &str) -> Result<Option<K>, ApiError> {
        self.client.get(&self.object_path(name)).await
    }

    /// `LIST` of the objects `selector` covers (a named object lists as zero or one).
    pub async fn list(&self, selector: &Selector) -> Result<ObjectList<K>, ApiError> {
        let path = match selector.query() {
            Some(query) => format!("{}?{query}", self.collection),
            None => self.collection.clone(),
        };
        let list = self.client.get::<ObjectList<K>>(&path).await?;
        Ok(list.unwrap_or(ObjectList {
            metadata: ObjectMeta::default(),
            items: Vec::new(),
        }))
    }

    /// Path and query of a watch on what `selector` covers, from `version` (the current state
    /// first when `None`), with bookmarks.
    pub fn watch_path(&self, selector: &Selector, version: Option<&str>) -> String {
        let mut path = format!("{}?", self.collection);
        if let Some(query) = selector.query() {
            path.push_str(&query);
            path.push('&');
        }
        path.push_str(&format!(
            "watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_TIMEOUT_SECONDS}"
        ));
        if let Some(version) = version {
            path.push_str("&resourceVersion=");
            path.push_str(&percent_encode(version));
        }
        path
    }

    /// Starts a watch and returns the streamed body (decode it with [`super::EventDecoder`]).
    pub async fn watch(&self, selector: &Selector, version: Option<&str>) -> Result<Incoming, ApiError> {
        self.client.watch(&self.watch_path(selector, version)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::ApiServerOptions;

    fn client() -> ApiClient {
        let token = std::env::temp_dir().join(format!("runtime-resource-token-{}", std::process::id()));
        std::fs::write(&token, "t").unwrap();
        ApiClient::new(&ApiServerOptions {
            server: Some("http://127.0.0.1:1".to_owned()),
            token_file: Some(token),
            ca_file: None,
        })
        .unwrap()
    }

    #[test]
    fn paths_name_the_object_and_watch_it_by_field_selector_from_a_version() {
        let api = Api::configmaps(client(), "shop");
        assert_eq!(
            api.object_path("checkout-splitter"),
            "/api/v1/namespaces/shop/configmaps/checkout-splitter"
        );
        let named = Selector::Named("checkout-splitter".to_owned());
        assert_eq!(
            api.watch_path(&named, Some("4711")),
            "/api/v1/namespaces/shop/configmaps?fieldSelector=metadata.name%3Dcheckout-splitter\
             &watch=1&allowWatchBookmarks=true&timeoutSeconds=290&resourceVersion=4711"
        );
        assert!(!api.watch_path(&named, None).contains("resourceVersion"));
        let odd = Api::configmaps(client(), "a b");
        assert_eq!(
            odd.object_path("c&d"),
            "/api/v1/namespaces/a%20b/configmaps/c%26d"
        );
    }

    #[test]
    fn endpoint_slices_and_typed_documents_live_where_their_version_says() {
        let slices = Api::endpoint_slices(client(), "shop", EndpointSliceVersion::V1Beta1);
        assert_eq!(
            slices.watch_path(
                &Selector::Labels(Some("kubernetes.io/service-name=web".to_owned())),
                None
            ),
            "/apis/discovery.k8s.io/v1beta1/namespaces/shop/endpointslices?labelSelector=\
             kubernetes.io%2Fservice-name%3Dweb&watch=1&allowWatchBookmarks=true&timeoutSeconds=290"
        );
        let secrets = Api::secrets(client(), "shop");
        assert_eq!(secrets.object_path("tls"), "/api/v1/namespaces/shop/secrets/tls");
        let everything = Api::<ConfigMap>::at(client(), "/api/v1/configmaps");
        assert_eq!(
            everything.watch_path(&Selector::Labels(None), Some("9")),
            "/api/v1/configmaps?watch=1&allowWatchBookmarks=true&timeoutSeconds=290&resourceVersion=9"
        );
    }

    #[test]
    fn secret_values_are_decoded_from_base64() {
        let secret: Secret = serde_json::from_str(
            r#"{"metadata":{"name":"tls"},"type":"Opaque","data":{"a":"aGVsbG8=","b":"aGk=","c":"aGV5","bad":"a*=="}}"#,
        )
        .unwrap();
        assert_eq!(secret.decoded("a").as_deref(), Some(&b"hello"[..]));
        assert_eq!(secret.decoded("b").as_deref(), Some(&b"hi"[..]));
        assert_eq!(secret.decoded("c").as_deref(), Some(&b"hey"[..]));
        assert_eq!(secret.decoded("bad"), None);
        assert_eq!(secret.decoded("missing"), None);
    }

    #[test]
    fn references_are_namespace_slash_name() {
        let reference: ObjectRef = "shop/checkout-outrigger".parse().unwrap();
        assert_eq!(reference.to_string(), "shop/checkout-outrigger");
        for bad in ["shop", "/x", "x/", "a/b/c"] {
            assert!(bad.parse::<ObjectRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn an_endpoint_slice_decodes_in_either_version_and_readiness_defaults_to_true() {
        let slice: EndpointSlice = serde_json::from_str(
            r#"{"apiVersion":"discovery.k8s.io/v1beta1","kind":"EndpointSlice",
                "metadata":{"name":"web-abc","namespace":"shop","resourceVersion":"3",
                            "labels":{"kubernetes.io/service-name":"web"}},
                "addressType":"IPv4",
                "endpoints":[{"addresses":["10.0.0.1"],"conditions":{"ready":false},"topology":{"x":"y"}},
                             {"addresses":["10.0.0.2"],"zone":"a"}],
                "ports":[{"name":"http","port":8080,"protocol":"TCP"}]}"#,
        )
        .unwrap();
        let ready: Vec<bool> = slice.endpoints.iter().map(Endpoint::is_ready).collect();
        assert_eq!(ready, [false, true]);
        assert_eq!(slice.ports.unwrap()[0].port, Some(8080));
        assert_eq!(
            slice.metadata.labels.unwrap()["kubernetes.io/service-name"],
            "web"
        );
    }
}
