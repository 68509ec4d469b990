//! Signed webhooks (Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`
//! = `v1,` + base64 HMAC-SHA256 of `id.timestamp.body` with the subscriber's `whsec_` secret).
//!
//! Events: `quota.threshold` (80 % and 100 % of a day/month quota), `tenant.suspended`,
//! `policy.reload_failed`. A tenant's own subscribers (`[[tenant.webhooks]]`) get its events;
//! the operator's (`[[webhooks.subscriber]]`) get every event.
//!
//! Delivery goes through a durable queue: each delivery is appended (and fsynced) to
//! `dir/queue.jsonl` before any attempt, and a checkpoint records how far delivery got, so a
//! restart resumes where it stopped. Each subscriber URL is a lane of its own: its deliveries go
//! out one at a time in queue order, while other URLs' go on meanwhile, so a subscriber that
//! is down (retried for minutes) delays only its own events, never another tenant's. Attempts
//! back off exponentially with jitter; a delivery that still fails after `max_attempts` goes to
//! `dir/dead-letter.jsonl` (and a metric). The checkpoint is the oldest delivery not yet done, so
//! a restart sends again what was in flight: delivery is at least once, and receivers
//! deduplicate on `webhook-id`. Once everything is delivered the queue file is emptied. While the
//! queue cannot be written (a full disk) the events received are held and written when it can;
//! a graceful shutdown waits until every event emitted before it ends (the last requests'
//! quota and budget thresholds) is in the file, and the next start delivers what is left.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::durable::{append_line, write_atomically};
use crate::tenancy::LiveRegistry;
use crate::tenancy::{TenantSpec, WebhookSubscription};

/// `[webhooks]`: where deliveries queue and how they are retried.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Directory of the delivery queue, checkpoint and dead letters. Relative to this file.
    pub dir: PathBuf,
    /// The operator's subscribers: every event of every tenant, and gateway events.
    #[serde(default)]
    pub subscriber: Vec<WebhookSubscription>,
    /// Attempts per delivery before it is dead-lettered.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// First retry delay (doubles each attempt, with jitter, up to 5 minutes).
    #[serde(default = "default_retry_delay", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub retry_delay: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
}

fn default_attempts() -> u32 {
    10
}
fn default_retry_delay() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

pub use crate::tenancy::model::validate_subscription;
use crate::tenancy::model::webhook_secret_key as secret_key;

/// `v1,<base64 HMAC-SHA256(id.timestamp.body)>`.
pub fn sign(secret: &str, id: &str, timestamp: u64, body: &[u8]) -> Result<String, String> {
    let key = secret_key(secret)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    Ok(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// An event, as its subscribers receive it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    #[serde(rename = "type")]
    pub event_type: String,
    /// RFC 3339.
    pub timestamp: String,
    pub data: serde_json::Value,
}

impl WebhookEvent {
    pub fn new(event_type: &str, data: serde_json::Value) -> Self {
        WebhookEvent {
            event_type: event_type.to_string(),
            timestamp: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            data,
        }
    }
}

/// One queued delivery: an event for one subscriber. The secret is looked up when sending
/// (it never lands in the queue file).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Delivery {
    id: String,
    /// The subscriber's tenant (`None`: an operator subscriber).
    tenant: Option<String>,
    url: String,
    event: WebhookEvent,
}

/// What the worker receives.
enum Message {
    /// A delivery to queue.
    Deliver(Delivery),
    /// Answered once every delivery received before it is in the queue file.
    Persisted(tokio::sync::oneshot::Sender<()>),
    /// Answered once no delivery is in flight and the checkpoint says so.
    Settled(tokio::sync::oneshot::Sender<()>),
}

/// Emits events; cheap to clone, never blocks a request.
#[derive(Clone)]
pub struct Webhooks {
    sender: mpsc::Sender<Message>,
    operator: Arc<Vec<WebhookSubscription>>,
}

impl Webhooks {
    /// Queues `event` for the tenant's subscribers (when given) and the operator's.
    pub fn emit(&self, tenant: Option<&TenantSpec>, event: WebhookEvent) {
        let own = tenant
            .into_iter()
            .flat_map(|t| t.webhooks.iter().map(move |s| (Some(t.id.clone()), s)));
        let operator = self.operator.iter().map(|s| (None, s));
        for (owner, subscriber) in own.chain(operator) {
            if !subscriber.events.is_empty() && !subscriber.events.contains(&event.event_type) {
                continue;
            }
            let delivery = Delivery {
                id: format!("msg_{}", uuid::Uuid::now_v7().simple()),
                tenant: owner,
                url: subscriber.url.clone(),
                event: event.clone(),
            };
            if self.sender.try_send(Message::Deliver(delivery)).is_err() {
                metrics::counter!(crate::telemetry::WEBHOOK_DROPPED_TOTAL).increment(1);
                tracing::error!(event = %event.event_type, "webhook queue full: event not queued");
            }
        }
    }

