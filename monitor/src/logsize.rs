//! The per-container CRI log size limit (`log_size_max`, conmon's `--log-size-max`).
//!
//! conmon (ctr_logging.c, `write_k8s_log`): before writing a record, when `bytes_written +
//! record length > log_size_max`, it flushes what it holds, reopens the log (`reopen_k8s_file`:
//! opens `<log>.tmp` with `O_TRUNC|O_CREAT`, renames it over `<log>`) and counts from zero again.
//! The old content is dropped, the container keeps running, logging goes on in a new (empty)
//! file with a new inode, so a reader following the old file sees a rotation.
//!
//! berth does the same at record boundaries: [`plan`] splits a batch of encoded records into runs,
//! each to be written after an optional reset; [`LogLimit::write`] applies it to the open file.
//! Differences from conmon: berth starts counting from the file's size when it opens it (conmon
//! from zero), so a monitor that reopens a log (ReopenContainerLog) or an appended-to file
//! respects the limit too. A single record longer than the limit is still written whole after the
//! reset (conmon does the same), so the file can exceed the limit by that one record.

use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::Path;

/// One run of bytes of a batch: `reset_first` says to replace the log with an empty file before
/// writing `range`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub reset_first: bool,
    pub range: Range<usize>,
}

/// Splits `out` (whole CRI records, each ending in `\n`, none holding another `\n`) into runs so
/// that no run takes the file, which holds `written` bytes, past `max` bytes; between runs the file
/// is reset to empty. `max == 0`: no limit (one run). Returns the runs and the file size after
/// them. Pure.
pub fn plan(mut written: u64, max: u64, out: &[u8]) -> (Vec<Run>, u64) {
    if out.is_empty() {
        return (Vec::new(), written);
    }
    if max == 0 || written + out.len() as u64 <= max {
        return (vec![Run { reset_first: false, range: 0..out.len() }], written + out.len() as u64);
    }
    let mut runs: Vec<Run> = Vec::new();
    let mut start = 0;
    while start < out.len() {
        let end = out[start..].iter().position(|&b| b == b'\n').map_or(out.len(), |i| start + i + 1);
        let len = (end - start) as u64;
        // conmon resets even when the file is empty; an empty file reset again is the same file
        // content, so berth skips that no-op.
        if written > 0 && written + len > max {
            runs.push(Run { reset_first: true, range: start..end });
            written = len;
        } else {
            match runs.last_mut() {
                Some(r) if r.range.end == start => r.range.end = end,
                _ => runs.push(Run { reset_first: false, range: start..end }),
            }
            written += len;
        }
        start = end;
    }
    (runs, written)
}

/// The size state of one open CRI log file.
#[derive(Debug, Clone, Copy)]
pub struct LogLimit {
    /// `log_size_max` in bytes; 0 = unlimited.
    pub max: u64,
    /// Bytes in the current file (its size when opened, plus what the monitor wrote since).
    pub written: u64,
}

impl LogLimit {
    /// The limit `max` for the file `log` as it is now (its current length counts).
    pub fn new(max: u64, log: Option<&File>) -> LogLimit {
        LogLimit { max, written: log.and_then(|f| f.metadata().ok()).map_or(0, |m| m.len()) }
    }

    /// Writes the records in `out` to `log` (the file at `path`), replacing the file with an empty
    /// one where [`plan`] says. A failed write loses those bytes (as conmon); a failed reset keeps
    /// writing to the old file and is reported through `diag`.
    pub fn write(&mut self, log: &mut File, path: Option<&Path>, out: &[u8], diag: &mut dyn FnMut(String)) {
        let (runs, after) = plan(self.written, self.max, out);
        for run in runs {
            if run.reset_first {
                if let Some(path) = path {
                    match reset_log(path) {
                        Ok(f) => *log = f,
                        Err(e) => diag(e),
                    }
                }
            }
            let _ = log.write_all(&out[run.range]);
        }
        self.written = after;
    }
}

/// Replaces the log file at `path` with an empty one: creates `<path>.tmp` (mode 0640, truncated),
/// renames it over `path` and returns it open for writing from offset 0 (conmon's `reopen_k8s_file`).
pub fn reset_log(path: &Path) -> Result<File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| format!("log size limit: create {tmp:?}: {e}"))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("log size limit: rename {tmp:?} over {path:?}: {e}"))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: usize) -> Vec<u8> {
        let mut v = vec![b'x'; n - 1];
        v.push(b'\n');
        v
    }

    #[test]
    fn unlimited_or_fitting_is_one_run() {
        let out = [rec(10), rec(20)].concat();
        assert_eq!(plan(0, 0, &out), (vec![Run { reset_first: false, range: 0..30 }], 30));
        assert_eq!(plan(70, 100, &out), (vec![Run { reset_first: false, range: 0..30 }], 100));
        assert_eq!(plan(5, 0, &[]), (vec![], 5));
    }

    #[test]
    fn resets_before_the_record_that_would_pass_the_limit() {
        let out = [rec(10), rec(20), rec(30)].concat();
        // 80 + 10 fits, + 20 would be 110 > 100: reset, then 20 + 30.
        let (runs, after) = plan(80, 100, &out);
        assert_eq!(runs, vec![Run { reset_first: false, range: 0..10 }, Run { reset_first: true, range: 10..60 }]);
        assert_eq!(after, 50);
        // Several resets in one batch.
        let out = [rec(40), rec(40), rec(40)].concat();
        let (runs, after) = plan(0, 50, &out);
        assert_eq!(
            runs,
            vec![
                Run { reset_first: false, range: 0..40 },
                Run { reset_first: true, range: 40..80 },
                Run { reset_first: true, range: 80..120 },
            ]
        );
        assert_eq!(after, 40);
    }

    #[test]
    fn a_record_longer_than_the_limit_is_written_whole() {
        let out = [rec(10), rec(300), rec(10)].concat();
        let (runs, after) = plan(0, 100, &out);
        assert_eq!(
            runs,
            vec![
                Run { reset_first: false, range: 0..10 },
                Run { reset_first: true, range: 10..310 },
                Run { reset_first: true, range: 310..320 },
            ]
        );
        assert_eq!(after, 10);
    }

    #[test]
    fn write_replaces_the_file_with_a_new_inode() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("0.log");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        f.write_all(&rec(90)).unwrap();
        let ino = std::fs::metadata(&path).unwrap().ino();
        let mut limit = LogLimit::new(100, Some(&f));
        assert_eq!(limit.written, 90);
        let mut errors = Vec::new();
        limit.write(&mut f, Some(&path), &[rec(5), rec(20), rec(30)].concat(), &mut |e| errors.push(e));
        assert!(errors.is_empty(), "{errors:?}");
        assert_ne!(std::fs::metadata(&path).unwrap().ino(), ino, "a new file, as conmon");
        assert_eq!(std::fs::read(&path).unwrap(), [rec(20), rec(30)].concat());
        assert_eq!(limit.written, 50);
        assert!(!d.path().join("0.log.tmp").exists());
    }
}
