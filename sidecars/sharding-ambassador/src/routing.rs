//! What to do with a command: answer it here, send it to one shard, split it over shards and merge
//! the replies, or refuse it. Pure: it sees the arguments and a key locator, never a socket.

use std::{collections::HashMap, sync::OnceLock};

use bytes::Bytes;

use crate::resp::Frame;

/// Finds the shard of a key.
pub trait Locate {
    /// Index of the shard owning `key`, `None` when there are no shards.
    fn shard_of(&self, key: &[u8]) -> Option<usize>;
}

/// The decision for one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Answer with this frame, without a shard.
    Reply(Frame),
    /// Answer `+OK` and close the connection.
    Quit,
    /// Send the command, unchanged, to this shard.
    Forward { shard: usize },
    /// Send one sub-command per shard and merge the replies into one.
    Split { parts: Vec<Part>, merge: Merge },
    /// Send `MULTI`, the commands and `EXEC` to this shard back to back; the reply is `EXEC`'s.
    Exec { shard: usize, commands: Vec<Vec<Bytes>> },
}

/// The sub-command of a split command bound for one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub shard: usize,
    pub args: Vec<Bytes>,
}

/// How the replies of a split command become one reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merge {
    /// `MGET`: part `i` answered an array whose element `j` is value `positions[i][j]` of the result.
    Values {
        total: usize,
        positions: Vec<Vec<usize>>,
    },
    /// `DEL`, `EXISTS`, `UNLINK`, `TOUCH`: the sum of the integer replies.
    Sum,
    /// `MSET`: `+OK` when every part answered `+OK`.
    AllOk,
}

/// How a command names its keys.
enum Keys {
    /// The key is argument 1.
    First,
    /// Arguments 1 and 2 are keys that must live on one shard (`RENAME`, `SMOVE`, ...).
    FirstTwo,
    /// Every argument from 1 is a key, all on one shard (`SINTER`, `PFCOUNT`, ...).
    AllSameShard,
    /// Every argument from 1 is a key; split by shard and merged.
    Each(Merge),
    /// Arguments from 1 are key-value pairs (`MSET`); split by shard.
    Pairs,
}

const SINGLE_KEY: &[&str] = &[
    // strings
    "GET",
    "SET",
    "SETNX",
    "SETEX",
    "PSETEX",
    "GETSET",
    "GETDEL",
    "GETEX",
    "APPEND",
    "STRLEN",
    "INCR",
    "DECR",
    "INCRBY",
    "DECRBY",
    "INCRBYFLOAT",
    "GETRANGE",
    "SETRANGE",
    "SUBSTR",
    "GETBIT",
    "SETBIT",
    "BITCOUNT",
    "BITPOS",
    "BITFIELD",
    "BITFIELD_RO",
    // keyspace
    "EXPIRE",
    "PEXPIRE",
    "EXPIREAT",
    "PEXPIREAT",
    "EXPIRETIME",
    "PEXPIRETIME",
    "TTL",
    "PTTL",
    "PERSIST",
    "TYPE",
    "DUMP",
    "RESTORE",
    // hashes
    "HGET",
    "HSET",
    "HSETNX",
    "HMSET",
    "HMGET",
    "HDEL",
    "HEXISTS",
    "HLEN",
    "HKEYS",
    "HVALS",
    "HGETALL",
    "HINCRBY",
    "HINCRBYFLOAT",
    "HSTRLEN",
    "HSCAN",
    "HRANDFIELD",
    // lists
    "LPUSH",
    "RPUSH",
    "LPUSHX",
    "RPUSHX",
    "LPOP",
    "RPOP",
    "LLEN",
    "LRANGE",
    "LINDEX",
    "LSET",
    "LREM",
    "LTRIM",
    "LINSERT",
    "LPOS",
    // sets
    "SADD",
    "SREM",
    "SMEMBERS",
    "SISMEMBER",
    "SMISMEMBER",
    "SCARD",
    "SPOP",
    "SRANDMEMBER",
    "SSCAN",
    // sorted sets
    "ZADD",
    "ZREM",
    "ZSCORE",
    "ZMSCORE",
    "ZINCRBY",
    "ZCARD",
    "ZCOUNT",
    "ZRANGE",
    "ZRANGEBYSCORE",
    "ZREVRANGE",
    "ZREVRANGEBYSCORE",
    "ZRANK",
    "ZREVRANK",
    "ZREMRANGEBYRANK",
    "ZREMRANGEBYSCORE",
    "ZRANGEBYLEX",
    "ZREVRANGEBYLEX",
    "ZLEXCOUNT",
    "ZREMRANGEBYLEX",
    "ZSCAN",
    "ZPOPMIN",
    "ZPOPMAX",
    "ZRANDMEMBER",
    // hyperloglog, geo, streams
    "PFADD",
    "GEOADD",
    "GEODIST",
    "GEOHASH",
    "GEOPOS",
    "GEOSEARCH",
    "XADD",
    "XLEN",
    "XRANGE",
    "XREVRANGE",
    "XDEL",
    "XTRIM",
];

