//! Container lifecycle events for CRI `GetContainerEvents` (kubelet's evented PLEG).
//!
//! The record layer ([`super::Records`]) publishes [`ContainerEvent`]s on its [`EventBus`] when
//! a record changes; `server/` turns
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

use super::{ContainerRecord, SandboxRecord};
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
    /// `CONTAINER_STOPPED_EVENT`: the process exited (folded in by the exit path, or by the
    /// StopContainer that waited for it).
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

/// The event bus of the records (`Daemon.records.events()`).
pub struct EventBus {
    tx: broadcast::Sender<Arc<ContainerEvent>>,
    /// Held while an event is built and sent, so per-object order checks and sends are atomic.
    published: Mutex<Published>,
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
        EventBus { tx, published: Mutex::new(Published::default()) }
    }

    /// A new subscriber: it receives every event published from now on.
    pub fn subscribe(&self) -> Subscription {
        Subscription { rx: self.tx.subscribe() }
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
            // The pod snapshot clones the pod's records: build it only when someone listens (every
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
