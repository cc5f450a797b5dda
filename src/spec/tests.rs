//! Unit tests of spec generation (no root needed; temp dirs only).

use super::*;
use crate::image::ImageRuntimeConfig;
use oci_spec::runtime::LinuxNamespaceType;

pub(super) struct Fixture {
    pub(super) dir: tempfile::TempDir,
    pod: cri::PodSandboxConfig,
    netns: Option<PathBuf>,
    shm: Option<PathBuf>,
    userns: Option<crate::spec::userns::PodUserns>,
    /// A pod without an infra process: its IPC and UTS namespaces pinned at these files.
    pinned: Option<(Option<PathBuf>, Option<PathBuf>)>,
}

impl Fixture {
    pub(super) fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33::/var/www:/bin/sh\n").unwrap();
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\nwww:x:33:\nadm:x:4:www\n").unwrap();
        let pod = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata { name: "web".into(), uid: "uid-1".into(), namespace: "default".into(), attempt: 0 }),
            linux: Some(cri::LinuxPodSandboxConfig {
                sysctls: [("net.ipv4.ip_unprivileged_port_start".to_string(), "0".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        Fixture {
            pod,
            netns: Some(PathBuf::from("/var/run/netns/pod1")),
            shm: Some(dir.path().join("shm")),
            userns: None,
            pinned: None,
            dir,
        }
    }

    fn sb(&self) -> SandboxContext<'_> {
        SandboxContext {
            sandbox_id: "sb1",
            config: &self.pod,
            netns_path: self.netns.as_deref(),
            namespaces: match &self.pinned {
                None => crate::spec::PodNamespaces::Infra(4242),
                Some((ipc, uts)) => crate::spec::PodNamespaces::Pinned { ipc: ipc.as_deref(), uts: uts.as_deref() },
            },
            hostname: "web-host",
            hosts_file: Path::new("/run/berth/sb1/hosts"),
            resolv_conf: Path::new("/run/berth/sb1/resolv.conf"),
            hostname_file: Path::new("/run/berth/sb1/hostname"),
            shm_path: self.shm.as_deref(),
            cgroup_parent: "/kubepods/pod-uid-1",
            userns: self.userns.as_ref(),
        }
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }
}

pub(super) fn host() -> HostFacts {
    HostFacts {
        capabilities: capabilities_from_mask(0x1fffeffffff), // all but CAP_SYS_RESOURCE
        nofile_hard: 20000,
        hugetlb_v1: false,
        cgroup_v2: false,
    }
}

pub(super) fn image() -> ImageRuntimeConfig {
    ImageRuntimeConfig {
        entrypoint: vec!["/entry".into()],
        cmd: vec!["serve".into(), "--port=80".into()],
        env: vec!["PATH=/opt/bin:/bin".into(), "LANG=C".into()],
        working_dir: "/srv".into(),
        ..Default::default()
    }
}

pub(super) fn config() -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: "app".into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: "example/app:1".into(), ..Default::default() }),
        annotations: [("a.b/c".to_string(), "d".to_string())].into(),
        ..Default::default()
    }
}

pub(super) fn build(f: &Fixture, cfg: &cri::ContainerConfig, img: &ImageRuntimeConfig) -> Result<Spec, SpecError> {
    let rootfs = f.rootfs();
    let c = ContainerContext {
        container_id: "c1",
        config: cfg,
        image: img,
        rootfs: &rootfs,
        own_oom_score_adj: 0,
        pid_target: None,
        features: &Default::default(),
    };
    container_spec_with(&f.sb(), &c, &host())
}

pub(super) fn sec(cfg: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerSecurityContext {
    cfg.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default)
}

