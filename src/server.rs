//! Building and running the Pingora server from a [`ServerConfig`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{ExecutionPhase, RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use tokio::sync::broadcast;

use crate::config::server::Listener;
use crate::errors::{Error, Fault};
use crate::gateway::{Edge, Gateway};
use crate::listener::ListenerPlan;
use crate::state::{AppState, Reloader};
use pingora::protocols::http::v2::server::{default_h2_options, H2Options};

/// Process-level switches, passed through to Pingora.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunOptions {
    /// Take the listening sockets over from a running old process (zero-downtime upgrade).
    pub upgrade: bool,
    pub daemon: bool,
}

/// Go to the background (`-d`), before anything starts a thread. Pingora's own
/// daemonization forks inside `run`, when the ledger writer, the access-log writer and the
/// Redis runtime already run, and a fork keeps only the thread that called it: the gateway
/// would serve without them (and hang on Redis). Writes the pid file; returns in the child.
pub fn daemonize(settings: &crate::config::server::PingoraSettings) -> Result<(), Error> {
    let pid_file = std::path::Path::new(&settings.pid_file);
    // The old process of an upgrade still holds its pid file's lock: move it aside, as
    // Pingora does, so the new one can take the path.
    if pid_file.exists() {
        let mut old = pid_file.as_os_str().to_owned();
        old.push(".old");
        if let Err(e) = std::fs::rename(pid_file, &old) {
            log::warn!("cannot move the old pid file aside: {e}");
        }
    }
    let outcome = daemonix::Daemonize::new()
        .umask(0o007)
        .pid_file(pid_file)
        .stdout(daemonix::Stdio::keep())
        .stderr(daemonix::Stdio::keep())
        .execute();
    match outcome {
        daemonix::Outcome::Parent(Ok(_)) => std::process::exit(0),
        daemonix::Outcome::Parent(Err(e)) | daemonix::Outcome::Child(Err(e)) => {
            Err(Error::new(Fault::Io, "cannot go to the background").because(e))
        }
        daemonix::Outcome::Child(Ok(_)) => Ok(()),
    }
}

/// Listeners that differ only in their address, together: each group is one service (one
/// runtime), so plaintext listeners share one as they always did.
fn kinds(listeners: &[Listener]) -> Vec<Vec<&Listener>> {
    let mut groups: Vec<Vec<&Listener>> = Vec::new();
    for l in listeners {
        match groups.iter_mut().find(|g| g[0].same_kind(l)) {
            Some(g) => g.push(l),
            None => groups.push(vec![l]),
        }
    }
    groups
}

/// A group's plan, its certificates loaded; their files join the watcher's list.
fn load_plan(
    listener: &Listener,
    watched: &mut Vec<crate::listener::certs::WatchedPair>,
    now: i64,
) -> Result<ListenerPlan, Error> {
    let plan = ListenerPlan::load(listener, now).map_err(|e| {
        Error::new(
            Fault::Invalid,
            format!("listener {}: {e}", listener.address),
        )
    })?;
    if let Some(tls) = &plan.tls {
        watched.extend(tls.watched());
    }
    Ok(plan)
}

/// An HTTP/2 connection with no stream open is closed after the keep-alive timeout, as an
/// idle HTTP/1.1 one is (Pingora keeps it forever by default).
fn h2_idle_timeout(limits: &crate::config::server::RequestLimits) -> Option<std::time::Duration> {
    match limits.keepalive_timeout_seconds {
        0 => None,
        s => Some(std::time::Duration::from_secs(s)),
    }
}

/// HTTP/2's per-connection bounds from the limits.
fn h2_options(limits: &crate::config::server::RequestLimits) -> H2Options {
    let mut options = default_h2_options();
    options.max_concurrent_streams(limits.h2_max_concurrent_streams);
    options.max_header_list_size(limits.h2_max_header_list_bytes);
    options
}

