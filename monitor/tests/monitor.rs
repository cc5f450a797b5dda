//! Real tests of berth-monitor + runc + berth-pause (need root and runc; skipped otherwise).
//!
//! Each test builds a bundle in a temp dir with a rootfs made from the host's dynamic
//! /bin/busybox and the libraries `ldd` names, a `runc spec` config edited for the case, and a
//! cgroupsPath `/berth-test/<id>`. Everything is deleted at the end: runc delete --force, the temp
//! dir, the cgroup directories; the monitor is checked to be gone.

use std::path::Path;
use std::time::{Duration, Instant};

use berth::monitor::{self, MonitorError, MonitorSpec};

mod common;
use common::*;

/// `(stream, tag, text)` of every CRI log record, checking the timestamp's shape.
fn records(log: &str) -> Vec<(String, String, String)> {
    log.lines()
        .map(|l| {
            let mut it = l.splitn(4, ' ');
            let ts = it.next().unwrap();
            assert!(ts.len() == 30 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "bad timestamp in {l:?}");
            (it.next().unwrap().into(), it.next().unwrap().into(), it.next().unwrap_or("").into())
        })
        .collect()
}

fn rec(s: &str, t: &str, x: &str) -> (String, String, String) {
    (s.into(), t.into(), x.into())
}

#[tokio::test]
async fn pipes_exit_code_and_cri_log() {
    if !can_run() {
        return;
    }
    let c = case("pipes", &["sh", "-c", "echo out; echo err >&2; printf tail; exit 3"], false, false);
    let spec = c.spec(false);
    let spawned = monitor::spawn(Path::new(MONITOR), &spec).await.unwrap();
    assert!(spawned.container_pid > 0);
    let state = c.runtime.state(&c.id).await.unwrap().unwrap();
    assert_eq!(state.status, "created");
    assert_eq!(state.pid, spawned.container_pid);
    assert_eq!(monitor::read_exit_file(&spec.exit_file).unwrap(), None);

    c.runtime.start(&c.id).await.unwrap();
    let info = wait_exit(&spec.exit_file).await;
    assert_eq!(info.exit_code, 3);
    assert!(!info.oom_killed);
    assert!(info.exited_at > 0);
    assert_gone(spawned.monitor_pid).await;

    let mut recs = records(&c.log());
    recs.sort();
    assert_eq!(
        recs,
        vec![rec("stderr", "F", "err"), rec("stdout", "F", "out"), rec("stdout", "F", "tail")],
        "the tail cut by the exit is a whole line"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(c.dir.path().join("logs/0.log")).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o640);

    assert_eq!(c.runtime.state(&c.id).await.unwrap().unwrap().status, "stopped");
    c.runtime.delete(&c.id, false).await.unwrap();
    assert_eq!(c.runtime.state(&c.id).await.unwrap(), None);
}

#[tokio::test]
async fn tty_output_is_stdout() {
    if !can_run() {
        return;
    }
    let c = case("tty", &["sh", "-c", "echo hello tty; echo to-stderr >&2; exit 0"], true, false);
    let spec = c.spec(true);
    let spawned = monitor::spawn(Path::new(MONITOR), &spec).await.unwrap();
    assert!(!spec.bundle.join("console.sock").exists(), "console socket left behind");
    c.runtime.start(&c.id).await.unwrap();
    let info = wait_exit(&spec.exit_file).await;
    assert_eq!(info.exit_code, 0);
    assert_gone(spawned.monitor_pid).await;
    assert_eq!(records(&c.log()), vec![rec("stdout", "F", "hello tty"), rec("stdout", "F", "to-stderr")]);
}

