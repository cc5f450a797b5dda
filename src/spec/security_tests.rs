//! Unit tests of the security-context parts of spec generation (issue #5): seccomp choice,
//! privileged devices, masked/readonly paths, run_as_group without a user, effective user.

use super::tests::{build, config, image, sec, Fixture};
use super::*;

fn rule_names(spec: &Spec) -> Vec<String> {
    let l = spec.linux().as_ref().unwrap();
    l.seccomp().as_ref().and_then(|s| s.syscalls().clone()).unwrap_or_default().iter().flat_map(|r| r.names().clone()).collect()
}

#[test]
#[allow(deprecated)]
fn seccomp_choice_in_spec() {
    let f = Fixture::new();
    let spec = build(&f, &config(), &image()).unwrap();
    assert!(spec.linux().as_ref().unwrap().seccomp().is_none(), "empty request = unconfined");

    let mut cfg = config();
    sec(&mut cfg).seccomp_profile_path = "runtime/default".into();
    let spec = build(&f, &cfg, &image()).unwrap();
    let names = rule_names(&spec);
    assert!(names.iter().any(|n| n == "read"));
    assert!(!names.iter().any(|n| n == "mount"), "no CAP_SYS_ADMIN: mount stays denied");

    let mut cfg = config();
    sec(&mut cfg).seccomp = Some(cri::SecurityProfile::default()); // RuntimeDefault
    sec(&mut cfg).capabilities = Some(cri::Capability { add_capabilities: vec!["SYS_ADMIN".into()], ..Default::default() });
    assert!(rule_names(&build(&f, &cfg, &image()).unwrap()).iter().any(|n| n == "mount"));
    sec(&mut cfg).privileged = true;
    assert!(build(&f, &cfg, &image()).unwrap().linux().as_ref().unwrap().seccomp().is_none());

    let profile = f.dir.path().join("deny-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
    )
    .unwrap();
    let mut cfg = config();
    sec(&mut cfg).seccomp = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::Localhost as i32,
        localhost_ref: profile.display().to_string(),
    });
    assert_eq!(rule_names(&build(&f, &cfg, &image()).unwrap()), vec!["mkdir", "mkdirat"]);
    sec(&mut cfg).seccomp.as_mut().unwrap().localhost_ref = "/nonexistent/p.json".into();
    let err = build(&f, &cfg, &image()).unwrap_err();
    assert!(matches!(err, SpecError::Seccomp { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/p.json"), "{err}");
}

#[test]
fn privileged_gets_host_devices_and_no_masks() {
    let f = Fixture::new();
    let mut cfg = config();
    sec(&mut cfg).privileged = true;
    sec(&mut cfg).masked_paths = vec!["/proc/x".into()];
    let spec = build(&f, &cfg, &image()).unwrap();
    let l = spec.linux().as_ref().unwrap();
    let devs = l.devices().clone().unwrap_or_default();
    assert!(devs.iter().any(|d| d.path() == Path::new("/dev/null")), "host /dev/null listed");
    assert!(!devs.iter().any(|d| d.path().starts_with("/dev/pts")));
    let rules = l.resources().as_ref().unwrap().devices().clone().unwrap();
    assert_eq!(rules.len(), 1);
    assert!(rules[0].allow() && rules[0].typ().is_none() && rules[0].access().as_deref() == Some("rwm"));
    assert!(l.masked_paths().as_ref().unwrap().is_empty());
    assert!(l.readonly_paths().as_ref().unwrap().is_empty());
    assert_eq!(spec.process().as_ref().unwrap().no_new_privileges(), Some(false));

    let mut cfg = config();
    sec(&mut cfg).masked_paths = vec!["/proc/x".into()];
    sec(&mut cfg).readonly_paths = vec!["/proc/y".into()];
    sec(&mut cfg).no_new_privs = true;
    let spec = build(&f, &cfg, &image()).unwrap();
    let l = spec.linux().as_ref().unwrap();
    assert_eq!(l.masked_paths().as_ref().unwrap(), &vec!["/proc/x".to_string()]);
    assert_eq!(l.readonly_paths().as_ref().unwrap(), &vec!["/proc/y".to_string()]);
    assert!(l.devices().is_none());
    assert_eq!(spec.process().as_ref().unwrap().no_new_privileges(), Some(true));
}

#[test]
fn run_as_group_needs_a_user_and_effective_user_reports_ids() {
    let f = Fixture::new();
    let mut cfg = config();
    sec(&mut cfg).run_as_group = Some(cri::Int64Value { value: 3000 });
    let err = build(&f, &cfg, &image()).unwrap_err();
    assert!(matches!(err, SpecError::GroupWithoutUser { .. }), "{err}");
    assert!(err.to_string().contains("run_as_group"), "{err}");

    sec(&mut cfg).run_as_user = Some(cri::Int64Value { value: 1000 });
    sec(&mut cfg).supplemental_groups = vec![4000];
    let spec = build(&f, &cfg, &image()).unwrap();
    let u = effective_user(&spec).unwrap().linux.unwrap();
    assert_eq!((u.uid, u.gid, u.supplemental_groups), (1000, 3000, vec![3000, 4000]));

    // Merge adds the image's /etc/group membership of the user (www is in adm), Strict does not.
    let mut cfg = config();
    sec(&mut cfg).run_as_username = "www".into();
    sec(&mut cfg).supplemental_groups = vec![4000];
    let u = effective_user(&build(&f, &cfg, &image()).unwrap()).unwrap().linux.unwrap();
    assert_eq!(u.supplemental_groups, vec![33, 4, 4000]);
    sec(&mut cfg).supplemental_groups_policy = cri::SupplementalGroupsPolicy::Strict as i32;
    let u = effective_user(&build(&f, &cfg, &image()).unwrap()).unwrap().linux.unwrap();
    assert_eq!(u.supplemental_groups, vec![33, 4000]);
}
