//! Dashboard expressions as Grafana sends them to Prometheus, for the tests that check or run them.

/// `expr` with Grafana's built-in variables set (`$__rate_interval` to `rate_interval`, `$__interval` to
/// `interval`, `$__range` to one hour) and every dashboard variable replaced by `value` (".*" matches
/// everything, as Grafana's "All" does in regex matchers).
pub fn grafana_expr(expr: &str, rate_interval: &str, interval: &str, value: &str) -> String {
    let mut s = expr.to_string();
    for (var, val) in [
        ("$__rate_interval", rate_interval),
        ("$__interval", interval),
        ("${__range}", "1h"),
        ("$__range", "1h"),
    ] {
        s = s.replace(var, val);
    }
    let variable = regex::Regex::new(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?").expect("a valid regex");
    variable.replace_all(&s, value).into_owned()
}
