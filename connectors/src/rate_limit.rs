//! How often one caller may call: [`CallerLimits`] keeps a GCRA limiter (the `governor`
//! crate) per API key and per client address, and blocks an address for a while once it
//! has failed authentication too often. It knows nothing of HTTP: the server asks
//! [`CallerLimits::admit`] before a request and tells [`CallerLimits::auth_failed`] after a
//! 401. What it refuses is counted in `/metrics` ([`RateLimitMetrics`]).
//!
//! Memory is bounded: limiters of callers idle long enough to be full again are dropped
//! once a map holds [`MAX_TRACKED`] callers.
// This module reads what callers send: its arithmetic is checked or saturating, never
// wrapping (docs/hardening.md).
#![deny(clippy::arithmetic_side_effects)]

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tally_model::config::LimitsConfig;

/// Callers a limiter map holds before it drops the idle ones.
pub const MAX_TRACKED: usize = 100_000;

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The API key's requests per second.
    Key,
    /// The client address's requests per second.
    Address,
    /// The client address failed authentication too often.
    AuthFailures,
}

impl Limit {
    fn label(self) -> &'static str {
        match self {
            Limit::Key => "key",
            Limit::Address => "address",
            Limit::AuthFailures => "auth_failures",
        }
    }
}

/// A refused request: which limit, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The limit that refused it.
    pub limit: Limit,
    /// How long until the caller may call again.
    pub retry_after: Duration,
}

impl Refused {
    /// Whole seconds for a `Retry-After` header, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }

