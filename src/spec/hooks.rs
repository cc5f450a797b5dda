//! OCI hooks from `hooks.d` directories: the hook files CRI-O and podman read (oci-hooks(5),
//! the 1.0.0 schema), merged into a container's OCI spec (runtime-spec config.md, "POSIX-platform
//! Hooks") before the runtime sees it.
//!
//! A hook file is `<dir>/<name>.json`:
//!
//! ```json
//! {"version": "1.0.0",
//!  "hook": {"path": "/usr/libexec/hook", "args": ["hook", "x"], "env": ["K=V"], "timeout": 5},
//!  "when": {"always": true, "annotations": {"^key$": "value"}, "commands": [".*/init$"],
//!           "hasBindMounts": true},
//!  "stages": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart",
//!             "poststop"]}
//! ```
//!
//! - Directories are read in the configured order (`runtime.hooks_dir`); a file name in a later
//!   directory masks the same name in an earlier one (as containers/common's `hooks.New` and
//!   podman's `/usr/share` then `/etc` order). Missing directories are skipped; other files than
//!   `*.json` are ignored.
//! - Matching hooks are injected in the order of their file names compared in lower case, each
//!   into every stage it names, after the hooks the spec already has.
//! - `when` needs at least one condition, and every condition given must hold: `always` true;
//!   for each `annotations` pair, some annotation of the container whose key and value match
//!   the two regular expressions; `process.args[0]` matching one of `commands`;
//!   `hasBindMounts` true and the container has CRI mounts. Expressions are unanchored searches
//!   (Rust `regex`, the RE2 syntax Go's `regexp` in CRI-O also uses).
//! - Files are read at each CreateContainer, so a hook added, changed or removed applies to the
//!   next container without a restart. A file that does not parse, names an unknown stage or
//!   version, a relative path, or no condition fails the CreateContainer with the file named: a
//!   hook left out without a word (a device or security hook) is worse than a refused container.
//!
//! What a failing hook does is the runtime's: runc fails `create` on a failing prestart,
//! createRuntime or createContainer hook with the hook's stdout and stderr in its error, which
//! berth passes on in the CreateContainer error; a failing startContainer hook fails
//! StartContainer the same way; poststart and poststop failures are logged by runc.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Hook, Hooks, Spec};
use regex::Regex;
use serde::Deserialize;

/// The hook stages of the OCI runtime spec (config.md, "POSIX-platform Hooks").
pub const STAGES: &[&str] = &["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"];

/// A hook file that cannot be used, or a directory that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The file is unreadable or malformed; `message` says what was expected.
    #[error("OCI hook file {file}: {message}")]
    Invalid { file: PathBuf, message: String },
    /// A hooks directory exists but cannot be listed.
    #[error("OCI hooks directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One hook file as written (oci-hooks(5), schema 1.0.0).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HookFile {
    version: String,
    hook: Hook,
    when: WhenFile,
    stages: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WhenFile {
    always: Option<bool>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    commands: Vec<String>,
    #[serde(rename = "hasBindMounts")]
    has_bind_mounts: Option<bool>,
}

/// A hook file, checked and with its expressions compiled.
#[derive(Debug)]
pub struct HookDef {
    /// The file it came from.
    pub file: PathBuf,
    /// The hook (`path` absolute) to inject.
    pub hook: Hook,
    /// The stages it goes into, each one of [`STAGES`].
    pub stages: Vec<String>,
    always: Option<bool>,
    annotations: Vec<(Regex, Regex)>,
    commands: Vec<Regex>,
    has_bind_mounts: Option<bool>,
}

/// What a container offers to the `when` conditions.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The spec's annotations (CRI annotations and berth's `io.kubernetes.cri.*` ones).
    pub annotations: &'a std::collections::HashMap<String, String>,
    /// `process.args[0]`; `None` when the spec has no args.
    pub command: Option<&'a str>,
    /// Whether the CRI config asks for mounts of host paths (CRI `mounts` non-empty).
    pub has_bind_mounts: bool,
}

impl HookDef {
    /// Whether every condition of `when` holds for `t`.
    pub fn matches(&self, t: Target<'_>) -> bool {
        if self.always == Some(false) {
            return false;
        }
        if let Some(want) = self.has_bind_mounts {
            if !(want && t.has_bind_mounts) {
                return false;
            }
        }
        let annotations_hold =
            self.annotations.iter().all(|(k, v)| t.annotations.iter().any(|(key, value)| k.is_match(key) && v.is_match(value)));
        let command_holds = self.commands.is_empty() || t.command.is_some_and(|c| self.commands.iter().any(|re| re.is_match(c)));
        annotations_hold && command_holds
    }
}

