//! Resolving a container's user: image `User` strings and CRI `run_as_*` fields against the
//! image's `/etc/passwd` and `/etc/group`.
//!
//! Follows Docker/containerd (`oci.WithUser`, `oci.WithAdditionalGIDs`) and runc's
//! `user.GetExecUser`:
//! - `""` is root (uid 0, gid 0);
//! - a numeric uid need not exist in `/etc/passwd`; its gid is the passwd entry's when there is
//!   one, else 0;
//! - a name must exist in `/etc/passwd` (else [`UserError::UnknownUser`]);
//! - `user:group` takes the group as a gid or a name from `/etc/group`;
//! - additional gids are the primary gid first (containerd's `ensureAdditionalGids`), then every
//!   group of `/etc/group` that lists the user's name as a member (CRI
//!   `SupplementalGroupsPolicy` Merge; skipped for Strict), then the CRI `supplemental_groups`.
//!
//! The parse functions are pure; [`read_in_root`] reads a file inside a rootfs without following a
//! symlink out of it.

use std::path::{Component, Path, PathBuf};

/// Errors resolving a user or group. Each names what was looked up and where.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    /// A user name is not in the image's `/etc/passwd`.
    #[error("user {name:?} not found in the image's /etc/passwd")]
    UnknownUser { name: String },
    /// A group name is not in the image's `/etc/group`.
    #[error("group {name:?} not found in the image's /etc/group")]
    UnknownGroup { name: String },
    /// A numeric id is out of range: negative, or above 2^31-1 (Kubernetes' API limit, and
    /// runc's, which keeps ids in a Go int32).
    #[error("{what} {value} is out of range: expected 0..=2147483647")]
    OutOfRange { what: &'static str, value: i64 },
    /// The user string has an empty part, e.g. `":100"` or `"1000:"`.
    #[error("user string {value:?} is malformed: expected name, uid, name:group or uid:gid")]
    Malformed { value: String },
}

/// One line of `/etc/passwd`: `name:password:uid:gid:gecos:home:shell`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// One line of `/etc/group`: `name:password:gid:member,member`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Parses `/etc/passwd` text. Comment lines (`#`), blank lines and malformed lines (fewer than
/// four fields, or a non-numeric uid/gid) are skipped, as libc's `getpwent` does.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].trim().parse().ok()?,
                gid: f[3].trim().parse().ok()?,
                home: f.get(5).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

/// Parses `/etc/group` text. Comment, blank and malformed lines are skipped.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            let members =
                f.get(3).map(|m| m.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()).unwrap_or_default();
            Some(GroupEntry { name: f[0].to_string(), gid: f[2].trim().parse().ok()?, members })
        })
        .collect()
}

/// A user given by name or by number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdRef {
    Id(u32),
    Name(String),
}

impl IdRef {
    fn parse(s: &str) -> IdRef {
        match s.parse::<u32>() {
            Ok(n) => IdRef::Id(n),
            Err(_) => IdRef::Name(s.to_string()),
        }
    }
}

/// What to resolve: a user and optionally a group overriding the user's primary group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRequest {
    pub user: IdRef,
    pub group: Option<IdRef>,
}

impl UserRequest {
    /// Parses an image config `User`: `""` (root), `name`, `uid`, `name:group`, `uid:gid`
    /// (image-spec config.md `User`).
    pub fn parse_image_user(s: &str) -> Result<UserRequest, UserError> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(UserRequest { user: IdRef::Id(0), group: None });
        }
        let (u, g) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        if u.is_empty() || g.is_some_and(str::is_empty) {
            return Err(UserError::Malformed { value: s.to_string() });
        }
        Ok(UserRequest { user: IdRef::parse(u), group: g.map(IdRef::parse) })
    }
}

/// Converts a CRI `Int64Value` id to a uid/gid (0..=2147483647), naming `what`
/// (`"run_as_user"`) on error.
pub fn id_from_i64(what: &'static str, value: i64) -> Result<u32, UserError> {
    match u32::try_from(value) {
        Ok(id) if id <= i32::MAX as u32 => Ok(id),
        _ => Err(UserError::OutOfRange { what, value }),
    }
}