fn args_of(cmd: &[&str], args: &[&str], ep: &[&str], imgcmd: &[&str]) -> Option<Vec<String>> {
    let cfg = cri::ContainerConfig {
        command: cmd.iter().map(|s| s.to_string()).collect(),
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let img = ImageRuntimeConfig {
        entrypoint: ep.iter().map(|s| s.to_string()).collect(),
        cmd: imgcmd.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    resolve_args(&cfg, &img)
}

fn v(x: &[&str]) -> Option<Vec<String>> {
    Some(x.iter().map(|s| s.to_string()).collect())
}

#[test]
fn command_and_args_follow_docker_rules() {
    assert_eq!(args_of(&[], &[], &["/ep"], &["c1"]), v(&["/ep", "c1"]));
    assert_eq!(args_of(&["/cmd"], &[], &["/ep"], &["c1"]), v(&["/cmd"]));
    assert_eq!(args_of(&["/cmd"], &["a"], &["/ep"], &["c1"]), v(&["/cmd", "a"]));
    assert_eq!(args_of(&[], &["a", "b"], &["/ep"], &["c1"]), v(&["/ep", "a", "b"]));
    assert_eq!(args_of(&[], &["a"], &[], &["c1"]), v(&["a"]));
    assert_eq!(args_of(&[], &[], &[], &["c1"]), v(&["c1"]));
    assert_eq!(args_of(&[], &[], &[], &[]), None);
    let f = Fixture::new();
    let err = build(&f, &config(), &ImageRuntimeConfig::default()).unwrap_err();
    assert!(matches!(err, SpecError::NoCommand { ref container } if container == "c1"), "{err}");
}

#[test]
fn env_merges_later_wins_in_place() {
    let env = merge_env(
        "h1",
        &["PATH=/opt/bin".into(), "A=1".into(), "HOSTNAME=img".into()],
        &[cri::KeyValue { key: "A".into(), value: "2".into() }, cri::KeyValue { key: "B".into(), value: "x=y".into() }],
    );
    assert_eq!(env, vec!["PATH=/opt/bin", "HOSTNAME=img", "A=2", "B=x=y"]);
    let env = merge_env("h1", &[], &[]);
    assert_eq!(env, vec![DEFAULT_PATH_ENV.to_string(), "HOSTNAME=h1".to_string()]);
}

#[test]
fn process_fields() {
    let f = Fixture::new();
    let mut cfg = config();
    cfg.tty = true;
    cfg.envs.push(cri::KeyValue { key: "LANG".into(), value: "en".into() });
    let spec = build(&f, &cfg, &image()).unwrap();
    let p = spec.process().as_ref().unwrap();
    assert_eq!(p.args().as_ref().unwrap(), &vec!["/entry", "serve", "--port=80"]);
    assert_eq!(p.env().as_ref().unwrap(), &vec!["PATH=/opt/bin:/bin", "HOSTNAME=web-host", "LANG=en"]);
    assert_eq!(p.cwd(), Path::new("/srv"));
    assert_eq!(p.terminal(), Some(true));
    assert_eq!(p.user().uid(), 0);
    assert_eq!(p.user().additional_gids().as_ref().unwrap(), &vec![0]);
    assert_eq!(p.no_new_privileges(), Some(false));
    let rl = &p.rlimits().as_ref().unwrap()[0];
    assert_eq!((rl.typ(), rl.hard(), rl.soft()), (PosixRlimitType::RlimitNofile, 20000, 20000));
    cfg.working_dir = "/work".into();
    let spec = build(&f, &cfg, &image()).unwrap();
    assert_eq!(spec.process().as_ref().unwrap().cwd(), Path::new("/work"));
    assert_eq!(resolve_cwd("", ""), Path::new("/"));
    assert_eq!(nofile_rlimit(u64::MAX).unwrap().hard(), DEFAULT_NOFILE);
}

#[test]
fn user_from_image_and_security_context() {
    let f = Fixture::new();
    let mut img = image();
    img.user = "www".into();
    let spec = build(&f, &config(), &img).unwrap();
    let u = spec.process().as_ref().unwrap().user().clone();
    assert_eq!((u.uid(), u.gid()), (33, 33));
    assert_eq!(u.additional_gids().as_ref().unwrap(), &vec![33, 4]);

    let mut cfg = config();
    sec(&mut cfg).run_as_user = Some(cri::Int64Value { value: 1234 });
    sec(&mut cfg).run_as_group = Some(cri::Int64Value { value: 5678 });
    sec(&mut cfg).supplemental_groups = vec![9, 10];
    let u = build(&f, &cfg, &img).unwrap().process().as_ref().unwrap().user().clone();
    assert_eq!((u.uid(), u.gid()), (1234, 5678));
    assert_eq!(u.additional_gids().as_ref().unwrap(), &vec![5678, 9, 10]);

    let mut cfg = config();
    sec(&mut cfg).run_as_username = "nosuch".into();
    let err = build(&f, &cfg, &img).unwrap_err();
    assert!(err.to_string().contains("\"nosuch\""), "{err}");
    assert!(err.to_string().contains("container c1"), "{err}");
}

#[test]
fn capabilities_default_add_drop_all_privileged() {
    let f = Fixture::new();
    let caps_of = |cfg: &cri::ContainerConfig| -> Capabilities {
        build(&f, cfg, &image()).unwrap().process().as_ref().unwrap().capabilities().as_ref().unwrap().bounding().clone().unwrap()
    };
    let mut cfg = config();
    let default: Capabilities = DEFAULT_CAPABILITIES.iter().copied().collect();
    assert_eq!(caps_of(&cfg), default);

    sec(&mut cfg).capabilities = Some(cri::Capability {
        add_capabilities: vec!["NET_ADMIN".into(), "CAP_SYS_TIME".into()],
        drop_capabilities: vec!["KILL".into()],
        add_ambient_capabilities: vec![],
    });
    let c = caps_of(&cfg);
    assert!(c.contains(&Capability::NetAdmin) && c.contains(&Capability::SysTime));
    assert!(!c.contains(&Capability::Kill));

    sec(&mut cfg).capabilities = Some(cri::Capability {
        add_capabilities: vec!["CHOWN".into()],
        drop_capabilities: vec!["ALL".into()],
        add_ambient_capabilities: vec![],
    });
    assert_eq!(caps_of(&cfg), [Capability::Chown].into_iter().collect());

    sec(&mut cfg).capabilities =
        Some(cri::Capability { add_capabilities: vec!["ALL".into()], drop_capabilities: vec![], add_ambient_capabilities: vec![] });
    let all = caps_of(&cfg);
    assert_eq!(all.len(), 40);
    assert!(!all.contains(&Capability::SysResource), "never more than the daemon holds");

    sec(&mut cfg).capabilities = Some(cri::Capability { add_capabilities: vec!["BOGUS".into()], ..Default::default() });
    assert!(matches!(build(&f, &cfg, &image()), Err(SpecError::UnknownCapability { .. })));

    let mut cfg = config();
    sec(&mut cfg).privileged = true;
    sec(&mut cfg).no_new_privs = true;
    let spec = build(&f, &cfg, &image()).unwrap();
    let p = spec.process().as_ref().unwrap();
    assert_eq!(p.capabilities().as_ref().unwrap().effective().as_ref().unwrap().len(), 40);
    assert_eq!(p.no_new_privileges(), Some(false));
    let l = spec.linux().as_ref().unwrap();
    assert!(l.masked_paths().as_ref().unwrap().is_empty());
    assert!(l.readonly_paths().as_ref().unwrap().is_empty());
    let sys = spec.mounts().as_ref().unwrap().iter().find(|m| m.destination() == Path::new("/sys")).unwrap();
    assert!(sys.options().as_ref().unwrap().contains(&"rw".to_string()));
}

#[test]
fn oom_score_adj_is_clamped_to_own() {
    assert_eq!(clamp_oom_score_adj(-997, 0), 0);
    assert_eq!(clamp_oom_score_adj(1000, 0), 1000);
    assert_eq!(clamp_oom_score_adj(-997, -999), -997);
    assert_eq!(clamp_oom_score_adj(5000, -5), 1000);
    let f = Fixture::new();
    let mut cfg = config();
    cfg.linux.get_or_insert_with(Default::default).resources =
        Some(cri::LinuxContainerResources { oom_score_adj: -500, ..Default::default() });
    let spec = build(&f, &cfg, &image()).unwrap();
    assert_eq!(spec.process().as_ref().unwrap().oom_score_adj(), Some(0));
    let infra = infra_spec_with(&f.sb(), Path::new("/pause"), "sb1", 0).unwrap();
    assert_eq!(infra.process().as_ref().unwrap().oom_score_adj(), Some(0));
    let infra = infra_spec_with(&f.sb(), Path::new("/pause"), "sb1", -1000).unwrap();
    assert_eq!(infra.process().as_ref().unwrap().oom_score_adj(), Some(-998));
}

fn dests(spec: &Spec) -> Vec<String> {
    spec.mounts().as_ref().unwrap().iter().map(|m| m.destination().display().to_string()).collect()
}

fn find<'a>(spec: &'a Spec, dest: &str) -> &'a oci_spec::runtime::Mount {
    spec.mounts().as_ref().unwrap().iter().find(|m| m.destination() == Path::new(dest)).unwrap()
}

