//! The SPDY/3.1 session: one reader task, one writer task, shared per-stream state.
//!
//! The reader task parses frames and dispatches them (DATA into per-stream buffers, control
//! frames into state changes, PING echoed, peer-opened streams to the accept channel). The
//! writer task owns the write half and the header compressor, so SYN_STREAM ids go out in
//! increasing order and header blocks in compression order. [`Stream`]s read and write through
//! the shared state under one `std::sync::Mutex` (never held across an await).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::frame::{self, goaway, rst, settings, Frame, FLAG_FIN, FLAG_UNIDIRECTIONAL};
use super::stream::Stream;
use super::SpdyError;

/// The initial per-stream window of both sides (SPDY/3.1 default, 64 KiB).
pub const DEFAULT_WINDOW: u32 = 64 * 1024;
/// In [`FlowControl::Auto`], how long a sender waits on an exhausted window for a peer that
/// never showed flow control before deciding the peer does not do it (moby/spdystream).
pub const AUTO_FLOW_GRACE: Duration = Duration::from_millis(300);
/// Largest DATA payload this side sends in one frame.
pub(crate) const MAX_DATA_CHUNK: usize = 16 * 1024;
/// Data bytes queued for the writer task beyond which writers wait (bounds the queue for peers
/// that do no flow control).
pub(crate) const MAX_QUEUED_DATA: usize = 256 * 1024;
/// Largest frame payload accepted from the peer: 1 MiB. The protocol allows 16 MiB, but a frame
/// is buffered whole before it is checked, so a hostile peer could make every connection hold
/// 16 MiB; real peers write far smaller frames (client-go and kubelet copy in 32 KiB pieces).
const MAX_RECV_FRAME: usize = 1 << 20;
/// The session receive window this side grants at start (SPDY/3.1 WINDOW_UPDATE on stream 0).
const SESSION_RECV_WINDOW: u32 = 16 * 1024 * 1024;

/// How this side honours the peer's flow-control windows when sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowControl {
    /// SPDY/3.1 strictly: block while the peer's stream or session window is exhausted.
    Enforce,
    /// Enforce once the peer sends WINDOW_UPDATE or SETTINGS_INITIAL_WINDOW_SIZE; a peer that
    /// leaves a window exhausted for [`AUTO_FLOW_GRACE`] without either is treated as a
    /// SPDY/3 peer without flow control (moby/spdystream) and is no longer held to windows.
    Auto,
    /// Never wait for windows (SPDY/3 peers only).
    Ignore,
}

/// Session options.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Sending flow-control policy (default [`FlowControl::Auto`]).
    pub flow_control: FlowControl,
    /// Receive window per stream, advertised with SETTINGS_INITIAL_WINDOW_SIZE when it differs
    /// from 64 KiB; also the per-stream buffer bound.
    pub recv_window: u32,
    /// Most peer-opened streams open at once; more are refused (RST_STREAM REFUSED_STREAM).
    pub max_concurrent_streams: usize,
    /// Capacity of the accept channel of [`Session::server`].
    pub accept_backlog: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self { flow_control: FlowControl::Auto, recv_window: DEFAULT_WINDOW, max_concurrent_streams: 1000, accept_backlog: 64 }
    }
}

/// Delivers the peer's SYN_REPLY headers (or why none came) to `open_stream`.
pub(crate) type ReplyTx = oneshot::Sender<Result<Vec<(String, String)>, SpdyError>>;
/// Answers an `Out::Open`: the new stream id and where its SYN_REPLY will arrive.
pub(crate) type OpenResp = oneshot::Sender<Result<(u32, oneshot::Receiver<Result<Vec<(String, String)>, SpdyError>>), SpdyError>>;

/// What the writer task is asked to send.
pub(crate) enum Out {
    Frame(Frame),
    Data {
        id: u32,
        data: Bytes,
        fin: bool,
    },
    Reply {
        id: u32,
        fin: bool,
    },
    Open {
        headers: Vec<(String, String)>,
        fin: bool,
        resp: OpenResp,
    },
    /// Flush and close the write half, then end.
    Shutdown,
}