/// Reads the hook files of `dirs` (later directories mask earlier ones by file name) in
/// injection order. Errors: [`HookError`] for the first unusable file or unlistable directory.
pub fn load(dirs: &[PathBuf]) -> Result<Vec<HookDef>, HookError> {
    let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
    for dir in dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(HookError::Dir { dir: dir.clone(), source }),
        };
        for entry in entries {
            let entry = entry.map_err(|source| HookError::Dir { dir: dir.clone(), source })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            // A directory named *.json is not a hook file; a symlink to a file is.
            if name.ends_with(".json") && !path.is_dir() {
                by_name.insert(name, path);
            }
        }
    }
    let mut files: Vec<(String, PathBuf)> = by_name.into_iter().collect();
    files.sort_by(|a, b| a.0.to_lowercase().cmp(&b.0.to_lowercase()).then_with(|| a.0.cmp(&b.0)));
    files.into_iter().map(|(_, path)| read(&path)).collect()
}

/// Reads and checks one hook file. Errors: [`HookError::Invalid`] naming what was expected.
pub fn read(file: &Path) -> Result<HookDef, HookError> {
    let invalid = |message: String| HookError::Invalid { file: file.to_path_buf(), message };
    let bytes = std::fs::read(file).map_err(|e| invalid(format!("cannot read: {e}")))?;
    let f: HookFile = serde_json::from_slice(&bytes).map_err(|e| invalid(format!("not an oci-hooks(5) 1.0.0 hook: {e}")))?;
    if f.version != "1.0.0" {
        return Err(invalid(format!("version {:?}: expected \"1.0.0\" (the 0.1.0 schema is not read)", f.version)));
    }
    if !f.hook.path().is_absolute() {
        return Err(invalid(format!("hook.path {:?}: expected an absolute path", f.hook.path())));
    }
    if f.stages.is_empty() {
        return Err(invalid(format!("stages: expected at least one of {STAGES:?}")));
    }
    if let Some(bad) = f.stages.iter().find(|s| !STAGES.contains(&s.as_str())) {
        return Err(invalid(format!("stages: {bad:?} is not an OCI hook stage; expected one of {STAGES:?}")));
    }
    let w = f.when;
    if w.always.is_none() && w.annotations.is_empty() && w.commands.is_empty() && w.has_bind_mounts.is_none() {
        return Err(invalid("when: expected at least one of always, annotations, commands, hasBindMounts".into()));
    }
    let compile =
        |what: &str, re: &str| Regex::new(re).map_err(|e| invalid(format!("when.{what}: {re:?} is not a regular expression: {e}")));
    let annotations =
        w.annotations.iter().map(|(k, v)| Ok((compile("annotations", k)?, compile("annotations", v)?))).collect::<Result<_, _>>()?;
    let commands = w.commands.iter().map(|c| compile("commands", c)).collect::<Result<_, _>>()?;
    Ok(HookDef {
        file: file.to_path_buf(),
        hook: f.hook,
        stages: f.stages,
        always: w.always,
        annotations,
        commands,
        has_bind_mounts: w.has_bind_mounts,
    })
}

/// Appends the hooks of `defs` that match `spec` to its stages, in `defs` order, and returns the
/// files of those injected. `has_bind_mounts`: whether the CRI config has mounts.
pub fn inject(spec: &mut Spec, defs: &[HookDef], has_bind_mounts: bool) -> Vec<PathBuf> {
    let annotations = spec.annotations().clone().unwrap_or_default();
    let command = spec.process().as_ref().and_then(|p| p.args().as_ref()).and_then(|a| a.first()).cloned();
    let target = Target { annotations: &annotations, command: command.as_deref(), has_bind_mounts };
    let matching: Vec<&HookDef> = defs.iter().filter(|d| d.matches(target)).collect();
    if matching.is_empty() {
        return Vec::new();
    }
    let mut hooks = spec.hooks().clone().unwrap_or_default();
    for def in &matching {
        for stage in &def.stages {
            if let Some(list) = stage_mut(&mut hooks, stage) {
                list.get_or_insert_with(Vec::new).push(def.hook.clone());
            }
        }
    }
    spec.set_hooks(Some(hooks));
    matching.iter().map(|d| d.file.clone()).collect()
}