    /// Waits until every event emitted before the call is in the queue file, from which the
    /// next start delivers what this process could not: a graceful shutdown's last step for
    /// webhooks (the events of its last requests and of the budgets' final flush). False if
    /// the worker is gone.
    pub async fn persisted(&self) -> bool {
        let (done, written) = tokio::sync::oneshot::channel();
        if self.sender.send(Message::Persisted(done)).await.is_err() {
            return false;
        }
        written.await.is_ok()
    }

    /// Waits until no delivery is in flight and the checkpoint records that: a graceful
    /// shutdown's wait (bounded by its caller) so a delivery that is answered as the process
    /// stops is not sent again at the next start. False if the worker is gone.
    pub async fn settled(&self) -> bool {
        let (done, settled) = tokio::sync::oneshot::channel();
        if self.sender.send(Message::Settled(done)).await.is_err() {
            return false;
        }
        settled.await.is_ok()
    }
}

/// The queue writer and delivery task.
pub struct WebhookWorker {
    receiver: mpsc::Receiver<Message>,
    deliverer: Arc<Deliverer>,
}

/// What sends deliveries: shared by the lanes' tasks.
struct Deliverer {
    config: WebhooksConfig,
    registry: Arc<dyn LiveRegistry>,
    client: reqwest::Client,
    /// Requests in flight at once, over all lanes (a lane waiting to retry holds none).
    sending: tokio::sync::Semaphore,
}

/// Requests sent at once, over all subscribers.
const MAX_SENDING: usize = 64;
/// Deliveries read from the queue and not yet done, at most (the rest wait in the file).
const MAX_UNFINISHED: usize = 10_000;

/// Opens the queue directory; returns the emitting handle and the worker to run.
pub fn open(
    config: WebhooksConfig,
    registry: Arc<dyn LiveRegistry>,
) -> std::io::Result<(Webhooks, WebhookWorker)> {
    std::fs::create_dir_all(&config.dir)?;
    let (sender, receiver) = mpsc::channel(65_536);
    let client = reqwest::Client::builder()
        .timeout(config.timeout)
        .build()
        .map_err(std::io::Error::other)?;
    Ok((
        Webhooks {
            sender,
            operator: Arc::new(config.subscriber.clone()),
        },
        WebhookWorker {
            receiver,
            deliverer: Arc::new(Deliverer {
                config,
                registry,
                client,
                sending: tokio::sync::Semaphore::new(MAX_SENDING),
            }),
        },
    ))
}

impl WebhookWorker {
    fn queue_path(&self) -> PathBuf {
        self.deliverer.config.dir.join("queue.jsonl")
    }

    fn checkpoint_path(&self) -> PathBuf {
        self.deliverer.config.dir.join("delivered.offset")
    }

