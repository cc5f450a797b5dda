//! Unit tests of the AppArmor/SELinux decisions on made-up hosts.
#![allow(deprecated)] // the deprecated apparmor_profile string is under test

use super::*;
use cri::security_profile::ProfileType;

type Sc = cri::LinuxContainerSecurityContext;

fn no_mac() -> MacHost {
    MacHost::default()
}

fn apparmor_host(profiles: &[&str]) -> MacHost {
    MacHost { apparmor: true, selinux: false, apparmor_profiles: profiles.iter().map(|s| s.to_string()).collect() }
}

fn selinux_host() -> MacHost {
    MacHost { apparmor: false, selinux: true, apparmor_profiles: BTreeSet::new() }
}

fn aa(t: ProfileType, r: &str) -> Sc {
    Sc { apparmor: Some(cri::SecurityProfile { profile_type: t as i32, localhost_ref: r.into() }), ..Default::default() }
}

fn aa_str(s: &str) -> Sc {
    Sc { apparmor_profile: s.into(), ..Default::default() }
}

fn se(user: &str, role: &str, typ: &str, level: &str) -> Sc {
    Sc {
        selinux_options: Some(cri::SeLinuxOption { user: user.into(), role: role.into(), r#type: typ.into(), level: level.into() }),
        ..Default::default()
    }
}

#[test]
fn parses_profiles_file() {
    let t = "berth-default (enforce)\n/usr/bin/man (complain)\nname with space (enforce)\nunconfined-thing (unconfined)\n";
    let p = parse_apparmor_profiles(t);
    assert!(p.contains("berth-default"));
    assert!(p.contains("/usr/bin/man"));
    assert!(p.contains("name with space"));
    assert!(p.contains("unconfined-thing"));
    assert_eq!(p.len(), 4);
    assert!(parse_apparmor_profiles("").is_empty());
}

#[test]
fn selinuxfs_detected_from_mountinfo() {
    let yes = "22 27 0:20 / /sys rw,nosuid - sysfs sysfs rw\n30 22 0:27 / /sys/fs/selinux rw,relatime shared:8 - selinuxfs selinuxfs rw\n";
    let no = "22 27 0:20 / /sys rw,nosuid - sysfs sysfs rw\n";
    assert!(selinuxfs_mounted(yes));
    assert!(!selinuxfs_mounted(no));
}

#[test]
fn apparmor_without_host_support() {
    let h = no_mac();
    assert_eq!(apparmor_profile(&Sc::default(), &h), Ok(None));
    assert_eq!(apparmor_profile(&aa(ProfileType::RuntimeDefault, ""), &h), Ok(None));
    assert_eq!(apparmor_profile(&aa(ProfileType::Unconfined, ""), &h), Ok(None));
    assert_eq!(apparmor_profile(&aa_str("runtime/default"), &h), Ok(None));
    assert_eq!(apparmor_profile(&aa_str("unconfined"), &h), Ok(None));
    let e = apparmor_profile(&aa(ProfileType::Localhost, "my-prof"), &h).unwrap_err();
    assert_eq!(e.field, "config.linux.security_context.apparmor");
    assert_eq!(e.value, "localhost/my-prof");
    assert!(e.reason.contains("\"my-prof\"") && e.reason.contains("not enabled"), "{e}");
    let e = apparmor_profile(&aa_str("localhost/my-prof"), &h).unwrap_err();
    assert_eq!(e.field, "config.linux.security_context.apparmor_profile");
    assert!(e.reason.contains("not enabled"), "{e}");
}

#[test]
fn apparmor_with_host_support() {
    let h = apparmor_host(&["berth-default", "my-prof"]);
    let def = Some("berth-default".to_string());
    assert_eq!(apparmor_profile(&Sc::default(), &h), Ok(def.clone()));
    assert_eq!(apparmor_profile(&aa(ProfileType::RuntimeDefault, ""), &h), Ok(def.clone()));
    assert_eq!(apparmor_profile(&aa_str("runtime/default"), &h), Ok(def));
    assert_eq!(apparmor_profile(&aa(ProfileType::Unconfined, ""), &h), Ok(Some("unconfined".into())));
    assert_eq!(apparmor_profile(&aa_str("unconfined"), &h), Ok(Some("unconfined".into())));
    assert_eq!(apparmor_profile(&aa(ProfileType::Localhost, "my-prof"), &h), Ok(Some("my-prof".into())));
    // containerd trims a `localhost/` prefix from localhost_ref too.
    assert_eq!(apparmor_profile(&aa(ProfileType::Localhost, "localhost/my-prof"), &h), Ok(Some("my-prof".into())));
    assert_eq!(apparmor_profile(&aa_str("localhost/my-prof"), &h), Ok(Some("my-prof".into())));
    let e = apparmor_profile(&aa(ProfileType::Localhost, "other"), &h).unwrap_err();
    assert!(e.reason.contains("\"other\" is not loaded"), "{e}");
    let e = apparmor_profile(&aa(ProfileType::Localhost, ""), &h).unwrap_err();
    assert!(e.reason.contains("profile name"), "{e}");
}

#[test]
fn apparmor_field_wins_over_deprecated_string() {
    let h = apparmor_host(&["berth-default", "my-prof"]);
    let mut sc = aa(ProfileType::Unconfined, "");
    sc.apparmor_profile = "localhost/my-prof".into();
    assert_eq!(apparmor_profile(&sc, &h), Ok(Some("unconfined".into())));
}

#[test]
fn apparmor_default_not_loaded() {
    let h = apparmor_host(&["my-prof"]);
    // Unset: runs without a profile (kubelet leaves it unset for most pods).
    assert_eq!(apparmor_profile(&Sc::default(), &h), Ok(None));
    // Explicit RuntimeDefault: refused, naming the profile.
    let e = apparmor_profile(&aa(ProfileType::RuntimeDefault, ""), &h).unwrap_err();
    assert_eq!(e.value, "RuntimeDefault");
    assert!(e.reason.contains("berth-default") && e.reason.contains("not loaded"), "{e}");
}

#[test]
fn apparmor_privileged_gets_no_default() {
    let h = apparmor_host(&["berth-default", "my-prof"]);
    let mut sc = aa(ProfileType::RuntimeDefault, "");
    sc.privileged = true;
    assert_eq!(apparmor_profile(&sc, &h), Ok(None));
    let mut sc = Sc { privileged: true, ..Default::default() };
    assert_eq!(apparmor_profile(&sc, &h), Ok(None));
    sc.apparmor_profile = "localhost/my-prof".into();
    assert_eq!(apparmor_profile(&sc, &h), Ok(Some("my-prof".into())));
}

#[test]
fn apparmor_bad_values() {
    let h = apparmor_host(&[]);
    let e = apparmor_profile(&aa_str("docker-default"), &h).unwrap_err();
    assert_eq!(e.field, "config.linux.security_context.apparmor_profile");
    assert!(e.value.contains("docker-default"));
    let sc = Sc { apparmor: Some(cri::SecurityProfile { profile_type: 7, localhost_ref: String::new() }), ..Default::default() };
    let e = apparmor_profile(&sc, &h).unwrap_err();
    assert!(e.value.contains("profile_type 7"), "{e}");
}

#[test]
fn selinux_ignored_without_host_support() {
    let h = no_mac();
    assert_eq!(selinux_label(&se("u", "r", "t", "s0"), &h), Ok(None));
    // Even malformed options are ignored: nothing is applied on such a host.
    assert_eq!(selinux_label(&se("a:b", "", "", ""), &h), Ok(None));
    assert_eq!(selinux_label(&Sc::default(), &h), Ok(None));
}

#[test]
fn selinux_label_defaults_and_pass_through() {
    let h = selinux_host();
    assert_eq!(selinux_label(&Sc::default(), &h), Ok(Some("system_u:system_r:container_t:s0".into())));
    assert_eq!(selinux_label(&se("", "", "", "s0:c1,c2"), &h), Ok(Some("system_u:system_r:container_t:s0:c1,c2".into())));
    assert_eq!(
        selinux_label(&se("user_u", "user_r", "spc_t", "s0-s0:c0.c1023"), &h),
        Ok(Some("user_u:user_r:spc_t:s0-s0:c0.c1023".into()))
    );
    let mut sc = se("", "", "", "s0:c1,c2");
    sc.privileged = true;
    assert_eq!(selinux_label(&sc, &h), Ok(None));
}

#[test]
fn selinux_refuses_bad_parts() {
    let h = selinux_host();
    let e = selinux_label(&se("", "", "container_t:s0", ""), &h).unwrap_err();
    assert_eq!(e.field, "config.linux.security_context.selinux_options.type");
    let e = selinux_label(&se("", "", "", "s0 c1"), &h).unwrap_err();
    assert_eq!(e.field, "config.linux.security_context.selinux_options.level");
}

#[test]
fn process_labels_maps_to_invalid_argument_error() {
    let e = process_labels_with("c1", &aa(ProfileType::Localhost, "nope"), &no_mac()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("c1") && msg.contains("config.linux.security_context.apparmor") && msg.contains("nope"), "{msg}");
    assert!(matches!(e, SpecError::Mac { .. }));
    let h = MacHost { apparmor: true, selinux: true, apparmor_profiles: ["berth-default".to_string()].into() };
    assert_eq!(
        process_labels_with("c1", &Sc::default(), &h).unwrap(),
        (Some("berth-default".into()), Some("system_u:system_r:container_t:s0".into()))
    );
}

#[test]
fn host_support_serialises() {
    let v = serde_json::to_value(MacSupport { apparmor: false, selinux: true }).unwrap();
    assert_eq!(v, serde_json::json!({"apparmor": false, "selinux": true}));
}
