//! Container lifecycle events for CRI `GetContainerEvents` (kubelet's evented PLEG).
//!
//! The domain modules publish [`ContainerEvent`]s on the daemon's [`EventBus`]; `server/` turns
//! them into `ContainerEventResponse`s. Each event carries a snapshot taken when it was published:
//! the pod sandbox record and the records of every container of that pod (CRI
//! `pod_sandbox_status` and `containers_statuses`), as containerd's `generateAndSendContainerEvent`
//! does.
//!
//! Pod sandboxes produce events too, with `container_id` = the sandbox ID (containerd's and
//! CRI-O's convention, which kubelet's evented PLEG relies on): CREATED and STARTED at
//! RunPodSandbox, STOPPED at StopPodSandbox, DELETED at RemovePodSandbox.
//!
//! Delivery: one `tokio::sync::broadcast` channel of [`EVENT_BUFFER`] events. Publishing never
//! waits; every subscriber receives every event in publish order. A subscriber that falls more
//! than the buffer behind gets [`Lagged`] from its stream (the server ends the RPC with an error,
//! and kubelet relists) rather than a silent gap.
//!
//! Order per object: events of one container or sandbox are published at most once each and in
//! lifecycle order (CREATED < STARTED < STOPPED < DELETED). A duplicate (two paths observing one
//! exit) or a late one (an exit observed after DELETED) is dropped; a STOPPED of a container that
//! started but whose STARTED was not published yet publishes STARTED first.

use crate::container::ContainerRecord;
use crate::daemon::Daemon;
use crate::sandbox::SandboxRecord;
use crate::state::SANDBOXES;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Events a subscriber may fall behind by before its stream ends with [`Lagged`].
pub const EVENT_BUFFER: usize = 8192;
/// IDs of deleted objects remembered, so late events about them are dropped.
const DELETED_MEMORY: usize = 4096;

/// CRI `ContainerEventType`, in lifecycle order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ContainerEventKind {
    /// `CONTAINER_CREATED_EVENT`.
    Created,
    /// `CONTAINER_STARTED_EVENT`.
    Started,
    /// `CONTAINER_STOPPED_EVENT`: the process exited (observed by an RPC, Stop, or the exit watcher).
    Stopped,
    /// `CONTAINER_DELETED_EVENT`.
    Deleted,
}

/// One event, with the state of its pod when it was published.
#[derive(Debug, Clone)]
pub struct ContainerEvent {
    /// What happened.
    pub kind: ContainerEventKind,
    /// The container ID, or the sandbox ID for events of a pod sandbox itself.
    pub container_id: String,
    /// When it was published, nanoseconds since the Unix epoch (CRI `created_at`).
    pub created_at: i64,
    /// The pod sandbox (None when its record is gone).
    pub sandbox: Option<SandboxRecord>,
    /// Every container of the pod as stored (a deleted container is no longer among them).
    pub containers: Vec<ContainerRecord>,
}

/// A subscriber fell more than [`EVENT_BUFFER`] events behind; `missed` events were dropped for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("event subscriber fell {missed} events behind (buffer {EVENT_BUFFER}); relist")]
pub struct Lagged {
    /// How many events it missed.
    pub missed: u64,
}

/// Per-object last published kind, and the FIFO of deleted IDs kept in it.
#[derive(Default)]
struct Published {
    last: HashMap<String, ContainerEventKind>,
    deleted: VecDeque<String>,
}

/// The daemon's event bus. Cheap to share (`Daemon.events`).
pub struct EventBus {
    tx: broadcast::Sender<Arc<ContainerEvent>>,
    /// Held while an event is built and sent, so per-object order checks and sends are atomic.
    published: Mutex<Published>,
    /// Whether [`start_exit_watcher`] ran.
    watcher_started: std::sync::atomic::AtomicBool,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(EVENT_BUFFER)
    }
}

impl EventBus {
    /// A bus whose subscribers may fall `capacity` events behind.
    pub fn new(capacity: usize) -> EventBus {
        let (tx, _) = broadcast::channel(capacity.max(1));
        EventBus { tx, published: Mutex::new(Published::default()), watcher_started: Default::default() }
    }

    /// A new subscriber: it receives every event published from now on.
    pub fn subscribe(&self) -> Subscription {
        Subscription { rx: self.tx.subscribe() }
    }

