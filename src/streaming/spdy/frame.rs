//! SPDY/3.1 frames on the wire (SPDY/3 draft §2.2 "Framing", §2.6 "Control frames").
//!
//! Every frame has an 8-byte header. Control frames: `1 | version(15) | type(16) | flags(8) |
//! length(24)`; data frames: `0 | stream-id(31) | flags(8) | length(24)`. All integers are
//! big-endian. Header blocks (SYN_STREAM, SYN_REPLY, HEADERS) are carried here still compressed;
//! [`super::header`] inflates them with the connection's decompressor.

/// FIN flag (control frames SYN_STREAM/SYN_REPLY/HEADERS, and DATA): the sender's half is closed.
pub const FLAG_FIN: u8 = 0x01;
/// UNIDIRECTIONAL flag (SYN_STREAM): the recipient may not send on this stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// The protocol version this module speaks.
pub const SPDY_VERSION: u16 = 3;
/// The largest payload the 24-bit length field can state (16 MiB - 1).
pub const MAX_FRAME_LEN: usize = (1 << 24) - 1;
/// Length of every frame header.
pub const FRAME_HEADER_LEN: usize = 8;

/// RST_STREAM status codes (SPDY/3 §2.6.3).
pub mod rst {
    /// Generic protocol error.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// A frame for a stream that is not active.
    pub const INVALID_STREAM: u32 = 2;
    /// The stream was refused before any processing.
    pub const REFUSED_STREAM: u32 = 3;
    /// Version not supported.
    pub const UNSUPPORTED_VERSION: u32 = 4;
    /// The stream is no longer needed.
    pub const CANCEL: u32 = 5;
    /// Internal error.
    pub const INTERNAL_ERROR: u32 = 6;
    /// Flow control violated.
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    /// SYN_STREAM for an id already open.
    pub const STREAM_IN_USE: u32 = 8;
    /// Data or SYN_REPLY on a half-closed stream.
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
    /// Frame too large.
    pub const FRAME_TOO_LARGE: u32 = 11;
}

/// GOAWAY status codes (SPDY/3 §2.6.6).
pub mod goaway {
    /// Normal session teardown.
    pub const OK: u32 = 0;
    /// Protocol error.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// Internal error.
    pub const INTERNAL_ERROR: u32 = 2;
}

/// SETTINGS ids (SPDY/3 §2.6.4) this crate acts on.
pub mod settings {
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub const MAX_CONCURRENT_STREAMS: u32 = 4;
    /// SETTINGS_INITIAL_WINDOW_SIZE (bytes).
    pub const INITIAL_WINDOW_SIZE: u32 = 7;
}

/// Control frame type codes.
mod ty {
    pub const SYN_STREAM: u16 = 1;
    pub const SYN_REPLY: u16 = 2;
    pub const RST_STREAM: u16 = 3;
    pub const SETTINGS: u16 = 4;
    pub const PING: u16 = 6;
    pub const GOAWAY: u16 = 7;
    pub const HEADERS: u16 = 8;
    pub const WINDOW_UPDATE: u16 = 9;
}

/// One SETTINGS entry: `flags(8) | id(24) | value(32)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// FLAG_SETTINGS_PERSIST_VALUE (1) / FLAG_SETTINGS_PERSISTED (2).
    pub flags: u8,
    /// Setting id (24 bits).
    pub id: u32,
    /// Value.
    pub value: u32,
}

/// A SPDY/3.1 frame. Header blocks stay compressed (`header_block`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// SYN_STREAM (§2.6.1): opens a stream.
    SynStream {
        /// New stream id (31 bits, non-zero).
        stream_id: u32,
        /// Associated stream (server push), 0 if none.
        associated_id: u32,
        /// Priority 0 (highest) ..= 7.
        priority: u8,
        /// Credential slot (0 = none).
        slot: u8,
        /// FLAG_FIN | FLAG_UNIDIRECTIONAL.
        flags: u8,
        /// Compressed name/value block.
        header_block: Vec<u8>,
    },
    /// SYN_REPLY (§2.6.2): accepts a stream.
    SynReply {
        /// The stream.
        stream_id: u32,
        /// FLAG_FIN.
        flags: u8,
        /// Compressed name/value block.
        header_block: Vec<u8>,
    },
    /// RST_STREAM (§2.6.3): aborts a stream.
    RstStream {
        /// The stream.
        stream_id: u32,
        /// Status code, see [`rst`].
        status: u32,
    },
    /// SETTINGS (§2.6.4).
    Settings {
        /// FLAG_SETTINGS_CLEAR_SETTINGS (1).
        flags: u8,
        /// The entries.
        entries: Vec<Setting>,
    },
    /// PING (§2.6.5).
    Ping {
        /// Ping id (client odd, server even).
        id: u32,
    },
    /// GOAWAY (§2.6.6).
    GoAway {
        /// Last stream id the sender accepted from the recipient.
        last_good_stream_id: u32,
        /// Status code, see [`goaway`].
        status: u32,
    },
    /// HEADERS (§2.6.7): more headers on an open stream.
    Headers {
        /// The stream.
        stream_id: u32,
        /// FLAG_FIN.
        flags: u8,
        /// Compressed name/value block.
        header_block: Vec<u8>,
    },
    /// WINDOW_UPDATE (§2.6.8; stream 0 = the session window, SPDY/3.1).
    WindowUpdate {
        /// The stream, or 0 for the session.
        stream_id: u32,
        /// Bytes added to the window (1 ..= 2^31-1).
        delta: u32,
    },
    /// DATA (§2.2.2).
    Data {
        /// The stream.
        stream_id: u32,
        /// FLAG_FIN.
        flags: u8,
        /// Payload.
        data: Vec<u8>,
    },
    /// A control frame of a type this implementation does not know (e.g. CREDENTIAL, 10).
    /// §2.2.1: "If an endpoint receives a control frame for a type it does not recognize, it
    /// MUST ignore the frame."
    Unknown {
        /// The type code.
        frame_type: u16,
        /// Flags.
        flags: u8,
    },
}