/// State of one stream.
pub(crate) struct StreamState {
    pub recv: VecDeque<Bytes>,
    pub recv_len: usize,
    pub recv_fin: bool,
    pub recv_unacked: u32,
    pub send_window: i64,
    pub send_fin: bool,
    /// RST_STREAM status (sent or received).
    pub reset: Option<u32>,
    pub reset_by_peer: bool,
    /// The application dropped its handle: data is discarded, the entry goes once closed.
    pub dropped: bool,
    pub read_waker: Option<Waker>,
    pub write_waker: Option<Waker>,
    /// Client side: waiting for SYN_REPLY.
    pub reply_tx: Option<ReplyTx>,
    /// This side opened the stream.
    pub local: bool,
}

impl StreamState {
    pub(crate) fn new(send_window: i64, local: bool) -> Self {
        Self {
            recv: VecDeque::new(),
            recv_len: 0,
            recv_fin: false,
            recv_unacked: 0,
            send_window,
            send_fin: false,
            reset: None,
            reset_by_peer: false,
            dropped: false,
            read_waker: None,
            write_waker: None,
            reply_tx: None,
            local,
        }
    }

    /// Both halves closed (or reset): nothing more will happen on it.
    pub fn finished(&self) -> bool {
        self.reset.is_some() || (self.send_fin && self.recv_fin)
    }

    pub fn wake(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }
}

/// Session-wide state.
pub(crate) struct State {
    pub streams: HashMap<u32, StreamState>,
    pub server: bool,
    pub config: SessionConfig,
    pub session_send_window: i64,
    pub session_recv_unacked: u32,
    pub initial_send_window: i64,
    /// Peer showed SPDY/3.1 flow control.
    pub peer_flow: bool,
    /// Auto mode gave up on the peer's windows.
    pub flow_off: bool,
    pub queued_data: usize,
    pub data_waiters: Vec<Waker>,
    pub window_waiters: Vec<Waker>,
    pub last_peer_id: u32,
    pub next_id: u32,
    pub next_ping: u32,
    pub pings: HashMap<u32, oneshot::Sender<()>>,
    pub goaway_sent: bool,
    pub goaway_received: bool,
    /// The connection is gone; the reason.
    pub dead: Option<String>,
    pub shutdown_requested: bool,
}

impl State {
    /// Whether sends must respect the peer's windows now.
    pub fn enforce_windows(&self) -> bool {
        match self.config.flow_control {
            FlowControl::Enforce => true,
            FlowControl::Ignore => false,
            FlowControl::Auto => !self.flow_off,
        }
    }

    fn wake_all(&mut self) {
        for s in self.streams.values_mut() {
            s.wake();
        }
        for w in self.data_waiters.drain(..).chain(self.window_waiters.drain(..)) {
            w.wake();
        }
    }

    fn active_streams(&self) -> usize {
        self.streams.values().filter(|s| !s.finished()).count()
    }
}

/// Shared between the tasks, the [`Session`] handles and the [`Stream`]s.
pub(crate) struct Shared {
    pub state: Mutex<State>,
    pub tx: mpsc::UnboundedSender<Out>,
    /// Signalled when a stream buffer drained (the reader may go on) or on shutdown.
    pub drained: Notify,
    pub closed: watch::Sender<bool>,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic elsewhere already; keep serving the state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn send(&self, out: Out) {
        // Fails only when the writer has ended: the session is dead and streams see that.
        let _ = self.tx.send(out);
    }

    /// Drops finished, dropped streams and, after a GOAWAY with no active stream left, shuts
    /// the session down. Call after any state change that can finish a stream.
    pub fn tidy(&self, st: &mut State) {
        st.streams.retain(|_, s| !(s.dropped && s.finished()));
        if (st.goaway_sent || st.goaway_received) && st.active_streams() == 0 && !st.shutdown_requested {
            st.shutdown_requested = true;
            self.send(Out::Shutdown);
            self.drained.notify_waiters();
        }
    }

