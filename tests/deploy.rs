//! The Kubernetes manifests in `deploy/` hold together: every resource and the kustomize output pass
//! `kubernetes-validate --strict` (PyPI) for a current Kubernetes; the PrometheusRule is exactly
//! `alerts/*.rules.yml`; the ConfigMaps' configurations pass `eventscope check-config`; containers are
//! hardened, probed and sized; monitors select what the manifests run; the Alertmanager configuration
//! passes `amtool check-config` and routes `KafkaConsumerLagHigh` to its receiver.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

const KUBERNETES_VERSION: &str = "1.32.0";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

/// The kustomization's resources, as `kustomize build` renders this base: each resource with the
/// kustomization's namespace and labels applied.
fn rendered() -> Vec<Value> {
    let base = root().join("deploy/base");
    let k: Value = serde_yaml::from_str(&std::fs::read_to_string(base.join("kustomization.yaml")).unwrap()).unwrap();
    let namespace = k["namespace"].as_str().unwrap().to_string();
    let labels = k["labels"][0]["pairs"].as_mapping().unwrap().clone();
    let mut out = Vec::new();
    for r in k["resources"].as_sequence().unwrap() {
        for mut d in docs(&base.join(r.as_str().unwrap())) {
            let meta = d["metadata"].as_mapping_mut().unwrap();
            meta.insert("namespace".into(), namespace.clone().into());
            let l = meta
                .entry("labels".into())
                .or_insert(Value::Mapping(Default::default()))
                .as_mapping_mut()
                .unwrap();
            for (key, value) in &labels {
                l.insert(key.clone(), value.clone());
            }
            out.push(d);
        }
    }
    out
}

fn kubernetes_validate(files: &[&Path]) {
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "-k", KUBERNETES_VERSION, "--strict"])
        .args(files)
        .output()
        .expect("kubernetes-validate is installed (pip install kubernetes-validate; .ci/run installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kubernetes-validate failed:\n{text}");
    assert!(!text.contains("ERROR"), "{text}");
    // Prometheus Operator kinds have no schema in kubernetes-validate; every other kind must pass.
    for line in text.lines().filter(|l| l.contains("Couldn't find schema")) {
        assert!(
            ["PodMonitor", "ServiceMonitor", "PrometheusRule"].iter().any(|k| line.contains(k)),
            "{line}"
        );
    }
    assert!(text.contains("passed for resource deployment/"), "{text}");
}

#[test]
fn manifests_and_kustomize_output_pass_kubernetes_validate_strict() {
    let base = root().join("deploy/base");
    let files: Vec<PathBuf> = ["example-app.yaml", "collector.yaml", "prometheusrule.yaml"]
        .iter()
        .map(|f| base.join(f))
        .collect();
    kubernetes_validate(&files.iter().map(PathBuf::as_path).collect::<Vec<_>>());
    let dir = tempfile::tempdir().unwrap();
    let all = dir.path().join("kustomize-build.yaml");
    let text: Vec<String> = rendered().iter().map(|d| serde_yaml::to_string(d).unwrap()).collect();
    std::fs::write(&all, text.join("---\n")).unwrap();
    kubernetes_validate(&[&all]);

    // A manifest with a typo must fail: the check is real.
    let bad = dir.path().join("bad.yaml");
    let broken = std::fs::read_to_string(base.join("collector.yaml"))
        .unwrap()
        .replace("readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true");
    std::fs::write(&bad, broken).unwrap();
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "-k", KUBERNETES_VERSION, "--strict"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a misspelt field passed --strict validation");
}

#[test]
fn prometheusrule_is_exactly_the_shipped_rules() {
    let mut groups = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("alerts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".rules.yml"))
        .collect();
    files.sort();
    for f in files {
        let v: Value = serde_yaml::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        groups.extend(v["groups"].as_sequence().unwrap().iter().cloned());
    }
    let rule = &docs(&root().join("deploy/base/prometheusrule.yaml"))[0];
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(
        rule["spec"]["groups"].as_sequence().unwrap(),
        &groups,
        "deploy/base/prometheusrule.yaml differs from alerts/: run python3 deploy/generate-prometheusrule.py"
    );
}

fn containers(pod: &Value) -> Vec<&Value> {
    let spec = &pod["spec"]["template"]["spec"];
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| spec[*k].as_sequence())
        .flatten()
        .collect()
}

