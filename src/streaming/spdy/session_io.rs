//! The session's two tasks: the frame reader/dispatcher and the frame writer.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot, Notify};

use super::frame::{self, goaway, rst, settings, Frame};
use super::header::{HeaderCompressor, HeaderDecompressor};
use super::session::{consumed, OpenResp, Out, Shared, StreamState, FIN, RECV_FRAME_LIMIT, UNIDIRECTIONAL};
use super::stream::Stream;
use super::SpdyError;

/// Writes queued frames, batching what is queued into one write. Ends on `Out::Shutdown` or
/// a write error; then marks the session dead and notifies `done`.
pub(crate) async fn write_loop<IO: AsyncWrite>(
    shared: Arc<Shared>,
    mut wr: WriteHalf<IO>,
    mut rx: mpsc::UnboundedReceiver<Out>,
    done: Arc<Notify>,
) {
    let reason = match write_frames(&shared, &mut wr, &mut rx).await {
        Ok(()) => "session shut down".to_string(),
        Err(e) => format!("write failed: {e}"),
    };
    let _ = wr.shutdown().await;
    shared.kill(reason);
    done.notify_one();
}

async fn write_frames<IO: AsyncWrite>(
    shared: &Shared,
    wr: &mut WriteHalf<IO>,
    rx: &mut mpsc::UnboundedReceiver<Out>,
) -> Result<(), String> {
    let mut comp = HeaderCompressor::new().map_err(|e| e.to_string())?;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        let Some(first) = rx.recv().await else { return Ok(()) };
        let mut next = Some(first);
        let mut data_bytes = 0usize;
        let mut shutdown = false;
        while let Some(msg) = next.take() {
            match msg {
                Out::Frame(f) => f.encode(&mut buf).map_err(|e| e.to_string())?,
                Out::Data { id, data, fin } => {
                    data_bytes += data.len();
                    let f = Frame::Data { stream_id: id, flags: if fin { FIN } else { 0 }, data: data.to_vec() };
                    f.encode(&mut buf).map_err(|e| e.to_string())?;
                }
                Out::Reply { id, fin } => {
                    // SPDY/3 §3.2.2 response headers: spdystream ignores them, HTTP-minded peers
                    // (spdy-transport) reset a reply without `:status`.
                    let reply = [(":status".to_string(), "200".to_string()), (":version".to_string(), "HTTP/1.1".to_string())];
                    let header_block = comp.compress(&reply).map_err(|e| e.to_string())?;
                    Frame::SynReply { stream_id: id, flags: if fin { FIN } else { 0 }, header_block }
                        .encode(&mut buf)
                        .map_err(|e| e.to_string())?;
                }
                Out::Open { headers, fin, resp } => open(shared, &mut comp, &mut buf, headers, fin, resp)?,
                Out::Shutdown => {
                    shutdown = true;
                    break;
                }
            }
            if buf.len() < 256 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        wr.write_all(&buf).await.map_err(|e| e.to_string())?;
        wr.flush().await.map_err(|e| e.to_string())?;
        buf.clear();
        if data_bytes > 0 {
            let mut st = shared.lock();
            st.queued_data = st.queued_data.saturating_sub(data_bytes);
            for w in st.data_waiters.drain(..) {
                w.wake();
            }
        }
        if shutdown {
            return Ok(());
        }
    }
}

/// Allocates the next local stream id (here, so ids go out in order) and writes SYN_STREAM.
fn open(
    shared: &Shared,
    comp: &mut HeaderCompressor,
    buf: &mut Vec<u8>,
    headers: Vec<(String, String)>,
    fin: bool,
    resp: OpenResp,
) -> Result<(), String> {
    let mut st = shared.lock();
    if let Some(r) = &st.dead {
        let _ = resp.send(Err(SpdyError::Closed(r.clone())));
        return Ok(());
    }
    if st.goaway_sent || st.goaway_received {
        let _ = resp.send(Err(SpdyError::GoingAway));
        return Ok(());
    }
    let id = st.next_id;
    if id > 0x7fff_ffff {
        let _ = resp.send(Err(SpdyError::IdsExhausted));
        return Ok(());
    }
    st.next_id += 2;
    let header_block = comp.compress(&headers).map_err(|e| e.to_string())?;
    let (reply_tx, reply_rx) = oneshot::channel();
    let mut s = StreamState::new(st.initial_send_window, true);
    s.send_fin = fin;
    s.reply_tx = Some(reply_tx);
    st.streams.insert(id, s);
    Frame::SynStream { stream_id: id, associated_id: 0, priority: 0, slot: 0, flags: if fin { FIN } else { 0 }, header_block }
        .encode(buf)
        .map_err(|e| e.to_string())?;
    if resp.send(Ok((id, reply_rx))).is_err() {
        // The opener gave up: abort the stream.
        if let Some(s) = st.streams.get_mut(&id) {
            s.dropped = true;
            s.reset = Some(rst::CANCEL);
        }
        Frame::RstStream { stream_id: id, status: rst::CANCEL }.encode(buf).map_err(|e| e.to_string())?;
        shared.tidy(&mut st);
    }
    Ok(())
}

