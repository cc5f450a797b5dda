//! Pinned network namespaces, as `ip netns add` / CRI-O's pinns make them: an empty file under
//! the netns dir with the namespace bind-mounted onto it, so the namespace outlives every process.
//!
//! The netns dir is made a shared mount point the way `ip netns` does (bind-mounted onto itself
//! once, then `MS_SHARED`), so a later unmount propagates into the mount namespaces that hold a
//! peer or slave copy of the pin. Copies in private mount namespaces are detached by the unlink
//! of [`remove`] (since Linux 3.18 unlinking a file detaches the mounts on it in every mount
//! namespace), so the namespace really dies on [`remove`]. A dir that is already a mount point
//! is left as its owner set it up.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use super::types::NetworkError;

/// The dirs made (or found) shared mount points so far; the lock serialises the "is the dir a
/// mount point yet" check so two creates never stack bind mounts.
static DIR_SETUP: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

fn sys_err<'a>(path: &'a Path, syscall: &'static str) -> impl FnOnce(nix::Error) -> NetworkError + 'a {
    move |e| NetworkError::Netns { path: path.to_path_buf(), syscall, source: std::io::Error::from(e) }
}

fn io_err<'a>(path: &'a Path, syscall: &'static str) -> impl FnOnce(std::io::Error) -> NetworkError + 'a {
    move |source| NetworkError::Netns { path: path.to_path_buf(), syscall, source }
}