fn opts(m: &oci_spec::runtime::Mount) -> Vec<String> {
    m.options().clone().unwrap_or_default()
}

#[test]
fn mounts_order_flags_propagation_overrides() {
    let f = Fixture::new();
    // HOST_TO_CONTAINER and BIDIRECTIONAL need the source on a shared mount (checked on the
    // host): make the fixture dir one for the length of the test.
    let _shared = SharedMount::new(f.dir.path());
    let host_a = f.dir.path().join("vol-a");
    let host_b = f.dir.path().join("missing/vol-b"); // created on demand
    std::fs::create_dir_all(&host_a).unwrap();
    let mut cfg = config();
    cfg.mounts = vec![
        cri::Mount {
            container_path: "/data/sub".into(),
            host_path: host_b.display().to_string(),
            propagation: cri::MountPropagation::PropagationHostToContainer as i32,
            ..Default::default()
        },
        cri::Mount { container_path: "/data/".into(), host_path: host_a.display().to_string(), readonly: true, ..Default::default() },
        cri::Mount { container_path: "/etc/hosts".into(), host_path: host_a.display().to_string(), ..Default::default() },
    ];
    let spec = build(&f, &cfg, &image()).unwrap();
    assert!(host_b.is_dir());
    assert_eq!(
        dests(&spec),
        vec![
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
            "/dev/shm",
            "/etc/resolv.conf",
            "/etc/hostname",
            "/data",
            "/data/sub",
            "/etc/hosts"
        ]
    );
    let data = find(&spec, "/data");
    assert_eq!(data.typ().as_deref(), Some("bind"));
    assert_eq!(data.source().as_deref(), Some(host_a.canonicalize().unwrap().as_path()));
    assert_eq!(opts(data), vec!["rbind", "rprivate", "ro"]);
    assert_eq!(opts(find(&spec, "/data/sub")), vec!["rbind", "rslave", "rw"]);
    assert_eq!(find(&spec, "/etc/hosts").source().as_deref(), Some(host_a.canonicalize().unwrap().as_path()));
    assert_eq!(find(&spec, "/dev/shm").source().as_deref(), f.shm.as_deref());
    assert_eq!(opts(find(&spec, "/etc/resolv.conf")), vec!["rbind", "rprivate", "rw"]);
    assert_eq!(opts(find(&spec, "/sys")), vec!["nosuid", "noexec", "nodev", "ro"]);
    assert!(opts(find(&spec, "/dev/pts")).contains(&"ptmxmode=0666".to_string()));
    assert_eq!(spec.linux().as_ref().unwrap().rootfs_propagation().as_deref(), Some("rslave"));

    cfg.mounts[0].propagation = cri::MountPropagation::PropagationBidirectional as i32;
    let spec = build(&f, &cfg, &image()).unwrap();
    assert_eq!(opts(find(&spec, "/data/sub")), vec!["rbind", "rshared", "rw"]);
    assert_eq!(spec.linux().as_ref().unwrap().rootfs_propagation().as_deref(), Some("rshared"));

    // A CRI /dev replaces every default mount below /dev.
    cfg.mounts = vec![cri::Mount { container_path: "/dev".into(), host_path: "/dev".into(), ..Default::default() }];
    let d = dests(&build(&f, &cfg, &image()).unwrap());
    assert_eq!(d.iter().filter(|x| x.starts_with("/dev")).count(), 1);

    cfg.mounts = vec![cri::Mount { container_path: "rel".into(), host_path: "/tmp".into(), ..Default::default() }];
    assert!(matches!(build(&f, &cfg, &image()), Err(SpecError::InvalidMount { .. })));
    cfg.mounts = vec![cri::Mount {
        container_path: "/x".into(),
        host_path: "/tmp".into(),
        recursive_read_only: true,
        readonly: true,
        ..Default::default()
    }];
    assert!(matches!(build(&f, &cfg, &image()), Err(SpecError::RuntimeLacks { .. })));
}

