//! The Prometheus text format's spelling: `# HELP`/`# TYPE` lines, sample values, escaped label values.

use std::fmt::Write as _;

use super::contract::Family;

/// Writes the `# HELP` and `# TYPE` lines of a family.
pub fn write_header(out: &mut String, f: &Family) {
    let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
    let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
}

/// Writes a sample value as the text format spells it: integers without a decimal point, `NaN`, `+Inf`,
/// `-Inf`.
pub fn write_value(out: &mut String, value: f64) {
    if value.is_finite() {
        if value == value.trunc() && value.abs() < 1e15 {
            let _ = write!(out, "{}", value as i64);
        } else {
            let _ = write!(out, "{value}");
        }
    } else if value.is_nan() {
        out.push_str("NaN");
    } else if value > 0.0 {
        out.push_str("+Inf");
    } else {
        out.push_str("-Inf");
    }
}

/// Appends a label value, escaped as the text format requires.
pub fn escape_into(out: &mut Vec<u8>, v: &str) {
    if !v.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.extend_from_slice(v.as_bytes());
        return;
    }
    for b in v.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\n' => out.extend_from_slice(b"\\n"),
            b => out.push(b),
        }
    }
}

/// `name="value"` pairs, escaped, without braces.
pub fn label_set(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"=\"");
        escape_into(&mut out, v);
        out.push(b'"');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_spelled_as_the_text_format_wants() {
        for (v, want) in [
            (1.5, "1.5"),
            (42.0, "42"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
        ] {
            let mut s = String::new();
            write_value(&mut s, v);
            assert_eq!(s, want);
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_set(&[("a", "x\"y\\z\nw")]), b"a=\"x\\\"y\\\\z\\nw\"");
        assert_eq!(label_set(&[("le", "+Inf"), ("b", "plain")]), b"le=\"+Inf\",b=\"plain\"");
    }
}
