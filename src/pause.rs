//! The built-in infra ("pause") binary. Placeholder: filled in by the monitor/pause work.
