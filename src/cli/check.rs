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
    let mut tls_warnings = Vec::new();
    let now = fluxrouter::units::clock::unix_now() as i64;
    let admin_listeners = config.admin.iter().flat_map(|a| a.listen.iter());
    for listener in config.listen.iter().chain(admin_listeners) {
        let Some(tls) = &listener.tls else { continue };
        let (problems, warnings) = fluxrouter::listener::check_tls(tls, now);
        let at = listener.address;
        tls_warnings.extend(warnings.into_iter().map(|w| format!("listener {at}: {w}")));
        if let Some(first) = problems.into_iter().next() {
            return Err(format!("{}: listener {at}: {first}", config_path.display()).into());
        }
    }
    let routes = state::load_routes(&config, &providers)?;
    let keys = state::load_keys(&config)?;
    for w in warnings.into_iter().chain(tls_warnings) {
        println!("warning: {w}");
    }
    println!(
        "ok: {} ({} providers, {} plans), {} ({} lanes, {} models, {} rules), {} ({} keys)",
        config_path.display(),
        config.providers.len(),
        config.plans.len(),
        config.lanes_file.display(),
        routes.lanes().len(),
        routes.catalogue().count(),
        routes.rules().len(),
        config.keys_file.display(),
        keys.len()
    );
    Ok(())
}
