//! The Prometheus text exposition format (version 0.0.4), written directly.
//!
//! Each family is `# HELP`, `# TYPE`, then its samples, all samples of a family together.
//! Label values are escaped (`\` `"` and newline), help texts too (`\` and newline); metric
//! and label names are fixed in the code and checked by the tests.

use std::fmt::Write;

/// `Content-Type` of the format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The kind of a family, its `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::Int(v)
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Value {
        Value::Int(v as u64)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(u64::from(v))
    }
}

/// An exposition being written.
#[derive(Debug, Default)]
pub(crate) struct Exposition {
    out: String,
}

impl Exposition {
    pub(crate) fn new() -> Exposition {
        Exposition {
            out: String::with_capacity(16 * 1024),
        }
    }

    /// The text written so far.
    pub(crate) fn finish(self) -> String {
        self.out
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines.
    pub(crate) fn family(&mut self, name: &str, help: &str, kind: Kind) {
        debug_assert!(valid_name(name), "metric name {name}");
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        escape_into(&mut self.out, help, false);
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(kind.name());
        self.out.push('\n');
    }

    /// One sample line: `name{label="value",...} value`.
    pub(crate) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Into<Value>) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                debug_assert!(valid_label_name(k), "label name {k}");
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_into(&mut self.out, v, true);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        write_value(&mut self.out, value.into());
        self.out.push('\n');
    }

    /// A family of one unlabelled sample.
    pub(crate) fn single(&mut self, name: &str, help: &str, kind: Kind, value: impl Into<Value>) {
        self.family(name, help, kind);
        self.sample(name, &[], value);
    }

    /// A family with one label: a sample per `(label value, value)`.
    pub(crate) fn by_label<V: Into<Value>>(
        &mut self,
        (name, help, kind): (&str, &str, Kind),
        label: &str,
        samples: impl IntoIterator<Item = (impl AsRef<str>, V)>,
    ) {
        self.family(name, help, kind);
        for (lv, v) in samples {
            self.sample(name, &[(label, lv.as_ref())], v);
        }
    }

    /// A histogram family from per-bucket counts (not cumulative): `counts[i]` counts the
    /// observations up to `bounds[i]`, the one after the last bound those above all bounds.
    pub(crate) fn histogram(
        &mut self,
        name: &str,
        help: &str,
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
    ) {
        self.family(name, help, Kind::Histogram);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        let mut le = String::new();
        for (i, &bound) in bounds.iter().enumerate() {
            cumulative += counts.get(i).copied().unwrap_or(0);
            le.clear();
            write_value(&mut le, Value::Float(bound));
            self.sample(&bucket, &[("le", &le)], cumulative);
        }
        let total = cumulative + counts.get(bounds.len()).copied().unwrap_or(0);
        self.sample(&bucket, &[("le", "+Inf")], total);
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], total);
    }
}

/// Escapes `\` and newline (and, in label values, `"`).
fn escape_into(out: &mut String, s: &str, quote: bool) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

fn write_value(out: &mut String, v: Value) {
    match v {
        Value::Int(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Float(f) if f.is_nan() => out.push_str("NaN"),
        Value::Float(f) if f == f64::INFINITY => out.push_str("+Inf"),
        Value::Float(f) if f == f64::NEG_INFINITY => out.push_str("-Inf"),
        // Rust prints the shortest text that reads back as the same number, never with an
        // exponent Prometheus could not parse.
        Value::Float(f) => {
            let _ = write!(out, "{f}");
        }
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
fn valid_label_name(name: &str) -> bool {
    !name.starts_with("__") && !name.contains(':') && valid_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_has_help_type_and_samples() {
        let mut e = Exposition::new();
        e.single("m_total", "Things.", Kind::Counter, 3u64);
        e.by_label(
            ("g", "A gauge.", Kind::Gauge),
            "state",
            [("online", 1usize), ("offline", 2)],
        );
        assert_eq!(
            e.finish(),
            "# HELP m_total Things.\n# TYPE m_total counter\nm_total 3\n\
             # HELP g A gauge.\n# TYPE g gauge\ng{state=\"online\"} 1\ng{state=\"offline\"} 2\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut e = Exposition::new();
        e.family("m", "back\\slash and\nnewline \"kept\"", Kind::Gauge);
        e.sample("m", &[("a", "q\"uote"), ("b", "back\\slash\nline")], 1u64);
        assert_eq!(
            e.finish(),
            "# HELP m back\\\\slash and\\nnewline \"kept\"\n# TYPE m gauge\n\
             m{a=\"q\\\"uote\",b=\"back\\\\slash\\nline\"} 1\n"
        );
    }

    #[test]
    fn values_are_written_as_prometheus_reads_them() {
        let mut s = String::new();
        for v in [
            Value::Int(u64::MAX),
            Value::Float(0.0001),
            Value::Float(1.0),
            Value::Float(2.5e-7),
            Value::Float(f64::INFINITY),
            Value::Float(f64::NEG_INFINITY),
            Value::Float(f64::NAN),
        ] {
            write_value(&mut s, v);
            s.push(' ');
        }
        assert_eq!(s, "18446744073709551615 0.0001 1 0.00000025 +Inf -Inf NaN ");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let mut e = Exposition::new();
        e.histogram("h_seconds", "Durations.", &[0.5, 1.0], &[2, 0, 1], 2.75);
        assert_eq!(
            e.finish(),
            "# HELP h_seconds Durations.\n# TYPE h_seconds histogram\n\
             h_seconds_bucket{le=\"0.5\"} 2\nh_seconds_bucket{le=\"1\"} 2\n\
             h_seconds_bucket{le=\"+Inf\"} 3\nh_seconds_sum 2.75\nh_seconds_count 3\n"
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("makelaar_messages_total"));
        assert!(valid_name("a:b_c9"));
        assert!(!valid_name("9a"));
        assert!(!valid_name("a-b"));
        assert!(!valid_name(""));
        assert!(valid_label_name("qos"));
        assert!(!valid_label_name("__name__"));
        assert!(!valid_label_name("a:b"));
    }
}
