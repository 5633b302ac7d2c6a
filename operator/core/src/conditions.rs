//! Status conditions: building them and merging them so `lastTransitionTime` only moves when the
//! status really changes (a resync must not rewrite an unchanged status).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition without its transition time, as computed by a reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredCondition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl DesiredCondition {
    pub fn new(type_: &'static str, status: bool, reason: &'static str, message: impl Into<String>) -> Self {
        DesiredCondition {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// A child that reports it cannot do its work: the reason becomes the owner's `Degraded` reason,
/// the message names the child and carries what the child's controller said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildFailure {
    pub reason: &'static str,
    pub message: String,
}

/// `Degraded`: the first failing child's reason, every failure in the message; `False` when none.
pub fn degraded(failures: &[ChildFailure]) -> DesiredCondition {
    match failures.first() {
        Some(first) => DesiredCondition::new(
            outrigger_api::common::condition_type::DEGRADED,
            true,
            first.reason,
            failures
                .iter()
                .map(|f| f.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
        None => DesiredCondition::new(
            outrigger_api::common::condition_type::DEGRADED,
            false,
            "Reconciled",
            "children match the spec",
        ),
    }
}

/// Merges `desired` into `current`: a condition whose status is unchanged keeps its
/// `lastTransitionTime`; a changed or new one gets `now`. Conditions not desired are dropped.
/// The result is ordered like `desired`.
pub fn merge(
    current: &[Condition],
    desired: &[DesiredCondition],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|wanted| {
            let status = if wanted.status { "True" } else { "False" }.to_owned();
            let previous = current.iter().find(|c| c.type_ == wanted.type_);
            let last_transition_time = match previous {
                Some(previous) if previous.status == status => previous.last_transition_time.clone(),
                _ => now.clone(),
            };
            Condition {
                type_: wanted.type_.to_owned(),
                status,
                reason: wanted.reason.to_owned(),
                message: wanted.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn unchanged_status_keeps_its_transition_time_and_a_flip_moves_it() {
        let first = merge(
            &[],
            &[DesiredCondition::new("Ready", false, "Pending", "waiting")],
            Some(1),
            &at(10),
        );
        assert_eq!(first[0].last_transition_time, at(10));

        let same = merge(
            &first,
            &[DesiredCondition::new("Ready", false, "Pending", "still")],
            Some(2),
            &at(20),
        );
        assert_eq!(same[0].last_transition_time, at(10));
        assert_eq!(same[0].message, "still");
        assert_eq!(same[0].observed_generation, Some(2));

        let flipped = merge(
            &same,
            &[DesiredCondition::new("Ready", true, "Available", "ok")],
            Some(2),
            &at(30),
        );
        assert_eq!(flipped[0].last_transition_time, at(30));
        assert_eq!(flipped[0].status, "True");
    }

    #[test]
    fn conditions_no_longer_desired_are_dropped() {
        let current = merge(
            &[],
            &[
                DesiredCondition::new("Ready", true, "A", ""),
                DesiredCondition::new("Degraded", true, "B", ""),
            ],
            None,
            &at(1),
        );
        let next = merge(
            &current,
            &[DesiredCondition::new("Ready", true, "A", "")],
            None,
            &at(2),
        );
        assert_eq!(next.len(), 1);
    }
}
