//! Accepts any HTTP/2 `:authority` on the CRI socket, as containerd and CRI-O do.
//!
//! gRPC clients disagree on what a unix socket's authority is: grpc-go before 1.5x (kubelet
//! 1.26) and grpc-java send the socket path (`/run/berth/berth.sock`), gRPC core (Python grpcio,
//! C++) sends it percent-encoded, grpcurl sends the path too, newer grpc-go sends `localhost`,
//! and some send nothing or an empty value. The HTTP/2 server under tonic (`h2`) parses
//! `:authority` as an RFC 3986 authority and resets any stream whose value does not parse
//! (`PROTOCOL_ERROR`), and it has no switch to relax that (hyperium/h2#487 is unmerged). So
//! [`NormalizeAuthority`] sits between the socket and `h2` and rewrites the client's header blocks:
//! a `:authority` that `h2` would refuse becomes [`REPLACEMENT_AUTHORITY`]; every other header,
//! frame and byte reaches `h2` unchanged, and `h2` still validates all of it.
//!
//! How (RFC 9113 §4 framing, RFC 7541 HPACK):
//! - client-to-server bytes are split into frames; all but HEADERS and CONTINUATION pass through
//!   as they are (DATA straight into the reader's buffer, without a copy);
//! - a header block (HEADERS plus any CONTINUATION frames) is decoded with the client's HPACK
//!   context, the authority fixed, and the block re-encoded with a fresh encoder whose dynamic
//!   table is empty (size 0), so it never refers to entries `h2` has not seen; padding is
//!   dropped, the priority fields and END_STREAM are kept, and the block is re-split at the
//!   default SETTINGS_MAX_FRAME_SIZE (16384), which berth's server never raises;
//! - the server-to-client direction is not touched.
//!
//! A client that breaks the framing or HPACK rules gets its connection closed (the reader
//! returns [`std::io::ErrorKind::InvalidData`]), where `h2` would have sent GOAWAY with
//! PROTOCOL_ERROR or COMPRESSION_ERROR.

use loona_hpack::{Decoder, Encoder};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The value a refused `:authority` is replaced with: what grpc-go and Kubernetes' own clients
/// send for a unix socket.
pub const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

/// The client connection preface (RFC 9113 §3.4), passed through unchanged.
const PREFACE_LEN: usize = 24;
/// Frame header length (RFC 9113 §4.1).
const FRAME_HEADER_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE as `h2` serves it (the protocol default; berth never raises it).
/// A longer HEADERS or CONTINUATION frame is a framing error.
const MAX_FRAME_LEN: usize = 16_384;
/// SETTINGS_HEADER_TABLE_SIZE the server advertises (the default, 4096 octets): the most the
/// client's encoder may use, and so the most our decoder allows.
const HEADER_TABLE_SIZE: usize = 4096;
/// Largest header block accepted, encoded (sum of fragments) and decoded (RFC 7541 §4.1 sizes:
/// name + value + 32 per field). hyper refuses a header list over 16 KiB on its own; this bound
/// only keeps a hostile client from making the proxy hold more.
const MAX_BLOCK_LEN: usize = 1 << 20;

const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// A connection whose client-to-server HTTP/2 stream has every `:authority` made acceptable to
/// `h2` (see the module doc). Reads are transformed; writes go to the inner stream unchanged.
pub struct NormalizeAuthority<S> {
    inner: S,
    rewriter: Rewriter,
}

impl<S> NormalizeAuthority<S> {
    /// Wraps a freshly accepted connection (the client preface not yet read).
    pub fn new(inner: S) -> Self {
        NormalizeAuthority { inner, rewriter: Rewriter::new() }
    }
}

/// The client-to-server transformation, independent of any I/O.
struct Rewriter {
    /// Bytes read from the client and not yet transformed.
    raw: Vec<u8>,
    /// Transformed bytes, ready for the server.
    out: Vec<u8>,
    /// Start of the unread part of `out`.
    out_pos: usize,
    /// Preface bytes still to pass through.
    preface_left: usize,
    /// Payload bytes of the current pass-through frame still to come.
    passthrough_left: usize,
    /// A header block whose END_HEADERS has not arrived yet.
    pending: Option<PendingBlock>,
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
    /// The client closed its side.
    eof: bool,
}

struct PendingBlock {
    stream_id: u32,
    /// END_STREAM of the HEADERS frame (and PRIORITY, when `priority` is set).
    flags: u8,
    /// Stream dependency and weight of the HEADERS frame (RFC 9113 §6.2), when PRIORITY was set.
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// A client broke the HTTP/2 framing or HPACK rules.
#[derive(Debug, thiserror::Error)]
enum ProtocolError {
    #[error("HTTP/2 {kind} frame of {len} bytes on stream {stream_id} is longer than the {MAX_FRAME_LEN}-byte maximum frame size")]
    FrameTooLong { kind: &'static str, len: usize, stream_id: u32 },
    #[error("HTTP/2 HEADERS frame on stream {0}: padding or priority longer than the frame")]
    BadPadding(u32),
    #[error("HTTP/2 CONTINUATION frame on stream {0} without a HEADERS frame before it")]
    StrayContinuation(u32),
    #[error(
        "HTTP/2 frame of type {kind:#x} on stream {stream_id} inside the header block of stream {block}: only CONTINUATION may follow"
    )]
    InterruptedBlock { kind: u8, stream_id: u32, block: u32 },
    #[error("HTTP/2 header block on stream {0} is larger than {MAX_BLOCK_LEN} bytes")]
    BlockTooLarge(u32),
    #[error("HPACK header block on stream {stream_id} does not decode: {reason}")]
    Hpack { stream_id: u32, reason: String },
}

