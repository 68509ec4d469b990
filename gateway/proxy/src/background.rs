//! Running async tasks (registry sync, writers) as Pingora background services, so they start
//! with the server and see its shutdown signal.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService, GenBackgroundService};

type Task = Box<dyn FnOnce(ShutdownWatch) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A background service that runs one task until it ends or the server shuts down.
pub struct TaskService {
    task: Mutex<Option<Task>>,
}

#[async_trait]
impl BackgroundService for TaskService {
    async fn start(&self, shutdown: ShutdownWatch) {
        // Pingora runs each background service on a thread of its own.
        yield_to_request_threads();
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            task(shutdown).await;
        }
    }
}

/// Wraps `task` as a named Pingora background service.
pub fn task_service<F, Fut>(name: &str, task: F) -> GenBackgroundService<TaskService>
where
    F: FnOnce(ShutdownWatch) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let task: Task = Box::new(move |shutdown| Box::pin(task(shutdown)));
    background_service(
        name,
        TaskService {
            task: Mutex::new(Some(task)),
        },
    )
}

/// Puts the calling thread in `SCHED_BATCH`: it keeps its fair share of the CPU, but waking up
/// no longer preempts a thread that serves requests (the kernel leaves that to the tick).
///
/// Why: the journal flushers wake many times per fsync (once per page written back) and each
/// wake-up preempted the request thread on its core; a request thread preempted inside its
/// `write(2)` of a begin record then waited for the flusher's time slice. Measured on the
/// full pipeline (one proxy core, 6 s at saturation): 3,500 preemptions of the request thread
/// by the two flushers, and 11 begin-record writes over 1 ms (longest 6.2 ms) — the
/// multi-millisecond p99 of the latency runs (bench/README.md, "The tail").
#[cfg(target_os = "linux")]
fn yield_to_request_threads() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` for the call's duration; pid 0 is the calling
    // thread; SCHED_BATCH needs no privilege.
    let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if result != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "background thread stays in the normal scheduling class"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn yield_to_request_threads() {}