    /// Marks the connection dead: every stream ends (reads drain then fail, writes fail).
    pub fn kill(&self, reason: String) {
        let mut st = self.lock();
        if st.dead.is_none() {
            st.dead = Some(reason);
        }
        for (_, s) in st.streams.iter_mut() {
            if let Some(tx) = s.reply_tx.take() {
                let _ = tx.send(Err(SpdyError::Closed("connection ended before SYN_REPLY".into())));
            }
        }
        st.pings.clear();
        st.wake_all();
        drop(st);
        self.drained.notify_waiters();
    }
}

/// A SPDY/3.1 session over one connection. Clone-able handle; the connection lives until the
/// peer closes it, an I/O or protocol error, or a GOAWAY once no stream is active.
#[derive(Clone)]
pub struct Session {
    pub(crate) shared: Arc<Shared>,
}

impl Session {
    /// Server role (this side opens even stream ids). Peer-opened streams arrive on the
    /// returned receiver, already accepted (SYN_REPLY sent). Must be called inside a tokio
    /// runtime (it spawns the reader and writer tasks).
    pub fn server<IO>(io: IO) -> (Session, mpsc::Receiver<Stream>)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (s, rx) = Self::start(io, true, SessionConfig::default());
        (s, rx)
    }

    /// Client role (this side opens odd stream ids); peer-opened streams are refused.
    pub fn client<IO>(io: IO) -> Session
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::start(io, false, SessionConfig::default()).0
    }

    /// Either role with explicit options; the receiver yields peer-opened streams (drop it to
    /// refuse them all).
    pub fn with_config<IO>(io: IO, server: bool, config: SessionConfig) -> (Session, mpsc::Receiver<Stream>)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::start(io, server, config)
    }

    fn start<IO>(io: IO, server: bool, config: SessionConfig) -> (Session, mpsc::Receiver<Stream>)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let (accept_tx, accept_rx) = mpsc::channel(config.accept_backlog.max(1));
        let (closed, _) = watch::channel(false);
        let recv_window = config.recv_window;
        let state = State {
            streams: HashMap::new(),
            server,
            config,
            session_send_window: DEFAULT_WINDOW as i64,
            session_recv_unacked: 0,
            initial_send_window: DEFAULT_WINDOW as i64,
            peer_flow: false,
            flow_off: false,
            queued_data: 0,
            data_waiters: Vec::new(),
            window_waiters: Vec::new(),
            last_peer_id: 0,
            next_id: if server { 2 } else { 1 },
            next_ping: if server { 2 } else { 1 },
            pings: HashMap::new(),
            goaway_sent: false,
            goaway_received: false,
            dead: None,
            shutdown_requested: false,
        };
        let shared = Arc::new(Shared { state: Mutex::new(state), tx, drained: Notify::new(), closed });
        if recv_window != DEFAULT_WINDOW {
            let entries = vec![frame::Setting { flags: 0, id: settings::INITIAL_WINDOW_SIZE, value: recv_window }];
            shared.send(Out::Frame(Frame::Settings { flags: 0, entries }));
        }
        shared.send(Out::Frame(Frame::WindowUpdate { stream_id: 0, delta: SESSION_RECV_WINDOW - DEFAULT_WINDOW }));
        let (rd, wr) = tokio::io::split(io);
        let writer_done = Arc::new(Notify::new());
        tokio::spawn(super::session_io::write_loop(shared.clone(), wr, rx, writer_done.clone()));
        tokio::spawn(super::session_io::read_loop(shared.clone(), rd, accept_tx, writer_done));
        (Session { shared }, accept_rx)
    }

    /// Opens a stream (SYN_STREAM with `headers`; `fin` closes this side's half at once) and
    /// waits for the peer's SYN_REPLY. The returned stream's `headers` are the reply's.
    /// Errors: [`SpdyError::GoingAway`], [`SpdyError::Closed`], [`SpdyError::Reset`] when the
    /// peer refuses it, [`SpdyError::IdsExhausted`].
    pub async fn open_stream(&self, headers: Vec<(String, String)>, fin: bool) -> Result<Stream, SpdyError> {
        {
            let st = self.shared.lock();
            if let Some(r) = &st.dead {
                return Err(SpdyError::Closed(r.clone()));
            }
            if st.goaway_sent || st.goaway_received {
                return Err(SpdyError::GoingAway);
            }
        }
        let (resp, rx) = oneshot::channel();
        self.shared.send(Out::Open { headers, fin, resp });
        let (id, reply) = rx.await.map_err(|_| SpdyError::Closed("session writer ended".into()))??;
        let stream = Stream::new(self.shared.clone(), id, Vec::new());
        let headers = reply.await.map_err(|_| SpdyError::Closed("session ended before SYN_REPLY".into()))??;
        let mut stream = stream;
        stream.headers = headers;
        Ok(stream)
    }

    /// Sends a PING and waits for its echo.
    pub async fn ping(&self) -> Result<Duration, SpdyError> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = self.shared.lock();
            if let Some(r) = &st.dead {
                return Err(SpdyError::Closed(r.clone()));
            }
            let id = st.next_ping;
            st.next_ping = if id >= 0x7fff_fffd { id & 1 } else { id + 2 };
            st.pings.insert(id, tx);
            id
        };
        let start = tokio::time::Instant::now();
        self.shared.send(Out::Frame(Frame::Ping { id }));
        rx.await.map_err(|_| SpdyError::Closed("session ended before the PING reply".into()))?;
        Ok(start.elapsed())
    }

    /// Sends GOAWAY (status OK, last good id = the last peer stream accepted): no new streams
    /// either way; the connection closes once the active streams finished.
    pub async fn goaway(&self) {
        let mut st = self.shared.lock();
        if st.goaway_sent || st.dead.is_some() {
            return;
        }
        st.goaway_sent = true;
        let last = st.last_peer_id;
        self.shared.send(Out::Frame(Frame::GoAway { last_good_stream_id: last, status: goaway::OK }));
        self.shared.tidy(&mut st);
    }

    /// Waits until the connection has ended (both tasks finished).
    pub async fn closed(&self) {
        let mut rx = self.shared.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        *self.shared.closed.borrow()
    }

    /// Ends the connection now: every stream fails, the socket is closed.
    pub fn close(&self) {
        self.shared.kill("closed by this side".into());
        self.shared.send(Out::Shutdown);
    }
}