impl Rewriter {
    fn new() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        let mut encoder = Encoder::new();
        encoder.set_max_table_size(0);
        Rewriter {
            raw: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            preface_left: PREFACE_LEN,
            passthrough_left: 0,
            pending: None,
            decoder,
            encoder,
            eof: false,
        }
    }

    fn unread_out(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    fn consume_out(&mut self, n: usize) {
        self.out_pos += n;
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
    }

    /// True when the next bytes from the client can go straight to the server: inside a
    /// pass-through frame with nothing buffered ahead of them.
    fn direct_read_len(&self) -> usize {
        if self.raw.is_empty() && self.unread_out().is_empty() {
            self.preface_left.max(self.passthrough_left)
        } else {
            0
        }
    }

    /// Accounts for `n` bytes read straight into the server's buffer (at most
    /// [`Self::direct_read_len`]).
    fn passed_directly(&mut self, n: usize) {
        if self.preface_left > 0 {
            self.preface_left -= n;
        } else {
            self.passthrough_left -= n;
        }
    }

    /// Transforms as much of `raw` as forms whole units into `out`.
    fn process(&mut self) -> Result<(), ProtocolError> {
        let mut at = 0;
        let result = loop {
            let avail = self.raw.len() - at;
            if avail == 0 {
                break Ok(());
            }
            let through = if self.preface_left > 0 { &mut self.preface_left } else { &mut self.passthrough_left };
            if *through > 0 {
                let n = (*through).min(avail);
                *through -= n;
                self.out.extend_from_slice(&self.raw[at..at + n]);
                at += n;
                continue;
            }
            if avail < FRAME_HEADER_LEN {
                break Ok(());
            }
            let h = &self.raw[at..at + FRAME_HEADER_LEN];
            let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            let (kind, flags) = (h[3], h[4]);
            let stream_id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            if let Some(p) = &self.pending {
                if kind != TYPE_CONTINUATION {
                    break Err(ProtocolError::InterruptedBlock { kind, stream_id, block: p.stream_id });
                }
            }
            if kind != TYPE_HEADERS && kind != TYPE_CONTINUATION {
                self.out.extend_from_slice(h);
                at += FRAME_HEADER_LEN;
                self.passthrough_left = len;
                continue;
            }
            if len > MAX_FRAME_LEN {
                let kind = if kind == TYPE_HEADERS { "HEADERS" } else { "CONTINUATION" };
                break Err(ProtocolError::FrameTooLong { kind, len, stream_id });
            }
            if avail < FRAME_HEADER_LEN + len {
                break Ok(());
            }
            let start = at + FRAME_HEADER_LEN;
            at = start + len;
            let payload = self.raw[start..at].to_vec();
            let step = if kind == TYPE_HEADERS {
                self.headers_frame(flags, stream_id, &payload)
            } else {
                self.continuation_frame(flags, stream_id, &payload)
            };
            if let Err(e) = step {
                break Err(e);
            }
        };
        self.raw.drain(..at);
        result
    }

    fn headers_frame(&mut self, flags: u8, stream_id: u32, payload: &[u8]) -> Result<(), ProtocolError> {
        let mut body = payload;
        if flags & FLAG_PADDED != 0 {
            let (&pad, rest) = body.split_first().ok_or(ProtocolError::BadPadding(stream_id))?;
            let keep = rest.len().checked_sub(usize::from(pad)).ok_or(ProtocolError::BadPadding(stream_id))?;
            body = &rest[..keep];
        }
        let mut priority = None;
        if flags & FLAG_PRIORITY != 0 {
            if body.len() < 5 {
                return Err(ProtocolError::BadPadding(stream_id));
            }
            let mut p = [0u8; 5];
            p.copy_from_slice(&body[..5]);
            priority = Some(p);
            body = &body[5..];
        }
        self.pending =
            Some(PendingBlock { stream_id, flags: flags & (FLAG_END_STREAM | FLAG_PRIORITY), priority, fragment: body.to_vec() });
        if flags & FLAG_END_HEADERS != 0 {
            self.finish_block()?;
        }
        Ok(())
    }

    fn continuation_frame(&mut self, flags: u8, stream_id: u32, payload: &[u8]) -> Result<(), ProtocolError> {
        let Some(p) = self.pending.as_mut().filter(|p| p.stream_id == stream_id) else {
            return Err(ProtocolError::StrayContinuation(stream_id));
        };
        if p.fragment.len() + payload.len() > MAX_BLOCK_LEN {
            return Err(ProtocolError::BlockTooLarge(stream_id));
        }
        p.fragment.extend_from_slice(payload);
        if flags & FLAG_END_HEADERS != 0 {
            self.finish_block()?;
        }
        Ok(())
    }

    /// Decodes the pending block, fixes `:authority`, and writes the re-encoded block as
    /// HEADERS (+ CONTINUATION) frames to `out`.
    fn finish_block(&mut self) -> Result<(), ProtocolError> {
        let Some(block) = self.pending.take() else { return Ok(()) };
        let stream_id = block.stream_id;
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut size = 0usize;
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                size += name.len() + value.len() + 32;
                if size <= MAX_BLOCK_LEN {
                    fields.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|e| ProtocolError::Hpack { stream_id, reason: e.to_string() })?;
        if size > MAX_BLOCK_LEN {
            return Err(ProtocolError::BlockTooLarge(stream_id));
        }
        for (name, value) in fields.iter_mut() {
            if name.as_slice() == b":authority" && !acceptable_authority(value) {
                tracing::debug!(authority = %String::from_utf8_lossy(value), stream_id, "HTTP/2 :authority h2 would refuse replaced by localhost");
                *value = REPLACEMENT_AUTHORITY.to_vec();
            }
        }
        let mut encoded = Vec::with_capacity(block.fragment.len() + 16);
        if let Some(p) = block.priority {
            encoded.extend_from_slice(&p);
        }
        self.encoder
            .encode_into(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())), &mut encoded)
            .map_err(|e| ProtocolError::Hpack { stream_id, reason: e.to_string() })?;
        let mut chunks = encoded.chunks(MAX_FRAME_LEN).peekable();
        let mut kind = TYPE_HEADERS;
        let mut flags = block.flags;
        // An empty block is still one HEADERS frame.
        let empty: &[u8] = &[];
        let first = chunks.next().unwrap_or(empty);
        let mut chunk = first;
        loop {
            let last = chunks.peek().is_none();
            if last {
                flags |= FLAG_END_HEADERS;
            }
            write_frame_header(&mut self.out, chunk.len(), kind, flags, stream_id);
            self.out.extend_from_slice(chunk);
            match chunks.next() {
                Some(next) => {
                    chunk = next;
                    kind = TYPE_CONTINUATION;
                    flags = 0;
                }
                None => break,
            }
        }
        Ok(())
    }
}

