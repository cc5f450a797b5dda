//! Real test of the monitor's log size limit (config `log_size_max`) with berth-monitor + runc
//! (needs root, runc and /bin/busybox; skipped otherwise). The bundle is built as in
//! tests/monitor.rs; everything is removed at the end.

use std::path::Path;
use std::time::Duration;

use berth::monitor::{self, MonitorSpec};

mod common;
use common::{assert_gone, can_run, case_with, wait_exit_within, MONITOR};

/// A container writes 3000 numbered lines (about 120 KB of records) with `log_size_max` 8192:
/// the log file ends no larger than the limit, holds only whole records, and holds the last lines
/// in order, ending with the last one; the first lines were dropped when the file started over.
#[tokio::test]
async fn log_starts_over_at_the_size_limit() {
    if !can_run() {
        return;
    }
    let c = case_with("logsize", &["sh", "-c", "i=0; while [ $i -lt 3000 ]; do echo \"line $i\"; i=$((i+1)); done"]);
    let spec = MonitorSpec { log_size_max: 8192, ..c.spec(false) };
    let log = spec.log_path.clone().unwrap();
    let spawned = monitor::spawn(Path::new(MONITOR), &spec).await.unwrap();
    c.runtime.start(&c.id).await.unwrap();
    let info = wait_exit_within(&spec.exit_file, Duration::from_secs(60)).await;
    assert_eq!(info.exit_code, 0);
    assert_gone(spawned.monitor_pid).await;

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.len() <= 8192, "log is {} bytes, over the 8192 limit", text.len());
    assert!(text.ends_with('\n'), "log ends inside a record");
    let numbers: Vec<usize> = text
        .lines()
        .map(|rec| {
            let parts: Vec<&str> = rec.splitn(4, ' ').collect();
            assert_eq!(parts.len(), 4, "not a CRI record: {rec:?}");
            assert_eq!((parts[1], parts[2]), ("stdout", "F"), "record {rec:?}");
            let n = parts[3].strip_prefix("line ").unwrap_or_else(|| panic!("record {rec:?}"));
            n.parse().unwrap_or_else(|_| panic!("record {rec:?}"))
        })
        .collect();
    assert_eq!(numbers.last(), Some(&2999), "the last line is in the current file");
    assert!(numbers[0] > 0, "the first lines were dropped");
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "lines are consecutive");
    assert!(!log.with_extension("log.tmp").exists(), "no leftover temporary file");
}