    /// Appends new deliveries and sends pending ones until every emitter is gone. A graceful
    /// shutdown does not stop it: the events of the last requests still reach the queue file
    /// ([`Webhooks::persisted`]), and deliveries go on until the process exits.
    pub async fn run(mut self) {
        let (queue, checkpoint) = (self.queue_path(), self.checkpoint_path());
        // Where the next delivery is read from, and the checkpoint on disk.
        let mut read = read_checkpoint(&checkpoint);
        let length = std::fs::metadata(&queue).map_or(0, |m| m.len());
        if read > length {
            // The queue was replaced or removed (by hand, say): a checkpoint past its end
            // would pass over every delivery written until the file grew beyond it.
            tracing::warn!(
                checkpoint = read,
                queue_bytes = length,
                "webhook checkpoint past the end of the queue; delivering the queue from its start"
            );
            read = 0;
        }
        let mut saved = read;
        // Start offsets of the deliveries read and not yet done.
        let mut unfinished = std::collections::BTreeSet::new();
        // Per URL with a delivery in flight: the deliveries waiting behind it.
        let mut lanes: HashMap<String, VecDeque<(u64, Delivery)>> = HashMap::new();
        let mut in_flight = tokio::task::JoinSet::new();
        // Received and not yet in the queue file; who waits for them to be.
        let mut unwritten: Vec<Delivery> = Vec::new();
        let mut waiting: Vec<tokio::sync::oneshot::Sender<()>> = Vec::new();
        // Who waits for no delivery to be in flight.
        let mut settling: Vec<tokio::sync::oneshot::Sender<()>> = Vec::new();
        loop {
            // Everything received goes to disk before any attempt. While the queue cannot be
            // written (a full disk), what was taken is kept and written again, and nothing
            // more is taken: the channel holds the rest (emitters count what it cannot).
            if unwritten.is_empty() {
                while let Ok(message) = self.receiver.try_recv() {
                    take(message, &mut unwritten, &mut waiting, &mut settling);
                }
            }
            if !unwritten.is_empty() {
                if let Err(error) = append(&queue, &unwritten) {
                    metrics::counter!(crate::telemetry::WEBHOOK_QUEUE_ERRORS_TOTAL).increment(1);
                    tracing::error!(%error, deliveries = unwritten.len(), "webhook queue not written; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                unwritten.clear();
            }
            for done in waiting.drain(..) {
                let _ = done.send(());
            }
            while unfinished.len() < MAX_UNFINISHED {
                let Some((delivery, next)) = next_pending(&queue, read) else {
                    break;
                };
                unfinished.insert(read);
                match lanes.get_mut(&delivery.url) {
                    Some(waiting) => waiting.push_back((read, delivery)),
                    None => {
                        lanes.insert(delivery.url.clone(), VecDeque::new());
                        in_flight.spawn(self.deliverer.clone().deliver(read, delivery));
                    }
                }
                read = next;
            }
            if unfinished.is_empty() && saved == read {
                for done in settling.drain(..) {
                    let _ = done.send(());
                }
            }
            tokio::select! {
                Some(done) = in_flight.join_next() => {
                    // A lane's task only ends by finishing its delivery (it does not panic).
                    let Ok((url, start)) = done else { continue };
                    unfinished.remove(&start);
                    match lanes.get_mut(&url).and_then(VecDeque::pop_front) {
                        Some((next, delivery)) => {
                            in_flight.spawn(self.deliverer.clone().deliver(next, delivery));
                        }
                        None => {
                            lanes.remove(&url);
                        }
                    }
                    let oldest = unfinished.first().copied().unwrap_or(read);
                    if oldest != saved {
                        match write_checkpoint(&checkpoint, oldest) {
                            Ok(()) => saved = oldest,
                            Err(error) => tracing::error!(%error, "webhook checkpoint not written"),
                        }
                    }
                }
                received = self.receiver.recv() => match received {
                    // Written at the top of the loop.
                    Some(message) => take(message, &mut unwritten, &mut waiting, &mut settling),
                    None => return,
                },
            }
            let unread = || std::fs::metadata(&queue).map_or(true, |m| m.len() != read);
            if unfinished.is_empty() && saved == read && read > 0 && !unread() {
                // Everything delivered and nothing more written (this loop is the only
                // writer): empty the file, the checkpoint first, so a crash in between sends
                // the old deliveries again rather than skipping new ones.
                let emptied = write_checkpoint(&checkpoint, 0).and_then(|()| {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&queue)?
                        .set_len(0)
                });
                match emptied {
                    Ok(()) => (read, saved) = (0, 0),
                    Err(error) => tracing::error!(%error, "webhook queue not emptied"),
                }
            }
        }
    }
}

impl Deliverer {
    fn secret_for(&self, delivery: &Delivery) -> Option<String> {
        let matching = |subs: &[WebhookSubscription]| {
            subs.iter()
                .find(|s| s.url == delivery.url)
                .map(|s| s.secret.clone())
        };
        match &delivery.tenant {
            Some(tenant) => matching(&self.registry.current().get(tenant)?.webhooks),
            None => matching(&self.config.subscriber),
        }
    }

    /// Attempts the delivery that starts at `start` in the queue until it succeeds or is
    /// dead-lettered; returns its lane and start.
    async fn deliver(self: Arc<Self>, start: u64, delivery: Delivery) -> (String, u64) {
        self.attempt(&delivery).await;
        (delivery.url, start)
    }