/// `dir` bind-mounted onto itself and made shared; unmounted on drop.
struct SharedMount(PathBuf);

impl SharedMount {
    fn new(dir: &Path) -> SharedMount {
        use nix::mount::{mount, MsFlags};
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).expect("bind the fixture dir (needs root)");
        let guard = SharedMount(dir.to_path_buf());
        mount(None::<&str>, dir, None::<&str>, MsFlags::MS_SHARED, None::<&str>).expect("make the fixture dir shared");
        guard
    }
}

impl Drop for SharedMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn readonly_rootfs_and_shm_choices() {
    let mut f = Fixture::new();
    let mut cfg = config();
    sec(&mut cfg).readonly_rootfs = true;
    let spec = build(&f, &cfg, &image()).unwrap();
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
    assert_eq!(spec.root().as_ref().unwrap().path(), &f.rootfs());
    assert_eq!(opts(find(&spec, "/etc/hosts")), vec!["rbind", "rprivate", "ro"]);
    f.shm = None;
    let spec = build(&f, &config(), &image()).unwrap();
    assert_eq!(find(&spec, "/dev/shm").typ().as_deref(), Some("tmpfs"));
    let mut cfg = config();
    sec(&mut cfg).namespace_options = Some(cri::NamespaceOption { ipc: cri::NamespaceMode::Node as i32, ..Default::default() });
    let spec = build(&f, &cfg, &image()).unwrap();
    assert_eq!(find(&spec, "/dev/shm").source().as_deref(), Some(Path::new("/dev/shm")));
}

