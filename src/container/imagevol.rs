//! Image volumes (CRI `Mount.image`, KEP-4639, on by default from kubelet 1.35): a container
//! mount whose source is an image kubelet pulled beforehand. berth mounts the image's unpacked
//! layers read-only (an overlay without upper dir, or a read-only bind of a one-layer image)
//! under `<state>/imagevol/<n>` (n = the mount's index in `ContainerConfig.mounts`) and
//! bind-mounts that, or its `image_sub_path`, read-only at the container path; in a pod with its
//! own user namespace the bind is idmapped like every other. The layers are held by the
//! container's lease, so RemoveImage of the volume's image keeps them while it is used. The
//! mounts go at StopContainer (a stopped container never runs again), RemoveContainer, a failed
//! create's undo, and the crash sweep.

use super::ContainerPaths;
use crate::cri::v1 as cri;
use crate::daemon::Daemon;
use crate::error::{Error, Result};
use crate::image::Image;
use std::path::{Component, Path, PathBuf};

/// The image volumes of `config`: (index in `config.mounts`, resolved image), in order.
///
/// Errors: InvalidArgument naming `mounts[n]` for an image mount that also names a host path,
/// `mounts[n].readonly` when it is false (the CRI: "all image mounts are per feature definition
/// readonly"; kubelet sends true since 1.32, and critest expects the refusal), and
/// `mounts[n].image_sub_path` when it is absolute or climbs (`..`); NotFound for an image not
/// pulled (kubelet pulls it before CreateContainer).
pub fn resolve(d: &Daemon, config: &cri::ContainerConfig) -> Result<Vec<(usize, Image)>> {
    let mut out = Vec::new();
    for (n, m) in config.mounts.iter().enumerate() {
        let Some(reference) = m.image.as_ref().map(|i| i.image.as_str()).filter(|i| !i.is_empty()) else {
            if !m.image_sub_path.is_empty() {
                return Err(Error::invalid(format!("mounts[{n}].image_sub_path"), "is only for an image volume (mounts[].image)"));
            }
            continue;
        };
        if !m.host_path.is_empty() {
            return Err(Error::invalid(format!("mounts[{n}]"), format!("names both host_path {:?} and image {reference:?}", m.host_path)));
        }
        if !m.readonly {
            return Err(Error::invalid(
                format!("mounts[{n}].readonly"),
                format!("is false for the image volume of {reference:?}: image volumes are read-only (KEP-4639); set readonly to true"),
            ));
        }
        check_sub_path(n, &m.image_sub_path)?;
        let image = d
            .images
            .resolve(reference)?
            .ok_or_else(|| Error::NotFound { kind: "image (of an image volume)", id: reference.to_string() })?;
        out.push((n, image));
    }
    Ok(out)
}

fn check_sub_path(n: usize, sub: &str) -> Result<()> {
    let p = Path::new(sub);
    if p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
        return Err(Error::invalid(
            format!("mounts[{n}].image_sub_path"),
            format!("{sub:?} must be a path inside the image, relative and without \"..\""),
        ));
    }
    Ok(())
}

/// Where volume `n`'s layers are mounted.
pub fn mount_point(paths: &ContainerPaths, n: usize) -> PathBuf {
    paths.state.join("imagevol").join(n.to_string())
}

/// Mounts volume `n` (`layers` base first) and returns what to bind into the container: the
/// mount point, or `sub_path` in it.
///
/// Errors: Storage for the mount; InvalidArgument naming `mounts[n].image_sub_path` when it
/// does not exist in the image or resolves (through a symlink in the image) outside it.
pub fn mount(paths: &ContainerPaths, n: usize, layers: &[PathBuf], sub_path: &str) -> Result<PathBuf> {
    let target = mount_point(paths, n);
    crate::storage::mount_layers_readonly(layers, &target)?;
    if sub_path.is_empty() {
        return Ok(target);
    }
    let field = || format!("mounts[{n}].image_sub_path");
    let wanted = target.join(sub_path);
    // Resolved on the host: an absolute symlink in the image would point into the host's tree,
    // so anything that ends up outside the mounted image is refused.
    let resolved =
        std::fs::canonicalize(&wanted).map_err(|_| Error::invalid(field(), format!("{sub_path:?} does not exist in the image")))?;
    let root = std::fs::canonicalize(&target).map_err(Error::io(format!("resolving {}", target.display())))?;
    if !resolved.starts_with(&root) {
        return Err(Error::invalid(field(), format!("{sub_path:?} leads outside the image (a symlink in it points elsewhere)")));
    }
    Ok(resolved)
}

/// Unmounts every image volume of the container. Idempotent (nothing mounted is fine).
pub fn unmount_all(paths: &ContainerPaths) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(paths.state.join("imagevol")) else { return Ok(()) };
    for e in entries.flatten() {
        crate::storage::unmount(&e.path())?;
    }
    Ok(())
}

/// The config the OCI spec is made from: each image volume becomes a read-only private bind of
/// its `sources` entry (index in `mounts`, host path).
pub fn spec_config(config: &cri::ContainerConfig, sources: &[(usize, PathBuf)]) -> cri::ContainerConfig {
    let mut c = config.clone();
    for (n, src) in sources {
        if let Some(m) = c.mounts.get_mut(*n) {
            m.host_path = src.to_string_lossy().into_owned();
            m.readonly = true;
            m.image = None;
            m.image_sub_path = String::new();
            m.propagation = cri::MountPropagation::PropagationPrivate as i32;
        }
    }
    c
}

/// The config as stored and reported: each image volume's `image.image_ref` (KEP-5365) set to
/// the ID of the image mounted (`sha256:<config digest>`), the value PullImage returned for it.
/// That is what critest checks and containerd reports (containerd/containerd#14173); CRI-O's
/// proposal reports a repo digest instead (cri-o/cri-o#10358). Either pins the content mounted
/// even when the tag later moves.
pub fn with_image_refs(mut config: cri::ContainerConfig, volumes: &[(usize, Image)]) -> cri::ContainerConfig {
    for (n, image) in volumes {
        if let Some(spec) = config.mounts.get_mut(*n).and_then(|m| m.image.as_mut()) {
            spec.image_ref = image.id.clone();
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_paths_must_stay_inside() {
        assert!(check_sub_path(0, "").is_ok());
        assert!(check_sub_path(0, "etc/app").is_ok());
        for bad in ["/etc", "../x", "a/../../b"] {
            let e = check_sub_path(2, bad).unwrap_err().to_string();
            assert!(e.contains("mounts[2].image_sub_path"), "{bad}: {e}");
        }
    }

    #[test]
    fn spec_config_binds_read_only() {
        let m = cri::Mount {
            container_path: "/vol".into(),
            image: Some(cri::ImageSpec { image: "sha256:abc".into(), ..Default::default() }),
            image_sub_path: "etc".into(),
            ..Default::default()
        };
        let c = cri::ContainerConfig { mounts: vec![m], ..Default::default() };
        let s = spec_config(&c, &[(0, PathBuf::from("/run/x/imagevol/0/etc"))]);
        assert_eq!(s.mounts[0].host_path, "/run/x/imagevol/0/etc");
        assert!(s.mounts[0].readonly && s.mounts[0].image.is_none());
        assert_eq!(c.mounts[0].image_sub_path, "etc", "the stored config keeps what was asked");
    }
}
