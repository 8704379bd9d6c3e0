//! `tally log stats` and `tally log tail`: read the spool beside a running process.

use std::io::Write;

use anyhow::Context;
use serde_json::json;
use tally_connectors::log::{EventLog, LogStats, Spool};

use crate::settings::ConfigArgs;
use crate::settings::{self, Stream};

fn open(args: &ConfigArgs, stream: Stream) -> anyhow::Result<Spool> {
    let config = settings::load(args)?;
    let dir = settings::spool_dir(&config.data_dir, stream);
    Spool::open_read_only(&dir).with_context(|| {
        format!(
            "opening the {} stream; has `tally up` run with this --data-dir?",
            stream.name()
        )
    })
}

/// Prints per-partition figures of both streams.
pub fn stats(args: &ConfigArgs, as_json: bool) -> anyhow::Result<()> {
    let events = open(args, Stream::Events)?.stats()?;
    let rejected = open(args, Stream::Rejected)?.stats()?;
    if as_json {
        println!("{}", json!({ "events": events, "rejected": rejected }));
        return Ok(());
    }
    for (stream, stats) in [(Stream::Events, &events), (Stream::Rejected, &rejected)] {
        print_table(stream.name(), stats);
    }
    Ok(())
}

fn print_table(name: &str, stats: &LogStats) {
    println!("{name}: {} records, {} bytes", stats.records, stats.bytes);
    println!(
        "  {:>9} {:>12} {:>12} {:>12} {:>14} {:>8}",
        "partition", "first", "next", "records", "bytes", "segments"
    );
    for p in &stats.partitions {
        println!(
            "  {:>9} {:>12} {:>12} {:>12} {:>14} {:>8}",
            p.partition, p.first_offset, p.next_offset, p.records, p.bytes, p.segments
        );
    }
}

/// Prints records as JSON lines.
pub fn tail(args: &ConfigArgs, rejected: bool, last: Option<u64>) -> anyhow::Result<()> {
    let spool = open(
        args,
        if rejected {
            Stream::Rejected
        } else {
            Stream::Events
        },
    )?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for partition in spool.stats()?.partitions {
        let mut offset = last.map_or(partition.first_offset, |n| {
            partition
                .next_offset
                .saturating_sub(n)
                .max(partition.first_offset)
        });
        loop {
            let entries = spool.read(partition.partition, offset, 10_000)?;
            let Some(last_entry) = entries.last() else {
                break;
            };
            offset = last_entry.offset + 1;
            for entry in entries {
                out.write_all(&entry.payload)?;
                out.write_all(b"\n")?;
            }
        }
    }
    out.flush()?;
    Ok(())
}
