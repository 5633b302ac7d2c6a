//! The probe endpoints: `/livez`, `/readyz`, `/startupz`, 200 or 503, with the per-check JSON
//! detail when asked (`?verbose` or `?detail`, or `Accept: application/json`).

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use outrigger_sidecar_runtime::http_server;
use tokio::net::TcpListener;

use crate::{run::Shared, settings::Probe, state::Health};

/// Answers one probe request.
pub fn respond(
    health: &Health,
    method: &Method,
    path: &str,
    query: Option<&str>,
    accept: Option<&str>,
) -> Response<Full<Bytes>> {
    let probe = match path {
        "/livez" => Probe::Liveness,
        "/readyz" => Probe::Readiness,
        "/startupz" => Probe::Startup,
        _ => {
            return reply(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found\n".to_owned(),
            )
        }
    };
    if method != Method::GET && method != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET and HEAD\n".to_owned(),
        );
    }
    let status = if health.verdict(probe) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let wants_detail = query.is_some_and(|q| {
        q.split('&')
            .any(|p| p == "verbose" || p == "detail" || p.starts_with("verbose=") || p.starts_with("detail="))
    }) || accept.is_some_and(|a| a.contains("application/json"));
    if wants_detail {
        let body = serde_json::to_string_pretty(&health.detail(probe)).unwrap_or_default() + "\n";
        return reply(status, "application/json", body);
    }
    let body = if status == StatusCode::OK {
        "ok\n"
    } else {
        "failed\n"
    };
    reply(status, "text/plain; charset=utf-8", body.to_owned())
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// Connections served at once, each for a bounded lifetime and with a bounded time to send a
/// request head, so idle or slow clients cannot hold them all for long. Probes are few.
const LIMITS: http_server::Limits = http_server::Limits {
    max_connections: 1024,
    header_read_timeout: std::time::Duration::from_secs(10),
    connection_lifetime: std::time::Duration::from_secs(60),
};

/// Serves the probe endpoints until `shutdown` completes.
pub async fn serve(listener: TcpListener, shared: Shared, shutdown: impl std::future::Future<Output = ()>) {
    let answer = move |request: Request<Incoming>| {
        let accept = request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        let response = respond(
            &shared.lock(),
            request.method(),
            request.uri().path(),
            request.uri().query(),
            accept,
        );
        std::future::ready(response)
    };
    http_server::serve(listener, LIMITS, answer, shutdown).await;
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use serde_json::json;

    use super::*;
    use crate::settings::Settings;

    async fn body(response: Response<Full<Bytes>>) -> String {
        String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn endpoints_answer_503_until_checks_pass_and_give_json_detail_on_request() {
        let checks = json!([{"name": "app", "type": "tcp", "address": "127.0.0.1:1", "successThreshold": 1}]);
        let settings = Settings::from_json(&json!({"checks": checks.to_string()}).to_string()).unwrap();
        let mut health = Health::new(settings.checks);
        let get = |health: &Health, path: &str, query: Option<&str>| {
            respond(health, &Method::GET, path, query, None)
        };
        assert_eq!(get(&health, "/livez", None).status(), StatusCode::OK);
        assert_eq!(
            get(&health, "/readyz", None).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            get(&health, "/startupz", None).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        health.record(0, Ok(()), std::time::Duration::from_millis(3));
        assert_eq!(get(&health, "/readyz", None).status(), StatusCode::OK);
        let detail: serde_json::Value =
            serde_json::from_str(&body(get(&health, "/readyz", Some("verbose"))).await).unwrap();
        assert_eq!(detail["checks"][0]["name"], "app");
        assert_eq!(detail["checks"][0]["lastDurationMs"], 3);
        let by_accept = respond(&health, &Method::GET, "/livez", None, Some("application/json"));
        assert_eq!(by_accept.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(get(&health, "/metrics", None).status(), StatusCode::NOT_FOUND);
    }
}
