//! RESP2, sans-IO: bytes in a `BytesMut` become frames, frames become bytes. Nothing here reads or
//! writes a socket, so every edge (split frames, oversized lengths, garbage) is unit-tested.
//!
//! A frame is first *checked* (is all of it in the buffer, and within the limits?) and only then
//! taken out of the buffer, so an incomplete frame costs no allocation and a length header that
//! claims more than the limits is refused as soon as the header itself has arrived.

use bytes::{BufMut, Bytes, BytesMut};

/// Upper bounds on what a peer may send; anything larger is a protocol error, never an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest bulk string.
    pub max_bulk_len: usize,
    /// Most elements of one array (and most arguments of one command).
    pub max_array_len: usize,
    /// Longest line: an inline command, a simple string, an error, a length header.
    pub max_line_len: usize,
    /// Deepest nesting of arrays (replies such as `SCAN` nest; commands never do).
    pub max_depth: usize,
    /// Largest whole frame: many bulk strings each within `max_bulk_len` can still add up.
    pub max_frame_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: 16 * 1024 * 1024,
            max_array_len: 1024 * 1024,
            max_line_len: 64 * 1024,
            max_depth: 8,
            max_frame_len: 64 * 1024 * 1024,
        }
    }
}

/// A RESP2 value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Simple(Bytes),
    Error(Bytes),
    Integer(i64),
    Bulk(Bytes),
    /// `$-1`.
    Null,
    /// `*-1`.
    NullArray,
    Array(Vec<Frame>),
}

impl Frame {
    /// An error reply; `message` starts with its code (`ERR`, `WRONGTYPE`, ...).
    pub fn error(message: impl Into<String>) -> Frame {
        let message: String = message.into();
        // Line breaks would end the frame early; an error is one line.
        Frame::Error(Bytes::from(message.replace(['\r', '\n'], " ")))
    }

    /// `+OK`.
    pub fn ok() -> Frame {
        Frame::Simple(Bytes::from_static(b"OK"))
    }

    /// Appends the wire form of the frame.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Frame::Simple(text) => line(out, b'+', text),
            Frame::Error(text) => line(out, b'-', text),
            Frame::Integer(value) => line(out, b':', value.to_string().as_bytes()),
            Frame::Bulk(data) => {
                line(out, b'$', data.len().to_string().as_bytes());
                out.put_slice(data);
                out.put_slice(b"\r\n");
            }
            Frame::Null => out.put_slice(b"$-1\r\n"),
            Frame::NullArray => out.put_slice(b"*-1\r\n"),
            Frame::Array(items) => {
                line(out, b'*', items.len().to_string().as_bytes());
                for item in items {
                    item.encode(out);
                }
            }
        }
    }

    /// The wire form of the frame.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }
}

fn line(out: &mut BytesMut, kind: u8, text: &[u8]) {
    out.reserve(text.len() + 3);
    out.put_u8(kind);
    out.put_slice(text);
    out.put_slice(b"\r\n");
}

/// Encodes a command as an array of bulk strings, the form every server accepts.
pub fn encode_command<B: AsRef<[u8]>>(args: &[B], out: &mut BytesMut) {
    line(out, b'*', args.len().to_string().as_bytes());
    for arg in args {
        let arg = arg.as_ref();
        line(out, b'$', arg.len().to_string().as_bytes());
        out.put_slice(arg);
        out.put_slice(b"\r\n");
    }
}

/// Why bytes are not RESP2 within the limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid frame type byte 0x{0:02x}")]
    InvalidType(u8),
    #[error("invalid length or integer")]
    InvalidInteger,
    #[error("line without CRLF terminator")]
    MissingCrlf,
    #[error("line longer than {max} bytes")]
    LineTooLong { max: usize },
    #[error("bulk length {len} over the limit of {max} bytes")]
    BulkTooLarge { len: i64, max: usize },
    #[error("array of {len} elements over the limit of {max}")]
    ArrayTooLarge { len: i64, max: usize },
    #[error("frame larger than {max} bytes")]
    FrameTooLarge { max: usize },
    #[error("arrays nested deeper than {max}")]
    TooDeep { max: usize },
    #[error("a command must be an array of bulk strings")]
    InvalidCommand,
    #[error("empty command")]
    EmptyCommand,
    #[error("inline command with unbalanced quotes")]
    UnbalancedQuotes,
    #[error("connection closed in the middle of a frame")]
    ClosedMidFrame,
}

