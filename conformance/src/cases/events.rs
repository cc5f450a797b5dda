//! GetContainerEvents (kubelet's evented PLEG) and ReopenContainerLog (kubelet's log rotation).

use super::util::{check, log_file, parse_log_line};
use crate::ctx::{skip, state_name, Ctx};
use anyhow::{bail, Context, Result};
use berth::cri::v1 as cri;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

fn kind_name(v: i32) -> &'static str {
    cri::ContainerEventType::try_from(v).map(|k| k.as_str_name()).unwrap_or("?")
}

/// Subscribes to GetContainerEvents; events arrive on the returned channel (an `Err` ends it).
/// Skips when the runtime does not serve the RPC (containerd 1.6).
async fn subscribe(ctx: &Ctx) -> Result<mpsc::UnboundedReceiver<Result<cri::ContainerEventResponse, String>>> {
    let mut stream = match ctx.rt().get_container_events(cri::GetEventsRequest {}).await {
        Ok(s) => s.into_inner(),
        Err(s) if s.code() == tonic::Code::Unimplemented => return skip(&format!("GetContainerEvents is not served: {}", s.message())),
        Err(s) => bail!("GetContainerEvents: {s}"),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match stream.message().await {
                Ok(Some(ev)) => {
                    if tx.send(Ok(ev)).is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(s) => {
                    let _ = tx.send(Err(s.to_string()));
                    return;
                }
            }
        }
    });
    Ok(rx)
}

/// Receives events until one for `id` of `kind` arrives (or `limit` passes); returns them all.
async fn until(
    rx: &mut mpsc::UnboundedReceiver<Result<cri::ContainerEventResponse, String>>,
    seen: &mut Vec<cri::ContainerEventResponse>,
    id: &str,
    kind: cri::ContainerEventType,
    limit: Duration,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if seen.iter().any(|e| e.container_id == id && e.container_event_type == kind as i32) {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(Ok(ev))) => seen.push(ev),
            Ok(Some(Err(e))) => bail!("event stream ended with an error: {e}"),
            Ok(None) => bail!("event stream ended"),
            Err(_) => bail!(
                "no {} for {id} within {limit:?}; got {:?}",
                kind.as_str_name(),
                seen.iter()
                    .map(|e| (kind_name(e.container_event_type), &e.container_id[..12.min(e.container_id.len())]))
                    .collect::<Vec<_>>()
            ),
        }
    }
}

