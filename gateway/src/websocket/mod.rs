//! The server side of a WebSocket, written for many mostly idle connections
//! and shared fan-out frames (see BENCHMARKS.md, "The connection layer").
//!
//! - **Writes** keep no buffer of their own: a frame queued for writing is
//!   its header (up to 10 bytes, kept inline) and a reference to its
//!   payload, the `Bytes` every member's queue shares, so a message sent to
//!   a thousand members is encoded once and copied by nobody but the kernel.
//!   A flush writes what is queued with vectored writes (`writev`, up to
//!   [`GATHER`] frames per call). The queue of frames is dropped once empty,
//!   so a connection that was once sent a large presence list does not keep
//!   a buffer of that size (tungstenite keeps its write buffer at its
//!   high-water mark).
//! - **Reads** go through a buffer on the stack; only the bytes of a frame
//!   that is not complete yet (or of frames after the one returned) are
//!   kept, in a buffer that exists while they do. An idle connection holds
//!   no read buffer.
//! - Pings are answered with pongs, a close frame with the close reply;
//!   fragmented messages are reassembled; frames and messages are checked
//!   against RFC 6455 (masking, reserved bits, control frame rules, UTF-8,
//!   close codes) and the size limit, and refused with [`WsError`].
//!
//! The socket is a `Stream` and `Sink` of axum's WebSocket messages, which is
//! what the connection (`conn::Socket`) reads and writes; the upgrade that
//! makes one is in `upgrade`.

mod frame;
mod upgrade;

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use frame::{FrameError, Opcode};
pub(crate) use upgrade::WsUpgrade;

/// Bytes read per system call, into a buffer on the stack.
const READ_CHUNK: usize = 4096;
/// Frames given to one vectored write.
const GATHER: usize = 128;
/// Bytes queued for writing above which `poll_ready` writes before it takes
/// more: a connection draining a backlog makes one system call for many
/// frames, and one whose client stopped reading stops taking frames (the
/// caller's write timeout then closes it as slow).
const WRITE_HIGH: usize = 64 * 1024;

/// Why the socket failed: the client broke the protocol, or the I/O did.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WsError {
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
    #[error("websocket message over the size limit")]
    TooBig,
    #[error("websocket text message is not UTF-8")]
    Utf8,
    #[error("websocket already closed")]
    Closed,
    #[error("websocket i/o: {0}")]
    Io(#[from] io::Error),
}

impl From<FrameError> for WsError {
    fn from(e: FrameError) -> WsError {
        match e {
            FrameError::Protocol(why) => WsError::Protocol(why),
            FrameError::TooBig => WsError::TooBig,
        }
    }
}

fn err(e: impl Into<WsError>) -> axum::Error {
    axum::Error::new(e.into())
}

/// The error behind an `axum::Error` a [`WsSocket`] returned.
pub(crate) fn ws_error(e: &axum::Error) -> Option<&WsError> {
    std::error::Error::source(e)?.downcast_ref::<WsError>()
}

/// One frame queued for writing: its header inline, its payload shared.
struct Chunk {
    head: [u8; 10],
    head_len: u8,
    body: Bytes,
    /// Bytes of header and body already written.
    sent: usize,
}

impl Chunk {
    fn new(opcode: Opcode, body: Bytes) -> Chunk {
        let (head, head_len) = frame::encode_header(opcode, body.len());
        Chunk {
            head,
            head_len,
            body,
            sent: 0,
        }
    }

    fn len(&self) -> usize {
        usize::from(self.head_len) + self.body.len()
    }

    /// What is left to write, as at most two slices.
    fn slices(&self) -> (&[u8], &[u8]) {
        let head = &self.head[..usize::from(self.head_len)];
        if self.sent < head.len() {
            (&head[self.sent..], &self.body)
        } else {
            (&[], &self.body[self.sent - head.len()..])
        }
    }
}

/// A fragmented message being reassembled.
struct Partial {
    text: bool,
    data: Vec<u8>,
}

/// The server end of a WebSocket over `T` (the upgraded TCP stream).
pub(crate) struct WsSocket<T> {
    io: T,
    /// Read but not yet parsed (from `rpos`): a partial frame, or the frames
    /// after the one returned. Empty (unallocated) otherwise.
    rbuf: Vec<u8>,
    /// Where the unparsed bytes of `rbuf` start: frames are taken without
    /// moving the rest, which is moved to the front once, before a read.
    rpos: usize,
    /// A fragmented message, while its frames arrive.
    partial: Option<Box<Partial>>,
    /// Frames to write, in order.
    out: VecDeque<Chunk>,
    /// Bytes in `out` not yet written.
    out_bytes: usize,
    /// Largest message (and frame) accepted, payload bytes.
    max_message: usize,
    /// The client's close frame arrived (or its end of the stream): no more reads.
    read_done: bool,
    /// Our close frame is queued: nothing more may be sent.
    close_sent: bool,
}

