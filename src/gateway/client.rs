//! The client's address for a request, and the per-address limits as the listeners apply
//! them (`crate::client_addr`, `crate::address_limits`: this file is the Pingora side).

use std::net::{IpAddr, Ipv4Addr};

use pingora::proxy::Session;

use crate::address_limits::Refusal;
use crate::client_addr::client_addr;
use crate::errors::{ErrorKind, FluxError};
use crate::state::AppState;

/// The client's address: the socket's peer, or behind a trusted proxy the address its
/// forwarding header names. None on a Unix socket.
///
/// The peer is Pingora's `client_addr()`, the socket digest's peer: a PROXY-protocol layer
/// that rewrites that peer to the address the load balancer announced is picked up here
/// unchanged, and the trusted proxies then apply to the load balancer's client.
pub(super) fn client_ip(state: &AppState, session: &Session) -> Option<IpAddr> {
    let peer = session.client_addr()?.as_inet()?.ip();
    let headers = &session.req_header().headers;
    let values = |name: &str| headers.get_all(name).into_iter().map(|v| v.as_bytes());
    Some(client_addr(
        peer,
        values("x-forwarded-for"),
        values("forwarded"),
        &state.trusted_proxies,
    ))
}

/// The address limits are kept under: a Unix socket's clients share one.
pub(super) fn limit_key(ip: Option<IpAddr>) -> IpAddr {
    ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// The answer to a request a per-address limit refused, counted in the metrics; `what`
/// names what failed for a failure limit ("failed authentications", "wrong tokens").
pub(super) fn refused(state: &AppState, refusal: Refusal, what: &str) -> FluxError {
    state.metrics.address_refused(refusal.reason());
    refusal.error(state.address_limits.limits(), what)
}

/// Requests per second from `ip`, counted before anything else is looked at.
pub(super) fn admit(state: &AppState, ip: Option<IpAddr>) -> Result<(), FluxError> {
    state
        .address_limits
        .request(limit_key(ip))
        .map_err(|r| refused(state, r, "requests"))
}

/// A key from `ip` did not authenticate (`err`): counted when a key was presented at all,
/// and past the address's failures this minute the answer is a 429 instead. A key that
/// authenticates is served whatever its address's failures: keys are 40 random
/// alphanumerics (over 230 bits), beyond guessing whatever the answer says, so what the
/// limit saves is the work and the log lines of a flood of wrong keys, and a valid key
/// behind the same NAT as a misconfigured client keeps working.
pub(super) fn auth_failed(
    state: &AppState,
    session: &Session,
    ip: Option<IpAddr>,
    err: FluxError,
) -> FluxError {
    let headers = &session.req_header().headers;
    let presented =
        headers.contains_key(http::header::AUTHORIZATION) || headers.contains_key("x-api-key");
    if err.kind != ErrorKind::InvalidApiKey || !presented {
        return err;
    }
    match state.address_limits.failed_auth(limit_key(ip)) {
        Ok(()) => err,
        Err(refusal) => refused(state, refusal, "failed authentications"),
    }
}

/// Whether the secret `presented` from `ip` is right (`compare`), for secrets that must not
/// be guessed at all past the limit (the admin token, the console's and the owner's page's
/// sign-in): counted before the comparison and taken back when right; past the address's
/// failures this minute Err (429) without comparing. An empty secret is no guess.
pub(super) fn check_secret(
    state: &AppState,
    ip: Option<IpAddr>,
    presented: &str,
    what: &str,
    compare: impl FnOnce() -> bool,
) -> Result<bool, FluxError> {
    if presented.is_empty() {
        return Ok(false);
    }
    let key = limit_key(ip);
    let limits = &state.address_limits;
    limits.guess(key).map_err(|r| refused(state, r, what))?;
    let right = compare();
    if right {
        limits.forgive(key);
    }
    Ok(right)
}
