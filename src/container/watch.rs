//! The exit watcher: while someone subscribes to events (kubelet's evented PLEG, crictl events),
//! asks the record layer every [`EXIT_POLL_INTERVAL`] to fold in the ended processes of RUNNING
//! containers, so an exit nobody asks about is still reported within ~200 ms. The fold and its
//! STOPPED event are the record layer's ([`crate::records::Records::fold_container`]); this
//! module only decides when to ask. With no subscriber it only sleeps (an exit is then folded in
//! at the next read).

use std::sync::Arc;

use super::ContainerState;
use crate::daemon::Daemon;

/// How often the exit watcher looks at the running containers' exit files.
pub const EXIT_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// Starts the exit watcher (once per daemon; later calls do nothing).
pub fn start_exit_watcher(d: &Arc<Daemon>) {
    if !d.records.events().claim_watcher() {
        return;
    }
    let weak = Arc::downgrade(d);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EXIT_POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(d) = weak.upgrade() else { return };
            if d.records.events().subscribers() > 0 {
                observe_exits(&d);
            }
        }
    });
}

/// One scan of the exit watcher: folds in the end of every RUNNING container whose process
/// ended, unless an operation holds its lock (that operation observes the exit itself). Returns
/// how many exits were folded in.
pub fn observe_exits(d: &Daemon) -> usize {
    let mut folded = 0;
    for r in d.records.stored_containers() {
        if r.state != ContainerState::Running {
            continue;
        }
        let paths = super::ContainerPaths::new(d, &r.id);
        if paths.watched(&r).observe().is_none() {
            continue;
        }
        let lock = d.lock_for(&r.id);
        let Ok(guard) = lock.try_lock() else { continue };
        match d.records.stored_container(&r.id) {
            Some(fresh) => match d.records.fold_container(fresh) {
                Ok(_) => folded += 1,
                Err(e) => tracing::warn!(container = %r.id, error = %e, "exit watcher: folding in an exit"),
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
