//! Real test of the monitor's log reopen (CRI ReopenContainerLog) with berth-monitor + runc
//! (needs root, runc and /bin/busybox; skipped otherwise). The bundle is built as in
//! tests/monitor.rs; everything is removed at the end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth::monitor;

mod common;
use common::{assert_gone, can_run, case_with, wait_exit_within, MONITOR};

/// Reopens the log four times while the container writes numbered lines (some longer than one
/// read, so split across reads): every line appears exactly once across the rotated files, each
/// whole (`F` record with the exact text), and lines after a reopen go to the new file.
#[tokio::test]
async fn reopen_while_writing_loses_and_splits_nothing() {
    if !can_run() {
        return;
    }
    // Writes until the test creates /tmp/stop in its rootfs. Every 1000th line is 40 KiB long,
    // more than one 32 KiB read of the monitor, so it is logged as P records then F.
    let script = "i=0; big=$(head -c 40000 /dev/zero | tr '\\0' b); while [ ! -e /tmp/stop ]; do \
         if [ $((i % 1000)) -eq 0 ]; then echo \"line $i $big\"; else echo \"line $i payload\"; fi; i=$((i+1)); done";
    let c = case_with("reopen", &["sh", "-c", script]);
    for a in ["head", "tr"] {
        std::os::unix::fs::symlink("busybox", c.dir.path().join("bundle/rootfs/bin").join(a)).unwrap();
    }
    let spec = c.spec(false);
    let log = spec.log_path.clone().unwrap();
    let spawned = monitor::spawn(Path::new(MONITOR), &spec).await.unwrap();
    c.runtime.start(&c.id).await.unwrap();

    let mut rotated: Vec<PathBuf> = Vec::new();
    for n in 1..=4 {
        // Wait until the current file has something, then rotate as kubelet does: rename, reopen.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) < 2000 {
            assert!(monitor::read_exit_file(&spec.exit_file).unwrap().is_none(), "the container ended early");
            assert!(Instant::now() < deadline, "log did not grow");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let old = log.with_extension(format!("log.{n}"));
        std::fs::rename(&log, &old).unwrap();
        rotated.push(old);
        if let Err(e) = monitor::attach::reopen_log(&spec.attach_socket, Duration::from_secs(5)).await {
            let diag = std::fs::read_to_string(spec.bundle.join("monitor.log")).unwrap_or_default();
            let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(spawned.monitor_pid), None).is_ok();
            panic!("reopen {n}: {e}; monitor alive {alive}; exit {:?}; diag {diag}", monitor::read_exit_file(&spec.exit_file));
        }
        assert!(log.exists(), "reopen answered before {log:?} existed");
    }
    // Lines after the last reopen go to the new file too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) < 2000 {
        assert!(Instant::now() < deadline, "log did not grow after the last reopen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    std::fs::write(c.dir.path().join("bundle/rootfs/tmp/stop"), b"").unwrap();

    let info = wait_exit_within(&spec.exit_file, Duration::from_secs(60)).await;
    assert_eq!(info.exit_code, 0);
    assert_gone(spawned.monitor_pid).await;

    let big = "b".repeat(40000);
    let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
    let files: Vec<PathBuf> = rotated.iter().cloned().chain(std::iter::once(log.clone())).collect();
    let mut last_in_file = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let mut partial = String::new();
        let mut max = None;
        for rec in text.lines() {
            let mut it = rec.splitn(4, ' ');
            let (_ts, stream, tag, body) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap(), it.next().unwrap_or(""));
            assert_eq!(stream, "stdout", "record {rec:.80}");
            partial.push_str(body);
            if tag == "P" {
                continue;
            }
            assert_eq!(tag, "F", "record {rec:.80}");
            let line = std::mem::take(&mut partial);
            let mut words = line.splitn(3, ' ');
            assert_eq!(words.next(), Some("line"), "split or mangled line in {f:?}: {line:.80}");
            let i: usize = words.next().unwrap().parse().unwrap_or_else(|_| panic!("bad line {line:.80}"));
            let want = if i.is_multiple_of(1000) { big.as_str() } else { "payload" };
            assert_eq!(words.next(), Some(want), "line {i} is not whole in {f:?}");
            *seen.entry(i).or_default() += 1;
            assert!(max.is_none_or(|m| i > m), "lines out of order in {f:?}");
            max = Some(i);
        }
        assert!(partial.is_empty(), "{f:?} ends inside a line (P without F)");
        last_in_file.push(max);
    }
    let lines = seen.keys().next_back().map_or(0, |m| m + 1);
    assert!(last_in_file.iter().all(Option::is_some), "a file holds no whole line: {last_in_file:?}");
    assert_eq!(seen.len(), lines, "lines missing: first gap at {:?}", (0..lines).find(|i| !seen.contains_key(i)));
    assert!(seen.values().all(|&n| n == 1), "some lines appear twice");
    // Files hold consecutive ranges: lines after each reopen went to the new file.
    let maxima: Vec<usize> = last_in_file.iter().flatten().copied().collect();
    assert!(maxima.windows(2).all(|w| w[0] < w[1]), "rotated files overlap: {maxima:?}");
}
