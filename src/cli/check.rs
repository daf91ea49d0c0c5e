//! `fluxrouter check`: validate the server configuration, lanes.yaml and the keys file.

use std::path::Path;

use fluxrouter::config::ServerConfig;
use fluxrouter::state;
use fluxrouter::upstream::Providers;

use super::CliResult;

pub fn check(config_path: &Path) -> CliResult {
    let config = ServerConfig::load(config_path)?;
    let (providers, warnings) = Providers::build(&config, &|var| std::env::var(var).ok());
    if let Some(admin) = &config.admin {
        admin.tokens(&|var| std::env::var(var).ok())?;
    }
    let routes = state::load_routes(&config, &providers)?;
    let keys = state::load_keys(&config)?;
    for w in warnings {
        println!("warning: {w}");
    }
    println!(
        "ok: {} ({} providers, {} plans), {} ({} lanes, {} models, {} rules), {} ({} keys)",
        config_path.display(),
        config.providers.len(),
        config.plans.len(),
        config.lanes_file.display(),
        routes.lanes().len(),
        routes.models().len(),
        routes.rules().len(),
        config.keys_file.display(),
        keys.len()
    );
    Ok(())
}
