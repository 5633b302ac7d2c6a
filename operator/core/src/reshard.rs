//! Resharding: a change of the shard count in steps the status remembers, so that no key is lost
//! from sight while it moves. Pure: the controller hands in the spec, what the status recorded and
//! the time, and gets the rings to write into the shard map and the status to record.
//!
//! 1. **Preparing**: the new shards are created while the map still routes with the old ring alone
//!    (a key must not be sent to a shard that does not answer yet). A shrink has nothing to prepare.
//! 2. **Migrating**: once every new shard is ready, the map routes with the new ring and carries the
//!    old one beside it (`migration.previousShards`); the ambassadors read a moved key from its
//!    previous owner when its new owner misses, and may copy it over. This lasts the migration
//!    window (`spec.resharding.migrationWindow`).
//! 3. **Cut-over**: the map routes with the new ring alone; a shrink's extra shards are deleted
//!    only now, as no map names them any more.
//!
//! A shard count changed again while preparing restarts the preparation from the ring in force;
//! changed while migrating, the ring in force is the new one (writes went there), so the operator
//! cuts over at once and prepares the next change from it: keys not yet moved off the first ring are
//! then misses, as with a plain ring swap.

use std::time::Duration;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use outrigger_api::sharded::{ReshardPhase, ReshardingStatus};

use crate::conditions::DesiredCondition;

/// Condition type: `True` while the shard count changes.
pub const RESHARDING: &str = "Resharding";

/// The rings to write and the status to record.
#[derive(Debug, Clone, PartialEq)]
pub struct RingPlan {
    /// Shards of the ring the shard map routes with (`status.ringShards`).
    pub ring_shards: i32,
    /// Shards of the previous ring the map carries beside it while keys migrate.
    pub previous_shards: Option<i32>,
    /// Shards whose StatefulSets are kept: those of both rings and of the spec.
    pub keep_shards: i32,
    /// `status.resharding`, while the shard count changes.
    pub status: Option<ReshardingStatus>,
    pub condition: DesiredCondition,
    /// How soon to look again so the next step comes on time, while a reshard runs.
    pub recheck_in: Option<Duration>,
}

/// What the controller observed and was asked for.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// `spec.shards`.
    pub spec_shards: i32,
    /// `spec.resharding.migrationWindow`.
    pub window: Duration,
    /// `status.ringShards`; 0 before the first map (or from an operator that did not record it).
    pub ring_shards: i32,
    /// `status.resharding`.
    pub resharding: Option<&'a ReshardingStatus>,
    /// Whether each shard, by index, has every replica ready (as observed); shards
    /// beyond count as not ready.
    pub ready: &'a [bool],
    pub now: Timestamp,
}

/// Decides the step the reshard is at. Recomputed at every look.
pub fn plan(observed: &Observed<'_>) -> RingPlan {
    let spec = observed.spec_shards;
    let ring = if observed.ring_shards > 0 {
        observed.ring_shards
    } else {
        spec
    };
    // Where keys live now, and where they go.
    let (from, to, migrating_since) = match observed.resharding {
        None => (ring, spec, None),
        Some(running) => match running.phase {
            ReshardPhase::Preparing => (running.from_shards, spec, None),
            ReshardPhase::Migrating if running.to_shards == spec => (
                running.from_shards,
                spec,
                running
                    .migration_started_at
                    .as_ref()
                    .map(|time| time.0)
                    .or(Some(observed.now)),
            ),
            // Changed again while migrating: writes went to the new ring, which is now in force.
            ReshardPhase::Migrating => (running.to_shards, spec, None),
        },
    };
    if from == to {
        return settled(to);
    }
    let window_seconds = i64::try_from(observed.window.as_secs()).unwrap_or(i64::MAX);
    let keep_shards = from.max(to);
    let Some(started) = migrating_since.or_else(|| {
        // A shrink has nothing to prepare; a growth waits for its new shards.
        (from..to)
            .all(|index| {
                usize::try_from(index)
                    .ok()
                    .and_then(|index| observed.ready.get(index))
                    .copied()
                    .unwrap_or(false)
            })
            .then_some(observed.now)
    }) else {
        return RingPlan {
            ring_shards: from,
            previous_shards: None,
            keep_shards,
            status: Some(ReshardingStatus {
                from_shards: from,
                to_shards: to,
                phase: ReshardPhase::Preparing,
                migration_started_at: None,
                window_seconds,
                elapsed_seconds: 0,
            }),
            condition: DesiredCondition::new(
                RESHARDING,
                true,
                "Preparing",
                format!("{from} → {to} shards: waiting for the new shards to be ready"),
            ),
            recheck_in: Some(Duration::from_secs(5)),
        };
    };
    let elapsed = observed
        .now
        .duration_since(started)
        .try_into()
        .unwrap_or(Duration::ZERO);
    if elapsed >= observed.window {
        return settled(to);
    }
    let elapsed_seconds = i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX);
    let percent = elapsed.as_millis() * 100 / observed.window.as_millis().max(1);
    RingPlan {
        ring_shards: to,
        previous_shards: Some(from),
        keep_shards,
        status: Some(ReshardingStatus {
            from_shards: from,
            to_shards: to,
            phase: ReshardPhase::Migrating,
            migration_started_at: Some(Time(started)),
            window_seconds,
            elapsed_seconds,
        }),
        condition: DesiredCondition::new(
            RESHARDING,
            true,
            "Migrating",
            format!(
                "{from} → {to} shards: moved keys are read from their previous shard; {elapsed_seconds} s of {window_seconds} s ({percent}%)"
            ),
        ),
        recheck_in: Some((observed.window - elapsed).min(Duration::from_secs(5))),
    }
}