const SAME_SHARD_PAIR: &[&str] = &["RENAME", "RENAMENX", "SMOVE", "RPOPLPUSH", "LMOVE", "COPY"];

const SAME_SHARD_ALL: &[&str] = &[
    "SINTER",
    "SUNION",
    "SDIFF",
    "SINTERSTORE",
    "SUNIONSTORE",
    "SDIFFSTORE",
    "PFCOUNT",
    "PFMERGE",
];

/// Commands that cannot be served through a sharding proxy, with the reason the client is told.
fn refusal(name: &str) -> Option<&'static str> {
    Some(match name {
        "MULTI" | "EXEC" | "DISCARD" => "transactions need a client session",
        "WATCH" | "UNWATCH" => "WATCH would hold state on a shard connection shared by every client",
        "KEYS" | "SCAN" | "RANDOMKEY" | "DBSIZE" => "it would have to visit every shard",
        "FLUSHALL" | "FLUSHDB" | "SWAPDB" | "MOVE" => "it would act on every shard",
        "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "SUNSUBSCRIBE"
        | "PUBLISH" | "SPUBLISH" | "PUBSUB" => "pub/sub is not sharded",
        "BLPOP" | "BRPOP" | "BRPOPLPUSH" | "BLMOVE" | "BZPOPMIN" | "BZPOPMAX" | "BLMPOP" | "BZMPOP"
        | "XREAD" | "XREADGROUP" | "WAIT" => "blocking commands would stall a shared shard connection",
        "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "SCRIPT" | "FCALL" | "FUNCTION" => {
            "scripts are not supported"
        }
        _ => return None,
    })
}

/// The key-position kinds of [`Keys`] without their merge state, for the lookup table.
#[derive(Debug, Clone, Copy)]
enum KeyKind {
    First,
    FirstTwo,
    AllSameShard,
}

/// Commands by name, built once: every command looks its name up here.
fn key_kinds() -> &'static HashMap<&'static str, KeyKind> {
    static TABLE: OnceLock<HashMap<&'static str, KeyKind>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let lists = [
            (SINGLE_KEY, KeyKind::First),
            (SAME_SHARD_PAIR, KeyKind::FirstTwo),
            (SAME_SHARD_ALL, KeyKind::AllSameShard),
        ];
        lists
            .iter()
            .flat_map(|(names, kind)| names.iter().map(move |name| (*name, *kind)))
            .collect()
    })
}

fn keys_of(name: &str) -> Option<Keys> {
    Some(match name {
        "MGET" => Keys::Each(Merge::Values {
            total: 0,
            positions: Vec::new(),
        }),
        "DEL" | "EXISTS" | "UNLINK" | "TOUCH" => Keys::Each(Merge::Sum),
        "MSET" => Keys::Pairs,
        _ => match key_kinds().get(name)? {
            KeyKind::First => Keys::First,
            KeyKind::FirstTwo => Keys::FirstTwo,
            KeyKind::AllSameShard => Keys::AllSameShard,
        },
    })
}

