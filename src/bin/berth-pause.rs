//! berth-pause: the infra ("pause") process of every pod sandbox.
//!
//! It runs as PID 1 of the pod's namespaces and does three things, like Kubernetes' pause.c:
//! SIGINT / SIGTERM -> exit 0; SIGCHLD -> reap every exited child (it is init of a shared PID
//! namespace, so orphans land on it); otherwise sleep in `pause()` forever.
//!
//! The source needs nothing beyond `std` and a few libc functions declared here, because build.rs
//! compiles it a second time, standalone and statically linked (`-C target-feature=+crt-static`),
//! into `$OUT_DIR/berth-pause`: that single file is the whole rootfs of the infra container
//! (see `berth::pause`).
#![deny(unsafe_code)]

use std::os::raw::c_int;

const SIGINT: c_int = 2;
const SIGTERM: c_int = 15;
const SIGCHLD: c_int = 17;
const WNOHANG: c_int = 1;

extern "C" {
    fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
    fn pause() -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    fn _exit(code: c_int) -> !;
}

/// SIGINT / SIGTERM: leave at once with status 0 (`_exit` is async-signal-safe).
extern "C" fn on_terminate(_sig: c_int) {
    #[allow(unsafe_code)]
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe {
        _exit(0)
    }
}

/// SIGCHLD: reap every child that has exited (several may be folded into one signal).
extern "C" fn on_child(_sig: c_int) {
    let mut status: c_int = 0;
    loop {
        #[allow(unsafe_code)]
        // SAFETY: waitpid is async-signal-safe; `status` is a valid, writable c_int.
        let pid = unsafe { waitpid(-1, &mut status, WNOHANG) };
        if pid <= 0 {
            break;
        }
    }
}

fn main() {
    #[allow(unsafe_code)]
    // SAFETY: installing handlers that only call async-signal-safe functions (_exit, waitpid).
    // glibc's signal() installs them with BSD semantics (SA_RESTART, not reset after delivery).
    unsafe {
        signal(SIGINT, on_terminate);
        signal(SIGTERM, on_terminate);
        signal(SIGCHLD, on_child);
    }
    loop {
        #[allow(unsafe_code)]
        // SAFETY: pause() only blocks until a signal handler has run.
        unsafe {
            pause();
        }
    }
}