/// Errors parsing or serializing a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// A control frame with a version other than 3.
    #[error("SPDY control frame type {frame_type}: version {version}, expected 3")]
    UnsupportedVersion {
        /// The version found.
        version: u16,
        /// The frame type.
        frame_type: u16,
    },
    /// The payload is longer than the caller's limit.
    #[error("SPDY frame length {len} exceeds the limit of {max} bytes")]
    TooLarge {
        /// Declared length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A control frame whose length does not fit its type.
    #[error("SPDY {frame} frame: length {len}, expected {expected}")]
    BadLength {
        /// Frame name.
        frame: &'static str,
        /// Declared length.
        len: usize,
        /// What the type needs.
        expected: &'static str,
    },
    /// A field that must not be zero was zero.
    #[error("SPDY {frame} frame: {field} must not be 0")]
    Zero {
        /// Frame name.
        frame: &'static str,
        /// Field name.
        field: &'static str,
    },
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn need(frame: &'static str, len: usize, ok: bool, expected: &'static str) -> Result<(), FrameError> {
    if ok {
        Ok(())
    } else {
        Err(FrameError::BadLength { frame, len, expected })
    }
}

/// Parses one frame from the start of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame (read more bytes and call
/// again), `Ok(Some((frame, consumed)))` for a frame taking `consumed` bytes, and an error for
/// a frame that can never be valid: a payload over `max_len` bytes (checked from the header
/// alone, before the payload arrives), a control frame of version != 3, or a length that does
/// not fit the frame type. Never panics on any input.
pub fn parse(buf: &[u8], max_len: usize) -> Result<Option<(Frame, usize)>, FrameError> {
    if buf.len() < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let flags = buf[4];
    let len = ((buf[5] as usize) << 16) | ((buf[6] as usize) << 8) | buf[7] as usize;
    let control = buf[0] & 0x80 != 0;
    if control {
        let version = u16::from_be_bytes([buf[0] & 0x7f, buf[1]]);
        let frame_type = u16::from_be_bytes([buf[2], buf[3]]);
        if version != SPDY_VERSION {
            return Err(FrameError::UnsupportedVersion { version, frame_type });
        }
    }
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    if buf.len() < FRAME_HEADER_LEN + len {
        return Ok(None);
    }
    let p = &buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len];
    let total = FRAME_HEADER_LEN + len;
    if !control {
        let stream_id = be32(&buf[0..4]) & 0x7fff_ffff;
        if stream_id == 0 {
            return Err(FrameError::Zero { frame: "DATA", field: "stream id" });
        }
        return Ok(Some((Frame::Data { stream_id, flags, data: p.to_vec() }, total)));
    }
    let frame_type = u16::from_be_bytes([buf[2], buf[3]]);
    let frame = match frame_type {
        ty::SYN_STREAM => {
            need("SYN_STREAM", len, len >= 10, "at least 10")?;
            Frame::SynStream {
                stream_id: be32(&p[0..4]) & 0x7fff_ffff,
                associated_id: be32(&p[4..8]) & 0x7fff_ffff,
                priority: p[8] >> 5,
                slot: p[9],
                flags,
                header_block: p[10..].to_vec(),
            }
        }
        ty::SYN_REPLY => {
            need("SYN_REPLY", len, len >= 4, "at least 4")?;
            Frame::SynReply { stream_id: be32(&p[0..4]) & 0x7fff_ffff, flags, header_block: p[4..].to_vec() }
        }
        ty::HEADERS => {
            need("HEADERS", len, len >= 4, "at least 4")?;
            Frame::Headers { stream_id: be32(&p[0..4]) & 0x7fff_ffff, flags, header_block: p[4..].to_vec() }
        }
        ty::RST_STREAM => {
            need("RST_STREAM", len, len == 8, "8")?;
            Frame::RstStream { stream_id: be32(&p[0..4]) & 0x7fff_ffff, status: be32(&p[4..8]) }
        }
        ty::SETTINGS => {
            need("SETTINGS", len, len >= 4, "at least 4")?;
            let n = be32(&p[0..4]) as usize;
            need("SETTINGS", len, n.checked_mul(8).and_then(|b| b.checked_add(4)) == Some(len), "4 + 8 * entries")?;
            let entries =
                p[4..].chunks_exact(8).map(|e| Setting { flags: e[0], id: be32(&e[0..4]) & 0x00ff_ffff, value: be32(&e[4..8]) }).collect();
            Frame::Settings { flags, entries }
        }
        ty::PING => {
            need("PING", len, len == 4, "4")?;
            Frame::Ping { id: be32(p) }
        }
        ty::GOAWAY => {
            need("GOAWAY", len, len == 8, "8")?;
            Frame::GoAway { last_good_stream_id: be32(&p[0..4]) & 0x7fff_ffff, status: be32(&p[4..8]) }
        }
        ty::WINDOW_UPDATE => {
            need("WINDOW_UPDATE", len, len == 8, "8")?;
            Frame::WindowUpdate { stream_id: be32(&p[0..4]) & 0x7fff_ffff, delta: be32(&p[4..8]) & 0x7fff_ffff }
        }
        other => Frame::Unknown { frame_type: other, flags },
    };
    Ok(Some((frame, total)))
}