/// A command name upper-cased into `buf`, without allocating; `None` when it is too long or not
/// UTF-8 (no such command exists).
fn upper_name<'a>(name: &[u8], buf: &'a mut [u8; MAX_NAME_LEN]) -> Option<&'a str> {
    let upper = buf.get_mut(..name.len())?;
    for (to, from) in upper.iter_mut().zip(name) {
        *to = from.to_ascii_uppercase();
    }
    std::str::from_utf8(upper).ok()
}

/// Longest command name looked up; longer names are unknown without being upper-cased.
const MAX_NAME_LEN: usize = 32;

/// Most commands queued in one transaction.
pub const MAX_QUEUED: usize = 10_000;

/// What one client connection remembers between commands: an open transaction.
///
/// A transaction is queued here, not on a shard: `MULTI` and every command answer locally
/// (`+OK`, `+QUEUED`), and `EXEC` sends `MULTI`, the commands and `EXEC` to the one shard owning
/// every key of the transaction, back to back on the shared connection, so Redis runs them as one
/// transaction. A command whose key lives on another shard is refused and the transaction fails at
/// `EXEC`, as Redis fails a transaction with a queueing error.
#[derive(Debug, Default)]
pub struct Session {
    transaction: Option<Transaction>,
}

#[derive(Debug, Default)]
struct Transaction {
    shard: Option<usize>,
    commands: Vec<Vec<Bytes>>,
    failed: bool,
}

impl Session {
    /// Decides what to do with `args`, given what came before on this connection.
    pub fn plan(&mut self, args: &[Bytes], ring: &impl Locate) -> Plan {
        let mut buf = [0; MAX_NAME_LEN];
        let name = args
            .first()
            .and_then(|first| upper_name(first, &mut buf))
            .unwrap_or_default();
        match (name, self.transaction.as_mut()) {
            ("MULTI", None) => {
                self.transaction = Some(Transaction::default());
                Plan::Reply(Frame::ok())
            }
            ("MULTI", Some(_)) => Plan::Reply(Frame::error("ERR MULTI calls can not be nested")),
            ("EXEC", None) => Plan::Reply(Frame::error("ERR EXEC without MULTI")),
            ("DISCARD", None) => Plan::Reply(Frame::error("ERR DISCARD without MULTI")),
            ("DISCARD", Some(_)) => {
                self.transaction = None;
                Plan::Reply(Frame::ok())
            }
            ("EXEC", Some(_)) => {
                let Some(transaction) = self.transaction.take() else {
                    return Plan::Reply(Frame::error("ERR EXEC without MULTI"));
                };
                match (transaction.failed, transaction.shard) {
                    (true, _) => Plan::Reply(Frame::error(
                        "EXECABORT Transaction discarded because of previous errors.",
                    )),
                    (false, None) => Plan::Reply(Frame::Array(Vec::new())),
                    (false, Some(shard)) => Plan::Exec {
                        shard,
                        commands: transaction.commands,
                    },
                }
            }
            ("QUIT", _) => Plan::Quit,
            (_, Some(transaction)) => transaction.queue(args, plan(args, ring)),
            (_, None) => plan(args, ring),
        }
    }
}

impl Transaction {
    fn queue(&mut self, args: &[Bytes], decision: Plan) -> Plan {
        let refusal = match decision {
            Plan::Forward { shard } if self.shard.is_none_or(|chosen| chosen == shard) => {
                if self.commands.len() >= MAX_QUEUED {
                    Frame::error(format!("ERR a transaction holds at most {MAX_QUEUED} commands"))
                } else {
                    self.shard = Some(shard);
                    self.commands.push(args.to_vec());
                    return Plan::Reply(Frame::Simple(Bytes::from_static(b"QUEUED")));
                }
            }
            Plan::Forward { .. } | Plan::Split { .. } => {
                Frame::error("ERR the keys of a transaction must all live on one shard (use a hash tag)")
            }
            Plan::Reply(error @ Frame::Error(_)) => error,
            Plan::Reply(_) | Plan::Quit | Plan::Exec { .. } => {
                Frame::error("ERR this command is not supported inside a transaction")
            }
        };
        self.failed = true;
        Plan::Reply(refusal)
    }
}

