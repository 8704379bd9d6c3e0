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

use serde::{Deserialize, Serialize};
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::vec::{Broadcast, Input};
use timely::dataflow::operators::{Inspect, Probe};
use timely::worker::Worker;

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
