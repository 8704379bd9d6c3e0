//! The conformance suite every [`EventLog`] backend passes: the spool always, Kafka when its
//! broker is configured. Each check takes a fresh, empty log.

use super::{AppendRecord, EventLog, LogError};

fn record(partition: u32, text: &str) -> AppendRecord {
    AppendRecord {
        partition,
        payload: text.as_bytes().to_vec(),
    }
}

fn texts(entries: &[super::LogEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| String::from_utf8(e.payload.clone()).unwrap())
        .collect()
}

/// Appends across partitions come back in order, with gapless offsets per partition.
pub async fn appends_read_back_in_order(log: &dyn EventLog) {
    assert!(log.partitions() >= 2, "the suite needs two partitions");
    let offsets = log
        .append(vec![record(0, "a0"), record(1, "b0"), record(0, "a1")])
        .await
        .unwrap();
    assert_eq!(offsets, [0, 0, 1]);
    let offsets = log.append(vec![record(0, "a2")]).await.unwrap();
    assert_eq!(offsets, [2]);
    let entries = log.read(0, 0, 100).unwrap();
    assert_eq!(texts(&entries), ["a0", "a1", "a2"]);
    assert_eq!(
        entries.iter().map(|e| e.offset).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_eq!(texts(&log.read(1, 0, 100).unwrap()), ["b0"]);
    assert_eq!(texts(&log.read(0, 1, 1).unwrap()), ["a1"]);
    assert!(
        log.read(0, 3, 100).unwrap().is_empty(),
        "reading at the end gives nothing"
    );
    let stats = log.stats().unwrap();
    assert_eq!(stats.records, 4);
    assert_eq!(
        (
            stats.partitions[0].first_offset,
            stats.partitions[0].next_offset
        ),
        (0, 3)
    );
}

/// Sequential reads in small steps see every record exactly once.
pub async fn sequential_reads_resume_where_they_stopped(log: &dyn EventLog) {
    let records = (0..250).map(|i| record(0, &format!("r{i}"))).collect();
    log.append(records).await.unwrap();
    let mut next = 0;
    let mut seen = Vec::new();
    loop {
        let entries = log.read(0, next, 7).unwrap();
        let Some(last) = entries.last() else { break };
        next = last.offset + 1;
        seen.extend(texts(&entries));
    }
    assert_eq!(seen, (0..250).map(|i| format!("r{i}")).collect::<Vec<_>>());
}

/// Consumer positions are kept per consumer and partition.
pub async fn consumer_positions_are_kept(log: &dyn EventLog) {
    log.register_consumer("archiver").unwrap();
    assert_eq!(log.committed("archiver", 0).unwrap(), None);
    log.commit("archiver", 0, 42).unwrap();
    log.commit("speed", 1, 7).unwrap();
    assert_eq!(log.committed("archiver", 0).unwrap(), Some(42));
    assert_eq!(log.committed("archiver", 1).unwrap(), None);
    assert_eq!(log.committed("speed", 1).unwrap(), Some(7));
    assert!(matches!(
        log.commit("archiver", 99, 1),
        Err(LogError::NoSuchPartition { .. })
    ));
}

/// Bad partitions are errors, not panics.
pub async fn unknown_partitions_are_errors(log: &dyn EventLog) {
    let partitions = log.partitions();
    assert!(matches!(
        log.read(partitions, 0, 1),
        Err(LogError::NoSuchPartition { .. })
    ));
    let result = log.append(vec![record(partitions, "x")]).await;
    assert!(matches!(result, Err(LogError::NoSuchPartition { .. })));
}