/// True when `h2` accepts `value` as `:authority`: it parses it as an RFC 3986 authority with
/// `http::uri::Authority`, which refuses an empty value and characters such as `/`.
fn acceptable_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

fn write_frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream_id: u32) {
    let len = len as u32; // at most MAX_FRAME_LEN
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream_id.to_be_bytes());
}

impl<S: AsyncRead + Unpin> AsyncRead for NormalizeAuthority<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let rw = &mut this.rewriter;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            let ready = rw.unread_out();
            if !ready.is_empty() {
                let n = ready.len().min(buf.remaining());
                buf.put_slice(&ready[..n]);
                rw.consume_out(n);
                return Poll::Ready(Ok(()));
            }
            if rw.eof {
                // Whatever was left of an unfinished frame goes to the server, which sees the
                // truncation itself.
                if !rw.raw.is_empty() {
                    let rest = std::mem::take(&mut rw.raw);
                    rw.out = rest;
                    rw.out_pos = 0;
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            let direct = rw.direct_read_len();
            if direct > 0 {
                // Preface or pass-through payload: read it straight into the caller's buffer.
                let limit = direct.min(buf.remaining());
                let mut direct_buf = ReadBuf::new(buf.initialize_unfilled_to(limit));
                match Pin::new(&mut this.inner).poll_read(cx, &mut direct_buf) {
                    Poll::Ready(Ok(())) => {
                        let n = direct_buf.filled().len();
                        if n == 0 {
                            rw.eof = true;
                            return Poll::Ready(Ok(()));
                        }
                        buf.advance(n);
                        rw.passed_directly(n);
                        return Poll::Ready(Ok(()));
                    }
                    other => return other,
                }
            }
            let old = rw.raw.len();
            rw.raw.resize(old + MAX_FRAME_LEN, 0);
            let mut chunk = ReadBuf::new(&mut rw.raw[old..]);
            let polled = Pin::new(&mut this.inner).poll_read(cx, &mut chunk);
            let n = chunk.filled().len();
            rw.raw.truncate(old + n);
            match polled {
                Poll::Ready(Ok(())) if n == 0 => rw.eof = true,
                Poll::Ready(Ok(())) => {
                    if let Err(e) = rw.process() {
                        tracing::warn!(error = %e, "closing a CRI connection that broke the HTTP/2 rules");
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())));
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for NormalizeAuthority<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for NormalizeAuthority<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
#[path = "authority_tests.rs"]
mod tests;
