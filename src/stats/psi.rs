//! Pressure stall information (PSI) of a cgroup v2 cgroup, for the CRI `psi` fields of
//! CpuUsage, MemoryUsage and IoUsage (cri-api v0.34+, kubelet's KubeletPSI feature).
//!
//! `<cgroup>/{cpu,memory,io}.pressure` hold (kernel Documentation/accounting/psi.rst):
//!
//! ```text
//! some avg10=0.00 avg60=0.00 avg300=0.00 total=0
//! full avg10=0.00 avg60=0.00 avg300=0.00 total=0
//! ```
//!
//! `avg*` are percentages, `total` is microseconds (the CRI's `Total` is nanoseconds). The files
//! exist only on cgroup v2 with a kernel built with PSI and not booted with `psi=0` (Debian's
//! kernel keeps it off unless booted with `psi=1`); elsewhere every figure is `None`.

use super::cgroup::under;
use super::parse::Layout;
use crate::cri::v1 as cri;

/// One `some` or `full` line.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PsiLine {
    /// Share of wall time stalled over the last 10 s, 60 s, 300 s, percent.
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    /// Total stall time, microseconds.
    pub total_us: u64,
}

/// A `*.pressure` file: `some` always, `full` when the kernel reports it (absent for cpu before
/// Linux 5.13 at the cgroup level).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Psi {
    pub some: PsiLine,
    pub full: Option<PsiLine>,
}

/// Parses a `*.pressure` file; `None` without a valid `some` line.
pub fn parse(text: &str) -> Option<Psi> {
    let mut some = None;
    let mut full = None;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let kind = words.next();
        let mut l = PsiLine::default();
        for w in words {
            let Some((k, v)) = w.split_once('=') else { continue };
            match k {
                "avg10" => l.avg10 = v.parse().ok()?,
                "avg60" => l.avg60 = v.parse().ok()?,
                "avg300" => l.avg300 = v.parse().ok()?,
                "total" => l.total_us = v.parse().ok()?,
                _ => {}
            }
        }
        match kind {
            Some("some") => some = Some(l),
            Some("full") => full = Some(l),
            _ => {}
        }
    }
    Some(Psi { some: some?, full })
}

/// Reads `<cgroup>/<resource>.pressure` (`resource`: `cpu`, `memory` or `io`); `None` on v1 or
/// when the file is absent or unreadable.
pub fn read(layout: &Layout, cgroup: &str, resource: &str) -> Option<Psi> {
    match layout {
        Layout::V2 { root } => parse(&std::fs::read_to_string(under(root, cgroup).join(format!("{resource}.pressure"))).ok()?),
        Layout::V1 { .. } => None,
    }
}

fn data(l: &PsiLine) -> cri::PsiData {
    cri::PsiData { total: l.total_us.saturating_mul(1000), avg10: l.avg10, avg60: l.avg60, avg300: l.avg300 }
}

/// The CRI `PsiStats`; a missing `full` line is all zeros.
pub fn to_cri(p: &Psi) -> cri::PsiStats {
    cri::PsiStats { some: Some(data(&p.some)), full: Some(data(&p.full.unwrap_or_default())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_some_and_full() {
        let p = parse("some avg10=1.50 avg60=0.25 avg300=0.00 total=12345\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n").unwrap();
        assert_eq!(p.some, PsiLine { avg10: 1.5, avg60: 0.25, avg300: 0.0, total_us: 12345 });
        assert_eq!(p.full.map(|f| f.total_us), Some(7));
        let c = to_cri(&p);
        assert_eq!(c.some.unwrap().total, 12_345_000);
        assert!(parse("some avg10=1.50 avg60=0.25 avg300=0.00 total=12345\n").unwrap().full.is_none());
        assert_eq!(parse(""), None);
        assert_eq!(parse("some avg10=x total=1\n"), None);
    }
}