#[test]
fn containers_are_hardened_probed_and_sized() {
    let all = rendered();
    let deployments: Vec<&Value> = all.iter().filter(|d| d["kind"] == "Deployment").collect();
    assert_eq!(deployments.len(), 2);
    for d in &deployments {
        let name = d["metadata"]["name"].as_str().unwrap();
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        for c in containers(d) {
            let cname = format!("{name}/{}", c["name"].as_str().unwrap());
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{cname}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{cname}");
            assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{cname}");
            assert!(c["resources"]["requests"]["memory"].is_string(), "{cname}: memory request");
            assert!(c["resources"]["limits"]["memory"].is_string(), "{cname}: memory limit");
            if c["image"].as_str().unwrap().contains("eventscope") {
                assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{cname}");
                assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{cname}");
            }
        }
    }
    // The sidecar is a native sidecar: an init container that keeps running.
    let app = deployments.iter().find(|d| d["metadata"]["name"] == "orders").unwrap();
    let sidecar = &app["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["args"][0], "sidecar");
    let env: Vec<&str> = sidecar["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for v in [
        "POD_NAME",
        "POD_NAMESPACE",
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ] {
        assert!(env.contains(&v), "sidecar env {v}");
    }
}

#[test]
fn configmaps_hold_valid_configurations() {
    for d in rendered().iter().filter(|d| d["kind"] == "ConfigMap") {
        for (key, text) in d["data"].as_mapping().unwrap() {
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join(key.as_str().unwrap());
            std::fs::write(&f, text.as_str().unwrap()).unwrap();
            let out = Command::new(env!("CARGO_BIN_EXE_eventscope"))
                .arg("check-config")
                .arg(&f)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}/{key:?}: {}",
                d["metadata"]["name"].as_str().unwrap(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn monitors_select_what_the_manifests_run() {
    let all = rendered();
    let find = |kind: &str, name: &str| {
        all.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind}/{name}"))
    };
    let selects = |selector: &Value, labels: &Value| {
        selector["matchLabels"]
            .as_mapping()
            .unwrap()
            .iter()
            .all(|(k, v)| labels[k.as_str().unwrap()] == *v)
    };
    // PodMonitor → the application's pods, on the sidecar's admin port.
    let pm = find("PodMonitor", "eventscope-sidecars");
    let app = find("Deployment", "orders");
    assert!(selects(&pm["spec"]["selector"], &app["spec"]["template"]["metadata"]["labels"]));
    let port = pm["spec"]["podMetricsEndpoints"][0]["port"].as_str().unwrap();
    assert!(containers(app).iter().any(|c| c["ports"]
        .as_sequence()
        .is_some_and(|ps| ps.iter().any(|p| p["name"] == port && p["containerPort"] == 9464))));
    // ServiceMonitor → the collector's Service → the collector's pods.
    let sm = find("ServiceMonitor", "eventscope-collector");
    let svc = find("Service", "eventscope-collector");
    assert!(selects(&sm["spec"]["selector"], &svc["metadata"]["labels"]));
    assert_eq!(sm["spec"]["endpoints"][0]["port"], svc["spec"]["ports"][0]["name"]);
    let collector = find("Deployment", "eventscope-collector");
    assert!(selects(
        &Value::from(serde_yaml::Mapping::from_iter([(
            "matchLabels".into(),
            svc["spec"]["selector"].clone()
        )])),
        &collector["spec"]["template"]["metadata"]["labels"]
    ));
    // The application's Service reaches the sidecar's HTTP port.
    let app_svc = find("Service", "orders");
    assert_eq!(app_svc["spec"]["ports"][0]["targetPort"], 15001);
}

#[test]
fn alertmanager_routes_consumer_lag_to_its_receiver() {
    let config = root().join("deploy/alertmanager/alertmanager.yml");
    let out = Command::new("amtool")
        .args(["check-config"])
        .arg(&config)
        .output()
        .expect("amtool is installed (Debian package prometheus-alertmanager)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let route = |labels: &[&str]| {
        let out = Command::new("amtool")
            .args(["config", "routes", "test", "--config.file"])
            .arg(&config)
            .args(labels)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        route(&[
            "alertname=KafkaConsumerLagHigh",
            "cluster=prod",
            "consumergroup=orders-read-model",
            "topic=orders"
        ]),
        "kafka-consumer-lag"
    );
    assert_eq!(
        route(&["alertname=HttpErrorBudgetBurnFast", "severity=page", "service=orders"]),
        "on-call"
    );
    assert_eq!(
        route(&["alertname=SagaCompensationMissing", "severity=critical", "saga=order"]),
        "sagas"
    );
    for alert in [
        "EventBacklogHigh",
        "EventConsumerStalled",
        "DeadLetterQueueReceiving",
        "KafkaPartitionSkew",
    ] {
        assert_eq!(
            route(&[
                &format!("alertname={alert}"),
                "severity=warning",
                "broker=rabbitmq",
                "cluster=tasks"
            ]),
            "event-backlog"
        );
    }
    assert_eq!(route(&["alertname=EventscopeCollectorErrors", "severity=warning"]), "default");
}
