//! Limits per client address, applied before (or instead of) authentication: failed
//! authentications per minute, requests per second, open connections
//! (`limits.per_address`, README "Client addresses and abuse limits").
//!
//! The address is the client's ([`crate::client_addr`]); an IPv6 address counts as its /64,
//! the block one subscriber gets, so hopping through a /64 gains nothing.
//!
//! Memory is fixed whatever the number of addresses. Failures and requests are counted in
//! `pingora-limits` [`Rate`]s: two count-min sketches each (the current window and the last),
//! allocated once; a collision can only over-count, never let an address through. Open
//! connections are counted exactly, in a map whose entries exist only while their address
//! has a connection open: its size is bounded by the connections the OS lets the process
//! hold, and each entry is removed when its count returns to zero.
//!
//! Windows are fixed (a minute, a second) and start when the limiter first sees traffic
//! after an idle window, so an address can fit up to twice a limit across a window's edge.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pingora_limits::rate::Rate;

use crate::config::PerAddressLimits;
use crate::errors::{ErrorKind, FluxError};

const FAILURE_WINDOW: Duration = Duration::from_secs(60);
const REQUEST_WINDOW: Duration = Duration::from_secs(1);
/// Count-min sketch shape (rows × counters per row, per window): failures are rare and a
/// low limit is easily reached by collisions, so their sketch is the wider one.
const FAILURE_SKETCH: (usize, usize) = (4, 16_384);
const REQUEST_SKETCH: (usize, usize) = (4, 4_096);
/// Lock shards of the connection table (a power of two).
const SHARDS: usize = 64;

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many failed authentications this minute; the window frees in `retry_after` s.
    FailedAuth { retry_after: u64 },
    /// Too many requests this second.
    RequestRate,
    /// Too many open connections.
    Connections,
}

impl Refusal {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::FailedAuth { .. } => "failed_auth",
            Refusal::RequestRate => "requests_per_second",
            Refusal::Connections => "connections",
        }
    }

    /// The 429 a request refused for this gets; `what` names what failed (keys, tokens).
    pub fn error(self, limits: &PerAddressLimits, what: &str) -> FluxError {
        match self {
            Refusal::FailedAuth { retry_after } => FluxError::new(
                ErrorKind::RateLimited,
                format!(
                    "Too many {what} from this address (at most {} a minute). Retry after \
                     {retry_after} s.",
                    limits.failed_auth_per_minute
                ),
            )
            .retry_after(retry_after),
            Refusal::RequestRate => FluxError::new(
                ErrorKind::RateLimited,
                format!(
                    "Too many requests from this address (at most {} a second). Retry after \
                     1 s.",
                    limits.requests_per_second
                ),
            )
            .retry_after(1),
            Refusal::Connections => FluxError::new(
                ErrorKind::RateLimited,
                format!(
                    "Too many open connections from this address (at most {}).",
                    limits.connections
                ),
            ),
        }
    }
}

/// The address a count is kept under: an IPv6 address as its /64, an IPv4-mapped one as
/// its IPv4.
pub fn block(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (!0u128 << 64))),
        v4 => v4,
    }
}

/// The per-address limits of one process, shared by its listeners: a failure on the admin
/// listener and one on the client listener count toward the same address's minute.
pub struct AddressLimits {
    limits: PerAddressLimits,
    failures: Rate,
    requests: Rate,
    connections: Connections,
    /// Connections refused since the last warning, and when that was (ms since `origin`):
    /// a flood is a line a second, not a line a connection.
    refused_unlogged: AtomicU64,
    last_warning_ms: AtomicU64,
    origin: Instant,
}

