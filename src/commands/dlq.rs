//! `flashsale dlq list|replay`: the dead-letter topic of the Kafka bus.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use super::{BackendArgs, settings};

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Show the letters not replayed yet, with their reason.
    List {
        #[command(flatten)]
        backends: BackendArgs,
        /// Also the letters replayed before.
        #[arg(long)]
        all: bool,
    },
    /// Drive the letters through the store again; failures go back with their reason.
    Replay {
        #[command(flatten)]
        backends: BackendArgs,
    },
}

pub async fn run(config_file: &Path, command: DlqCommand) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::List { backends, all } => {
            let config = settings(config_file, &backends)?;
            let letters = flashsale::worker::dead_letters(&config.bus_settings(), all).await?;
            println!("{}", letters.render());
        }
        DlqCommand::Replay { backends } => {
            let config = settings(config_file, &backends)?;
            let store = flashsale::store::connect(&config.store)
                .await
                .context("opening the store")?;
            let replay =
                flashsale::worker::replay_dead_letters(&config.bus_settings(), store.as_ref())
                    .await?;
            println!("{}", replay.render());
        }
    }
    Ok(ExitCode::SUCCESS)
}
