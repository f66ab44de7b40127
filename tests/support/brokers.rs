//! The seed's other brokers, real servers from Debian started by the tests on 127.0.0.1 with fresh ports
//! and stopped when dropped: a RabbitMQ node (with the management plugin) and a NATS server with
//! JetStream; and moto's server for SQS and SNS (an emulator, PyPI's `moto[server]`: the one SQS and SNS
//! implementation that installs here). `bash .ci/install-test-deps` installs them.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, http_get_auth, tool, wait_for};

/// Runs `tests/clients/rabbitmq_traffic.py` (pika) with `args`, checks that it succeeded, and returns what
/// it printed.
pub fn pika(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/rabbitmq_traffic.py"))
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "rabbitmq_traffic.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A RabbitMQ node of its own: its own node name, ports, Erlang port mapper and data folder.
pub struct Rabbitmq {
    pub amqp_port: u16,
    pub management_port: u16,
    epmd_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    statistics_interval_ms: u32,
}

impl Rabbitmq {
    /// Starts a node and waits until its management API answers (10 to 30 s on 2 cores).
    /// Statistics are refreshed every second (5 s by default), so that counts settle quickly in the tests.
    pub fn start() -> Rabbitmq {
        Rabbitmq::start_with_statistics_every(1000)
    }

    /// As `start`, with `collect_statistics_interval` in milliseconds (RabbitMQ's default: 5000).
    pub fn start_with_statistics_every(statistics_interval_ms: u32) -> Rabbitmq {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Rabbitmq {
            amqp_port: free_port(),
            management_port: free_port(),
            epmd_port: free_port(),
            dir,
            child: None,
            statistics_interval_ms,
        };
        r.boot();
        r
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn boot(&mut self) {
        std::fs::write(
            self.path("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{}\nmanagement.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {}\n\
                 collect_statistics_interval = {}\nloopback_users = none\n",
                self.amqp_port, self.management_port, self.statistics_interval_ms
            ),
        )
        .unwrap();
        std::fs::write(self.path("enabled_plugins"), "[rabbitmq_management].\n").unwrap();
        let server = "/usr/lib/rabbitmq/bin/rabbitmq-server";
        assert!(
            std::path::Path::new(server).exists(),
            "the tests need RabbitMQ (Debian's rabbitmq-server package): run `bash .ci/install-test-deps`"
        );
        let dist_port = free_port();
        // The server script itself (not Debian's wrapper, which switches to the rabbitmq user): the node
        // runs as the test's user, in a folder the test owns.
        let child = Command::new(server)
            .current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .env("RABBITMQ_NODENAME", format!("es{}@localhost", self.amqp_port))
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_MNESIA_BASE", self.path("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.path("log"))
            .env("RABBITMQ_LOGS", self.path("node.log"))
            .env("RABBITMQ_CONFIG_FILE", self.path("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", self.path("enabled_plugins"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let api = self.management();
        wait_for(Duration::from_secs(120), "RabbitMQ's management API", || {
            http_get_auth(&api, "/api/overview", "guest:guest").filter(|(s, _)| *s == 200)
        });
    }

    /// `127.0.0.1:port` of the management API.
    pub fn management(&self) -> String {
        format!("127.0.0.1:{}", self.management_port)
    }

    /// A `GET` on the management API as guest: `(status, body)`.
    pub fn api(&self, path: &str) -> Option<(u16, String)> {
        http_get_auth(&self.management(), path, "guest:guest")
    }

    /// Kills the node (SIGKILL: a crash) and its port mapper.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The script's child is the Erlang VM.
            let _ = Command::new("pkill").args(["-KILL", "-P", &child.id().to_string()]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("epmd")
            .args(["-port", &self.epmd_port.to_string(), "-kill"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Starts the node again on the same ports and data (durable queues and their messages survive).
    pub fn restart(&mut self) {
        self.kill();
        self.boot();
    }
}

impl Drop for Rabbitmq {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `nats-server -js` on fresh ports, with its JetStream store in a folder of its own.
pub struct NatsServer {
    pub port: u16,
    pub monitor_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let mut n = NatsServer {
            port: free_port(),
            monitor_port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        n.boot();
        n
    }

    fn boot(&mut self) {
        let child = tool("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-m",
                &self.monitor_port.to_string(),
                "-sd",
                self.dir.path().to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let monitor = format!("127.0.0.1:{}", self.monitor_port);
        wait_for(Duration::from_secs(20), "nats-server /healthz", || {
            super::http_get(&monitor, "/healthz?js-enabled-only=true").filter(|(s, _)| *s == 200)
        });
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.boot();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// moto's server (an emulator: the one SQS and SNS implementation that installs here) on a fresh port.
pub struct Moto {
    pub port: u16,
    child: std::process::Child,
}

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let child = tool("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(Duration::from_secs(30), "moto_server", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Moto { port, child }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Builds the queues, topic and dead letters of `tests/clients/sqs_traffic.py setup` with boto3.
    pub fn setup(&self) {
        let out = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/sqs_traffic.py"))
            .args(["setup", &self.endpoint()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
