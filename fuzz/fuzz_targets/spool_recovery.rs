//! The spool's record decoder and recovery: a partition whose last segment holds any bytes
//! opens without panicking, reads back consecutive offsets, and takes a new append after
//! what it kept.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_connectors::log::{AppendRecord, EventLog, Spool, SpoolOptions};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let options = || SpoolOptions {
        partitions: 1,
        ..SpoolOptions::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    {
        let spool = Spool::open(dir.path(), options()).unwrap();
        let first = AppendRecord {
            partition: 0,
            payload: b"first".to_vec(),
        };
        runtime.block_on(spool.append(vec![first])).unwrap();
    }
    let folder = dir.path().join("partition-0000");
    let segment = std::fs::read_dir(&folder)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .max()
        .unwrap();
    std::fs::write(&segment, data).unwrap();
    let Ok(spool) = Spool::open(dir.path(), options()) else {
        return;
    };
    let kept = spool.read(0, 0, usize::MAX).unwrap();
    for (at, entry) in kept.iter().enumerate() {
        assert_eq!(entry.offset, at as u64);
    }
    let again = AppendRecord {
        partition: 0,
        payload: b"again".to_vec(),
    };
    let offsets = runtime.block_on(spool.append(vec![again])).unwrap();
    assert_eq!(offsets, vec![kept.len() as u64]);
});
