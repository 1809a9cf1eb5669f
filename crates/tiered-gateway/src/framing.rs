//! Strict HTTP/1 framing: requests that carry both `Content-Length` and
//! `Transfer-Encoding` are rejected.
//!
//! That shape is how request smuggling works: two parsers in a chain
//! disagree on where the body ends. RFC 9112 §6.1 lets a server either
//! reject it or use the chunked framing and close the connection; hyper does
//! the latter, and removes `Content-Length` before the request reaches us, so
//! the shape cannot be seen from the parsed request. A proxy should refuse it
//! outright (the next hop may be less careful), so this module watches the
//! raw bytes hyper reads: a small state machine follows the HTTP/1 message
//! boundaries of the connection (header block, then a `Content-Length` or
//! chunked body), checks each header block, and raises a per-connection flag
//! that the request handler turns into a 400 (after which hyper closes the
//! connection, as it does for this shape anyway).
//!
//! It costs one pass over the bytes of each request (bodies are skipped by
//! length, not scanned). HTTP/2 connections are recognised by their preface
//! and left alone: HTTP/2 has no `Transfer-Encoding`. What it cannot follow
//! (a malformed or oversized block) it fails closed: the connection's
//! requests are refused, as hyper would refuse them anyway.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Header blocks longer than this are refused (hyper refuses them too).
const MAX_HEAD: usize = 64 << 10;
/// Header fields in a block: hyper's default limit (more is its 431).
const MAX_HEADERS: usize = 100;
/// Chunk-size lines (with extensions) longer than this are refused.
const MAX_CHUNK_LINE: usize = 16 << 10;

#[derive(Debug)]
enum State {
    /// Nothing read yet (HTTP/1 or HTTP/2?).
    Start(Vec<u8>),
    /// Inside a header block.
    Head(Vec<u8>),
    /// Inside a body of known length.
    Body(u64),
    /// A chunk-size line.
    ChunkSize(Vec<u8>),
    /// Chunk data, then its CRLF.
    ChunkData(u64),
    /// Trailer lines after the last chunk, until an empty line.
    Trailers(Vec<u8>),
    /// Not followed (HTTP/2, or already flagged).
    Off,
}

/// Follows the message boundaries of one HTTP/1 connection.
#[derive(Debug)]
pub struct Framing {
    state: State,
    flagged: Arc<AtomicBool>,
}

impl Framing {
    /// A watcher raising `flagged` on a CL+TE request.
    pub fn new(flagged: Arc<AtomicBool>) -> Self {
        Framing {
            state: State::Start(Vec::new()),
            flagged,
        }
    }

