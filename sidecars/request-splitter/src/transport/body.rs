//! Body types of the proxy. Request bodies are either buffered (small, so they can be retried and
//! mirrored) or streamed straight through; response bodies stream from the backend or are the
//! splitter's own short error text. Nothing here buffers a stream.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;

use crate::{
    routing::health::now_millis,
    transport::upstream::{Unmapped, UpstreamBody},
};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way to a backend.
#[derive(Debug)]
pub enum RequestBody {
    /// Buffered (possibly empty); can be sent again.
    Buffered(Option<Bytes>),
    /// Streamed from the client; can be sent once.
    Stream(Upload),
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

/// Who a streamed upload waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// The backend: to take more of the body, or to answer once it has it all.
    Backend,
    /// The client: to send more of the body.
    Client,
    /// Nobody: the client's body failed (malformed, or the client went away half way).
    ClientFailed,
}

/// Where a streamed request body is, shared between the body (polled by the backend connection)
/// and the attempt waiting for the response, so that the backend's timeout counts the backend's
/// silence only, and a failure of the client's body is put down to the client.
#[derive(Debug)]
pub struct UploadProgress {
    waiting: AtomicU8,
    /// [`now_millis`] when `waiting` last changed, or when the backend last took a frame.
    since: AtomicU64,
}

impl Default for UploadProgress {
    fn default() -> Self {
        UploadProgress {
            waiting: AtomicU8::new(Waiting::Backend as u8),
            since: AtomicU64::new(now_millis()),
        }
    }
}

impl UploadProgress {
    /// Who the upload waits for, and for how long already.
    pub fn waiting(&self) -> (Waiting, Duration) {
        let waiting = match self.waiting.load(Ordering::Acquire) {
            0 => Waiting::Backend,
            1 => Waiting::Client,
            _ => Waiting::ClientFailed,
        };
        let since = self.since.load(Ordering::Acquire);
        (waiting, Duration::from_millis(now_millis().saturating_sub(since)))
    }

    fn set(&self, waiting: Waiting) {
        self.since.store(now_millis(), Ordering::Release);
        self.waiting.store(waiting as u8, Ordering::Release);
    }
}

/// A client's streamed body on its way to a backend, reporting its progress.
#[derive(Debug)]
pub struct Upload {
    inner: UnsyncBoxBody<Bytes, BoxError>,
    progress: Arc<UploadProgress>,
}

impl Upload {
    pub fn new(inner: UnsyncBoxBody<Bytes, BoxError>, progress: Arc<UploadProgress>) -> Upload {
        Upload { inner, progress }
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            // The backend asks for more and the client has not sent it yet.
            Poll::Pending => {
                if this.progress.waiting.load(Ordering::Relaxed) != Waiting::Client as u8 {
                    this.progress.set(Waiting::Client);
                }
            }
            // Handed to the backend connection: from now on the backend's pace counts.
            Poll::Ready(Some(Ok(_)) | None) => this.progress.set(Waiting::Backend),
            Poll::Ready(Some(Err(_))) => this.progress.set(Waiting::ClientFailed),
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body on its way to the client.
// Not boxed: that would cost an allocation per response; the response itself is boxed.
#[allow(clippy::large_enum_variant)]
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

#[cfg(test)]
mod tests {
    use std::{collections::VecDeque, task::Waker};

    use http_body_util::BodyExt;

    use super::*;

    /// A client body that plays a script: `None` is a poll with nothing there yet.
    struct Scripted(VecDeque<Option<Result<&'static str, &'static str>>>);

    impl Body for Scripted {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.get_mut().0.pop_front() {
                None => Poll::Ready(None),
                Some(None) => Poll::Pending,
                Some(Some(Ok(data))) => {
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(data.as_bytes())))))
                }
                Some(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            }
        }
    }

    #[test]
    fn an_upload_says_whether_it_waits_for_the_client_or_the_backend_or_the_client_failed() {
        let progress = Arc::new(UploadProgress::default());
        let script = [None, Some(Ok("part")), Some(Err("malformed chunk"))];
        let client = Scripted(script.into_iter().collect());
        let mut upload = Upload::new(client.boxed_unsync(), progress.clone());
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(
            progress.waiting().0,
            Waiting::Backend,
            "connecting is the backend's time"
        );
        assert!(Pin::new(&mut upload).poll_frame(&mut cx).is_pending());
        assert_eq!(progress.waiting().0, Waiting::Client);
        assert!(Pin::new(&mut upload).poll_frame(&mut cx).is_ready());
        assert_eq!(progress.waiting().0, Waiting::Backend);
        assert!(matches!(
            Pin::new(&mut upload).poll_frame(&mut cx),
            Poll::Ready(Some(Err(_)))
        ));
        assert_eq!(progress.waiting().0, Waiting::ClientFailed);
    }
}
