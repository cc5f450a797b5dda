//! The record layer's folds against a real store on temp roots: a fold changes the record as
//! stored, never a copy read earlier, so what a Stop wrote meanwhile stays.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::config::Config;

fn records(tmp: &Path) -> Records {
    let config = Config { root: tmp.join("root"), run_root: tmp.join("run"), ..Default::default() };
    let store = Arc::new(Store::open(&config.root).unwrap());
    Records::open(store, &config).unwrap()
}

fn ready_pod(id: &str) -> SandboxRecord {
    SandboxRecord {
        id: id.into(),
        config: Default::default(),
        runtime_handler: String::new(),
        state: SandboxState::Ready,
        created_at: 1,
        netns_path: None,
        network_attached: true,
        ips: vec!["10.88.77.2".into()],
        // Neither runs: the infra ended without an exit file.
        infra_pid: i32::MAX,
        monitor_pid: i32::MAX,
        cgroup_parent: String::new(),
        hostname: "h".into(),
        shm_mounted: true,
        stopped: false,
        pinned: None,
    }
}

#[test]
fn a_pod_without_infra_is_never_folded_nor_watched() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = records(tmp.path());
    let mut pod = ready_pod("p2");
    pod.infra_pid = 0;
    pod.monitor_pid = 0;
    pod.pinned = Some(crate::records::PinnedNamespaces { ipc: Some("/run/x/ns/ipc-p2".into()), ..Default::default() });
    rec.put_sandbox(&pod).unwrap();
    // No infra process, no monitor, no exit file: for an infra pod that reads as "lost".
    assert_eq!(rec.fold_sandbox(pod.clone()).unwrap().state, SandboxState::Ready);
    assert_eq!(rec.stored_sandbox("p2").unwrap().state, SandboxState::Ready);
    rec.watch_sandbox(&pod);
    assert_eq!(rec.watched(), 0, "nothing to wait for");
}

#[test]
fn a_record_from_before_pinned_pods_has_an_infra() {
    let mut v = serde_json::to_value(ready_pod("p3")).unwrap();
    v.as_object_mut().unwrap().remove("pinned");
    let r: SandboxRecord = serde_json::from_value(v).unwrap();
    assert!(r.has_infra());
}

#[test]
fn a_sandbox_fold_keeps_what_a_stop_wrote_meanwhile() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = records(tmp.path());
    let listed = ready_pod("p1");
    rec.put_sandbox(&listed).unwrap();
    // StopPodSandbox, holding the pod's lock, tears the network down and says so.
    let mut stopping = listed.clone();
    stopping.network_attached = false;
    stopping.shm_mounted = false;
    rec.put_sandbox(&stopping).unwrap();
    // A ListPodSandbox that read the record before folds the infra's end in now.
    let folded = rec.fold_sandbox(listed.clone()).unwrap();
    let stored = rec.stored_sandbox("p1").unwrap();
    for r in [&folded, &stored] {
        assert_eq!(r.state, SandboxState::NotReady);
        assert!(!r.network_attached && !r.shm_mounted, "the fold brought back what Stop had undone: {r:?}");
    }
    // Removed meanwhile: nothing comes back.
    rec.delete_sandbox("p1").unwrap();
    assert_eq!(rec.fold_sandbox(listed).unwrap().state, SandboxState::NotReady);
    assert!(rec.stored_sandbox("p1").is_none());
}

#[test]
fn a_container_fold_never_overwrites_the_exit_a_stop_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = records(tmp.path());
    let mut listed = ContainerRecord::for_test("c1", "p1");
    listed.state = ContainerState::Running;
    listed.started_at = 5;
    listed.monitor_pid = i32::MAX;
    listed.pid = i32::MAX;
    rec.put_container(&listed).unwrap();
    // StopContainer saw the exit (137) and recorded it; the bundle and its exit file are gone.
    let stopped = apply_exit(listed.clone(), &crate::monitor::ExitInfo { exit_code: 137, exited_at: 9, oom_killed: false });
    rec.put_container(&stopped).unwrap();
    // A reader that listed the Running record finds no exit file and no process: "lost".
    let folded = rec.fold_container(listed.clone()).unwrap();
    let stored = rec.stored_container("c1").unwrap();
    for r in [&folded, &stored] {
        assert_eq!((r.state, r.exit_code, r.reason.as_str()), (ContainerState::Exited, 137, "Error"), "{r:?}");
    }
    // Still Running when stored: the fold makes it Exited 255, reason Unknown.
    rec.put_container(&listed).unwrap();
    let lost = rec.fold_container(listed).unwrap();
    assert_eq!((lost.exit_code, lost.reason.as_str()), (255, "Unknown"));
    assert_eq!(rec.stored_container("c1").unwrap().exit_code, 255);
}