/// Creates and pins a new network namespace at `dir/name` and returns that path.
///
/// Steps: create `dir` (0755), make it a shared mount point (see the module docs), create the
/// empty file `dir/name` (it must not exist), then in a fresh thread `unshare(CLONE_NEWNET)`,
/// bring `lo` up ([`loopback_up`], what the CNI `loopback` plugin's ADD does) and bind-mount
/// `/proc/thread-self/ns/net` onto the file. On failure nothing is left behind.
/// Errors: [`NetworkError::Netns`] naming the path and the failing syscall (`mkdir`, `open`
/// (EEXIST when the name is taken), `unshare`, `netlink(RTM_NEWLINK lo up)`, `mount`,
/// `mount(MS_SHARED)`).
pub fn create(dir: &Path, name: &str) -> Result<PathBuf, NetworkError> {
    let path = pin_file(dir, name)?;
    let target = path.clone();
    let pinned = on_own_thread(&path, "berth-netns", move || {
        unshare(CloneFlags::CLONE_NEWNET).map_err(sys_err(&target, "unshare(CLONE_NEWNET)"))?;
        loopback_up().map_err(io_err(&target, "netlink(RTM_NEWLINK lo up)"))?;
        mount(Some("/proc/thread-self/ns/net"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(sys_err(&target, "mount(MS_BIND)"))
    });
    if let Err(e) = pinned {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Pins the network namespace of process `pid` (`/proc/<pid>/ns/net`) at `dir/name` and returns
/// that path: the same file and shared dir as [`create`], for a namespace someone else made (the
/// OCI runtime, for a pod with its own user namespace: the netns must be owned by the pod's user
/// namespace, so runc creates it inside that namespace and berth pins it for CNI and teardown).
/// Its `lo` is brought up as in [`create`], from a thread that joins it.
/// Errors: [`NetworkError::Netns`] naming the path and `mkdir`, `open`, `mount(MS_BIND)` (ENOENT
/// when the process is gone), `setns` or `netlink(RTM_NEWLINK lo up)`; on failure nothing is
/// left behind.
pub fn pin(dir: &Path, name: &str, pid: i32) -> Result<PathBuf, NetworkError> {
    let path = pin_file(dir, name)?;
    let source = format!("/proc/{pid}/ns/net");
    if let Err(e) = mount(Some(source.as_str()), &path, None::<&str>, MsFlags::MS_BIND, None::<&str>) {
        let _ = std::fs::remove_file(&path);
        return Err(sys_err(&path, "mount(MS_BIND)")(e));
    }
    let up = in_netns(&path, "berth-netns-lo", |p| loopback_up().map_err(io_err(p, "netlink(RTM_NEWLINK lo up)")));
    if let Err(e) = up {
        let _ = remove(&path);
        return Err(e);
    }
    Ok(path)
}

/// The interface index of `lo` in every network namespace: the kernel registers the loopback
/// device first, with the fixed index `LOOPBACK_IFINDEX` (include/net/net_namespace.h).
const LOOPBACK_IFINDEX: i32 = 1;

/// Brings up `lo` in the calling thread's network namespace, as the CNI `loopback` plugin's ADD
/// (and `ip link set lo up`) does: one rtnetlink `RTM_NEWLINK` request for index 1 with
/// `ifi_flags = ifi_change = IFF_UP`, and its acknowledgement (rtnetlink(7)). The kernel gives
/// `lo` 127.0.0.1/8 and ::1/128 itself when it comes up. Errors: the failing syscall's errno, or
/// the error the kernel acknowledged with.
fn loopback_up() -> std::io::Result<()> {
    use nix::sys::socket::{recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType};
    use std::os::fd::AsRawFd;
    let fd = socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkRoute)?;
    const LEN: u32 = 16 + 16; // struct nlmsghdr + struct ifinfomsg
    let mut msg = Vec::with_capacity(LEN as usize);
    // nlmsghdr: length, type, flags, sequence number, port id (0: the kernel).
    msg.extend_from_slice(&LEN.to_ne_bytes());
    msg.extend_from_slice(&libc::RTM_NEWLINK.to_ne_bytes());
    msg.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // ifinfomsg: family AF_UNSPEC, padding, device type, index, flags, change mask.
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]);
    msg.extend_from_slice(&0u16.to_ne_bytes());
    msg.extend_from_slice(&LOOPBACK_IFINDEX.to_ne_bytes());
    msg.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
    msg.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
    sendto(fd.as_raw_fd(), &msg, &NetlinkAddr::new(0, 0), MsgFlags::empty())?;
    let mut buf = [0u8; 512];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
    // The answer is an NLMSG_ERROR message: its first field after the header is 0 for an ack,
    // else a negative errno.
    let field = |at: usize, len: usize| buf.get(at..at + len).filter(|_| at + len <= n);
    let kind = field(4, 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let code = field(16, 4).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    match (kind, code) {
        (Some(k), Some(0)) if k == libc::NLMSG_ERROR as u16 => Ok(()),
        (Some(k), Some(c)) if k == libc::NLMSG_ERROR as u16 => Err(std::io::Error::from_raw_os_error(-c)),
        _ => Err(std::io::Error::other(format!("unexpected rtnetlink answer ({n} bytes, type {kind:?})"))),
    }
}

/// Checks `name`, prepares `dir` (created, shared mount point) and creates the empty pin file.
pub fn pin_file(dir: &Path, name: &str) -> Result<PathBuf, NetworkError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(NetworkError::Netns {
            path: dir.join(name),
            syscall: "open",
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "namespace name must be a non-empty file name"),
        });
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir, "mkdir"))?;
    make_shared_mount_point(dir)?;
    let path = dir.join(name);
    std::fs::OpenOptions::new().write(true).create_new(true).open(&path).map_err(io_err(&path, "open"))?;
    Ok(path)
}

/// Opens a TCP connection to `127.0.0.1:port` inside the network namespace pinned at `netns`
/// (CRI PortForward: "the port inside the pod's network namespace"). The socket is created by a
/// short-lived thread that `setns(CLONE_NEWNET)`s into the namespace first; a socket keeps the
/// namespace it was created in, so the returned stream talks inside the pod while the daemon's
/// own threads never change namespace. Blocking: call it from `spawn_blocking`.
/// Errors: [`NetworkError::Netns`] naming the path and `open`, `setns` or `connect` (ECONNREFUSED
/// when nothing listens on the port).
pub fn connect_tcp(netns: &Path, port: u16) -> Result<std::net::TcpStream, NetworkError> {
    in_netns(netns, "berth-netns-dial", move |p| {
        std::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port)).map_err(io_err(p, "connect"))
    })
}