fn ns_of(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
    spec.linux().as_ref().unwrap().namespaces().as_ref().unwrap().iter().map(|n| (n.typ(), n.path().clone())).collect()
}

#[test]
fn namespaces_for_each_option() {
    use LinuxNamespaceType::*;
    let p = |s: &str| Some(PathBuf::from(s));
    let mut f = Fixture::new();
    let spec = build(&f, &config(), &image()).unwrap();
    assert_eq!(
        ns_of(&spec),
        vec![
            (Pid, p("/proc/4242/ns/pid")),
            (Ipc, p("/proc/4242/ns/ipc")),
            (Uts, p("/proc/4242/ns/uts")),
            (Network, p("/var/run/netns/pod1")),
            (Mount, None),
        ]
    );
    assert_eq!(spec.hostname().as_deref(), Some("web-host"));
    let mut cfg = config();
    sec(&mut cfg).namespace_options = Some(cri::NamespaceOption {
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Node as i32,
        ..Default::default()
    });
    let spec = build(&f, &cfg, &image()).unwrap();
    assert_eq!(ns_of(&spec)[..2], [(Pid, None), (Uts, p("/proc/4242/ns/uts"))]);
    sec(&mut cfg).namespace_options = Some(cri::NamespaceOption { pid: cri::NamespaceMode::Node as i32, ..Default::default() });
    let spec = build(&f, &cfg, &image()).unwrap();
    assert_eq!(ns_of(&spec)[0], (Ipc, p("/proc/4242/ns/ipc")));
    sec(&mut cfg).namespace_options = Some(cri::NamespaceOption { pid: cri::NamespaceMode::Target as i32, ..Default::default() });
    assert!(matches!(build(&f, &cfg, &image()), Err(SpecError::Unsupported { .. })));

    // Host network: no uts/net namespaces, no hostname.
    f.netns = None;
    let spec = build(&f, &config(), &image()).unwrap();
    assert_eq!(ns_of(&spec), vec![(Pid, p("/proc/4242/ns/pid")), (Ipc, p("/proc/4242/ns/ipc")), (Mount, None)]);
    assert_eq!(spec.hostname(), &None);

    // Infra: new namespaces; the pod's NODE pid keeps the host's.
    let mut f = Fixture::new();
    let infra = infra_spec_with(&f.sb(), Path::new("/pause"), "sb1", 0).unwrap();
    assert_eq!(ns_of(&infra), vec![(Pid, None), (Ipc, None), (Uts, None), (Network, p("/var/run/netns/pod1")), (Mount, None)]);
    f.pod.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            pid: cri::NamespaceMode::Node as i32,
            ipc: cri::NamespaceMode::Node as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    let infra = infra_spec_with(&f.sb(), Path::new("/pause"), "sb1", 0).unwrap();
    assert_eq!(ns_of(&infra), vec![(Uts, None), (Network, p("/var/run/netns/pod1")), (Mount, None)]);
    // Containers follow the pod's options when their own are absent.
    let spec = build(&f, &config(), &image()).unwrap();
    assert_eq!(ns_of(&spec)[0], (Uts, p("/proc/4242/ns/uts")));
    assert_eq!(find(&spec, "/dev/shm").source().as_deref(), Some(Path::new("/dev/shm")));
}

