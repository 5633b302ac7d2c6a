//! The HTTP/1.1 codec, sans IO, in one place: a client's request head parsed with httparse (the
//! fast path's, [`parse_request`]), and towards backends the request head written from parts, the
//! response head parsed, and the response body decoded from a buffer by its framing
//! (`content-length`, `chunked`, or up to the end of the connection). [`crate::transport::fast`]
//! drives the first over client connections, [`crate::transport::upstream`] the rest over pooled
//! backend connections, each from the request's own task.

use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use http_body_util::Empty;

use crate::{transport::added::AddedHeaders, transport::hop_by_hop};

/// Largest response head (and chunked trailer section) accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header lines the fast path parses in a request head (the default `limits.maxHeaderCount`);
/// a head with more goes to hyper, which applies a larger configured limit.
const MAX_REQUEST_HEADERS: usize = 200;
/// Most header lines in a response head, as hyper's client allows.
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (hex size plus extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// Why a backend's response could not be read.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("writing the request: {0}")]
    Write(#[source] std::io::Error),
    #[error("reading the response: {0}")]
    Read(#[source] std::io::Error),
    #[error("the connection failed in the middle of the response: {0}")]
    Broken(#[source] std::io::Error),
    #[error("the connection closed before a response")]
    ClosedBeforeResponse,
    #[error("the connection closed in the middle of the response head")]
    ClosedInHead,
    #[error("the connection closed in the middle of the response body")]
    ClosedInBody,
    #[error("malformed response head: {0}")]
    Head(#[source] httparse::Error),
    #[error("the response head is larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("malformed chunked body: {0}")]
    Chunk(&'static str),
}

impl H1Error {
    /// Nothing of a response arrived: on a reused connection, the backend had probably closed it
    /// while it sat idle.
    pub fn nothing_received(&self) -> bool {
        matches!(
            self,
            H1Error::Write(_) | H1Error::Read(_) | H1Error::ClosedBeforeResponse
        )
    }
}

/// A request whose body, if any, is in memory, borrowed for one exchange: a retry sends the same
/// one again without a copy.
pub struct BufferedRequest<'a> {
    pub method: &'a Method,
    /// The origin-form target (path and query); empty means `/`.
    pub target: &'a str,
    pub headers: &'a HeaderMap,
    /// Written after `headers`.
    pub added: &'a AddedHeaders,
    pub body: Option<&'a Bytes>,
}

/// Appends the request head: request line, headers (`host` as the endpoint's address when there
/// is none, a `content-length` for a body that has none), blank line. The body is not written.
pub fn encode_request(request: &BufferedRequest<'_>, host: &str, out: &mut BytesMut) {
    out.extend_from_slice(request.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(if request.target.is_empty() {
        b"/"
    } else {
        request.target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // Noted while writing, rather than looked up in the map: standard names compare cheaply.
    let (mut has_host, mut has_length) = (false, false);
    for (name, value) in request.headers {
        has_host |= *name == header::HOST;
        has_length |= *name == header::CONTENT_LENGTH;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in request.added.lines() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if !has_host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !has_length {
        match request.body.map(Bytes::len) {
            Some(length) => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(length.to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            // What hyper sends for an empty body of a method that usually has one.
            None if matches!(*request.method, Method::POST | Method::PUT | Method::PATCH) => {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            None => {}
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// A parsed response head, with what its connection headers and framing headers said.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    /// The end-to-end header lines; the hop-by-hop ones too when `hop_by_hop_removed` is false.
    pub headers: RawHeaders,
    /// The backend keeps the connection open after this response.
    pub keep_alive: bool,
    /// The hop-by-hop headers were left out of `headers`. They stay (for the proxy to remove)
    /// on a `101` and when `connection` names other headers, which then go as well.
    pub hop_by_hop_removed: bool,
    /// Whether the last transfer coding is `chunked`; `None` without `transfer-encoding`.
    chunked: Option<bool>,
}

/// What the `content-length` lines of a head said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ContentLength {
    Absent,
    Valid(u64),
    /// Not a number, or lines that disagree.
    Invalid(&'static str),
}

/// Where one header line lies in the head, and its hop-by-hop bit.
#[derive(Debug, Clone, Copy)]
struct Line {
    name: (usize, usize),
    value: (usize, usize),
    /// The header's bit from [`hop_by_hop::bit`], or [`CONTENT_LENGTH_LINE`].
    hop_by_hop: u8,
}

/// Marks a `content-length` line, in the bit the hop-by-hop headers leave free: it goes when the
/// head also has `transfer-encoding`, which a proxy must then obey alone (RFC 9112 §6.3).
const CONTENT_LENGTH_LINE: u8 = 1 << 7;

/// A response's header lines as the backend sent them: the head's bytes and where each line lies.
/// Writing them again to an HTTP/1.1 client needs no map, and building one for every response
/// costs more than parsing it; [`RawHeaders::append_to`] builds it where one is needed.
#[derive(Debug)]
pub struct RawHeaders {
    head: Bytes,
    lines: Vec<Line>,
    /// Lines with any of these hop-by-hop bits are left out.
    skipped: u8,
    /// What the `content-length` lines said.
    content_length: ContentLength,
    has_date: bool,
}

impl RawHeaders {
    /// The lines that are not left out.
    fn kept(&self) -> impl Iterator<Item = &Line> {
        self.lines
            .iter()
            .filter(|line| line.hop_by_hop & self.skipped == 0)
    }

    /// Name and value of each line, in the order received, names in the backend's case.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.kept().map(|line| {
            (
                &self.head[line.name.0..line.name.1],
                &self.head[line.value.0..line.value.1],
            )
        })
    }

    /// The kept lines as few slices of the head as possible: each holds one or more whole lines,
    /// joined by the `\r\n` they came with, and ends without one. Writing a response copies these
    /// instead of each name and value.
    pub fn runs(&self) -> impl Iterator<Item = &[u8]> {
        let mut kept = self.kept().peekable();
        std::iter::from_fn(move || {
            let first = kept.next()?;
            let (start, mut end) = (first.name.0, first.value.1);
            while let Some(next) = kept
                .next_if(|next| next.name.0 == end + 2 && self.head.get(end..end + 2) == Some(&b"\r\n"[..]))
            {
                end = next.value.1;
            }
            Some(&self.head[start..end])
        })
    }

    /// What the `content-length` lines say, when they are there and agree on a number.
    pub fn content_length(&self) -> Option<u64> {
        match self.content_length {
            ContentLength::Valid(length) => Some(length),
            ContentLength::Absent | ContentLength::Invalid(_) => None,
        }
    }

    pub fn has_date(&self) -> bool {
        self.has_date
    }

    pub fn contains(&self, name: &HeaderName) -> bool {
        let name = name.as_str().as_bytes();
        self.iter()
            .any(|(candidate, _)| candidate.eq_ignore_ascii_case(name))
    }

    /// Moves the lines into `map`, after what it holds; values share the head's memory.
    pub fn append_to(self, map: &mut HeaderMap) {
        map.reserve(self.lines.len());
        for line in self.kept() {
            // httparse admits exactly the names and values that `HeaderName` and `HeaderValue`
            // do (tokens; visible characters, spaces, tabs and obs-text), so none is left out.
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(&self.head[line.name.0..line.name.1]),
                HeaderValue::from_maybe_shared(self.head.slice(line.value.0..line.value.1)),
            ) {
                map.append(name, value);
            }
        }
    }

    /// The lines as a map.
    pub fn into_map(self) -> HeaderMap {
        let mut map = HeaderMap::new();
        self.append_to(&mut map);
        map
    }
}

/// Parses the response head at the start of `buffer` and removes it; `None` while it is
/// incomplete. The header lines stay in the buffer's memory, unvalidated beyond what httparse
/// checks. The connection and framing headers are read in the same pass, so nothing looks for
/// them later.
pub fn parse_head(buffer: &mut BytesMut) -> Result<Option<Head>, H1Error> {
    if buffer.is_empty() {
        return Ok(None);
    }
    // Uninitialised slots: filling a hundred of them for every response costs more than parsing.
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buffer,
        &mut slots,
    );
    let length = match parsed {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if buffer.len() > MAX_HEAD_BYTES => return Err(H1Error::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(H1Error::Head(error)),
    };
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(H1Error::Malformed("status code"))?;
    let version = if response.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let base = buffer.as_ptr().addr();
    let mut lines = Vec::with_capacity(response.headers.len());
    let (mut close, mut keep_alive, mut names_others, mut te_listed) = (false, false, false, false);
    let mut te_trailers = false;
    let mut content_length = ContentLength::Absent;
    let mut has_date = false;
    let mut chunked = None;
    for field in response.headers.iter() {
        let name = field.name.as_bytes();
        let mut bit = hop_by_hop::bit(name);
        match bit {
            0 if hop_by_hop::is(name, b"content-length") => {
                bit = CONTENT_LENGTH_LINE;
                content_length = match (content_length, parse_length(field.value)) {
                    (ContentLength::Invalid(why), _) => ContentLength::Invalid(why),
                    (_, None) => ContentLength::Invalid("content-length"),
                    (ContentLength::Valid(previous), Some(length)) if previous != length => {
                        ContentLength::Invalid("conflicting content-length")
                    }
                    (_, Some(length)) => ContentLength::Valid(length),
                };
            }
            0 => has_date |= hop_by_hop::is(name, b"date"),
            hop_by_hop::CONNECTION_BIT => {
                for token in hop_by_hop::tokens(field.value) {
                    close |= hop_by_hop::is(token, b"close");
                    keep_alive |= hop_by_hop::is(token, b"keep-alive");
                    match hop_by_hop::bit(token) {
                        0 => names_others |= !token.is_empty() && !hop_by_hop::is(token, b"close"),
                        hop_by_hop::TE_BIT => te_listed = true,
                        _ => {}
                    }
                }
            }
            hop_by_hop::TE_BIT => te_trailers = hop_by_hop::is(field.value, b"trailers"),
            hop_by_hop::TRANSFER_ENCODING_BIT => {
                let last = hop_by_hop::tokens(field.value).rfind(|coding| !coding.is_empty());
                if let Some(coding) = last {
                    chunked = Some(hop_by_hop::is(coding, b"chunked"));
                } else if chunked.is_none() {
                    chunked = Some(false);
                }
            }
            _ => {}
        }
        let name_start = field.name.as_ptr().addr() - base;
        let value_start = field.value.as_ptr().addr() - base;
        lines.push(Line {
            name: (name_start, name_start + field.name.len()),
            value: (value_start, value_start + field.value.len()),
            hop_by_hop: bit,
        });
    }
    let keep_alive = match version {
        Version::HTTP_11 => !close,
        _ => keep_alive && !close,
    };
    // `close` names no header; any other name `connection` lists is left for the proxy to find.
    let hop_by_hop_removed = status != StatusCode::SWITCHING_PROTOCOLS && !names_others;
    let kept_te = if te_trailers && !te_listed {
        hop_by_hop::TE_BIT
    } else {
        0
    };
    let mut skipped = if hop_by_hop_removed {
        !kept_te & !CONTENT_LENGTH_LINE
    } else {
        0
    };
    // With `transfer-encoding` the body is not as long as any `content-length` says, and the
    // client gets it in a framing of the splitter's choosing.
    let content_length = if chunked.is_some() {
        skipped |= CONTENT_LENGTH_LINE;
        ContentLength::Absent
    } else {
        content_length
    };
    let headers = RawHeaders {
        head: buffer.split_to(length).freeze(),
        lines,
        skipped,
        content_length,
        has_date,
    };
    Ok(Some(Head {
        status,
        version,
        headers,
        keep_alive,
        hop_by_hop_removed,
        chunked,
    }))
}

fn parse_length(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: `HEAD`, 1xx, 204, 304, or `content-length: 0`.
    Empty,
    Length(u64),
    Chunked,
    /// Up to the end of the connection, which then cannot be reused.
    Close,
}

/// The framing of the response to a `method` request.
pub fn framing(method: &Method, head: &Head) -> Result<Framing, H1Error> {
    let status = head.status;
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    if let Some(chunked) = head.chunked {
        return Ok(if chunked { Framing::Chunked } else { Framing::Close });
    }
    match head.headers.content_length {
        ContentLength::Invalid(why) => Err(H1Error::Malformed(why)),
        ContentLength::Valid(0) => Ok(Framing::Empty),
        ContentLength::Valid(length) => Ok(Framing::Length(length)),
        ContentLength::Absent => Ok(Framing::Close),
    }
}

/// What [`BodyDecoder::decode`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body is complete.
    End,
    /// More bytes are needed.
    NeedMore,
}

/// Decodes a response body from a buffer as its bytes arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyDecoder {
    /// Bytes of the body not yet returned.
    Length(u64),
    Chunked(Chunk),
    Close,
    Done,
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> BodyDecoder {
        match framing {
            Framing::Empty => BodyDecoder::Done,
            Framing::Length(length) => BodyDecoder::Length(length),
            Framing::Chunked => BodyDecoder::Chunked(Chunk::Size),
            Framing::Close => BodyDecoder::Close,
        }
    }

    /// The body has been returned whole.
    pub fn is_done(&self) -> bool {
        *self == BodyDecoder::Done
    }

    /// Bytes still to come, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            BodyDecoder::Length(remaining) => Some(*remaining),
            BodyDecoder::Done => Some(0),
            BodyDecoder::Chunked(_) | BodyDecoder::Close => None,
        }
    }

    /// The next piece of the body from `buffer` (consumed as it is decoded).
    pub fn decode(&mut self, buffer: &mut BytesMut) -> Result<Decoded, H1Error> {
        loop {
            match self {
                BodyDecoder::Done => return Ok(Decoded::End),
                BodyDecoder::Length(remaining) => {
                    if buffer.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take =
                        usize::try_from(*remaining).map_or(buffer.len(), |left| left.min(buffer.len()));
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        *self = BodyDecoder::Done;
                    }
                    return Ok(Decoded::Data(buffer.split_to(take).freeze()));
                }
                BodyDecoder::Close => {
                    if buffer.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    return Ok(Decoded::Data(buffer.split().freeze()));
                }
                BodyDecoder::Chunked(chunk) => match *chunk {
                    Chunk::Size => match httparse::parse_chunk_size(buffer) {
                        Ok(httparse::Status::Complete((used, 0))) => {
                            buffer.advance(used);
                            *chunk = Chunk::Trailers;
                        }
                        Ok(httparse::Status::Complete((used, size))) => {
                            buffer.advance(used);
                            *chunk = Chunk::Data(size);
                        }
                        Ok(httparse::Status::Partial) if buffer.len() > MAX_CHUNK_LINE => {
                            return Err(H1Error::Chunk("chunk size line too long"));
                        }
                        Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore),
                        Err(_) => return Err(H1Error::Chunk("invalid chunk size")),
                    },
                    Chunk::Data(remaining) => {
                        if buffer.is_empty() {
                            return Ok(Decoded::NeedMore);
                        }
                        let take =
                            usize::try_from(remaining).map_or(buffer.len(), |left| left.min(buffer.len()));
                        let left = remaining - take as u64;
                        *chunk = if left == 0 {
                            Chunk::DataEnd
                        } else {
                            Chunk::Data(left)
                        };
                        return Ok(Decoded::Data(buffer.split_to(take).freeze()));
                    }
                    Chunk::DataEnd => {
                        if buffer.len() < 2 {
                            return Ok(Decoded::NeedMore);
                        }
                        if &buffer[..2] != b"\r\n" {
                            return Err(H1Error::Chunk("chunk data not followed by CRLF"));
                        }
                        buffer.advance(2);
                        *chunk = Chunk::Size;
                    }
                    Chunk::Trailers => {
                        if buffer.len() < 2 {
                            return Ok(Decoded::NeedMore);
                        }
                        if buffer.starts_with(b"\r\n") {
                            buffer.advance(2);
                            *self = BodyDecoder::Done;
                            return Ok(Decoded::End);
                        }
                        let trailers = parse_trailers(buffer)?;
                        return Ok(match trailers {
                            Some(trailers) => {
                                *self = BodyDecoder::Done;
                                Decoded::Trailers(trailers)
                            }
                            None => Decoded::NeedMore,
                        });
                    }
                },
            }
        }
    }

    /// The connection ended: the end of a body delimited by it, an error for any other framing.
    pub fn finish(&mut self) -> Result<(), H1Error> {
        match self {
            BodyDecoder::Close | BodyDecoder::Done => {
                *self = BodyDecoder::Done;
                Ok(())
            }
            BodyDecoder::Length(_) | BodyDecoder::Chunked(_) => Err(H1Error::ClosedInBody),
        }
    }
}

/// The trailer section of a chunked body, with its final blank line; `None` while incomplete.
fn parse_trailers(buffer: &mut BytesMut) -> Result<Option<HeaderMap>, H1Error> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(buffer, &mut slots) {
        Ok(httparse::Status::Complete((used, fields))) => {
            let mut trailers = HeaderMap::with_capacity(fields.len());
            for field in fields {
                let name = HeaderName::from_bytes(field.name.as_bytes())
                    .map_err(|_| H1Error::Chunk("trailer name"))?;
                let value =
                    HeaderValue::from_bytes(field.value).map_err(|_| H1Error::Chunk("trailer value"))?;
                trailers.append(name, value);
            }
            buffer.advance(used);
            Ok(Some(trailers))
        }
        Ok(httparse::Status::Partial) if buffer.len() > MAX_HEAD_BYTES => Err(H1Error::HeadTooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(error) => Err(H1Error::Head(error)),
    }
}

/// A plain request and what its response needs to know.
pub(crate) struct Plain {
    pub request: Request<Empty<Bytes>>,
    /// The client asked to close after this exchange (or spoke HTTP/1.0 without keep-alive).
    pub close: bool,
    /// `HEAD`: the response has no body.
    pub head: bool,
    /// The client accepts trailers (`te: trailers`).
    pub trailers: bool,
}

// Not boxed: that would cost an allocation per request, to save moving the value once.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Parsed {
    Complete(Plain),
    Partial,
    HandOff,
}

/// Where one header line's name and value lie in the request head.
#[derive(Clone, Copy)]
pub(crate) struct HeaderSpan {
    name: (usize, usize),
    value: (usize, usize),
}

/// Parses the request head at the start of `buffer` (removing it when the request is plain).
/// `spans` is scratch space that the connection keeps from one request to the next.
pub(crate) fn parse_request(
    buffer: &mut BytesMut,
    (max_head, max_count): (usize, usize),
    spans: &mut Vec<HeaderSpan>,
) -> Parsed {
    if buffer.is_empty() {
        return Parsed::Partial;
    }
    // Uninitialised slots: filling a hundred of them for every request costs more than parsing.
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_REQUEST_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let length = match parsed.parse_with_uninit_headers(buffer, &mut slots) {
        Ok(httparse::Status::Complete(length)) if length <= max_head => length,
        Ok(httparse::Status::Partial) if buffer.len() <= max_head => return Parsed::Partial,
        // Too large, too many headers or malformed: hyper answers 431 or 400.
        _ => return Parsed::HandOff,
    };
    if parsed.headers.len() > max_count {
        return Parsed::HandOff;
    }
    let (Some(method), Some(path), Some(minor)) = (parsed.method, parsed.path, parsed.version) else {
        return Parsed::HandOff;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::HandOff;
    };
    if method == Method::CONNECT {
        return Parsed::HandOff;
    }
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let base = buffer.as_ptr().addr();
    let path_start = path.as_ptr().addr() - base;
    let path_end = path_start + path.len();
    spans.clear();
    let (mut close, mut keep_alive, mut trailers) = (false, false, false);
    for field in parsed.headers.iter() {
        let name = field.name.as_bytes();
        if hop_by_hop::is(name, b"transfer-encoding")
            || hop_by_hop::is(name, b"upgrade")
            || hop_by_hop::is(name, b"expect")
            || (hop_by_hop::is(name, b"content-length") && field.value.trim_ascii() != b"0")
        {
            return Parsed::HandOff;
        }
        if hop_by_hop::is(name, b"connection") {
            for token in hop_by_hop::tokens(field.value) {
                close |= hop_by_hop::is(token, b"close");
                keep_alive |= hop_by_hop::is(token, b"keep-alive");
            }
        } else if hop_by_hop::is(name, b"te") {
            trailers |= hop_by_hop::tokens(field.value).any(|token| hop_by_hop::is(token, b"trailers"));
        }
        let name_start = field.name.as_ptr().addr() - base;
        let value_start = field.value.as_ptr().addr() - base;
        spans.push(HeaderSpan {
            name: (name_start, name_start + field.name.len()),
            value: (value_start, value_start + field.value.len()),
        });
    }
    let head_bytes = buffer.split_to(length).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head_bytes.slice(path_start..path_end)) else {
        // Not consumed after all: hyper reads the same bytes and answers 400.
        let mut restored = BytesMut::with_capacity(head_bytes.len() + buffer.len());
        restored.extend_from_slice(&head_bytes);
        restored.extend_from_slice(buffer);
        *buffer = restored;
        return Parsed::HandOff;
    };
    // The headers the splitter adds do not go in the map (see `crate::transport::added`).
    let mut headers = HeaderMap::with_capacity(spans.len());
    for span in spans.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&head_bytes[span.name.0..span.name.1]),
            HeaderValue::from_maybe_shared(head_bytes.slice(span.value.0..span.value.1)),
        ) else {
            let mut restored = BytesMut::with_capacity(head_bytes.len() + buffer.len());
            restored.extend_from_slice(&head_bytes);
            restored.extend_from_slice(buffer);
            *buffer = restored;
            return Parsed::HandOff;
        };
        headers.append(name, value);
    }
    let close = close || (version == Version::HTTP_10 && !keep_alive);
    let head = method == Method::HEAD;
    let mut request = Request::new(Empty::new());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Parsed::Complete(Plain {
        request,
        close,
        head,
        trailers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        head_bytes(text.as_bytes())
    }

    fn head_bytes(wire: &[u8]) -> Head {
        let mut buffer = BytesMut::from(wire);
        parse_head(&mut buffer).unwrap().unwrap()
    }

    /// Feeds `wire` to a decoder `step` bytes at a time and returns the data, trailers and
    /// whether the end was seen.
    fn decode_in_steps(framing: Framing, wire: &[u8], step: usize) -> (Vec<u8>, Option<HeaderMap>, bool) {
        let mut decoder = BodyDecoder::new(framing);
        let mut buffer = BytesMut::new();
        let (mut data, mut trailers, mut ended) = (Vec::new(), None, false);
        let mut chunks = wire.chunks(step);
        loop {
            match decoder.decode(&mut buffer).unwrap() {
                Decoded::Data(bytes) => {
                    assert!(!bytes.is_empty());
                    data.extend_from_slice(&bytes);
                }
                Decoded::Trailers(map) => trailers = Some(map),
                Decoded::End => {
                    ended = true;
                    break;
                }
                Decoded::NeedMore => match chunks.next() {
                    Some(chunk) => buffer.extend_from_slice(chunk),
                    None => break,
                },
            }
        }
        (data, trailers, ended)
    }

    #[test]
    fn the_request_head_has_the_line_the_headers_the_added_ones_a_host_and_a_length_for_a_body() {
        let mut with_host = HeaderMap::new();
        with_host.insert(header::HOST, HeaderValue::from_static("app.example"));
        with_host.insert("x-request-id", HeaderValue::from_static("abc"));
        let empty = HeaderMap::new();
        let none = AddedHeaders::default();
        let forwarded = AddedHeaders {
            forwarded_for: Some(HeaderValue::from_static("10.0.0.1")),
            forwarded_proto: Some("http"),
            ..AddedHeaders::default()
        };
        let body = Bytes::from_static(b"hello");
        let cases = [
            (
                Method::GET,
                "/a?b=1",
                &with_host,
                &forwarded,
                None,
                "GET /a?b=1 HTTP/1.1\r\nhost: app.example\r\nx-request-id: abc\r\n\
                 x-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: http\r\n\r\n",
            ),
            (
                Method::POST,
                "/",
                &with_host,
                &none,
                Some(&body),
                "POST / HTTP/1.1\r\nhost: app.example\r\nx-request-id: abc\r\ncontent-length: 5\r\n\r\n",
            ),
            (
                Method::POST,
                "",
                &empty,
                &none,
                None,
                "POST / HTTP/1.1\r\nhost: stable:8080\r\ncontent-length: 0\r\n\r\n",
            ),
            (
                Method::GET,
                "/",
                &empty,
                &forwarded,
                None,
                "GET / HTTP/1.1\r\nx-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: http\r\nhost: stable:8080\r\n\r\n",
            ),
        ];
        for (method, target, headers, added, body, expected) in cases {
            let mut out = BytesMut::new();
            let request = BufferedRequest {
                method: &method,
                target,
                headers,
                added,
                body,
            };
            encode_request(&request, "stable:8080", &mut out);
            assert_eq!(String::from_utf8(out.to_vec()).unwrap(), expected);
        }
    }

    #[test]
    fn a_head_is_parsed_once_complete_and_leaves_the_body_in_the_buffer() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Backend: stable\r\n\r\nok";
        let mut buffer = BytesMut::new();
        for byte in &wire[..wire.len() - 3] {
            buffer.extend_from_slice(&[*byte]);
            assert!(parse_head(&mut buffer).unwrap().is_none());
        }
        buffer.extend_from_slice(&wire[wire.len() - 3..]);
        let head = parse_head(&mut buffer).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::OK);
        let lines: Vec<(&[u8], &[u8])> = head.headers.iter().collect();
        assert_eq!(
            lines,
            [(&b"Content-Length"[..], &b"2"[..]), (b"X-Backend", b"stable")]
        );
        assert_eq!(
            (head.headers.content_length(), head.headers.has_date()),
            (Some(2), false)
        );
        let dated = head_bytes(b"HTTP/1.1 200 OK\r\nDATE: Sat, 21 Nov 2026 10:00:00 GMT\r\n\r\n");
        assert_eq!(
            (dated.headers.content_length(), dated.headers.has_date()),
            (None, true)
        );
        assert_eq!(&buffer[..], b"ok");
        assert_eq!(framing(&Method::GET, &head).unwrap(), Framing::Length(2));
        assert_eq!(framing(&Method::HEAD, &head).unwrap(), Framing::Empty);
    }

    #[test]
    fn garbage_and_oversized_heads_are_errors() {
        let mut garbage = BytesMut::from("NOT HTTP AT ALL\r\n\r\n");
        assert!(matches!(parse_head(&mut garbage), Err(H1Error::Head(_))));
        let mut huge = BytesMut::from("HTTP/1.1 200 OK\r\n");
        huge.extend_from_slice(&vec![b'x'; MAX_HEAD_BYTES]);
        assert!(matches!(parse_head(&mut huge), Err(H1Error::HeadTooLarge)));
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let cases = [
            ("HTTP/1.1 204 No Content\r\n\r\n", Framing::Empty),
            (
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n",
                Framing::Empty,
            ),
            ("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", Framing::Empty),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                Framing::Chunked,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
                Framing::Chunked,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
                Framing::Close,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", Framing::Close),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 7\r\ncontent-length: 7\r\n\r\n",
                Framing::Length(7),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(framing(&Method::GET, &head(text)).unwrap(), expected, "{text}");
        }
        for text in [
            "HTTP/1.1 200 OK\r\ncontent-length: 7\r\ncontent-length: 8\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        ] {
            assert!(framing(&Method::GET, &head(text)).is_err(), "{text}");
        }
    }

    #[test]
    fn keep_alive_is_the_default_of_http_1_1_and_an_option_of_http_1_0() {
        assert!(head("HTTP/1.1 200 OK\r\n\r\n").keep_alive);
        assert!(!head("HTTP/1.1 200 OK\r\nConnection: Close\r\n\r\n").keep_alive);
        assert!(!head("HTTP/1.0 200 OK\r\n\r\n").keep_alive);
        assert!(head("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\n\r\n").keep_alive);
    }

    #[test]
    fn hop_by_hop_headers_are_left_out_unless_connection_names_others_or_it_is_a_101() {
        let cases = [
            (
                "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\nX-Keep: 1\r\n\r\n",
                true,
                &["te", "x-keep"][..],
            ),
            (
                "HTTP/1.1 200 OK\r\nConnection: close, TE\r\nTE: trailers\r\nX-Keep: 1\r\n\r\n",
                true,
                &["x-keep"][..],
            ),
            (
                "HTTP/1.1 200 OK\r\nConnection: x-private\r\nX-Private: 1\r\nX-Keep: 1\r\n\r\n",
                false,
                &["connection", "x-private", "x-keep"][..],
            ),
            (
                "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
                false,
                &["connection", "upgrade"][..],
            ),
            // `transfer-encoding` overrides `content-length`, which goes with it.
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nX-Keep: 1\r\n\r\n",
                true,
                &["x-keep"][..],
            ),
            (
                "HTTP/1.1 200 OK\r\nConnection: x-private\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                false,
                &["connection", "transfer-encoding"][..],
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Keep: 1\r\n\r\n",
                true,
                &["content-length", "x-keep"][..],
            ),
        ];
        for (text, removed, kept) in cases {
            let head = head(text);
            assert_eq!(head.hop_by_hop_removed, removed, "{text}");
            let map = head.headers.into_map();
            let names: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
            assert_eq!(names, kept, "{text}");
        }
    }

    #[test]
    fn runs_join_adjacent_kept_lines_as_they_came() {
        let cases: [(&str, &[&str]); 4] = [
            (
                "HTTP/1.1 200 OK\r\nServer: a\r\nDate: b\r\nContent-Length: 0\r\n\r\n",
                &["Server: a\r\nDate: b\r\nContent-Length: 0"],
            ),
            (
                "HTTP/1.1 200 OK\r\nA: 1\r\nConnection: keep-alive\r\nB:2\r\nC: 3\r\n\r\n",
                &["A: 1", "B:2\r\nC: 3"],
            ),
            // Trailing spaces are not part of a value, and bare line feeds are not passed on.
            (
                "HTTP/1.1 200 OK\r\nA: 1  \r\nB: 2\nC: 3\n\n",
                &["A: 1", "B: 2", "C: 3"],
            ),
            ("HTTP/1.1 204 No Content\r\nKeep-Alive: 5\r\n\r\n", &[]),
        ];
        for (text, expected) in cases {
            let head = head(text);
            let runs: Vec<&[u8]> = head.headers.runs().collect();
            let expected: Vec<&[u8]> = expected.iter().map(|run| run.as_bytes()).collect();
            assert_eq!(runs, expected, "{text:?}");
        }
    }

    #[test]
    fn every_line_httparse_admits_makes_it_into_the_map() {
        let mut wire = b"HTTP/1.1 200 OK\r\nX-Token!#$%&'*+-.^_`|~09: a\tb\r\nX-Obs-Text: ".to_vec();
        wire.extend_from_slice(&[0x80, 0xff, b' ', b'~']);
        wire.extend_from_slice(b"\r\nEmpty:\r\nX-Dup: 1\r\nx-dup: 2\r\n\r\n");
        let head = head_bytes(&wire);
        let lines = head.headers.iter().count();
        let map = head.headers.into_map();
        assert_eq!((lines, map.len()), (5, 5));
        assert_eq!(map["x-token!#$%&'*+-.^_`|~09"], "a\tb");
        assert_eq!(map["x-obs-text"].as_bytes(), [0x80, 0xff, b' ', b'~']);
        assert_eq!(map["empty"], "");
        assert_eq!(map.get_all("x-dup").iter().collect::<Vec<_>>(), ["1", "2"]);
    }

    #[test]
    fn a_length_body_ends_at_its_length_whatever_the_chunking_of_the_reads() {
        for step in [1, 3, 100] {
            let (data, trailers, ended) = decode_in_steps(Framing::Length(11), b"hello world", step);
            assert_eq!(
                (data.as_slice(), trailers, ended),
                (&b"hello world"[..], None, true)
            );
        }
        let (data, _, ended) = decode_in_steps(Framing::Length(11), b"hello", 2);
        assert_eq!((data.as_slice(), ended), (&b"hello"[..], false));
        let mut decoder = BodyDecoder::new(Framing::Length(11));
        assert!(matches!(decoder.finish(), Err(H1Error::ClosedInBody)));
    }

    #[test]
    fn a_chunked_body_decodes_across_reads_with_extensions_and_trailers() {
        let wire = b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 42\r\n\r\n";
        for step in [1, 2, 7, wire.len()] {
            let (data, trailers, ended) = decode_in_steps(Framing::Chunked, wire, step);
            assert_eq!(data, b"hello world", "step {step}");
            assert_eq!(trailers.unwrap()["x-checksum"], "42");
            assert!(ended);
        }
        let (data, trailers, ended) = decode_in_steps(Framing::Chunked, b"2\r\nok\r\n0\r\n\r\n", 1);
        assert_eq!((data.as_slice(), trailers, ended), (&b"ok"[..], None, true));
    }

    #[test]
    fn a_bad_chunk_is_an_error() {
        for wire in [&b"zz\r\nhello\r\n"[..], b"2\r\nokXX0\r\n\r\n"] {
            let mut decoder = BodyDecoder::new(Framing::Chunked);
            let mut buffer = BytesMut::from(wire);
            let mut failed = false;
            for _ in 0..5 {
                match decoder.decode(&mut buffer) {
                    Err(H1Error::Chunk(_)) => {
                        failed = true;
                        break;
                    }
                    Ok(Decoded::NeedMore) => break,
                    _ => {}
                }
            }
            assert!(failed, "{wire:?}");
        }
    }

    #[test]
    fn a_body_delimited_by_the_connection_ends_with_it() {
        let mut decoder = BodyDecoder::new(Framing::Close);
        let mut buffer = BytesMut::from("all of it");
        assert_eq!(
            decoder.decode(&mut buffer).unwrap(),
            Decoded::Data(Bytes::from_static(b"all of it"))
        );
        assert_eq!(decoder.decode(&mut buffer).unwrap(), Decoded::NeedMore);
        decoder.finish().unwrap();
        assert!(decoder.is_done());
    }
}