/// The resolved identity: OCI runtime-spec `process.user`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Primary gid first, then memberships, then supplemental groups, without duplicates.
    pub additional_gids: Vec<u32>,
    /// The passwd name of `uid`, when it has an entry.
    pub username: Option<String>,
}

/// Resolves `req` against parsed `/etc/passwd` and `/etc/group`.
///
/// `merge_memberships` adds the groups listing the user as a member (CRI
/// `SupplementalGroupsPolicy` Merge); `supplemental` (CRI `supplemental_groups`) are appended.
pub fn resolve_user(
    req: &UserRequest,
    passwd: &[PasswdEntry],
    groups: &[GroupEntry],
    merge_memberships: bool,
    supplemental: &[u32],
) -> Result<ResolvedUser, UserError> {
    let (uid, mut gid, username) = match &req.user {
        IdRef::Id(uid) => match passwd.iter().find(|p| p.uid == *uid) {
            Some(p) => (*uid, p.gid, Some(p.name.clone())),
            None => (*uid, 0, None),
        },
        IdRef::Name(name) => match passwd.iter().find(|p| &p.name == name) {
            Some(p) => (p.uid, p.gid, Some(p.name.clone())),
            None => return Err(UserError::UnknownUser { name: name.clone() }),
        },
    };
    match &req.group {
        Some(IdRef::Id(g)) => gid = *g,
        Some(IdRef::Name(name)) => {
            gid = groups.iter().find(|g| &g.name == name).map(|g| g.gid).ok_or_else(|| UserError::UnknownGroup { name: name.clone() })?;
        }
        None => {}
    }
    let mut additional = vec![gid];
    if merge_memberships {
        if let Some(name) = &username {
            for g in groups.iter().filter(|g| g.members.iter().any(|m| m == name)) {
                if !additional.contains(&g.gid) {
                    additional.push(g.gid);
                }
            }
        }
    }
    for g in supplemental {
        if !additional.contains(g) {
            additional.push(*g);
        }
    }
    Ok(ResolvedUser { uid, gid, additional_gids: additional, username })
}

/// Resolves `rel` (e.g. `etc/passwd`) inside `root` the way a chroot would see it: symlinks are
/// followed but absolute targets restart at `root` and `..` never climbs above it (the idea of
/// Go's `securejoin`). At most 40 symlinks are followed. Returns the host path.
pub fn scoped_path(root: &Path, rel: &Path) -> std::io::Result<PathBuf> {
    let mut parts: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    // Components still to walk, left to right; a symlink's target is pushed in front.
    let mut queue: std::collections::VecDeque<std::ffi::OsString> = std::collections::VecDeque::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => queue.push_back(n.to_os_string()),
            Component::ParentDir => queue.push_back("..".into()),
            _ => {}
        }
    }
    while let Some(c) = queue.pop_front() {
        if c == ".." {
            parts.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&parts);
        candidate.push(&c);
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(std::io::Error::other(format!("too many symlinks resolving {} in {}", rel.display(), root.display())));
                }
                let target = std::fs::read_link(&candidate)?;
                if target.is_absolute() {
                    parts.clear();
                }
                let mut front: Vec<std::ffi::OsString> = Vec::new();
                for tc in target.components() {
                    match tc {
                        Component::Normal(n) => front.push(n.to_os_string()),
                        Component::ParentDir => front.push("..".into()),
                        _ => {}
                    }
                }
                for f in front.into_iter().rev() {
                    queue.push_front(f);
                }
            }
            _ => parts.push(c),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&parts);
    Ok(out)
}

