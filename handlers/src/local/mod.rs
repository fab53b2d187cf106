//! Local adapters and drivers for `jobledger dev`: the embedded FIFO queue, the in-process and
//! child-process launchers, a ledger-backed list of sweep candidates, the change feed shared by the
//! local consumers, and the loops that run the dispatch, launch and sweep cores against them.

pub mod candidates;
pub mod feed;
pub mod launcher;
pub mod pipeline;
pub mod queue;

pub use candidates::LedgerCandidates;
pub use feed::{SHARED_FEED_EVENTS, SharedFeed};
pub use launcher::{ChildProcessLauncher, InProcessLauncher, WorkFn};
pub use pipeline::{
    DISPATCHER, DispatcherConfig, LauncherConfig, SweeperConfig, run_dispatcher, run_launcher,
    run_sweeper,
};
pub use queue::{DeadLetter, QueueConfig, QueueStats, SqliteJobQueue};
