//! The Prometheus text format's spelling: `# HELP`/`# TYPE` lines, sample values, escaped label values;
//! and reading a sample line back (the page's view, tests).

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

/// One sample line of the text format.
#[derive(Debug, PartialEq)]
pub struct Line<'a> {
    pub name: &'a str,
    pub labels: Vec<(&'a str, String)>,
    pub value: f64,
}

impl Line<'_> {
    /// The value of label `k`, if the line has it.
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str())
    }
}

/// Parses one line of the Prometheus text format (comments and malformed lines: `None`).
pub fn parse_line(line: &str) -> Option<Line<'_>> {
    if line.starts_with('#') || line.is_empty() {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            rest = rest.trim_start_matches(',');
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find("=\"")?;
            let key = &rest[..eq];
            rest = &rest[eq + 2..];
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((key, value));
            rest = &rest[end + 1..];
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Line { name, labels, value })
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

    #[test]
    fn lines_parse_with_escapes_and_bad_lines_do_not() {
        let l = parse_line(r#"x{a="1",b="q\"\\\n"} 2.5"#).unwrap();
        assert_eq!(l.name, "x");
        assert_eq!(l.labels, vec![("a", "1".to_string()), ("b", "q\"\\\n".to_string())]);
        assert_eq!(l.value, 2.5);
        assert_eq!(parse_line("y 3").unwrap().value, 3.0);
        assert_eq!(parse_line(r#"z{le="+Inf"} +Inf"#).unwrap().value, f64::INFINITY);
        for bad in ["# HELP x", "", "x{a=\"1\" 2", "x{a=1} 2", "x", "x{a=\"1\"} nope"] {
            assert!(parse_line(bad).is_none(), "{bad}");
        }
    }
}
