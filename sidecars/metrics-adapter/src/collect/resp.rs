//! The little of RESP2 the Redis collector and the health adapter's PING need: encoding a command
//! and parsing one reply out of a buffer (sans-IO: `Ok(None)` until the reply is whole).

/// One parsed reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// Why a reply could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    #[error("malformed reply: {0}")]
    Malformed(&'static str),
    #[error("reply longer than {0} bytes")]
    TooLarge(usize),
}

/// Appends `args` as a RESP array of bulk strings.
pub fn encode_command(out: &mut Vec<u8>, args: &[&str]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one reply at the start of `buf`: `Ok(Some((reply, bytes used)))`, `Ok(None)` when more
/// bytes are needed. Bulk strings longer than `limit` are refused.
pub fn parse(buf: &[u8], limit: usize) -> Result<Option<(Reply, usize)>, RespError> {
    parse_at(buf, 0, limit, 0)
}

fn line(buf: &[u8], start: usize) -> Option<(&[u8], usize)> {
    let end = buf.get(start..)?.windows(2).position(|w| w == b"\r\n")?;
    Some((&buf[start..start + end], start + end + 2))
}

fn number(text: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(RespError::Malformed("bad number"))
}

fn parse_at(buf: &[u8], start: usize, limit: usize, depth: u8) -> Result<Option<(Reply, usize)>, RespError> {
    if depth > 4 {
        return Err(RespError::Malformed("nested too deeply"));
    }
    let Some(&kind) = buf.get(start) else {
        return Ok(None);
    };
    let Some((text, next)) = line(buf, start + 1) else {
        if buf.len() - start > 64 * 1024 && kind != b'$' {
            return Err(RespError::Malformed("line without an end"));
        }
        return Ok(None);
    };
    let string = || String::from_utf8_lossy(text).into_owned();
    match kind {
        b'+' => Ok(Some((Reply::Simple(string()), next - start))),
        b'-' => Ok(Some((Reply::Error(string()), next - start))),
        b':' => Ok(Some((Reply::Integer(number(text)?), next - start))),
        b'$' => {
            let length = number(text)?;
            if length < 0 {
                return Ok(Some((Reply::Bulk(None), next - start)));
            }
            let length = usize::try_from(length).map_err(|_| RespError::Malformed("bad length"))?;
            if length > limit {
                return Err(RespError::TooLarge(limit));
            }
            let end = next + length;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(RespError::Malformed("bulk string without its end"));
            }
            Ok(Some((
                Reply::Bulk(Some(buf[next..end].to_vec())),
                end + 2 - start,
            )))
        }
        b'*' => {
            let count = number(text)?;
            if count < 0 {
                return Ok(Some((Reply::Array(None), next - start)));
            }
            if count > 1024 {
                return Err(RespError::Malformed("array too long"));
            }
            let mut items = Vec::new();
            let mut at = next;
            for _ in 0..count {
                match parse_at(buf, at, limit, depth + 1)? {
                    Some((item, used)) => {
                        items.push(item);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), at - start)))
        }
        _ => Err(RespError::Malformed("unknown reply type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode_command(&mut out, &["INFO", "ALL"]);
        assert_eq!(out, b"*2\r\n$4\r\nINFO\r\n$3\r\nALL\r\n");
    }

    #[test]
    fn replies_parse_once_whole_and_wait_for_more_before() {
        let whole = b"*2\r\n$9\r\ndatabases\r\n$2\r\n16\r\n+PONG\r\n";
        for cut in 0..whole.len() - 7 {
            assert_eq!(parse(&whole[..cut], 1024).unwrap(), None, "cut at {cut}");
        }
        let (reply, used) = parse(whole, 1024).unwrap().unwrap();
        assert_eq!(
            reply,
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"databases".to_vec())),
                Reply::Bulk(Some(b"16".to_vec()))
            ]))
        );
        assert_eq!(
            parse(&whole[used..], 1024).unwrap(),
            Some((Reply::Simple("PONG".into()), 7))
        );
        assert_eq!(
            parse(b"-ERR unknown command\r\n", 10).unwrap().unwrap().0,
            Reply::Error("ERR unknown command".into())
        );
    }

    #[test]
    fn garbage_and_oversized_replies_are_errors() {
        assert!(parse(b"?what\r\n", 10).is_err());
        assert!(parse(b"$x\r\n", 10).is_err());
        assert_eq!(parse(b"$100\r\n", 10), Err(RespError::TooLarge(10)));
        assert!(parse(b"$2\r\nabcd\r\n", 10).is_err());
    }
}