/// Reads `/proc/thread-self/net/<file>` (e.g. `dev`, the per-interface counters) as seen from
/// inside the network namespace pinned at `netns`: for a pod without an infra process, whose
/// `/proc/<pid>/net` no process offers. A short-lived thread `setns(CLONE_NEWNET)`s into the
/// namespace, reads and ends; the daemon's own threads never change namespace. Blocking (about
/// 0.1 ms). Errors: [`NetworkError::Netns`] naming the path and `open`, `setns` or `read`.
pub fn read_proc_net(netns: &Path, file: &'static str) -> Result<String, NetworkError> {
    in_netns(netns, "berth-netns-read", move |p| {
        std::fs::read_to_string(format!("/proc/thread-self/net/{file}")).map_err(io_err(p, "read"))
    })
}

/// Runs `f` on a fresh thread named `name` and returns its result. The thread ends with `f`, so
/// a namespace it joined or made never reaches any other work of the daemon. Errors: `f`'s, or
/// [`NetworkError::Netns`] naming `path` and `clone(thread)` / `thread` (it panicked).
fn on_own_thread<T: Send + 'static>(
    path: &Path,
    name: &str,
    f: impl FnOnce() -> Result<T, NetworkError> + Send + 'static,
) -> Result<T, NetworkError> {
    std::thread::Builder::new().name(name.into()).spawn(f).map_err(io_err(path, "clone(thread)"))?.join().unwrap_or_else(|_| {
        Err(NetworkError::Netns { path: path.to_path_buf(), syscall: "thread", source: std::io::Error::other(format!("{name} panicked")) })
    })
}

/// [`on_own_thread`], with the thread in the network namespace pinned at `netns` first (`open`,
/// `setns(CLONE_NEWNET)`); `f` gets the path for its errors.
fn in_netns<T: Send + 'static>(
    netns: &Path,
    name: &str,
    f: impl FnOnce(&Path) -> Result<T, NetworkError> + Send + 'static,
) -> Result<T, NetworkError> {
    let path = netns.to_path_buf();
    on_own_thread(netns, name, move || {
        let ns = std::fs::File::open(&path).map_err(io_err(&path, "open"))?;
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(sys_err(&path, "setns(CLONE_NEWNET)"))?;
        f(&path)
    })
}

/// Unpins and deletes a namespace made by [`create`]: `umount2(path, MNT_DETACH)` then unlink.
/// Idempotent: a missing file or a file that is not mounted is fine.
/// Errors: [`NetworkError::Netns`] naming the path and `umount2` or `unlink`.
pub fn remove(path: &Path) -> Result<(), NetworkError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::ENOENT) | Err(nix::Error::EINVAL) => {}
        Err(e) => return Err(sys_err(path, "umount2(MNT_DETACH)")(e)),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path, "unlink")(e)),
    }
}

/// Whether `path` is pinned, i.e. an nsfs namespace file is mounted on it (`statfs(2)` says
/// `NSFS_MAGIC`; a file left after its namespace was unmounted, or after a reboot, says the
/// filesystem it lies on). A missing path is not pinned.
pub fn is_pinned(path: &Path) -> bool {
    matches!(nix::sys::statfs::statfs(path), Ok(st) if st.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Makes `dir` a shared mount point as `ip netns` does, unless it already is a mount point.
/// Each dir is looked up in mountinfo once per process (the daemon keeps its dirs set up).
fn make_shared_mount_point(dir: &Path) -> Result<(), NetworkError> {
    let mut ready = DIR_SETUP.lock().unwrap_or_else(|p| p.into_inner());
    let canon = std::fs::canonicalize(dir).map_err(io_err(dir, "realpath"))?;
    if ready.contains(&canon) {
        return Ok(());
    }
    if mount_points().iter().any(|(p, _)| *p == canon) {
        ready.insert(canon);
        return Ok(());
    }
    mount(Some(&canon), &canon, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>).map_err(sys_err(dir, "mount(MS_BIND)"))?;
    if let Err(e) = mount(None::<&str>, &canon, None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>) {
        let _ = umount2(&canon, MntFlags::MNT_DETACH);
        return Err(sys_err(dir, "mount(MS_SHARED)")(e));
    }
    ready.insert(canon);
    Ok(())
}

/// `(mount point, fstype)` of every line of /proc/self/mountinfo, octal escapes (`\040`) decoded.
fn mount_points() -> Vec<(PathBuf, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let mp = f.nth(4)?;
            let fstype = l.split(" - ").nth(1)?.split(' ').next()?;
            Some((PathBuf::from(crate::mountinfo::unescape(mp)), fstype.to_string()))
        })
        .collect()
}

