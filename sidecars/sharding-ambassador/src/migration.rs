//! What a reshard adds around a command while the previous ring is still in force. Pure: it sees
//! the arguments, the routing decision and where keys lived before, never a socket.
//!
//! The rule that keeps reads from going stale: a key present on its new owner is the authority, and
//! every write to a moved key deletes the previous owner's copy in the same breath. A read that
//! misses on the new owner may then ask the previous owner: whatever it finds there was never
//! overwritten on the new one.

use bytes::Bytes;

use crate::{
    resp::Frame,
    routing::{self, Part, Plan},
};

/// Where keys lived before the reshard.
pub trait LocatePrevious {
    /// Index on the previous ring of the shard that owned `key`, when that shard does not own it
    /// now (the key moved); `None` when the key stayed or no migration runs.
    fn moved_from(&self, key: &[u8]) -> Option<usize>;
}

/// The extra work a migration asks for around one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing: no key of the command moved, or the command needs nothing.
    None,
    /// A read of one moved key: when the new owner misses, the previous owner `previous` is asked.
    Fallback { previous: usize, key: Bytes },
    /// An `MGET` with moved keys: each of them the new owners answer nil for is read from its
    /// previous owner.
    FallbackValues(Vec<MovedKey>),
    /// A write: the moved keys are deleted on their previous owners (one `DEL` per shard of the
    /// previous ring), so no later fallback finds a value older than this write.
    Clear(Vec<Part>),
}

/// A moved key of a multi-key read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedKey {
    /// Its place in the reply.
    pub position: usize,
    /// Its previous owner's index on the previous ring.
    pub previous: usize,
    pub key: Bytes,
}

/// Decides the extra work for `args`, which routing planned as `plan`.
pub fn step(args: &[Bytes], plan: &Plan, previous: &impl LocatePrevious) -> Step {
    let commands: Vec<&[Bytes]> = match plan {
        Plan::Reply(_) | Plan::Quit => return Step::None,
        Plan::Forward { .. } | Plan::Split { .. } => vec![args],
        // A transaction's writes clear like the same commands sent one by one.
        Plan::Exec { commands, .. } => commands.iter().map(Vec::as_slice).collect(),
    };
    // A transaction is answered by `EXEC`: its reads can't fall back, its writes clear.
    let transaction = matches!(plan, Plan::Exec { .. });
    if let ([command], false) = (commands.as_slice(), transaction) {
        if is_mget(command) {
            let moved: Vec<MovedKey> = command[1..]
                .iter()
                .enumerate()
                .filter_map(|(position, key)| {
                    Some(MovedKey {
                        position,
                        previous: previous.moved_from(key)?,
                        key: key.clone(),
                    })
                })
                .collect();
            return if moved.is_empty() {
                Step::None
            } else {
                Step::FallbackValues(moved)
            };
        }
        if is_read(command) {
            // Other multi-key reads (`EXISTS a b`, `SINTER`, ...) read the new ring only: their
            // replies can't be taken apart key by key.
            let mut positions = routing::key_positions(command);
            return match (positions.next(), positions.next()) {
                (Some(position), None) => command
                    .get(position)
                    .and_then(|key| Some((previous.moved_from(key)?, key.clone())))
                    .map_or(Step::None, |(previous, key)| Step::Fallback { previous, key }),
                _ => Step::None,
            };
        }
    }
    let mut parts: Vec<Part> = Vec::new();
    for command in commands.into_iter().filter(|command| !is_read(command)) {
        for position in routing::key_positions(command) {
            let Some(key) = command.get(position) else {
                continue;
            };
            let Some(shard) = previous.moved_from(key) else {
                continue;
            };
            match parts.iter_mut().find(|part| part.shard == shard) {
                Some(part) if !part.args[1..].contains(key) => part.args.push(key.clone()),
                Some(_) => {}
                None => parts.push(Part {
                    shard,
                    args: vec![Bytes::from_static(b"DEL"), key.clone()],
                }),
            }
        }
    }
    if parts.is_empty() {
        Step::None
    } else {
        Step::Clear(parts)
    }
}

