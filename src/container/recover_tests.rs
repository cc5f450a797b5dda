//! Restart recovery against a real daemon on temp roots: what a CreateContainer cut short by a
//! crash leaves without a record is swept, and never by walking into a volume.

use std::path::Path;
use std::sync::Arc;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::config::Config;
use crate::daemon::Daemon;
use crate::state::{Store, LEASES};

fn daemon(tmp: &Path) -> Daemon {
    let config = Config {
        root: tmp.join("root"),
        run_root: tmp.join("run"),
        monitor_path: "/bin/true".into(),
        cgroup_parent: "/berth-recover-test".into(),
        ..Default::default()
    };
    let store = Arc::new(Store::open(&config.root).unwrap());
    let images = Arc::new(crate::image::ImageStore::open(config.root.join("images"), store.clone(), config.image.clone()).unwrap());
    Daemon::open(config, images, store).unwrap()
}

/// Whether the tests that run recovery against the real runtime can run here; says so when not.
fn root_with_runc() -> bool {
    let can = nix::unistd::geteuid().is_root() && Path::new("/usr/sbin/runc").exists();
    if !can {
        eprintln!("skipped: needs root and runc");
    }
    can
}

/// Removes the (empty) `berth-recover-test` cgroup the daemon's cgroup parent made in each
/// hierarchy.
fn remove_test_cgroups() {
    for c in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let _ = std::fs::remove_dir(c.path().join("berth-recover-test"));
    }
}

/// A child process killed and reaped when dropped, so a failed assertion leaves none behind.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mounted_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    crate::mountinfo::points_under(&text, &std::fs::canonicalize(dir).unwrap())
}

