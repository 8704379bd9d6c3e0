//! Numbers drawn to tell apart what several writers make at once (two batch runs writing the
//! same generation's objects, two speed processes renewing a view's generation).

use std::hash::BuildHasher;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// A number unlike any drawn before, in this process or another, with overwhelming odds: a
/// hash, under this process's random keys, of the clock and a count.
pub fn fresh_token() -> u64 {
    static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static DRAWN: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let drawn = DRAWN.fetch_add(1, Ordering::Relaxed);
    KEYS.get_or_init(Default::default).hash_one((nanos, drawn))
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_do_not_repeat() {
        let drawn: std::collections::HashSet<u64> =
            (0..10_000).map(|_| super::fresh_token()).collect();
        assert_eq!(drawn.len(), 10_000);
    }
}
