//! `flashsale worker` (the Kafka bus into the store) and `flashsale migrate`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use super::{BackendArgs, settings, shutdown_signal};

pub async fn run(config_file: &Path, args: BackendArgs) -> anyhow::Result<ExitCode> {
    let config = settings(config_file, &args)?;
    let store = flashsale::store::connect(&config.store)
        .await
        .context("opening the store")?;
    let bus = config.bus_settings();
    println!(
        "flashsale worker consuming {} into {}",
        bus.url, config.store
    );
    let linger = config.kafka.worker_linger();
    flashsale::worker::consume_bus(
        &bus,
        config.orders.batch_max,
        linger,
        store,
        shutdown_signal(),
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn migrate(config_file: &Path, args: BackendArgs) -> anyhow::Result<ExitCode> {
    let config = settings(config_file, &args)?;
    flashsale::store::connect(&config.store)
        .await
        .context("migrating the store")?;
    println!("migrations applied to {}", config.store);
    Ok(ExitCode::SUCCESS)
}
