//! `tally`: the command line of the binary that wires Tally's layers together and runs them.
//! Each subcommand calls a module of the `tally` library (`src/lib.rs`); the benchmarks are
//! `tally-bench` (`bench/`).

/// mimalloc rather than glibc's malloc: the layers allocate and free many small objects per
/// event (strings, tag maps, sketch levels), and glibc spent up to a third of the speed
/// layer's time consolidating freed chunks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long mimalloc keeps freed memory before giving it back to the system. At its default
/// (1 s) the speed layer's replay gave back the buffers of differential's trace merges and
/// faulted in and zeroed fresh pages for the next ones (docs/performance.md has the
/// measurement). Memory still goes back 10 s after a burst. `MIMALLOC_PURGE_DELAY` in the
/// environment overrides it.
const ALLOCATOR_PURGE_DELAY_MS: std::ffi::c_long = 10_000;

/// `mi_option_purge_delay` in mimalloc's `mimalloc.h` (v3), which `libmimalloc-sys` leaves
/// unnamed.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets the purge delay, unless `MIMALLOC_PURGE_DELAY` in the environment already chose one.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: sets a plain option value, which mimalloc reads on each purge from any thread.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS) }
}

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tally::settings::{ConfigArgs, ServeArgs, SpeedArgs};
use tally::{batch, generator, kafka, logs, serve, views};

/// Tally: event analytics that keeps every event, serves fresh metrics and can recompute
/// every number from the raw data.
#[derive(Parser)]
#[command(name = "tally", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every layer in one process on embedded defaults: no servers to install.
    ///
    /// With no tenant in the config, creates tenant `demo` with a demo registry and views;
    /// its keys come from TALLY_DEMO_WRITE_KEY / TALLY_DEMO_READ_KEY, or
    /// <data-dir>/demo-keys.txt, or are generated and saved there.
    Up(ServeArgs),
    /// Run the HTTP collector alone.
    Ingest(ServeArgs),
    /// Run the speed layer alone: following the spool of a `tally ingest` on the same data
    /// directory, or Kafka, alone or as one process of a speed cluster (--peers); serves
    /// /metrics on speed.listen (default 127.0.0.1:8081).
    Speed(SpeedArgs),
    /// Run the query API alone over the stores of a data directory where `tally ingest` and
    /// `tally speed` run (`tally up` serves queries by itself).
    Serve(ServeArgs),
    /// Archive the event log as raw Parquet, for a data directory no `tally up` runs on
    /// (`tally up` archives by itself).
    Archive(batch::ArchiveArgs),
    /// The batch layer's jobs: recompute, reprocess, schedule.
    #[command(subcommand)]
    Batch(batch::BatchCommand),
    /// Read the real-time view store.
    #[command(subcommand)]
    Views(views::ViewsCommand),
    /// Inspect the event log.
    #[command(subcommand)]
    Log(LogCommand),
    /// Kafka administration.
    #[command(subcommand)]
    Kafka(kafka::KafkaCommand),
    /// Send realistic load to a collector and report what was accepted and rejected.
    Gen(generator::GenArgs),
}

#[derive(Subcommand)]
enum LogCommand {
    /// Per partition: first and next offset, records, bytes; for events and rejects.
    Stats {
        #[command(flatten)]
        config: ConfigArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print records as JSON lines, oldest first.
    Tail {
        #[command(flatten)]
        config: ConfigArgs,
        /// Read the rejected stream instead of events.
        #[arg(long)]
        rejected: bool,
        /// Print only the last N records of each partition (default: all).
        #[arg(short = 'n', long, value_name = "N")]
        lines: Option<u64>,
    },
}

impl Command {
    /// Whether the command runs a server, which must outlive whatever reads its output.
    fn serves(&self) -> bool {
        matches!(
            self,
            Command::Up(_) | Command::Ingest(_) | Command::Speed(_) | Command::Serve(_)
        )
    }
}

/// Lets a command whose output is piped into `head` (or anything that stops reading) end
/// as Unix tools do, by SIGPIPE, instead of panicking in `println!`: Rust ignores SIGPIPE
/// by default, so that a closed socket is an error rather than a death. Sockets stay safe
/// either way: on Linux, Rust writes to them with `MSG_NOSIGNAL`.
fn quit_quietly_on_a_closed_pipe() {
    // SAFETY: restores the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            // actix-http logs every malformed request from a client as an error; by default
            // they are the callers' mistakes, not the server's, and a flood of them must not
            // flood the log.
            tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG")
                .unwrap_or_else(|_| "info,actix_http::h1::dispatcher=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if !cli.command.serves() {
        quit_quietly_on_a_closed_pipe();
    }
    let result = match cli.command {
        Command::Up(args) => serve::run(args, serve::Mode::Up),
        Command::Ingest(args) => serve::run(args, serve::Mode::Ingest),
        Command::Speed(args) => serve::run_speed(args),
        Command::Serve(args) => serve::run(args, serve::Mode::Serve),
        Command::Archive(args) => batch::archive(args),
        Command::Batch(command) => batch::run(command),
        Command::Views(command) => views::run(command),
        Command::Log(LogCommand::Stats { config, json }) => logs::stats(&config, json),
        Command::Log(LogCommand::Tail {
            config,
            rejected,
            lines,
        }) => logs::tail(&config, rejected, lines),
        Command::Kafka(command) => kafka::run(command),
        Command::Gen(args) => generator::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_mimalloc_defaults_to_one_second() {
        // Reads the option before anything sets it: mimalloc's documented default is 1000 ms,
        // so a renumbered option enum fails here instead of tuning the wrong knob.
        let default = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(default, 1000);
    }
}
