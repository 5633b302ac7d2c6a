//! A small client for the few Kubernetes API calls a sidecar makes: `GET` of one object or a list,
//! a `POST` that creates one (an Event), a merge `PATCH` (a sidecar annotating its own pod, an
//! Event counting a repeat), and a streamed watch, over HTTP/1.1 with TLS, authenticated with a bearer token. [`super::Api`]
//! builds typed calls on it.
//!
//! In a pod it needs no flags: the API server is `KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT`,
//! and the token and CA are the service account's mounted files. The token is read again every
//! minute and after a `401`, because bound service-account tokens rotate.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, ServerName},
    ClientConfig, RootCertStore,
};
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::watch::Status;

/// The service account's token, mounted into every pod.
pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The cluster's CA bundle, mounted next to the token.
pub const SERVICE_ACCOUNT_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// How long a token read from the file is used before the file is read again.
const TOKEN_REFRESH: Duration = Duration::from_secs(60);
/// Longest wait for the TCP connection and the TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a response head, and for the body of a `GET`.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest `GET` response body read (a ConfigMap holds at most 1 MiB of data).
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Why a call to the API server failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "no API server: not running in a pod (KUBERNETES_SERVICE_HOST is unset) and no --api-server given"
    )]
    NoServer,
    #[error("the API server URL {url:?} is not usable: {reason}")]
    Url { url: String, reason: &'static str },
    #[error("reading the CA bundle {path}: {source}")]
    Ca {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no usable CA certificate")]
    NoCa { path: PathBuf },
    #[error("building the TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
    #[error("reading the token {path}: {source}")]
    Token { path: PathBuf, source: std::io::Error },
    #[error("the token in {path} is not a valid header value")]
    TokenValue { path: PathBuf },
    #[error("connecting to the API server {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("{what} to the API server {authority} timed out after {timeout:?}")]
    Timeout {
        what: &'static str,
        authority: String,
        timeout: Duration,
    },
    #[error("talking HTTP to the API server: {0}")]
    Http(#[source] hyper::Error),
    #[error("building a request: {0}")]
    Request(#[source] http::Error),
    #[error("reading a response body: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("decoding a response: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("the API server answered {status}: {details}")]
    Status { status: StatusCode, details: Status },
}

impl ApiError {
    /// The status the API server answered with, when it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The answer was `410 Gone`: the resource version asked for is too old.
    pub fn is_gone(&self) -> bool {
        match self {
            ApiError::Status { status, details } => *status == StatusCode::GONE || details.is_gone(),
            _ => false,
        }
    }

    /// The answer was `401 Unauthorized` or `403 Forbidden`: this identity may not do it. Unlike
    /// other failures, waiting does not help; someone has to grant access.
    pub fn is_denied(&self) -> bool {
        match self {
            ApiError::Status { status, details } => {
                matches!(*status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) || details.is_denied()
            }
            _ => false,
        }
    }
}

/// Where the API server is and how to authenticate; every field has an in-cluster default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiServerOptions {
    /// `https://host:port` (or `http://` for tests); from `KUBERNETES_SERVICE_HOST` and
    /// `KUBERNETES_SERVICE_PORT` when not given.
    pub server: Option<String>,
    /// Bearer token file; the service account's when not given.
    pub token_file: Option<PathBuf>,
    /// PEM CA bundle to verify the server with; the service account's when not given.
    pub ca_file: Option<PathBuf>,
}

/// A client for one API server. Cheap to clone.
#[derive(Clone)]
pub struct ApiClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// `host:port` as in the URL, for the `Host` header and messages.
    authority: String,
    /// Host to connect to (without IPv6 brackets) and port.
    host: String,
    port: u16,
    /// Path prefix of the URL, without a trailing slash.
    prefix: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    token: TokenFile,
    user_agent: HeaderValue,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("authority", &self.inner.authority)
            .field("tls", &self.inner.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// Resolves the options (in-cluster defaults for what is not given), reads the CA and the
    /// token once so that a misconfiguration fails at start-up.
    pub fn new(options: &ApiServerOptions) -> Result<ApiClient, ApiError> {
        let ApiServerOptions {
            server,
            token_file,
            ca_file,
        } = options;
        let url = match server {
            Some(url) => url.clone(),
            None => in_cluster_url()?,
        };
        let bad = |reason| ApiError::Url {
            url: url.clone(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let secure = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("the scheme must be https (or http)")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if secure { 443 } else { 80 });
        if uri.query().is_some() {
            return Err(bad("a query is not allowed"));
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        let tls = if secure {
            let ca_file = ca_file
                .clone()
                .unwrap_or_else(|| PathBuf::from(SERVICE_ACCOUNT_CA));
            let server_name = ServerName::try_from(host.clone())
                .map_err(|_| bad("the host is not a valid TLS server name"))?;
            Some((connector(&ca_file)?, server_name))
        } else {
            None
        };
        let token = TokenFile::new(
            token_file
                .clone()
                .unwrap_or_else(|| PathBuf::from(SERVICE_ACCOUNT_TOKEN)),
        );
        token.read_now()?;
        Ok(ApiClient {
            inner: Arc::new(Inner {
                authority: authority.as_str().to_owned(),
                host,
                port,
                prefix,
                tls,
                token,
                user_agent: HeaderValue::from_static(concat!(
                    "outrigger-sidecar/",
                    env!("CARGO_PKG_VERSION")
                )),
            }),
        })
    }

    /// Names the calling sidecar in the `User-Agent` header (`outrigger-request-splitter/0.1.0`);
    /// the API server's audit log shows it.
    #[must_use]
    pub fn with_user_agent(self, user_agent: &'static str) -> ApiClient {
        let mut inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(shared) => Inner {
                authority: shared.authority.clone(),
                host: shared.host.clone(),
                port: shared.port,
                prefix: shared.prefix.clone(),
                tls: shared.tls.clone(),
                token: TokenFile::new(shared.token.path.clone()),
                user_agent: shared.user_agent.clone(),
            },
        };
        inner.user_agent = HeaderValue::from_static(user_agent);
        ApiClient {
            inner: Arc::new(inner),
        }
    }

    /// `host:port` of the API server.
    pub fn authority(&self) -> &str {
        &self.inner.authority
    }

    /// `GET path` and decodes the JSON answer; `None` on `404 Not Found`.
    pub async fn get<T: DeserializeOwned>(&self, path_and_query: &str) -> Result<Option<T>, ApiError> {
        let response = self.send(path_and_query).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let status = response.status();
        let body = self.read_body(response.into_body()).await?;
        if !status.is_success() {
            return Err(status_error(status, &body));
        }
        serde_json::from_slice(&body).map(Some).map_err(ApiError::Decode)
    }

    /// Starts a watch (`path` with `watch=1` in its query) and returns the streamed body.
    pub async fn watch(&self, path_and_query: &str) -> Result<Incoming, ApiError> {
        let response = self.send(path_and_query).await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response.into_body());
        }
        let body = self.read_body(response.into_body()).await.unwrap_or_default();
        Err(status_error(status, &body))
    }

    async fn read_body(&self, body: Incoming) -> Result<Bytes, ApiError> {
        let collected = tokio::time::timeout(RESPONSE_TIMEOUT, Limited::new(body, MAX_BODY_BYTES).collect())
            .await
            .map_err(|_| self.timeout("reading a response", RESPONSE_TIMEOUT))?
            .map_err(ApiError::Body)?;
        Ok(collected.to_bytes())
    }

    /// Sends one `GET` on a new connection and returns the response head. A `401` makes the next
    /// request read the token file again.
    async fn send(&self, path_and_query: &str) -> Result<Response<Incoming>, ApiError> {
        self.send_with(http::Method::GET, path_and_query, None).await
    }

    /// `POST path` with a JSON body: creates the object. The answer's body is read and dropped.
    pub async fn create(&self, path: &str, object: &serde_json::Value) -> Result<(), ApiError> {
        self.send_json(http::Method::POST, path, "application/json", object)
            .await
    }

    /// `PATCH path` with a JSON merge patch (`application/merge-patch+json`), such as a sidecar
    /// writing an annotation on its own pod. The answer's body is read and dropped.
    pub async fn merge_patch(&self, path: &str, patch: &serde_json::Value) -> Result<(), ApiError> {
        self.send_json(http::Method::PATCH, path, "application/merge-patch+json", patch)
            .await
    }

    /// Sends a JSON body and fails unless the answer is a success.
    async fn send_json(
        &self,
        method: http::Method,
        path: &str,
        content_type: &'static str,
        value: &serde_json::Value,
    ) -> Result<(), ApiError> {
        let body = serde_json::to_vec(value).map_err(ApiError::Decode)?;
        let response = self
            .send_with(method, path, Some((content_type, Bytes::from(body))))
            .await?;
        let status = response.status();
        let body = self.read_body(response.into_body()).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(status_error(status, &body))
        }
    }

    async fn send_with(
        &self,
        method: http::Method,
        path_and_query: &str,
        body: Option<(&'static str, Bytes)>,
    ) -> Result<Response<Incoming>, ApiError> {
        let inner = &self.inner;
        let token = inner.token.current().await?;
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path_and_query}", inner.prefix))
            .header(header::HOST, inner.authority.as_str())
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, inner.user_agent.clone())
            .header(header::AUTHORIZATION, token);
        if let Some((content_type, _)) = &body {
            builder = builder.header(header::CONTENT_TYPE, *content_type);
        }
        let request = builder
            .body(Full::new(body.map(|(_, bytes)| bytes).unwrap_or_default()))
            .map_err(ApiError::Request)?;
        let mut sender = tokio::time::timeout(CONNECT_TIMEOUT, self.connect())
            .await
            .map_err(|_| self.timeout("connecting", CONNECT_TIMEOUT))??;
        let response = tokio::time::timeout(RESPONSE_TIMEOUT, sender.send_request(request))
            .await
            .map_err(|_| self.timeout("waiting for a response", RESPONSE_TIMEOUT))?
            .map_err(ApiError::Http)?;
        if response.status() == StatusCode::UNAUTHORIZED {
            inner.token.expire();
        }
        Ok(response)
    }

    async fn connect(&self) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, ApiError> {
        let inner = &self.inner;
        let connect_error = |source| ApiError::Connect {
            authority: inner.authority.clone(),
            source,
        };
        let stream = match inner.host.parse::<IpAddr>() {
            Ok(ip) => TcpStream::connect((ip, inner.port)).await,
            Err(_) => TcpStream::connect((inner.host.as_str(), inner.port)).await,
        }
        .map_err(connect_error)?;
        let _ = stream.set_nodelay(true);
        match &inner.tls {
            Some((connector, server_name)) => {
                let stream = connector
                    .connect(server_name.clone(), stream)
                    .await
                    .map_err(connect_error)?;
                handshake(TokioIo::new(stream)).await
            }
            None => handshake(TokioIo::new(stream)).await,
        }
    }

    fn timeout(&self, what: &'static str, timeout: Duration) -> ApiError {
        ApiError::Timeout {
            what,
            authority: self.inner.authority.clone(),
            timeout,
        }
    }
}