/// Reads and dispatches frames until EOF, an error, a protocol violation or the writer's end;
/// then ends every stream and marks the session closed.
pub(crate) async fn read_loop<IO: AsyncRead>(
    shared: Arc<Shared>,
    mut rd: ReadHalf<IO>,
    accept: mpsc::Sender<Stream>,
    writer_done: Arc<Notify>,
) {
    let mut dec = HeaderDecompressor::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut writer_ended = false;
    let reason: String = 'conn: loop {
        loop {
            match frame::parse(&buf, RECV_FRAME_LIMIT) {
                Ok(None) => break,
                Ok(Some((f, n))) => {
                    let _ = buf.split_to(n);
                    match dispatch(&shared, &mut dec, &accept, f) {
                        Ok(None) => {}
                        Ok(Some(id)) => {
                            if !wait_drained(&shared, id, &writer_done).await {
                                writer_ended = true;
                                break 'conn "writer ended".to_string();
                            }
                        }
                        Err(e) => {
                            shared.send(Out::Frame(Frame::GoAway {
                                last_good_stream_id: shared.lock().last_peer_id,
                                status: goaway::PROTOCOL_ERROR,
                            }));
                            break 'conn format!("protocol error: {e}");
                        }
                    }
                }
                Err(e) => {
                    shared.send(Out::Frame(Frame::GoAway {
                        last_good_stream_id: shared.lock().last_peer_id,
                        status: goaway::PROTOCOL_ERROR,
                    }));
                    break 'conn format!("protocol error: {e}");
                }
            }
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) => break 'conn "connection closed by peer".to_string(),
                Ok(_) => {}
                Err(e) => break 'conn format!("read failed: {e}"),
            },
            _ = writer_done.notified() => {
                writer_ended = true;
                break 'conn "writer ended".to_string();
            }
        }
    };
    tracing::debug!(reason = %reason, "spdy session ending");
    shared.kill(reason);
    shared.send(Out::Shutdown);
    if !writer_ended {
        writer_done.notified().await;
    }
    drop(rd);
    shared.closed.send_replace(true);
}

/// Waits until stream `id`'s buffer is back within its window (peer without flow control).
/// Returns false when the writer ended meanwhile.
async fn wait_drained(shared: &Shared, id: u32, writer_done: &Notify) -> bool {
    loop {
        let notified = shared.drained.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let st = shared.lock();
            if st.dead.is_some() || st.shutdown_requested {
                return true;
            }
            let limit = st.config.recv_window as usize;
            match st.streams.get(&id) {
                Some(s) if s.reset.is_none() && !s.dropped && s.recv_len > limit => {}
                _ => return true,
            }
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = writer_done.notified() => return false,
        }
    }
}

