//! Which events the index may hold already. An event indexed again must replace its earlier
//! copy, which takes a delete of its key; a delete per event cost about 40 % of the indexing
//! time (docs/performance.md), though most events are new. So the index keeps, per hour of
//! its window, Bloom filters of the keys it has taken, and deletes only the keys they may
//! hold: never a false "new" (a filter's bits are only ever set), and few needless deletes.
//!
//! An hour's first filter holds 4,096 keys at 10 bits each; each next one holds four times
//! the last at 2 bits a key more, so the false positives of them all stay near those of the
//! first (about 1.3 % in all). That is 2 to 8 bytes per event of the window in memory, the
//! most just after an hour's filters grow.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

use tantivy::IndexReader;
use tantivy::schema::Field;

/// Bits per key an hour's first filter gives, and bits set per key: about 0.8 % false
/// positives when full. Each next filter gives 2 bits and 1 hash more.
const FIRST_BITS_PER_KEY: usize = 10;
const FIRST_HASHES: u32 = 7;
/// Keys an hour's first filter holds; each next one holds [`GROWTH`] times the last.
const FIRST_CAPACITY: usize = 4096;
const GROWTH: usize = 4;

/// The keys taken, by the hour of their events.
#[derive(Debug, Default)]
pub(super) struct SeenKeys {
    /// SipHash with fixed keys: the same answers on every run. Keys made to collide cost at
    /// most the delete each event took before the filters.
    hasher: BuildHasherDefault<DefaultHasher>,
    hours: BTreeMap<i64, Vec<Filter>>,
}

impl SeenKeys {
    /// The keys of every document in `reader`'s segments (deleted ones too: they only cost a
    /// needless delete), by the hour each names.
    pub(super) fn load(reader: &IndexReader, key: Field) -> tantivy::Result<SeenKeys> {
        let mut seen = SeenKeys::default();
        for segment in reader.searcher().segment_readers() {
            let keys = segment.inverted_index(key)?;
            let mut stream = keys.terms().stream()?;
            while stream.advance() {
                let text = String::from_utf8_lossy(stream.key());
                let hour = text
                    .rsplit('\u{1f}')
                    .next()
                    .and_then(|hour| hour.parse().ok());
                seen.insert(hour.unwrap_or_default(), &text);
            }
        }
        Ok(seen)
    }

    /// Records `key`, of an event in `hour` (hours since the epoch); whether it may have been
    /// recorded before.
    pub(super) fn insert(&mut self, hour: i64, key: &str) -> bool {
        let hash = self.hasher.hash_one(key);
        let filters = self.hours.entry(hour).or_default();
        if filters.iter().any(|filter| filter.may_hold(hash)) {
            return true;
        }
        if filters.last().is_none_or(|last| last.len >= last.capacity) {
            filters.push(Filter::nth(filters.len()));
        }
        filters.last_mut().expect("a filter with room").insert(hash);
        false
    }

    /// Forgets every key.
    pub(super) fn clear(&mut self) {
        self.hours.clear();
    }

    /// Forgets the keys of the hours before `hour`.
    pub(super) fn forget_before(&mut self, hour: i64) {
        self.hours = self.hours.split_off(&hour);
    }
}

/// A Bloom filter of key hashes.
#[derive(Debug)]
struct Filter {
    bits: Vec<u64>,
    hashes: u32,
    capacity: usize,
    len: usize,
}

impl Filter {
    /// An hour's filter number `n` (from 0).
    fn nth(n: usize) -> Filter {
        let n32 = u32::try_from(n).unwrap_or(u32::MAX);
        let capacity = FIRST_CAPACITY.saturating_mul(GROWTH.saturating_pow(n32));
        let bits_per_key = FIRST_BITS_PER_KEY.saturating_add(n.saturating_mul(2));
        Filter {
            bits: vec![0; capacity.saturating_mul(bits_per_key).div_ceil(64)],
            hashes: FIRST_HASHES.saturating_add(n32),
            capacity,
            len: 0,
        }
    }

    /// The bits of `hash`: double hashing over its two halves.
    fn positions(&self, hash: u64) -> impl Iterator<Item = usize> {
        let bits = self.bits.len() as u64 * 64;
        let (first, step) = (hash & 0xffff_ffff, (hash >> 32) | 1);
        (0..u64::from(self.hashes))
            .map(move |i| (first.wrapping_add(i.wrapping_mul(step)) % bits) as usize)
    }

    fn insert(&mut self, hash: u64) {
        for position in self.positions(hash).collect::<Vec<_>>() {
            self.bits[position / 64] |= 1 << (position % 64);
        }
        self.len += 1;
    }

    fn may_hold(&self, hash: u64) -> bool {
        (self.positions(hash))
            .all(|position| self.bits[position / 64] & (1 << (position % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_once_taken_is_always_seen_and_few_new_keys_seem_taken() {
        let mut seen = SeenKeys::default();
        let keys = 300_000;
        let key = |i: usize| format!("t\u{1f}e{i}\u{1f}7");
        let seemed_taken = (0..keys).filter(|i| seen.insert(7, &key(*i))).count();
        for i in 0..keys {
            assert!(seen.insert(7, &key(i)), "key {i} forgotten");
        }
        // 4,096, 16,384, 65,536 and 262,144 keys: the hour grew to four filters.
        assert_eq!(seen.hours[&7].len(), 4);
        let new = |i: usize| format!("t\u{1f}x{i}\u{1f}7");
        let seemed_taken_after = (0..keys).filter(|i| seen.insert(7, &new(*i))).count();
        for (when, count) in [
            ("while filling", seemed_taken),
            ("when full", seemed_taken_after),
        ] {
            assert!(
                count < keys * 2 / 100,
                "{when}: {count} of {keys} new keys seemed taken"
            );
        }
    }

    #[test]
    fn hours_are_forgotten_with_the_window_and_all_with_a_clear() {
        let mut seen = SeenKeys::default();
        for hour in 0..5 {
            seen.insert(hour, "k");
        }
        seen.forget_before(3);
        assert_eq!(seen.hours.keys().copied().collect::<Vec<_>>(), [3, 4]);
        assert!(!seen.insert(2, "k"), "hour 2 was forgotten");
        assert!(seen.insert(4, "k"));
        seen.clear();
        assert!(!seen.insert(4, "k"));
    }
}