/// Whether the command only reads, so that a read policy may send it to a replica.
pub fn is_read_only(name: &[u8]) -> bool {
    let mut buf = [0; MAX_NAME_LEN];
    upper_name(name, &mut buf).is_some_and(|name| {
        matches!(
            name,
            "GET"
                | "MGET"
                | "EXISTS"
                | "STRLEN"
                | "GETRANGE"
                | "SUBSTR"
                | "TTL"
                | "PTTL"
                | "TYPE"
                | "EXPIRETIME"
                | "PEXPIRETIME"
                | "HGET"
                | "HMGET"
                | "HGETALL"
                | "HKEYS"
                | "HVALS"
                | "HLEN"
                | "HEXISTS"
                | "HSTRLEN"
                | "HRANDFIELD"
                | "LRANGE"
                | "LLEN"
                | "LINDEX"
                | "LPOS"
                | "SMEMBERS"
                | "SISMEMBER"
                | "SMISMEMBER"
                | "SCARD"
                | "SRANDMEMBER"
                | "ZRANGE"
                | "ZRANGEBYSCORE"
                | "ZREVRANGE"
                | "ZREVRANGEBYSCORE"
                | "ZRANGEBYLEX"
                | "ZREVRANGEBYLEX"
                | "ZSCORE"
                | "ZMSCORE"
                | "ZCARD"
                | "ZCOUNT"
                | "ZLEXCOUNT"
                | "ZRANK"
                | "ZREVRANK"
                | "ZRANDMEMBER"
                | "GETBIT"
                | "BITCOUNT"
                | "BITPOS"
                | "PFCOUNT"
                | "XRANGE"
                | "XREVRANGE"
                | "XLEN"
                | "GEOPOS"
                | "GEODIST"
                | "GEOHASH"
                | "DUMP"
                | "OBJECT"
                | "MEMORY"
                | "SINTER"
                | "SUNION"
                | "SDIFF"
        )
    })
}

/// The first key of a keyed command (`None` for commands without keys or unknown ones).
pub fn first_key(args: &[Bytes]) -> Option<&Bytes> {
    let mut buf = [0; MAX_NAME_LEN];
    let name = upper_name(args.first()?, &mut buf)?;
    keys_of(name)?;
    args.get(1)
}

/// Decides what to do with `args` (never empty: the codec drops empty commands).
pub fn plan(args: &[Bytes], ring: &impl Locate) -> Plan {
    let Some(first) = args.first() else {
        return Plan::Reply(Frame::error("ERR empty command"));
    };
    let mut buf = [0; MAX_NAME_LEN];
    let Some(name) = upper_name(first, &mut buf) else {
        return Plan::Reply(unknown(first));
    };
    if let Some(reply) = local(name, args) {
        return reply;
    }
    if let Some(reason) = refusal(name) {
        return Plan::Reply(Frame::error(format!(
            "ERR '{}' is refused by the sharding ambassador: {reason}",
            name.to_ascii_lowercase()
        )));
    }
    let Some(keys) = keys_of(name) else {
        return Plan::Reply(unknown(first));
    };
    let wrong_arity = || {
        Plan::Reply(Frame::error(format!(
            "ERR wrong number of arguments for '{}' command",
            name.to_ascii_lowercase()
        )))
    };
    let no_shard = || Plan::Reply(Frame::error("ERR no shard map with shards is loaded"));
    match keys {
        Keys::First => match args.get(1) {
            None => wrong_arity(),
            Some(key) => ring
                .shard_of(key)
                .map_or_else(no_shard, |shard| Plan::Forward { shard }),
        },
        Keys::FirstTwo | Keys::AllSameShard => {
            let keys = match keys {
                Keys::FirstTwo if args.len() >= 3 => &args[1..3],
                Keys::AllSameShard if args.len() >= 2 => &args[1..],
                _ => return wrong_arity(),
            };
            let mut shards = keys.iter().map(|key| ring.shard_of(key));
            let Some(Some(shard)) = shards.next() else {
                return no_shard();
            };
            if shards.all(|other| other == Some(shard)) {
                Plan::Forward { shard }
            } else {
                Plan::Reply(Frame::error(format!(
                    "ERR '{}' is refused by the sharding ambassador: its keys live on different shards \
                     (use a hash tag to keep them together)",
                    name.to_ascii_lowercase()
                )))
            }
        }
        Keys::Each(merge) => {
            if args.len() < 2 {
                return wrong_arity();
            }
            split(args, 1, ring, merge).unwrap_or_else(no_shard)
        }
        Keys::Pairs => {
            if args.len() < 3 || args.len().is_multiple_of(2) {
                return wrong_arity();
            }
            split(args, 2, ring, Merge::AllOk).unwrap_or_else(no_shard)
        }
    }
}