fn control_header(out: &mut Vec<u8>, frame_type: u16, flags: u8, len: usize) -> Result<(), FrameError> {
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len, max: MAX_FRAME_LEN });
    }
    out.extend_from_slice(&(0x8000 | SPDY_VERSION).to_be_bytes());
    out.extend_from_slice(&frame_type.to_be_bytes());
    out.push(flags);
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    Ok(())
}

impl Frame {
    /// Appends the wire form of this frame to `out`. Errors only when a payload exceeds
    /// [`MAX_FRAME_LEN`] (nothing is appended then). Stream ids are masked to 31 bits.
    /// `Unknown` frames serialize with an empty payload.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let id = |v: u32| (v & 0x7fff_ffff).to_be_bytes();
        match self {
            Frame::SynStream { stream_id, associated_id, priority, slot, flags, header_block } => {
                control_header(out, ty::SYN_STREAM, *flags, 10 + header_block.len())?;
                out.extend_from_slice(&id(*stream_id));
                out.extend_from_slice(&id(*associated_id));
                out.push((priority & 0x07) << 5);
                out.push(*slot);
                out.extend_from_slice(header_block);
            }
            Frame::SynReply { stream_id, flags, header_block } => {
                control_header(out, ty::SYN_REPLY, *flags, 4 + header_block.len())?;
                out.extend_from_slice(&id(*stream_id));
                out.extend_from_slice(header_block);
            }
            Frame::Headers { stream_id, flags, header_block } => {
                control_header(out, ty::HEADERS, *flags, 4 + header_block.len())?;
                out.extend_from_slice(&id(*stream_id));
                out.extend_from_slice(header_block);
            }
            Frame::RstStream { stream_id, status } => {
                control_header(out, ty::RST_STREAM, 0, 8)?;
                out.extend_from_slice(&id(*stream_id));
                out.extend_from_slice(&status.to_be_bytes());
            }
            Frame::Settings { flags, entries } => {
                control_header(out, ty::SETTINGS, *flags, 4 + 8 * entries.len())?;
                out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                for e in entries {
                    out.push(e.flags);
                    out.extend_from_slice(&(e.id & 0x00ff_ffff).to_be_bytes()[1..]);
                    out.extend_from_slice(&e.value.to_be_bytes());
                }
            }
            Frame::Ping { id: ping } => {
                control_header(out, ty::PING, 0, 4)?;
                out.extend_from_slice(&ping.to_be_bytes());
            }
            Frame::GoAway { last_good_stream_id, status } => {
                control_header(out, ty::GOAWAY, 0, 8)?;
                out.extend_from_slice(&id(*last_good_stream_id));
                out.extend_from_slice(&status.to_be_bytes());
            }
            Frame::WindowUpdate { stream_id, delta } => {
                control_header(out, ty::WINDOW_UPDATE, 0, 8)?;
                out.extend_from_slice(&id(*stream_id));
                out.extend_from_slice(&id(*delta));
            }
            Frame::Data { stream_id, flags, data } => {
                if data.len() > MAX_FRAME_LEN {
                    return Err(FrameError::TooLarge { len: data.len(), max: MAX_FRAME_LEN });
                }
                out.extend_from_slice(&id(*stream_id));
                out.push(*flags);
                out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                out.extend_from_slice(data);
            }
            Frame::Unknown { frame_type, flags } => control_header(out, *frame_type, *flags, 0)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::SynStream {
                stream_id: 1,
                associated_id: 0,
                priority: 7,
                slot: 0,
                flags: FLAG_FIN | FLAG_UNIDIRECTIONAL,
                header_block: vec![1, 2, 3],
            },
            Frame::SynStream { stream_id: 0x7fff_ffff, associated_id: 5, priority: 0, slot: 9, flags: 0, header_block: vec![] },
            Frame::SynReply { stream_id: 2, flags: FLAG_FIN, header_block: vec![9; 100] },
            Frame::RstStream { stream_id: 3, status: rst::CANCEL },
            Frame::Settings {
                flags: 1,
                entries: vec![
                    Setting { flags: 1, id: settings::INITIAL_WINDOW_SIZE, value: 1 << 20 },
                    Setting { flags: 0, id: 0xabcdef, value: 7 },
                ],
            },
            Frame::Settings { flags: 0, entries: vec![] },
            Frame::Ping { id: 0xdead_beef },
            Frame::GoAway { last_good_stream_id: 41, status: goaway::PROTOCOL_ERROR },
            Frame::Headers { stream_id: 8, flags: 0, header_block: vec![0; 5] },
            Frame::WindowUpdate { stream_id: 0, delta: 0x7fff_ffff },
            Frame::Data { stream_id: 77, flags: FLAG_FIN, data: b"hello".to_vec() },
            Frame::Data { stream_id: 1, flags: 0, data: vec![] },
            Frame::Unknown { frame_type: 10, flags: 0 },
        ]
    }

    #[test]
    fn every_frame_round_trips_whole_and_byte_by_byte() {
        for f in all_frames() {
            let mut wire = Vec::new();
            f.encode(&mut wire).expect("encode");
            for cut in 0..wire.len() {
                assert_eq!(parse(&wire[..cut], MAX_FRAME_LEN), Ok(None), "{f:?} cut at {cut}");
            }
            let mut longer = wire.clone();
            longer.extend_from_slice(&[0x80, 3]);
            assert_eq!(parse(&longer, MAX_FRAME_LEN), Ok(Some((f.clone(), wire.len()))), "{f:?}");
        }
    }

    #[test]
    fn known_bytes() {
        let mut wire = Vec::new();
        Frame::Ping { id: 1 }.encode(&mut wire).expect("encode");
        assert_eq!(wire, [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]);
        wire.clear();
        Frame::Data { stream_id: 3, flags: FLAG_FIN, data: vec![0xaa] }.encode(&mut wire).expect("encode");
        assert_eq!(wire, [0, 0, 0, 3, 1, 0, 0, 1, 0xaa]);
    }

    #[test]
    fn hostile_headers_are_errors() {
        // version 2
        let v2 = [0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1];
        assert!(matches!(parse(&v2, MAX_FRAME_LEN), Err(FrameError::UnsupportedVersion { version: 2, .. })));
        // oversized, detected from the header alone
        let big = [0, 0, 0, 1, 0, 0xff, 0xff, 0xff];
        assert!(matches!(parse(&big, 1 << 20), Err(FrameError::TooLarge { .. })));
        // bad lengths
        let ping5 = [0x80, 3, 0, 6, 0, 0, 0, 5, 0, 0, 0, 1, 0];
        assert!(matches!(parse(&ping5, MAX_FRAME_LEN), Err(FrameError::BadLength { .. })));
        let syn = [0x80, 3, 0, 1, 0, 0, 0, 4, 0, 0, 0, 1];
        assert!(matches!(parse(&syn, MAX_FRAME_LEN), Err(FrameError::BadLength { .. })));
        let settings = [0x80, 3, 0, 4, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(parse(&settings, MAX_FRAME_LEN), Err(FrameError::BadLength { .. })));
        let data0 = [0, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(parse(&data0, MAX_FRAME_LEN), Err(FrameError::Zero { .. })));
        // unknown control types are ignored (returned as Unknown), with their payload skipped
        let unk = [0x80, 3, 0, 10, 0, 0, 0, 2, 1, 2];
        assert_eq!(parse(&unk, MAX_FRAME_LEN), Ok(Some((Frame::Unknown { frame_type: 10, flags: 0 }, 10))));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let len = (x % 40) as usize;
            let mut buf = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(x as u8);
            }
            if buf.len() > 1 && x.is_multiple_of(2) {
                buf[0] = 0x80;
                buf[1] = 3;
            }
            let _ = parse(&buf, 64);
        }
    }
}
