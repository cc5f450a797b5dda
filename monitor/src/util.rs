//! Small helpers the monitor and the daemon share: the clock in CRI's units, atomic file writes,
//! message cuts. No async runtime, like the rest of this crate.

use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch (the unit of CRI `created_at`, `started_at`, `finished_at`).
pub fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Formats nanoseconds since the epoch as RFC 3339 with nine fractional digits in UTC,
/// e.g. `2016-10-06T00:17:09.669794202Z` (Go's `time.RFC3339Nano` with zero padding, as the CRI
/// log format uses it).
pub fn rfc3339_nano(nanos: i64) -> String {
    let secs = nanos.div_euclid(1_000_000_000);
    let frac = nanos.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:09}Z", sod / 3600, (sod % 3600) / 60, sod % 60)
}

/// Howard Hinnant's days-to-civil algorithm: days since 1970-01-01 to (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Writes `data` to `path` atomically: a temporary file in the same directory, fsync, rename.
/// A reader sees either the old content or the whole new content, never a torn write.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// `s` cut to at most `max` bytes (at a char boundary) with `... (N bytes cut)` appended when
/// cut, for messages that echo what a client or a runtime sent.
pub fn truncate_message(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let cut = s.len() - end;
    s.truncate(end);
    s.push_str(&format!("... ({cut} bytes cut)"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_nano_formats_known_instants() {
        assert_eq!(rfc3339_nano(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339_nano(1_475_713_029_669_794_202), "2016-10-06T00:17:09.669794202Z");
        assert_eq!(rfc3339_nano(951_782_400_000_000_001), "2000-02-29T00:00:00.000000001Z");
    }

    #[test]
    fn atomic_write_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
