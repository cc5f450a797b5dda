//! Build script of berth.
//!
//! Generates the CRI v1 bindings (messages, gRPC server and client) from the vendored
//! `proto/runtime/v1/api.proto` into `$OUT_DIR/runtime.v1.rs` (see proto/README.md), and compiles `src/bin/berth-pause.rs` a second time, standalone and statically linked, into
//! `$OUT_DIR/berth-pause`; `src/pause.rs` embeds that file with `include_bytes!`. The infra
//! container's rootfs is this one file, so it must not need a dynamic loader or libc on disk.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    build_cri();
    build_nri();
    build_pause();
}

/// Parses the CRI proto with `protox` and generates Rust with `tonic-prost-build`. Every message
/// derives serde with `#[serde(default)]` (records stored by an older berth, which lack newer
/// fields, still load); `KeyValue.value`, bytes since cri-api v0.36.2, keeps the string form
/// older records hold (`cri::serde_kv_value`).
fn build_cri() {
    const PROTO: &str = "proto/runtime/v1/api.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let fds = protox::compile(["runtime/v1/api.proto"], ["proto"]).unwrap_or_else(|e| panic!("parsing {PROTO}: {e}"));
    tonic_prost_build::configure()
        .type_attribute(".runtime.v1", "#[derive(serde::Serialize, serde::Deserialize)]")
        .message_attribute(".runtime.v1", "#[serde(default)]")
        .field_attribute(".runtime.v1.KeyValue.value", "#[serde(with = \"crate::cri::serde_kv_value\")]")
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("generating the CRI bindings from {PROTO}: {e}"));
}

/// The NRI messages (containerd/nri's `pkg/api/api.proto`, vendored as `proto/nri/api.proto`)
/// with prost, into `$OUT_DIR/nri.pkg.api.v1alpha1.rs`: messages only, as the transport is
/// ttrpc (`src/nri/`), not gRPC.
fn build_nri() {
    const PROTO: &str = "proto/nri/api.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let fds = protox::compile(["nri/api.proto"], ["proto"]).unwrap_or_else(|e| panic!("parsing {PROTO}: {e}"));
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("generating the NRI bindings from {PROTO}: {e}"));
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
