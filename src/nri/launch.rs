//! Pre-launched NRI plugins: executables in `[nri] plugin_dir` named `<index>-<name>` that berth
//! starts itself when it starts, as containerd's NRI adaptation does
//! (`pkg/adaptation/plugin.go`, `newLaunchedPlugin`).
//!
//! Each runs with one end of a unix socketpair as its fd 3 and exactly this environment:
//! `NRI_PLUGIN_NAME=<name>`, `NRI_PLUGIN_IDX=<index>`, `NRI_PLUGIN_SOCKET=3` (nri's stub then
//! talks over fd 3 instead of dialing the socket); berth's end goes through the same
//! registration as a plugin that connected. Its Configure carries the text of
//! `<plugin_config_dir>/<index>-<name>.conf`, else `<plugin_config_dir>/<name>.conf`, else
//! nothing. Its stdout and stderr are berth's. It is killed when berth drops it; berth does not
//! restart it.

use std::path::{Path, PathBuf};

/// An executable found in the plugin directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// The two-digit index of its file name.
    pub index: String,
    /// The name after the index.
    pub name: String,
    pub path: PathBuf,
}

/// The executables of `dir` named `<two digits>-<name>`, in index order; a missing directory
/// has none. Files that are not executable regular files, or whose name has no index, are
/// logged and skipped (containerd refuses the whole directory then; one stray file should not
/// cost every plugin).
pub fn discover(dir: &Path) -> Vec<Found> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "NRI: cannot read the plugin directory");
            return Vec::new();
        }
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let file = entry.file_name().to_string_lossy().into_owned();
        let executable =
            std::fs::metadata(&path).is_ok_and(|m| m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0);
        if !executable {
            tracing::warn!(path = %path.display(), "NRI: not an executable file; not launched");
            continue;
        }
        match file.split_once('-') {
            Some((index, name)) if index.len() == 2 && index.bytes().all(|b| b.is_ascii_digit()) && !name.is_empty() => {
                found.push(Found { index: index.into(), name: name.into(), path })
            }
            _ => tracing::warn!(path = %path.display(), "NRI: a plugin's file name must be <two digits>-<name>; not launched"),
        }
    }
    found.sort_by(|a, b| (&a.index, &a.name).cmp(&(&b.index, &b.name)));
    found
}

/// The configuration text of plugin `f` from `conf_dir` (see the module docs); empty when
/// there is none.
pub fn config_for(conf_dir: &Path, f: &Found) -> String {
    [format!("{}-{}.conf", f.index, f.name), format!("{}.conf", f.name)]
        .iter()
        .find_map(|n| std::fs::read_to_string(conf_dir.join(n)).ok())
        .unwrap_or_default()
}

/// Starts plugin `f` with its end of a new socketpair as fd 3; returns berth's end and the
/// child (killed when dropped).
///
/// Errors: the socketpair or the spawn failed (the message names the plugin's path).
pub fn spawn(f: &Found) -> std::io::Result<(tokio::net::UnixStream, tokio::process::Child)> {
    let named = |e: std::io::Error| std::io::Error::new(e.kind(), format!("launching NRI plugin {}: {e}", f.path.display()));
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(named)?;
    let mut cmd = tokio::process::Command::new(&f.path);
    cmd.env_clear()
        .env("NRI_PLUGIN_NAME", &f.name)
        .env("NRI_PLUGIN_IDX", &f.index)
        .env("NRI_PLUGIN_SOCKET", "3")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let theirs = std::os::fd::OwnedFd::from(theirs);
    crate::monitor::pass_as_fd3(&mut cmd, &theirs);
    let child = cmd.spawn().map_err(named)?;
    drop(theirs);
    ours.set_nonblocking(true).map_err(named)?;
    let ours = tokio::net::UnixStream::from_std(ours).map_err(named)?;
    Ok((ours, child))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovers_indexed_executables_in_order_and_reads_their_config() {
        let dir = tempfile::tempdir().unwrap();
        let exe = |n: &str, mode: u32| {
            let p = dir.path().join(n);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
        };
        exe("20-b", 0o755);
        exe("05-a-b", 0o700);
        exe("nodigits", 0o755);
        exe("5-short", 0o755);
        exe("10-notexec", 0o644);
        std::fs::create_dir(dir.path().join("30-dir")).unwrap();
        let found = discover(dir.path());
        let names: Vec<(&str, &str)> = found.iter().map(|f| (f.index.as_str(), f.name.as_str())).collect();
        assert_eq!(names, [("05", "a-b"), ("20", "b")]);
        assert!(discover(&dir.path().join("missing")).is_empty());

        let conf = tempfile::tempdir().unwrap();
        assert_eq!(config_for(conf.path(), &found[1]), "");
        std::fs::write(conf.path().join("b.conf"), "by name").unwrap();
        assert_eq!(config_for(conf.path(), &found[1]), "by name");
        std::fs::write(conf.path().join("20-b.conf"), "by index and name").unwrap();
        assert_eq!(config_for(conf.path(), &found[1]), "by index and name");
    }
}
