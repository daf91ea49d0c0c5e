//! Building and running the Pingora server from a [`ServerConfig`].

use std::sync::Arc;

use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;

use crate::gateway::Gateway;
use crate::state::{AppState, Reloader};

/// Process-level switches, passed through to Pingora.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunOptions {
    /// Take the listening sockets over from a running old process (zero-downtime upgrade).
    pub upgrade: bool,
    pub daemon: bool,
}

/// Start serving; returns after a graceful shutdown.
pub fn run(state: Arc<AppState>, options: RunOptions) {
    let settings = &state.config.server;
    let conf = ServerConf {
        threads: settings.threads,
        grace_period_seconds: Some(settings.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(settings.graceful_shutdown_timeout_seconds),
        pid_file: settings.pid_file.clone(),
        upgrade_sock: settings.upgrade_sock.clone(),
        upstream_keepalive_pool_size: settings.upstream_keepalive_pool_size,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: options.upgrade,
        daemon: options.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let mut gateway = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Gateway::new(state.clone()),
        "fluxrouter",
    );
    for addr in &state.config.listen {
        gateway.add_tcp(&addr.to_string());
    }
    server.add_service(gateway);
    server.add_service(background_service(
        "reloader",
        Reloader {
            state: state.clone(),
        },
    ));
    // `run` returns after a graceful shutdown (SIGTERM, or SIGQUIT during an upgrade); the
    // access log's queued lines are written out before the process exits.
    server.run(RunArgs::default());
    state.access_log.close();
}
