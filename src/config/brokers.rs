//! The seed's other brokers, watched by the collector beside its Kafka clusters: `[[rabbitmq]]` (the
//! management API), `[[nats]]` (JetStream) and `[[sqs]]` (SQS and SNS). Each entry's `name` becomes the
//! `cluster` label of its series, as a Kafka cluster's does.
//!
//! Secrets come from files (`password_file`, `token_file`, `creds_file`: a Kubernetes Secret mounted as a
//! volume) or from `EVENTSCOPE_...` variables, never from the ConfigMap; they are read when a source
//! connects (a file that cannot be read is an `authorization` error of that poll, with its path), so a
//! rotated Secret is picked up without a restart, and `check-config` runs where the Secret is not mounted.

use std::path::PathBuf;

use serde::Deserialize;

use super::Pattern;

/// A RabbitMQ node or cluster, through its management API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitmqConfig {
    pub name: String,
    /// The management API's base URL, `http://host:15672` (or `https://`).
    pub url: String,
    pub username: String,
    pub password: String,
    /// A file holding the password (wins over `password`).
    pub password_file: Option<PathBuf>,
    /// Virtual hosts to watch (default: all the user may see).
    pub vhosts: Vec<String>,
    pub queue_allow: Vec<Pattern>,
    pub queue_deny: Vec<Pattern>,
    /// Queues per `/api/queues` page (RabbitMQ allows at most 500).
    pub page_size: usize,
    /// A vhost with at most this many queues (the first page's `filtered_count`) is read in one unpaged
    /// answer: the management API lists and sorts every queue for each page it serves, so the pages of a
    /// whole listing cost several times one answer. Larger ones are read in pages, which keeps each
    /// answer's time and the node's memory per request bounded. 0: always pages.
    pub max_unpaged_queues: u64,
    /// Pages requested at once, each on its own connection (RabbitMQ serves them in parallel).
    pub concurrency: usize,
}

impl Default for RabbitmqConfig {
    fn default() -> Self {
        RabbitmqConfig {
            name: String::new(),
            url: String::new(),
            // The management plugin's own default user, as rabbitmq_exporter's defaults.
            username: "guest".into(),
            password: "guest".into(),
            password_file: None,
            vhosts: Vec::new(),
            queue_allow: Vec::new(),
            queue_deny: Vec::new(),
            page_size: 500,
            max_unpaged_queues: 20_000,
            concurrency: 2,
        }
    }
}

/// A NATS server or cluster with JetStream.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    pub name: String,
    /// `nats://host:port` (or `host:port`), as NATS clients take them.
    pub servers: Vec<String>,
    pub user: String,
    pub password: String,
    pub password_file: Option<PathBuf>,
    pub token: String,
    pub token_file: Option<PathBuf>,
    /// A `.creds` file (JWT and NKey seed), as `nats --creds`.
    pub creds_file: Option<PathBuf>,
    /// The JetStream domain, when the account uses one.
    pub domain: String,
    pub stream_allow: Vec<Pattern>,
    pub stream_deny: Vec<Pattern>,
    pub consumer_allow: Vec<Pattern>,
    pub consumer_deny: Vec<Pattern>,
}

/// SQS queues (and the SNS topics that feed them) of one account and region.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqsConfig {
    pub name: String,
    /// The AWS region (default: the SDK's chain, `AWS_REGION`, the profile).
    pub region: String,
    /// Another endpoint than AWS's (a VPC endpoint, an emulator).
    pub endpoint_url: String,
    /// Only queues whose names start with this (SQS's own `QueueNamePrefix`).
    pub queue_name_prefix: String,
    /// Read SNS topics and their subscriptions, so that a queue carries the topic that feeds it.
    pub sns: Option<bool>,
}

impl SqsConfig {
    pub fn sns(&self) -> bool {
        self.sns.unwrap_or(true)
    }
}