impl ProtocolError {
    /// A fixed label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            ProtocolError::LineTooLong { .. }
            | ProtocolError::BulkTooLarge { .. }
            | ProtocolError::ArrayTooLarge { .. }
            | ProtocolError::FrameTooLarge { .. }
            | ProtocolError::TooDeep { .. } => "too_large",
            ProtocolError::ClosedMidFrame => "closed_mid_frame",
            _ => "malformed",
        }
    }
}

/// Takes one whole frame out of `buf`: `Ok(None)` while the frame is incomplete (nothing is
/// consumed), the frame's wire bytes once it is all there. Replies are forwarded as these bytes,
/// untouched; [`parse_frame`] reads them when they must be merged.
pub fn decode_raw(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Bytes>, ProtocolError> {
    match check(buf, 0, limits, 0)? {
        Some(end) if end > limits.max_frame_len => Err(ProtocolError::FrameTooLarge {
            max: limits.max_frame_len,
        }),
        Some(end) => Ok(Some(buf.split_to(end).freeze())),
        // The frame is still arriving, and already larger than allowed.
        None if buf.len() > limits.max_frame_len => Err(ProtocolError::FrameTooLarge {
            max: limits.max_frame_len,
        }),
        None => Ok(None),
    }
}

/// Takes one whole frame out of `buf` and parses it.
pub fn decode_frame(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Frame>, ProtocolError> {
    match decode_raw(buf, limits)? {
        Some(raw) => parse_frame(&raw).map(Some),
        None => Ok(None),
    }
}

/// Parses the wire bytes of one frame already taken by [`decode_raw`] (which bounded its size and
/// depth; other bytes are not to be given here).
pub fn parse_frame(raw: &Bytes) -> Result<Frame, ProtocolError> {
    let mut position = 0;
    parse(raw, &mut position)
}

/// A client command: its arguments, and the wire bytes when it came as an array of bulk strings
/// (so a command bound for one shard is forwarded without being encoded again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub args: Vec<Bytes>,
    pub raw: Option<Bytes>,
}

/// Takes one whole command out of `buf`: an array of bulk strings or an inline command (a line of
/// space-separated words, as `redis-cli` and `telnet` users send). Empty inline lines are
/// skipped, as Redis skips them.
pub fn decode_command(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Command>, ProtocolError> {
    loop {
        let Some(first) = buf.first() else {
            return Ok(None);
        };
        if *first == b'*' {
            let Some(raw) = decode_raw(buf, limits)? else {
                return Ok(None);
            };
            let args = command_args(&raw)?;
            if args.is_empty() {
                // Redis ignores `*0`; so do we, and go on to the next command.
                continue;
            }
            return Ok(Some(Command { args, raw: Some(raw) }));
        }
        let Some(end) = find_crlf_or_lf(buf, 0, limits.max_line_len)? else {
            return Ok(None);
        };
        let line = buf.split_to(end.next).freeze().slice(..end.text_end);
        let args = split_inline(&line, limits)?;
        if !args.is_empty() {
            return Ok(Some(Command { args, raw: None }));
        }
    }
}

/// The arguments of a command frame that [`check`] accepted, straight into one vector: every
/// command goes through here, so no intermediate [`Frame`] is built.
fn command_args(raw: &Bytes) -> Result<Vec<Bytes>, ProtocolError> {
    let mut position = 0;
    let count = match length_header(raw, &mut position, b'*')? {
        // `*-1` is a null array, not a command.
        None => return Err(ProtocolError::InvalidCommand),
        Some(count) => count,
    };
    // `check` bounded the count; the capacity is bounded by the bytes present too.
    let mut args = Vec::with_capacity(count.min(raw.len() / 4));
    for _ in 0..count {
        let Some(len) = length_header(raw, &mut position, b'$')? else {
            return Err(ProtocolError::InvalidCommand);
        };
        let end = position
            .checked_add(len)
            .filter(|end| end + 2 <= raw.len())
            .ok_or(ProtocolError::MissingCrlf)?;
        args.push(raw.slice(position..end));
        position = end + 2;
    }
    Ok(args)
}

/// Reads a `<kind><length>\r\n` header at `position`: `None` for a length of -1. Another type
/// byte means the frame is not a command.
fn length_header(raw: &[u8], position: &mut usize, kind: u8) -> Result<Option<usize>, ProtocolError> {
    if raw.get(*position) != Some(&kind) {
        return Err(ProtocolError::InvalidCommand);
    }
    let start = *position + 1;
    let text_len = crlf_at(&raw[start.min(raw.len())..]).ok_or(ProtocolError::MissingCrlf)?;
    let len = integer(&raw[start..start + text_len])?;
    *position = start + text_len + 2;
    if len == -1 {
        return Ok(None);
    }
    usize::try_from(len)
        .map(Some)
        .map_err(|_| ProtocolError::InvalidInteger)
}

/// Index of the first CRLF in `bytes`.
fn crlf_at(bytes: &[u8]) -> Option<usize> {
    let newline = bytes.iter().position(|b| *b == b'\n')?;
    (newline > 0 && bytes[newline - 1] == b'\r').then(|| newline - 1)
}

/// Room kept free in a read buffer before reading into it.
const READ_ROOM: usize = 1024;
/// What a read buffer grows by when it runs out of room: a connection sending small commands
/// holds a few KiB, not a large buffer per client.
const READ_CHUNK: usize = 4 * 1024;
/// An empty buffer larger than this (left by a large value) is let go, so an idle connection
/// does not keep the memory of its largest frame.
const KEEP_AT_MOST: usize = 64 * 1024;

/// Makes room in `buf` for the next read. Frames taken out of the buffer keep its memory alive
/// while they are in flight, so asking for a whole chunk every time would allocate a fresh buffer
/// per read; room is only added when less than [`READ_ROOM`] is left. A frame larger than a chunk
/// is read in steps as large as what is already buffered, so a large value takes a few reads, not
/// one per chunk (what is buffered was sent, unlike a length the frame only claims).
pub fn reserve_for_read(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > KEEP_AT_MOST {
        *buf = BytesMut::new();
    }
    if buf.capacity() - buf.len() < READ_ROOM {
        buf.reserve(READ_CHUNK.max(buf.len()));
    }
}

/// Called when the peer closed: leftover bytes mean it closed in the middle of a frame.
pub fn finish(buf: &BytesMut) -> Result<(), ProtocolError> {
    if buf.iter().all(|b| b.is_ascii_whitespace()) {
        Ok(())
    } else {
        Err(ProtocolError::ClosedMidFrame)
    }
}

struct LineEnd {
    /// Index just past the line's text.
    text_end: usize,
    /// Index of the next line.
    next: usize,
}

/// Inline commands may end in a bare LF (as Redis accepts from `telnet`).
fn find_crlf_or_lf(buf: &[u8], start: usize, max: usize) -> Result<Option<LineEnd>, ProtocolError> {
    let window = &buf[start..buf.len().min(start + max + 2)];
    match window.iter().position(|b| *b == b'\n') {
        Some(newline) => {
            let text_end = if newline > 0 && window[newline - 1] == b'\r' {
                newline - 1
            } else {
                newline
            };
            if text_end > max {
                return Err(ProtocolError::LineTooLong { max });
            }
            Ok(Some(LineEnd {
                text_end: start + text_end,
                next: start + newline + 1,
            }))
        }
        None if window.len() > max + 1 => Err(ProtocolError::LineTooLong { max }),
        None => Ok(None),
    }
}

/// Splits an inline command into words; double and single quotes group words with spaces.
fn split_inline(line: &Bytes, limits: &Limits) -> Result<Vec<Bytes>, ProtocolError> {
    let mut args = Vec::new();
    let mut index = 0;
    while index < line.len() {
        while index < line.len() && line[index].is_ascii_whitespace() {
            index += 1;
        }
        if index == line.len() {
            break;
        }
        if args.len() == limits.max_array_len {
            return Err(ProtocolError::ArrayTooLarge {
                len: i64::try_from(args.len() + 1).unwrap_or(i64::MAX),
                max: limits.max_array_len,
            });
        }
        let quote = line[index];
        if quote == b'"' || quote == b'\'' {
            let start = index + 1;
            let Some(len) = line[start..].iter().position(|b| *b == quote) else {
                return Err(ProtocolError::UnbalancedQuotes);
            };
            args.push(line.slice(start..start + len));
            index = start + len + 1;
        } else {
            let start = index;
            while index < line.len() && !line[index].is_ascii_whitespace() {
                index += 1;
            }
            args.push(line.slice(start..index));
        }
    }
    Ok(args)
}

/// Where the frame starting at `start` ends, `None` if it is not all in `buf` yet.
fn check(buf: &[u8], start: usize, limits: &Limits, depth: usize) -> Result<Option<usize>, ProtocolError> {
    let Some(kind) = buf.get(start) else {
        return Ok(None);
    };
    let Some((text_end, next)) = header_line(buf, start + 1, limits.max_line_len)? else {
        return Ok(None);
    };
    let text = &buf[start + 1..text_end];
    match kind {
        b'+' | b'-' => Ok(Some(next)),
        b':' => integer(text).map(|_| Some(next)),
        b'$' => {
            let len = integer(text)?;
            if len == -1 {
                return Ok(Some(next));
            }
            let size = usize::try_from(len)
                .ok()
                .filter(|size| *size <= limits.max_bulk_len)
                .ok_or(ProtocolError::BulkTooLarge {
                    len,
                    max: limits.max_bulk_len,
                })?;
            let end = next + size;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProtocolError::MissingCrlf);
            }
            Ok(Some(end + 2))
        }
        b'*' => {
            let len = integer(text)?;
            if len == -1 {
                return Ok(Some(next));
            }
            let count = usize::try_from(len)
                .ok()
                .filter(|count| *count <= limits.max_array_len)
                .ok_or(ProtocolError::ArrayTooLarge {
                    len,
                    max: limits.max_array_len,
                })?;
            if count > 0 && depth >= limits.max_depth {
                return Err(ProtocolError::TooDeep {
                    max: limits.max_depth,
                });
            }
            let mut position = next;
            for _ in 0..count {
                match check(buf, position, limits, depth + 1)? {
                    Some(end) => position = end,
                    None => return Ok(None),
                }
            }
            Ok(Some(position))
        }
        other => Err(ProtocolError::InvalidType(*other)),
    }
}

