//! Bad configuration: every problem reported at once with its key, exit code 64.

use std::io::Write;
use std::process::Command;

fn check(toml: &str, args: &[&str]) -> (i32, String, String) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(toml.as_bytes()).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_eventscope"));
    for a in args {
        cmd.arg(a);
    }
    let out = cmd.arg(f.path()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn every_problem_is_reported_and_exit_is_64() {
    let bad = r#"
[admin]
listen = "localhost"
[collector]
poll_interval = "fast"
pol_interval = "5s"
max_concurrency = 0
[[clusters]]
name = "a"
kafka = { "bootstrap.servers" = "broker-without-port", "security.protocol" = "SASL_SSL" }
topic_deny = ["[unclosed"]
[[clusters]]
name = "a"
"#;
    for args in [&["check-config"][..], &["collector", "--config"][..]] {
        let (code, _, stderr) = check(bad, args);
        assert_eq!(code, 64, "{args:?}: {stderr}");
        for key in [
            "admin.listen",
            "collector.poll_interval",
            "collector.pol_interval",
            "collector.max_concurrency",
            "clusters[0].kafka.\"bootstrap.servers\"",
            "clusters[0].kafka.\"sasl.mechanism\"",
            "clusters[0].kafka.\"sasl.username\"",
            "clusters[0].kafka.\"sasl.password\"",
            "clusters[0].topic_deny[0]",
            "clusters[1].name",
            "clusters[1].kafka.\"bootstrap.servers\"",
        ] {
            assert!(stderr.contains(&format!("- {key}:")), "{key} missing from:\n{stderr}");
        }
    }
}

#[test]
fn not_toml_and_missing_file_are_64() {
    assert_eq!(check("[[clusters]\n", &["check-config"]).0, 64);
    let out = Command::new(env!("CARGO_BIN_EXE_eventscope"))
        .args(["check-config", "/nonexistent/eventscope.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn the_shipped_example_is_valid() {
    let out = Command::new(env!("CARGO_BIN_EXE_eventscope"))
        .args([
            "check-config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/eventscope.example.toml"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}
