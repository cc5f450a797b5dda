//! The one exit path: how the end of an infra or container process reaches its record.
//!
//! The record layer waits on every live process (a pidfd of its monitor, `records::watch`)
//! and hands out each end; this module takes the object's operation lock, so an end never lands
//! in the middle of a StartContainer or a StopPodSandbox, and asks the record layer to fold it
//! in ([`crate::records::Records::fold_container`], which publishes STOPPED;
//! [`crate::records::Records::fold_sandbox`], which makes the pod NotReady). Reads never fold:
//! what they return is what this path (or an operation that settled the end itself, as
//! StopContainer does) stored.
//!
//! Each end is folded in a task of its own, so a container whose lock a long StopContainer holds
//! delays no other. An end whose fold cannot be stored (the store fails) is tried again every
//! [`RETRY`] while its record is there.

use std::sync::Arc;
use std::time::Duration;

use crate::daemon::Daemon;
use crate::records::watch::{End, Kind};

/// How long a fold the store refused waits before it is tried again.
pub const RETRY: Duration = Duration::from_secs(5);

/// Starts the exit path (once per daemon: later calls do nothing). Call it after recovery,
/// which starts the waits on the processes that outlived the last daemon.
pub fn start(d: &Arc<Daemon>) {
    let Some(mut ends) = d.records.take_ends() else { return };
    let weak = Arc::downgrade(d);
    tokio::spawn(async move {
        while let Some(end) = ends.recv().await {
            let Some(d) = weak.upgrade() else { return };
            tokio::spawn(async move { fold(&d, &end).await });
        }
    });
}

