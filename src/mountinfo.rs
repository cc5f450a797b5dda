//! `/proc/self/mountinfo` (proc(5)), read in one place: `id parent maj:min root mount_point
//! options [optional...] - fstype source super_options`, with octal escapes in paths. A leaf
//! module: storage, the spec's propagation check, the directory removal guard and the stats
//! readers all use it, and it uses none of them.

use std::path::{Path, PathBuf};

/// Decodes mountinfo's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` backslash).
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of `/proc/self/mountinfo` (proc(5)): the mount point (octal escapes decoded) and
/// its propagation from the optional fields (`shared:N`, `master:N`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_point: PathBuf,
    /// `shared:N`: the mount is in a peer group.
    pub shared: bool,
    /// `master:N`: the mount is a slave of a peer group.
    pub slave: bool,
}

/// Parses mountinfo text (proc(5): `id parent maj:min root mount_point options [optional...] -
/// fstype source super_options`); malformed lines are skipped.
pub fn parse(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let mp = f.get(4)?;
            let sep = f.iter().skip(6).position(|x| *x == "-")? + 6;
            let optional = &f[6..sep];
            Some(MountInfo {
                mount_point: PathBuf::from(unescape(mp)),
                shared: optional.iter().any(|o| o.starts_with("shared:")),
                slave: optional.iter().any(|o| o.starts_with("master:")),
            })
        })
        .collect()
}

/// The mount that holds `path`: the longest mount point that is a prefix of it (by path
/// components); among equal mount points the last listed (the top of a stack).
pub fn mount_of<'a>(mounts: &'a [MountInfo], path: &Path) -> Option<&'a MountInfo> {
    let mut best: Option<&MountInfo> = None;
    for m in mounts {
        if path.starts_with(&m.mount_point) && best.is_none_or(|b| m.mount_point.components().count() >= b.mount_point.components().count())
        {
            best = Some(m);
        }
    }
    best
}

/// Mount points (field 5 of each `/proc/self/mountinfo` line, octal escapes decoded) at or
/// below `dir`.
pub fn points_under(mountinfo: &str, dir: &Path) -> Vec<std::path::PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|mp| std::path::PathBuf::from(unescape(mp)))
        .filter(|mp| mp.starts_with(dir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 0:40 / /srv rw,relatime shared:7 - tmpfs tmpfs rw
41 40 0:41 / /srv/slave rw,relatime master:7 - tmpfs tmpfs rw
42 40 0:42 / /srv/priv\\040dir rw,relatime - tmpfs tmpfs rw
43 40 0:43 / /srv/both rw shared:9 master:7 propagate_from:3 - tmpfs tmpfs rw
44 27 0:44 / /srv rw,relatime - tmpfs tmpfs rw
malformed line
";

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }

    #[test]
    fn parses_mountinfo_propagation_and_escapes() {
        let m = parse(MOUNTINFO);
        assert_eq!(m.len(), 7);
        assert_eq!(m[1], MountInfo { mount_point: "/".into(), shared: false, slave: false });
        assert_eq!(m[2], MountInfo { mount_point: "/srv".into(), shared: true, slave: false });
        assert_eq!(m[3], MountInfo { mount_point: "/srv/slave".into(), shared: false, slave: true });
        assert_eq!(m[4].mount_point, Path::new("/srv/priv dir"));
        assert!(m[5].shared && m[5].slave);
    }

    #[test]
    fn mount_of_longest_prefix_by_component() {
        let m = parse(MOUNTINFO);
        let at = |p: &str| mount_of(&m, Path::new(p)).map(|x| x.mount_point.display().to_string());
        assert_eq!(at("/srv/slave/a/b").as_deref(), Some("/srv/slave"));
        // `/srv/slavery` is not under `/srv/slave`.
        assert_eq!(at("/srv/slavery").as_deref(), Some("/srv"));
        assert_eq!(at("/etc/x").as_deref(), Some("/"));
        // Two mounts at /srv: the last listed (44, private) is on top.
        assert!(!mount_of(&m, Path::new("/srv/x")).unwrap().shared);
    }

    #[test]
    fn points_under_a_dir() {
        let under = points_under(MOUNTINFO, Path::new("/srv"));
        assert_eq!(under.len(), 5);
        assert!(under.contains(&PathBuf::from("/srv/priv dir")));
        assert!(points_under(MOUNTINFO, Path::new("/srvx")).is_empty());
    }
}