fn is_mget(command: &[Bytes]) -> bool {
    command
        .first()
        .is_some_and(|name| name.eq_ignore_ascii_case(b"MGET"))
}

fn is_read(command: &[Bytes]) -> bool {
    command.first().is_some_and(|name| routing::is_read_only(name))
}

/// Whether a shard's reply (wire bytes) says the key is absent, so its previous owner may have it:
/// a nil, an empty array, `0` (`EXISTS`, `SCARD`, ...), `-2` (`TTL` of a missing key) or `none`
/// (`TYPE`). Some of these also answer for a present key (`GETBIT` of a clear bit); asking the
/// previous owner then is harmless, as a key present on its new owner is gone from the previous.
pub fn is_miss(reply: &[u8]) -> bool {
    matches!(
        reply,
        b"$-1\r\n" | b"*-1\r\n" | b"*0\r\n" | b":0\r\n" | b":-2\r\n" | b"+none\r\n"
    )
}

/// The commands that read a key's serialized value and remaining time to live on its previous
/// owner, sent right after the read that found it there.
pub fn dump_commands(key: &Bytes) -> [Vec<Bytes>; 2] {
    [
        vec![Bytes::from_static(b"DUMP"), key.clone()],
        vec![Bytes::from_static(b"PTTL"), key.clone()],
    ]
}

/// The command that copies a key to its new owner from the replies of [`dump_commands`]:
/// `RESTORE key ttl value`, without `REPLACE`, so a write that reached the new owner first wins.
/// `None` when there is nothing to copy (the key went away meanwhile, or a reply is an error).
pub fn restore_command(key: &Bytes, dump: &Frame, pttl: &Frame) -> Option<Vec<Bytes>> {
    let Frame::Bulk(value) = dump else {
        return None;
    };
    let ttl = match pttl {
        Frame::Integer(-2) | Frame::Error(_) => return None,
        Frame::Integer(ms) if *ms > 0 => *ms,
        Frame::Integer(_) => 0,
        _ => return None,
    };
    Some(vec![
        Bytes::from_static(b"RESTORE"),
        key.clone(),
        Bytes::from(ttl.to_string()),
        value.clone(),
    ])
}

