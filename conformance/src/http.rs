//! A tiny blocking HTTP/1.1 client for the loopback test registry (Docker Registry HTTP API V2).
//!
//! Only what pushing test images needs: one request per connection (`Connection: close`), bodies
//! sent with `Content-Length`, replies read to EOF (chunked replies decoded). Never used for any
//! address outside 127.0.0.0/8.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One HTTP reply: status code, headers (names lower-cased) and body.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status code, e.g. 201.
    pub status: u16,
    /// Header pairs with lower-case names, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The first header named `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Sends `method path` to `host:port` (loopback only) with optional content type and body.
///
/// Errors: connect/IO failures, a non-loopback host, or an unparsable status line.
pub fn request(addr: &str, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> Result<Reply> {
    if !addr.starts_with("127.") {
        bail!("refusing HTTP to {addr}: the test client only talks to loopback");
    }
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect to registry {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).with_context(|| format!("read reply of {method} {path}"))?;
    parse_reply(&raw).with_context(|| format!("reply of {method} {path}"))
}

fn parse_reply(raw: &[u8]) -> Result<Reply> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").context("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).context("headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().context("empty reply")?;
    let status: u16 =
        status_line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(Reply { status, headers, body })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").context("chunk size line")?;
        let size_text = std::str::from_utf8(&b[..eol])?.split(';').next().unwrap_or("").trim().to_string();
        let size = usize::from_str_radix(&size_text, 16).with_context(|| format!("chunk size {size_text:?}"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size {
            bail!("chunk of {size} bytes truncated at {}", b.len());
        }
        out.extend_from_slice(&b[..size]);
        b = b.get(size + 2..).unwrap_or(&[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() {
        let r = parse_reply(b"HTTP/1.1 202 Accepted\r\nLocation: /v2/x/blobs/uploads/u?a=b\r\n\r\n").unwrap();
        assert_eq!(r.status, 202);
        assert_eq!(r.header("location"), Some("/v2/x/blobs/uploads/u?a=b"));
        let r = parse_reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, b"abcde");
    }
}
