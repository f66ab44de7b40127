//! The checks that span keys: ranges, Kafka client properties, combinations, what each role requires.
//! Values of a single key are checked as they are deserialized (see [`super::types`]).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::{Config, ConfigIssue, Role};

/// Kafka client properties the collector understands besides the security ones.
const KAFKA_PROPERTIES: &[&str] = &["bootstrap.servers", "client.id"];

/// `ui.trace_url`: an `http(s)` URL with `{trace_id}` in it.
pub fn check_trace_url(url: &str) -> Result<(), String> {
    if (url.starts_with("http://") || url.starts_with("https://")) && url.contains("{trace_id}") {
        Ok(())
    } else {
        Err(format!("{url:?}: must be an http:// or https:// URL with {{trace_id}} in it"))
    }
}

impl Config {
    /// Checks the meaning of every key and returns every problem found.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut out = Vec::new();
        let mut push = |key: String, reason: String| out.push(ConfigIssue { key, reason });
        if let Some(Err(why)) = self.ui.trace_url.as_deref().map(check_trace_url) {
            push("ui.trace_url".into(), why);
        }
        let c = &self.collector;
        if c.poll_interval < Duration::from_millis(100) {
            push("collector.poll_interval".into(), "must be at least 100ms".into());
        }
        if c.request_timeout < Duration::from_millis(100) {
            push("collector.request_timeout".into(), "must be at least 100ms".into());
        }
        if c.max_concurrency == 0 || c.max_concurrency > 1024 {
            push("collector.max_concurrency".into(), "must be between 1 and 1024".into());
        }
        if c.status_window < 2 || c.status_window > 1000 {
            push("collector.status_window".into(), "must be between 2 and 1000".into());
        }
        if c.max_response_bytes < 1024 * 1024 || c.max_response_bytes > 1024 * 1024 * 1024 {
            push("collector.max_response_bytes".into(), "must be between 1 MiB and 1 GiB".into());
        }
        if let Some(sc) = &self.sidecar {
            if sc.max_frame_bytes < 1024 * 1024 || sc.max_frame_bytes > 1024 * 1024 * 1024 {
                push("sidecar.max_frame_bytes".into(), "must be between 1 MiB and 1 GiB".into());
            }
            if sc.max_batch_bytes < 1024 || sc.max_batch_bytes > sc.max_frame_bytes {
                push("sidecar.max_batch_bytes".into(), "must be between 1 KiB and max_frame_bytes".into());
            }
            if sc.max_connections == 0 {
                push("sidecar.max_connections".into(), "must be at least 1".into());
            }
            if sc.worker_threads == 0 || sc.worker_threads > 64 {
                push("sidecar.worker_threads".into(), "must be between 1 and 64".into());
            }
            let h = &sc.http;
            if h.outbound_listen.is_some() && !h.enabled() {
                push(
                    "sidecar.http.outbound_listen".into(),
                    "the outbound proxy runs beside the inbound one: set sidecar.http.upstream too".into(),
                );
            }
            if h.max_routes == 0 || h.max_routes > 10_000 {
                push("sidecar.http.max_routes".into(), "must be between 1 and 10000".into());
            }
            for (key, d) in [
                ("connect_timeout", h.connect_timeout),
                ("response_timeout", h.response_timeout),
                ("header_read_timeout", h.header_read_timeout),
                ("idle_timeout", h.idle_timeout),
            ] {
                if d.is_zero() {
                    push(format!("sidecar.http.{key}"), "must be more than 0".into());
                }
            }
            if h.max_header_bytes < 8192 || h.max_header_bytes > 1024 * 1024 {
                push("sidecar.http.max_header_bytes".into(), "must be between 8192 and 1 MiB".into());
            }
            if h.max_connections == 0 {
                push("sidecar.http.max_connections".into(), "must be at least 1".into());
            }
            for key in sc.kafka.keys() {
                if key.starts_with("sasl.") {
                    push(
                        format!("sidecar.kafka.\"{key}\""),
                        "SASL is the application's own: it passes through the proxy, so it is not configured here".into(),
                    );
                } else if !crate::kafka::security::SECURITY_PROPERTIES.contains(&key.as_str()) {
                    push(
                        format!("sidecar.kafka.\"{key}\""),
                        "only security.protocol and ssl.* apply to the sidecar's upstream connections".into(),
                    );
                }
            }
            let upstream: BTreeMap<String, String> = sc
                .kafka
                .iter()
                .filter(|(k, _)| !k.starts_with("sasl."))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            match crate::kafka::Security::from_properties(&upstream) {
                Ok(sec) if sec.sasl.is_some() => push(
                    "sidecar.kafka.\"security.protocol\"".into(),
                    "use PLAINTEXT or SSL: SASL passes through from the application".into(),
                ),
                Ok(_) => {}
                Err(problems) => {
                    for (property, reason) in problems {
                        if !property.starts_with("sasl.") {
                            push(format!("sidecar.kafka.\"{property}\""), reason);
                        }
                    }
                }
            }
        }
        let mut names = HashSet::new();
        for (i, cl) in self.clusters.iter().enumerate() {
            let k = |s: &str| format!("clusters[{i}].{s}");
            if cl.name.is_empty() {
                push(k("name"), "required (it becomes the `cluster` label)".into());
            } else if !names.insert(cl.name.clone()) {
                push(k("name"), format!("{:?} is used by another cluster", cl.name));
            }
            match cl.kafka.get("bootstrap.servers").map(|s| super::Servers::parse(s)) {
                Some(Err(why)) => push(k("kafka.\"bootstrap.servers\""), why),
                Some(Ok(s)) if !s.is_empty() => {}
                _ => push(k("kafka.\"bootstrap.servers\""), "required: host:port[,host:port...]".into()),
            }
            for key in cl.kafka.keys() {
                if !KAFKA_PROPERTIES.contains(&key.as_str()) && !crate::kafka::security::SECURITY_PROPERTIES.contains(&key.as_str()) {
                    let known: Vec<&str> = KAFKA_PROPERTIES
                        .iter()
                        .chain(crate::kafka::security::SECURITY_PROPERTIES)
                        .copied()
                        .collect();
                    push(
                        k(&format!("kafka.\"{key}\"")),
                        format!("unknown or unsupported Kafka client property; supported: {}", known.join(", ")),
                    );
                }
            }
            if let Err(problems) = crate::kafka::Security::from_properties(&cl.kafka) {
                for (property, reason) in problems {
                    push(k(&format!("kafka.\"{property}\"")), reason);
                }
            }
            if !cl.groups.is_empty() && (!cl.group_allow.is_empty() || !cl.group_deny.is_empty()) {
                push(
                    k("groups"),
                    "an explicit groups list cannot be combined with group_allow/group_deny".into(),
                );
            }
        }
        let cluster_names: Vec<&str> = self.clusters.iter().map(|c| c.name.as_str()).filter(|n| !n.is_empty()).collect();
        let mut saga_names = HashSet::new();
        for (i, saga) in self.sagas.iter().enumerate() {
            for (key, reason) in saga.problems(&cluster_names) {
                push(format!("sagas[{i}].{key}"), reason);
            }
            if !saga.name.is_empty() && !saga_names.insert((saga.cluster.as_str(), saga.name.as_str())) {
                push(
                    format!("sagas[{i}].name"),
                    format!("{:?} is used by another saga of this cluster", saga.name),
                );
            }
        }
        for (key, reason) in super::brokers::problems(&self.rabbitmq, &self.nats, &self.sqs, &cluster_names) {
            push(key, reason);
        }
        out
    }

    /// What a role requires beyond the general checks.
    pub fn validate_role(&self, role: Role) -> Vec<ConfigIssue> {
        let mut out = Vec::new();
        match role {
            Role::Collector if !self.watches_anything() => out.push(ConfigIssue {
                key: "clusters".into(),
                reason: "at least one [[clusters]], [[rabbitmq]], [[nats]] or [[sqs]] entry is required".into(),
            }),
            Role::Sidecar
                if self
                    .sidecar
                    .as_ref()
                    .is_none_or(|s| s.kafka_bootstrap.is_empty() && !s.http.enabled()) =>
            {
                out.push(ConfigIssue {
                    key: "sidecar.kafka_bootstrap".into(),
                    reason: "required: the cluster's bootstrap servers (--kafka-bootstrap, EVENTSCOPE_KAFKA_BOOTSTRAP), \
                             unless the sidecar only proxies HTTP (--http-upstream)"
                        .into(),
                })
            }
            _ => {}
        }
        out
    }
}