/// Undoes the shared self-bind of a netns dir made by [`create`] (tests and `berth` cleanup).
/// Only unmounts when `dir` is a bind mount of itself; missing or not mounted is Ok.
pub fn release_dir(dir: &Path) -> Result<(), NetworkError> {
    if let Ok(canon) = std::fs::canonicalize(dir) {
        DIR_SETUP.lock().unwrap_or_else(|p| p.into_inner()).remove(&canon);
    }
    match umount2(dir, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::ENOENT) | Err(nix::Error::EINVAL) => Ok(()),
        Err(e) => Err(sys_err(dir, "umount2(MNT_DETACH)")(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_octal() {
        assert_eq!(crate::mountinfo::unescape("/a\\040b"), "/a b");
        assert_eq!(crate::mountinfo::unescape("/plain"), "/plain");
        assert_eq!(crate::mountinfo::unescape("/x\\04"), "/x\\04");
    }

    #[test]
    fn connect_tcp_dials_inside_the_namespace() {
        if !is_root() {
            eprintln!("skipping connect_tcp_dials_inside_the_namespace: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ns = create(dir.path(), "dial").unwrap();
        // Nothing listens inside the new namespace (its lo is up): refused.
        let e = connect_tcp(&ns, 1).unwrap_err().to_string();
        assert!(e.contains("connect"), "{e}");
        // A listener in the namespace, made the same way, is reached.
        let ns2 = ns.clone();
        let listener = std::thread::spawn(move || {
            let f = std::fs::File::open(&ns2).unwrap();
            nix::sched::setns(&f, CloneFlags::CLONE_NEWNET).unwrap();
            std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap()
        })
        .join()
        .unwrap();
        let port = listener.local_addr().unwrap().port();
        let accept = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            std::io::Write::write_all(&mut s, b"inside").unwrap();
        });
        let mut c = connect_tcp(&ns, port).unwrap();
        let mut got = String::new();
        std::io::Read::read_to_string(&mut c, &mut got).unwrap();
        accept.join().unwrap();
        assert_eq!(got, "inside");
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err() || port_taken_on_host(port));
        remove(&ns).unwrap();
        release_dir(dir.path()).unwrap();
    }

    fn port_taken_on_host(port: u16) -> bool {
        std::net::TcpListener::bind(("127.0.0.1", port)).is_err()
    }

    #[test]
    fn rejects_bad_names() {
        assert!(create(Path::new("/nonexistent-berth"), "a/b").is_err());
        assert!(create(Path::new("/nonexistent-berth"), "").is_err());
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn create_pin_and_remove_as_root() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("netns");
        let p = create(&dir, "t1").unwrap();
        assert!(is_pinned(&p));
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        assert_ne!(ino(&p), ino(Path::new("/proc/self/ns/net")), "a new namespace, not ours");
        let lo = std::process::Command::new("nsenter")
            .arg(format!("--net={}", p.display()))
            .args(["ip", "-o", "link", "show", "lo"])
            .output()
            .unwrap();
        let lo = String::from_utf8_lossy(&lo.stdout);
        assert!(lo.contains("<LOOPBACK,UP,LOWER_UP>"), "lo of a new namespace is up: {lo}");
        let p2 = create(&dir, "t2").unwrap();
        assert_ne!(ino(&p), ino(&p2));
        assert!(matches!(create(&dir, "t1"), Err(NetworkError::Netns { syscall: "open", .. })));
        remove(&p).unwrap();
        remove(&p).unwrap();
        remove(&p2).unwrap();
        assert!(!p.exists() && !p2.exists());
        release_dir(&dir).unwrap();
        let canon = std::fs::canonicalize(&dir).unwrap();
        assert!(!mount_points().iter().any(|(m, _)| m.starts_with(&canon)), "nothing mounted under {}", canon.display());
    }
}