/// Where the keys of a command are among its arguments: every `step`-th from `first` on (empty for
/// commands without keys, or an arity error). Used by the steps a reshard adds around a command.
pub fn key_positions(args: &[Bytes]) -> std::iter::StepBy<std::ops::Range<usize>> {
    let mut buf = [0; MAX_NAME_LEN];
    let keys = args
        .first()
        .and_then(|first| upper_name(first, &mut buf))
        .and_then(keys_of);
    let (end, step) = match keys {
        Some(Keys::First) => (args.len().min(2), 1),
        Some(Keys::FirstTwo) => (args.len().min(3), 1),
        Some(Keys::AllSameShard | Keys::Each(_)) => (args.len(), 1),
        Some(Keys::Pairs) => (args.len(), 2),
        None => (1, 1),
    };
    (1..end.max(1)).step_by(step)
}

/// Groups the keys (or key-value pairs, `stride` 2) by shard, keeping their order within a shard.
/// A command whose keys all live on one shard is forwarded whole.
fn split(args: &[Bytes], stride: usize, ring: &impl Locate, merge: Merge) -> Option<Plan> {
    let mut parts: Vec<Part> = Vec::new();
    let mut positions: Vec<Vec<usize>> = Vec::new();
    for (position, group) in args[1..].chunks(stride).enumerate() {
        let shard = ring.shard_of(&group[0])?;
        let index = match parts.iter().position(|part| part.shard == shard) {
            Some(index) => index,
            None => {
                parts.push(Part {
                    shard,
                    args: vec![args[0].clone()],
                });
                positions.push(Vec::new());
                parts.len() - 1
            }
        };
        parts[index].args.extend(group.iter().cloned());
        positions[index].push(position);
    }
    if let [only] = parts.as_slice() {
        return Some(Plan::Forward { shard: only.shard });
    }
    let merge = match merge {
        Merge::Values { .. } => Merge::Values {
            total: args.len() - 1,
            positions,
        },
        other => other,
    };
    Some(Plan::Split { parts, merge })
}

/// Commands answered without a shard.
fn local(name: &str, args: &[Bytes]) -> Option<Plan> {
    Some(match (name, args.len()) {
        ("PING", 1) => Plan::Reply(Frame::Simple(Bytes::from_static(b"PONG"))),
        ("PING", 2) | ("ECHO", 2) => Plan::Reply(Frame::Bulk(args[1].clone())),
        ("QUIT", _) => Plan::Quit,
        ("SELECT", 2) if args[1].as_ref() == b"0" => Plan::Reply(Frame::ok()),
        ("SELECT", 2) => Plan::Reply(Frame::error("ERR only database 0 is sharded")),
        _ => return None,
    })
}

fn unknown(name: &[u8]) -> Frame {
    let shown: String = String::from_utf8_lossy(name).chars().take(MAX_NAME_LEN).collect();
    Frame::error(format!("ERR unknown command '{shown}'"))
}