/// The list of one stage of [`STAGES`]; `None` for any other name.
fn stage_mut<'a>(hooks: &'a mut Hooks, stage: &str) -> Option<&'a mut Option<Vec<Hook>>> {
    Some(match stage {
        // Deprecated in the runtime spec in favour of the three create/start stages, and still
        // run by runc; hook files name it (oci-hooks(5) examples, nvidia's hook).
        #[allow(deprecated)]
        "prestart" => hooks.prestart_mut(),
        "createRuntime" => hooks.create_runtime_mut(),
        "createContainer" => hooks.create_container_mut(),
        "startContainer" => hooks.start_container_mut(),
        "poststart" => hooks.poststart_mut(),
        "poststop" => hooks.poststop_mut(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{ProcessBuilder, SpecBuilder};
    use std::collections::HashMap;

    fn write(dir: &Path, name: &str, body: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), body).unwrap();
    }

    fn hook(path: &str, when: &str, stages: &str) -> String {
        format!(r#"{{"version": "1.0.0", "hook": {{"path": "{path}", "args": ["h", "x"]}}, "when": {when}, "stages": {stages}}}"#)
    }

    fn spec(args: &[&str], annotations: &[(&str, &str)]) -> Spec {
        let process = ProcessBuilder::default().args(args.iter().map(|a| a.to_string()).collect::<Vec<_>>()).build().unwrap();
        let ann: HashMap<String, String> = annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        SpecBuilder::default().process(process).annotations(ann).hooks(Hooks::default()).build().unwrap()
    }

    /// A later directory masks an earlier one's file of the same name; files go in lower-case
    /// name order; non-JSON files and missing directories are passed over.
    #[test]
    fn directories_mask_and_order() {
        let tmp = tempfile::tempdir().unwrap();
        let (usr, etc) = (tmp.path().join("usr"), tmp.path().join("etc"));
        write(&usr, "01-a.json", &hook("/usr/a", r#"{"always": true}"#, r#"["prestart"]"#));
        write(&etc, "01-a.json", &hook("/etc/a", r#"{"always": true}"#, r#"["prestart"]"#));
        write(&usr, "02-B.json", &hook("/usr/b", r#"{"always": true}"#, r#"["poststop"]"#));
        write(&usr, "01-UPPER.json", &hook("/usr/upper", r#"{"always": true}"#, r#"["poststop"]"#));
        write(&usr, "README", "not a hook");
        let defs = load(&[usr, tmp.path().join("missing"), etc]).unwrap();
        let paths: Vec<_> = defs.iter().map(|d| d.hook.path().display().to_string()).collect();
        assert_eq!(paths, ["/etc/a", "/usr/upper", "/usr/b"]);
    }

    /// Every condition given must hold: annotations (key and value expressions, unanchored),
    /// commands against args[0], hasBindMounts against the CRI mounts.
    #[test]
    fn when_conditions_all_hold() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write(d, "ann.json", &hook("/h/ann", r#"{"annotations": {"^example\\.com/gpu$": "^yes$"}}"#, r#"["createRuntime"]"#));
        write(d, "cmd.json", &hook("/h/cmd", r#"{"commands": [".*/init$"], "hasBindMounts": true}"#, r#"["createContainer", "poststop"]"#));
        write(d, "never.json", &hook("/h/never", r#"{"always": false}"#, r#"["prestart"]"#));
        let defs = load(&[d.to_path_buf()]).unwrap();

        let mut s = spec(&["/sbin/init"], &[("example.com/gpu", "yes")]);
        let injected = inject(&mut s, &defs, true);
        assert_eq!(injected.len(), 2, "{injected:?}");
        let h = s.hooks().clone().unwrap();
        let paths =
            |l: &Option<Vec<Hook>>| l.clone().unwrap_or_default().iter().map(|h| h.path().display().to_string()).collect::<Vec<_>>();
        assert_eq!(paths(h.create_runtime()), ["/h/ann"]);
        assert_eq!(paths(h.create_container()), ["/h/cmd"]);
        assert_eq!(paths(h.poststop()), ["/h/cmd"]);
        #[allow(deprecated)]
        let prestart = paths(h.prestart());
        assert!(prestart.is_empty());
        assert_eq!(h.create_container().clone().unwrap()[0].args().clone().unwrap(), ["h", "x"]);

        // No bind mounts: the command hook is out; a value that does not match: the annotation one.
        let mut s = spec(&["/sbin/init"], &[("example.com/gpu", "no")]);
        assert!(inject(&mut s, &defs, false).is_empty());
        // An unanchored command expression matches inside args[0].
        let mut s = spec(&["/usr/lib/systemd/init"], &[]);
        assert_eq!(inject(&mut s, &defs, true).len(), 1);
    }

    /// Each malformed file is refused with the file named and what was expected.
    #[test]
    fn bad_files_are_refused_by_name() {
        let cases = [
            ("notjson.json", "{".to_string(), "not an oci-hooks(5) 1.0.0 hook"),
            ("version.json", hook("/h", r#"{"always": true}"#, r#"["prestart"]"#).replace("1.0.0", "0.1.0"), "expected \"1.0.0\""),
            ("relative.json", hook("h", r#"{"always": true}"#, r#"["prestart"]"#), "expected an absolute path"),
            ("stage.json", hook("/h", r#"{"always": true}"#, r#"["prestop"]"#), "\"prestop\" is not an OCI hook stage"),
            ("nostage.json", hook("/h", r#"{"always": true}"#, "[]"), "expected at least one of"),
            ("nowhen.json", hook("/h", "{}", r#"["prestart"]"#), "when: expected at least one of"),
            ("regex.json", hook("/h", r#"{"commands": ["("]}"#, r#"["prestart"]"#), "is not a regular expression"),
            ("unknown.json", hook("/h", r#"{"always": true, "allways": true}"#, r#"["prestart"]"#), "unknown field"),
        ];
        for (name, body, want) in cases {
            let tmp = tempfile::tempdir().unwrap();
            write(tmp.path(), name, &body);
            let err = load(&[tmp.path().to_path_buf()]).unwrap_err().to_string();
            assert!(err.contains(name) && err.contains(want), "{name}: {err}");
        }
    }
}
