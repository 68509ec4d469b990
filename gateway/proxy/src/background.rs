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
