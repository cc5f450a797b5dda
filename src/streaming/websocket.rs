//! The Kubernetes WebSocket channel framing (apimachinery `wsstream`): every message carries one
//! channel's bytes, prefixed by the channel number (0 stdin, 1 stdout, 2 stderr, 3 error,
//! 4 resize for remotecommand; 2i data / 2i+1 error for the i-th forwarded port). Binary
//! protocols put the channel as a raw byte in a binary message; `base64.` protocols send text
//! messages whose first character is the channel as an ASCII digit and the rest the payload in
//! standard base64. v5 adds the close signal: byte 255 followed by the channel to half-close.

use crate::base64;
use bytes::Bytes;
use tokio_tungstenite::tungstenite::Message;

/// Channel of the remotecommand client's stdin.
pub const STDIN: u8 = 0;
/// Channel of the process's stdout.
pub const STDOUT: u8 = 1;
/// Channel of the process's stderr.
pub const STDERR: u8 = 2;
/// Channel of the final status / error text.
pub const ERROR: u8 = 3;
/// Channel of terminal resize JSON messages.
pub const RESIZE: u8 = 4;
/// v5 close signal marker (client-go `remotecommand.StreamClose`).
pub const CLOSE_SIGNAL: u8 = 255;

/// One decoded client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Payload for `channel` (possibly empty).
    Data {
        /// Channel number.
        channel: u8,
        /// Decoded bytes.
        data: Bytes,
    },
    /// v5: the client will send no more on `channel` (stdin EOF).
    Close {
        /// Channel number.
        channel: u8,
    },
}

/// A message that breaks the framing; the connection is ended with it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// A base64 message whose payload does not decode.
    #[error("websocket channel {channel}: payload is not valid base64: {source}")]
    Base64 {
        /// Channel of the message.
        channel: u8,
        /// What was wrong.
        source: base64::Base64Error,
    },
    /// A base64 message whose channel character is not a digit.
    #[error("websocket base64 message: channel character 0x{0:02x} is not an ASCII digit")]
    BadChannel(u8),
    /// A v5 close signal that is not exactly 2 bytes.
    #[error("websocket close signal: expected 2 bytes (255, channel), got {0}")]
    BadClose(usize),
}

/// Encodes `data` for `channel` (binary: `[channel] ++ data`; base64: text `digit ++ b64(data)`).
pub fn encode(base64: bool, channel: u8, data: &[u8]) -> Message {
    if base64 {
        let mut s = String::with_capacity(1 + data.len().div_ceil(3) * 4);
        s.push(char::from(b'0'.wrapping_add(channel)));
        s.push_str(&base64::encode_std(data));
        Message::text(s)
    } else {
        let mut v = Vec::with_capacity(data.len() + 1);
        v.push(channel);
        v.extend_from_slice(data);
        Message::binary(v)
    }
}

/// Decodes one text or binary client message. `Ok(None)` for messages without a payload
/// (empty, ping/pong/close, which the caller handles) — wsstream ignores empty messages.
/// The close signal is recognised only when `v5` is set.
pub fn decode(base64: bool, v5: bool, msg: &Message) -> Result<Option<Frame>, FrameError> {
    let raw: &[u8] = match msg {
        Message::Binary(b) => b,
        Message::Text(t) => t.as_bytes(),
        _ => return Ok(None),
    };
    let Some(&first) = raw.first() else { return Ok(None) };
    if v5 && first == CLOSE_SIGNAL {
        if raw.len() != 2 {
            return Err(FrameError::BadClose(raw.len()));
        }
        let channel = if base64 { raw[1].wrapping_sub(b'0') } else { raw[1] };
        return Ok(Some(Frame::Close { channel }));
    }
    if base64 {
        if !first.is_ascii_digit() {
            return Err(FrameError::BadChannel(first));
        }
        let channel = first - b'0';
        let data = base64::decode_std(&raw[1..]).map_err(|source| FrameError::Base64 { channel, source })?;
        Ok(Some(Frame::Data { channel, data: Bytes::from(data) }))
    } else {
        Ok(Some(Frame::Data { channel: first, data: Bytes::copy_from_slice(&raw[1..]) }))
    }
}

/// The 2-byte little-endian port prefix the server sends first on each port-forward channel.
pub fn port_prefix(port: u16) -> [u8; 2] {
    port.to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_round_trip() {
        let m = encode(false, STDOUT, b"hi");
        assert_eq!(m, Message::binary(vec![1, b'h', b'i']));
        assert_eq!(decode(false, false, &m).unwrap(), Some(Frame::Data { channel: 1, data: Bytes::from_static(b"hi") }));
        assert_eq!(decode(false, false, &Message::binary(Vec::<u8>::new())).unwrap(), None);
        assert_eq!(decode(false, false, &Message::binary(vec![0u8])).unwrap(), Some(Frame::Data { channel: 0, data: Bytes::new() }));
    }

    #[test]
    fn base64_round_trip() {
        let m = encode(true, STDERR, b"foo");
        assert_eq!(m, Message::text("2Zm9v"));
        assert_eq!(decode(true, false, &m).unwrap(), Some(Frame::Data { channel: 2, data: Bytes::from_static(b"foo") }));
        assert_eq!(decode(true, false, &Message::text("x")), Err(FrameError::BadChannel(b'x')));
        assert!(matches!(decode(true, false, &Message::text("0!!")), Err(FrameError::Base64 { channel: 0, .. })));
    }

    #[test]
    fn v5_close_signal() {
        let close = Message::binary(vec![255u8, 0]);
        assert_eq!(decode(false, true, &close).unwrap(), Some(Frame::Close { channel: 0 }));
        // Before v5, 255 is just a channel number.
        assert_eq!(decode(false, false, &close).unwrap(), Some(Frame::Data { channel: 255, data: Bytes::from_static(&[0]) }));
        assert_eq!(decode(true, true, &Message::binary(vec![255u8, b'0'])).unwrap(), Some(Frame::Close { channel: 0 }));
        assert_eq!(decode(false, true, &Message::binary(vec![255u8, 0, 1])), Err(FrameError::BadClose(3)));
        assert_eq!(port_prefix(8080), [0x90, 0x1f]);
    }
}
