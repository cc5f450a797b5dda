//! ExecSync: run a command in a running container and collect its output.
//!
//! The process is started with `runtime exec --process <json> --pid-file <file>`; its
//! `process` object is the container's own (user, env, cwd, capabilities) with the new args,
//! as CRI-O and containerd build it. On timeout the exec'd process and its descendants are
//! SIGKILLed by host PID (killing the runtime's client alone would leave them running), and the
//! runtime is left to reap it, so nothing of it, not even a zombie, is there at the reply.

use super::{ContainerPaths, ContainerState};
use crate::daemon::Daemon;
use crate::error::{Error, Result};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Most bytes kept of each of stdout and stderr; the rest is read and dropped, so the command
/// never blocks on a full pipe (CRI ExecSyncResponse: "cap the output ... to 16MB").
pub const OUTPUT_CAP: usize = 16 << 20;

/// What ExecSync returns.
#[derive(Debug, Default)]
pub struct ExecOutput {
    /// Captured stdout, at most [`OUTPUT_CAP`] bytes.
    pub stdout: Vec<u8>,
    /// Captured stderr, at most [`OUTPUT_CAP`] bytes.
    pub stderr: Vec<u8>,
    /// Exit code; 128+signal when the process was killed by a signal.
    pub exit_code: i32,
}

/// Runs `cmd` in container `id`, waiting at most `timeout_secs` (0 = no limit).
///
/// Errors: InvalidArgument for an empty command; NotFound; FailedPrecondition when the container
/// is not running; DeadlineExceeded (after killing the process) when the timeout expires.
pub async fn exec_sync(d: &Daemon, id: &str, cmd: &[String], timeout_secs: i64) -> Result<ExecOutput> {
    if cmd.is_empty() || cmd[0].is_empty() {
        return Err(Error::invalid("cmd", "must name a command to run"));
    }
    let r = super::get(d, id)?;
    if r.state != ContainerState::Running {
        return Err(Error::FailedPrecondition(format!(
            "container {} is {}, not RUNNING: exec needs a running container",
            r.id,
            super::lifecycle::state_name(r.state)
        )));
    }
    let paths = ContainerPaths::new(d, &r.id);
    let spec_path = paths.bundle.join("config.json");
    let text = std::fs::read(&spec_path).map_err(Error::io(format!("reading {}", spec_path.display())))?;
    let spec: oci_spec::runtime::Spec =
        serde_json::from_slice(&text).map_err(|e| Error::io(format!("decoding {}", spec_path.display()))(e.into()))?;
    let process = crate::spec::exec_process(&spec, cmd, false)?;
    let tag = &crate::util::new_id()[..16];
    let process_json = paths.bundle.join(format!("exec-{tag}.json"));
    let pid_file = paths.bundle.join(format!("exec-{tag}.pid"));
    let bytes = serde_json::to_vec(&process).map_err(|e| Error::io("encoding exec process")(e.into()))?;
    crate::util::write_atomic(&process_json, &bytes).map_err(Error::io(format!("writing {}", process_json.display())))?;
    let result = run(d, &r.runtime_handler, &r.id, cmd, &process_json, &pid_file, timeout_secs).await;
    let _ = std::fs::remove_file(&process_json);
    let _ = std::fs::remove_file(&pid_file);
    result
}