    /// What to tell the caller.
    pub fn message(&self) -> String {
        let what = match self.limit {
            Limit::Key => "this API key made too many requests",
            Limit::Address => "this address made too many requests",
            Limit::AuthFailures => "this address failed authentication too often",
        };
        format!("{what}; retry after {} s", self.retry_after_secs())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

/// What the limits refuse and the failed authentications they see.
pub struct RateLimitMetrics {
    refused: Family<LimitLabels, Counter>,
    auth_failures: Counter,
}

impl RateLimitMetrics {
    /// Creates the metrics and registers them under `tally_http_*`.
    pub fn register(registry: &mut Registry) -> Arc<RateLimitMetrics> {
        let metrics = RateLimitMetrics {
            refused: Family::default(),
            auth_failures: Counter::default(),
        };
        let http = registry.sub_registry_with_prefix("tally_http");
        http.register(
            "rate_limited",
            "Requests refused with 429, by the limit that refused them",
            metrics.refused.clone(),
        );
        http.register(
            "auth_failures",
            "Requests answered 401: no key, or an unknown one",
            metrics.auth_failures.clone(),
        );
        Arc::new(metrics)
    }
}

/// The limits of every caller of one server.
pub struct CallerLimits {
    per_key: Option<DefaultKeyedRateLimiter<u64>>,
    per_address: Option<DefaultKeyedRateLimiter<IpAddr>>,
    auth_failures: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Addresses refused until an instant, for failing authentication too often.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    block_for: Duration,
    /// Hashes key secrets, so that the limiter holds no secret.
    hasher: RandomState,
    clock: DefaultClock,
    metrics: Arc<RateLimitMetrics>,
}

impl CallerLimits {
    /// The limits `config` sets.
    pub fn new(config: &LimitsConfig, metrics: Arc<RateLimitMetrics>) -> CallerLimits {
        let failures = NonZeroU32::new(config.auth_failures_per_minute_per_address);
        CallerLimits {
            per_key: per_second(config.requests_per_second_per_key, config.burst_seconds),
            per_address: per_second(config.requests_per_second_per_address, config.burst_seconds),
            auth_failures: failures.map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            blocked: Mutex::default(),
            block_for: failures.map_or(Duration::ZERO, |n| {
                Duration::from_secs(60)
                    .checked_div(n.get())
                    .unwrap_or_default()
            }),
            hasher: RandomState::new(),
            clock: DefaultClock::default(),
            metrics,
        }
    }

    /// Whether a request from `address` with the key `secret` may go ahead; counts it.
    pub fn admit(&self, address: Option<IpAddr>, secret: Option<&str>) -> Result<(), Refused> {
        let refused = self.check(address, secret);
        if let Err(refused) = refused {
            self.metrics
                .refused
                .get_or_create(&LimitLabels {
                    limit: refused.limit.label(),
                })
                .inc();
        }
        refused
    }

    fn check(&self, address: Option<IpAddr>, secret: Option<&str>) -> Result<(), Refused> {
        if let Some(address) = address {
            if let Some(until) = self.blocked_until(address) {
                return Err(Refused {
                    limit: Limit::AuthFailures,
                    retry_after: until.saturating_duration_since(Instant::now()),
                });
            }
            if let Some(limiter) = &self.per_address {
                self.charge(limiter, &address, Limit::Address)?;
            }
        }
        if let (Some(secret), Some(limiter)) = (secret, &self.per_key) {
            self.charge(limiter, &self.hasher.hash_one(secret), Limit::Key)?;
        }
        Ok(())
    }

    /// Records a 401 for `address`; past its allowance the address is refused for a while.
    pub fn auth_failed(&self, address: Option<IpAddr>) {
        self.metrics.auth_failures.inc();
        let (Some(address), Some(limiter)) = (address, &self.auth_failures) else {
            return;
        };
        if self.charge(limiter, &address, Limit::AuthFailures).is_err() {
            let now = Instant::now();
            let mut blocked = self.blocked.lock().expect("blocked lock");
            if blocked.len() >= MAX_TRACKED {
                blocked.retain(|_, until| *until > now);
            }
            blocked.insert(address, now.checked_add(self.block_for).unwrap_or(now));
        }
    }

    fn blocked_until(&self, address: IpAddr) -> Option<Instant> {
        // Without the failed-authentication limit nobody is blocked: no lock to take.
        self.auth_failures.as_ref()?;
        let blocked = self.blocked.lock().expect("blocked lock");
        blocked
            .get(&address)
            .copied()
            .filter(|until| *until > Instant::now())
    }

    fn charge<K: std::hash::Hash + Eq + Clone>(
        &self,
        limiter: &DefaultKeyedRateLimiter<K>,
        key: &K,
        limit: Limit,
    ) -> Result<(), Refused> {
        if limiter.len() >= MAX_TRACKED {
            limiter.retain_recent();
        }
        limiter.check_key(key).map_err(|not_until| Refused {
            limit,
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }
}

/// The connections each client address holds open, against `limits.connections_per_address`.
pub struct ConnectionCount {
    per_address: Mutex<HashMap<IpAddr, u32>>,
    cap: u32,
}

/// One open connection, counted against its address until dropped (when the server drops the
/// connection's data).
pub struct OpenConnection {
    address: IpAddr,
    /// Whether its address already held the most connections when it opened.
    pub over_cap: bool,
    count: Arc<ConnectionCount>,
}

impl ConnectionCount {
    /// Counts connections against `cap` per address (0: no cap).
    pub fn new(cap: u32) -> Arc<ConnectionCount> {
        Arc::new(ConnectionCount {
            per_address: Mutex::default(),
            cap,
        })
    }

    /// Counts a connection from `address` until the returned guard drops.
    pub fn opened(self: &Arc<Self>, address: IpAddr) -> OpenConnection {
        let mut per_address = self.per_address.lock().expect("connections lock");
        let count = per_address.entry(address).or_default();
        *count = count.saturating_add(1);
        OpenConnection {
            address,
            over_cap: self.cap > 0 && *count > self.cap,
            count: self.clone(),
        }
    }
}

impl OpenConnection {
    /// The cap of its address's connections, for the refusal's message.
    pub fn cap(&self) -> u32 {
        self.count.cap
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let mut per_address = self.count.per_address.lock().expect("connections lock");
        if let Some(count) = per_address.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                per_address.remove(&self.address);
            }
        }
    }
}

/// Governance changes one tenant may make a minute: each writes a whole catalog
/// generation.
pub const GOVERNANCE_CHANGES_PER_MINUTE: u32 = 60;

/// Each tenant's governance changes, within [`GOVERNANCE_CHANGES_PER_MINUTE`].
pub struct ChangeBudget {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

impl Default for ChangeBudget {
    fn default() -> Self {
        let per_minute =
            NonZeroU32::new(GOVERNANCE_CHANGES_PER_MINUTE).expect("the budget is not zero");
        ChangeBudget {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
            clock: DefaultClock::default(),
        }
    }
}

impl ChangeBudget {
    /// Charges one change to `tenant`; past its budget, how long until the next is allowed.
    pub fn charge(&self, tenant: &str) -> Result<(), Duration> {
        if self.limiter.len() >= MAX_TRACKED {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&tenant.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// A keyed limiter of `rate` per second with a burst of `burst_seconds` of it; none for 0.
fn per_second<K: std::hash::Hash + Eq + Clone>(
    rate: u32,
    burst_seconds: u32,
) -> Option<DefaultKeyedRateLimiter<K>> {
    let rate = NonZeroU32::new(rate)?;
    let burst = NonZeroU32::new(rate.get().saturating_mul(burst_seconds.max(1)))?;
    Some(RateLimiter::keyed(
        Quota::per_second(rate).allow_burst(burst),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(config: LimitsConfig) -> CallerLimits {
        CallerLimits::new(
            &config,
            RateLimitMetrics::register(&mut Registry::default()),
        )
    }

    fn address(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn each_key_and_each_address_has_its_own_allowance() {
        let limits = limits(LimitsConfig {
            requests_per_second_per_key: 3,
            requests_per_second_per_address: 5,
            burst_seconds: 1,
            ..LimitsConfig::default()
        });
        for _ in 0..3 {
            assert_eq!(limits.admit(address(1), Some("key-a")), Ok(()));
        }
        let refused = limits.admit(address(1), Some("key-a")).unwrap_err();
        assert_eq!(refused.limit, Limit::Key);
        assert!(refused.retry_after <= Duration::from_secs(1), "{refused:?}");
        assert_eq!(refused.retry_after_secs(), 1);
        // Another key from the same address still has its own; the address has one left.
        assert_eq!(limits.admit(address(1), Some("key-b")), Ok(()));
        let refused = limits.admit(address(1), Some("key-c")).unwrap_err();
        assert_eq!(refused.limit, Limit::Address);
        assert!(
            refused
                .message()
                .contains("this address made too many requests")
        );
        assert_eq!(limits.admit(address(2), Some("key-b")), Ok(()));
    }

    #[test]
    fn an_address_that_keeps_failing_authentication_is_blocked() {
        let limits = limits(LimitsConfig {
            auth_failures_per_minute_per_address: 3,
            ..LimitsConfig::default()
        });
        for _ in 0..3 {
            assert_eq!(limits.admit(address(7), Some("guess")), Ok(()));
            limits.auth_failed(address(7));
        }
        assert_eq!(
            limits.admit(address(7), None),
            Ok(()),
            "three failures are allowed"
        );
        limits.auth_failed(address(7));
        let refused = limits.admit(address(7), Some("the-right-key")).unwrap_err();
        assert_eq!(refused.limit, Limit::AuthFailures);
        assert!(
            refused.retry_after <= Duration::from_secs(20),
            "{refused:?}"
        );
        assert_eq!(
            limits.admit(address(8), Some("guess")),
            Ok(()),
            "others go on"
        );
    }

    #[test]
    fn connections_are_counted_per_address_until_they_close() {
        let count = ConnectionCount::new(2);
        let (one, two) = (address(1).unwrap(), address(2).unwrap());
        let first = count.opened(one);
        let second = count.opened(one);
        assert!(!first.over_cap && !second.over_cap);
        assert!(count.opened(one).over_cap, "a third from one address");
        assert!(!count.opened(two).over_cap, "another address has its own");
        drop(first);
        assert!(
            !count.opened(one).over_cap,
            "a closed connection frees its place"
        );
        let uncapped = ConnectionCount::new(0);
        let held: Vec<_> = (0..1000).map(|_| uncapped.opened(one)).collect();
        assert!(held.iter().all(|connection| !connection.over_cap));
    }

    #[test]
    fn a_limit_of_zero_is_off() {
        let limits = limits(LimitsConfig {
            requests_per_second_per_key: 0,
            requests_per_second_per_address: 0,
            auth_failures_per_minute_per_address: 0,
            ..LimitsConfig::default()
        });
        for _ in 0..10_000 {
            assert_eq!(limits.admit(address(1), Some("k")), Ok(()));
            limits.auth_failed(address(1));
        }
    }
}
