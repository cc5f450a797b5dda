//! The side-by-side table printed at the end: one column per target, medians first, then
//! min / median / max of every latency row, notes, and the machine facts.

use crate::facts::loadavg;
use crate::import::BigImage;
use crate::{kind_name, scale, stream, Opts, Results};
use berth_conformance::daemon::TargetKind;
use std::time::Duration;

/// Milliseconds with one decimal, "n/a" for None.
fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0)).unwrap_or_else(|| "n/a".into())
}

/// KiB as an integer, "n/a" for None.
fn kib(k: Option<u64>) -> String {
    k.map(|k| format!("{k} KiB")).unwrap_or_else(|| "n/a".into())
}

/// KiB shown as MiB with one decimal, "n/a" for None.
pub fn mib(k: Option<u64>) -> String {
    k.map(|k| format!("{:.1} MiB", k as f64 / 1024.0)).unwrap_or_else(|| "n/a".into())
}

/// `a / b` with two decimals, "n/a" when either is missing.
fn ratio(a: Option<Duration>, b: Option<Duration>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if !b.is_zero() => format!("{:.2}", a.as_secs_f64() / b.as_secs_f64()),
        _ => "n/a".into(),
    }
}

/// `bytes` over `d` in MB/s (10^6), "n/a" when missing.
fn rate(bytes: u64, d: Option<Duration>) -> String {
    match d {
        Some(d) if bytes > 0 && !d.is_zero() => format!("{:.0} MB/s", bytes as f64 / 1e6 / d.as_secs_f64()),
        _ => "n/a".into(),
    }
}

