//! Small checks shared by cases.

use crate::ctx::{Ctx, Pod};
use anyhow::{bail, Result};
use berth::cri::v1 as cri;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The host path of a container's log: its `log_path` when absolute, else under the pod's
/// log_directory.
pub fn log_file(pod: &Pod, st: &cri::ContainerStatus) -> PathBuf {
    let p = PathBuf::from(&st.log_path);
    if p.is_absolute() {
        p
    } else {
        PathBuf::from(&pod.config.log_directory).join(p)
    }
}

/// Parsed CRI log line `<RFC3339Nano> <stdout|stderr> <P|F> <text>`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// The timestamp text.
    pub time: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// `P` (partial) or `F` (full).
    pub tag: String,
    /// The text after the tag.
    pub text: String,
}

/// Parses one CRI log line; errors say which part is malformed.
pub fn parse_log_line(line: &str) -> Result<LogLine> {
    let mut it = line.splitn(4, ' ');
    let (Some(time), Some(stream), Some(tag)) = (it.next(), it.next(), it.next()) else {
        bail!("log line {line:?} does not have the form `<time> <stream> <P|F> <text>`");
    };
    let text = it.next().unwrap_or("");
    let t = time.as_bytes();
    if t.len() < 20 || t[4] != b'-' || t[10] != b'T' || !(time.ends_with('Z') || time[19..].contains(['+', '-'])) {
        bail!("log line {line:?}: timestamp {time:?} is not RFC 3339");
    }
    if stream != "stdout" && stream != "stderr" {
        bail!("log line {line:?}: stream {stream:?}, expected stdout or stderr");
    }
    if tag != "F" && tag != "P" {
        bail!("log line {line:?}: tag {tag:?}, expected F or P");
    }
    Ok(LogLine { time: time.into(), stream: stream.into(), tag: tag.into(), text: text.into() })
}

/// Reads the container's log (waiting up to 5 s for `want` lines) and parses every line.
pub async fn read_log(pod: &Pod, st: &cri::ContainerStatus, want: usize) -> Result<Vec<LogLine>> {
    let path = log_file(pod, st);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() >= want || Instant::now() > deadline {
            if lines.len() < want {
                bail!("log {} has {} lines, expected at least {want}: {text:?}", path.display(), lines.len());
            }
            return lines.into_iter().map(parse_log_line).collect();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `cmd` from `image` in a new pod to completion; returns (pod, status, log text lines).
pub async fn run_to_exit(
    ctx: &Ctx,
    name: &str,
    image: &str,
    cmd: &[&str],
    want_lines: usize,
) -> Result<(Pod, cri::ContainerStatus, Vec<LogLine>)> {
    let pod = ctx.run_pod(name).await?;
    let id = ctx.start_container(&pod, name, image, cmd).await?;
    let st = ctx.wait_container_state(&id, cri::ContainerState::ContainerExited, Duration::from_secs(60)).await?;
    let lines = read_log(&pod, &st, want_lines).await?;
    Ok((pod, st, lines))
}

/// Fails with `what` when `cond` is false.
pub fn check(cond: bool, what: impl FnOnce() -> String) -> Result<()> {
    if !cond {
        bail!("{}", what());
    }
    Ok(())
}

/// PodSandboxStatus verbose `info["info"]` of pod `id`, parsed (berth's and containerd's are
/// JSON objects).
pub async fn pod_verbose_info(ctx: &Ctx, id: &str) -> Result<serde_json::Value> {
    use anyhow::Context;
    let r = ctx
        .rt()
        .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: true })
        .await
        .context("PodSandboxStatus verbose")?
        .into_inner();
    let text = r.info.get("info").context("no info[\"info\"]")?;
    serde_json::from_str(text).with_context(|| format!("info is not JSON: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cri_lines() {
        let l = parse_log_line("2024-01-02T03:04:05.123456789Z stdout F hello world").unwrap();
        assert_eq!((l.stream.as_str(), l.tag.as_str(), l.text.as_str()), ("stdout", "F", "hello world"));
        let l = parse_log_line("2024-01-02T03:04:05.1+01:00 stderr P ").unwrap();
        assert_eq!(l.text, "");
        assert!(parse_log_line("hello").is_err());
        assert!(parse_log_line("2024-01-02T03:04:05Z out F x").is_err());
    }
}