/// A CRLF-terminated line starting at `start`: `(text end, next line)`.
fn header_line(buf: &[u8], start: usize, max: usize) -> Result<Option<(usize, usize)>, ProtocolError> {
    let window = &buf[start.min(buf.len())..buf.len().min(start + max + 2)];
    match window.iter().position(|b| *b == b'\n') {
        Some(0) => Err(ProtocolError::MissingCrlf),
        Some(newline) if window[newline - 1] == b'\r' => Ok(Some((start + newline - 1, start + newline + 1))),
        Some(_) => Err(ProtocolError::MissingCrlf),
        None if window.len() > max + 1 => Err(ProtocolError::LineTooLong { max }),
        None => Ok(None),
    }
}

/// A RESP integer: an optional minus and at least one digit, nothing else.
fn integer(text: &[u8]) -> Result<i64, ProtocolError> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ProtocolError::InvalidInteger);
    }
    let mut value: i64 = 0;
    for digit in digits {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(digit - b'0')))
            .ok_or(ProtocolError::InvalidInteger)?;
    }
    Ok(if negative { -value } else { value })
}

/// Parses a frame that [`check`] accepted; slices share the buffer.
fn parse(raw: &Bytes, position: &mut usize) -> Result<Frame, ProtocolError> {
    let kind = *raw.get(*position).ok_or(ProtocolError::MissingCrlf)?;
    let text_start = *position + 1;
    let text_len = raw[text_start..]
        .windows(2)
        .position(|pair| pair == b"\r\n")
        .ok_or(ProtocolError::MissingCrlf)?;
    let text_end = text_start + text_len;
    *position = text_end + 2;
    let text = raw.slice(text_start..text_end);
    match kind {
        b'+' => Ok(Frame::Simple(text)),
        b'-' => Ok(Frame::Error(text)),
        b':' => integer(&text).map(Frame::Integer),
        b'$' => {
            let len = integer(&text)?;
            if len == -1 {
                return Ok(Frame::Null);
            }
            let size = usize::try_from(len).map_err(|_| ProtocolError::InvalidInteger)?;
            let start = *position;
            let end = start.checked_add(size).filter(|end| end + 2 <= raw.len());
            let end = end.ok_or(ProtocolError::MissingCrlf)?;
            *position = end + 2;
            Ok(Frame::Bulk(raw.slice(start..end)))
        }
        b'*' => {
            let len = integer(&text)?;
            if len == -1 {
                return Ok(Frame::NullArray);
            }
            let count = usize::try_from(len).map_err(|_| ProtocolError::InvalidInteger)?;
            // `check` bounded the count; the capacity is bounded by the bytes present too.
            let mut items = Vec::with_capacity(count.min(raw.len() / 3));
            for _ in 0..count {
                items.push(parse(raw, position)?);
            }
            Ok(Frame::Array(items))
        }
        other => Err(ProtocolError::InvalidType(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(bytes: &[u8]) -> BytesMut {
        BytesMut::from(bytes)
    }

    fn bulk(text: &str) -> Frame {
        Frame::Bulk(Bytes::copy_from_slice(text.as_bytes()))
    }

    fn sample_frames() -> Vec<Frame> {
        vec![
            Frame::ok(),
            Frame::error("ERR wrong number of arguments"),
            Frame::Integer(-42),
            Frame::Integer(i64::MAX),
            bulk(""),
            bulk("hello\r\nworld"),
            Frame::Null,
            Frame::NullArray,
            Frame::Array(vec![]),
            Frame::Array(vec![
                bulk("a"),
                Frame::Null,
                Frame::Array(vec![Frame::Integer(1), bulk("b")]),
            ]),
        ]
    }

    #[test]
    fn every_frame_survives_a_round_trip() {
        for frame in sample_frames() {
            let mut wire = BytesMut::new();
            frame.encode(&mut wire);
            let decoded = decode_frame(&mut wire, &Limits::default()).unwrap();
            assert_eq!(decoded, Some(frame));
            assert!(wire.is_empty());
        }
    }

    #[test]
    fn an_incomplete_frame_consumes_nothing_until_its_last_byte_arrives() {
        let wire = Frame::Array(vec![bulk("SET"), bulk("key"), bulk("value")]).to_bytes();
        for cut in 0..wire.len() {
            let mut partial = buf(&wire[..cut]);
            assert_eq!(
                decode_frame(&mut partial, &Limits::default()),
                Ok(None),
                "cut at {cut}"
            );
            assert_eq!(partial.len(), cut);
        }
    }

    #[test]
    fn pipelined_frames_split_at_random_points_decode_in_order() {
        // A small deterministic generator: the test must not depend on a random crate.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            usize::try_from(state % bound as u64).unwrap()
        };
        let frames = sample_frames();
        let mut wire = BytesMut::new();
        for frame in &frames {
            frame.encode(&mut wire);
        }
        for _ in 0..500 {
            let mut input = BytesMut::new();
            let mut decoded = Vec::new();
            let mut offset = 0;
            while offset < wire.len() {
                let step = 1 + next(12);
                let end = (offset + step).min(wire.len());
                input.extend_from_slice(&wire[offset..end]);
                offset = end;
                while let Some(frame) = decode_frame(&mut input, &Limits::default()).unwrap() {
                    decoded.push(frame);
                }
            }
            assert_eq!(decoded, frames);
            assert!(input.is_empty());
        }
    }

    #[test]
    fn random_bytes_never_panic_and_every_decode_consumes_or_stops() {
        // Bytes drawn mostly from RESP's own alphabet, so that many inputs get deep into the parser.
        const ALPHABET: &[u8] = b"*$:+-\r\n\r\n0123456789-1ab \"'";
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let limits = Limits {
            max_depth: 3,
            max_array_len: 8,
            max_bulk_len: 64,
            ..Limits::default()
        };
        for _ in 0..20_000 {
            let len = usize::try_from(next() % 48).unwrap();
            let input: Vec<u8> = (0..len)
                .map(|_| ALPHABET[usize::try_from(next() % ALPHABET.len() as u64).unwrap()])
                .collect();
            let mut commands = buf(&input);
            while let Ok(Some(_)) = decode_command(&mut commands, &limits) {}
            let mut frames = buf(&input);
            loop {
                let before = frames.len();
                match decode_frame(&mut frames, &limits) {
                    Ok(Some(_)) => assert!(frames.len() < before, "a decoded frame consumes bytes"),
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn a_bulk_claiming_512_megabytes_is_refused_before_any_data_arrives() {
        let mut input = buf(b"*2\r\n$3\r\nGET\r\n$536870912\r\n");
        assert_eq!(
            decode_command(&mut input, &Limits::default()),
            Err(ProtocolError::BulkTooLarge {
                len: 536_870_912,
                max: 16 * 1024 * 1024
            })
        );
    }

    #[test]
    fn an_array_over_the_limit_is_refused() {
        let limits = Limits {
            max_array_len: 3,
            ..Limits::default()
        };
        let mut input = buf(b"*4\r\n");
        assert!(matches!(
            decode_command(&mut input, &limits),
            Err(ProtocolError::ArrayTooLarge { len: 4, max: 3 })
        ));
    }

    #[test]
    fn a_line_without_an_end_is_refused_once_over_the_limit() {
        let limits = Limits {
            max_line_len: 16,
            ..Limits::default()
        };
        assert_eq!(decode_command(&mut buf(b"GET aaaaaaaa"), &limits), Ok(None));
        assert_eq!(
            decode_command(&mut buf(b"GET aaaaaaaaaaaaaaaaaaaaaaaaaaaa"), &limits),
            Err(ProtocolError::LineTooLong { max: 16 })
        );
        assert_eq!(
            decode_frame(&mut buf(b"+aaaaaaaaaaaaaaaaaaaaaaaa"), &limits),
            Err(ProtocolError::LineTooLong { max: 16 })
        );
    }

    #[test]
    fn many_bulks_within_their_limit_still_cannot_exceed_the_frame_limit() {
        let limits = Limits {
            max_frame_len: 64,
            ..Limits::default()
        };
        let big = Frame::Array(vec![bulk(&"x".repeat(40)), bulk(&"y".repeat(40))]).to_bytes();
        assert_eq!(
            decode_frame(&mut buf(&big), &limits),
            Err(ProtocolError::FrameTooLarge { max: 64 })
        );
        assert_eq!(
            decode_frame(&mut buf(&big[..70]), &limits),
            Err(ProtocolError::FrameTooLarge { max: 64 }),
            "refused while still arriving"
        );
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_refused() {
        let limits = Limits {
            max_depth: 2,
            ..Limits::default()
        };
        assert_eq!(
            decode_frame(&mut buf(b"*1\r\n*1\r\n*1\r\n:1\r\n"), &limits),
            Err(ProtocolError::TooDeep { max: 2 })
        );
        assert!(decode_frame(&mut buf(b"*1\r\n*1\r\n:1\r\n"), &limits)
            .unwrap()
            .is_some());
    }

    #[test]
    fn malformed_input_is_an_error_not_a_wait() {
        let cases: [(&[u8], ProtocolError); 8] = [
            (b"!oops\r\n", ProtocolError::InvalidType(b'!')),
            (b"$abc\r\n", ProtocolError::InvalidInteger),
            (
                b"$-2\r\n",
                ProtocolError::BulkTooLarge {
                    len: -2,
                    max: 16 * 1024 * 1024,
                },
            ),
            (
                b"*-5\r\n",
                ProtocolError::ArrayTooLarge {
                    len: -5,
                    max: 1024 * 1024,
                },
            ),
            (b"$3\r\nabcXY", ProtocolError::MissingCrlf),
            (b":12\n", ProtocolError::MissingCrlf),
            (b":\r\n", ProtocolError::InvalidInteger),
            (b":99999999999999999999\r\n", ProtocolError::InvalidInteger),
        ];
        for (input, error) in cases {
            assert_eq!(
                decode_frame(&mut buf(input), &Limits::default()),
                Err(error),
                "{input:?}"
            );
        }
    }

    #[test]
    fn a_command_must_be_an_array_of_bulk_strings() {
        assert_eq!(
            decode_command(&mut buf(b"*2\r\n$3\r\nGET\r\n:1\r\n"), &Limits::default()),
            Err(ProtocolError::InvalidCommand)
        );
    }

    #[test]
    fn a_null_a_nested_array_or_a_null_array_is_not_a_command() {
        for input in [
            &b"*2\r\n$3\r\nGET\r\n$-1\r\n"[..],
            b"*2\r\n$3\r\nGET\r\n*1\r\n$1\r\nk\r\n",
            b"*2\r\n$3\r\nGET\r\n+k\r\n",
            b"*-1\r\n",
        ] {
            assert_eq!(
                decode_command(&mut buf(input), &Limits::default()),
                Err(ProtocolError::InvalidCommand),
                "{input:?}"
            );
        }
    }

    #[test]
    fn a_read_buffer_is_reused_while_it_has_room() {
        let mut input = BytesMut::with_capacity(16 * 1024);
        input.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
        let before = input.as_ptr();
        let command = decode_command(&mut input, &Limits::default()).unwrap().unwrap();
        reserve_for_read(&mut input);
        assert_eq!(input.as_ptr(), before.wrapping_add(14), "no new allocation");
        drop(command);
        let mut full = BytesMut::with_capacity(64);
        reserve_for_read(&mut full);
        assert!(full.capacity() >= 4 * 1024);
    }

    #[test]
    fn a_read_buffer_grows_with_a_large_frame_and_is_let_go_once_empty() {
        let mut input = BytesMut::new();
        let mut reads = 0;
        while input.len() < 1024 * 1024 {
            reserve_for_read(&mut input);
            let room = input.capacity() - input.len();
            input.resize(input.len() + room, b'x');
            reads += 1;
        }
        assert!(reads < 20, "a 1 MiB frame took {reads} reads");
        input.clear();
        reserve_for_read(&mut input);
        assert!(input.capacity() < 64 * 1024, "{} bytes kept", input.capacity());
    }

    #[test]
    fn a_command_keeps_its_wire_bytes_for_forwarding() {
        let wire = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n";
        let mut input = buf(wire);
        let first = decode_command(&mut input, &Limits::default()).unwrap().unwrap();
        assert_eq!(
            first.args,
            vec![Bytes::from_static(b"GET"), Bytes::from_static(b"k")]
        );
        assert_eq!(first.raw.as_deref(), Some(&wire[..20]));
        let second = decode_command(&mut input, &Limits::default()).unwrap().unwrap();
        assert_eq!(second.args, vec![Bytes::from_static(b"PING")]);
    }

    #[test]
    fn inline_commands_split_on_spaces_and_honour_quotes() {
        let mut input = buf(b"\r\nSET  greeting \"hello world\"\nGET 'a b'\r\n");
        let set = decode_command(&mut input, &Limits::default()).unwrap().unwrap();
        assert_eq!(
            set.args,
            vec![
                Bytes::from_static(b"SET"),
                Bytes::from_static(b"greeting"),
                Bytes::from_static(b"hello world")
            ]
        );
        assert_eq!(set.raw, None);
        let get = decode_command(&mut input, &Limits::default()).unwrap().unwrap();
        assert_eq!(get.args[1], Bytes::from_static(b"a b"));
        assert_eq!(
            decode_command(&mut buf(b"GET \"open\r\n"), &Limits::default()),
            Err(ProtocolError::UnbalancedQuotes)
        );
    }

    #[test]
    fn an_empty_array_command_is_skipped() {
        let mut input = buf(b"*0\r\n*1\r\n$4\r\nPING\r\n");
        let ping = decode_command(&mut input, &Limits::default()).unwrap().unwrap();
        assert_eq!(ping.args, vec![Bytes::from_static(b"PING")]);
    }

    #[test]
    fn closing_with_a_partial_frame_left_is_an_error() {
        assert_eq!(
            finish(&buf(b"*2\r\n$3\r\nGE")),
            Err(ProtocolError::ClosedMidFrame)
        );
        assert_eq!(finish(&buf(b"")), Ok(()));
        assert_eq!(finish(&buf(b"\r\n")), Ok(()));
    }

    #[test]
    fn encode_command_writes_bulk_strings() {
        let mut out = BytesMut::new();
        encode_command(&["MGET", "a"], &mut out);
        assert_eq!(&out[..], b"*2\r\n$4\r\nMGET\r\n$1\r\na\r\n");
    }

    #[test]
    fn errors_are_one_line() {
        assert_eq!(
            Frame::error("ERR a\r\nb").to_bytes(),
            Bytes::from_static(b"-ERR a  b\r\n")
        );
    }
}
