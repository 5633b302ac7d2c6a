//! Body types of the proxy. Request bodies are either buffered (small, so they can be retried and
//! mirrored) or streamed straight through; response bodies stream from the backend or are the
//! splitter's own short error text. Nothing here buffers a stream.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;

use crate::upstream::{Unmapped, UpstreamBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way to a backend.
#[derive(Debug)]
pub enum RequestBody {
    /// Buffered (possibly empty); can be sent again.
    Buffered(Option<Bytes>),
    /// Streamed from the client; can be sent once.
    Stream(UnsyncBoxBody<Bytes, BoxError>),
}

impl RequestBody {
    /// A copy for another attempt or a mirror, when the body was buffered.
    pub fn replay(&self) -> Option<RequestBody> {
        match self {
            RequestBody::Buffered(bytes) => Some(RequestBody::Buffered(bytes.clone())),
            RequestBody::Stream(_) => None,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Buffered(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            RequestBody::Stream(stream) => Pin::new(stream).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Buffered(bytes) => bytes.is_none(),
            RequestBody::Stream(stream) => stream.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Buffered(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            RequestBody::Stream(stream) => stream.size_hint(),
        }
    }
}

/// A response body on its way to the client.
#[derive(Debug)]
pub enum ResponseBody {
    Upstream(UpstreamBody),
    Local(Option<Bytes>),
}

/// The response with every header in its map, for a server that writes only the map (hyper):
/// moves in the headers that were left out of it (see [`UpstreamBody::take_unmapped`]).
pub fn with_header_map(mut response: Response<ResponseBody>) -> Response<ResponseBody> {
    if let Some(unmapped) = response.body_mut().take_unmapped() {
        unmapped.append_to(response.headers_mut());
    }
    response
}

impl ResponseBody {
    /// The headers not in the response's map, if any.
    pub fn unmapped_mut(&mut self) -> Option<&mut Unmapped> {
        match self {
            ResponseBody::Upstream(body) => body.unmapped_mut(),
            ResponseBody::Local(_) => None,
        }
    }

    pub fn take_unmapped(&mut self) -> Option<Unmapped> {
        match self {
            ResponseBody::Upstream(body) => body.take_unmapped(),
            ResponseBody::Local(_) => None,
        }
    }

    pub fn text(text: &'static str) -> ResponseBody {
        ResponseBody::Local(Some(Bytes::from_static(text.as_bytes())))
    }

    pub fn empty() -> ResponseBody {
        ResponseBody::Local(None)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Upstream(body) => Pin::new(body).poll_frame(cx),
            ResponseBody::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream(body) => body.is_end_stream(),
            ResponseBody::Local(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream(body) => body.size_hint(),
            ResponseBody::Local(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
