//! The SIGKILL deadlines of graceful stops in progress, so that a later, shorter stop preempts a
//! longer one (issue #11): while `StopContainer(timeout=300)` waits for the container to end,
//! `StopContainer(timeout=0)` (kubelet's force delete) or RemoveContainer moves the first call's
//! deadline to now, the first call sends SIGKILL at once, and both return. The second call
//! cannot act itself: the first holds the container's lock until the container has ended.
//! The CRI says only that the runtime "must forcibly kill the container after the grace period
//! is reached"; a later call's grace period ending first is such a point (CRI-O shortens a
//! running stop's timeout the same way). A longer timeout never extends a running stop.

use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

/// Container ID -> the deadline of the graceful stop waiting on it.
#[derive(Debug, Default)]
pub struct StopDeadlines {
    waiting: Mutex<HashMap<String, watch::Sender<Instant>>>,
}

/// A graceful stop's registration: the deadline it must honour, removed again on drop.
pub struct Registration<'a> {
    table: &'a StopDeadlines,
    id: String,
    /// Changes whenever a later call shortens the deadline.
    pub deadline: watch::Receiver<Instant>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.table.map().remove(&self.id);
    }
}

impl StopDeadlines {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<Instant>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers the graceful stop of `id` that sends SIGKILL at `deadline` (called under the
    /// container's lock, so there is at most one per container).
    pub fn begin(&self, id: &str, deadline: Instant) -> Registration<'_> {
        let (tx, rx) = watch::channel(deadline);
        self.map().insert(id.to_string(), tx);
        Registration { table: self, id: id.to_string(), deadline: rx }
    }

    /// Moves the SIGKILL deadline of the graceful stop waiting on `id`, if any, to `deadline`
    /// when that is sooner. Returns whether a waiting stop was told.
    pub fn shorten(&self, id: &str, deadline: Instant) -> bool {
        match self.map().get(id) {
            Some(tx) => {
                tx.send_if_modified(|d| {
                    let sooner = deadline < *d;
                    if sooner {
                        *d = deadline;
                    }
                    sooner
                });
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_shorter_stop_moves_the_deadline_a_longer_one_does_not() {
        let t = StopDeadlines::default();
        let now = Instant::now();
        assert!(!t.shorten("c", now), "nothing waits yet");
        let mut reg = t.begin("c", now + Duration::from_secs(300));
        assert!(t.shorten("c", now + Duration::from_secs(600)));
        assert!(!reg.deadline.has_changed().unwrap(), "a longer timeout changes nothing");
        assert!(t.shorten("c", now));
        reg.deadline.changed().await.unwrap();
        assert_eq!(*reg.deadline.borrow(), now);
        drop(reg);
        assert!(!t.shorten("c", now), "the registration is gone with its stop");
    }
}
