//! Loading berth's default AppArmor profile (`berth-default`) when the daemon starts, as
//! containerd (`apparmor.LoadDefaultProfile`) and CRI-O load theirs: a pod asking for
//! RuntimeDefault must not depend on an operator having loaded it by hand.
//!
//! The profile is `deploy/apparmor/berth-default`, compiled in. Its `#include`s of
//! `<tunables/global>` and `<abstractions/base>` are kept only when those files exist under
//! `/etc/apparmor.d` (containerd's template does the same), so a host with `apparmor_parser` but
//! without the stock abstractions still loads it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::spec::mac::{host_support, MacHost, DEFAULT_APPARMOR_PROFILE};

/// The profile source, with the includes a host may lack.
pub const PROFILE: &str = include_str!("../deploy/apparmor/berth-default");

/// What [`ensure_default_loaded`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// AppArmor is not enabled on this host: nothing to load.
    NotEnabled,
    /// The profile was loaded already (by an operator or an earlier start).
    AlreadyLoaded,
    /// berth loaded it now.
    LoadedNow,
}

/// The profile text for a host whose `/etc/apparmor.d` is `etc_dir`: an include whose file is
/// missing there is dropped.
pub fn profile_text(etc_dir: &Path) -> String {
    PROFILE
        .lines()
        .filter(|l| {
            let t = l.trim();
            match t.strip_prefix("#include <").and_then(|r| r.strip_suffix('>')) {
                Some(rel) => etc_dir.join(rel).exists(),
                None => true,
            }
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Loads `berth-default` with `apparmor_parser -Kr` (replace, no cache) when AppArmor is enabled
/// and the profile is not loaded. The profile source is written to `<run_root>/apparmor/` first.
/// Errors say what failed (no `apparmor_parser`, the parser's own message); the caller logs
/// them: pods asking for RuntimeDefault are then refused with a message saying how to load it.
pub fn ensure_default_loaded(run_root: &Path) -> Result<Loaded, String> {
    if !host_support().apparmor {
        return Ok(Loaded::NotEnabled);
    }
    if MacHost::probe().apparmor_profiles.contains(DEFAULT_APPARMOR_PROFILE) {
        return Ok(Loaded::AlreadyLoaded);
    }
    let parser = ["/sbin/apparmor_parser", "/usr/sbin/apparmor_parser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or("AppArmor is enabled but apparmor_parser is not installed (Debian: apt install apparmor)")?;
    let dir = run_root.join("apparmor");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let file = dir.join(DEFAULT_APPARMOR_PROFILE);
    std::fs::write(&file, profile_text(Path::new("/etc/apparmor.d"))).map_err(|e| format!("writing {}: {e}", file.display()))?;
    let out = Command::new(&parser)
        .arg("-Kr")
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", parser.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} -Kr {} failed ({}): {}",
            parser.display(),
            file.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(Loaded::LoadedNow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn includes_only_what_the_host_has() {
        let d = tempfile::tempdir().unwrap();
        let bare = profile_text(d.path());
        assert!(!bare.contains("#include"), "{bare}");
        assert!(bare.contains("profile berth-default flags=(attach_disconnected,mediate_deleted) {"));
        std::fs::create_dir_all(d.path().join("tunables")).unwrap();
        std::fs::write(d.path().join("tunables/global"), "").unwrap();
        let some = profile_text(d.path());
        assert!(some.contains("#include <tunables/global>") && !some.contains("#include <abstractions/base>"), "{some}");
    }
}
