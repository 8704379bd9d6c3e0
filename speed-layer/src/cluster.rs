//! The speed layer as a timely cluster: the same dataflow across several processes, each
//! running `speed.workers` threads. Timely exchanges the deduplication and the view states
//! between them by key, so every state key has one owner worker in the whole cluster, and
//! that worker's process writes it to the shared view store.
//!
//! Timely clusters are static: the processes connect once, at start, and a lost peer cannot
//! rejoin. When one dies, timely's network threads in the others panic; [`watch_for_lost_peers`]
//! catches which peer it was, and the process exits non-zero naming it
//! ([`SpeedHandle::cluster_failure`](crate::SpeedHandle::cluster_failure)), for a supervisor to
//! restart every process. Each then replays the log from the horizon, which makes the views
//! exact again.

use std::sync::Mutex;

use tally_model::config::SpeedConfig;

/// The first peer this process lost, and why: set by the panic of a timely network thread.
static LOST_PEER: Mutex<Option<String>> = Mutex::new(None);

/// The timely configuration for `workers` threads here: one process, or this process's place
/// in the cluster `config.peers` names.
pub(crate) fn timely_config(config: &SpeedConfig, workers: usize) -> timely::Config {
    let peers = config.peer_addresses();
    if peers.is_empty() {
        return timely::Config::process(workers);
    }
    timely::Config {
        communication: timely::CommunicationConfig::Cluster {
            threads: workers,
            process: config.process_index,
            addresses: peers,
            report: false,
            zerocopy: false,
        },
        worker: timely::WorkerConfig::default(),
    }
}

/// Installs, once per process, a panic hook that notes which peer a timely network thread
/// lost (its threads are named `timely:recv-N` and `timely:send-N` after peer `N`), then
/// runs the hook that was there before.
pub(crate) fn watch_for_lost_peers(peers: Vec<String>) {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let peer = thread
                .name()
                .and_then(|name| name.strip_prefix("timely:"))
                .and_then(|name| name.split_once('-'))
                .and_then(|(_, index)| index.parse::<usize>().ok());
            let network_thread = peer.is_some();
            if let Some(peer) = peer {
                let address = peers.get(peer).map_or("?", String::as_str);
                let why = info
                    .payload()
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| info.payload().downcast_ref::<&str>().copied())
                    .unwrap_or("its connection failed");
                let mut lost = LOST_PEER.lock().unwrap_or_else(|p| p.into_inner());
                lost.get_or_insert_with(|| {
                    format!(
                        "lost peer {peer} ({address}) of the speed cluster: {why}; timely \
                         clusters are static, so every process of the cluster must be restarted"
                    )
                });
            }
            // Once a peer is lost, every timely thread's panic is its echo: the process says
            // once, in its log and its exit, which peer it lost.
            let timely_thread = thread
                .name()
                .is_some_and(|name| name.starts_with("timely:"));
            if network_thread || (timely_thread && lost_peer().is_some()) {
                return;
            }
            previous(info);
        }));
    });
}

/// The first peer this process lost, if any: see [`watch_for_lost_peers`].
pub(crate) fn lost_peer() -> Option<String> {
    LOST_PEER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}
