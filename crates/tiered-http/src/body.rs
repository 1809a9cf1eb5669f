//! Response bodies: whole ones from the cache, streamed ones from the origin,
//! and the bounded read that decides which a response becomes.
//!
//! A response that may be stored is read into memory only up to the layer's
//! `max_body_bytes`. One that announces a larger `Content-Length` is not read
//! at all; one without a length (chunked, streamed) that turns out larger is
//! passed on as the part already read followed by the rest of the stream — so
//! a 10 GB download goes through with bounded memory.

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};

/// The error type of bodies passing through the layer.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response the layer returns.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes`.
pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// Boxes any body.
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// The result of a bounded read.
pub(crate) enum Read {
    /// The whole body, within the limit.
    Whole(Bytes),
    /// Too large (or not read): the body to pass on, intact.
    TooLarge(Body),
}

/// Reads `body` whole if it fits in `limit` bytes.
pub(crate) async fn read_up_to<B>(body: B, limit: usize) -> Result<Read, BoxError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if body.size_hint().lower() > limit as u64 {
        return Ok(Read::TooLarge(boxed(body)));
    }
    let mut body = boxed(body);
    let mut buf = BytesMut::new();
    loop {
        match body.frame().await {
            None => return Ok(Read::Whole(buf.freeze())),
            Some(Err(e)) => return Err(e),
            Some(Ok(frame)) => {
                // Trailers of a stored response are dropped (we do not store them).
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if buf.len() + data.len() > limit {
                    // Too large after all: what we read, then the rest.
                    let head = futures_util::stream::iter([
                        Ok::<_, BoxError>(Frame::data(buf.freeze())),
                        Ok(Frame::data(data)),
                    ]);
                    let rest = futures_util::stream::unfold(body, |mut b| async move {
                        b.frame().await.map(|f| (f, b))
                    });
                    let chained = futures_util::StreamExt::chain(head, rest);
                    return Ok(Read::TooLarge(StreamBody::new(chained).boxed_unsync()));
                }
                buf.extend_from_slice(&data);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: Vec<&'static [u8]>) -> Body {
        let s = futures_util::stream::iter(
            parts
                .into_iter()
                .map(|p| Ok::<_, BoxError>(Frame::data(Bytes::from_static(p)))),
        );
        StreamBody::new(s).boxed_unsync()
    }

    #[tokio::test]
    async fn small_bodies_are_read_whole() {
        let Read::Whole(b) = read_up_to(chunks(vec![b"ab", b"cd"]), 4).await.unwrap() else {
            panic!("expected whole")
        };
        assert_eq!(&b[..], b"abcd");
    }

    #[tokio::test]
    async fn large_streams_pass_through_intact() {
        let Read::TooLarge(body) = read_up_to(chunks(vec![b"ab", b"cd", b"ef"]), 3)
            .await
            .unwrap()
        else {
            panic!("expected too large")
        };
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"abcdef");
        let Read::TooLarge(body) = read_up_to(full(Bytes::from_static(b"12345")), 3)
            .await
            .unwrap()
        else {
            panic!("expected too large")
        };
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"12345");
    }
}