    /// Feeds bytes the client sent, in order.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let state = std::mem::replace(&mut self.state, State::Off);
            let (next, used) = self.step(state, data);
            self.state = next;
            data = &data[used..];
        }
    }

    fn step(&mut self, state: State, data: &[u8]) -> (State, usize) {
        const PREFACE: &[u8] = b"PRI * HTTP/2.0";
        match state {
            State::Off => (State::Off, data.len()),
            State::Start(mut seen) => {
                let take = (PREFACE.len() - seen.len()).min(data.len());
                seen.extend_from_slice(&data[..take]);
                if !PREFACE.starts_with(&seen) {
                    // HTTP/1: what we saw is the start of a header block.
                    return (State::Head(seen), take);
                }
                if seen.len() == PREFACE.len() {
                    (State::Off, data.len())
                } else {
                    (State::Start(seen), take)
                }
            }
            State::Head(mut head) => {
                // Blank lines before a request line are skipped (as httparse
                // and hyper do).
                let mut skip = 0;
                if head.is_empty() {
                    skip = data
                        .iter()
                        .take_while(|b| **b == b'\r' || **b == b'\n')
                        .count();
                }
                let rest = &data[skip..];
                let tail = &head[head.len().saturating_sub(2)..];
                match block_end(tail, rest) {
                    // The whole block came in this read (the usual case):
                    // checked in place, nothing copied.
                    Some(end) if head.is_empty() => (self.after_head(&rest[..end]), skip + end),
                    Some(end) => {
                        head.extend_from_slice(&rest[..end]);
                        (self.after_head(&head), skip + end)
                    }
                    None if head.len() + rest.len() > MAX_HEAD => (self.fail_closed(), data.len()),
                    None => {
                        head.extend_from_slice(rest);
                        (State::Head(head), data.len())
                    }
                }
            }
            State::Body(left) => {
                let n = left.min(data.len() as u64);
                let rest = left - n;
                let next = if rest == 0 {
                    State::Head(Vec::new())
                } else {
                    State::Body(rest)
                };
                (next, n as usize)
            }
            State::ChunkSize(mut line) => match find(data, b"\n") {
                None => {
                    line.extend_from_slice(data);
                    if line.len() > MAX_CHUNK_LINE {
                        return (self.fail_closed(), data.len());
                    }
                    (State::ChunkSize(line), data.len())
                }
                Some(i) => {
                    line.extend_from_slice(&data[..i]);
                    let text = String::from_utf8_lossy(&line);
                    let size = text.split(';').next().unwrap_or("").trim();
                    match u64::from_str_radix(size, 16) {
                        Ok(0) => (State::Trailers(Vec::new()), i + 1),
                        // Data, then CRLF.
                        Ok(n) => (State::ChunkData(n.saturating_add(2)), i + 1),
                        Err(_) => (self.fail_closed(), data.len()),
                    }
                }
            },
            State::ChunkData(left) => {
                let n = left.min(data.len() as u64);
                let rest = left - n;
                let next = if rest == 0 {
                    State::ChunkSize(Vec::new())
                } else {
                    State::ChunkData(rest)
                };
                (next, n as usize)
            }
            State::Trailers(mut line) => match find(data, b"\n") {
                None => {
                    line.extend_from_slice(data);
                    if line.len() > MAX_HEAD {
                        return (self.fail_closed(), data.len());
                    }
                    (State::Trailers(line), data.len())
                }
                Some(i) => {
                    line.extend_from_slice(&data[..i]);
                    if line == b"\r" || line.is_empty() {
                        (State::Head(Vec::new()), i + 1)
                    } else {
                        (State::Trailers(Vec::new()), i + 1)
                    }
                }
            },
        }
    }

    /// Stops following the connection and refuses its requests: what we
    /// cannot follow, we cannot vouch for (a desync is how a smuggled
    /// request would get past us).
    fn fail_closed(&self) -> State {
        self.flagged.store(true, Ordering::Release);
        State::Off
    }

    /// What follows a complete header block.
    fn after_head(&mut self, head: &[u8]) -> State {
        // Uninitialised: nothing to fill on every request. As many fields
        // as hyper accepts (its default, which the listener keeps).
        let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        if !matches!(
            req.parse_with_uninit_headers(head, &mut headers),
            Ok(httparse::Status::Complete(_))
        ) {
            // hyper refuses it too; whatever it makes of it, we refuse.
            return self.fail_closed();
        }
        let mut length = None;
        let (mut cl, mut te, mut chunked) = (false, false, false);
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                cl = true;
                length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok());
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = true;
                chunked = String::from_utf8_lossy(h.value)
                    .to_ascii_lowercase()
                    .trim_end()
                    .ends_with("chunked");
            }
        }
        if cl && te {
            return self.fail_closed();
        }
        match (chunked, length) {
            (true, _) => State::ChunkSize(Vec::new()),
            (false, Some(n)) if n > 0 => State::Body(n),
            _ => State::Head(Vec::new()),
        }
    }
}