/// Merges the replies of a split command, given in the order of its parts. An error reply of any
/// part becomes the reply.
pub fn merge(merge: &Merge, replies: Vec<Frame>) -> Frame {
    if let Some(error) = replies.iter().find(|reply| matches!(reply, Frame::Error(_))) {
        return error.clone();
    }
    match merge {
        Merge::Sum => {
            let mut total: i64 = 0;
            for reply in &replies {
                match reply {
                    Frame::Integer(value) => total = total.saturating_add(*value),
                    _ => return unexpected(),
                }
            }
            Frame::Integer(total)
        }
        Merge::AllOk => {
            if replies.iter().all(|reply| *reply == Frame::ok()) {
                Frame::ok()
            } else {
                unexpected()
            }
        }
        Merge::Values { total, positions } => {
            let mut values = vec![Frame::Null; *total];
            for (reply, places) in replies.into_iter().zip(positions) {
                let Frame::Array(items) = reply else {
                    return unexpected();
                };
                if items.len() != places.len() {
                    return unexpected();
                }
                for (item, place) in items.into_iter().zip(places) {
                    if let Some(slot) = values.get_mut(*place) {
                        *slot = item;
                    }
                }
            }
            Frame::Array(values)
        }
    }
}

fn unexpected() -> Frame {
    Frame::error("ERR unexpected reply from a shard")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys name their shard: `k<digit>...` lives on shard `<digit>`.
    struct ByDigit;

    impl Locate for ByDigit {
        fn shard_of(&self, key: &[u8]) -> Option<usize> {
            key.get(1).map(|digit| usize::from(digit - b'0'))
        }
    }

    struct Empty;

    impl Locate for Empty {
        fn shard_of(&self, _: &[u8]) -> Option<usize> {
            None
        }
    }

    fn cmd(words: &str) -> Vec<Bytes> {
        words
            .split(' ')
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect()
    }

    fn bulk(text: &str) -> Frame {
        Frame::Bulk(Bytes::copy_from_slice(text.as_bytes()))
    }

    fn is_error_containing(plan: &Plan, text: &str) -> bool {
        matches!(plan, Plan::Reply(Frame::Error(message)) if String::from_utf8_lossy(message).contains(text))
    }

    #[test]
    fn single_key_commands_go_to_the_keys_shard_whatever_their_case() {
        assert_eq!(plan(&cmd("get k2"), &ByDigit), Plan::Forward { shard: 2 });
        assert_eq!(plan(&cmd("HSET k1 f v"), &ByDigit), Plan::Forward { shard: 1 });
    }

    #[test]
    fn mget_over_three_shards_is_split_and_remembers_where_each_value_goes() {
        let Plan::Split { parts, merge } = plan(&cmd("MGET k1a k2a k1b k3a"), &ByDigit) else {
            panic!("expected a split");
        };
        assert_eq!(
            parts[0],
            Part {
                shard: 1,
                args: cmd("MGET k1a k1b")
            }
        );
        assert_eq!(
            parts[1],
            Part {
                shard: 2,
                args: cmd("MGET k2a")
            }
        );
        assert_eq!(
            parts[2],
            Part {
                shard: 3,
                args: cmd("MGET k3a")
            }
        );
        assert_eq!(
            merge,
            Merge::Values {
                total: 4,
                positions: vec![vec![0, 2], vec![1], vec![3]]
            }
        );
        let replies = vec![
            Frame::Array(vec![bulk("1a"), Frame::Null]),
            Frame::Array(vec![bulk("2a")]),
            Frame::Array(vec![bulk("3a")]),
        ];
        assert_eq!(
            super::merge(&merge, replies),
            Frame::Array(vec![bulk("1a"), bulk("2a"), Frame::Null, bulk("3a")])
        );
    }

    #[test]
    fn mset_keeps_keys_with_their_values() {
        let Plan::Split { parts, merge } = plan(&cmd("MSET k1 a k2 b k1x c"), &ByDigit) else {
            panic!("expected a split");
        };
        assert_eq!(parts[0].args, cmd("MSET k1 a k1x c"));
        assert_eq!(parts[1].args, cmd("MSET k2 b"));
        assert_eq!(super::merge(&merge, vec![Frame::ok(), Frame::ok()]), Frame::ok());
        assert!(is_error_containing(
            &plan(&cmd("MSET k1 a k2"), &ByDigit),
            "wrong number"
        ));
    }

    #[test]
    fn del_exists_unlink_touch_sum_their_counts() {
        for name in ["DEL", "EXISTS", "UNLINK", "TOUCH"] {
            let Plan::Split { merge, .. } = plan(&cmd(&format!("{name} k1 k2")), &ByDigit) else {
                panic!("expected a split for {name}");
            };
            assert_eq!(
                super::merge(&merge, vec![Frame::Integer(1), Frame::Integer(2)]),
                Frame::Integer(3)
            );
        }
    }

    #[test]
    fn a_multi_key_command_on_one_shard_is_forwarded_whole() {
        assert_eq!(plan(&cmd("MGET k1a k1b"), &ByDigit), Plan::Forward { shard: 1 });
    }

    #[test]
    fn an_error_from_any_part_becomes_the_reply() {
        let error = Frame::error("ERR boom");
        assert_eq!(
            super::merge(&Merge::Sum, vec![Frame::Integer(1), error.clone()]),
            error
        );
    }

    #[test]
    fn cross_shard_rename_is_refused_and_same_shard_rename_forwarded() {
        assert!(is_error_containing(
            &plan(&cmd("RENAME k1 k2"), &ByDigit),
            "different shards"
        ));
        assert_eq!(plan(&cmd("RENAME k1a k1b"), &ByDigit), Plan::Forward { shard: 1 });
    }

    #[test]
    fn commands_that_would_touch_every_shard_or_hold_state_are_refused_never_forwarded() {
        for words in [
            "MULTI",
            "EXEC",
            "KEYS *",
            "SCAN 0",
            "FLUSHALL",
            "SUBSCRIBE k1",
            "PUBLISH k1 m",
            "BLPOP k1 0",
        ] {
            let decision = plan(&cmd(words), &ByDigit);
            assert!(is_error_containing(&decision, "refused"), "{words}: {decision:?}");
        }
    }

    #[test]
    fn a_transaction_on_one_shard_is_queued_locally_and_sent_whole_at_exec() {
        let mut session = Session::default();
        assert_eq!(session.plan(&cmd("MULTI"), &ByDigit), Plan::Reply(Frame::ok()));
        let queued = Plan::Reply(Frame::Simple(Bytes::from_static(b"QUEUED")));
        assert_eq!(session.plan(&cmd("SET k1a 1"), &ByDigit), queued);
        assert_eq!(session.plan(&cmd("INCR k1b"), &ByDigit), queued);
        assert_eq!(session.plan(&cmd("MGET k1a k1b"), &ByDigit), queued);
        assert_eq!(
            session.plan(&cmd("EXEC"), &ByDigit),
            Plan::Exec {
                shard: 1,
                commands: vec![cmd("SET k1a 1"), cmd("INCR k1b"), cmd("MGET k1a k1b")]
            }
        );
        assert_eq!(
            session.plan(&cmd("GET k2"), &ByDigit),
            Plan::Forward { shard: 2 },
            "the session is closed"
        );
    }

    #[test]
    fn a_transaction_spanning_shards_is_refused_and_aborted_at_exec() {
        let mut session = Session::default();
        session.plan(&cmd("MULTI"), &ByDigit);
        session.plan(&cmd("SET k1 1"), &ByDigit);
        assert!(is_error_containing(
            &session.plan(&cmd("SET k2 1"), &ByDigit),
            "one shard"
        ));
        assert!(is_error_containing(
            &session.plan(&cmd("EXEC"), &ByDigit),
            "EXECABORT"
        ));
    }

    #[test]
    fn an_unknown_command_in_a_transaction_aborts_it() {
        let mut session = Session::default();
        session.plan(&cmd("MULTI"), &ByDigit);
        assert!(is_error_containing(
            &session.plan(&cmd("NOPE k1"), &ByDigit),
            "unknown"
        ));
        assert!(is_error_containing(
            &session.plan(&cmd("EXEC"), &ByDigit),
            "EXECABORT"
        ));
    }

    #[test]
    fn exec_and_discard_without_multi_are_errors_and_an_empty_transaction_answers_nothing() {
        let mut session = Session::default();
        assert!(is_error_containing(
            &session.plan(&cmd("EXEC"), &ByDigit),
            "without MULTI"
        ));
        assert!(is_error_containing(
            &session.plan(&cmd("DISCARD"), &ByDigit),
            "without MULTI"
        ));
        session.plan(&cmd("MULTI"), &ByDigit);
        assert!(is_error_containing(
            &session.plan(&cmd("MULTI"), &ByDigit),
            "nested"
        ));
        assert_eq!(
            session.plan(&cmd("EXEC"), &ByDigit),
            Plan::Reply(Frame::Array(Vec::new()))
        );
        session.plan(&cmd("MULTI"), &ByDigit);
        session.plan(&cmd("SET k1 1"), &ByDigit);
        assert_eq!(session.plan(&cmd("DISCARD"), &ByDigit), Plan::Reply(Frame::ok()));
        assert!(is_error_containing(
            &session.plan(&cmd("EXEC"), &ByDigit),
            "without MULTI"
        ));
    }

    #[test]
    fn unknown_commands_get_an_error() {
        assert!(is_error_containing(
            &plan(&cmd("FROBNICATE k1"), &ByDigit),
            "unknown command 'FROBNICATE'"
        ));
        let long = "X".repeat(1000);
        assert!(is_error_containing(
            &plan(&cmd(&long), &ByDigit),
            "unknown command"
        ));
    }

    #[test]
    fn ping_echo_select_and_quit_are_answered_locally() {
        assert_eq!(
            plan(&cmd("PING"), &Empty),
            Plan::Reply(Frame::Simple(Bytes::from_static(b"PONG")))
        );
        assert_eq!(plan(&cmd("ECHO hi"), &Empty), Plan::Reply(bulk("hi")));
        assert_eq!(plan(&cmd("SELECT 0"), &Empty), Plan::Reply(Frame::ok()));
        assert!(is_error_containing(&plan(&cmd("SELECT 1"), &Empty), "database 0"));
        assert_eq!(plan(&cmd("QUIT"), &Empty), Plan::Quit);
    }

    #[test]
    fn without_a_shard_map_keyed_commands_get_an_error() {
        assert!(is_error_containing(&plan(&cmd("GET k"), &Empty), "no shard map"));
        assert!(is_error_containing(
            &plan(&cmd("MGET a b"), &Empty),
            "no shard map"
        ));
    }

    #[test]
    fn key_positions_name_the_keys_of_each_kind_of_command() {
        let cases: &[(&str, &[usize])] = &[
            ("GET k", &[1]),
            ("SET k v EX 10", &[1]),
            ("RENAME a b", &[1, 2]),
            ("SINTER a b c", &[1, 2, 3]),
            ("DEL a b", &[1, 2]),
            ("MSET a 1 b 2", &[1, 3]),
            ("PING", &[]),
            ("GET", &[]),
            ("NOPE a", &[]),
        ];
        for (words, expected) in cases {
            let positions: Vec<usize> = key_positions(&cmd(words)).collect();
            assert_eq!(positions, *expected, "{words}");
        }
    }

    #[test]
    fn a_command_without_its_key_gets_an_arity_error() {
        assert!(is_error_containing(
            &plan(&cmd("GET"), &ByDigit),
            "wrong number of arguments for 'get'"
        ));
        assert!(is_error_containing(&plan(&cmd("DEL"), &ByDigit), "wrong number"));
    }
}