impl AddressLimits {
    pub fn new(limits: PerAddressLimits) -> Self {
        AddressLimits {
            limits,
            failures: Rate::new_with_estimator_config(
                FAILURE_WINDOW,
                FAILURE_SKETCH.0,
                FAILURE_SKETCH.1,
            ),
            requests: Rate::new_with_estimator_config(
                REQUEST_WINDOW,
                REQUEST_SKETCH.0,
                REQUEST_SKETCH.1,
            ),
            connections: Connections::default(),
            refused_unlogged: AtomicU64::new(0),
            last_warning_ms: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }

    pub fn limits(&self) -> &PerAddressLimits {
        &self.limits
    }

    /// A request arrives from `from`: Err once the address has sent more than its requests
    /// per second this second.
    pub fn request(&self, from: IpAddr) -> Result<(), Refusal> {
        let limit = self.limits.requests_per_second;
        if limit == 0 {
            return Ok(());
        }
        if self.requests.observe(&block(from), 1) > limit as isize {
            return Err(Refusal::RequestRate);
        }
        Ok(())
    }

    /// A key presented from `from` did not authenticate: counted, and Err once the address
    /// is past its failures this minute (the client listener then answers 429 instead of
    /// 401; a key that does authenticate is still served).
    pub fn failed_auth(&self, from: IpAddr) -> Result<(), Refusal> {
        let limit = self.limits.failed_auth_per_minute;
        if limit == 0 {
            return Ok(());
        }
        let key = block(from);
        if self.failures.observe(&key, 1) > limit as isize {
            return Err(self.failed_auth_refusal(&key));
        }
        Ok(())
    }

    /// A secret is about to be compared for `from` (the admin token, a sign-in): counted
    /// first, so concurrent guesses cannot all slip under the limit, and taken back with
    /// [`AddressLimits::forgive`] when it was right. Err (nothing counted) once the address
    /// is past its failures this minute: the secret must then not be compared at all.
    pub fn guess(&self, from: IpAddr) -> Result<(), Refusal> {
        let limit = self.limits.failed_auth_per_minute;
        if limit == 0 {
            return Ok(());
        }
        let key = block(from);
        if self.failures.observe(&key, 1) > limit as isize {
            self.failures.observe(&key, -1);
            return Err(self.failed_auth_refusal(&key));
        }
        Ok(())
    }

    /// Take back a [`AddressLimits::guess`]: the secret was right.
    pub fn forgive(&self, from: IpAddr) {
        if self.limits.failed_auth_per_minute > 0 {
            self.failures.observe(&block(from), -1);
        }
    }

    /// Whole seconds until the failure window that refused `key` passes (1 to 60).
    fn failed_auth_refusal(&self, key: &IpAddr) -> Refusal {
        let left = self.failures.rate_with(key, |c| {
            c.interval.as_secs_f64() * (1.0 - c.current_interval_fraction)
        });
        let window = FAILURE_WINDOW.as_secs();
        Refusal::FailedAuth {
            retry_after: (left.ceil() as u64).clamp(1, window),
        }
    }

    /// A connection from `peer` was accepted: its slot, held until the connection ends, or
    /// Err when the address already has its limit of connections open. `Ok(None)`: not
    /// counted (the limit is off, or `peer` is exempt).
    pub fn connect(
        &self,
        peer: IpAddr,
        exempt: bool,
    ) -> Result<Option<ConnectionSlot<'_>>, Refusal> {
        let limit = self.limits.connections;
        if limit == 0 || exempt {
            return Ok(None);
        }
        let key = block(peer);
        if !self.connections.open(key, limit) {
            return Err(Refusal::Connections);
        }
        Ok(Some(ConnectionSlot {
            table: &self.connections,
            key,
        }))
    }

    /// Addresses with a connection open (counted ones).
    pub fn addresses_connected(&self) -> usize {
        self.connections.len()
    }

    /// Log a refused connection: at most one line a second, with the count since the last.
    pub fn warn_refused_connection(&self, peer: IpAddr) {
        self.refused_unlogged.fetch_add(1, Ordering::Relaxed);
        // Milliseconds since `origin`, plus one: 0 means "never warned".
        let now = self.origin.elapsed().as_millis() as u64 + 1;
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < 1_000 {
            return;
        }
        if self
            .last_warning_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let refused = self.refused_unlogged.swap(0, Ordering::Relaxed);
        log::warn!(
            "closed {refused} connection(s) over limits.per_address.connections ({}); latest \
             from {peer}",
            self.limits.connections
        );
    }
}