/// Reads `rel` inside `root` (see [`scoped_path`]); a missing file reads as empty text, since
/// images without `/etc/passwd` are common and then only numeric users resolve.
pub fn read_in_root(root: &Path, rel: &str) -> std::io::Result<String> {
    let p = scoped_path(root, Path::new(rel))?;
    match std::fs::read(&p) {
        Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n# comment\n\nnobody:x:65534:65534::/:/bin/false\n\
                          alice:x:1000:1000:Alice:/home/alice:/bin/sh\nbroken:x:zz:1\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:root,alice\nusers:x:100:alice, bob\nalice:x:1000:\n";

    fn resolve(s: &str) -> Result<ResolvedUser, UserError> {
        let req = UserRequest::parse_image_user(s)?;
        resolve_user(&req, &parse_passwd(PASSWD), &parse_group(GROUP), true, &[])
    }

    #[test]
    fn parses_passwd_and_group() {
        let p = parse_passwd(PASSWD);
        assert_eq!(p.len(), 3);
        assert_eq!(p[2], PasswdEntry { name: "alice".into(), uid: 1000, gid: 1000, home: "/home/alice".into() });
        let g = parse_group(GROUP);
        assert_eq!(g[2].members, vec!["alice".to_string(), "bob".to_string()]);
        assert!(g[0].members.is_empty());
    }

    #[test]
    fn image_user_forms() {
        let r = resolve("").unwrap();
        assert_eq!((r.uid, r.gid, r.additional_gids), (0, 0, vec![0, 10]));
        let r = resolve("alice").unwrap();
        assert_eq!((r.uid, r.gid), (1000, 1000));
        assert_eq!(r.additional_gids, vec![1000, 10, 100]);
        assert_eq!(r.username.as_deref(), Some("alice"));
        let r = resolve("1000").unwrap();
        assert_eq!((r.uid, r.gid), (1000, 1000));
        let r = resolve("4242").unwrap();
        assert_eq!((r.uid, r.gid, r.additional_gids, r.username), (4242, 0, vec![0], None));
        let r = resolve("alice:users").unwrap();
        assert_eq!((r.uid, r.gid), (1000, 100));
        assert_eq!(r.additional_gids, vec![100, 10]);
        let r = resolve("4242:77").unwrap();
        assert_eq!((r.uid, r.gid, r.additional_gids), (4242, 77, vec![77]));
        let r = resolve("nobody:wheel").unwrap();
        assert_eq!((r.uid, r.gid), (65534, 10));
    }

    #[test]
    fn unknown_names_are_errors() {
        assert_eq!(resolve("mallory"), Err(UserError::UnknownUser { name: "mallory".into() }));
        assert_eq!(resolve("alice:staff"), Err(UserError::UnknownGroup { name: "staff".into() }));
        assert!(matches!(resolve(":10"), Err(UserError::Malformed { .. })));
        assert!(matches!(resolve("alice:"), Err(UserError::Malformed { .. })));
        assert!(id_from_i64("run_as_user", -1).is_err());
        assert_eq!(id_from_i64("run_as_user", 7), Ok(7));
        assert_eq!(id_from_i64("run_as_user", 2_147_483_647), Ok(2_147_483_647));
        assert!(id_from_i64("run_as_user", 2_147_483_648).is_err());
        assert!(id_from_i64("run_as_user", 4_294_967_294).is_err());
    }

    #[test]
    fn strict_policy_and_supplemental_groups() {
        let req = UserRequest { user: IdRef::Name("alice".into()), group: None };
        let r = resolve_user(&req, &parse_passwd(PASSWD), &parse_group(GROUP), false, &[5, 1000, 6]).unwrap();
        assert_eq!(r.additional_gids, vec![1000, 5, 6]);
    }

    #[test]
    fn scoped_path_keeps_symlinks_inside_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::write(root.join("real/passwd"), "x:x:5:5::/:\n").unwrap();
        std::os::unix::fs::symlink("/real/passwd", root.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("../../../../etc/shadow", root.join("etc/group")).unwrap();
        let p = scoped_path(root, Path::new("etc/passwd")).unwrap();
        assert_eq!(p, root.join("real/passwd"));
        assert_eq!(read_in_root(root, "etc/passwd").unwrap(), "x:x:5:5::/:\n");
        // The escape attempt lands at <root>/etc/shadow, which does not exist.
        assert_eq!(scoped_path(root, Path::new("etc/group")).unwrap(), root.join("etc/shadow"));
        assert_eq!(read_in_root(root, "etc/group").unwrap(), "");
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert!(scoped_path(root, Path::new("loop")).is_err());
    }
}
