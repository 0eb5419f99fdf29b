//! The server's life cycle as connection tasks see it: the [`Phase`] they watch and the
//! one way to wait for it ([`phase_reached`]).

use tokio::sync::watch;

/// Where the server is in its life; connection tasks watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Accepting and serving.
    Running,
    /// Stopping: listeners closed, in-flight requests finish, idle connections close.
    Draining,
    /// The grace period is over: remaining connections are dropped.
    Closing,
}

/// Waits until the server phase reaches `phase` (forever if the sender is gone).
pub async fn phase_reached(shutdown: &mut watch::Receiver<Phase>, phase: Phase) {
    if shutdown.wait_for(|p| *p >= phase).await.is_err() {
        std::future::pending::<()>().await;
    }
}