/// The problems of the broker sections, `(key, reason)`, keys relative to the configuration's root.
pub fn problems(rabbitmq: &[RabbitmqConfig], nats: &[NatsConfig], sqs: &[SqsConfig], kafka_names: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut names: Vec<String> = kafka_names.iter().map(|s| s.to_string()).collect();
    for (i, r) in rabbitmq.iter().enumerate() {
        let k = |s: &str| format!("rabbitmq[{i}].{s}");
        check_name(&mut out, k("name"), &r.name, &mut names);
        if let Err(why) = HttpBase::parse(&r.url) {
            out.push((k("url"), why));
        }
        if r.username.is_empty() {
            out.push((k("username"), "required".into()));
        }
        if r.page_size == 0 || r.page_size > 500 {
            out.push((k("page_size"), "must be between 1 and 500 (RabbitMQ's largest page)".into()));
        }
        if r.concurrency == 0 || r.concurrency > 8 {
            out.push((k("concurrency"), "must be between 1 and 8 connections".into()));
        }
    }
    for (i, n) in nats.iter().enumerate() {
        let k = |s: &str| format!("nats[{i}].{s}");
        check_name(&mut out, k("name"), &n.name, &mut names);
        if n.servers.is_empty() {
            out.push((k("servers"), "required: nats://host:port[, ...]".into()));
        }
        for (j, s) in n.servers.iter().enumerate() {
            if let Err(why) = nats_server(s) {
                out.push((format!("nats[{i}].servers[{j}]"), why));
            }
        }
        let user = !n.user.is_empty();
        let token = !n.token.is_empty() || n.token_file.is_some();
        let creds = n.creds_file.is_some();
        if [user, token, creds].iter().filter(|b| **b).count() > 1 {
            out.push((k("user"), "use one of user/password, token (token_file) or creds_file".into()));
        }
        if !user && (!n.password.is_empty() || n.password_file.is_some()) {
            out.push((k("password"), "a password needs a user".into()));
        }
    }
    for (i, s) in sqs.iter().enumerate() {
        let k = |key: &str| format!("sqs[{i}].{key}");
        check_name(&mut out, k("name"), &s.name, &mut names);
        if !s.endpoint_url.is_empty() {
            if let Err(why) = HttpBase::parse(&s.endpoint_url) {
                out.push((k("endpoint_url"), why));
            }
        }
        if !s.region.is_empty() && !s.region.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            out.push((k("region"), format!("{:?} is not a region name (such as eu-west-1)", s.region)));
        }
    }
    out
}

/// A source's name becomes its `cluster` label: required, and unique among clusters and brokers.
fn check_name(out: &mut Vec<(String, String)>, key: String, name: &str, names: &mut Vec<String>) {
    if name.is_empty() {
        out.push((key, "required (it becomes the `cluster` label)".into()));
    } else if names.iter().any(|n| n == name) {
        out.push((key, format!("{name:?} is used by another cluster or broker")));
    } else {
        names.push(name.to_string());
    }
}

/// A NATS server address: `nats://host:port`, `tls://host:port` or `host:port`.
pub fn nats_server(s: &str) -> Result<(), String> {
    let rest = s.strip_prefix("nats://").or_else(|| s.strip_prefix("tls://")).unwrap_or(s);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    super::HostPort::parse(rest)
        .map(|_| ())
        .map_err(|_| format!("{s:?} is not nats://host:port"))
}

/// An HTTP(S) base URL, checked: scheme, host, port (the scheme's default) and a path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpBase {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Without a trailing `/` (empty at the root).
    pub path: String,
}

impl HttpBase {
    pub fn parse(s: &str) -> Result<HttpBase, String> {
        if s.is_empty() {
            return Err("required: http://host:port".into());
        }
        let uri: http::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("{s:?}: the scheme must be http or https")),
        };
        let auth = uri.authority().ok_or_else(|| format!("{s:?} has no host"))?;
        if auth.as_str().contains('@') {
            return Err(format!("{s:?}: put credentials in username/password, not in the URL"));
        }
        if uri.query().is_some() {
            return Err(format!("{s:?}: a base URL takes no query"));
        }
        Ok(HttpBase {
            tls,
            host: auth.host().trim_start_matches('[').trim_end_matches(']').to_string(),
            port: auth.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            path: uri.path().trim_end_matches('/').to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let b = HttpBase::parse("http://127.0.0.1:15672").unwrap();
        assert_eq!((b.tls, b.host.as_str(), b.port, b.path.as_str()), (false, "127.0.0.1", 15672, ""));
        let b = HttpBase::parse("https://rabbit.example/mgmt/").unwrap();
        assert_eq!((b.tls, b.port, b.path.as_str()), (true, 443, "/mgmt"));
        assert!(HttpBase::parse("ftp://x").is_err());
        assert!(HttpBase::parse("http://u:p@x:1").is_err());
        assert!(HttpBase::parse("").is_err());
    }

    #[test]
    fn nats_servers() {
        assert!(nats_server("nats://127.0.0.1:4222").is_ok());
        assert!(nats_server("127.0.0.1:4222").is_ok());
        assert!(nats_server("nats://nohost").is_err());
    }
}