    async fn attempt(&self, delivery: &Delivery) {
        use backon::BackoffBuilder;
        let Some(secret) = self.secret_for(delivery) else {
            tracing::warn!(url = %delivery.url, "webhook subscriber is gone; delivery dropped");
            return;
        };
        let body = serde_json::to_vec(&delivery.event).unwrap_or_default();
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(self.config.retry_delay)
            .with_max_delay(Duration::from_secs(300))
            .with_jitter()
            .without_max_times()
            .build();
        let mut last_error = String::new();
        for attempt in 1..=self.config.max_attempts.max(1) {
            let timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            let signature = match sign(&secret, &delivery.id, timestamp, &body) {
                Ok(s) => s,
                Err(e) => {
                    last_error = e;
                    break;
                }
            };
            // A permit only while the request is out (the semaphore is never closed).
            let permit = self.sending.acquire().await;
            let result = self
                .client
                .post(&delivery.url)
                .header("content-type", "application/json")
                .header("webhook-id", &delivery.id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature)
                .body(body.clone())
                .send()
                .await;
            drop(permit);
            match result {
                Ok(res) if res.status().is_success() => {
                    metrics::counter!(crate::telemetry::WEBHOOK_DELIVERIES_TOTAL, "outcome" => "delivered")
                        .increment(1);
                    return;
                }
                Ok(res) => last_error = format!("status {}", res.status()),
                Err(e) => last_error = e.to_string(),
            }
            metrics::counter!(crate::telemetry::WEBHOOK_DELIVERIES_TOTAL, "outcome" => "retried")
                .increment(1);
            tracing::warn!(url = %delivery.url, id = %delivery.id, attempt, error = %last_error, "webhook delivery failed");
            if attempt < self.config.max_attempts {
                tokio::time::sleep(backoff.next().unwrap_or(self.config.retry_delay)).await;
            }
        }
        metrics::counter!(crate::telemetry::WEBHOOK_DELIVERIES_TOTAL, "outcome" => "dead-lettered")
            .increment(1);
        tracing::error!(url = %delivery.url, id = %delivery.id, error = %last_error, "webhook delivery dead-lettered");
        let line = serde_json::json!({"delivery": delivery, "error": last_error});
        if let Err(e) = append_line(
            &self.config.dir.join("dead-letter.jsonl"),
            &line.to_string(),
        ) {
            tracing::error!(error = %e, "webhook dead-letter file not written");
        }
    }
}

/// Sorts a received message: a delivery to write, or a caller to answer once written, or once
/// nothing is in flight.
fn take(
    message: Message,
    unwritten: &mut Vec<Delivery>,
    waiting: &mut Vec<tokio::sync::oneshot::Sender<()>>,
    settling: &mut Vec<tokio::sync::oneshot::Sender<()>>,
) {
    match message {
        Message::Deliver(delivery) => unwritten.push(delivery),
        Message::Persisted(done) => waiting.push(done),
        Message::Settled(done) => settling.push(done),
    }
}

fn append(path: &Path, deliveries: &[Delivery]) -> std::io::Result<()> {
    let mut text = String::new();
    for d in deliveries {
        text.push_str(&serde_json::to_string(d).map_err(std::io::Error::other)?);
        text.push('\n');
    }
    append_line(path, text.trim_end_matches('\n'))
}

/// The first complete line at or after `offset`, and the offset after it. Unreadable lines
/// (damage; a line that is not UTF-8 too) are skipped with an error, never waited on; an
/// incomplete last line (a write in progress, or torn by a crash) is not read yet.
fn next_pending(path: &Path, mut offset: u64) -> Option<(Delivery, u64)> {
    let mut file = std::fs::File::open(path).ok()?;
    file.seek(std::io::SeekFrom::Start(offset)).ok()?;
    let mut reader = std::io::BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line).ok()?;
        if read == 0 || !line.ends_with(b"\n") {
            return None;
        }
        match serde_json::from_slice::<Delivery>(&line) {
            Ok(d) => return Some((d, offset + read as u64)),
            Err(e) => tracing::error!(
                queue = %path.display(), position = offset, error = %e,
                "unreadable webhook queue line skipped"
            ),
        }
        offset += read as u64;
    }
}

