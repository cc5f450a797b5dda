//! One SPDY stream as an `AsyncRead + AsyncWrite` byte pipe.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::time::Sleep;

use super::frame::Frame;
use super::session::{consumed, reset_error, FlowControl, Out, Shared, AUTO_FLOW_GRACE, MAX_DATA_CHUNK, MAX_QUEUED_DATA, RST_CANCEL};

/// A SPDY stream. Reading yields the peer's DATA until its FIN (EOF); writing sends DATA within
/// the peer's windows; `shutdown()` sends FIN. After a RST_STREAM (either side) reads and writes
/// fail with `ConnectionReset`; after the connection died reads drain what was buffered, then
/// fail with `UnexpectedEof`, and writes fail with `BrokenPipe`. Dropping a stream whose
/// sending half is still open resets it (RST_STREAM CANCEL); dropping it after `shutdown()`
/// lets the peer finish, discarding what it still sends.
pub struct Stream {
    /// Stream id (odd: opened by the client, even: by the server).
    pub id: u32,
    /// For a peer-opened stream, the SYN_STREAM headers; for a stream this side opened, the
    /// SYN_REPLY headers. Names are lowercase; repeated names appear as repeated pairs.
    pub headers: Vec<(String, String)>,
    pub(crate) shared: Arc<Shared>,
    grace: Option<Pin<Box<Sleep>>>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("id", &self.id).field("headers", &self.headers).finish()
    }
}

impl Stream {
    pub(crate) fn new(shared: Arc<Shared>, id: u32, headers: Vec<(String, String)>) -> Self {
        Self { id, headers, shared, grace: None }
    }

    pub(crate) fn new_arc(shared: &Arc<Shared>, id: u32, headers: Vec<(String, String)>) -> Self {
        Self::new(shared.clone(), id, headers)
    }

    /// The value of the first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Aborts the stream: sends RST_STREAM with `status` (see [`super::frame::rst`]); local
    /// reads and writes fail from now on. No-op on a stream already reset.
    pub fn reset(&self, status: u32) {
        let mut st = self.shared.lock();
        if let Some(s) = st.streams.get_mut(&self.id) {
            if s.reset.is_some() {
                return;
            }
            s.reset = Some(status);
            let dropped = std::mem::take(&mut s.recv);
            let n = std::mem::take(&mut s.recv_len);
            s.wake();
            drop(dropped);
            self.shared.send(Out::Frame(Frame::RstStream { stream_id: self.id, status }));
            consumed(&self.shared, &mut st, self.id, n);
            self.shared.tidy(&mut st);
        }
        drop(st);
        self.shared.drained.notify_waiters();
    }

    /// Whether the peer has closed its half (FIN received) or the stream was reset.
    pub fn is_remote_closed(&self) -> bool {
        let st = self.shared.lock();
        st.streams.get(&self.id).is_none_or(|s| s.recv_fin || s.reset.is_some())
    }