    /// Number of live subscribers.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Publishes `kind` for object `id` unless it would repeat or reverse that object's order;
    /// `snapshot` builds the pod state (called only when the event is published and someone
    /// subscribes). When `fill`
    /// names an earlier kind not yet published (STARTED before a STOPPED), that one goes first.
    /// Returns the kinds published.
    pub fn publish_with(
        &self,
        kind: ContainerEventKind,
        id: &str,
        fill: Option<ContainerEventKind>,
        snapshot: impl Fn() -> (Option<SandboxRecord>, Vec<ContainerRecord>),
    ) -> Vec<ContainerEventKind> {
        let mut p = self.published.lock().unwrap_or_else(|e| e.into_inner());
        let mut sent = Vec::new();
        for k in fill.into_iter().filter(|f| *f < kind).chain(std::iter::once(kind)) {
            if p.last.get(id).is_some_and(|last| *last >= k) {
                continue;
            }
            // The pod snapshot reads the store: build it only when someone listens (every
            // lifecycle RPC passes here). The order bookkeeping below happens either way.
            if self.tx.receiver_count() > 0 {
                let (sandbox, containers) = snapshot();
                let ev =
                    ContainerEvent { kind: k, container_id: id.to_string(), created_at: crate::util::now_nanos(), sandbox, containers };
                // Err only when the last subscriber left meanwhile: the event is then not needed.
                let _ = self.tx.send(Arc::new(ev));
            }
            p.last.insert(id.to_string(), k);
            sent.push(k);
            if k == ContainerEventKind::Deleted {
                p.deleted.push_back(id.to_string());
                while p.deleted.len() > DELETED_MEMORY {
                    if let Some(old) = p.deleted.pop_front() {
                        if p.last.get(&old) == Some(&ContainerEventKind::Deleted) {
                            p.last.remove(&old);
                        }
                    }
                }
            }
        }
        sent
    }
}

/// One subscriber's stream of events.
pub struct Subscription {
    rx: broadcast::Receiver<Arc<ContainerEvent>>,
}

impl Subscription {
    /// The next event; `Ok(None)` when the bus is gone (daemon shutting down); `Err(Lagged)` when
    /// this subscriber fell too far behind (the stream should end: events were lost for it).
    pub async fn recv(&mut self) -> Result<Option<Arc<ContainerEvent>>, Lagged> {
        match self.rx.recv().await {
            Ok(ev) => Ok(Some(ev)),
            Err(broadcast::error::RecvError::Closed) => Ok(None),
            Err(broadcast::error::RecvError::Lagged(missed)) => Err(Lagged { missed }),
        }
    }
}

/// The stored records of sandbox `sandbox_id` and its containers, with `current` (the record
/// the caller holds, possibly newer than the store's) in place of its stored copy. Store errors
/// give an empty part: an event is still worth sending.
fn snapshot(d: &Daemon, sandbox_id: &str, current: Option<&ContainerRecord>) -> (Option<SandboxRecord>, Vec<ContainerRecord>) {
    let sandbox = d.store.get::<SandboxRecord>(SANDBOXES, sandbox_id).ok().flatten();
    let mut containers: Vec<ContainerRecord> = d.containers.list().into_iter().filter(|r| r.sandbox_id == sandbox_id).collect();
    if let Some(cur) = current {
        if let Some(slot) = containers.iter_mut().find(|r| r.id == cur.id) {
            *slot = cur.clone();
        }
    }
    containers.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
    (sandbox, containers)
}

/// Publishes a container event. `r` is the container's record after the change (for DELETED:
/// its last record, no longer stored). A STOPPED of a started container publishes its missing
/// STARTED first.
pub fn container_event(d: &Daemon, kind: ContainerEventKind, r: &ContainerRecord) {
    let fill = (kind == ContainerEventKind::Stopped && r.started_at != 0).then_some(ContainerEventKind::Started);
    let current = (kind != ContainerEventKind::Deleted).then_some(r);
    let sent = d.events.publish_with(kind, &r.id, fill, || snapshot(d, &r.sandbox_id, current));
    if !sent.is_empty() {
        tracing::debug!(container = %r.id, events = ?sent, "container events published");
    }
}

/// Publishes an event of pod sandbox `r` itself (`container_id` = its ID). `r` is its record
/// after the change (for DELETED: its last record, no longer stored).
pub fn sandbox_event(d: &Daemon, kind: ContainerEventKind, r: &SandboxRecord) {
    let sent = d.events.publish_with(kind, &r.id, None, || {
        let (stored, containers) = snapshot(d, &r.id, None);
        (stored.or_else(|| Some(r.clone())), containers)
    });
    if !sent.is_empty() {
        tracing::debug!(sandbox = %r.id, events = ?sent, "pod sandbox events published");
    }
}

