//! The OCI runtime's command line and error messages, shared by the monitor (which runs
//! `runtime create` and `runtime exec`) and the daemon (every other runtime call).
//!
//! runc, crun and youki follow runc's command line: global options, a subcommand, its options
//! (runc's `man/runc.8.md`). Their errors reach berth two ways: logrus text lines on stderr
//! (`time="..." level=error msg="..."`) and, with `--log-format json`, JSON lines in the log file.

use std::path::Path;

use serde::Deserialize;

/// The global options every runtime invocation takes, before its subcommand: `--root <root>`,
/// and `--systemd-cgroup` under the systemd cgroup driver (runc, crun and youki all take it;
/// containerd passes it on every call when `SystemdCgroup` is set, and so does berth).
pub fn global_args(root: &Path, systemd_cgroup: bool) -> Vec<&std::ffi::OsStr> {
    let mut args = vec![std::ffi::OsStr::new("--root"), root.as_os_str()];
    if systemd_cgroup {
        args.push(std::ffi::OsStr::new("--systemd-cgroup"));
    }
    args
}

/// The error message of a runtime's stderr: the `msg="..."` values of logrus text lines
/// (`time="..." level=error msg="..."`), joined with "; "; or the trimmed text when there are none;
/// cut to [`MAX_RUNTIME_MESSAGE`] bytes.
pub fn runtime_error_message(stderr: &str) -> String {
    let msgs: Vec<String> = stderr.lines().filter_map(logrus_msg).collect();
    let msg = if msgs.is_empty() { stderr.trim().to_string() } else { msgs.join("; ") };
    crate::util::truncate_message(msg, MAX_RUNTIME_MESSAGE)
}

/// The most of a runtime's error message berth keeps (it reaches gRPC status messages and
/// Status info, which clients cap at a few KiB to MiB): the start says what failed.
pub const MAX_RUNTIME_MESSAGE: usize = 4096;

/// The `msg` value of one logrus text-format line, unquoted (`\"` and `\\` unescaped).
fn logrus_msg(line: &str) -> Option<String> {
    let start = line.find("msg=")? + 4;
    let rest = &line[start..];
    let Some(quoted) = rest.strip_prefix('"') else {
        return Some(rest.split_whitespace().next().unwrap_or("").to_string());
    };
    let mut out = String::new();
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => break,
            },
            c => out.push(c),
        }
    }
    Some(out)
}

/// The last error-level `msg` of a runtime's JSON log (`--log F --log-format json`: one
/// `{"level":"error","msg":"...","time":"..."}` object per line); `None` when it has none.
pub fn last_json_log_error(log: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Entry {
        #[serde(default)]
        level: String,
        #[serde(default)]
        msg: String,
    }
    log.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Entry>(l).ok())
        .find(|e| e.level == "error" || e.level == "fatal")
        .map(|e| e.msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_args_carry_root_and_the_systemd_flag() {
        let root = Path::new("/run/berth/runtime/runc");
        assert_eq!(global_args(root, false), ["--root", "/run/berth/runtime/runc"]);
        assert_eq!(global_args(root, true), ["--root", "/run/berth/runtime/runc", "--systemd-cgroup"]);
    }

    #[test]
    fn extracts_logrus_msg() {
        let e = "time=\"2026-11-29T07:35:08Z\" level=error msg=\"container does not exist\"\n";
        assert_eq!(runtime_error_message(e), "container does not exist");
        let q = r#"time="x" level=error msg="exec: \"nope\": executable file not found in $PATH""#;
        assert_eq!(runtime_error_message(q), "exec: \"nope\": executable file not found in $PATH");
        assert_eq!(runtime_error_message("  plain failure\n"), "plain failure");
    }

    #[test]
    fn last_error_of_json_log() {
        let log = "{\"level\":\"info\",\"msg\":\"hi\"}\n{\"level\":\"error\",\"msg\":\"first\"}\n\
                   {\"level\":\"error\",\"msg\":\"runc create failed: boom\",\"time\":\"t\"}\n";
        assert_eq!(last_json_log_error(log).as_deref(), Some("runc create failed: boom"));
        assert_eq!(last_json_log_error("garbage\n"), None);
    }
}
