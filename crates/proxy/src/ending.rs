//! When an HTTP exchange is over. The response head leaves as soon as the far side answers,
//! but the exchange lasts until the body's last frame: a download, a gRPC stream or a long
//! poll can run for minutes after its head. [`Watched`] wraps a response body and reports,
//! once, how it ended: whole, broken off by the side that sent it, or abandoned by the side
//! that was reading it; with the `grpc-status` its trailers carried. The access line and the
//! request's span are finished from that report, so both cover the whole exchange.

use std::error::Error as StdError;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};

use crate::errors::error_chain;

/// What body errors are, for every body the sidecar relays.
pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;

/// How a response body ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Every frame was delivered.
    Whole,
    /// The side sending the body failed before its end (the app reset the connection, a
    /// peer sidecar went away); why, in words.
    BrokeOff(String),
    /// The reader stopped before the end: the caller closed its connection or cancelled the
    /// stream (or the sidecar closed it, when its shutdown grace ran out).
    Abandoned,
}

/// The report a [`Watched`] body makes when it ends.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Ended {
    pub(crate) ending: Ending,
    /// The `grpc-status` of the trailers, when they had one.
    pub(crate) grpc_status: Option<i32>,
}

/// What to do once the body has ended.
type OnEnd = Box<dyn FnOnce(Ended) + Send + Sync>;

/// A response body that reports its end. Frames pass through untouched; a body with nobody
/// to report to costs one branch per frame.
pub(crate) struct Watched<B: Body> {
    inner: B,
    on_end: Option<OnEnd>,
    grpc_status: Option<i32>,
}

impl<B: Body> Watched<B> {
    /// Calls `on_end` once, when `inner` ends or is dropped.
    pub(crate) fn new(inner: B, on_end: impl FnOnce(Ended) + Send + Sync + 'static) -> Self {
        Self {
            inner,
            on_end: Some(Box::new(on_end)),
            grpc_status: None,
        }
    }

    /// A body nobody is waiting on.
    pub(crate) fn unwatched(inner: B) -> Self {
        Self {
            inner,
            on_end: None,
            grpc_status: None,
        }
    }

    fn end(&mut self, ending: Ending) {
        if let Some(on_end) = self.on_end.take() {
            on_end(Ended {
                ending,
                grpc_status: self.grpc_status,
            });
        }
    }
}

impl<B> Body for Watched<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if this.on_end.is_none() {
            return polled;
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.grpc_status = grpc_status(trailers).or(this.grpc_status);
                }
                // A body of known length is done with its last frame; hyper may never poll
                // it again.
                if this.inner.is_end_stream() {
                    this.end(Ending::Whole);
                }
            }
            Poll::Ready(Some(Err(error))) => this.end(Ending::BrokeOff(error_chain(&**error))),
            Poll::Ready(None) => this.end(Ending::Whole),
            Poll::Pending => {}
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

impl<B: Body> Drop for Watched<B> {
    fn drop(&mut self) {
        if self.on_end.is_some() {
            // Never polled to its end: an empty body (HEAD, 204, 304) is whole without a
            // frame; anything else was left unread.
            let ending = if self.inner.is_end_stream() {
                Ending::Whole
            } else {
                Ending::Abandoned
            };
            self.end(ending);
        }
    }
}

/// The `grpc-status` of a header block (trailers, or the head of a trailers-only response).
pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use http::HeaderValue;
    use http_body_util::{BodyExt, Empty, Full};

    use super::*;

    /// A body that yields the frames it was given, then ends (or fails where told to).
    struct Scripted {
        frames: VecDeque<Result<Frame<Bytes>, BoxError>>,
    }

    impl Scripted {
        fn new(frames: Vec<Result<Frame<Bytes>, BoxError>>) -> Self {
            Self {
                frames: frames.into(),
            }
        }
    }

    impl Body for Scripted {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.frames.pop_front())
        }
    }

    fn trailers(status: &'static str) -> Frame<Bytes> {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static(status));
        Frame::trailers(trailers)
    }

    fn data(text: &'static str) -> Frame<Bytes> {
        Frame::data(Bytes::from_static(text.as_bytes()))
    }

    /// Wraps `body`, and returns the reports it made.
    fn watched<B: Body>(body: B) -> (Watched<B>, Arc<Mutex<Vec<Ended>>>) {
        let reports = Arc::new(Mutex::new(Vec::new()));
        let sink = reports.clone();
        let body = Watched::new(body, move |ended| sink.lock().unwrap().push(ended));
        (body, reports)
    }

    fn boxed<B>(body: B) -> http_body_util::combinators::BoxBody<Bytes, BoxError>
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        body.map_err(Into::into).boxed()
    }

    #[tokio::test]
    async fn a_stream_read_to_its_trailers_is_whole_with_their_grpc_status() {
        let (body, reports) = watched(Scripted::new(vec![
            Ok(data("one")),
            Ok(data("two")),
            Ok(trailers("14")),
        ]));
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers().and_then(grpc_status), Some(14));
        assert_eq!(
            *reports.lock().unwrap(),
            vec![Ended {
                ending: Ending::Whole,
                grpc_status: Some(14),
            }]
        );
    }

    #[tokio::test]
    async fn a_body_that_fails_broke_off_and_says_why() {
        let (body, reports) = watched(Scripted::new(vec![
            Ok(data("one")),
            Err(
                std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset").into(),
            ),
        ]));
        assert!(body.collect().await.is_err());
        assert_eq!(
            *reports.lock().unwrap(),
            vec![Ended {
                ending: Ending::BrokeOff("connection reset".into()),
                grpc_status: None,
            }]
        );
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_was_abandoned() {
        let (mut body, reports) = watched(Scripted::new(vec![Ok(data("one")), Ok(data("two"))]));
        body.frame().await.unwrap().unwrap();
        assert!(reports.lock().unwrap().is_empty(), "not over yet");
        drop(body);
        assert_eq!(
            *reports.lock().unwrap(),
            vec![Ended {
                ending: Ending::Abandoned,
                grpc_status: None,
            }]
        );
    }

    #[tokio::test]
    async fn a_known_length_body_is_whole_with_its_last_frame() {
        // hyper stops polling once `is_end_stream` says so.
        let (mut body, reports) = watched(boxed(Full::new(Bytes::from_static(b"all"))));
        body.frame().await.unwrap().unwrap();
        assert_eq!(reports.lock().unwrap().len(), 1);
        drop(body);
        assert_eq!(
            *reports.lock().unwrap(),
            vec![Ended {
                ending: Ending::Whole,
                grpc_status: None,
            }],
            "reported once"
        );
    }

    #[test]
    fn an_empty_body_never_polled_is_whole() {
        // A HEAD response, a 204 or a 304: hyper sends no body at all.
        let (body, reports) = watched(boxed(Empty::<Bytes>::new()));
        drop(body);
        assert_eq!(reports.lock().unwrap()[0].ending, Ending::Whole);
    }

    #[test]
    fn grpc_status_is_read_from_headers_and_refused_when_garbled() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", HeaderValue::from_static("7"));
        assert_eq!(grpc_status(&headers), Some(7));
        headers.insert("grpc-status", HeaderValue::from_static("seven"));
        assert_eq!(grpc_status(&headers), None);
    }
}
