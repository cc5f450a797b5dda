//! The CRI conformance suite: `cargo test -p berth-conformance [-- FILTER...]`.
//!
//! Target: `BERTH_ENDPOINT=unix:///path.sock` (use it), `CRI_TARGET=containerd` (start
//! containerd), else start berth (`$BERTH_BIN` or `target/debug/berth`). Prints `ok NAME` /
//! `FAILED NAME: error` per case and `N passed, N failed[, N skipped]`; exits non-zero on failure.

fn main() {
    // Arguments that are not flags are substring filters on case names (flags from libtest-style
    // invocations such as `--nocapture` are ignored).
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            println!("FAILED setup: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(berth_conformance::harness::run(&berth_conformance::cases::all(), &filters));
    std::process::exit(code);
}
