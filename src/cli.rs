//! The command line (clap): roles and tools.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "eventscope",
    version,
    about = "Consumer lag, lag seconds and consistency windows for Kafka-based microservices"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Cluster-wide collector: lag, lag seconds, status and consistency windows of every consumer group.
    Collector {
        /// The TOML configuration file (see config/eventscope.example.toml).
        #[arg(long, short, env = "EVENTSCOPE_CONFIG")]
        config: PathBuf,
    },
    /// Sidecar in the application's pod: a Kafka protocol proxy between the application and its cluster.
    /// The common case needs no file: `--kafka-bootstrap kafka:9092`.
    Sidecar {
        /// A TOML configuration file (optional; flags and EVENTSCOPE_... variables override it).
        #[arg(long, short, env = "EVENTSCOPE_CONFIG")]
        config: Option<PathBuf>,
        /// The real cluster's bootstrap servers (config key sidecar.kafka_bootstrap).
        #[arg(long, env = "EVENTSCOPE_KAFKA_BOOTSTRAP")]
        kafka_bootstrap: Option<String>,
        /// Where the application connects; its bootstrap.servers (sidecar.kafka_listen, default 127.0.0.1:19092).
        #[arg(long, env = "EVENTSCOPE_KAFKA_LISTEN")]
        kafka_listen: Option<String>,
        /// Address of /metrics, /healthz, /readyz (admin.listen, default 0.0.0.0:9464).
        #[arg(long, env = "EVENTSCOPE_ADMIN_LISTEN")]
        admin_listen: Option<String>,
        /// The HTTP proxy's port, in front of the application (sidecar.http.listen, default 0.0.0.0:15001).
        #[arg(long, env = "EVENTSCOPE_HTTP_LISTEN")]
        http_listen: Option<String>,
        /// The application's HTTP address; turns the HTTP proxy on (sidecar.http.upstream, e.g. 127.0.0.1:8080).
        #[arg(long, env = "EVENTSCOPE_HTTP_UPSTREAM")]
        http_upstream: Option<String>,
        /// The `service` label of the HTTP SLIs (sidecar.http.service; default OTEL_SERVICE_NAME).
        #[arg(long, env = "EVENTSCOPE_SERVICE")]
        service: Option<String>,
        /// The outbound proxy for the application's calls, its HTTP_PROXY (sidecar.http.outbound_listen).
        #[arg(long, env = "EVENTSCOPE_HTTP_OUTBOUND_LISTEN")]
        http_outbound_listen: Option<String>,
    },
    /// Validates a configuration file, reports every problem, exits 64 if there is one.
    CheckConfig {
        /// The TOML configuration file.
        file: PathBuf,
    },
    /// Runs an embedded Kafka (librdkafka's mock cluster), producers, three consumer groups and the
    /// collector, and prints a live table. No Kafka to install.
    Demo {
        /// Where to serve /metrics, /healthz, /readyz.
        #[arg(long, default_value = "127.0.0.1:9464")]
        admin_listen: String,
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
        /// Seconds between two tables.
        #[arg(long, default_value_t = 5)]
        every: u64,
        /// Where the page links trace ids (ui.trace_url); the default is a Jaeger UI on this machine.
        #[arg(long, default_value = "http://127.0.0.1:16686/trace/{trace_id}")]
        trace_url: String,
    },
}