/// RST_STREAM codes map to these I/O errors for stream readers and writers.
pub(crate) fn reset_error(id: u32, status: u32, by_peer: bool) -> std::io::Error {
    let who = if by_peer { "peer" } else { "this side" };
    std::io::Error::new(std::io::ErrorKind::ConnectionReset, format!("SPDY stream {id} reset by {who} (status {status})"))
}

/// Records that `n` received bytes of stream `id` were consumed (read or discarded) and sends
/// the WINDOW_UPDATEs (stream and session) once half a window's worth has built up.
pub(crate) fn consumed(shared: &Shared, st: &mut State, id: u32, n: usize) {
    if n == 0 {
        return;
    }
    let threshold = (st.config.recv_window / 2).max(1);
    st.session_recv_unacked = st.session_recv_unacked.saturating_add(n as u32);
    if st.session_recv_unacked >= DEFAULT_WINDOW / 2 {
        shared.send(Out::Frame(Frame::WindowUpdate { stream_id: 0, delta: st.session_recv_unacked }));
        st.session_recv_unacked = 0;
    }
    if let Some(s) = st.streams.get_mut(&id) {
        if !s.recv_fin && s.reset.is_none() {
            s.recv_unacked = s.recv_unacked.saturating_add(n as u32);
            if s.recv_unacked >= threshold {
                shared.send(Out::Frame(Frame::WindowUpdate { stream_id: id, delta: s.recv_unacked }));
                s.recv_unacked = 0;
            }
        }
    }
}

pub(crate) const FIN: u8 = FLAG_FIN;
pub(crate) const UNIDIRECTIONAL: u8 = FLAG_UNIDIRECTIONAL;
pub(crate) const RECV_FRAME_LIMIT: usize = MAX_RECV_FRAME;
pub(crate) use rst::CANCEL as RST_CANCEL;
