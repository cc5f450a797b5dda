//! berth-monitor: one process per container (berth's conmon). All logic lives in
//! `berth_monitor::process`; see there for the protocol.
fn main() {
    std::process::exit(berth_monitor::process::main());
}