/// How a copy to the new owner ended, from `RESTORE`'s reply: a fixed label for metrics.
pub fn copy_result(reply: &Frame) -> &'static str {
    match reply {
        Frame::Simple(_) => "copied",
        // A write reached the new owner first: it is newer than the copy.
        Frame::Error(message) if message.starts_with(b"BUSYKEY") => "newer",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{plan, Locate, Session};

    /// Keys name their owners: `k<new><old>...` is on shard `<new>` now and was on `<old>` before.
    struct Moved;

    impl Locate for Moved {
        fn shard_of(&self, key: &[u8]) -> Option<usize> {
            key.get(1).map(|digit| usize::from(digit - b'0'))
        }
    }

    impl LocatePrevious for Moved {
        fn moved_from(&self, key: &[u8]) -> Option<usize> {
            let (new, old) = (key.get(1)?, key.get(2)?);
            (new != old).then(|| usize::from(old - b'0'))
        }
    }

    fn cmd(words: &str) -> Vec<Bytes> {
        words
            .split(' ')
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect()
    }

    fn del(shard: usize, keys: &str) -> Part {
        Part {
            shard,
            args: cmd(&format!("DEL {keys}")),
        }
    }

    fn step_of(words: &str) -> Step {
        let args = cmd(words);
        step(&args, &plan(&args, &Moved), &Moved)
    }

    #[test]
    fn each_command_gets_the_step_its_kind_and_keys_ask_for() {
        let cases: Vec<(&str, Step)> = vec![
            // A read of a moved key falls back to its previous owner.
            (
                "GET k10",
                Step::Fallback {
                    previous: 0,
                    key: Bytes::from_static(b"k10"),
                },
            ),
            (
                "HGET k21 f",
                Step::Fallback {
                    previous: 1,
                    key: Bytes::from_static(b"k21"),
                },
            ),
            // A read of a key that stayed, a multi-key read, a local command: nothing.
            ("GET k11", Step::None),
            (
                "mget k10 k22 k31",
                Step::FallbackValues(vec![
                    MovedKey {
                        position: 0,
                        previous: 0,
                        key: Bytes::from_static(b"k10"),
                    },
                    MovedKey {
                        position: 2,
                        previous: 1,
                        key: Bytes::from_static(b"k31"),
                    },
                ]),
            ),
            ("MGET k11 k22", Step::None),
            ("EXISTS k10 k20", Step::None),
            ("PING", Step::None),
            ("GET", Step::None),
            // A write clears the moved keys on their previous owners.
            ("SET k10 v", Step::Clear(vec![del(0, "k10")])),
            ("INCR k32", Step::Clear(vec![del(2, "k32")])),
            ("SET k11 v", Step::None),
            (
                "MSET k10 a k20 b k11 c k30 d",
                Step::Clear(vec![del(0, "k10 k20 k30")]),
            ),
            ("DEL k10 k21 k10", Step::Clear(vec![del(0, "k10"), del(1, "k21")])),
            ("RENAME k10 k12", Step::Clear(vec![del(0, "k10"), del(2, "k12")])),
        ];
        for (words, expected) in cases {
            assert_eq!(step_of(words), expected, "{words}");
        }
    }

    #[test]
    fn a_transaction_clears_the_moved_keys_of_its_writes_only() {
        let mut session = Session::default();
        for words in ["MULTI", "GET k10", "SET k12 v", "INCR k11"] {
            session.plan(&cmd(words), &Moved);
        }
        let exec = cmd("EXEC");
        let decision = session.plan(&exec, &Moved);
        assert!(matches!(decision, Plan::Exec { .. }));
        assert_eq!(step(&exec, &decision, &Moved), Step::Clear(vec![del(2, "k12")]));
    }

    #[test]
    fn a_read_in_a_transaction_never_falls_back() {
        let mut session = Session::default();
        for words in ["MULTI", "GET k10"] {
            session.plan(&cmd(words), &Moved);
        }
        let exec = cmd("EXEC");
        let decision = session.plan(&exec, &Moved);
        assert_eq!(step(&exec, &decision, &Moved), Step::None);
    }

    #[test]
    fn absent_keys_are_told_by_their_replies() {
        let cases: &[(&[u8], bool)] = &[
            (b"$-1\r\n", true),
            (b"*-1\r\n", true),
            (b"*0\r\n", true),
            (b":0\r\n", true),
            (b":-2\r\n", true),
            (b"+none\r\n", true),
            (b"$1\r\nv\r\n", false),
            (b"$0\r\n\r\n", false),
            (b":-1\r\n", false),
            (b":10\r\n", false),
            (b"+string\r\n", false),
            (b"-ERR boom\r\n", false),
            (b"*1\r\n$1\r\nv\r\n", false),
        ];
        for (reply, miss) in cases {
            assert_eq!(is_miss(reply), *miss, "{:?}", String::from_utf8_lossy(reply));
        }
    }

    #[test]
    fn a_copy_keeps_the_remaining_time_to_live_and_never_replaces() {
        let key = Bytes::from_static(b"k10");
        let value = Frame::Bulk(Bytes::from_static(b"\x00\x01v"));
        let restore = |pttl| restore_command(&key, &value, &Frame::Integer(pttl));
        assert_eq!(restore(1500), Some(cmd("RESTORE k10 1500 \x00\x01v")));
        assert_eq!(
            restore(-1),
            Some(cmd("RESTORE k10 0 \x00\x01v")),
            "no expiry is 0"
        );
        assert_eq!(restore(-2), None, "gone meanwhile");
        assert_eq!(restore_command(&key, &Frame::Null, &Frame::Integer(5)), None);
        assert_eq!(copy_result(&Frame::ok()), "copied");
        assert_eq!(
            copy_result(&Frame::error("BUSYKEY Target key name already exists.")),
            "newer"
        );
        assert_eq!(copy_result(&Frame::error("ERR boom")), "error");
    }
}