fn read_checkpoint(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn write_checkpoint(path: &Path, offset: u64) -> std::io::Result<()> {
    write_atomically(path, offset.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn signs_as_the_standard_webhooks_reference() {
        // Test vector of the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(sign("nope", "x", 1, b"").is_err());
    }

    /// A worker whose one operator subscriber refuses connections (each delivery fails once
    /// and is dead-lettered), writing its queue in `dir`.
    fn worker_in(dir: &Path) -> (Webhooks, WebhookWorker) {
        let config = WebhooksConfig {
            dir: dir.to_path_buf(),
            subscriber: vec![WebhookSubscription {
                url: "http://127.0.0.1:9/hooks".into(),
                secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
                events: Vec::new(),
            }],
            max_attempts: 1,
            retry_delay: Duration::from_millis(10),
            timeout: Duration::from_secs(1),
        };
        let registry =
            crate::snapshot::SnapshotStore::new(crate::test_support::Deployment::load().snapshot);
        open(config, registry).unwrap()
    }

    /// The ids of the deliveries the dead-letter file holds, once it holds `count` of them.
    async fn dead_letters(dir: &Path, count: usize) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ids: Vec<String> = std::fs::read_to_string(dir.join("dead-letter.jsonl"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| v["delivery"]["event"]["data"]["n"].as_u64())
                .map(|n| n.to_string())
                .collect();
            if ids.len() >= count || std::time::Instant::now() > deadline {
                return ids;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A queue file that cannot be written (a full disk; here a directory in its place):
    /// the events received meanwhile are written once it can be, and delivered.
    #[tokio::test]
    async fn events_wait_for_a_queue_that_cannot_be_written() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("queue.jsonl")).unwrap();
        let (webhooks, worker) = worker_in(dir.path());
        tokio::spawn(worker.run());
        for n in 0..3 {
            webhooks.emit(
                None,
                WebhookEvent::new("policy.reload_failed", serde_json::json!({ "n": n })),
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!dir.path().join("dead-letter.jsonl").exists());
        std::fs::remove_dir(dir.path().join("queue.jsonl")).unwrap();
        assert!(webhooks.persisted().await);
        let mut delivered = dead_letters(dir.path(), 3).await;
        delivered.sort();
        assert_eq!(delivered, ["0", "1", "2"]);
    }

    /// What is emitted during a graceful shutdown (the budgets' last flush) still reaches the
    /// queue: the worker does not stop at the shutdown signal, and `persisted` says when the
    /// events are written.
    #[tokio::test]
    async fn events_emitted_at_shutdown_reach_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let (webhooks, worker) = worker_in(dir.path());
        tokio::spawn(worker.run());
        webhooks.emit(
            None,
            WebhookEvent::new("budget.threshold", serde_json::json!({ "n": 7 })),
        );
        assert!(webhooks.persisted().await);
        let queued = std::fs::read_to_string(dir.path().join("queue.jsonl")).unwrap_or_default();
        let delivered = dead_letters(dir.path(), 0).await;
        assert!(
            queued.contains("budget.threshold") || delivered == ["7"],
            "neither queued nor delivered: {queued:?} {delivered:?}"
        );
        assert_eq!(dead_letters(dir.path(), 1).await, ["7"]);
    }

    /// `settled` answers once the delivery in flight is done and checkpointed: a graceful
    /// shutdown that waits for it does not send that delivery again at the next start.
    #[tokio::test]
    async fn settled_answers_once_nothing_is_in_flight_and_the_checkpoint_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let (webhooks, worker) = worker_in(dir.path());
        tokio::spawn(worker.run());
        assert!(webhooks.settled().await, "nothing queued: settled at once");
        webhooks.emit(
            None,
            WebhookEvent::new("budget.threshold", serde_json::json!({ "n": 8 })),
        );
        assert!(webhooks.persisted().await);
        assert!(webhooks.settled().await);
        // Done (here dead-lettered: the subscriber refuses connections) and recorded: the
        // checkpoint is past it, or the queue was emptied.
        assert_eq!(dead_letters(dir.path(), 0).await, ["8"]);
        let queue = std::fs::metadata(dir.path().join("queue.jsonl")).map_or(0, |m| m.len());
        assert_eq!(read_checkpoint(&dir.path().join("delivered.offset")), queue);
    }

    #[test]
    fn queue_lines_resume_from_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.jsonl");
        let d = |n: u32| Delivery {
            id: format!("msg_{n}"),
            tenant: None,
            url: "http://127.0.0.1:1/".into(),
            event: WebhookEvent::new("policy.reload_failed", serde_json::json!({"n": n})),
        };
        append(&path, &[d(1), d(2)]).unwrap();
        let (first, offset) = next_pending(&path, 0).unwrap();
        assert_eq!(first.id, "msg_1");
        write_checkpoint(&dir.path().join("delivered.offset"), offset).unwrap();
        let resumed = read_checkpoint(&dir.path().join("delivered.offset"));
        let (second, end) = next_pending(&path, resumed).unwrap();
        assert_eq!(second.id, "msg_2");
        assert!(next_pending(&path, end).is_none());
        // A torn last line is not delivered until it is complete.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"id\":")
            .unwrap();
        assert!(next_pending(&path, end).is_none());
        // A damaged line (here not UTF-8) is skipped, not waited on: later ones are delivered.
        std::fs::write(&path, b"\xff\xfe{}\n").unwrap();
        append(&path, &[d(3)]).unwrap();
        let (third, _) = next_pending(&path, 0).unwrap();
        assert_eq!(third.id, "msg_3");
    }
}
