//! UpdateContainerResources: new cgroup limits for a container through `runtime update`.
//!
//! Follows containerd's CRI plugin (`updateOCILinuxResource` + `WithResources`): the new CRI
//! `LinuxContainerResources` is merged over the container's current ones field by field (a
//! zero or empty field keeps the current value), the merge is translated exactly as at
//! CreateContainer (`spec::linux::resources`: memory swap = limit on v1 unless a swap limit is
//! given, hugepage limits dropped where no hugetlb controller exists, `unified` only on pure
//! v2), applied with `runtime update --resources` when the container is CREATED or RUNNING, and
//! stored in the record (so ContainerStatus.resources shows it) and in the bundle's config.json.
//! A container that is not running only gets the record updated, like containerd.

use super::{ContainerPaths, ContainerRecord, ContainerState};
use crate::cri::v1 as cri;
use crate::daemon::Daemon;
use crate::error::{Error, Result};
use tracing::Instrument;

/// `new` merged over `old`: every non-zero / non-empty field of `new` replaces the old value
/// (containerd's `WithResources` semantics).
pub fn merge_resources(old: &cri::LinuxContainerResources, new: &cri::LinuxContainerResources) -> cri::LinuxContainerResources {
    let mut m = old.clone();
    if new.cpu_period != 0 {
        m.cpu_period = new.cpu_period;
    }
    if new.cpu_quota != 0 {
        m.cpu_quota = new.cpu_quota;
    }
    if new.cpu_shares != 0 {
        m.cpu_shares = new.cpu_shares;
    }
    if new.memory_limit_in_bytes != 0 {
        m.memory_limit_in_bytes = new.memory_limit_in_bytes;
    }
    if new.memory_swap_limit_in_bytes != 0 {
        m.memory_swap_limit_in_bytes = new.memory_swap_limit_in_bytes;
    }
    if new.oom_score_adj != 0 {
        m.oom_score_adj = new.oom_score_adj;
    }
    if !new.cpuset_cpus.is_empty() {
        m.cpuset_cpus = new.cpuset_cpus.clone();
    }
    if !new.cpuset_mems.is_empty() {
        m.cpuset_mems = new.cpuset_mems.clone();
    }
    if !new.hugepage_limits.is_empty() {
        m.hugepage_limits = new.hugepage_limits.clone();
    }
    if !new.unified.is_empty() {
        m.unified.extend(new.unified.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    m
}

/// Rejects values no cgroup accepts, naming the container and the field.
fn validate(id: &str, r: &cri::LinuxContainerResources) -> Result<()> {
    let bad = |field: &str, msg: String| Err(Error::invalid(format!("linux.{field}"), format!("container {id}: {msg}")));
    if r.memory_limit_in_bytes < 0 {
        return bad("memory_limit_in_bytes", format!("{} is negative (expected bytes, 0 = unchanged)", r.memory_limit_in_bytes));
    }
    if r.memory_swap_limit_in_bytes < 0 && r.memory_swap_limit_in_bytes != -1 {
        return bad("memory_swap_limit_in_bytes", format!("{} is negative (expected bytes or -1)", r.memory_swap_limit_in_bytes));
    }
    if r.cpu_period < 0 || r.cpu_shares < 0 {
        return bad("cpu_period/cpu_shares", "must not be negative".into());
    }
    if r.memory_limit_in_bytes > 0 && r.memory_swap_limit_in_bytes > 0 && r.memory_swap_limit_in_bytes < r.memory_limit_in_bytes {
        return bad(
            "memory_swap_limit_in_bytes",
            format!(
                "{} is below memory_limit_in_bytes {} (swap limit counts memory + swap)",
                r.memory_swap_limit_in_bytes, r.memory_limit_in_bytes
            ),
        );
    }
    Ok(())
}

/// CRI UpdateContainerResources for container `id` (full ID or unique prefix). `linux: None`
/// changes nothing.
///
/// Errors: NotFound / InvalidArgument as `container::get`; InvalidArgument for negative limits;
/// the runtime's error (Internal, naming the container) when `runtime update` refuses, e.g. a
/// memory limit below current usage.
///
/// With NRI plugins (docs/nri.md), they get UpdateContainer with the merged resources first;
/// their updates of this container are merged over it in order, a refusal fails the call
/// (FailedPrecondition), and PostUpdateContainer follows.
pub async fn update_resources(d: &Daemon, id: &str, linux: Option<cri::LinuxContainerResources>) -> Result<()> {
    set_resources(d, id, linux, true).await
}

/// Applies an NRI plugin's update of a container's resources (from the queue of
/// [`crate::nri::Nri::take_updates`]) as UpdateContainerResources does, without NRI events
/// (a plugin's update must not set off more plugin updates).
pub async fn apply_nri_update(d: &Daemon, u: &crate::nri::Update) -> Result<()> {
    let Some(res) = u.update.linux.as_ref().and_then(|l| l.resources.as_ref()) else { return Ok(()) };
    if res.pids.is_some() || res.blockio_class.is_some() || res.rdt_class.is_some() {
        tracing::warn!(plugin = %u.plugin, container = %u.update.container_id, "NRI update: pids, blockio and rdt classes are not applied");
    }
    set_resources(d, &u.update.container_id, Some(crate::nri::convert::cri_resources(res)), false).await
}

async fn set_resources(d: &Daemon, id: &str, linux: Option<cri::LinuxContainerResources>, with_nri: bool) -> Result<()> {
    let r = super::get(d, id)?;
    let Some(new) = linux else { return Ok(()) };
    validate(&r.id, &new)?;
    let lock = d.lock_for(&r.id);
    let _guard = lock.lock().await;
    let span = tracing::info_span!("update_container_resources", container = %r.id, sandbox = %r.sandbox_id);
    let nri = if with_nri { d.nri_pod(&r.sandbox_id) } else { None };
    async {
        let mut r = super::get(d, &r.id)?;
        let old = r.config.linux.as_ref().and_then(|l| l.resources.clone()).unwrap_or_default();
        let mut merged = merge_resources(&old, &new);
        if let Some((nri, pod)) = &nri {
            let ctr = crate::records::nri_container(&r);
            for own in nri.update_container(pod, &ctr, &crate::nri::convert::resources_of_cri(&merged)).await? {
                merged = merge_resources(&merged, &crate::nri::convert::cri_resources(&own));
            }
            validate(&r.id, &merged)?;
        }
        let mut oci = crate::spec::linux::resources(Some(&merged), &d.host_facts);
        oci.set_devices(None);
        let paths = ContainerPaths::new(d, &r.id);
        if matches!(r.state, ContainerState::Created | ContainerState::Running) {
            apply(d, &r, &paths, &oci).await?;
        }
        update_bundle_spec(&paths, &oci);
        r.config.linux.get_or_insert_with(Default::default).resources = Some(merged);
        d.records.put_container(&r)?;
        tracing::info!("container resources updated");
        if let Some((nri, pod)) = &nri {
            nri.post_update_container(pod, &crate::records::nri_container(&r)).await;
        }
        Ok(())
    }
    .instrument(span)
    .await
}

/// Writes the resources next to the bundle and runs `runtime update`. A container that stopped
/// meanwhile is not an error (its record is updated all the same).
async fn apply(d: &Daemon, r: &ContainerRecord, paths: &ContainerPaths, oci: &oci_spec::runtime::LinuxResources) -> Result<()> {
    let file = paths.bundle.join("resources-update.json");
    let bytes = serde_json::to_vec(oci).map_err(|e| Error::io(format!("container {}: encoding resources", r.id))(e.into()))?;
    crate::util::write_atomic(&file, &bytes).map_err(Error::io(format!("container {}: writing {}", r.id, file.display())))?;
    let res = d.runtime(&r.runtime_handler)?.update(&r.id, &file).await;
    let _ = std::fs::remove_file(&file);
    match res {
        Err(e) if crate::oci::is_not_exist(&e) || crate::oci::is_not_running(&e) => {
            tracing::info!(error = %e, "container stopped before its resources could be updated");
            Ok(())
        }
        r => r.map_err(Error::from),
    }
}

/// Puts the new cpu, memory, hugepage and unified entries into the bundle's config.json
/// (devices kept), so the verbose ContainerStatus spec shows what the cgroup has. Best effort:
/// the record is the source of truth, so a failure is logged, not returned.
fn update_bundle_spec(paths: &ContainerPaths, oci: &oci_spec::runtime::LinuxResources) {
    let file = paths.bundle.join("config.json");
    let result = (|| -> std::result::Result<(), String> {
        let bytes = std::fs::read(&file).map_err(|e| e.to_string())?;
        let mut spec: oci_spec::runtime::Spec = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        let mut linux = spec.linux().clone().unwrap_or_default();
        let mut res = linux.resources().clone().unwrap_or_default();
        res.set_cpu(oci.cpu().clone())
            .set_memory(*oci.memory())
            .set_hugepage_limits(oci.hugepage_limits().clone())
            .set_unified(oci.unified().clone());
        linux.set_resources(Some(res));
        spec.set_linux(Some(linux));
        let out = serde_json::to_vec_pretty(&spec).map_err(|e| e.to_string())?;
        crate::util::write_atomic(&file, &out).map_err(|e| e.to_string())
    })();
    if let Err(e) = result {
        tracing::warn!(path = %file.display(), error = %e, "could not record updated resources in the bundle's config.json");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_unset_fields() {
        let old = cri::LinuxContainerResources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 64 << 20,
            cpuset_cpus: "0".into(),
            ..Default::default()
        };
        let new = cri::LinuxContainerResources { memory_limit_in_bytes: 128 << 20, cpu_quota: -1, ..Default::default() };
        let m = merge_resources(&old, &new);
        assert_eq!(m.memory_limit_in_bytes, 128 << 20);
        assert_eq!((m.cpu_shares, m.cpu_quota, m.cpu_period), (512, -1, 100_000));
        assert_eq!(m.cpuset_cpus, "0");
    }

    #[test]
    fn rejects_negative_limits_naming_the_container() {
        let r = cri::LinuxContainerResources { memory_limit_in_bytes: -5, ..Default::default() };
        let e = validate("c1", &r).unwrap_err().to_string();
        assert!(e.contains("c1") && e.contains("memory_limit_in_bytes"), "{e}");
        let r = cri::LinuxContainerResources { memory_limit_in_bytes: 100, memory_swap_limit_in_bytes: 50, ..Default::default() };
        assert!(validate("c1", &r).is_err());
        assert!(validate("c1", &cri::LinuxContainerResources::default()).is_ok());
    }
}
