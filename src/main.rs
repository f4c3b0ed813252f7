use clap::Parser;
use notify_relay::cli::{Cli, Command};
use notify_relay::configuration::Settings;
use notify_relay::startup::{consumer_name, Application, ProcessRoles};
use notify_relay::{admin, migrate, telemetry};
use std::process::ExitCode;

type Outcome = Result<(), Box<dyn std::error::Error>>;

#[actix_web::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let settings = match Settings::load(cli.config.as_deref(), &env) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let level = settings.log_level().unwrap_or(slog::Level::Info);
    let (log, _guard) = telemetry::logger_as(settings.log_format(), level);
    telemetry::log_panics(log.clone());

    let outcome: Outcome = match cli.command {
        Command::Run { roles, no_migrate } => run(settings, &roles, no_migrate, log).await,
        Command::Migrate => run_migrations(&settings).await,
        Command::Admin(command) => admin::run(&settings, command, &mut std::io::stdout()).await.map_err(Into::into),
        Command::Loadgen(args) => loadgen(&settings, args).await,
        Command::MockProviders(args) => emulators::serve(args, wait_for_signal()).await.map_err(Into::into),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// `run`: the service, until SIGTERM or Ctrl-C.
async fn run(settings: Settings, roles: &str, no_migrate: bool, log: slog::Logger) -> Outcome {
    let roles = ProcessRoles::parse(roles).map_err(|e| format!("--roles: {e}"))?;
    let grace = settings.grace();
    let app = Application::build(settings, roles, !no_migrate, consumer_name(), log).await?;
    wait_for_signal().await;
    // Whatever did not finish within the grace period stays pending in Redis and is claimed by
    // another process: stopping with it is still a clean exit.
    app.stop(grace).await;
    Ok(())
}

async fn run_migrations(settings: &Settings) -> Outcome {
    let applied = migrate::run(&settings.migrations_pg_config()?).await?;
    let list = if applied.is_empty() { "none (up to date)".into() } else { applied.join(", ") };
    println!("migrations applied: {list}");
    Ok(())
}

/// `loadgen`: against the configured Postgres and Redis, migrating its scratch database with this
/// binary's migrations.
async fn loadgen(settings: &Settings, args: emulators::loadgen::LoadgenArgs) -> Outcome {
    let target = emulators::loadgen::Target {
        database_url: settings.database.url.expose().to_string(),
        redis_url: settings.redis.url.expose().to_string(),
        database_ca_file: settings.database.ca_file.clone(),
        migrate: async |config: &notify_relay_engine::tls::PgTarget| -> Outcome {
            Ok(migrate::run(config).await.map(drop)?)
        },
    };
    emulators::loadgen::run(target, args).await
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("notify-relay: {e}");
    ExitCode::FAILURE
}

/// SIGTERM (Kubernetes) or SIGINT (Ctrl-C). SIGTERM is listened for from the call on, so one that
/// comes while the caller is still starting up is not lost (and does not kill the process).
fn wait_for_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    async move {
        match term {
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
}
