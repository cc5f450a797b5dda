//! SPDY/3.1: framing, header compression and an async stream multiplexer for both roles.
//!
//! This is the transport kubelet's (client-go's) `httpstream/spdy` speaks after the HTTP
//! `Upgrade: SPDY/3.1` handshake: moby/spdystream over Go's SPDY/3 framer. Follows
//! draft-mbelshe-httpbis-spdy-00 (SPDY/3) and Chromium's SPDY/3.1 additions (session-level flow
//! control with WINDOW_UPDATE on stream 0).
//!
//! - [`frame`]: the wire frames, parse ("need more" / frame / error) and serialize.
//! - [`header`]: name/value header blocks, zlib-compressed with the SPDY/3 dictionary, one
//!   compressor and one decompressor per connection, with hard size limits.
//! - [`session`]: [`Session`] and [`Stream`], the multiplexer over any async byte stream.
//!
//! Flow control and real peers: moby/spdystream (what kubectl, client-go and kubelet use) does
//! not implement SPDY/3.1 flow control: it never sends WINDOW_UPDATE and ignores ours. Sending
//! therefore follows [`FlowControl`]: by default (`Auto`) the peer's windows are honoured once
//! the peer shows it does flow control (a WINDOW_UPDATE or SETTINGS_INITIAL_WINDOW_SIZE); a peer
//! that lets a window run dry and sends nothing for [`AUTO_FLOW_GRACE`] is taken to be such a
//! peer and is no longer held to windows. On receive, a peer that overruns our window is not
//! reset but slowed down: the session stops reading the connection until the application has
//! drained that stream, so memory per stream stays bounded by the window either way.

pub mod dictionary;
pub mod frame;
pub mod header;
pub mod session;
mod session_io;
mod stream;

#[cfg(test)]
mod session_tests;

pub use session::{FlowControl, Session, SessionConfig, AUTO_FLOW_GRACE};
pub use stream::Stream;

/// Errors of the SPDY layer.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    /// A frame could not be parsed or serialized.
    #[error(transparent)]
    Frame(#[from] frame::FrameError),
    /// A header block could not be compressed, decompressed or decoded.
    #[error(transparent)]
    Header(#[from] header::HeaderError),
    /// The connection is gone (peer closed it, I/O error, or the session shut down).
    #[error("SPDY session closed: {0}")]
    Closed(String),
    /// A GOAWAY was sent or received: no new streams may be opened.
    #[error("SPDY session is going away: no new streams")]
    GoingAway,
    /// The peer reset the stream (RST_STREAM with this status code, SPDY/3 §2.4.2).
    #[error("SPDY stream {stream_id} reset by peer with status {status}")]
    Reset {
        /// The stream.
        stream_id: u32,
        /// RST_STREAM status code.
        status: u32,
    },
    /// This side ran out of stream ids (ids are 31-bit).
    #[error("SPDY stream ids exhausted")]
    IdsExhausted,
}