#[test]
fn namespaces_of_a_pod_without_infra() {
    use LinuxNamespaceType::*;
    let p = |s: &str| Some(PathBuf::from(s));
    let mut f = Fixture::new();
    f.pinned = Some((p("/run/berth/ns/ipc-sb1"), p("/run/berth/ns/uts-sb1")));
    let mut cfg = config();
    sec(&mut cfg).namespace_options = Some(cri::NamespaceOption { pid: cri::NamespaceMode::Container as i32, ..Default::default() });
    let spec = build(&f, &cfg, &image()).unwrap();
    assert_eq!(
        ns_of(&spec),
        vec![
            (Pid, None),
            (Ipc, p("/run/berth/ns/ipc-sb1")),
            (Uts, p("/run/berth/ns/uts-sb1")),
            (Network, p("/var/run/netns/pod1")),
            (Mount, None),
        ]
    );
    assert_eq!(spec.hostname().as_deref(), Some("web-host"));
    // The pod's IPC mode NODE: nothing pinned, the host's IPC namespace.
    f.pinned = Some((None, p("/run/berth/ns/uts-sb1")));
    let spec = build(&f, &cfg, &image()).unwrap();
    assert_eq!(ns_of(&spec)[..2], [(Pid, None), (Uts, p("/run/berth/ns/uts-sb1"))]);
    // A shared PID namespace is asked of a pod that has none: refused, naming the field.
    sec(&mut cfg).namespace_options = Some(cri::NamespaceOption { pid: cri::NamespaceMode::Pod as i32, ..Default::default() });
    let err = build(&f, &cfg, &image()).unwrap_err();
    assert!(matches!(&err, SpecError::InvalidField { field: "namespace_options.pid", .. }), "{err}");
    // ...unless the pod's own PID namespace is the host's (hostPID): then that is what POD gives.
    f.pod.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(cri::NamespaceOption { pid: cri::NamespaceMode::Node as i32, ..Default::default() }),
        ..Default::default()
    });
    let spec = build(&f, &cfg, &image()).unwrap();
    assert!(ns_of(&spec).iter().all(|(t, _)| *t != Pid), "hostPID pod: the container stays in the host's: {:?}", ns_of(&spec));
}

#[test]
fn cgroup_namespace_on_v2_for_unprivileged_containers() {
    let f = Fixture::new();
    let with = |cfg: &cri::ContainerConfig, v2: bool| {
        let rootfs = f.rootfs();
        let c = ContainerContext {
            container_id: "c1",
            config: cfg,
            image: &image(),
            rootfs: &rootfs,
            own_oom_score_adj: 0,
            pid_target: None,
            features: &Default::default(),
        };
        let spec = container_spec_with(&f.sb(), &c, &HostFacts { cgroup_v2: v2, ..host() }).unwrap();
        ns_of(&spec).iter().any(|(t, p)| *t == LinuxNamespaceType::Cgroup && p.is_none())
    };
    assert!(!with(&config(), false), "v1 host: no cgroup namespace");
    assert!(with(&config(), true), "v2 host: a private cgroup namespace");
    let mut cfg = config();
    sec(&mut cfg).privileged = true;
    assert!(!with(&cfg, true), "privileged: the host's cgroup namespace");
}

#[test]
fn resources_map_and_skip_hugetlb_without_controller() {
    let r = cri::LinuxContainerResources {
        cpu_period: 100000,
        cpu_quota: 50000,
        cpu_shares: 512,
        memory_limit_in_bytes: 64 << 20,
        cpuset_cpus: "0-1".into(),
        cpuset_mems: "0".into(),
        hugepage_limits: vec![cri::HugepageLimit { page_size: "2MB".into(), limit: 0 }],
        unified: [("memory.high".to_string(), "1".to_string())].into(),
        ..Default::default()
    };
    let out = linux::resources(Some(&r), &host());
    let cpu = out.cpu().as_ref().unwrap();
    assert_eq!((cpu.shares(), cpu.quota(), cpu.period()), (Some(512), Some(50000), Some(100000)));
    assert_eq!((cpu.cpus().as_deref(), cpu.mems().as_deref()), (Some("0-1"), Some("0")));
    let mem = out.memory().unwrap();
    assert_eq!((mem.limit(), mem.swap()), (Some(64 << 20), Some(64 << 20)));
    assert!(out.hugepage_limits().is_none());
    assert!(out.unified().is_none());
    let dev = &out.devices().as_ref().unwrap()[0];
    assert!(!dev.allow());
    let mut h = host();
    h.hugetlb_v1 = true;
    let out = linux::resources(Some(&r), &h);
    assert_eq!(out.hugepage_limits().as_ref().unwrap()[0].page_size(), "2MB");
    let out = linux::resources(Some(&cri::LinuxContainerResources::default()), &host());
    assert!(out.cpu().is_none() && out.memory().is_none());

    let f = Fixture::new();
    let spec = build(&f, &config(), &image()).unwrap();
    let l = spec.linux().as_ref().unwrap();
    assert_eq!(l.cgroups_path().as_deref(), Some(Path::new("/kubepods/pod-uid-1/berth-c1")));
    assert_eq!(l.sysctl().as_ref().unwrap()["net.ipv4.ip_unprivileged_port_start"], "0");
    assert_eq!(l.masked_paths().as_ref().unwrap().len(), linux::DEFAULT_MASKED_PATHS.len());
    assert_eq!(cgroups_path("/berth/", "x"), "/berth/berth-x");
    assert_eq!(cgroups_path("", "x"), "/berth-x");
}

