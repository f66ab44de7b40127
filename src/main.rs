//! The eventscope binary: parse the command line, load configuration, run the role.

use std::process::ExitCode;

use clap::Parser;
use eventscope::cli::{Cli, Command};
use eventscope::config::{Config, ConfigErrors, Role, EXIT_CONFIG};

fn main() -> ExitCode {
    eventscope::memory::configure();
    let cli = Cli::parse();
    let config = match &cli.command {
        Command::Collector { config } => Config::load_file(config, &[Role::Collector]).map(Some),
        Command::CheckConfig { file } => Config::load_file(file, &[]).map(Some),
        Command::Sidecar {
            config,
            kafka_bootstrap,
            kafka_listen,
            admin_listen,
            http_listen,
            http_upstream,
            service,
            http_outbound_listen,
        } => sidecar_config(
            config.as_deref(),
            &[
                ("EVENTSCOPE_SIDECAR__KAFKA_BOOTSTRAP", kafka_bootstrap),
                ("EVENTSCOPE_SIDECAR__KAFKA_LISTEN", kafka_listen),
                ("EVENTSCOPE_ADMIN__LISTEN", admin_listen),
                ("EVENTSCOPE_SIDECAR__HTTP__LISTEN", http_listen),
                ("EVENTSCOPE_SIDECAR__HTTP__UPSTREAM", http_upstream),
                ("EVENTSCOPE_SIDECAR__HTTP__SERVICE", service),
                ("EVENTSCOPE_SIDECAR__HTTP__OUTBOUND_LISTEN", http_outbound_listen),
            ],
        )
        .map(Some),
        Command::Demo { .. } => Ok(None),
    };
    let config = match config {
        Ok(c) => c,
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let sidecar_threads = match (&cli.command, &config) {
        (Command::Sidecar { .. }, Some(c)) => c.sidecar.as_ref().map(|s| s.worker_threads),
        _ => None,
    };
    let mut builder = match sidecar_threads {
        Some(1) => {
            let mut b = tokio::runtime::Builder::new_current_thread();
            // Its blocking work: Produce rewrites (/metrics renders are the admin thread's, run.rs).
            eventscope::memory::one_kept_blocking_thread(&mut b);
            b
        }
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match (cli.command, config) {
        (Command::CheckConfig { file }, Some(_)) => {
            println!("{}: configuration is valid", file.display());
            Ok(())
        }
        (Command::Collector { .. }, Some(config)) => {
            eventscope::logging::init(&config.log.level.0, config.log.format);
            runtime.block_on(eventscope::run::collector(config))
        }
        (Command::Sidecar { .. }, Some(config)) => {
            eventscope::logging::init(&config.log.level.0, config.log.format);
            runtime.block_on(eventscope::run::sidecar(config))
        }
        #[cfg(feature = "demo")]
        (
            Command::Demo {
                admin_listen,
                duration,
                every,
                trace_url,
            },
            _,
        ) => {
            eventscope::logging::init("warn", eventscope::config::LogFormat::Text);
            runtime.block_on(eventscope::demo::run(eventscope::demo::DemoOptions {
                admin_listen,
                duration,
                every,
                trace_url: Some(trace_url),
            }))
        }
        #[cfg(not(feature = "demo"))]
        (Command::Demo { .. }, _) => Err(anyhow::anyhow!("this build has no demo (built without the `demo` feature)")),
        _ => unreachable!("every command that needs a configuration has one"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eventscope: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The sidecar's configuration: an optional file, then EVENTSCOPE_... variables, then the flags (each
/// given as the configuration variable it sets).
fn sidecar_config(file: Option<&std::path::Path>, flags: &[(&str, &Option<String>)]) -> Result<Config, ConfigErrors> {
    let mut env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    for (key, flag) in flags {
        if let Some(v) = flag {
            env.insert(key.to_string(), v.clone());
        }
    }
    let text = match file {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![eventscope::config::ConfigIssue {
                key: path.display().to_string(),
                reason: format!("cannot read: {e}"),
            }])
        })?),
        None => None,
    };
    Config::load_str(text.as_deref().unwrap_or(""), env, &[Role::Sidecar])
}
