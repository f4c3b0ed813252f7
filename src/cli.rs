//! The command line.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "notify-relay",
    version,
    about = "Delivers notifications inserted into PostgreSQL as push notifications"
)]
pub struct Cli {
    /// Configuration file layered over config/default.toml.
    #[arg(long, global = true, env = "NOTIFY_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (migrates first unless --no-migrate).
    Run {
        /// Comma-separated: listener, worker, scheduler, api (default: all).
        #[arg(long, default_value = "listener,worker,scheduler,api")]
        roles: String,
        /// Do not run migrations at start-up (another process or a job runs them).
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Operator tools: dead letters, bulk retries, stuck entries, the consumer group.
    #[command(subcommand)]
    Admin(crate::admin::AdminCommand),
    /// Load test: bulk-insert notifications and measure until all are delivered.
    Loadgen(emulators::loadgen::LoadgenArgs),
    /// Run loopback provider emulators for staging smoke tests and load tests.
    MockProviders(emulators::MockArgs),
}
