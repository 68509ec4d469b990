//! The process around its requests: what records them (usage outbox, audit log) and whether
//! they can, how many requests are in flight, and how a graceful shutdown ends — when the last
//! request in flight is done, not at the end of a fixed grace period, and never before its
//! records are written.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::audit::AuditHandle;
use crate::metering::outbox::Outbox;

/// The writers every request's records go to.
#[derive(Default)]
pub struct Recording {
    pub outbox: Option<Arc<Outbox>>,
    pub audit: Option<AuditHandle>,
}

impl Recording {
    /// New requests may be taken on: neither writer is over its memory limit after failed
    /// writes.
    pub fn accepting(&self) -> bool {
        self.outbox.as_ref().is_none_or(|o| o.accepting())
            && self.audit.as_ref().is_none_or(|a| a.accepting())
    }

    /// Why records cannot be written right now (for `/readyz` and refusals), if they cannot.
    pub fn unavailable(&self) -> Option<String> {
        let outbox = self
            .outbox
            .as_ref()
            .filter(|o| !o.healthy())
            .map(|o| format!("usage outbox: {}", o.failure().unwrap_or_default()));
        let audit = self
            .audit
            .as_ref()
            .filter(|a| !a.healthy())
            .map(|a| format!("audit log: {}", a.failure().unwrap_or_default()));
        match (outbox, audit) {
            (Some(o), Some(a)) => Some(format!("{o}; {a}")),
            (o, a) => o.or(a),
        }
    }

    /// Writes and fsyncs everything queued; at exit, after the last request.
    pub fn flush(&self) {
        if let Some(outbox) = &self.outbox {
            if let Err(e) = outbox.flush() {
                tracing::error!(error = %e, "usage outbox: final flush failed");
            }
        }
        if let Some(audit) = &self.audit {
            if let Err(e) = audit.flush() {
                tracing::error!(error = %e, "audit log: final flush failed");
            }
        }
    }
}

/// Requests being served (from the request head to the last record of the request).
#[derive(Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    /// Counts a request until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Returns once no request is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Holds one request in the [`InFlight`] count.
pub struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Only a shutdown waits here; without waiters this wakes nobody.
            self.0.idle.notify_waiters();
        }
    }
}

/// Waits for a graceful shutdown to begin (`shutdown` turns true: listeners are closed and idle
/// keep-alive connections dropped), lets requests whose head was already read start
/// (`settle`), then waits until no request is in flight.
pub async fn drained(mut shutdown: watch::Receiver<bool>, in_flight: &InFlight, settle: Duration) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            // The server is gone without a graceful shutdown: nothing to wait for here.
            std::future::pending::<()>().await;
        }
    }
    tokio::time::sleep(settle).await;
    in_flight.wait_idle().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drained_waits_for_the_signal_and_the_last_request() {
        let in_flight = Arc::new(InFlight::default());
        let (signal, shutdown) = watch::channel(false);
        let guard = in_flight.enter();
        let waiting = {
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                drained(shutdown, &in_flight, Duration::from_millis(1)).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "no shutdown yet");
        signal.send(true).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "a request is in flight");
        let second = in_flight.enter();
        drop(guard);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "one request is still in flight");
        drop(second);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("drained once the last request is done")
            .unwrap();
        assert_eq!(in_flight.count(), 0);
    }
}
