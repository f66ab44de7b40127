//! The eventscope binary: parse the command line, load configuration, run the role.

use std::process::ExitCode;

use clap::Parser;
use eventscope::cli::{Cli, Command};
use eventscope::config::{Config, EXIT_CONFIG};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match &cli.command {
        Command::Collector { config } => Some(config.clone()),
        Command::CheckConfig { file } => Some(file.clone()),
        Command::Demo { .. } => None,
    };
    let config = match config.map(|path| Config::load_file(&path)) {
        Some(Err(errors)) => {
            eprint!("{errors}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
        Some(Ok(c)) => Some(c),
        None => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
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
            eventscope::logging::init(&config.log.level, config.log.format);
            runtime.block_on(eventscope::run::collector(config))
        }
        (
            Command::Demo {
                admin_listen,
                duration,
                every,
            },
            _,
        ) => {
            eventscope::logging::init("warn", eventscope::config::LogFormat::Text);
            runtime.block_on(eventscope::demo::run(&admin_listen, duration, every))
        }
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
