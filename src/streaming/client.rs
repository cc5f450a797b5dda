//! A small client for berth's own streaming URLs (tests, `berth` CLI tools): performs the HTTP
//! upgrade by hand over TCP and hands back a WebSocket or an SPDY session. It speaks only
//! `http://IP:PORT/...` (the URLs [`super::server::StreamingServer::url_for`] returns).

use super::spdy::Session;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// Re-exported so users of this client (the conformance suite) name the same types.
pub use tokio_tungstenite::tungstenite::Message;

/// A failed upgrade: connection, malformed URL, or a non-101 answer (its status and body).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http://HOST:PORT/PATH`.
    #[error("stream url {0:?}: expected http://HOST:PORT/PATH")]
    BadUrl(String),
    /// Connecting or talking to the server failed.
    #[error("stream url {url}: {source}")]
    Io {
        /// The URL.
        url: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The server did not switch protocols.
    #[error("stream url {url}: server answered {status}: {body}")]
    Refused {
        /// The URL.
        url: String,
        /// HTTP status code.
        status: u16,
        /// Response head and body text.
        body: String,
    },
}

/// The answer to an upgrade: the socket and the response headers (names lower-cased).
pub struct Upgraded {
    /// The connection, positioned after the 101 response head.
    pub tcp: TcpStream,
    /// Response headers.
    pub headers: Vec<(String, String)>,
}

impl Upgraded {
    /// First value of response header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

fn split_url(url: &str) -> Result<(String, String), ClientError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| ClientError::BadUrl(url.into()))?;
    let (host, path) = rest.split_once('/').ok_or_else(|| ClientError::BadUrl(url.into()))?;
    Ok((host.to_string(), format!("/{path}")))
}

/// Sends `GET url` with `headers` and reads the response head byte by byte (nothing after it
/// is consumed). Non-101 answers become [`ClientError::Refused`].
pub async fn upgrade(url: &str, headers: &[(&str, &str)]) -> Result<Upgraded, ClientError> {
    let (host, path) = split_url(url)?;
    let io_err = |source| ClientError::Io { url: url.to_string(), source };
    let mut tcp = TcpStream::connect(&host).await.map_err(io_err)?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await.map_err(io_err)?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut b).await.map_err(io_err)? == 0 || head.len() > 64 * 1024 {
            break;
        }
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let mut lines = text.split("\r\n");
    let status: u16 = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    if status != 101 {
        let mut body = vec![0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(2), tcp.read(&mut body)).await.ok().and_then(|r| r.ok()).unwrap_or(0);
        return Err(ClientError::Refused {
            url: url.into(),
            status,
            body: format!("{}{}", text.trim(), String::from_utf8_lossy(&body[..n])),
        });
    }
    Ok(Upgraded { tcp, headers })
}

/// Opens a WebSocket offering `protocols` (in preference order); returns it and the chosen one.
pub async fn websocket(url: &str, protocols: &[&str]) -> Result<(WebSocketStream<TcpStream>, Option<String>), ClientError> {
    let joined = protocols.join(", ");
    let mut hdrs = vec![
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    if !protocols.is_empty() {
        hdrs.push(("Sec-WebSocket-Protocol", &joined));
    }
    let up = upgrade(url, &hdrs).await?;
    let chosen = up.header("sec-websocket-protocol").map(str::to_string);
    Ok((WebSocketStream::from_raw_socket(up.tcp, Role::Client, None).await, chosen))
}

/// Opens an SPDY/3.1 connection offering `protocols`; returns the client session and the
/// negotiated `X-Stream-Protocol-Version`.
pub async fn spdy(url: &str, protocols: &[&str]) -> Result<(Session, Option<String>), ClientError> {
    let mut hdrs = vec![("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")];
    for p in protocols {
        hdrs.push(("X-Stream-Protocol-Version", p));
    }
    let up = upgrade(url, &hdrs).await?;
    let chosen = up.header("x-stream-protocol-version").map(str::to_string);
    Ok((Session::client(up.tcp), chosen))
}