#[tokio::test]
async fn failing_create_reports_runtime_error() {
    if !can_run() {
        return;
    }
    let c = case("fail", &["/does-not-exist"], false, false);
    let spec = c.spec(false);
    match monitor::spawn(Path::new(MONITOR), &spec).await {
        Err(MonitorError::Runtime { id, message }) => {
            assert_eq!(id, c.id);
            eprintln!("runtime message: {message}");
            assert!(message.contains("does-not-exist"), "runtime message: {message}");
        }
        other => panic!("expected a runtime error, got {other:?}"),
    }
    // The monitor gave up: no exit file, no live monitor.
    let pid = monitor::client::read_pid(&spec.bundle.join("monitor.pid"));
    if let Some(pid) = pid {
        assert_gone(pid).await;
    }
    assert_eq!(monitor::read_exit_file(&spec.exit_file).unwrap(), None);
}

#[tokio::test]
async fn killed_container_exits_128_plus_signal() {
    if !can_run() {
        return;
    }
    let c = case("kill", &["sh", "-c", "echo ready; exec sleep 600"], false, false);
    // busybox `sleep` is an applet: give it its link.
    std::os::unix::fs::symlink("busybox", c.bundle().join("rootfs/bin/sleep")).unwrap();
    let spec = c.spec(false);
    let spawned = monitor::spawn(Path::new(MONITOR), &spec).await.unwrap();
    c.runtime.start(&c.id).await.unwrap();
    assert_eq!(c.runtime.state(&c.id).await.unwrap().unwrap().status, "running");
    // Kill only once the shell has written its line: a kill right after start may land before
    // `echo ready` ran (seen on a loaded machine), and the log would then be rightly empty.
    let deadline = Instant::now() + Duration::from_secs(10);
    while records(&c.log()).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.runtime.kill(&c.id, libc::SIGKILL, false).await.unwrap();
    let info = wait_exit(&spec.exit_file).await;
    assert_eq!(info.exit_code, 128 + libc::SIGKILL);
    assert_gone(spawned.monitor_pid).await;
    assert_eq!(records(&c.log()), vec![rec("stdout", "F", "ready")]);
    // Killing a stopped container is fine.
    c.runtime.kill(&c.id, libc::SIGKILL, false).await.unwrap();
}