/// How often the exit watcher looks at the running containers' exit files.
pub const EXIT_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// Starts (once per daemon; later calls do nothing) the exit watcher: a task that every
/// [`EXIT_POLL_INTERVAL`], while someone subscribes to events, folds the ended processes of
/// RUNNING containers into their records with [`crate::container::refresh`], which publishes
/// their STOPPED events, so an exit nobody asks about is still reported within ~200 ms. With no
/// subscriber it only sleeps (an exit is then folded in at the next read or scan).
pub fn start_exit_watcher(d: &Arc<Daemon>) {
    if d.events.watcher_started.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let weak = Arc::downgrade(d);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EXIT_POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(d) = weak.upgrade() else { return };
            if d.events.subscribers() > 0 {
                observe_exits(&d);
            }
        }
    });
}

/// One scan of the exit watcher: refreshes every RUNNING container whose process ended, unless
/// an operation holds its lock (that operation observes the exit itself). Returns how many
/// exits were folded in.
pub fn observe_exits(d: &Daemon) -> usize {
    let running = d.containers.list();
    let mut folded = 0;
    for r in running {
        if r.state != crate::container::ContainerState::Running {
            continue;
        }
        let paths = crate::container::ContainerPaths::new(d, &r.id);
        if crate::container::watched(&paths, &r).observe().is_none() {
            continue;
        }
        let lock = d.lock_for(&r.id);
        let Ok(guard) = lock.try_lock() else { continue };
        match d.containers.get(&r.id) {
            Some(fresh) => match crate::container::refresh(d, fresh) {
                Ok(_) => folded += 1,
                Err(e) => tracing::warn!(container = %r.id, error = %e, "exit watcher: refreshing container"),
            },
            // Removed meanwhile: its lock entry was made again by lock_for above.
            None => {
                drop(guard);
                d.drop_lock(&r.id);
            }
        }
    }
    folded
}

#[cfg(test)]
mod tests {
    use super::ContainerEventKind::*;
    use super::*;

    fn none() -> (Option<SandboxRecord>, Vec<ContainerRecord>) {
        (None, Vec::new())
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_event_in_order() {
        let bus = EventBus::new(64);
        let mut a = bus.subscribe();
        let mut b = bus.subscribe();
        for i in 0..10 {
            let id = format!("c{i}");
            for k in [Created, Started, Stopped, Deleted] {
                assert_eq!(bus.publish_with(k, &id, None, none), vec![k]);
            }
        }
        for sub in [&mut a, &mut b] {
            for i in 0..10 {
                for k in [Created, Started, Stopped, Deleted] {
                    let ev = sub.recv().await.unwrap().unwrap();
                    assert_eq!((ev.kind, ev.container_id.as_str()), (k, format!("c{i}").as_str()));
                }
            }
        }
    }

    #[tokio::test]
    async fn duplicates_and_late_events_are_dropped_and_gaps_filled() {
        let bus = EventBus::new(64);
        let mut s = bus.subscribe();
        bus.publish_with(Created, "x", None, none);
        // Two paths observe one exit: one STOPPED, preceded by the missing STARTED.
        assert_eq!(bus.publish_with(Stopped, "x", Some(Started), none), vec![Started, Stopped]);
        assert!(bus.publish_with(Stopped, "x", Some(Started), none).is_empty());
        // start() publishing STARTED after the exit was seen: dropped, order kept.
        assert!(bus.publish_with(Started, "x", None, none).is_empty());
        bus.publish_with(Deleted, "x", None, none);
        assert!(bus.publish_with(Stopped, "x", None, none).is_empty());
        let kinds: Vec<_> = (0..4).map(|_| s.rx.try_recv().unwrap().kind).collect();
        assert_eq!(kinds, vec![Created, Started, Stopped, Deleted]);
        assert!(s.rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_it_lagged_and_never_blocks_publishing() {
        let bus = EventBus::new(8);
        let mut slow = bus.subscribe();
        for i in 0..100 {
            bus.publish_with(Created, &format!("c{i}"), None, none);
        }
        assert_eq!(slow.recv().await.unwrap_err(), Lagged { missed: 92 });
    }

    #[test]
    fn deleted_memory_is_bounded() {
        let bus = EventBus::new(4);
        for i in 0..(DELETED_MEMORY + 100) {
            bus.publish_with(Deleted, &format!("c{i}"), None, none);
        }
        let p = bus.published.lock().unwrap();
        assert_eq!(p.deleted.len(), DELETED_MEMORY);
        assert_eq!(p.last.len(), DELETED_MEMORY);
    }
}