#[test]
fn device_from_host_char_device() {
    let d = cri::Device { container_path: "/dev/mynull".into(), host_path: "/dev/null".into(), permissions: "rw".into() };
    let (dev, rule) = linux::device("c1", &d).unwrap();
    assert_eq!((dev.major(), dev.minor()), (1, 3));
    assert_eq!(rule.access().as_deref(), Some("rw"));
    let bad = cri::Device { host_path: "/etc/hostname".into(), ..Default::default() };
    assert!(linux::device("c1", &bad).is_err());
    let climbing = cri::Device { container_path: "/dev/../etc/passwd".into(), ..d.clone() };
    assert_eq!(linux::device("c1", &climbing).unwrap().0.path(), Path::new("/etc/passwd"));
    let relative = cri::Device { container_path: "dev/x".into(), ..d };
    assert!(linux::device("c1", &relative).is_err());
}

#[test]
fn annotations_and_exec_process() {
    let f = Fixture::new();
    let spec = build(&f, &config(), &image()).unwrap();
    let a = spec.annotations().as_ref().unwrap();
    assert_eq!(a[ANNOTATION_CONTAINER_TYPE], "container");
    assert_eq!(a[ANNOTATION_SANDBOX_ID], "sb1");
    assert_eq!(a[ANNOTATION_CONTAINER_NAME], "app");
    assert_eq!(a[ANNOTATION_SANDBOX_NAMESPACE], "default");
    assert_eq!(a["a.b/c"], "d");
    let p = exec_process(&spec, &["ls".into(), "-l".into()], true).unwrap();
    assert_eq!(p.args().as_ref().unwrap(), &vec!["ls", "-l"]);
    assert_eq!(p.terminal(), Some(true));
    assert_eq!(p.env(), spec.process().as_ref().unwrap().env());
    assert_eq!(p.capabilities(), spec.process().as_ref().unwrap().capabilities());
    assert!(matches!(exec_process(&spec, &[], false), Err(SpecError::EmptyExecCommand)));
    let infra = infra_spec_with(&f.sb(), Path::new("/pause"), "sb1", 0).unwrap();
    assert_eq!(infra.annotations().as_ref().unwrap()[ANNOTATION_CONTAINER_TYPE], "sandbox");
}

#[test]
fn serialized_spec_has_what_runc_needs() {
    let f = Fixture::new();
    let spec = build(&f, &config(), &image()).unwrap();
    let j = serde_json::to_value(&spec).unwrap();
    assert!(j["ociVersion"].as_str().unwrap().starts_with("1."));
    assert_eq!(j["process"]["args"][0], "/entry");
    assert_eq!(j["process"]["user"]["uid"], 0);
    assert_eq!(j["process"]["cwd"], "/srv");
    assert!(j["process"]["capabilities"]["bounding"].as_array().unwrap().iter().any(|c| c == "CAP_CHOWN"));
    assert_eq!(j["process"]["rlimits"][0]["type"], "RLIMIT_NOFILE");
    assert_eq!(j["root"]["path"], f.rootfs().display().to_string());
    assert_eq!(j["linux"]["namespaces"][0]["type"], "pid");
    assert_eq!(j["linux"]["namespaces"][4]["type"], "mount");
    assert_eq!(j["linux"]["namespaces"][3]["type"], "network");
    assert_eq!(j["linux"]["cgroupsPath"], "/kubepods/pod-uid-1/berth-c1");
    assert_eq!(j["mounts"][0]["destination"], "/proc");
    assert!(j.get("hooks").is_none());
    let infra = serde_json::to_value(infra_spec_with(&f.sb(), Path::new("/pause"), "sb1", 0).unwrap()).unwrap();
    assert_eq!(infra["process"]["args"], serde_json::json!(["/berth-pause"]));
    assert_eq!(infra["root"]["readonly"], true);
    assert_eq!(infra["linux"]["cgroupsPath"], "/kubepods/pod-uid-1/berth-sb1");
}

#[test]
fn host_fact_parsers() {
    let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                  Max open files            1024                 20000                files\n";
    assert_eq!(parse_nofile_hard(limits), Some(20000));
    assert_eq!(parse_nofile_hard("Max open files  unlimited  unlimited  files"), Some(u64::MAX));
    assert_eq!(capabilities_from_mask(0b101), vec![Capability::Chown, Capability::DacReadSearch]);
    assert_eq!(parse_capability("cap_net_raw"), Some(Capability::NetRaw));
}