    /// Splits into independently usable read and write halves (`tokio::io::split`).
    pub fn split(self) -> (ReadHalf<Stream>, WriteHalf<Stream>) {
        tokio::io::split(self)
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let id = self.id;
        let shared = self.shared.clone();
        let mut st = shared.lock();
        let limit = st.config.recv_window as usize;
        let dead = st.dead.clone();
        let Some(s) = st.streams.get_mut(&id) else {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::NotConnected, format!("SPDY stream {id} is gone"))));
        };
        // A peer reset keeps what it sent before: kubelet-style servers (containerd's, CRI-O's)
        // write the exit status on the error stream and reset every stream right after, so the
        // buffered data is delivered first and the reset then reads as EOF, as moby/spdystream
        // does. A reset of our own (or a protocol error) fails the read at once.
        if let Some(status) = s.reset {
            if s.reset_by_peer && !s.recv.is_empty() {
                // Deliver what the peer sent before it reset (below).
            } else if s.reset_by_peer && status == RST_CANCEL {
                return Poll::Ready(Ok(()));
            } else {
                return Poll::Ready(Err(reset_error(id, status, s.reset_by_peer)));
            }
        }
        if !s.recv.is_empty() {
            let mut n = 0;
            while buf.remaining() > 0 {
                let Some(front) = s.recv.front_mut() else { break };
                let k = front.len().min(buf.remaining());
                buf.put_slice(&front[..k]);
                front.advance(k);
                n += k;
                if front.is_empty() {
                    s.recv.pop_front();
                }
            }
            let was_over = s.recv_len > limit;
            s.recv_len -= n;
            let now_ok = s.recv_len <= limit;
            consumed(&shared, &mut st, id, n);
            drop(st);
            if was_over && now_ok {
                shared.drained.notify_waiters();
            }
            return Poll::Ready(Ok(()));
        }
        if s.recv_fin {
            return Poll::Ready(Ok(()));
        }
        if let Some(reason) = dead {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("SPDY stream {id}: {reason}"))));
        }
        s.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let id = self.id;
        let shared = self.shared.clone();
        let mut st = shared.lock();
        if let Some(s) = st.streams.get(&id) {
            if let Some(status) = s.reset {
                return Poll::Ready(Err(reset_error(id, status, s.reset_by_peer)));
            }
            if s.send_fin {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, format!("SPDY stream {id}: write after FIN"))));
            }
        } else {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::NotConnected, format!("SPDY stream {id} is gone"))));
        }
        if let Some(reason) = &st.dead {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, format!("SPDY stream {id}: {reason}"))));
        }
        if st.queued_data >= MAX_QUEUED_DATA {
            st.data_waiters.push(cx.waker().clone());
            return Poll::Pending;
        }
        let mut n = buf.len().min(MAX_DATA_CHUNK);
        if st.enforce_windows() {
            let stream_window = st.streams.get(&id).map_or(0, |s| s.send_window);
            let avail = stream_window.min(st.session_send_window);
            if avail <= 0 {
                let auto_unproven = st.config.flow_control == FlowControl::Auto && !st.peer_flow;
                let mut give_up = false;
                if auto_unproven {
                    let grace = self.grace.get_or_insert_with(|| Box::pin(tokio::time::sleep(AUTO_FLOW_GRACE)));
                    if grace.as_mut().poll(cx).is_ready() {
                        give_up = true;
                    }
                }
                if give_up {
                    tracing::debug!(stream = id, "SPDY peer sends no WINDOW_UPDATE: not holding it to flow-control windows");
                    st.flow_off = true;
                } else {
                    st.window_waiters.push(cx.waker().clone());
                    if let Some(s) = st.streams.get_mut(&id) {
                        s.write_waker = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
            } else {
                n = n.min(avail as usize);
            }
        }
        self.grace = None;
        if let Some(s) = st.streams.get_mut(&id) {
            s.send_window -= n as i64;
        }
        st.session_send_window -= n as i64;
        st.queued_data += n;
        shared.send(Out::Data { id, data: Bytes::copy_from_slice(&buf[..n]), fin: false });
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The writer task writes and flushes whatever is queued, in order.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let id = self.id;
        let mut st = self.shared.lock();
        let Some(s) = st.streams.get_mut(&id) else { return Poll::Ready(Ok(())) };
        if let Some(status) = s.reset {
            return Poll::Ready(Err(reset_error(id, status, s.reset_by_peer)));
        }
        if !s.send_fin {
            s.send_fin = true;
            self.shared.send(Out::Data { id, data: Bytes::new(), fin: true });
        }
        self.shared.tidy(&mut st);
        Poll::Ready(Ok(()))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        let mut n = 0;
        if let Some(s) = st.streams.get_mut(&self.id) {
            s.dropped = true;
            n = std::mem::take(&mut s.recv_len);
            s.recv.clear();
            if s.reset.is_none() && !s.send_fin {
                s.reset = Some(RST_CANCEL);
                self.shared.send(Out::Frame(Frame::RstStream { stream_id: self.id, status: RST_CANCEL }));
            }
            if let Some(tx) = s.reply_tx.take() {
                drop(tx);
            }
        }
        consumed(&self.shared, &mut st, self.id, n);
        self.shared.tidy(&mut st);
        drop(st);
        self.shared.drained.notify_waiters();
    }
}