/// Folds one end into its record under the object's lock; a record removed meanwhile needs
/// nothing (and the lock entry this made again is dropped). Retries while the store fails.
pub async fn fold(d: &Daemon, end: &End) {
    loop {
        let lock = d.lock_for(&end.id);
        let guard = lock.lock().await;
        // A container's end and its NRI StopContainer go under the NRI sync lock (a pod's end
        // sends no NRI event).
        let nri_sync = match end.kind {
            Kind::Container => d.nri_block_sync().await,
            Kind::Sandbox => None,
        };
        let folded = match end.kind {
            Kind::Container => d.records.stored_container(&end.id).map(|r| {
                let was = r.state;
                d.records.fold_container(r).map(|r| (was != r.state && r.state == crate::records::ContainerState::Exited).then_some(r))
            }),
            Kind::Sandbox => d.records.stored_sandbox(&end.id).map(|r| d.records.fold_sandbox(r).map(|_| None)),
        };
        match folded {
            Some(Ok(ended)) => {
                // A container that ended by itself: NRI's StopContainer, under the lock, so
                // before any RemoveContainer's RemoveContainer.
                if let Some(r) = ended {
                    d.nri_container_stopped(&r).await;
                }
                drop(nri_sync);
                return;
            }
            None => {
                // Removed: the removal held this lock and dropped its entry, which lock_for above
                // made again.
                drop(guard);
                d.drop_lock(&end.id);
                return;
            }
            Some(Err(e)) => {
                tracing::error!(id = %end.id, kind = ?end.kind, error = %e, "cannot store the end of a process; trying again");
            }
        }
        drop(nri_sync);
        drop(guard);
        tokio::time::sleep(RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{ContainerEventKind, ContainerPaths, ContainerRecord, ContainerState};
    use std::path::Path;

    fn daemon(tmp: &Path) -> Arc<Daemon> {
        let config = crate::config::Config {
            root: tmp.join("root"),
            run_root: tmp.join("run"),
            monitor_path: "/bin/true".into(),
            ..Default::default()
        };
        let store = Arc::new(crate::state::Store::open(&config.root).unwrap());
        let images = Arc::new(crate::image::ImageStore::open(config.root.join("images"), store.clone(), config.image.clone()).unwrap());
        Arc::new(Daemon::open(config, images, store).unwrap())
    }

    /// A running container record whose process is `child` (a real process; it stands in for
    /// the monitor too, whose comm it does not have, so the wait is on the process itself).
    fn running(d: &Daemon, id: &str, child: &std::process::Child) -> ContainerRecord {
        let mut r = ContainerRecord::for_test(id, "pod");
        r.state = ContainerState::Running;
        r.started_at = 1;
        r.pid = child.id() as i32;
        r.monitor_pid = r.pid;
        d.records.put_container(&r).unwrap();
        std::fs::create_dir_all(&ContainerPaths::new(d, id).bundle).unwrap();
        r
    }

    fn end(d: &Daemon, id: &str, child: &mut std::process::Child, code: i32) {
        let exit = ContainerPaths::new(d, id).exit_file;
        let body = format!(r#"{{"exit_code":{code},"exited_at":5,"oom_killed":false}}"#);
        crate::util::write_atomic(&exit, body.as_bytes()).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    async fn settled(d: &Daemon, id: &str) -> ContainerRecord {
        for _ in 0..500 {
            let r = d.records.stored_container(id).unwrap();
            if r.state == ContainerState::Exited {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the end of {id} never reached its record");
    }

    /// An end reaches the record and the event bus with nobody reading: the exit path, not a
    /// read, folds it in; reads return what is stored and never fold.
    #[tokio::test]
    async fn an_end_reaches_the_record_with_no_reader() {
        let tmp = tempfile::tempdir().unwrap();
        let d = daemon(tmp.path());
        start(&d);
        let mut events = d.records.events().subscribe();
        let mut child = std::process::Command::new("sleep").arg("600").spawn().unwrap();
        let id = "e0000000000000000000000000000000000000000000000000000000000000a1";
        let r = running(&d, id, &child);
        d.records.watch_container(&r);
        assert_eq!(d.records.watched(), 1);

        // The exit file is there, the process not yet gone: a read returns the record as stored.
        let exit = ContainerPaths::new(&*d, id).exit_file;
        crate::util::write_atomic(&exit, br#"{"exit_code":3,"exited_at":5,"oom_killed":false}"#).unwrap();
        assert_eq!(d.records.container(id).unwrap().state, ContainerState::Running, "a read folded");
        assert_eq!(d.records.containers()[0].state, ContainerState::Running, "a list folded");

        end(&d, id, &mut child, 3);
        let r = settled(&d, id).await;
        assert_eq!((r.exit_code, r.reason.as_str()), (3, "Error"));
        let ev = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.unwrap().unwrap().unwrap();
        // STARTED first: it was never published for this record, and a STOPPED fills it in.
        assert_eq!((ev.kind, ev.container_id.as_str()), (ContainerEventKind::Started, id));
        let ev = events.recv().await.unwrap().unwrap();
        assert_eq!(ev.kind, ContainerEventKind::Stopped);
        assert_eq!(d.records.watched(), 0);
    }

    /// An end never lands inside an operation: while something holds the container's lock the
    /// record stays as the operation left it, and the fold follows once the lock is let go.
    #[tokio::test]
    async fn an_end_waits_for_the_operation_holding_the_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let d = daemon(tmp.path());
        start(&d);
        let mut child = std::process::Command::new("sleep").arg("600").spawn().unwrap();
        let id = "e0000000000000000000000000000000000000000000000000000000000000b2";
        let r = running(&d, id, &child);
        d.records.watch_container(&r);
        let lock = d.lock_for(id);
        let guard = lock.lock().await;
        end(&d, id, &mut child, 0);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(d.records.stored_container(id).unwrap().state, ContainerState::Running, "folded under a held lock");
        drop(guard);
        assert_eq!(settled(&d, id).await.reason, "Completed");
    }

    /// The end of a container removed before it was folded writes nothing and leaves no lock
    /// entry behind.
    #[tokio::test]
    async fn the_end_of_a_removed_container_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let d = daemon(tmp.path());
        let mut child = std::process::Command::new("sleep").arg("600").spawn().unwrap();
        let id = "e0000000000000000000000000000000000000000000000000000000000000c3";
        running(&d, id, &child);
        d.records.delete_container(id).unwrap();
        end(&d, id, &mut child, 0);
        fold(&d, &End { kind: Kind::Container, id: id.into() }).await;
        assert!(d.records.stored_container(id).is_none(), "a removed container came back");
        assert_eq!(d.lock_count(), 0, "the fold left a lock entry");
    }
}