/// Open connections by address. Only addresses with a connection open have an entry.
struct Connections {
    shards: Box<[Mutex<HashMap<IpAddr, u32>>]>,
    hasher: RandomState,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl Connections {
    fn shard(&self, key: IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        let shard = &self.shards[self.hasher.hash_one(key) as usize & (SHARDS - 1)];
        // Nothing below can panic while holding it, so a poisoned lock is still consistent.
        shard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One more connection for `key`, unless it has `limit` already.
    fn open(&self, key: IpAddr, limit: u32) -> bool {
        let mut map = self.shard(key);
        let n = map.entry(key).or_insert(0);
        if *n >= limit {
            return false;
        }
        *n += 1;
        true
    }

    fn close(&self, key: IpAddr) {
        let mut map = self.shard(key);
        if let Some(n) = map.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&key);
            }
        }
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

/// An open connection, counted for its address until dropped.
pub struct ConnectionSlot<'a> {
    table: &'a Connections,
    key: IpAddr,
}

impl Drop for ConnectionSlot<'_> {
    fn drop(&mut self) {
        self.table.close(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Bytes allocated by the current thread: the system allocator, counting.
    struct Counting;

    thread_local! {
        static ALLOCATED: Cell<u64> = const { Cell::new(0) };
    }

    unsafe impl std::alloc::GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            let _ = ALLOCATED.try_with(|a| a.set(a.get() + layout.size() as u64));
            std::alloc::System.alloc(layout)
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            std::alloc::System.dealloc(ptr, layout)
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    fn allocated() -> u64 {
        ALLOCATED.with(Cell::get)
    }

    fn limits(failed: u32, rps: u32, connections: u32) -> AddressLimits {
        AddressLimits::new(PerAddressLimits {
            failed_auth_per_minute: failed,
            requests_per_second: rps,
            connections,
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The n-th of a million distinct addresses (IPv4 in 10/8, IPv6 in distinct /64s).
    fn nth(n: u32) -> IpAddr {
        if n.is_multiple_of(2) {
            IpAddr::V4(std::net::Ipv4Addr::from((10u32 << 24) | n))
        } else {
            IpAddr::V6(Ipv6Addr::from(
                (0x2001_0db8u128 << 96) | (u128::from(n) << 64) | 1,
            ))
        }
    }

    #[test]
    fn failures_past_the_limit_are_refused_for_that_address_only() {
        let l = limits(3, 0, 0);
        for _ in 0..3 {
            assert_eq!(l.failed_auth(ip("192.0.2.1")), Ok(()));
        }
        let Err(Refusal::FailedAuth { retry_after }) = l.failed_auth(ip("192.0.2.1")) else {
            panic!("the fourth failure passed")
        };
        // The window just began: it frees in about a minute, never in 0 s.
        assert!((55..=60).contains(&retry_after), "{retry_after}");
        assert_eq!(l.failed_auth(ip("192.0.2.2")), Ok(()));
        // An IPv6 address counts as its /64.
        for i in 0..3 {
            assert_eq!(
                l.failed_auth(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 7, 0, 0, 0, i))),
                Ok(())
            );
        }
        assert!(l.failed_auth(ip("2001:db8:0:7::ffff")).is_err());
        assert_eq!(l.failed_auth(ip("2001:db8:0:8::1")), Ok(()));
        // An IPv4-mapped address is its IPv4.
        assert!(l.failed_auth(ip("::ffff:192.0.2.1")).is_err());
    }

    #[test]
    fn a_guess_is_taken_back_when_right_and_not_compared_past_the_limit() {
        let l = limits(2, 0, 0);
        let a = ip("192.0.2.1");
        // Right secrets do not use the allowance up.
        for _ in 0..10 {
            assert_eq!(l.guess(a), Ok(()));
            l.forgive(a);
        }
        assert_eq!(l.guess(a), Ok(()));
        assert_eq!(l.guess(a), Ok(()));
        assert!(matches!(l.guess(a), Err(Refusal::FailedAuth { .. })));
        // Refused guesses count nothing: still exactly at the limit.
        for _ in 0..100 {
            assert!(l.guess(a).is_err());
        }
        l.forgive(a);
        assert_eq!(l.guess(a), Ok(()));
        // Wrong tokens and failed keys share the minute.
        let b = ip("192.0.2.2");
        assert_eq!(l.failed_auth(b), Ok(()));
        assert_eq!(l.guess(b), Ok(()));
        assert!(l.guess(b).is_err());
    }

    #[test]
    fn requests_per_second_per_address() {
        let l = limits(0, 5, 0);
        for _ in 0..5 {
            assert_eq!(l.request(ip("192.0.2.1")), Ok(()));
        }
        assert_eq!(l.request(ip("192.0.2.1")), Err(Refusal::RequestRate));
        assert_eq!(l.request(ip("192.0.2.9")), Ok(()));
        let e = Refusal::RequestRate.error(l.limits(), "keys");
        assert_eq!((e.status(), e.code()), (429, "rate_limited"));
    }

    #[test]
    fn zero_turns_each_limit_off() {
        let l = limits(0, 0, 0);
        let a = ip("192.0.2.1");
        for _ in 0..10_000 {
            assert_eq!(l.request(a), Ok(()));
            assert_eq!(l.failed_auth(a), Ok(()));
            assert_eq!(l.guess(a), Ok(()));
        }
        assert!(l.connect(a, false).unwrap().is_none());
    }

    #[test]
    fn connections_are_counted_while_open_and_their_entries_removed_at_zero() {
        let l = limits(0, 0, 2);
        let a = ip("192.0.2.1");
        let first = l.connect(a, false).unwrap().unwrap();
        let second = l.connect(a, false).unwrap().unwrap();
        assert_eq!(l.connect(a, false).err(), Some(Refusal::Connections));
        // Another address, and an exempt (trusted proxy) one, are not affected.
        let other = l.connect(ip("192.0.2.2"), false).unwrap();
        assert!(other.is_some());
        assert!(l.connect(a, true).unwrap().is_none());
        assert_eq!(l.addresses_connected(), 2);
        drop(first);
        let third = l.connect(a, false).unwrap();
        assert!(third.is_some());
        drop((second, third, other));
        assert_eq!(l.addresses_connected(), 0);
    }

    #[test]
    fn a_million_distinct_addresses_allocate_nothing_and_leave_nothing_behind() {
        let l = limits(20, 1_000, 256);
        // Warm up: the sketches exist from the start; the first lock of each shard and the
        // first entry of each map may allocate.
        for n in 0..10_000 {
            let _ = l.connect(nth(n), false);
        }
        // The counter does count this thread's allocations.
        let before = allocated();
        let probe = std::hint::black_box(vec![0u8; 4096]);
        assert!(allocated() - before >= 4096);
        drop(probe);
        let before = allocated();
        for n in 0..1_000_000 {
            let a = nth(n);
            let _ = l.request(a);
            let _ = l.failed_auth(a);
            if l.guess(a).is_ok() {
                l.forgive(a);
            }
        }
        // Counting a million addresses' requests and failures allocates not one byte: the
        // sketches are fixed-size, allocated when the limiter was made.
        assert_eq!(allocated() - before, 0);
        // Connections: a million opened and closed one after the other; the table's maps keep
        // the capacity they had, and no entry is left.
        for n in 0..1_000_000 {
            let slot = l.connect(nth(n), false).unwrap();
            drop(slot);
        }
        assert_eq!(l.addresses_connected(), 0);
        assert_eq!(allocated() - before, 0, "connection entries grew a map");
    }
}