impl<T: AsyncRead + AsyncWrite + Unpin> WsSocket<T> {
    /// A socket over `io`, whose first bytes (read with the upgrade request)
    /// are `pre`.
    pub(crate) fn new(io: T, pre: &[u8], max_message: usize) -> WsSocket<T> {
        WsSocket {
            io,
            rbuf: pre.to_vec(),
            rpos: 0,
            partial: None,
            out: VecDeque::new(),
            out_bytes: 0,
            max_message,
            read_done: false,
            close_sent: false,
        }
    }

    fn queue(&mut self, opcode: Opcode, body: Bytes) {
        let c = Chunk::new(opcode, body);
        self.out_bytes += c.len();
        self.out.push_back(c);
    }

    /// Write everything queued.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); GATHER * 2];
            let mut n = 0;
            for c in self.out.iter().take(GATHER) {
                let (h, b) = c.slices();
                for s in [h, b] {
                    if !s.is_empty() {
                        slices[n] = IoSlice::new(s);
                        n += 1;
                    }
                }
            }
            let written = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(written);
        }
        // An idle connection keeps no queue (a malloc per burst costs less
        // than the memory of every idle connection's slots).
        if self.out.capacity() > 0 {
            self.out = VecDeque::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Drop `n` written bytes from the front of the queue.
    fn advance(&mut self, mut n: usize) {
        self.out_bytes -= n;
        while n > 0 {
            let Some(c) = self.out.front_mut() else {
                return;
            };
            let left = c.len() - c.sent;
            if n < left {
                c.sent += n;
                return;
            }
            n -= left;
            self.out.pop_front();
        }
    }

    /// Read more bytes into `rbuf`. `Ok(false)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut stack = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut stack);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        let got = buf.filled();
        if got.is_empty() {
            return Poll::Ready(Ok(false));
        }
        self.rbuf.extend_from_slice(got);
        Poll::Ready(Ok(true))
    }

    /// The next complete frame in `rbuf`, taken out of it (header checked,
    /// payload unmasked).
    fn take_frame(&mut self) -> Result<Option<(bool, Opcode, Vec<u8>)>, WsError> {
        let room = self.max_message - self.partial.as_ref().map_or(0, |p| p.data.len());
        let avail = &self.rbuf[self.rpos..];
        let Some(h) = frame::parse(avail, room)? else {
            self.compact();
            return Ok(None);
        };
        let end = h.head + h.len;
        if avail.len() < end {
            self.compact();
            // Room for the rest of the frame, once (its length is checked).
            self.rbuf.reserve_exact(end - self.rbuf.len());
            return Ok(None);
        }
        let payload = frame::unmask(&avail[h.head..end], h.mask);
        self.rpos += end;
        if self.rpos == self.rbuf.len() {
            // The common case: the read held exactly this frame.
            self.rbuf = Vec::new();
            self.rpos = 0;
        }
        Ok(Some((h.fin, h.opcode, payload)))
    }

    /// Move the unparsed bytes to the front of the read buffer (before a read).
    fn compact(&mut self) {
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
    }

    /// Turn one frame into a message for the caller, or `None` when it only
    /// continued a fragmented message (or was answered here).
    fn on_frame(
        &mut self,
        cx: &mut Context<'_>,
        fin: bool,
        opcode: Opcode,
        payload: Vec<u8>,
    ) -> Result<Option<Message>, WsError> {
        match opcode {
            Opcode::Text | Opcode::Binary => {
                if self.partial.is_some() {
                    return Err(WsError::Protocol("new message inside a fragmented one"));
                }
                let text = opcode == Opcode::Text;
                if fin {
                    return data_message(text, payload).map(Some);
                }
                self.partial = Some(Box::new(Partial {
                    text,
                    data: payload,
                }));
                Ok(None)
            }
            Opcode::Continuation => {
                let Some(mut p) = self.partial.take() else {
                    return Err(WsError::Protocol("continuation without a message"));
                };
                p.data.extend_from_slice(&payload);
                if !fin {
                    self.partial = Some(p);
                    return Ok(None);
                }
                data_message(p.text, p.data).map(Some)
            }
            Opcode::Ping => {
                let payload = Bytes::from(payload);
                if !self.close_sent {
                    self.queue(Opcode::Pong, payload.clone());
                    self.poll_write_soon(cx);
                }
                Ok(Some(Message::Ping(payload)))
            }
            Opcode::Pong => Ok(Some(Message::Pong(Bytes::from(payload)))),
            Opcode::Close => {
                let close = parse_close(&payload)?;
                self.read_done = true;
                if !self.close_sent {
                    // The close reply echoes the client's code (RFC 6455 5.5.1).
                    let reply = match &close {
                        Some(c) => Bytes::copy_from_slice(&c.code.to_be_bytes()),
                        None => Bytes::new(),
                    };
                    self.queue(Opcode::Close, reply);
                    self.close_sent = true;
                    self.poll_write_soon(cx);
                }
                Ok(Some(Message::Close(close)))
            }
        }
    }

    /// Start writing what is queued (a pong, a close reply) without waiting:
    /// if the socket is full it goes out with the next flush.
    fn poll_write_soon(&mut self, cx: &mut Context<'_>) {
        let _ = self.poll_write_out(cx);
    }
}

