//! Building and running the Pingora server from a [`ServerConfig`].

use std::sync::Arc;

use pingora::server::configuration::{Opt, ServerConf};
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use tokio::sync::broadcast;

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
    crate::tokens::warm_up();
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
    if let Some(admin) = &state.config.admin {
        let token = std::env::var(&admin.token_env).ok();
        if token.as_deref().is_none_or(str::is_empty) {
            log::warn!(
                "admin: {} is not set; every admin request will be refused",
                admin.token_env
            );
        }
        let mut service = pingora::proxy::http_proxy_service_with_name(
            &server.configuration,
            crate::gateway::admin::Admin::new(state.clone(), token),
            "fluxrouter-admin",
        );
        for addr in &admin.listen {
            service.add_tcp(&addr.to_string());
        }
        server.add_service(service);
    }
    server.add_service(background_service(
        "hold-sweeper",
        HoldSweeper {
            state: state.clone(),
        },
    ));
    server.add_service(background_service(
        "drain-signal",
        DrainSignal {
            phases: std::sync::Mutex::new(Some(server.watch_execution_phase())),
            state: state.clone(),
        },
    ));
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
    if let Err(e) = state.budget.ledger().close() {
        log::error!("ledger: final flush failed: {e}");
    }
}

/// Releases holds whose request never settled nor dropped them (see metering::budget).
struct HoldSweeper {
    state: Arc<AppState>,
}

#[async_trait]
impl BackgroundService for HoldSweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let released = self.state.budget.sweep(now);
            if released > 0 {
                log::warn!("released {released} expired spend hold(s)");
            }
        }
    }
}

/// Follows Pingora's execution phase and marks the state as draining once a graceful upgrade
/// (SIGQUIT) or termination (SIGTERM) starts. During an upgrade the old process keeps serving
/// for a few seconds after handing its sockets over, then drops idle keep-alive connections;
/// a client that sent its next request on one at that moment saw a broken pipe (15 of 25k
/// requests in a measured upgrade). Answering with `Connection: close` from the start of the
/// phase moves every client to a new connection, served by the new process, before that.
struct DrainSignal {
    phases: std::sync::Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
    state: Arc<AppState>,
}

#[async_trait]
impl BackgroundService for DrainSignal {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut phases) = self.phases.lock().ok().and_then(|mut p| p.take()) else {
            return;
        };
        loop {
            let phase = tokio::select! {
                phase = phases.recv() => phase,
                _ = shutdown.changed() => Ok(ExecutionPhase::ShutdownStarted),
            };
            match phase {
                Ok(
                    ExecutionPhase::GracefulUpgradeTransferringFds
                    | ExecutionPhase::GracefulUpgradeCloseTimeout
                    | ExecutionPhase::GracefulTerminate
                    | ExecutionPhase::ShutdownStarted,
                ) => {
                    log::info!("draining: responses now close their connections");
                    self.state.draining.store(true, Ordering::Release);
                    return;
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