#[tokio::test]
async fn recover_sweeps_an_interrupted_create_and_spares_the_volume() {
    if !root_with_runc() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = daemon(tmp.path());
    // What an interrupted CreateContainer of a pod with a user namespace leaves: a mounted
    // rootfs, a volume's scratch bind under the state dir, and a layer lease; no record.
    let id = "0rphan0000000000000000000000000000000000000000000000000000000000";
    let paths = super::ContainerPaths::new(&d, id);
    let volume = tmp.path().join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    std::fs::write(volume.join("precious"), b"keep me").unwrap();
    let scratch = paths.state.join("idmap").join("v0");
    for dir in [&paths.rootfs, &scratch] {
        std::fs::create_dir_all(dir).unwrap();
    }
    mount(Some("tmpfs"), &paths.rootfs, Some("tmpfs"), MsFlags::empty(), None::<&str>).unwrap();
    mount(Some(&volume), &scratch, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
    d.store.put(LEASES, id, &Vec::<String>::new()).unwrap();

    // A removal that would walk into the volume is refused while the bind is there.
    assert!(crate::util::remove_dir_all_idempotent(&paths.state).is_err());
    assert!(volume.join("precious").exists());

    super::recover(&d).await.unwrap();
    let left = mounted_under(tmp.path());
    for m in &left {
        let _ = umount2(m, MntFlags::MNT_DETACH);
    }
    assert!(left.is_empty(), "mounts left: {left:?}");
    assert!(!paths.bundle.exists() && !paths.state.exists());
    assert_eq!(std::fs::read(volume.join("precious")).unwrap(), b"keep me");
    assert!(d.images.lease_holders().unwrap().is_empty());
    remove_test_cgroups();
}

/// A record CreateContainer stored before the runtime ran (Created, no monitor yet) is a
/// create in progress: a concurrent ListContainers must not call it lost (it did, and kubelet
/// saw the container EXITED 255 while creating it); a removed record is never written back.
#[tokio::test]
async fn fold_leaves_a_create_in_progress_and_never_resurrects() {
    let tmp = tempfile::tempdir().unwrap();
    let d = daemon(tmp.path());
    let r = super::ContainerRecord::for_test("creating0000000000000000000000000000000000000000000000000000000", "s");
    d.records.put_container(&r).unwrap();
    let seen = d.records.fold_container(r.clone()).unwrap();
    assert_eq!(seen.state, super::ContainerState::Created);
    assert_eq!(d.records.stored_container(&r.id).unwrap().state, super::ContainerState::Created);

    // Once the monitor is known and gone without an exit file, it is lost, unless the record
    // was removed meanwhile: then nothing is written back.
    let mut running = r.clone();
    running.state = super::ContainerState::Running;
    running.monitor_pid = i32::MAX;
    running.pid = i32::MAX;
    d.records.put_container(&running).unwrap();
    d.records.delete_container(&running.id).unwrap();
    d.records.fold_container(running.clone()).unwrap();
    assert!(d.records.stored_container(&running.id).is_none(), "the fold brought back a removed container");
    d.records.put_container(&running).unwrap();
    let lost = d.records.fold_container(running.clone()).unwrap();
    assert_eq!((lost.state, lost.exit_code), (super::ContainerState::Exited, 255));
}

/// CreateContainer stores its last record (the PIDs) lazily, so a crash can leave a record
/// Created without a monitor PID whose create the monitor completed. Recovery takes such a
/// container in whenever its monitor left an exit file or still runs, and reads its end the
/// usual way: the exit code in the exit file wins even while the monitor still runs (it was
/// called "never ran", 255, when the monitor had not exited yet), and a monitor still running
/// is watched, not settled. A create whose monitor is gone without a trace was interrupted.
#[tokio::test]
async fn recover_takes_in_a_create_whose_pids_were_lost() {
    if !root_with_runc() {
        return;
    }
    use super::{ContainerPaths, ContainerRecord, ContainerState};
    let tmp = tempfile::tempdir().unwrap();
    let d = daemon(tmp.path());
    // A stand-in monitor: a process whose comm is berth-monitor, as liveness checks it.
    let fake = tmp.path().join(crate::records::liveness::MONITOR_COMM);
    std::fs::copy("/bin/sleep", &fake).unwrap();
    let mut monitor = Reaped(std::process::Command::new(&fake).arg("300").spawn().unwrap());
    let monitor_pid = monitor.0.id() as i32;
    let mut gone = std::process::Command::new("/bin/true").spawn().unwrap();
    gone.wait().unwrap();
    let gone_pid = gone.id() as i32;

    let exit = |code: i32| format!(r#"{{"exit_code":{code},"exited_at":1,"oom_killed":false}}"#);
    let mut ids = Vec::new();
    for (n, (pid, exit_code)) in [(monitor_pid, Some(0)), (monitor_pid, None), (gone_pid, None)].into_iter().enumerate() {
        let id = format!("{n}ost{}", "0".repeat(60));
        let paths = ContainerPaths::new(&d, &id);
        std::fs::create_dir_all(&paths.bundle).unwrap();
        std::fs::write(paths.bundle.join(crate::monitor::PID_FILE), pid.to_string()).unwrap();
        if let Some(code) = exit_code {
            std::fs::write(&paths.exit_file, exit(code)).unwrap();
        }
        d.records.put_container(&ContainerRecord::for_test(&id, "s")).unwrap();
        ids.push(id);
    }
    super::recover(&d).await.unwrap();
    let stored = |id: &str| d.records.stored_container(id).unwrap();

    // Ended while berth was down, its monitor not yet gone: the exit file's code.
    let ended = stored(&ids[0]);
    assert_eq!((ended.state, ended.exit_code, ended.monitor_pid), (ContainerState::Exited, 0, monitor_pid));
    // Its monitor still runs: taken in and watched; its end is read when the monitor writes it.
    let live = stored(&ids[1]);
    assert_eq!((live.state, live.monitor_pid), (ContainerState::Created, monitor_pid));
    // Nothing of the create is left: interrupted.
    let interrupted = stored(&ids[2]);
    assert_eq!((interrupted.state, interrupted.exit_code, interrupted.monitor_pid), (ContainerState::Exited, 255, 0));
    assert!(interrupted.message.contains("never ran"), "{}", interrupted.message);

    std::fs::write(ContainerPaths::new(&d, &ids[1]).exit_file, exit(3)).unwrap();
    monitor.0.kill().unwrap();
    monitor.0.wait().unwrap();
    let folded = d.records.fold_container(live).unwrap();
    assert_eq!((folded.state, folded.exit_code), (ContainerState::Exited, 3));
    remove_test_cgroups();
}
