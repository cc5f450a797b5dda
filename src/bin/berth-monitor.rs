//! berth-monitor: one process per container (berth's conmon). All logic lives in
//! `berth::monitor::process`; see there for the protocol.
fn main() {
    std::process::exit(berth::monitor::process::main());
}