fn data_message(text: bool, payload: Vec<u8>) -> Result<Message, WsError> {
    if text {
        let s = String::from_utf8(payload).map_err(|_| WsError::Utf8)?;
        Ok(Message::Text(Utf8Bytes::from(s)))
    } else {
        Ok(Message::Binary(Bytes::from(payload)))
    }
}

/// A close frame's payload: empty, or a valid code and a UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<Option<CloseFrame>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::Protocol("close frame of one byte")),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !frame::valid_close_code(code) {
                return Err(WsError::Protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WsError::Utf8)?;
            Ok(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from(reason),
            }))
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Stream for WsSocket<T> {
    type Item = Result<Message, axum::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.read_done {
                return Poll::Ready(None);
            }
            match this.take_frame() {
                Err(e) => {
                    this.read_done = true;
                    return Poll::Ready(Some(Err(err(e))));
                }
                Ok(Some((fin, opcode, payload))) => match this.on_frame(cx, fin, opcode, payload) {
                    Ok(Some(m)) => return Poll::Ready(Some(Ok(m))),
                    Ok(None) => continue,
                    Err(e) => {
                        this.read_done = true;
                        return Poll::Ready(Some(Err(err(e))));
                    }
                },
                Ok(None) => {}
            }
            match ready!(this.poll_fill(cx)) {
                Ok(true) => {}
                Ok(false) => {
                    // The end of the stream without a close frame.
                    this.read_done = true;
                    return Poll::Ready(None);
                }
                Err(e) => {
                    this.read_done = true;
                    return Poll::Ready(Some(Err(err(e))));
                }
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Sink<Message> for WsSocket<T> {
    type Error = axum::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        if this.out_bytes < WRITE_HIGH {
            return Poll::Ready(Ok(()));
        }
        match this.poll_write_out(cx) {
            Poll::Ready(r) => Poll::Ready(r.map_err(err)),
            Poll::Pending if this.out_bytes < WRITE_HIGH => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn start_send(self: Pin<&mut Self>, msg: Message) -> Result<(), Self::Error> {
        let this = self.get_mut();
        if this.close_sent {
            return Err(err(WsError::Closed));
        }
        match msg {
            Message::Text(t) => this.queue(Opcode::Text, Bytes::from(t)),
            Message::Binary(b) => this.queue(Opcode::Binary, b),
            Message::Ping(b) => this.queue(Opcode::Ping, b),
            Message::Pong(b) => this.queue(Opcode::Pong, b),
            Message::Close(c) => {
                let body = match c {
                    None => Bytes::new(),
                    Some(c) => {
                        // A control frame's payload is at most 125 bytes.
                        let reason = c.reason.as_str();
                        let mut cut = reason.len().min(123);
                        while !reason.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        let reason = &reason[..cut];
                        let mut b = Vec::with_capacity(2 + reason.len());
                        b.extend_from_slice(&c.code.to_be_bytes());
                        b.extend_from_slice(reason.as_bytes());
                        Bytes::from(b)
                    }
                };
                this.queue(Opcode::Close, body);
                this.close_sent = true;
            }
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx)).map_err(err)?;
        Pin::new(&mut this.io).poll_flush(cx).map_err(err)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().io)
            .poll_shutdown(cx)
            .map_err(err)
    }
}

#[cfg(test)]
mod tests;
