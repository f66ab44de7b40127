//! The shipped artifacts hold together: alert and recording rules pass `promtool check rules` and their
//! unit tests (`promtool test rules`); every PromQL expression in `alerts/` and `dashboards/` parses (with
//! promtool, and with promql-parser) and names only metrics that eventscope exports (or that the rules
//! record, or that Prometheus itself makes); dashboards are well-formed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use promql_parser::parser::{self, Expr};

#[path = "support/grafana.rs"]
mod grafana;
use promql_parser::util::{walk_expr, ExprVisitor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no *.{ext} in {dir}");
    v
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool is installed (Debian package prometheus; .ci/run installs it)");
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rules_pass_promtool_check_and_unit_tests() {
    for f in files("alerts", "yml") {
        promtool(&["check", "rules", f.to_str().unwrap()]);
    }
    for f in files("alerts/tests", "yml") {
        promtool(&["test", "rules", f.to_str().unwrap()]);
    }
}

/// Every alert has the annotations an on-call engineer needs, and every alert has a promtool test.
#[test]
fn every_alert_has_annotations_and_a_test() {
    let tests: String = files("alerts/tests", "yml")
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    for (_, rule) in rules() {
        if let Some(alert) = rule.get("alert").and_then(|a| a.as_str()) {
            let ann = rule.get("annotations").unwrap_or_else(|| panic!("{alert} has no annotations"));
            for key in ["summary", "description", "runbook_url"] {
                assert!(ann.get(key).is_some(), "{alert} lacks annotation {key}");
            }
            assert!(tests.contains(&format!("alertname: {alert}")), "{alert} has no promtool test");
        }
    }
}

fn rules() -> Vec<(PathBuf, serde_yaml::Value)> {
    let mut out = Vec::new();
    for f in files("alerts", "yml") {
        let doc: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        for g in doc["groups"].as_sequence().unwrap() {
            for r in g["rules"].as_sequence().unwrap() {
                out.push((f.clone(), r.clone()));
            }
        }
    }
    out
}

/// Grafana's variables replaced by values PromQL accepts.
fn substitute(expr: &str) -> String {
    grafana::grafana_expr(expr, "5m", "1m", "x")
}

/// Every PromQL expression of every dashboard (panel targets, and the metric inside `label_values(...)`).
fn dashboard_exprs() -> Vec<(PathBuf, String)> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                if let Some(serde_json::Value::String(q)) = m.get("definition") {
                    if let Some(inner) = q.strip_prefix("label_values(") {
                        let inner = inner.trim_end_matches(')');
                        let metric = inner.rsplit_once(',').map(|(m, _)| m).unwrap_or(inner);
                        out.push(metric.trim().to_string());
                    }
                }
                m.values().for_each(|x| walk(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for f in files("dashboards", "json") {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let mut exprs = Vec::new();
        walk(&v, &mut exprs);
        out.extend(exprs.into_iter().map(|e| (f.clone(), e)));
    }
    out
}

struct Names(BTreeSet<String>);

impl ExprVisitor for Names {
    type Error = ();
    fn pre_visit(&mut self, e: &Expr) -> Result<bool, ()> {
        match e {
            Expr::VectorSelector(vs) => {
                self.0.extend(vs.name.clone());
            }
            Expr::MatrixSelector(ms) => {
                self.0.extend(ms.vs.name.clone());
            }
            _ => {}
        }
        Ok(true)
    }
}

fn metric_names(expr: &str) -> BTreeSet<String> {
    let parsed = parser::parse(expr).unwrap_or_else(|e| panic!("{expr:?} does not parse: {e}"));
    let mut names = Names(BTreeSet::new());
    walk_expr(&mut names, &parsed).unwrap();
    names.0
}

#[test]
fn alerts_and_dashboards_use_only_exported_metrics() {
    let exported: BTreeSet<String> = eventscope::telemetry::contract::exported_names()
        .into_iter()
        .map(String::from)
        .collect();
    let histograms = eventscope::telemetry::contract::HISTOGRAMS;
    let recorded: BTreeSet<String> = rules()
        .iter()
        .filter_map(|(_, r)| r.get("record").and_then(|x| x.as_str()).map(String::from))
        .collect();
    // Made by Prometheus for every scrape target, not by the program.
    let prometheus_made = ["up"];
    let known = |name: &str| {
        exported.contains(name)
            || recorded.contains(name)
            || prometheus_made.contains(&name)
            || histograms
                .iter()
                .any(|h| ["_bucket", "_sum", "_count"].iter().any(|s| name == format!("{h}{s}")))
    };
    let mut exprs: Vec<(PathBuf, String)> = rules()
        .into_iter()
        .map(|(f, r)| (f, r["expr"].as_str().unwrap().to_string()))
        .collect();
    exprs.extend(dashboard_exprs());
    assert!(exprs.len() > 20, "expected many expressions, found {}", exprs.len());
    for (file, expr) in exprs {
        let names = metric_names(&substitute(&expr));
        assert!(!names.is_empty(), "{}: {expr:?} names no metric", file.display());
        for n in names {
            assert!(known(&n), "{}: {expr:?} uses {n}, which eventscope does not export", file.display());
        }
    }
}

/// Dashboard queries parse in Prometheus itself: each becomes a recording rule for `promtool check rules`.
#[test]
fn dashboard_queries_parse_with_promtool() {
    let mut yaml = String::from("groups:\n  - name: dashboard-queries\n    rules:\n");
    for (i, (_, e)) in dashboard_exprs().iter().enumerate() {
        yaml.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(&substitute(e)).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("dashboard-queries.yml");
    std::fs::write(&f, yaml).unwrap();
    promtool(&["check", "rules", f.to_str().unwrap()]);
}

#[test]
fn dashboards_are_well_formed() {
    for f in files("dashboards", "json") {
        let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let name = f.display();
        assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty() && u.len() <= 40), "{name}: uid");
        assert!(d["schemaVersion"].as_i64().unwrap() >= 39, "{name}: current schema");
        let vars: Vec<&str> = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert!(vars.contains(&"datasource"), "{name}: a datasource variable");
        // Dashboards of lag series select by cluster and group; the sidecar's by scrape job and instance.
        let needed: &[&str] = match d["uid"].as_str().unwrap() {
            "eventscope-sidecar-kafka" => &["job", "instance"],
            "eventscope-http-sli" => &["service", "route"],
            "eventscope-sagas" => &["cluster", "saga"],
            "eventscope-backlog" => &["broker", "cluster", "destination"],
            _ => &["cluster", "consumergroup"],
        };
        for v in needed {
            assert!(vars.contains(v), "{name}: variable {v}");
        }
        let mut ids = BTreeSet::new();
        let mut cells = BTreeSet::new();
        for p in d["panels"].as_array().unwrap() {
            assert!(ids.insert(p["id"].as_i64().unwrap()), "{name}: duplicate panel id");
            let g = &p["gridPos"];
            let (x, y, w, h) = (
                g["x"].as_i64().unwrap(),
                g["y"].as_i64().unwrap(),
                g["w"].as_i64().unwrap(),
                g["h"].as_i64().unwrap(),
            );
            assert!(
                x >= 0 && w > 0 && x + w <= 24 && h > 0,
                "{name}: panel {} outside the grid",
                p["title"]
            );
            for cx in x..x + w {
                for cy in y..y + h {
                    assert!(cells.insert((cx, cy)), "{name}: panel {} overlaps another", p["title"]);
                }
            }
            if p["type"] != "row" {
                assert_eq!(
                    p["datasource"]["uid"], "${datasource}",
                    "{name}: panel {} uses the datasource variable",
                    p["title"]
                );
                for t in p["targets"].as_array().unwrap() {
                    assert!(t["refId"].is_string() && t["expr"].is_string(), "{name}: target of {}", p["title"]);
                }
            }
        }
    }
}

#[test]
fn metrics_doc_documents_every_metric() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md")).unwrap();
    for name in eventscope::telemetry::contract::exported_names() {
        assert!(doc.contains(&format!("`{name}`")), "docs/metrics.md does not document {name}");
    }
}

/// Dashboards validate against the JSON Schema generated from Grafana's own dashboard types
/// (`@grafana/grafana-foundation-sdk`, built by .ci/install-test-deps), and a broken one does not.
#[test]
fn dashboards_match_grafanas_schema() {
    let home = std::env::var("HOME").unwrap();
    let schema = PathBuf::from(home).join(".cache/eventscope/grafana-schema/dashboard.schema.json");
    assert!(
        schema.exists(),
        "{} is missing: bash .ci/install-test-deps generates it from @grafana/grafana-foundation-sdk",
        schema.display()
    );
    let script = root().join("tests/clients/validate_dashboards.py");
    let run = |files: &[PathBuf]| {
        Command::new("python3")
            .arg(&script)
            .arg(&schema)
            .args(files)
            .output()
            .expect("python3")
    };
    let dashboards = files("dashboards", "json");
    assert!(dashboards.len() >= 3);
    let out = run(&dashboards);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    let mut d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&dashboards[0]).unwrap()).unwrap();
    d["panels"][0]["gridPos"]["w"] = "wide".into();
    d["refresh"] = 30.into();
    std::fs::write(&bad, d.to_string()).unwrap();
    assert!(!run(&[bad]).status.success(), "a broken dashboard passed the schema");
}