/// Starts HTTP/1.1 on a connected stream. The connection runs as its own task until the response
/// body is finished or dropped.
async fn handshake<T>(
    io: TokioIo<T>,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, ApiError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(ApiError::Http)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "API server connection ended with an error.");
        }
    });
    Ok(sender)
}

fn status_error(status: StatusCode, body: &[u8]) -> ApiError {
    let details = serde_json::from_slice::<Status>(body).unwrap_or_else(|_| Status {
        code: Some(status.as_u16()),
        reason: None,
        message: Some(String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned()),
    });
    ApiError::Status { status, details }
}

/// `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
fn in_cluster_url() -> Result<String, ApiError> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| ApiError::NoServer)?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".to_owned());
    Ok(if host.contains(':') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    })
}

/// A TLS connector trusting only the given CA bundle, for HTTP/1.1.
fn connector(path: &Path) -> Result<TlsConnector, ApiError> {
    let ca_error = |source| ApiError::Ca {
        path: path.to_owned(),
        source,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(ca_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(ca_error)?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certificates);
    if added == 0 {
        return Err(ApiError::NoCa {
            path: path.to_owned(),
        });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ApiError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The bearer token, read from its file again when it is older than [`TOKEN_REFRESH`] or the server
/// refused it.
struct TokenFile {
    path: PathBuf,
    cached: Mutex<Option<(HeaderValue, Instant)>>,
}

impl TokenFile {
    fn new(path: PathBuf) -> TokenFile {
        TokenFile {
            path,
            cached: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(HeaderValue, Instant)>> {
        self.cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the file (blocking; used at start-up).
    fn read_now(&self) -> Result<HeaderValue, ApiError> {
        let text = std::fs::read_to_string(&self.path).map_err(|source| ApiError::Token {
            path: self.path.clone(),
            source,
        })?;
        self.store(&text)
    }

    fn store(&self, text: &str) -> Result<HeaderValue, ApiError> {
        let mut value =
            HeaderValue::try_from(format!("Bearer {}", text.trim())).map_err(|_| ApiError::TokenValue {
                path: self.path.clone(),
            })?;
        value.set_sensitive(true);
        *self.lock() = Some((value.clone(), Instant::now()));
        Ok(value)
    }

    /// The `Authorization` header value to send now.
    async fn current(&self) -> Result<HeaderValue, ApiError> {
        if let Some((value, read)) = self.lock().as_ref() {
            if read.elapsed() < TOKEN_REFRESH {
                return Ok(value.clone());
            }
        }
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|source| ApiError::Token {
                path: self.path.clone(),
                source,
            })?;
        self.store(&text)
    }

    /// Forgets the cached token, so that the next request reads the file.
    fn expire(&self) {
        *self.lock() = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_file(text: &str) -> (PathBuf, impl Drop) {
        struct Remove(PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "runtime-token-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::write(&path, text).unwrap();
        (path.clone(), Remove(path))
    }

    fn options(server: &str, token: &Path) -> ApiServerOptions {
        ApiServerOptions {
            server: Some(server.to_owned()),
            token_file: Some(token.to_owned()),
            ca_file: None,
        }
    }

    #[test]
    fn urls_give_host_port_and_prefix() {
        let (token, _remove) = token_file("abc\n");
        let client = ApiClient::new(&options("http://127.0.0.1:8001/proxy/", &token)).unwrap();
        assert_eq!(
            (
                client.inner.host.as_str(),
                client.inner.port,
                client.inner.prefix.as_str()
            ),
            ("127.0.0.1", 8001, "/proxy")
        );
        let client = ApiClient::new(&options("http://[::1]", &token)).unwrap();
        assert_eq!((client.inner.host.as_str(), client.inner.port), ("::1", 80));
        assert_eq!(client.authority(), "[::1]");
        for bad in ["ftp://x", "not a url", "http://x/?q=1", "/just/a/path"] {
            assert!(
                matches!(ApiClient::new(&options(bad, &token)), Err(ApiError::Url { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn https_needs_a_readable_ca_bundle() {
        let (token, _remove) = token_file("abc");
        let mut options = options("https://127.0.0.1:6443", &token);
        options.ca_file = Some(PathBuf::from("/nonexistent/ca.crt"));
        assert!(matches!(ApiClient::new(&options), Err(ApiError::Ca { .. })));
        let (not_pem, _remove_ca) = token_file("no certificates here");
        options.ca_file = Some(not_pem);
        assert!(matches!(ApiClient::new(&options), Err(ApiError::NoCa { .. })));
    }

    #[test]
    fn a_missing_token_file_fails_at_start() {
        let error =
            ApiClient::new(&options("http://127.0.0.1:1", Path::new("/nonexistent/token"))).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("reading the token /nonexistent/token"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn the_token_is_trimmed_and_read_again_after_it_was_refused() {
        let (path, _remove) = token_file("first\n");
        let token = TokenFile::new(path.clone());
        assert_eq!(token.current().await.unwrap(), "Bearer first");
        std::fs::write(&path, "second").unwrap();
        assert_eq!(
            token.current().await.unwrap(),
            "Bearer first",
            "cached for a minute"
        );
        token.expire();
        assert_eq!(token.current().await.unwrap(), "Bearer second");
        assert!(token.current().await.unwrap().is_sensitive());
    }

    #[test]
    fn gone_is_recognised_from_the_status_code_or_the_reason() {
        let gone = status_error(StatusCode::GONE, b"");
        assert!(gone.is_gone());
        let expired = status_error(
            StatusCode::OK,
            br#"{"kind":"Status","code":410,"reason":"Expired","message":"too old"}"#,
        );
        assert!(expired.is_gone());
        let forbidden = status_error(
            StatusCode::FORBIDDEN,
            br#"{"kind":"Status","code":403,"reason":"Forbidden","message":"configmaps \"x\" is forbidden"}"#,
        );
        assert!(!forbidden.is_gone());
        assert!(forbidden.is_denied());
        assert!(!gone.is_denied());
        assert_eq!(
            forbidden.to_string(),
            "the API server answered 403 Forbidden: 403 Forbidden: configmaps \"x\" is forbidden"
        );
    }
}