fn settled(shards: i32) -> RingPlan {
    RingPlan {
        ring_shards: shards,
        previous_shards: None,
        keep_shards: shards,
        status: None,
        condition: DesiredCondition::new(
            RESHARDING,
            false,
            "Settled",
            format!("every key is on its shard of a ring of {shards}"),
        ),
        recheck_in: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(300);

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn look(
        spec: i32,
        ring: i32,
        running: Option<&ReshardingStatus>,
        ready_below: i32,
        now: i64,
    ) -> RingPlan {
        let ready: Vec<bool> = (0..8).map(|index| index < ready_below).collect();
        plan(&Observed {
            spec_shards: spec,
            window: WINDOW,
            ring_shards: ring,
            resharding: running,
            ready: &ready,
            now: at(now),
        })
    }

    #[test]
    fn an_unchanged_count_is_settled_and_a_first_look_adopts_the_spec() {
        for (spec, ring) in [(3, 3), (3, 0)] {
            let plan = look(spec, ring, None, 3, 0);
            assert_eq!(
                (plan.ring_shards, plan.previous_shards, plan.keep_shards),
                (3, None, 3)
            );
            assert!(plan.status.is_none() && !plan.condition.status);
        }
    }

    #[test]
    fn growing_prepares_the_new_shards_migrates_for_the_window_then_cuts_over() {
        // 3 → 4: shard 3 is created, the map keeps routing with 3 until it is ready.
        let preparing = look(4, 3, None, 3, 0);
        assert_eq!(
            (
                preparing.ring_shards,
                preparing.previous_shards,
                preparing.keep_shards
            ),
            (3, None, 4)
        );
        let status = preparing.status.clone().unwrap();
        assert_eq!(status.phase, ReshardPhase::Preparing);
        assert_eq!(preparing.condition.reason, "Preparing");

        // Shard 3 ready: the new ring routes, the old one is carried beside it.
        let migrating = look(4, 3, Some(&status), 4, 10);
        assert_eq!(
            (
                migrating.ring_shards,
                migrating.previous_shards,
                migrating.keep_shards
            ),
            (4, Some(3), 4)
        );
        let status = migrating.status.clone().unwrap();
        assert_eq!(status.migration_started_at, Some(Time(at(10))));

        let halfway = look(4, 4, Some(&status), 4, 160);
        assert_eq!(halfway.previous_shards, Some(3));
        let progress = halfway.status.unwrap();
        assert_eq!((progress.elapsed_seconds, progress.window_seconds), (150, 300));
        assert!(
            halfway.condition.message.contains("150 s of 300 s (50%)"),
            "{}",
            halfway.condition.message
        );
        assert_eq!(halfway.recheck_in, Some(Duration::from_secs(5)));

        let cut_over = look(4, 4, Some(&status), 4, 310);
        assert_eq!(
            (
                cut_over.ring_shards,
                cut_over.previous_shards,
                cut_over.keep_shards,
                cut_over.status
            ),
            (4, None, 4, None)
        );
        assert_eq!(cut_over.condition.reason, "Settled");
    }

    #[test]
    fn shrinking_migrates_at_once_and_deletes_the_extra_shards_only_after_the_cut_over() {
        let migrating = look(3, 4, None, 4, 0);
        assert_eq!(
            (
                migrating.ring_shards,
                migrating.previous_shards,
                migrating.keep_shards
            ),
            (3, Some(4), 4)
        );
        let status = migrating.status.unwrap();
        let cut_over = look(3, 3, Some(&status), 4, 300);
        assert_eq!((cut_over.ring_shards, cut_over.keep_shards), (3, 3));
    }

    #[test]
    fn a_count_changed_again_restarts_from_the_ring_in_force() {
        let preparing = look(4, 3, None, 3, 0).status.unwrap();
        // 3 → 4 preparing, then 5: still from 3.
        let again = look(5, 3, Some(&preparing), 3, 5);
        assert_eq!(again.status.unwrap().from_shards, 3);
        // Back to 3 while preparing: nothing moved, settled on 3.
        let back = look(3, 3, Some(&preparing), 3, 5);
        assert_eq!((back.ring_shards, back.keep_shards, back.status), (3, 3, None));
        // 3 → 4 migrating, then 5: the ring in force is 4, and 4 → 5 prepares.
        let migrating = look(4, 3, Some(&preparing), 4, 10).status.unwrap();
        let next = look(5, 4, Some(&migrating), 4, 20);
        assert_eq!(
            (next.ring_shards, next.previous_shards, next.keep_shards),
            (4, None, 5)
        );
        assert_eq!(next.status.unwrap().from_shards, 4);
    }
}
