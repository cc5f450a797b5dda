//! The D-Bus side of the systemd cgroup driver: berth's own transient scopes.
//!
//! Under `cgroup_manager = "systemd"` the OCI runtime makes each container's scope itself
//! (`runc --systemd-cgroup`). What berth makes is one scope per monitor, `berth-monitor-<id>.scope`
//! in the pod's slice (CRI-O's `crio-conmon-<id>.scope` with `conmon_cgroup = "pod"`), so a
//! monitor is not a stray process in `berth.service` and is accounted to its pod. A scope is
//! created with `StartTransientUnit` on `org.freedesktop.systemd1.Manager` (systemd's D-Bus API,
//! org.freedesktop.systemd1(5)) with the monitor's PID in `PIDs`; systemd collects it when its
//! last process exits, and [`SystemdClient::stop_unit`] removes one that outlived its container.

use std::time::Duration;

use zbus::zvariant::{OwnedObjectPath, Value};

/// Errors of the systemd D-Bus client.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// The system bus could not be reached (no D-Bus daemon, or not running under systemd).
    #[error("cannot connect to the system D-Bus (cgroup_manager = \"systemd\" needs systemd and dbus running): {0}")]
    Connect(#[source] zbus::Error),
    /// systemd refused or failed a call.
    #[error("systemd {method} {unit}: {source}")]
    Call {
        method: &'static str,
        unit: String,
        #[source]
        source: zbus::Error,
    },
    /// The scope was made but the process did not show up in it in time.
    #[error("systemd did not move pid {pid} into {unit} within {secs} s")]
    NotMoved { unit: String, pid: u32, secs: u64 },
}

/// A connection to systemd's manager object on the system bus: one proxy, made at connect
/// time, without a property cache (berth reads one property once; a cache would subscribe to
/// every change of the manager's properties).
#[derive(Debug, Clone)]
pub struct SystemdClient {
    manager: zbus::Proxy<'static>,
}

const DEST: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

/// How long [`SystemdClient::start_scope`] waits for systemd to move the process.
const MOVE_TIMEOUT: Duration = Duration::from_secs(5);

impl SystemdClient {
    /// Connects to the system bus. Errors: [`SystemdError::Connect`].
    pub async fn connect() -> Result<SystemdClient, SystemdError> {
        let conn = zbus::Connection::system().await.map_err(SystemdError::Connect)?;
        let manager = zbus::proxy::Builder::<zbus::Proxy<'static>>::new(&conn)
            .destination(DEST)
            .and_then(|b| b.path(PATH))
            .and_then(|b| b.interface(MANAGER))
            .map_err(SystemdError::Connect)?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(SystemdError::Connect)?;
        Ok(SystemdClient { manager })
    }

    /// Makes transient scope `unit` in `slice` holding process `pid` (`StartTransientUnit` with
    /// `PIDs`, `Slice`, `Description`, `CollectMode=inactive-or-failed`, mode `fail`) and waits
    /// until `/proc/<pid>/cgroup` shows it there. Errors: [`SystemdError::Call`] (a unit of that
    /// name already exists, the slice name is invalid, ...), [`SystemdError::NotMoved`].
    pub async fn start_scope(&self, unit: &str, slice: &str, pid: u32, description: &str) -> Result<(), SystemdError> {
        let call = |source| SystemdError::Call { method: "StartTransientUnit", unit: unit.to_string(), source };
        let props: Vec<(&str, Value<'_>)> = vec![
            ("Description", Value::from(description)),
            ("Slice", Value::from(slice)),
            ("PIDs", Value::from(vec![pid])),
            ("CollectMode", Value::from("inactive-or-failed")),
        ];
        let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
        let _job: OwnedObjectPath = self.manager.call("StartTransientUnit", &(unit, "fail", props, aux)).await.map_err(call)?;
        let needle = format!("/{unit}\n");
        let deadline = tokio::time::Instant::now() + MOVE_TIMEOUT;
        loop {
            match std::fs::read_to_string(format!("/proc/{pid}/cgroup")) {
                Ok(text) if text.contains(&needle) => return Ok(()),
                // The process is gone: nothing left to move, and systemd collects the scope.
                Err(_) => return Ok(()),
                Ok(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(SystemdError::NotMoved { unit: unit.to_string(), pid, secs: MOVE_TIMEOUT.as_secs() })
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// Stops `unit` (`StopUnit`, mode `replace`), killing what is left in it. A unit systemd
    /// does not know (already collected) is not an error. Errors: [`SystemdError::Call`].
    pub async fn stop_unit(&self, unit: &str) -> Result<(), SystemdError> {
        let call = |source| SystemdError::Call { method: "StopUnit", unit: unit.to_string(), source };
        match self.manager.call::<_, _, OwnedObjectPath>("StopUnit", &(unit, "replace")).await {
            Ok(_) => Ok(()),
            Err(zbus::Error::MethodError(name, _, _)) if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" => Ok(()),
            Err(e) => Err(call(e)),
        }
    }

    /// Puts the monitor `pid` of container (or infra container) `id` into its own scope
    /// [`super::monitor_scope_name`] in the pod's slice `slice`. A failure is logged, not
    /// returned: the container runs on with its monitor left in berth's own cgroup.
    pub async fn place_monitor(&self, id: &str, slice: &str, pid: i32) {
        if pid <= 0 {
            return;
        }
        let unit = super::monitor_scope_name(id);
        let description = format!("berth monitor of {id}");
        if let Err(e) = self.start_scope(&unit, slice, pid as u32, &description).await {
            tracing::warn!(container = %id, error = %e, "cannot put the monitor in its own scope; it stays in berth's cgroup");
        }
    }

    /// Stops container `id`'s monitor scope if systemd still has it (normally collected when
    /// the monitor exits). A failure is logged.
    pub async fn remove_monitor_scope(&self, id: &str) {
        if let Err(e) = self.stop_unit(&super::monitor_scope_name(id)).await {
            tracing::warn!(container = %id, error = %e, "cannot stop the monitor scope");
        }
    }

    /// systemd's version (`Version` property of the manager), for the startup log.
    pub async fn version(&self) -> Result<String, SystemdError> {
        let call = |source| SystemdError::Call { method: "Get Version", unit: "manager".into(), source };
        self.manager.get_property::<String>("Version").await.map_err(call)
    }
}
