//! A minimal gRPC-over-HTTP/2 client that writes its own frames, so a case can send any
//! `:authority` (a socket path, an empty value, none at all) the way kubelet 1.26 (grpc-go 1.49),
//! grpc-java, gRPC core and grpcurl do on a unix socket. tonic and h2 refuse to send such values,
//! so they cannot play those clients.
//!
//! Like grpc-go, the first request adds its `:authority` to the HPACK dynamic table (literal
//! with incremental indexing, RFC 7541 §6.2.1) and later requests on the connection refer to it
//! by index (62), so a server-side fix must follow the client's table, not just literals. Unary calls only, one at a time; request messages up to 64 KiB (the
//! initial flow-control window, RFC 9113 §6.9.2), responses of any size (WINDOW_UPDATE is sent
//! for every DATA frame).

use anyhow::{anyhow, Context, Result};
use loona_hpack::encoder::encode_integer_into;
use loona_hpack::Decoder;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const MAX_FRAME: usize = 16_384;

/// How long one call may take before the case fails.
const CALL_LIMIT: Duration = Duration::from_secs(60);

/// What a call ended with when it did not return a message.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The server reset the stream (RST_STREAM), as h2 does for an `:authority` it refuses.
    #[error("stream reset by the server with HTTP/2 error code {0} (1 = PROTOCOL_ERROR)")]
    Reset(u32),
    /// The server ended the connection (GOAWAY or EOF).
    #[error("connection closed by the server: {0}")]
    Closed(String),
    /// A gRPC status other than OK.
    #[error("gRPC status {code}: {message}")]
    Status { code: i32, message: String },
    /// Anything else (I/O, a malformed reply, a timeout).
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// One HTTP/2 connection to a gRPC server on a unix socket.
pub struct RawGrpc {
    sock: UnixStream,
    authority: Option<Vec<u8>>,
    /// The `:authority` is in the server's dynamic table (index 62) since the first request.
    authority_indexed: bool,
    dec: Decoder<'static>,
    next_stream: u32,
    buf: Vec<u8>,
    /// Further request headers (name, value), sent as literals on every request.
    extra: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl RawGrpc {
    /// Connects to `socket` and sends the preface and an empty SETTINGS frame. Every request
    /// on this connection carries `:authority` = `authority` (`None`: no `:authority` at all).
    pub async fn connect(socket: &Path, authority: Option<&[u8]>) -> Result<RawGrpc> {
        let mut sock = UnixStream::connect(socket).await.with_context(|| format!("connect {}", socket.display()))?;
        let mut hello = PREFACE.to_vec();
        push_frame(&mut hello, SETTINGS, 0, 0, &[]);
        sock.write_all(&hello).await?;
        Ok(RawGrpc {
            sock,
            authority: authority.map(<[u8]>::to_vec),
            authority_indexed: false,
            dec: Decoder::new(),
            next_stream: 1,
            buf: Vec::new(),
            extra: Vec::new(),
        })
    }

    /// Sends header `name: value` with every later request: a `grpc-timeout` this client does
    /// not enforce itself (tonic's and grpc-go's clients also time the call out on their side,
    /// so only a client like this one sees what the server answers at the deadline).
    pub fn header(&mut self, name: &str, value: &str) {
        self.extra.push((name.as_bytes().to_vec(), value.as_bytes().to_vec()));
    }

    /// Calls the unary method `path` (`/runtime.v1.RuntimeService/Version`) with `req`.
    pub async fn unary<Req: prost::Message, Resp: prost::Message + Default>(&mut self, path: &str, req: &Req) -> Result<Resp, CallError> {
        match tokio::time::timeout(CALL_LIMIT, self.unary_inner(path, req)).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Other(anyhow!("{path}: no answer within {CALL_LIMIT:?}"))),
        }
    }

    async fn unary_inner<Req: prost::Message, Resp: prost::Message + Default>(&mut self, path: &str, req: &Req) -> Result<Resp, CallError> {
        let stream = self.next_stream;
        self.next_stream += 2;
        let block = self.header_block(path);
        let body = req.encode_to_vec();
        if body.len() + 5 > 65_535 {
            return Err(anyhow!("{path}: request of {} bytes exceeds the initial window this client handles", body.len()).into());
        }
        let mut msg = vec![0u8];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes());
        msg.extend_from_slice(&body);
        let mut out = Vec::new();
        push_frame(&mut out, HEADERS, END_HEADERS, stream, &block);
        let mut chunks = msg.chunks(MAX_FRAME).peekable();
        while let Some(c) = chunks.next() {
            push_frame(&mut out, DATA, if chunks.peek().is_none() { END_STREAM } else { 0 }, stream, c);
        }
        self.sock.write_all(&out).await.context("writing the request")?;

        let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut data = Vec::new();
        let mut block: Option<Vec<u8>> = None;
        loop {
            let f = self.read_frame().await?;
            match f.kind {
                SETTINGS if f.flags & ACK == 0 => self.send(SETTINGS, ACK, 0, &[]).await?,
                PING if f.flags & ACK == 0 => self.send(PING, ACK, 0, &f.payload).await?,
                GOAWAY => {
                    let code = f.payload.get(4..8).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0);
                    let debug = String::from_utf8_lossy(f.payload.get(8..).unwrap_or_default()).into_owned();
                    return Err(CallError::Closed(format!("GOAWAY error code {code} {debug}")));
                }
                RST_STREAM if f.stream == stream => {
                    let code = f.payload.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0);
                    return Err(CallError::Reset(code));
                }
                DATA if f.stream == stream => {
                    let body = strip_padding(&f)?;
                    data.extend_from_slice(body);
                    if !f.payload.is_empty() {
                        let inc = (f.payload.len() as u32).to_be_bytes();
                        self.send(WINDOW_UPDATE, 0, 0, &inc).await?;
                        if f.flags & END_STREAM == 0 {
                            self.send(WINDOW_UPDATE, 0, stream, &inc).await?;
                        }
                    }
                    if f.flags & END_STREAM != 0 {
                        return Err(anyhow!("{path}: stream ended without trailers").into());
                    }
                }
                HEADERS | CONTINUATION if f.stream == stream => {
                    let frag = if f.kind == HEADERS { strip_headers_prefix(&f)? } else { &f.payload[..] };
                    block.get_or_insert_with(Vec::new).extend_from_slice(frag);
                    if f.kind == HEADERS && f.flags & END_STREAM != 0 {
                        // Remember END_STREAM across CONTINUATION frames.
                        headers.push((b"\0end-stream".to_vec(), Vec::new()));
                    }
                    if f.flags & END_HEADERS != 0 {
                        let b = block.take().unwrap_or_default();
                        let decoded = self.dec.decode(&b).map_err(|e| anyhow!("response headers do not decode: {e:?}"))?;
                        headers.extend(decoded);
                        if headers.iter().any(|(n, _)| n == b"\0end-stream") {
                            return finish(path, &headers, &data);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// The request's HPACK block: `:method POST` and `:scheme http` by static index (3, 6),
    /// `:authority` as described in the module doc, the rest as literals without indexing.
    fn header_block(&mut self, path: &str) -> Vec<u8> {
        let mut b = vec![0x83, 0x86];
        literal(&mut b, 0x00, 4, 4, None, path.as_bytes()); // :path, name by static index 4
        if let Some(a) = &self.authority {
            if self.authority_indexed {
                b.push(0x80 | 62);
            } else {
                literal(&mut b, 0x40, 6, 1, None, a); // incremental indexing, name index 1
                self.authority_indexed = true;
            }
        }
        literal(&mut b, 0x00, 4, 31, None, b"application/grpc"); // content-type
        literal(&mut b, 0x00, 4, 0, Some(b"te"), b"trailers");
        literal(&mut b, 0x00, 4, 58, None, b"berth-conformance-rawh2"); // user-agent
        for (name, value) in &self.extra {
            literal(&mut b, 0x00, 4, 0, Some(name), value);
        }
        b
    }

    async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Result<()> {
        let mut out = Vec::new();
        push_frame(&mut out, kind, flags, stream, payload);
        self.sock.write_all(&out).await.context("writing a frame")
    }

    async fn read_frame(&mut self) -> Result<Frame, CallError> {
        loop {
            if self.buf.len() >= 9 {
                let h = &self.buf[..9];
                let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                if self.buf.len() >= 9 + len {
                    let f = Frame {
                        kind: h[3],
                        flags: h[4],
                        stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Ok(f);
                }
            }
            let mut chunk = [0u8; 16_384];
            let n = self.sock.read(&mut chunk).await.context("reading from the server")?;
            if n == 0 {
                return Err(CallError::Closed("EOF".into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn push_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// One literal field (RFC 7541 §6.2): `kind` bits, the name by static `index` in a
/// `prefix`-bit integer or, with index 0, as the string `name`, then the value; no Huffman.
fn literal(out: &mut Vec<u8>, kind: u8, prefix: u8, index: usize, name: Option<&[u8]>, value: &[u8]) {
    let _ = encode_integer_into(index, prefix, kind, out);
    for s in name.into_iter().chain([value]) {
        let _ = encode_integer_into(s.len(), 7, 0, out);
        out.extend_from_slice(s);
    }
}

fn strip_padding(f: &Frame) -> Result<&[u8]> {
    if f.flags & PADDED == 0 {
        return Ok(&f.payload);
    }
    let pad = usize::from(*f.payload.first().context("padded frame without a pad length")?);
    f.payload.get(1..f.payload.len().saturating_sub(pad)).context("padding longer than the frame")
}

fn strip_headers_prefix(f: &Frame) -> Result<&[u8]> {
    let body = strip_padding(f)?;
    if f.flags & PRIORITY != 0 {
        return body.get(5..).context("PRIORITY fields longer than the frame");
    }
    Ok(body)
}

fn finish<Resp: prost::Message + Default>(path: &str, headers: &[(Vec<u8>, Vec<u8>)], data: &[u8]) -> Result<Resp, CallError> {
    let get = |name: &[u8]| headers.iter().find(|(n, _)| n == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned());
    let status = get(b"grpc-status").with_context(|| format!("{path}: no grpc-status in {:?}", names(headers)))?;
    let code: i32 = status.parse().with_context(|| format!("{path}: grpc-status {status:?}"))?;
    if code != 0 {
        return Err(CallError::Status { code, message: percent_decode(&get(b"grpc-message").unwrap_or_default()) });
    }
    if data.len() < 5 {
        return Err(anyhow!("{path}: OK without a message ({} bytes of DATA)", data.len()).into());
    }
    if data[0] != 0 {
        return Err(anyhow!("{path}: compressed reply, none was offered").into());
    }
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    let msg = data.get(5..5 + len).with_context(|| format!("{path}: reply says {len} bytes, has {}", data.len() - 5))?;
    Resp::decode(msg).map_err(|e| anyhow!("{path}: reply does not decode: {e}").into())
}

fn names(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<String> {
    headers.iter().map(|(n, _)| String::from_utf8_lossy(n).into_owned()).collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Shorthand for a call that must succeed.
pub async fn call<Req: prost::Message, Resp: prost::Message + Default>(c: &mut RawGrpc, path: &str, req: &Req) -> Result<Resp> {
    c.unary(path, req).await.map_err(|e| anyhow!("{path}: {e}"))
}