#[tokio::test]
async fn pause_container_exits_0_on_sigterm() {
    if !can_run() {
        return;
    }
    let c = case("pause", &["/berth-pause"], false, true);
    let mut spec = c.spec(false);
    spec.log_path = None;
    let spawned = monitor::spawn(Path::new(MONITOR), &spec).await.unwrap();
    c.runtime.start(&c.id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(c.runtime.state(&c.id).await.unwrap().unwrap().status, "running");
    assert_eq!(monitor::read_exit_file(&spec.exit_file).unwrap(), None);
    c.runtime.kill(&c.id, libc::SIGTERM, false).await.unwrap();
    let info = wait_exit(&spec.exit_file).await;
    assert_eq!(info.exit_code, 0);
    assert_gone(spawned.monitor_pid).await;
}

#[tokio::test]
async fn monitor_is_detached_small_and_holds_no_daemon_fds() {
    if !can_run() {
        return;
    }
    let c = case("detach", &["sh", "-c", "exec sleep 600"], false, false);
    std::os::unix::fs::symlink("busybox", c.bundle().join("rootfs/bin/sleep")).unwrap();
    let spec = c.spec(false);
    let spawned = monitor::spawn(Path::new(MONITOR), &spec).await.unwrap();
    let mon = spawned.monitor_pid;
    let status = std::fs::read_to_string(format!("/proc/{mon}/status")).unwrap();
    let field = |k: &str| -> i64 {
        let line = status.lines().find(|l| l.starts_with(k)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert_ne!(field("PPid:") as u32, std::process::id(), "monitor is still the daemon's child");
    let sig_ign = status.lines().find(|l| l.starts_with("SigIgn:")).unwrap().split_whitespace().nth(1).unwrap();
    let sig_ign = u64::from_str_radix(sig_ign, 16).unwrap();
    assert!(sig_ign & (1 << (libc::SIGPIPE - 1)) != 0, "monitor does not ignore SIGPIPE");
    let rss_kib = field("VmRSS:");
    eprintln!("monitor RSS: {rss_kib} KiB");
    assert!(rss_kib < 8 * 1024, "monitor RSS {rss_kib} KiB");
    // setsid: the monitor leads its own session.
    let stat = std::fs::read_to_string(format!("/proc/{mon}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1.split_whitespace().collect::<Vec<_>>();
    assert_eq!(after[3], mon.to_string(), "session id");
    // fds: 0-2 on /dev/null, then only what the monitor made (stdout/stderr pipes, signalfd, log).
    let mut fds = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{mon}/fd")).unwrap().flatten() {
        let target = std::fs::read_link(e.path()).map(|p| p.display().to_string()).unwrap_or_default();
        fds.push((e.file_name().to_string_lossy().parse::<i32>().unwrap(), target));
    }
    fds.sort();
    eprintln!("monitor fds: {fds:?}");
    for (fd, target) in &fds {
        if *fd <= 2 {
            assert_eq!(target, "/dev/null");
        }
    }
    // Its one socket is the attach listener it made itself.
    assert_eq!(fds.iter().filter(|(_, t)| t.contains("socket")).count(), 1, "sockets: {fds:?}");
    assert!(spec.attach_socket.exists(), "no attach socket");
    assert!(fds.len() <= 8, "unexpected fds: {fds:?}");
    c.runtime.start(&c.id).await.unwrap();
    // PID 1 of the container ignores SIGTERM without a handler: SIGKILL.
    c.runtime.kill(&c.id, libc::SIGKILL, true).await.unwrap();
    let info = wait_exit(&spec.exit_file).await;
    assert_eq!(info.exit_code, 128 + libc::SIGKILL);
    assert_gone(mon).await;
}

#[tokio::test]
async fn oom_kill_is_reported() {
    if !can_run() {
        return;
    }
    let c = case("oom", &["sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"], false, false);
    for applet in ["head", "tr"] {
        std::os::unix::fs::symlink("busybox", c.bundle().join("rootfs/bin").join(applet)).unwrap();
    }
    let path = c.bundle().join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    cfg["linux"]["resources"]["memory"] = serde_json::json!({ "limit": 16 * 1024 * 1024 });
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let spec = c.spec(false);
    let spawned = monitor::spawn(Path::new(MONITOR), &spec).await.unwrap();
    c.runtime.start(&c.id).await.unwrap();
    let info = wait_exit(&spec.exit_file).await;
    eprintln!("oom case: {info:?}, log: {:?}", c.log());
    assert!(info.oom_killed, "expected oom_killed: {info:?}");
    assert_gone(spawned.monitor_pid).await;
}

// ---- attach socket and exec mode -------------------------------------------------------------

use berth::monitor::attach::{AttachConn, STDERR, STDOUT};
use berth::monitor::ExecProcess;
use berth::streaming::TermSize;

fn link_applets(c: &Case, applets: &[&str]) {
    for a in applets {
        let _ = std::os::unix::fs::symlink("busybox", c.bundle().join("rootfs/bin").join(a));
    }
}

/// Reads packets until `pred(stdout, stderr)` holds (or EOF / 10 s: then panics).
async fn read_until(conn: &AttachConn, out: &mut Vec<u8>, err: &mut Vec<u8>, pred: impl Fn(&str, &str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pred(&String::from_utf8_lossy(out), &String::from_utf8_lossy(err)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.recv()).await {
            Ok(Ok(Some((STDOUT, d)))) => out.extend_from_slice(&d),
            Ok(Ok(Some((STDERR, d)))) => err.extend_from_slice(&d),
            Ok(Ok(Some((s, _)))) => panic!("unknown stream {s}"),
            Ok(Ok(None)) => panic!("EOF; out={:?} err={:?}", String::from_utf8_lossy(out), String::from_utf8_lossy(err)),
            Ok(Err(e)) => panic!("recv: {e}"),
            Err(_) => panic!("timeout; out={:?} err={:?}", String::from_utf8_lossy(out), String::from_utf8_lossy(err)),
        }
    }
}

/// Reads packets to EOF (10 s at most).
async fn read_to_eof(conn: &AttachConn) -> (String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.recv()).await.expect("no EOF within 10 s").unwrap() {
            Some((STDOUT, d)) => out.extend_from_slice(&d),
            Some((_, d)) => err.extend_from_slice(&d),
            None => break,
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), String::from_utf8_lossy(&err).into_owned())
}

fn rss_kib(pid: i32) -> i64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn attach_two_clients_stdin_and_output() {
    if !can_run() {
        return;
    }
    let c = case("attach", &["sh", "-c", "while read l; do echo got:$l; echo err:$l >&2; done; echo bye"], false, false);
    let mut spec = c.spec(false);
    spec.stdin = true;
    let spawned = monitor::spawn(Path::new(MONITOR), &spec).await.unwrap();
    c.runtime.start(&c.id).await.unwrap();
    let a = monitor::attach(&spec.attach_socket).await.unwrap();
    let b = monitor::attach(&spec.attach_socket).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.write_stdin(b"hello\n").await.unwrap();
    let (mut ao, mut ae, mut bo, mut be) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    read_until(&a, &mut ao, &mut ae, |o, e| o.contains("got:hello\n") && e.contains("err:hello\n")).await;
    read_until(&b, &mut bo, &mut be, |o, _| o.contains("got:hello\n")).await;
    b.write_stdin(b"two\n").await.unwrap();
    read_until(&a, &mut ao, &mut ae, |o, _| o.contains("got:two\n")).await;
    read_until(&b, &mut bo, &mut be, |o, _| o.contains("got:two\n")).await;
    // Without stdin_once a client's stdin ending leaves the container's stdin open.
    a.close_stdin().await.unwrap();
    drop(a);
    b.write_stdin(b"three\n").await.unwrap();
    read_until(&b, &mut bo, &mut be, |o, _| o.contains("got:three\n")).await;
    let rss = rss_kib(spawned.monitor_pid);
    eprintln!("monitor RSS with a client attached: {rss} KiB");
    assert!(rss < 4 * 1024, "monitor RSS {rss} KiB");
    c.runtime.kill(&c.id, libc::SIGKILL, false).await.unwrap();
    let _ = read_to_eof(&b).await;
    let info = wait_exit(&spec.exit_file).await;
    assert_eq!(info.exit_code, 128 + libc::SIGKILL);
    assert_gone(spawned.monitor_pid).await;
    assert!(!spec.attach_socket.exists(), "attach socket left behind");
    let log = c.log();
    for want in ["stdout F got:hello", "stderr F err:hello", "stdout F got:two", "stdout F got:three"] {
        assert!(log.contains(want), "log lacks {want:?}: {log}");
    }
}

#[tokio::test]
async fn attach_stdin_once_closes_stdin() {
    if !can_run() {
        return;
    }
    let c = case("once", &["sh", "-c", "while read l; do echo got:$l; done; echo bye; exit 7"], false, false);
    let mut spec = c.spec(false);
    spec.stdin = true;
    spec.stdin_once = true;
    let spawned = monitor::spawn(Path::new(MONITOR), &spec).await.unwrap();
    c.runtime.start(&c.id).await.unwrap();
    let a = monitor::attach(&spec.attach_socket).await.unwrap();
    a.write_stdin(b"x\n").await.unwrap();
    a.close_stdin().await.unwrap();
    let (out, _) = read_to_eof(&a).await;
    assert_eq!(out, "got:x\nbye\n");
    assert_eq!(wait_exit(&spec.exit_file).await.exit_code, 7);
    assert_gone(spawned.monitor_pid).await;
}

#[tokio::test]
async fn attach_tty_resize() {
    if !can_run() {
        return;
    }
    let c = case("resize", &["sh", "-c", "read x; stty size; exit 0"], true, false);
    link_applets(&c, &["stty"]);
    let mut spec = c.spec(true);
    spec.stdin = true;
    let spawned = monitor::spawn(Path::new(MONITOR), &spec).await.unwrap();
    c.runtime.start(&c.id).await.unwrap();
    let a = monitor::attach(&spec.attach_socket).await.unwrap();
    a.resize(TermSize { width: 123, height: 45 }).await.unwrap();
    a.write_stdin(b"go\r").await.unwrap();
    let (out, err) = read_to_eof(&a).await;
    assert!(err.is_empty());
    assert!(out.contains("45 123"), "tty output {out:?}");
    assert_eq!(wait_exit(&spec.exit_file).await.exit_code, 0);
    assert_gone(spawned.monitor_pid).await;
}

/// A running `sleep` container and an exec session spec in a directory whose attach socket
/// path is longer than sun_path.
async fn running_container(name: &str) -> (Case, MonitorSpec, monitor::Spawned) {
    let c = case(name, &["sh", "-c", "exec sleep 600"], false, false);
    link_applets(&c, &["sleep", "cat", "stty"]);
    let spec = c.spec(false);
    let spawned = monitor::spawn(Path::new(MONITOR), &spec).await.unwrap();
    c.runtime.start(&c.id).await.unwrap();
    (c, spec, spawned)
}

fn exec_spec(c: &Case, args: &[&str], tty: bool, stdin: bool) -> (MonitorSpec, ExecProcess) {
    let dir = c.dir.path().join(format!("exec-{}", "x".repeat(110)));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(c.bundle().join("config.json")).unwrap()).unwrap();
    let mut process = cfg["process"].clone();
    process["args"] = serde_json::json!(args);
    process["terminal"] = serde_json::json!(tty);
    let pj = dir.join("process.json");
    std::fs::write(&pj, serde_json::to_vec(&process).unwrap()).unwrap();
    let spec = MonitorSpec {
        id: c.id.clone(),
        bundle: dir.clone(),
        runtime: c.runtime.path.clone(),
        runtime_root: c.runtime.root.clone(),
        systemd_cgroup: false,
        log_path: None,
        exit_file: dir.join("exit"),
        pid_file: dir.join("pid"),
        attach_socket: dir.join("attach"),
        terminal: tty,
        stdin,
        stdin_once: true,
        log_size_max: 0,
    };
    assert!(spec.attach_socket.as_os_str().len() > 108);
    (spec, ExecProcess { process_json: pj })
}

async fn stop(c: &Case, spawned: monitor::Spawned, spec: &MonitorSpec) {
    c.runtime.kill(&c.id, libc::SIGKILL, false).await.unwrap();
    wait_exit(&spec.exit_file).await;
    assert_gone(spawned.monitor_pid).await;
}

#[tokio::test]
async fn exec_mode_pipes_exit_code() {
    if !can_run() {
        return;
    }
    let (c, cspec, cspawned) = running_container("exec").await;
    let (spec, exec) = exec_spec(&c, &["sh", "-c", "echo out; echo err >&2; exit 3"], false, false);
    let spawned = monitor::spawn_exec(Path::new(MONITOR), &spec, &exec).await.unwrap();
    // The process may be done already: its output waits for the first client.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = monitor::attach(&spec.attach_socket).await.unwrap();
    let (out, err) = read_to_eof(&a).await;
    assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
    assert_eq!(monitor::read_exit_file(&spec.exit_file).unwrap().unwrap().exit_code, 3);
    assert_gone(spawned.monitor_pid).await;
    assert!(!spec.attach_socket.exists());
    // The container's own log is untouched by the exec session.
    assert!(c.log().is_empty(), "container log: {}", c.log());

    // stdin: cat echoes what it is given and ends when the client's stdin ends.
    let (spec, exec) = exec_spec(&c, &["cat"], false, true);
    let spawned = monitor::spawn_exec(Path::new(MONITOR), &spec, &exec).await.unwrap();
    let a = monitor::attach(&spec.attach_socket).await.unwrap();
    let big = vec![b'z'; 200_000];
    a.write_stdin(&big).await.unwrap();
    a.close_stdin().await.unwrap();
    let (out, _) = read_to_eof(&a).await;
    assert_eq!(out.len(), big.len());
    assert_eq!(monitor::read_exit_file(&spec.exit_file).unwrap().unwrap().exit_code, 0);
    assert_gone(spawned.monitor_pid).await;
    stop(&c, cspawned, &cspec).await;
}

#[tokio::test]
async fn exec_mode_tty() {
    if !can_run() {
        return;
    }
    let (c, cspec, cspawned) = running_container("exectty").await;
    let (spec, exec) = exec_spec(&c, &["sh", "-c", "read x; stty size; echo to-err >&2; exit 5"], true, true);
    let spawned = monitor::spawn_exec(Path::new(MONITOR), &spec, &exec).await.unwrap();
    let a = monitor::attach(&spec.attach_socket).await.unwrap();
    a.resize(TermSize { width: 80, height: 24 }).await.unwrap();
    a.write_stdin(b"go\r").await.unwrap();
    let (out, err) = read_to_eof(&a).await;
    assert!(err.is_empty(), "tty output is all stdout: {err:?}");
    assert!(out.contains("24 80\r\n") && out.contains("to-err\r\n"), "tty output {out:?}");
    assert_eq!(monitor::read_exit_file(&spec.exit_file).unwrap().unwrap().exit_code, 5);
    assert_gone(spawned.monitor_pid).await;
    stop(&c, cspawned, &cspec).await;
}

#[tokio::test]
async fn exec_mode_killed_process_and_runtime_error() {
    if !can_run() {
        return;
    }
    let (c, cspec, cspawned) = running_container("execkill").await;
    let (spec, exec) = exec_spec(&c, &["sleep", "600"], false, false);
    let spawned = monitor::spawn_exec(Path::new(MONITOR), &spec, &exec).await.unwrap();
    let a = monitor::attach(&spec.attach_socket).await.unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(spawned.container_pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = read_to_eof(&a).await;
    assert_eq!(monitor::read_exit_file(&spec.exit_file).unwrap().unwrap().exit_code, 128 + libc::SIGKILL);
    assert_gone(spawned.monitor_pid).await;

    let (spec, exec) = exec_spec(&c, &["/no-such-binary"], false, false);
    match monitor::spawn_exec(Path::new(MONITOR), &spec, &exec).await {
        Err(MonitorError::RuntimeExec { message, .. }) => assert!(message.contains("no-such-binary"), "{message}"),
        other => panic!("expected RuntimeExec, got {other:?}"),
    }
    stop(&c, cspawned, &cspec).await;
}

// ---- the streaming backend's exec session (container::streaming::run_exec) -------------------

use berth::container::streaming::{run_exec, ExecGuard};
use berth::streaming::SessionIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The guard removes a session directory once its monitor has exited.
async fn dir_gone(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(8);
    while dir.exists() {
        assert!(Instant::now() < deadline, "session dir {dir:?} left behind");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn pid_alive_until_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() {
        assert!(Instant::now() < deadline, "process {pid} still alive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn backend_exec_session_stdio_and_exit_code() {
    if !can_run() {
        return;
    }
    let (c, cspec, cspawned) = running_container("bexec").await;
    let (spec, exec) = exec_spec(&c, &["sh", "-c", "read l; echo got:$l; echo e >&2; exit 4"], false, true);
    let guard = ExecGuard::new(spec.bundle.clone(), spec.pid_file.clone());
    let (mut in_w, in_r) = tokio::io::duplex(1 << 16);
    let (out_w, mut out_r) = tokio::io::duplex(1 << 20);
    let (err_w, mut err_r) = tokio::io::duplex(1 << 20);
    let io = SessionIo { stdin: Some(Box::new(in_r)), stdout: Some(Box::new(out_w)), stderr: Some(Box::new(err_w)), resize: None };
    in_w.write_all(b"hi\n").await.unwrap();
    drop(in_w);
    let code = run_exec(Path::new(MONITOR), &spec, &exec, guard, io).await.unwrap();
    assert_eq!(code, 4);
    let (mut out, mut err) = (String::new(), String::new());
    out_r.read_to_string(&mut out).await.unwrap();
    err_r.read_to_string(&mut err).await.unwrap();
    assert_eq!((out.as_str(), err.as_str()), ("got:hi\n", "e\n"));
    dir_gone(&spec.bundle).await;
    stop(&c, cspawned, &cspec).await;
}

#[tokio::test]
async fn backend_exec_killed_when_client_drops() {
    if !can_run() {
        return;
    }
    let (c, cspec, cspawned) = running_container("bdrop").await;
    // 1. The session future is dropped (the client connection ended).
    let (spec, exec) = exec_spec(&c, &["sleep", "600"], false, false);
    let guard = ExecGuard::new(spec.bundle.clone(), spec.pid_file.clone());
    let (out_w, _out_r) = tokio::io::duplex(1 << 16);
    let io = SessionIo { stdin: None, stdout: Some(Box::new(out_w)), stderr: None, resize: None };
    let (mspec, mexec) = (spec.clone(), exec.clone());
    let task = tokio::spawn(async move { run_exec(Path::new(MONITOR), &mspec, &mexec, guard, io).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    let (pid, mon) = loop {
        let pid = monitor::client::read_pid(&spec.pid_file);
        let mon = monitor::client::read_pid(&spec.bundle.join("monitor.pid"));
        if let (Some(p), Some(m)) = (pid, mon) {
            break (p, m);
        }
        assert!(Instant::now() < deadline, "exec never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    task.abort();
    let _ = task.await;
    pid_alive_until_gone(pid).await;
    assert_gone(mon).await;
    dir_gone(&spec.bundle).await;

    // 2. The client's stdout fails while the process writes.
    let (spec, exec) = exec_spec(&c, &["sh", "-c", "while true; do echo y; done"], false, false);
    let guard = ExecGuard::new(spec.bundle.clone(), spec.pid_file.clone());
    let (out_w, out_r) = tokio::io::duplex(1024);
    drop(out_r);
    let io = SessionIo { stdin: None, stdout: Some(Box::new(out_w)), stderr: None, resize: None };
    let r = tokio::time::timeout(Duration::from_secs(10), run_exec(Path::new(MONITOR), &spec, &exec, guard, io)).await.unwrap();
    assert!(r.is_err(), "expected an error when the client is gone: {r:?}");
    dir_gone(&spec.bundle).await;
    stop(&c, cspawned, &cspec).await;
}

#[tokio::test]
async fn slow_client_is_dropped_and_never_blocks_the_log() {
    if !can_run() {
        return;
    }
    let line = "a".repeat(99);
    let script = format!("yes {line} | head -n 50000; echo done");
    let c = case("slow", &["sh", "-c", &script], false, false);
    link_applets(&c, &["yes", "head"]);
    let spec = c.spec(false);
    let spawned = monitor::spawn(Path::new(MONITOR), &spec).await.unwrap();
    // Attached before start, and never reads while the container writes 5 MB.
    let slow = monitor::attach(&spec.attach_socket).await.unwrap();
    c.runtime.start(&c.id).await.unwrap();
    let info = tokio::time::timeout(Duration::from_secs(30), wait_exit(&spec.exit_file)).await.expect("container blocked");
    assert_eq!(info.exit_code, 0);
    assert_gone(spawned.monitor_pid).await;
    let log = c.log();
    assert_eq!(log.lines().count(), 50_001, "every line is in the log");
    assert!(log.ends_with("stdout F done\n"));
    // The slow client got a bounded prefix, then the end of the connection.
    let (out, _) = read_to_eof(&slow).await;
    assert!(out.len() < 3 << 20, "slow client got {} bytes", out.len());
    assert!(!out.contains("done"), "slow client should have been dropped");
}