/// Prints the table, min/median/max lines, notes and machine facts to stdout.
pub fn print_report(o: &Opts, facts: &[(String, String)], cols: &[(TargetKind, Results)], big: Option<&BigImage>) {
    let unpacked = big.map(|b| b.unpacked).unwrap_or(0);
    let row = |name: &str, f: &dyn Fn(&Results) -> String| {
        let mut line = format!("{name:<34}");
        for (_, r) in cols {
            line.push_str(&format!(" {:>14}", f(r)));
        }
        println!("{line}");
    };
    // A timing row; with two targets, the first's median over the second's (berth/containerd).
    let timed = |name: &str, f: &dyn Fn(&Results) -> Option<Duration>| {
        let mut line = format!("{name:<34}");
        for (_, r) in cols {
            line.push_str(&format!(" {:>14}", ms(f(r))));
        }
        if let [(_, a), (_, b)] = cols {
            line.push_str(&format!(" {:>8}", ratio(f(a), f(b))));
        }
        println!("{line}");
    };
    println!();
    let mut head = format!("{:<34}", "metric");
    for (k, _) in cols {
        head.push_str(&format!(" {:>14}", kind_name(*k)));
    }
    if cols.len() == 2 {
        head.push_str(&format!(" {:>8}", "ratio"));
    }
    println!("{head}");
    timed(&format!("Version RPC (median of {})", o.runs), &|r| r.version.median());
    timed(&format!("pull+unpack busybox (median of {})", o.pulls), &|r| r.pull.median());
    timed(&format!("kind load: import (median of {})", o.imports), &|r| r.import.import.median());
    timed("  pull of the same image (median)", &|r| r.import.pull.median());
    row("  import / pull", &|r| ratio(r.import.import.median(), r.import.pull.median()));
    row("  import, MB/s unpacked", &|r| rate(unpacked, r.import.import.median()));
    row("  pull, MB/s unpacked", &|r| rate(unpacked, r.import.pull.median()));
    timed("  pull, zstd layers (median)", &|r| r.import.pull_zstd.median());
    row("  pull zstd, MB/s unpacked", &|r| rate(unpacked, r.import.pull_zstd.median()));
    timed(&format!("RunPodSandbox (median of {})", o.runs), &|r| r.run_pod.median());
    timed(&format!("RunPodSandbox, shared PID ({})", o.runs), &|r| r.run_pod_shared.median());
    timed(&format!("Create+Start (median of {})", o.runs), &|r| r.create_start.median());
    timed(&format!("Stop+Remove (median of {})", o.runs), &|r| r.stop_remove.median());
    timed(&format!("pod + container from scratch ({})", o.runs), &|r| r.from_scratch.median());
    row(&format!("RunPodSandbox, userns (med of {})", o.runs), &|r| ms(r.userns.run_pod.median()));
    row(&format!("Create+Start, userns (med of {})", o.runs), &|r| ms(r.userns.create_start.median()));
    timed(&format!("exec echo hi, SPDY (median of {})", o.execs), &|r| r.streaming.exec.median());
    row("port-forward 64 MiB down (median)", &|r| stream::median_rate(&r.streaming.pf_down));
    row("port-forward 64 MiB up (median)", &|r| stream::median_rate(&r.streaming.pf_up));
    row("daemon RSS, idle", &|r| mib(r.daemon_rss_idle_kib));
    row(&format!("daemon RSS, {} pods", o.pods), &|r| mib(r.daemon_rss_kib));
    row(&format!("daemon PSS, {} pods", o.pods), &|r| mib(r.daemon_pss_kib));
    row("monitor/shim PSS (one)", &|r| kib(r.one_monitor_pss_kib));
    row("monitor/shim RSS (one)", &|r| kib(r.one_monitor_rss_kib));
    row("monitors/shims PSS (all)", &|r| mib(r.all_monitors_pss_kib));
    row("monitors/shims (count)", &|r| if r.monitor_count > 0 { r.monitor_count.to_string() } else { "n/a".into() });
    let n = o.scale.pods * o.scale.per_pod;
    timed(&format!("ListContainers, {n} running (med)"), &|r| r.scale.list_containers.median());
    timed(&format!("ListContainerStats, {n} run. (med)"), &|r| r.scale.list_stats.median());
    row(&format!("daemon CPU idle {} s, {n} ctrs", o.scale.idle_secs), &|r| scale::percent(r.scale.daemon_idle_cpu));
    row(&format!("monitors/shims CPU idle, {n} ctrs"), &|r| scale::percent(r.scale.monitors_idle_cpu));
    println!();
    println!("min / median / max:");
    for (k, r) in cols {
        for (name, s) in [
            ("ListContainers", &r.scale.list_containers),
            ("ListCtrStats", &r.scale.list_stats),
            ("Version", &r.version),
            ("pull", &r.pull),
            ("import big", &r.import.import),
            ("pull big", &r.import.pull),
            ("pull big zstd", &r.import.pull_zstd),
            ("RunPodSandbox", &r.run_pod),
            ("RunPod shared", &r.run_pod_shared),
            ("Create+Start", &r.create_start),
            ("Stop+Remove", &r.stop_remove),
            ("from scratch", &r.from_scratch),
            ("RunPod userns", &r.userns.run_pod),
            ("Create userns", &r.userns.create_start),
            ("exec echo hi", &r.streaming.exec),
        ] {
            println!("  {:<11} {:<14} {} / {} / {}  (n={})", kind_name(*k), name, ms(s.min()), ms(s.median()), ms(s.max()), s.0.len());
        }
        println!(
            "  {:<11} {:<14} down {}, up {}  (n={})",
            kind_name(*k),
            "port-forward",
            stream::range_rate(&r.streaming.pf_down),
            stream::range_rate(&r.streaming.pf_up),
            r.streaming.pf_down.len()
        );
        if let Some(sz) = r.image_size {
            println!("  {:<11} busybox ImageStatus.size = {} bytes", kind_name(*k), sz);
        }
        if !r.import.import.0.is_empty() {
            let rounds: Vec<String> = r
                .import
                .import
                .0
                .iter()
                .zip(&r.import.pull.0)
                .zip(&r.import.pull_zstd.0)
                .map(|((i, p), z)| format!("{:.2}/{:.2}/{:.2}", i.as_secs_f64(), p.as_secs_f64(), z.as_secs_f64()))
                .collect();
            println!("  {:<11} import/pull/zstd pull s by round: {}", kind_name(*k), rounds.join(", "));
        }
    }
    println!();
    println!("notes:");
    println!("  - one monitor/shim = the parent of one `sleep 3600` container; berth runs one berth-monitor per");
    println!("    container (plus one per pod infra, only for pods sharing a PID namespace), containerd one");
    println!("    containerd-shim-runc-v2 per pod.");
    println!("  - idle CPU: utime+stime from /proc/PID/stat over the idle window, % of one core; the scale rows'");
    println!("    monitors/shims: berth-monitor per container, containerd-shim-runc-v2 per pod.");
    println!("  - PSS from /proc/PID/smaps_rollup (shared pages divided among sharers), RSS from /proc/PID/status.");
    println!("  - each pull follows RemoveImage; what RemoveImage left on disk (a runtime that keeps content");
    println!("    pulls faster) is counted below. Version RPC = the client+socket floor in every timing.");
    if let Some(b) = big {
        println!(
            "  - kind load rows: one image, {} files in 5 layers, {:.0} MB unpacked, {:.0} MB gzip'd in the registry",
            b.files,
            b.unpacked as f64 / 1e6,
            b.compressed as f64 / 1e6
        );
        println!("    ({:.0} MB as zstd layers, pushed as a second name: same diff IDs, same image ID);", b.zstd_compressed as f64 / 1e6);
        println!("    imported from a `docker save`-style archive (uncompressed layers), each round after RemoveImage;");
        println!("    sync(2) untimed before each import and pull.");
    }
    for (k, r) in cols {
        if !r.import.disk.is_empty() {
            println!("  - {}: kind load rows: {}", kind_name(*k), r.import.disk);
        }
        for n in &r.notes {
            println!("  - {}: {n}", kind_name(*k));
        }
        if let Some(e) = &r.error {
            println!("  - {}: ERROR: {e}", kind_name(*k));
        }
    }
    println!();
    println!("machine:");
    for (k, v) in facts {
        println!("  {k:<17} {v}");
    }
    println!("  {:<17} {}", "loadavg at end", loadavg());
}
