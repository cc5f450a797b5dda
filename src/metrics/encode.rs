//! Prometheus text exposition format 0.0.4 (the format every Prometheus server scrapes):
//! `# HELP`, `# TYPE`, then `name{label="value",...} value` lines; histograms as `_bucket{le=..}`
//! (cumulative, ending with `le="+Inf"`), `_sum` and `_count`. Label values escape `\`, `"` and
//! newline; HELP text escapes `\` and newline. Pure functions, no I/O.

use super::{HistogramSnapshot, Registry, GRPC_CODE_NAMES};
use std::fmt::Write;

/// The Content-Type of a text-format scrape.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The TYPE of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A monotonically increasing count (name should end in `_total`).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Buckets, sum and count.
    Histogram,
}

/// `s` as a label value: `\` -> `\\`, `"` -> `\"`, newline -> `\n`.
pub fn escape_label_value(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

/// `s` as HELP text: `\` -> `\\`, newline -> `\n`.
pub fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value as the format spells it: `+Inf`, `-Inf`, `NaN`, else the shortest decimal
/// that round-trips (`1`, `0.005`, `1234.5`).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Builds one text-format document.
#[derive(Debug, Default)]
pub struct TextEncoder {
    out: String,
}

impl TextEncoder {
    /// An empty document.
    pub fn new() -> TextEncoder {
        TextEncoder::default()
    }

    /// Starts the family `name` with its HELP and TYPE lines; its samples follow.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample line `name{labels} value`; label names must be valid (`[a-zA-Z_][a-zA-Z0-9_]*`),
    /// values are escaped here.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label_value(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", format_value(value));
    }

    /// The sample lines of one histogram series: `name_bucket{labels,le=..}` per bound and
    /// `+Inf`, `name_sum`, `name_count`.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        let les: Vec<String> = h.bounds.iter().map(|b| format_value(*b)).chain(["+Inf".to_string()]).collect();
        for (le, n) in les.iter().zip(&h.cumulative) {
            with_le.push(("le", le));
            self.sample(&bucket, &with_le, *n as f64);
            with_le.pop();
        }
        self.sample(&format!("{name}_sum"), labels, h.sum);
        self.sample(&format!("{name}_count"), labels, h.count as f64);
    }

    /// The document.
    pub fn finish(self) -> String {
        self.out
    }
}

/// The whole `/metrics` document: the registry's families plus `berth_containers{state}`
/// from `containers` (state name, count), computed by the caller at scrape time.
pub fn render(reg: &Registry, containers: &[(&str, u64)]) -> String {
    let mut e = TextEncoder::new();
    let methods = reg.rpc_methods();
    e.family("berth_grpc_requests_total", "CRI gRPC calls handled, by method and gRPC status code.", Kind::Counter);
    for (m, s) in &methods {
        for (code, name) in GRPC_CODE_NAMES.iter().enumerate() {
            let n = s.count(code);
            if n > 0 {
                e.sample("berth_grpc_requests_total", &[("method", m), ("code", name)], n as f64);
            }
        }
    }
    e.family(
        "berth_grpc_request_duration_seconds",
        "Seconds from a CRI gRPC request to its response headers (for server streams: until the stream opens).",
        Kind::Histogram,
    );
    for (m, s) in &methods {
        e.histogram("berth_grpc_request_duration_seconds", &[("method", m)], &s.latency.snapshot());
    }
    e.family("berth_image_pull_bytes_total", "Compressed layer bytes downloaded by image pulls.", Kind::Counter);
    e.sample("berth_image_pull_bytes_total", &[], reg.image_pull_bytes.get() as f64);
    e.family("berth_image_pull_duration_seconds", "Duration of successful image pulls, seconds.", Kind::Histogram);
    e.histogram("berth_image_pull_duration_seconds", &[], &reg.image_pull_duration.snapshot());
    e.family("berth_containers", "Containers known to berth, by CRI state, at scrape time.", Kind::Gauge);
    for (state, n) in containers {
        e.sample("berth_containers", &[("state", state)], *n as f64);
    }
    e.family("berth_container_oom_kills_total", "Container exits caused by the OOM killer.", Kind::Counter);
    e.sample("berth_container_oom_kills_total", &[], reg.oom_kills.get() as f64);
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Histogram;

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label_value(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label_value("x\ny"), "x\\ny");
        assert_eq!(escape_help("a\\b\nc \"q\""), "a\\\\b\\nc \"q\"", "quotes stay in HELP");
        let mut e = TextEncoder::new();
        e.family("m_total", "help\nline", Kind::Counter);
        e.sample("m_total", &[("path", "/a\"b"), ("x", "\\")], 3.0);
        e.sample("m_total", &[], 0.5);
        assert_eq!(e.finish(), "# HELP m_total help\\nline\n# TYPE m_total counter\nm_total{path=\"/a\\\"b\",x=\"\\\\\"} 3\nm_total 0.5\n");
    }

    #[test]
    fn special_values() {
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(1.0), "1");
        assert_eq!(format_value(0.005), "0.005");
        assert_eq!(format_value(12345678901.0), "12345678901");
    }

    #[test]
    fn histogram_lines() {
        static B: &[f64] = &[0.5, 1.0];
        let h = Histogram::new(B);
        h.observe(0.25);
        h.observe(0.75);
        h.observe(7.0);
        let mut e = TextEncoder::new();
        e.histogram("d_seconds", &[("method", "Version")], &h.snapshot());
        assert_eq!(
            e.finish(),
            "d_seconds_bucket{method=\"Version\",le=\"0.5\"} 1\n\
             d_seconds_bucket{method=\"Version\",le=\"1\"} 2\n\
             d_seconds_bucket{method=\"Version\",le=\"+Inf\"} 3\n\
             d_seconds_sum{method=\"Version\"} 8\n\
             d_seconds_count{method=\"Version\"} 3\n"
        );
    }

    #[test]
    fn render_has_every_family_once() {
        let r = Registry::default();
        r.observe_rpc("ListContainers", 0, 0.002);
        r.observe_rpc("ContainerStatus", 5, 0.001);
        r.image_pull_bytes.add(1234);
        r.observe_pull(1.5);
        r.oom_kills.add(1);
        let text = render(&r, &[("running", 2), ("exited", 1)]);
        for fam in [
            "berth_grpc_requests_total",
            "berth_grpc_request_duration_seconds",
            "berth_image_pull_bytes_total",
            "berth_image_pull_duration_seconds",
            "berth_containers",
            "berth_container_oom_kills_total",
        ] {
            assert_eq!(text.matches(&format!("# TYPE {fam} ")).count(), 1, "{fam}\n{text}");
        }
        assert!(text.contains("berth_grpc_requests_total{method=\"ContainerStatus\",code=\"NotFound\"} 1\n"), "{text}");
        assert!(text.contains("berth_grpc_request_duration_seconds_count{method=\"ListContainers\"} 1\n"), "{text}");
        assert!(text.contains("berth_image_pull_bytes_total 1234\n"), "{text}");
        assert!(text.contains("berth_image_pull_duration_seconds_bucket{le=\"2.5\"} 1\n"), "{text}");
        assert!(text.contains("berth_containers{state=\"running\"} 2\n"), "{text}");
        assert!(text.contains("berth_container_oom_kills_total 1\n"), "{text}");
        // Every non-comment line is `name[{labels}] value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            assert!(v.parse::<f64>().is_ok() || v == "+Inf", "{line}");
        }
    }
}