/// Start serving; returns after a graceful shutdown. Fails before serving when a listener's
/// certificates cannot be loaded.
pub fn run(state: Arc<AppState>, options: RunOptions) -> Result<(), Error> {
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
    // Certificates are loaded before Pingora takes the sockets over from an old process (an
    // upgrade): a pair that does not load stops this process while the old one still serves.
    let now = crate::units::clock::unix_now() as i64;
    let mut watched = Vec::new();
    let mut client_plans = Vec::new();
    for group in kinds(&state.config.listen) {
        let plan = load_plan(group[0], &mut watched, now)?;
        client_plans.push((group, plan));
    }
    let mut admin_plans = Vec::new();
    for group in state.config.admin.iter().flat_map(|a| kinds(&a.listen)) {
        let plan = load_plan(group[0], &mut watched, now)?;
        admin_plans.push((group, plan));
    }
    server.bootstrap();

    crate::listener::set_hsts(
        &state
            .config
            .listen
            .iter()
            .chain(state.config.admin.iter().flat_map(|a| a.listen.iter()))
            .collect::<Vec<_>>(),
    );
    for (i, (group, plan)) in client_plans.into_iter().enumerate() {
        let plan = Arc::new(plan);
        let mut proxy =
            pingora::proxy::http_proxy(&server.configuration, Gateway::new(state.clone()));
        let mut options = HttpServerOptions::default();
        // CONNECT reaches the gateway, which refuses it in its own shape (Pingora would
        // answer a bare 405).
        options.allow_connect_method_proxying = true;
        // Pingora's HTTP/2 loop peeks for the h2c preface only with this on.
        options.h2c = plan.h2c;
        options.h2_idle_timeout = h2_idle_timeout(&state.config.limits);
        proxy.server_options = Some(options);
        proxy.h2_options = Some(h2_options(&state.config.limits));
        let name = match i {
            0 => "fluxrouter".to_string(),
            i => format!("fluxrouter-{i}"),
        };
        let mut gateway = Service::new(name, Edge::new(proxy, state.clone(), plan));
        for l in group {
            gateway.add_tcp(&l.address.to_string());
        }
        server.add_service(gateway);
    }
    if let Some(admin) = &state.config.admin {
        // Checked when the state was loaded; should it fail now, nothing is let in.
        let (token, metrics_token) =
            admin
                .tokens(&|var| std::env::var(var).ok())
                .unwrap_or_else(|e| {
                    log::error!("admin: {e}; every admin request will be refused");
                    (None, None)
                });
        if token.as_deref().is_none_or(str::is_empty) {
            log::warn!(
                "admin: {} is not set; every admin request will be refused",
                admin.token_env
            );
        }
        if metrics_token.as_deref().is_none_or(str::is_empty) {
            log::warn!(
                "admin: {} is not set; every GET /metrics will be refused",
                admin.metrics_token_env
            );
        }
        for (i, (group, plan)) in admin_plans.into_iter().enumerate() {
            let name = match i {
                0 => "fluxrouter-admin".to_string(),
                i => format!("fluxrouter-admin-{i}"),
            };
            let app = crate::gateway::admin::Admin::new(
                state.clone(),
                token.clone(),
                metrics_token.clone(),
            );
            // Behind the same guard as the client listeners, plaintext included: connections
            // per address, the header's deadline, TLS and the PROXY header when configured.
            let mut proxy = pingora::proxy::http_proxy(&server.configuration, app);
            let mut options = HttpServerOptions::default();
            options.h2c = plan.h2c;
            options.h2_idle_timeout = h2_idle_timeout(&state.config.limits);
            proxy.server_options = Some(options);
            proxy.h2_options = Some(h2_options(&state.config.limits));
            let mut service = Service::new(name, Edge::new(proxy, state.clone(), Arc::new(plan)));
            for l in group {
                service.add_tcp(&l.address.to_string());
            }
            server.add_service(service);
        }
    }
    for pair in &watched {
        if let Some(served) = pair.served() {
            state
                .metrics
                .certificate_served(&served.name, served.not_after);
        }
    }
    let metrics_state = state.clone();
    server.add_service(background_service(
        "certificate-watcher",
        crate::listener::CertificateWatcher::new(
            watched,
            Box::new(move |name, not_after| {
                metrics_state.metrics.certificate_served(name, not_after)
            }),
        ),
    ));
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
        "log-reopen",
        LogReopen {
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
    if let Some(fleet) = &state.fleet {
        // Settlements Redis missed get one last chance; the ledger below keeps them anyway.
        let left = fleet.drain(std::time::Duration::from_secs(2));
        if left > 0 {
            log::error!(
                "redis: {left} settlement(s) never reached the shared ledger; this gateway's \
                 ledger has them (reconcile with `fluxrouter usage --node`)"
            );
        }
    }
    if let Err(e) = state.admission.spend().ledger().close() {
        log::error!("ledger: final flush failed: {e}");
    }
    Ok(())
}

/// SIGUSR1 reopens the access-log file at its path: logrotate moves the file away, then
/// signals (`postrotate kill -USR1 $(cat pid_file)`), and new lines go to a new file.
struct LogReopen {
    state: Arc<AppState>,
}

#[async_trait]
impl BackgroundService for LogReopen {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut usr1 = match signal(SignalKind::user_defined1()) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("cannot listen for SIGUSR1 (access-log reopen): {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                Some(()) = usr1.recv() => {
                    log::info!("SIGUSR1: reopening the access log");
                    self.state.access_log.reopen();
                }
                _ = shutdown.changed() => return,
            }
        }
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
            let now = crate::units::clock::unix_now();
            let released = self.state.admission.spend().sweep(now);
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
                    self.state.drain.send_replace(true);
                    return;
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
