//! Running one check once, bounded by its timeout.

use std::{net::SocketAddr, time::Duration};

use outrigger_metrics_adapter::collect::{
    http::{self, FetchLimits},
    prom, resp, CollectError,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::settings::Target;

/// Largest body a check reads (a health page or a metrics page).
const MAX_BODY_BYTES: usize = 4 << 20;

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("timed out")]
    Timeout,
    #[error("connecting: {0}")]
    Connect(#[source] std::io::Error),
    #[error("i/o: {0}")]
    Io(#[source] std::io::Error),
    #[error("status {0} outside {1}-{2}")]
    Status(u16, u16, u16),
    #[error("body does not contain {0:?}")]
    Body(String),
    #[error("fetching: {0}")]
    Fetch(#[from] CollectError),
    #[error("Redis answered {0:?}")]
    Redis(String),
    #[error("metric {0} not found")]
    MetricMissing(String),
    #[error("metric {metric} is {value}, outside its threshold")]
    Threshold { metric: String, value: f64 },
}

impl CheckError {
    /// A small fixed label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            CheckError::Timeout => "timeout",
            CheckError::Connect(_) => "connect",
            CheckError::Io(_) | CheckError::Fetch(_) => "io",
            CheckError::Status(..) => "status",
            CheckError::Body(_) => "body",
            CheckError::Redis(_) => "redis",
            CheckError::MetricMissing(_) | CheckError::Threshold { .. } => "threshold",
        }
    }
}

/// Runs the check once.
pub async fn run(target: &Target, timeout: Duration) -> Result<(), CheckError> {
    tokio::time::timeout(timeout, run_unbounded(target, timeout))
        .await
        .map_err(|_| CheckError::Timeout)?
}

async fn run_unbounded(target: &Target, timeout: Duration) -> Result<(), CheckError> {
    let limits = FetchLimits {
        timeout,
        max_body_bytes: MAX_BODY_BYTES,
    };
    match target {
        Target::Tcp(address) => {
            TcpStream::connect(address).await.map_err(CheckError::Connect)?;
            Ok(())
        }
        Target::Redis(address) => ping(*address).await,
        Target::Http {
            url,
            status,
            body_contains,
        } => {
            let (got, body) = http::fetch(url, "*/*", limits).await.map_err(map_fetch)?;
            let code = got.as_u16();
            if code < status.0 || code > status.1 {
                return Err(CheckError::Status(code, status.0, status.1));
            }
            if let Some(needle) = body_contains {
                if !String::from_utf8_lossy(&body).contains(needle.as_str()) {
                    return Err(CheckError::Body(needle.clone()));
                }
            }
            Ok(())
        }
        Target::Metric {
            url,
            metric,
            labels,
            above,
            below,
        } => {
            let body = http::get(url, "text/plain;version=0.0.4", limits)
                .await
                .map_err(map_fetch)?;
            let text = String::from_utf8_lossy(&body);
            let value = find_sample(&text, metric, labels)
                .ok_or_else(|| CheckError::MetricMissing(metric.clone()))?;
            let within = above.is_none_or(|a| value > a) && below.is_none_or(|b| value < b);
            if within {
                Ok(())
            } else {
                Err(CheckError::Threshold {
                    metric: metric.clone(),
                    value,
                })
            }
        }
    }
}

fn map_fetch(error: CollectError) -> CheckError {
    match error {
        CollectError::Timeout => CheckError::Timeout,
        CollectError::Connect(source) => CheckError::Connect(source),
        other => CheckError::Fetch(other),
    }
}

/// The value of the first sample named `metric` whose labels include `labels`.
pub fn find_sample(text: &str, metric: &str, labels: &[(String, String)]) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(metric))
        .filter_map(prom::parse_sample)
        .find(|sample| sample.name == metric && labels.iter().all(|want| sample.labels.contains(want)))
        .map(|sample| sample.value)
}

/// `PING` on a fresh connection; `+PONG` passes. A Redis that is loading or busy answers an
/// error, and one stuck in a long command does not answer: both fail.
async fn ping(address: SocketAddr) -> Result<(), CheckError> {
    let mut stream = TcpStream::connect(address).await.map_err(CheckError::Connect)?;
    stream
        .write_all(b"*1\r\n$4\r\nPING\r\n")
        .await
        .map_err(CheckError::Io)?;
    let mut buffer = Vec::with_capacity(64);
    loop {
        if let Some((reply, _)) = resp::parse(&buffer, 1024).map_err(|e| CheckError::Redis(e.to_string()))? {
            return match reply {
                resp::Reply::Simple(pong) if pong == "PONG" => Ok(()),
                other => Err(CheckError::Redis(format!("{other:?}"))),
            };
        }
        if buffer.len() > 1024 || stream.read_buf(&mut buffer).await.map_err(CheckError::Io)? == 0 {
            return Err(CheckError::Redis("no reply".to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_name_and_a_subset_of_labels() {
        let text = "# TYPE queue_depth gauge\nqueue_depth_total 1\nqueue_depth{queue=\"sms\",shard=\"1\"} 5\nqueue_depth{queue=\"mail\",shard=\"1\"} 7\n";
        let mail = [("queue".to_owned(), "mail".to_owned())];
        assert_eq!(find_sample(text, "queue_depth", &mail), Some(7.0));
        assert_eq!(find_sample(text, "queue_depth", &[]), Some(5.0));
        assert_eq!(find_sample(text, "queue_dept", &[]), None);
    }
}
