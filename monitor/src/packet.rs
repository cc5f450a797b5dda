//! The packet protocol of a monitor's attach socket, spoken by [`crate::attach_socket`] (the
//! monitor's side) and by berth's `monitor::attach` (the daemon's side, tokio).
//!
//! The socket is a unix `SOCK_SEQPACKET` socket at `MonitorSpec.attach_socket`, served by
//! [`crate::attach_socket`] inside the monitor. One packet is one message:
//!
//! - monitor -> client: `[1] + bytes` (the container's stdout, or its pty output) and
//!   `[2] + bytes` (stderr). End of the connection (recv of 0 bytes) means the monitor exited: the
//!   process ended, its output was delivered and its exit file written.
//! - client -> monitor: `[0] + bytes` stdin data; `[1]` the client's stdin ended (with
//!   `stdin_once`, the monitor then closes the container's stdin pipe, as conmon does);
//!   `[2] + rows(u16 BE) + cols(u16 BE)` terminal resize (TIOCSWINSZ on the pty master, conmon's
//!   ctl-fifo "1 <h> <w>" message); `[3]` reopen the CRI log file (conmon's ctl-fifo "2"
//!   message, for CRI ReopenContainerLog), answered to that client alone with `[3, 0]` once the
//!   new file is open or `[3, 1] + message` when it could not be opened; from that request on the
//!   connection is a control connection: it gets no output and its end is no stdin EOF. A client that closes or
//!   shuts down its write side counts as stdin ended.
//!
//! Packets carry at most [`MAX_PACKET`] bytes; longer stdin writes are split.

/// Output packet type: stdout (or pty output).
pub const STDOUT: u8 = 1;
/// Output packet type: stderr.
pub const STDERR: u8 = 2;
/// Input packet type: stdin data.
pub const IN_STDIN: u8 = 0;
/// Input packet type: the client's stdin ended.
pub const IN_CLOSE_STDIN: u8 = 1;
/// Input packet type: terminal resize, rows then columns as big-endian u16.
pub const IN_RESIZE: u8 = 2;
/// Input packet type: reopen the log file; also the type of the monitor's answer to it.
pub const IN_REOPEN_LOG: u8 = 3;
/// Largest packet either side sends, type byte included (64 KiB).
pub const MAX_PACKET: usize = 64 * 1024;

/// A decoded client -> monitor packet.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientPacket<'a> {
    Stdin(&'a [u8]),
    CloseStdin,
    Resize { height: u16, width: u16 },
    ReopenLog,
}

/// Decodes one client packet; `None` for an unknown or malformed one (ignored by the monitor).
pub fn decode_client_packet(p: &[u8]) -> Option<ClientPacket<'_>> {
    match p {
        [IN_STDIN, data @ ..] => Some(ClientPacket::Stdin(data)),
        [IN_CLOSE_STDIN] => Some(ClientPacket::CloseStdin),
        [IN_RESIZE, h0, h1, w0, w1] => {
            Some(ClientPacket::Resize { height: u16::from_be_bytes([*h0, *h1]), width: u16::from_be_bytes([*w0, *w1]) })
        }
        [IN_REOPEN_LOG] => Some(ClientPacket::ReopenLog),
        _ => None,
    }
}

/// The monitor's answer to a reopen request: `[3, 0]`, or `[3, 1] + message`.
pub fn encode_reopen_answer(result: &Result<(), String>) -> Vec<u8> {
    match result {
        Ok(()) => vec![IN_REOPEN_LOG, 0],
        Err(m) => {
            let mut p = vec![IN_REOPEN_LOG, 1];
            p.extend_from_slice(m.as_bytes());
            p.truncate(MAX_PACKET);
            p
        }
    }
}

/// Encodes a resize packet: `[2] + rows(u16 BE) + cols(u16 BE)`.
pub fn encode_resize(height: u16, width: u16) -> [u8; 5] {
    let h = height.to_be_bytes();
    let w = width.to_be_bytes();
    [IN_RESIZE, h[0], h[1], w[0], w[1]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_packets_round_trip() {
        assert_eq!(decode_client_packet(b"\0hello"), Some(ClientPacket::Stdin(b"hello")));
        assert_eq!(decode_client_packet(&[IN_CLOSE_STDIN]), Some(ClientPacket::CloseStdin));
        let r = encode_resize(43, 132);
        assert_eq!(decode_client_packet(&r), Some(ClientPacket::Resize { height: 43, width: 132 }));
        assert_eq!(decode_client_packet(&[]), None);
        assert_eq!(decode_client_packet(&[IN_RESIZE, 1]), None);
        assert_eq!(decode_client_packet(&[9, 1, 2]), None);
        assert_eq!(decode_client_packet(&[IN_REOPEN_LOG]), Some(ClientPacket::ReopenLog));
        assert_eq!(encode_reopen_answer(&Ok(())), vec![IN_REOPEN_LOG, 0]);
        assert_eq!(encode_reopen_answer(&Err("no".into())), b"\x03\x01no".to_vec());
    }
}