/// Applies one frame. `Ok(Some(id))`: stream `id` is over its window, wait before reading on.
/// `Err`: a session-level protocol error (the session ends with GOAWAY PROTOCOL_ERROR).
fn dispatch(shared: &Arc<Shared>, dec: &mut HeaderDecompressor, accept: &mpsc::Sender<Stream>, f: Frame) -> Result<Option<u32>, String> {
    match f {
        Frame::SynStream { stream_id, flags, header_block, .. } => {
            // Always inflate: the zlib stream must stay in step even for refused streams.
            let headers = dec.decompress(&header_block).map_err(|e| e.to_string())?;
            let mut st = shared.lock();
            let peer_parity = if st.server { 1 } else { 0 };
            if stream_id == 0 || stream_id % 2 != peer_parity || stream_id <= st.last_peer_id {
                return Err(format!(
                    "SYN_STREAM with stream id {stream_id}: expected a new {} id above {}",
                    if peer_parity == 1 { "odd" } else { "even" },
                    st.last_peer_id
                ));
            }
            st.last_peer_id = stream_id;
            let open_peer = st.streams.values().filter(|s| !s.local && !s.finished()).count();
            if st.goaway_sent || open_peer >= st.config.max_concurrent_streams || accept.is_closed() || accept.capacity() == 0 {
                shared.send(Out::Frame(Frame::RstStream { stream_id, status: rst::REFUSED_STREAM }));
                return Ok(None);
            }
            let mut s = StreamState::new(st.initial_send_window, false);
            s.recv_fin = flags & FIN != 0;
            s.send_fin = flags & UNIDIRECTIONAL != 0;
            st.streams.insert(stream_id, s);
            shared.send(Out::Reply { id: stream_id, fin: false });
            drop(st);
            let stream = Stream::new_arc(shared, stream_id, headers);
            // Capacity was checked above and this task is the only sender.
            let _ = accept.try_send(stream);
        }
        Frame::SynReply { stream_id, flags, header_block } => {
            let headers = dec.decompress(&header_block).map_err(|e| e.to_string())?;
            let mut st = shared.lock();
            if let Some(s) = st.streams.get_mut(&stream_id) {
                match s.reply_tx.take() {
                    Some(tx) => {
                        let _ = tx.send(Ok(headers));
                    }
                    None if s.local && s.reset.is_none() => {}
                    None => {}
                }
                if flags & FIN != 0 {
                    s.recv_fin = true;
                    s.wake();
                }
            }
            shared.tidy(&mut st);
        }
        Frame::Headers { stream_id, flags, header_block } => {
            dec.decompress(&header_block).map_err(|e| e.to_string())?;
            let mut st = shared.lock();
            if let Some(s) = st.streams.get_mut(&stream_id) {
                if flags & FIN != 0 {
                    s.recv_fin = true;
                    s.wake();
                }
            }
            shared.tidy(&mut st);
        }
        Frame::RstStream { stream_id, status } => {
            let mut st = shared.lock();
            if let Some(s) = st.streams.get_mut(&stream_id) {
                if s.reset.is_none() {
                    s.reset = Some(status);
                    s.reset_by_peer = true;
                }
                if let Some(tx) = s.reply_tx.take() {
                    let _ = tx.send(Err(SpdyError::Reset { stream_id, status }));
                }
                s.wake();
            }
            shared.tidy(&mut st);
            drop(st);
            shared.drained.notify_waiters();
        }
        Frame::Settings { entries, .. } => {
            let mut st = shared.lock();
            for e in entries {
                if e.id == settings::INITIAL_WINDOW_SIZE && e.value <= 0x7fff_ffff {
                    let delta = e.value as i64 - st.initial_send_window;
                    st.initial_send_window = e.value as i64;
                    st.peer_flow = true;
                    for s in st.streams.values_mut() {
                        s.send_window += delta;
                        s.wake();
                    }
                }
            }
        }
        Frame::Ping { id } => {
            let mut st = shared.lock();
            let ours = if st.server { 0 } else { 1 };
            if id % 2 == ours {
                if let Some(tx) = st.pings.remove(&id) {
                    let _ = tx.send(());
                }
            } else {
                shared.send(Out::Frame(Frame::Ping { id }));
            }
        }
        Frame::GoAway { last_good_stream_id, .. } => {
            let mut st = shared.lock();
            st.goaway_received = true;
            for (&id, s) in st.streams.iter_mut() {
                if s.local && id > last_good_stream_id && s.reset.is_none() {
                    s.reset = Some(rst::REFUSED_STREAM);
                    s.reset_by_peer = true;
                    if let Some(tx) = s.reply_tx.take() {
                        let _ = tx.send(Err(SpdyError::GoingAway));
                    }
                    s.wake();
                }
            }
            shared.tidy(&mut st);
        }
        Frame::WindowUpdate { stream_id, delta } => {
            let mut st = shared.lock();
            st.peer_flow = true;
            if stream_id == 0 {
                st.session_send_window = (st.session_send_window + delta as i64).min(0x7fff_ffff);
                for w in st.window_waiters.drain(..) {
                    w.wake();
                }
                for s in st.streams.values_mut() {
                    if let Some(w) = s.write_waker.take() {
                        w.wake();
                    }
                }
            } else if let Some(s) = st.streams.get_mut(&stream_id) {
                s.send_window += delta as i64;
                if s.send_window > 0x7fff_ffff && s.reset.is_none() {
                    s.reset = Some(rst::FLOW_CONTROL_ERROR);
                    shared.send(Out::Frame(Frame::RstStream { stream_id, status: rst::FLOW_CONTROL_ERROR }));
                }
                s.wake();
            }
        }
        Frame::Data { stream_id, flags, data } => {
            let mut st = shared.lock();
            let n = data.len();
            let limit = st.config.recv_window as usize;
            let Some(s) = st.streams.get_mut(&stream_id) else {
                shared.send(Out::Frame(Frame::RstStream { stream_id, status: rst::INVALID_STREAM }));
                consumed(shared, &mut st, stream_id, n);
                return Ok(None);
            };
            if s.reset.is_some() {
                consumed(shared, &mut st, stream_id, n);
                return Ok(None);
            }
            if s.recv_fin {
                s.reset = Some(rst::STREAM_ALREADY_CLOSED);
                s.wake();
                shared.send(Out::Frame(Frame::RstStream { stream_id, status: rst::STREAM_ALREADY_CLOSED }));
                shared.tidy(&mut st);
                return Ok(None);
            }
            let fin = flags & FIN != 0;
            if fin {
                s.recv_fin = true;
            }
            if s.dropped {
                consumed(shared, &mut st, stream_id, n);
                shared.tidy(&mut st);
                return Ok(None);
            }
            if n > 0 {
                s.recv.push_back(Bytes::from(data));
                s.recv_len += n;
            }
            let over = s.recv_len > limit;
            if let Some(w) = s.read_waker.take() {
                w.wake();
            }
            shared.tidy(&mut st);
            if over {
                return Ok(Some(stream_id));
            }
        }
        Frame::Unknown { .. } => {}
    }
    Ok(None)
}
