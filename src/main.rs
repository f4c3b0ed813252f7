use clap::Parser;
use notify_relay::cli::{Cli, Command};
use notify_relay::configuration::Settings;
use notify_relay::startup::{consumer_name, Application, ProcessRoles};
use notify_relay::{loadgen, migrate, mock, telemetry};
use std::process::ExitCode;

#[actix_web::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let settings = match Settings::load(cli.config.as_deref(), &env) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let level = settings.log_level().unwrap_or(slog::Level::Info);
    let (log, _guard) = telemetry::logger(level);
    telemetry::log_panics(log.clone());

    match cli.command {
        Command::Run { roles, no_migrate } => {
            let roles = match ProcessRoles::parse(&roles) {
                Ok(r) => r,
                Err(e) => return fail(&format!("--roles: {e}")),
            };
            let grace = settings.grace();
            let app = match Application::build(settings, roles, !no_migrate, consumer_name(), log.clone()).await {
                Ok(app) => app,
                Err(e) => return fail(&e),
            };
            wait_for_signal().await;
            // Whatever did not finish within the grace period stays pending in Redis and is
            // claimed by another process: stopping with it is still a clean exit.
            app.stop(grace).await;
            ExitCode::SUCCESS
        }
        Command::Migrate => match settings.pg_config().map_err(|e| e.to_string()) {
            Ok(config) => match migrate::run(&config).await {
                Ok(applied) => {
                    println!(
                        "migrations applied: {}",
                        if applied.is_empty() { "none (up to date)".into() } else { applied.join(", ") }
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            },
            Err(e) => fail(&e),
        },
        Command::Loadgen(args) => match loadgen::run(&settings, args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Command::MockProviders { expo_addr, smtp_addr } => match mock::serve(&expo_addr, &smtp_addr).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("notify-relay: {e}");
    ExitCode::FAILURE
}

/// SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
