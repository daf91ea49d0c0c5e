//! `fluxrouter --demo`: serve an embedded default with the built-in simulated provider.

use std::net::SocketAddr;

use fluxrouter::accounts::{Directory, KeyKind, KeyLimits, NewAccount};
use fluxrouter::config::server::BaseUrl;
use fluxrouter::config::ServerConfig;
use fluxrouter::server::RunOptions;

use super::CliResult;

const DEMO_CONFIG: &str = include_str!("../../conf/fluxrouter.yaml");
/// The variable the demo's admin token is put in.
const DEMO_ADMIN_TOKEN_ENV: &str = "FLUX_DEMO_ADMIN_TOKEN";
const DEMO_LANES: &str = include_str!("../../lanes.yaml");
/// The weights lanes.yaml names (auto.classifier.weights), written beside it.
const DEMO_CLASSIFIER: &[u8] = include_bytes!("../../flux-auto.classifier.json");

/// The embedded default: shipped lanes and plans, every provider pointed at an in-process
/// simulated provider, and a new account on the pay-as-you-go plan with one key, in the key
/// store.
pub fn demo(listen: SocketAddr) -> CliResult {
    // The operator console's token, in the environment as a real deployment keeps it; set
    // before any thread starts (the simulator's is the first).
    let console_token = format!("admin-{}", hex::encode(rand::random::<[u8; 16]>()));
    std::env::set_var(DEMO_ADMIN_TOKEN_ENV, &console_token);
    let sim = fluxrouter::simulate::spawn_background("127.0.0.1:0".parse()?)?;
    let dir = std::env::temp_dir().join(format!("fluxrouter-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let lanes = dir.join("lanes.yaml");
    std::fs::write(&lanes, DEMO_LANES)?;
    std::fs::write(dir.join("flux-auto.classifier.json"), DEMO_CLASSIFIER)?;
    let mut config = ServerConfig::from_yaml(&dir.join("fluxrouter.yaml"), DEMO_CONFIG)?;
    config.listen = vec![fluxrouter::config::server::Listener::plain(listen)];
    config.lanes_file = lanes;
    config.keys_file = dir.join("keys.yaml");
    config.server.pid_file = dir.join("fluxrouter.pid").display().to_string();
    config.server.upgrade_sock = dir.join("upgrade.sock").display().to_string();
    for (name, provider) in config.providers.iter_mut() {
        provider.base_url = BaseUrl::parse(&format!("http://{sim}/{name}/v1"))?;
        provider.api_key_env = None;
    }
    // The operator listener (the console) beside the client one; the demo key has a card on
    // file so every lane, premium included, can be tried.
    let admin = SocketAddr::new(listen.ip(), listen.port().checked_add(1).unwrap_or(8081));
    config.admin = Some(fluxrouter::config::server::AdminConfig {
        listen: vec![fluxrouter::config::server::Listener::plain(admin)],
        token_env: DEMO_ADMIN_TOKEN_ENV.into(),
        metrics_token_env: DEMO_ADMIN_TOKEN_ENV.into(),
    });
    config.ledger.path = dir.join("ledger.sqlite");
    config.key_store = Some(dir.join("accounts.sqlite"));
    // The demo account and its key live in the key store, as a new deployment's do.
    let store = Directory::open(&config.key_store_path())?;
    let account = store.create_account(NewAccount {
        name: "demo".into(),
        plan: "payg".into(),
        payment_method: true,
        ..NewAccount::default()
    })?;
    let (key, _) = store.create_key(
        &account.id,
        "demo",
        KeyKind::Inference,
        KeyLimits::default(),
    )?;
    drop(store);

    println!(
        "FluxRouter demo: simulated provider on http://{sim}, files in {}",
        dir.display()
    );
    println!("Demo key (plan payg): {key}");
    println!("Operator console: http://{admin}/console (admin token: {console_token})");
    println!("Try:");
    println!(
        "  curl -i http://{listen}/v1/chat/completions -H \"Authorization: Bearer {key}\" \
         -H \"Content-Type: application/json\" \
         -d '{{\"model\":\"flux-auto\",\"messages\":[{{\"role\":\"user\",\"content\":\"ping\"}}]}}'"
    );
    super::serve::start(config, RunOptions::default())
}
