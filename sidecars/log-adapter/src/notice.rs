//! What the adapter reports beyond its own log lines: trouble a user should see with `kubectl
//! describe` on the owning service. The tailer and the HTTP sink raise a [`Notice`] through a
//! [`Notify`] callback; the binary turns each into a Kubernetes Event with the runtime's recorder,
//! which never blocks the tailer. Each notice is raised once per episode (a sink that starts
//! failing, a file that cannot be read), so the Events stay few.

use std::{path::PathBuf, sync::Arc, time::Duration};

use outrigger_sidecar_runtime::events::{EventType, Note};

/// Something worth an Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The HTTP sink has failed several attempts in a row; records wait on the volume.
    SinkFailing { url: String, error: String },
    /// The HTTP sink acknowledged a batch again after failing.
    SinkRecovered { url: String, after: Duration },
    /// A log file cannot be opened or read; it is tried again later.
    Unreadable { path: PathBuf, error: String },
}

/// Where notices go; called from the tailer's thread, must not block.
pub type Notify = Arc<dyn Fn(Notice) + Send + Sync>;

impl Notice {
    /// The Event for this notice.
    pub fn note(&self) -> Note {
        match self {
            Notice::SinkFailing { url, error } => Note {
                type_: EventType::Warning,
                reason: "LogSinkFailing",
                message: format!("log sink {url} failing, records wait on the log volume: {error}"),
            },
            Notice::SinkRecovered { url, after } => Note {
                type_: EventType::Normal,
                reason: "LogSinkRecovered",
                message: format!(
                    "log sink {url} accepting records again after {}s",
                    after.as_secs()
                ),
            },
            Notice::Unreadable { path, error } => Note {
                type_: EventType::Warning,
                reason: "LogFileUnreadable",
                message: format!("cannot read log file {}: {error}", path.display()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_notice_is_an_event_with_its_detail() {
        let url = "http://10.0.0.9:8080/logs".to_owned();
        let cases = [
            (
                Notice::SinkFailing {
                    url: url.clone(),
                    error: "no answer within 10s".to_owned(),
                },
                EventType::Warning,
                "LogSinkFailing",
                "log sink http://10.0.0.9:8080/logs failing, records wait on the log volume: no answer within 10s",
            ),
            (
                Notice::SinkRecovered {
                    url,
                    after: Duration::from_millis(31_500),
                },
                EventType::Normal,
                "LogSinkRecovered",
                "log sink http://10.0.0.9:8080/logs accepting records again after 31s",
            ),
            (
                Notice::Unreadable {
                    path: PathBuf::from("/var/log/outrigger/secret.log"),
                    error: "Permission denied (os error 13)".to_owned(),
                },
                EventType::Warning,
                "LogFileUnreadable",
                "cannot read log file /var/log/outrigger/secret.log: Permission denied (os error 13)",
            ),
        ];
        for (notice, type_, reason, message) in cases {
            assert_eq!(
                notice.note(),
                Note {
                    type_,
                    reason,
                    message: message.to_owned()
                }
            );
        }
    }
}
