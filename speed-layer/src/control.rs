//! What the speed layer's workers tell each other when the views change, through a small
//! dataflow of its own that every worker builds first: every message reaches every worker, in
//! the order worker 0 sent it, in one process or across a cluster.
//!
//! Worker 0 follows the catalog. When its views change it sends [`Control::Build`]; each worker
//! then builds a second dataflow for the new views, replays its partitions into it from the
//! horizon while the running dataflow goes on, and sends [`Control::CaughtUp`] once the new one
//! has read as far. When every worker has, worker 0 sends [`Control::Switch`] for a round two
//! rounds ahead: no worker can have started that round before the message reaches it (a worker
//! starts round `r` only once every message of rounds before `r − 1` has arrived), so all of
//! them hand over between the same two epochs.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tally_connectors::view_store::live::{self, LiveViews};
use tally_model::Millis;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::vec::{Broadcast, Input};
use timely::dataflow::operators::{Inspect, Probe};
use timely::worker::Worker;

use crate::dataflow::CompiledViews;
use crate::pipeline::Pipeline;
use crate::{Shared, SpeedLayer};

/// A round of a worker's loop: one epoch of each of its dataflows.
pub type Round = u64;

/// A message between the speed layer's workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Control {
    /// Build these views (JSON of [`LiveView`](tally_connectors::view_store::live::LiveView)s)
    /// beside the running ones.
    Build {
        /// The catalog generation they come from.
        generation: u64,
        /// The views, as JSON.
        views: String,
    },
    /// A worker's build has read its partitions as far as its running dataflow.
    CaughtUp {
        /// The generation being built.
        generation: u64,
        /// The worker.
        worker: usize,
    },
    /// Hand over to the built views at the start of `round`.
    Switch {
        /// The generation built.
        generation: u64,
        /// The round that runs on the built views.
        round: Round,
    },
}

/// A worker's end of the control dataflow.
pub struct ControlChannel {
    input: timely::dataflow::InputHandleVec<Round, Control>,
    probe: ProbeHandle<Round>,
    inbox: Rc<RefCell<Vec<Control>>>,
}

impl ControlChannel {
    /// Builds the control dataflow; every worker must build it before any other.
    pub fn new(worker: &mut Worker) -> Self {
        let inbox: Rc<RefCell<Vec<Control>>> = Rc::default();
        let received = inbox.clone();
        let (input, probe) = worker.dataflow::<Round, _, _>(|scope| {
            let (input, messages) = scope.new_input::<Control>();
            let (probe, _) = messages
                .broadcast()
                .inspect(move |message| received.borrow_mut().push(message.clone()))
                .probe();
            (input, probe)
        });
        ControlChannel {
            input,
            probe,
            inbox,
        }
    }

    /// Sends `message` to every worker, this one included, in the current round.
    pub fn send(&mut self, message: Control) {
        self.input.send(message);
    }

    /// Ends the current round; the next is `round`.
    pub fn advance_to(&mut self, round: Round) {
        self.input.advance_to(round);
        self.input.flush();
    }

    /// Whether a message sent in `round` or before may still be on its way.
    pub fn may_be_sending(&self, round: Round) -> bool {
        self.probe.less_equal(&round)
    }

    /// The messages received since the last call, in order.
    pub fn take(&self) -> Vec<Control> {
        std::mem::take(&mut self.inbox.borrow_mut())
    }
}

/// Worker 0's part in a view change: it follows the catalog, asks for a build when the
/// views change, and names the round to switch in once every worker has caught up.
pub(crate) struct ChangeLead {
    /// The catalog generation last looked at.
    pub(crate) seen: u64,
    /// The generation being built, and the workers whose build has caught up.
    pub(crate) building: Option<(u64, Vec<usize>)>,
    /// The stored names the last switch retired, and when they may be deleted: serving
    /// replicas may read them until they see the new record.
    pub(crate) retiring: Option<(Instant, Vec<(String, String)>)>,
}

/// How long the states of a spec replaced at a switch stay, for queries already reading them.
const RETIRE_AFTER: Duration = Duration::from_secs(60);

impl ChangeLead {
    /// Asks for a build when the catalog's views differ from the running ones.
    pub(crate) fn follow_catalog(
        &mut self,
        shared: &Shared,
        running: &Pipeline,
        control: &mut ControlChannel,
    ) {
        if self.building.is_some() {
            return;
        }
        let (generation, catalog) = shared.layer.catalog.current_with_generation();
        if generation == self.seen {
            return;
        }
        self.seen = generation;
        let views = LiveViews::of(&catalog, generation).views;
        if views == running.views.live_views() {
            return;
        }
        tracing::info!(
            generation,
            "the catalog's views changed: building their real-time states beside the running ones"
        );
        let views = serde_json::to_string(&views).expect("view specs serialize");
        control.send(Control::Build { generation, views });
        self.building = Some((generation, Vec::new()));
    }

    /// Notes a worker's caught-up build; once all `peers` have, sends the switch for
    /// `round + 2`.
    pub(crate) fn caught_up(
        &mut self,
        (generation, worker): (u64, usize),
        peers: usize,
        round: Round,
        control: &mut ControlChannel,
    ) {
        let Some((building, caught)) = &mut self.building else {
            return;
        };
        if *building != generation || caught.contains(&worker) {
            return;
        }
        caught.push(worker);
        if caught.len() == peers {
            control.send(Control::Switch {
                generation,
                round: round + 2,
            });
        }
    }

    /// After a switch: records the new views as live and retires the old ones' states later.
    pub(crate) fn switched(
        &mut self,
        layer: &SpeedLayer,
        before: &CompiledViews,
        after: &CompiledViews,
    ) {
        self.building = None;
        let live = LiveViews {
            generation: self.seen,
            views: after.live_views(),
        };
        let current: Vec<(String, String)> = live.stored_names();
        if let Err(err) = live::write(layer.store.as_ref(), &live) {
            tracing::error!(error = %err, "could not record the views the real-time states answer for");
        }
        let retired: Vec<(String, String)> = before
            .stored_names()
            .map(|(tenant, view)| (tenant.to_owned(), view.to_owned()))
            .filter(|named| !current.contains(named))
            .collect();
        tracing::info!(
            generation = live.generation,
            retired = retired.len(),
            "the views of the changed catalog are live"
        );
        self.retiring = Some((Instant::now() + RETIRE_AFTER, retired));
    }

    /// Deletes the states retired at the last switch, once their grace is over.
    pub(crate) fn retire_when_due(&mut self, layer: &SpeedLayer) {
        let Some((_, names)) = self.retiring.take_if(|(due, _)| Instant::now() >= *due) else {
            return;
        };
        for (tenant, view) in names {
            match layer.store.delete_before(&tenant, &view, Millis::MAX) {
                Ok(deleted) => {
                    tracing::info!(%tenant, %view, deleted, "retired the real-time states of an earlier view spec")
                }
                Err(err) => {
                    tracing::warn!(%tenant, %view, error = %err, "could not retire the states of an earlier view spec; the next start retires them")
                }
            }
        }
    }
}