async fn run(
    d: &Daemon,
    handler: &str,
    id: &str,
    cmd: &[String],
    process_json: &std::path::Path,
    pid_file: &std::path::Path,
    timeout_secs: i64,
) -> Result<ExecOutput> {
    let mut command = d.runtime(handler)?.exec_command(id, process_json, pid_file);
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = command.spawn().map_err(Error::io(format!("spawning the runtime to exec in container {id}")))?;
    let out = child.stdout.take();
    let err = child.stderr.take();
    let stdout_task = tokio::spawn(read_capped(out));
    let stderr_task = tokio::spawn(read_capped(err));
    let status = if timeout_secs > 0 {
        match tokio::time::timeout(Duration::from_secs(timeout_secs as u64), child.wait()).await {
            Ok(s) => s,
            Err(_) => {
                let pid = std::fs::read_to_string(pid_file).ok().and_then(|s| s.trim().parse::<i32>().ok()).filter(|p| *p > 1);
                if let Some(pid) = pid {
                    kill_tree(pid);
                }
                // `runc exec` reaps the process it runs and then exits by itself: kill it first
                // and the process is left a zombie of the container's init, which may never reap
                // it (critest's `top` does not). So wait for the runtime, and kill it only if it
                // hangs.
                let reaped = pid.is_some() && tokio::time::timeout(REAP_GRACE, child.wait()).await.is_ok();
                if !reaped {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
                stdout_task.abort();
                stderr_task.abort();
                return Err(Error::DeadlineExceeded(format!(
                    "command {cmd:?} in container {id} timed out after {timeout_secs}s and was killed"
                )));
            }
        }
    } else {
        child.wait().await
    }
    .map_err(Error::io(format!("waiting for exec in container {id}")))?;
    let stdout = stdout_task.await.unwrap_or_default();
    let stderr = stderr_task.await.unwrap_or_default();
    use std::os::unix::process::ExitStatusExt;
    let exit_code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    let stderr = if exit_code == 255 { runtime_errors_readable(stderr) } else { stderr };
    Ok(ExecOutput { stdout, stderr, exit_code })
}

/// How long the runtime gets to reap a timed-out exec process before it is killed too.
const REAP_GRACE: Duration = Duration::from_secs(5);

/// SIGKILLs `pid` and every process descended from it (found through `/proc/<pid>/stat`'s
/// ppid before any is killed, since a killed parent's children move to the container's init).
fn kill_tree(pid: i32) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let mut family = vec![pid];
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            // proc(5): `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
            let ppid = stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()?;
            Some((p, ppid))
        })
        .collect();
    let mut i = 0;
    while i < family.len() {
        let parent = family[i];
        family.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    for p in family {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
}

/// When the runtime itself failed (runc exits 255 and appends logrus lines such as
/// `time="..." level=error msg="exec failed: ..."` to the process's stderr), keeps the process's
/// own output and turns the runtime's trailing lines into their messages.
fn runtime_errors_readable(stderr: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8_lossy(&stderr);
    let lines: Vec<&str> = text.lines().collect();
    let is_runtime_line = |l: &&str| l.starts_with("time=") && l.contains(" level=") && l.contains(" msg=");
    let split = lines.iter().rposition(|l| !is_runtime_line(l)).map_or(0, |i| i + 1);
    if split == lines.len() {
        return stderr;
    }
    let mut out: String = lines[..split].iter().map(|l| format!("{l}\n")).collect();
    out.push_str(&crate::oci::runtime_error_message(&lines[split..].join("\n")));
    out.push('\n');
    out.into_bytes()
}

async fn read_capped<R: tokio::io::AsyncRead + Unpin>(r: Option<R>) -> Vec<u8> {
    let Some(mut r) = r else { return Vec::new() };
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = OUTPUT_CAP.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Checks an Exec or Attach request before a streaming URL is handed out (kubelet's streaming
/// server rules): the container exists and runs; at least one of stdin, stdout, stderr; not tty
/// together with stderr (a terminal has one output). Returns the full container ID.
///
/// Errors: NotFound; FailedPrecondition when it is not running; InvalidArgument naming the field.
pub fn validate_stream(d: &Daemon, id: &str, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<String> {
    if !stdin && !stdout && !stderr {
        return Err(Error::invalid("stdin/stdout/stderr", "at least one of them must be true"));
    }
    if tty && stderr {
        return Err(Error::invalid("tty/stderr", "tty and stderr cannot both be true: a terminal has one output stream"));
    }
    let r = super::get(d, id)?;
    if r.state != ContainerState::Running {
        return Err(Error::FailedPrecondition(format!("container {} is {}, not RUNNING", r.id, super::lifecycle::state_name(r.state))));
    }
    Ok(r.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_lines_become_messages() {
        let raw = b"partial output\ntime=\"2026-11-29T08:00:00Z\" level=error msg=\"exec failed: unable to start container process: exec: \\\"nope\\\": executable file not found in $PATH\"\n".to_vec();
        let got = String::from_utf8(runtime_errors_readable(raw)).unwrap();
        assert_eq!(
            got,
            "partial output\nexec failed: unable to start container process: exec: \"nope\": executable file not found in $PATH\n"
        );
        let plain = b"just the program's own stderr\n".to_vec();
        assert_eq!(runtime_errors_readable(plain.clone()), plain);
    }
}
