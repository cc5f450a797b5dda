//! Starting the daemon's NRI host ([`crate::nri`]) against the lifecycles: what a new plugin
//! is synchronized with (every pod sandbox, but those whose RunPodSandbox has not stored them
//! Ready yet, and every container), and the task that applies plugins' container updates.
//! Above `daemon`, `sandbox` and `container` (it reads and updates through them), so none of
//! them imports it; `berth serve` calls [`start`].

use crate::daemon::Daemon;
use std::sync::Arc;

/// Opens the NRI socket and launches the plugin directory's plugins when `[nri] enable`
/// ([`crate::nri::Nri::listen`]), and starts applying plugins' updates of containers (one at a
/// time, each under its container's lock, never under the lock of the operation whose event
/// returned it; [`crate::container::apply_nri_update`]). Nothing when NRI is off.
///
/// Errors: the NRI socket cannot be made or bound.
pub fn start(d: &Arc<Daemon>) -> std::io::Result<()> {
    let Some(nri) = &d.nri else { return Ok(()) };
    if let Some(mut updates) = nri.take_updates() {
        let weak = Arc::downgrade(d);
        tokio::spawn(async move {
            while let Some(u) = updates.recv().await {
                let Some(d) = weak.upgrade() else { return };
                let (plugin, container) = (&u.plugin, &u.update.container_id);
                match crate::container::apply_nri_update(&d, &u).await {
                    Ok(()) => tracing::info!(%plugin, %container, "NRI update applied"),
                    Err(e) if u.update.ignore_failure => {
                        tracing::info!(%plugin, %container, error = %e, "NRI update failed (ignore_failure)")
                    }
                    Err(e) => tracing::warn!(%plugin, %container, error = %e, "NRI update failed"),
                }
            }
        });
    }
    let weak = Arc::downgrade(d);
    nri.listen(Arc::new(move || {
        let Some(d) = weak.upgrade() else { return Default::default() };
        let pods = crate::sandbox::list(&d).iter().map(crate::records::nri_pod).collect();
        let containers = d.records.containers().iter().map(crate::records::nri_container).collect();
        (pods, containers)
    }))
}