#[test]
fn user_namespace_infra_creates_containers_join() {
    use crate::spec::userns::{IdMap, PodUserns};
    use LinuxNamespaceType::*;
    let p = |s: &str| Some(PathBuf::from(s));
    let mut f = Fixture::new();
    let map = IdMap { host_id: 100_000, container_id: 0, length: 65_536 };
    f.userns = Some(PodUserns { uid: map, gid: IdMap { host_id: 200_000, ..map } });
    let infra = infra_spec_with(&f.sb(), Path::new("/pause"), "sb1", 0).unwrap();
    // The netns is new (owned by the new user namespace), not the pinned path.
    assert_eq!(ns_of(&infra), vec![(Pid, None), (Ipc, None), (Uts, None), (Network, None), (User, None), (Mount, None)]);
    let l = infra.linux().as_ref().unwrap();
    let uid = l.uid_mappings().as_ref().unwrap();
    assert_eq!((uid[0].host_id(), uid[0].container_id(), uid[0].size()), (100_000, 0, 65_536));
    assert_eq!(l.gid_mappings().as_ref().unwrap()[0].host_id(), 200_000);
    let spec = build(&f, &config(), &image()).unwrap();
    assert_eq!(ns_of(&spec)[4], (User, p("/proc/4242/ns/user")));
    // procMount: Unmasked (kubelet sends empty lists, only with a pod user namespace).
    let l = spec.linux().as_ref().unwrap();
    assert_eq!(l.masked_paths().as_deref(), Some(&[][..]));
    assert_eq!(l.readonly_paths().as_deref(), Some(&[][..]));
    let mut cfg = config();
    sec(&mut cfg).masked_paths = vec!["/proc/keys".into()];
    let spec = build(&f, &cfg, &image()).unwrap();
    assert_eq!(spec.linux().as_ref().unwrap().masked_paths().as_deref(), Some(&["/proc/keys".to_string()][..]));
    assert_eq!(ns_of(&spec)[3], (Network, p("/var/run/netns/pod1")));
    assert_eq!(spec.linux().as_ref().unwrap().uid_mappings().as_ref().unwrap()[0].host_id(), 100_000);
}

#[test]
fn pid_target_joins_the_target_process() {
    let f = Fixture::new();
    let mut cfg = config();
    sec(&mut cfg).namespace_options =
        Some(cri::NamespaceOption { pid: cri::NamespaceMode::Target as i32, target_id: "c0".into(), ..Default::default() });
    let rootfs = f.rootfs();
    let img = image();
    let c = ContainerContext {
        container_id: "c1",
        config: &cfg,
        image: &img,
        rootfs: &rootfs,
        own_oom_score_adj: 0,
        pid_target: Some(777),
        features: &Default::default(),
    };
    let spec = container_spec_with(&f.sb(), &c, &host()).unwrap();
    assert_eq!(ns_of(&spec)[0], (LinuxNamespaceType::Pid, Some(PathBuf::from("/proc/777/ns/pid"))));
}

#[test]
fn namespace_modes_the_cri_does_not_allow_and_relative_paths_are_refused() {
    let f = Fixture::new();
    let mut cfg = config();
    sec(&mut cfg).namespace_options = Some(cri::NamespaceOption { ipc: cri::NamespaceMode::Target as i32, ..Default::default() });
    let e = build(&f, &cfg, &image()).unwrap_err().to_string();
    assert!(e.contains("namespace_options.ipc"), "{e}");
    sec(&mut cfg).namespace_options = Some(cri::NamespaceOption { network: cri::NamespaceMode::Container as i32, ..Default::default() });
    let e = build(&f, &cfg, &image()).unwrap_err().to_string();
    assert!(e.contains("namespace_options.network"), "{e}");
    // IPC CONTAINER: a namespace and a /dev/shm of its own.
    sec(&mut cfg).namespace_options = Some(cri::NamespaceOption { ipc: cri::NamespaceMode::Container as i32, ..Default::default() });
    let spec = build(&f, &cfg, &image()).unwrap();
    assert!(ns_of(&spec).contains(&(LinuxNamespaceType::Ipc, None)));
    assert_eq!(find(&spec, "/dev/shm").typ().as_deref(), Some("tmpfs"));
    let mut cfg = config();
    sec(&mut cfg).masked_paths = vec!["relative".into()];
    let e = build(&f, &cfg, &image()).unwrap_err().to_string();
    assert!(e.contains("masked_paths") && e.contains("absolute"), "{e}");
}