/// Subscribe, then a pod whose container exits on its own (nobody asks for its status), remove
/// the container and the pod: that container's events are CREATED, STARTED, STOPPED, DELETED in
/// this order, once each, timestamps non-decreasing, each with the pod's status and the
/// container statuses (EXITED with code 3 in STOPPED). STOPPED must come within 5 s of the exit
/// without any status request.
pub async fn pod_lifecycle_in_order(ctx: &Ctx) -> Result<()> {
    let mut rx = subscribe(ctx).await?;
    let pod = ctx.run_pod("events").await?;
    let res = async {
        let mut seen = Vec::new();
        let c = ctx.start_container(&pod, "exits", &ctx.images.busybox, &["sh", "-c", "sleep 1; exit 3"]).await?;
        use cri::ContainerEventType as T;
        until(&mut rx, &mut seen, &c, T::ContainerStoppedEvent, Duration::from_secs(8)).await?;
        ctx.rt().stop_container(cri::StopContainerRequest { container_id: c.clone(), timeout: 0 }).await.context("StopContainer")?;
        ctx.rt().remove_container(cri::RemoveContainerRequest { container_id: c.clone() }).await.context("RemoveContainer")?;
        until(&mut rx, &mut seen, &c, T::ContainerDeletedEvent, Duration::from_secs(5)).await?;
        ctx.remove_pod(&pod.id).await?;
        // Sandbox events (container_id = the pod's ID) are what containerd 1.7+ and CRI-O send;
        // wait briefly for DELETED of the pod and report what came.
        let pod_deleted = until(&mut rx, &mut seen, &pod.id, T::ContainerDeletedEvent, Duration::from_secs(3)).await.is_ok();
        let pod_kinds: Vec<&str> = seen.iter().filter(|e| e.container_id == pod.id).map(|e| kind_name(e.container_event_type)).collect();
        eprintln!("note events: pod sandbox events {pod_kinds:?} (DELETED seen: {pod_deleted})");

        let mine: Vec<&cri::ContainerEventResponse> = seen.iter().filter(|e| e.container_id == c).collect();
        let kinds: Vec<&str> = mine.iter().map(|e| kind_name(e.container_event_type)).collect();
        let want = ["CONTAINER_CREATED_EVENT", "CONTAINER_STARTED_EVENT", "CONTAINER_STOPPED_EVENT", "CONTAINER_DELETED_EVENT"];
        check(kinds == want, || format!("events of the container {kinds:?}, expected {want:?}"))?;
        check(mine.windows(2).all(|w| w[0].created_at <= w[1].created_at) && mine[0].created_at > 0, || {
            format!("event timestamps {:?} are not increasing", mine.iter().map(|e| e.created_at).collect::<Vec<_>>())
        })?;
        for e in &mine {
            let ps = e
                .pod_sandbox_status
                .as_ref()
                .with_context(|| format!("{} has no pod_sandbox_status", kind_name(e.container_event_type)))?;
            check(ps.id == pod.id, || {
                format!("{}: pod_sandbox_status.id {}, expected {}", kind_name(e.container_event_type), ps.id, pod.id)
            })?;
        }
        let status_in = |e: &cri::ContainerEventResponse| e.containers_statuses.iter().find(|s| s.id == c).cloned();
        let created = status_in(mine[0]).context("CREATED event lacks the container's status")?;
        check(created.state == cri::ContainerState::ContainerCreated as i32, || {
            format!("container state in CREATED event is {}", state_name(created.state))
        })?;
        let stopped = status_in(mine[2]).context("STOPPED event lacks the container's status")?;
        check(stopped.state == cri::ContainerState::ContainerExited as i32 && stopped.exit_code == 3, || {
            format!("STOPPED event: container {} exit_code {}, expected EXITED 3", state_name(stopped.state), stopped.exit_code)
        })?;
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if res.is_err() {
        let _ = ctx.remove_pod(&pod.id).await;
    }
    res
}

/// A container writes numbered lines continuously; the log is renamed and ReopenContainerLog
/// called twice, as kubelet rotates: the RPC returns with the new file in place, and across the
/// three files every line number appears exactly once, each line whole (one `F` record with
/// the exact text). ReopenContainerLog of an exited container fails.
pub async fn reopen_log_while_writing(ctx: &Ctx) -> Result<()> {
    const LINES: usize = 6000;
    let script = format!(
        "i=0; while [ $i -lt {LINES} ]; do echo \"line $i of the reopen test\"; i=$((i+1)); \
         if [ $((i % 200)) -eq 0 ]; then sleep 0.1; fi; done"
    );
    let pod = ctx.run_pod("reopen").await?;
    let res = async {
        let c = ctx.start_container(&pod, "writer", &ctx.images.busybox, &["sh", "-c", &script]).await?;
        let st = ctx.container_status(&c).await?;
        let log = log_file(&pod, &st);
        let mut files = Vec::new();
        for n in 1..=2 {
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) < 1000 {
                if Instant::now() > deadline {
                    bail!("{} did not grow", log.display());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let old = log.with_extension(format!("log.{n}"));
            std::fs::rename(&log, &old).with_context(|| format!("renaming {}", log.display()))?;
            files.push(old);
            ctx.rt()
                .reopen_container_log(cri::ReopenContainerLogRequest { container_id: c.clone() })
                .await
                .with_context(|| format!("ReopenContainerLog #{n}"))?;
            check(log.exists(), || format!("ReopenContainerLog #{n} returned before {} existed", log.display()))?;
        }
        files.push(log.clone());
        let st = ctx.wait_container_state(&c, cri::ContainerState::ContainerExited, Duration::from_secs(60)).await?;
        check(st.exit_code == 0, || format!("writer exited {}", st.exit_code))?;
        match ctx.rt().reopen_container_log(cri::ReopenContainerLogRequest { container_id: c.clone() }).await {
            Ok(_) => bail!("ReopenContainerLog of an exited container succeeded"),
            Err(s) => eprintln!("note reopen_log_while_writing: exited container -> {:?} {}", s.code(), s.message()),
        }
        // Let a runtime that writes asynchronously finish its last lines.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut count: BTreeMap<usize, usize> = BTreeMap::new();
        let mut per_file = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            let mut n = 0;
            for raw in text.lines() {
                let l = parse_log_line(raw)?;
                check(l.tag == "F" && l.stream == "stdout", || format!("{}: unexpected record {raw:?}", f.display()))?;
                let num = l
                    .text
                    .strip_prefix("line ")
                    .and_then(|r| r.strip_suffix(" of the reopen test"))
                    .and_then(|r| r.parse::<usize>().ok())
                    .with_context(|| format!("{}: split or mangled line {raw:?}", f.display()))?;
                *count.entry(num).or_default() += 1;
                n += 1;
            }
            per_file.push(n);
        }
        let missing: Vec<usize> = (0..LINES).filter(|i| !count.contains_key(i)).take(5).collect();
        let twice: Vec<usize> = count.iter().filter(|(_, n)| **n > 1).map(|(i, _)| *i).take(5).collect();
        check(missing.is_empty() && twice.is_empty() && count.len() == LINES, || {
            format!("lines per file {per_file:?}: missing {missing:?}, duplicated {twice:?}, distinct {}", count.len())
        })?;
        check(per_file.iter().all(|n| *n > 0), || format!("a rotated file is empty: lines per file {per_file:?}"))?;
        Ok::<(), anyhow::Error>(())
    }
    .await;
    ctx.remove_pod(&pod.id).await?;
    res
}
