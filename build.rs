//! Build script of berth.
//!
//! Compiles `src/bin/berth-pause.rs` a second time, standalone and statically linked, into
//! `$OUT_DIR/berth-pause`; `src/pause.rs` embeds that file with `include_bytes!`. The infra
//! container's rootfs is this one file, so it must not need a dynamic loader or libc on disk.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    build_pause();
}

/// `$RUSTC --edition 2021 -C opt-level=s -C panic=abort -C target-feature=+crt-static
/// -o $OUT_DIR/berth-pause src/bin/berth-pause.rs` (plus `--target $TARGET`, no debug info,
/// stripped symbols). Fails the build with the compiler's output when it does not compile.
fn build_pause() {
    const SRC: &str = "src/bin/berth-pause.rs";
    println!("cargo:rerun-if-changed={SRC}");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR for build scripts"));
    let out = out_dir.join("berth-pause");
    let mut cmd = Command::new(rustc);
    cmd.args(["--edition", "2021", "--crate-name", "berth_pause", "--crate-type", "bin"])
        .args(["-C", "opt-level=s", "-C", "panic=abort", "-C", "target-feature=+crt-static"])
        .args(["-C", "debuginfo=0", "-C", "strip=symbols", "-C", "relocation-model=static"]);
    if let Some(target) = std::env::var_os("TARGET") {
        cmd.arg("--target").arg(target);
    }
    cmd.arg("-o").arg(&out).arg(SRC);
    let output = cmd.output().expect("cannot run rustc to build berth-pause");
    if !output.status.success() {
        panic!(
            "building the static berth-pause failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