/// Where a header block ends in `data` (the index after its blank line), if
/// it does: a LF followed by LF or CRLF (bare LF line ends are accepted by
/// httparse, so they must end a block here too). `tail` is the end of what
/// was read before, for a blank line split across reads.
fn block_end(tail: &[u8], data: &[u8]) -> Option<usize> {
    let at = |i: usize, back: usize| -> Option<u8> {
        match i.checked_sub(back) {
            Some(j) => data.get(j).copied(),
            None => tail
                .len()
                .checked_sub(back - i)
                .and_then(|j| tail.get(j).copied()),
        }
    };
    memchr::memchr_iter(b'\n', data).find_map(|i| {
        let blank = at(i, 1) == Some(b'\n') || (at(i, 1) == Some(b'\r') && at(i, 2) == Some(b'\n'));
        blank.then_some(i + 1)
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pin_project_lite::pin_project! {
    /// A client connection whose incoming bytes pass through [`Framing`].
    pub struct Watched<T> {
        #[pin]
        io: T,
        framing: Framing,
    }
}

impl<T> Watched<T> {
    /// Watches `io`, raising `flagged` on a CL+TE request.
    pub fn new(io: T, flagged: Arc<AtomicBool>) -> Self {
        Watched {
            io,
            framing: Framing::new(flagged),
        }
    }
}

impl<T: AsyncRead> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.io.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            this.framing.feed(&buf.filled()[before..]);
        }
        res
    }
}

impl<T: AsyncWrite> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns the flag.
    fn flagged(input: &[u8], step: usize) -> bool {
        let flag = Arc::new(AtomicBool::new(false));
        let mut f = Framing::new(Arc::clone(&flag));
        for piece in input.chunks(step) {
            f.feed(piece);
        }
        flag.load(Ordering::Acquire)
    }

    #[test]
    fn flags_cl_plus_te_at_any_split() {
        let bad = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        for step in [1, 2, 3, 7, 1000] {
            assert!(flagged(bad, step), "step {step}");
        }
    }

    #[test]
    fn follows_bodies_to_the_next_request() {
        // A CL body that looks like a header block must not be judged; the
        // CL+TE request after a chunked one must be.
        let mut ok = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 43\r\n\r\n".to_vec();
        ok.extend_from_slice(b"Content-Length: 1\r\nTransfer-Encoding: x\r\n\r\n");
        ok.extend_from_slice(b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
        ok.extend_from_slice(b"5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n");
        ok.extend_from_slice(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n");
        for step in [1, 5, 4096] {
            assert!(!flagged(&ok, step), "step {step}");
        }
        let mut bad = ok.clone();
        bad.extend_from_slice(
            b"POST /d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        );
        for step in [1, 5, 4096] {
            assert!(flagged(&bad, step), "step {step}");
        }
    }

    #[test]
    fn bare_lf_and_leading_blank_lines_do_not_hide_it() {
        let lf =
            b"POST / HTTP/1.1\nHost: x\nContent-Length: 5\nTransfer-Encoding: chunked\n\n0\n\n";
        let mut after_blank = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\r\n\r\n\r\n".to_vec();
        after_blank.extend_from_slice(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        for step in [1, 2, 3, 4096] {
            assert!(flagged(lf, step), "bare LF, step {step}");
            assert!(flagged(&after_blank, step), "blank lines, step {step}");
        }
        let ok = b"GET / HTTP/1.1\nHost: x\n\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(!flagged(ok, 1));
        assert!(!flagged(ok, 4096));
    }

    #[test]
    fn what_it_cannot_follow_is_refused() {
        let mut long_chunk =
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;".to_vec();
        long_chunk.extend(std::iter::repeat_n(b'a', 20_000));
        assert!(flagged(&long_chunk, 1000));
        let mut ok_chunk =
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;".to_vec();
        ok_chunk.extend(std::iter::repeat_n(b'a', 2_000));
        ok_chunk.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        assert!(!flagged(&ok_chunk, 700));
        assert!(flagged(b"GARBAGE\r\n\r\n", 3));
    }

    #[test]
    fn pipelined_requests_are_each_checked_once() {
        let mut many = Vec::new();
        for _ in 0..1000 {
            many.extend_from_slice(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n");
        }
        assert!(!flagged(&many, 64 << 10));
        many.extend_from_slice(
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert!(flagged(&many, 64 << 10));
    }

    #[test]
    fn http2_is_left_alone() {
        let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        h2.extend_from_slice(b"Content-Length: 1\r\nTransfer-Encoding: x\r\n\r\n");
        assert!(!flagged(&h2, 3));
    }
}
