//! `fluxrouter` (no command): serve with the server configuration.

use std::path::Path;
use std::sync::Arc;

use fluxrouter::config::ServerConfig;
use fluxrouter::server::{self, RunOptions};
use fluxrouter::state::AppState;

use super::CliResult;

pub fn serve(config_path: &Path, options: RunOptions) -> CliResult {
    let config = ServerConfig::load(config_path)?;
    start(config, options)
}

/// Serve with this configuration (the file's, or the demo's).
pub fn start(config: ServerConfig, mut options: RunOptions) -> CliResult {
    if options.daemon {
        // Before AppState starts its threads (see `server::daemonize`).
        server::daemonize(&config.server)?;
        options.daemon = false;
    }
    let (state, warnings) = AppState::load(config)?;
    for w in warnings {
        log::warn!("{w}");
    }
    log::info!(
        "FluxRouter {} listening on {:?}",
        env!("CARGO_PKG_VERSION"),
        state
            .config
            .listen
            .iter()
            .map(|l| l.address)
            .collect::<Vec<_>>()
    );
    server::run(Arc::new(state), options)?;
    Ok(())
}
