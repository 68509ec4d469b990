//! Exporters: each reads the outbox on its own, delivers events in batches and checkpoints
//! what it delivered, so a restart resumes where it stopped.
//!
//! Failures: transient ones (network, 5xx, 429) are retried with exponential backoff and
//! jitter for as long as it takes (a sink that is down must not cost billing data); a batch the
//! sink refuses (4xx) is split and only the events it refuses individually go to a dead-letter
//! file, with a metric, so one poison event never blocks the rest.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::BackoffBuilder;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::outbox::{OutboxCursor, Written};
use super::{Assembled, Assembler, Outcome, UsageEvent};
use crate::db::PostgresConfig;
use crate::diagnostics::{SourceIssue, SourceText};
use crate::tenancy::LiveRegistry;

/// One `[[metering.exporter]]`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ExporterConfig {
    /// A usage ledger table in PostgreSQL (unique on the event id).
    Postgres {
        name: String,
        #[serde(flatten)]
        database: PostgresConfig,
        #[serde(default = "default_ledger_table")]
        ledger_table: String,
        #[serde(default = "default_batch")]
        batch_size: usize,
    },
    /// CloudEvents over HTTP in batch mode (OpenMeter's ingest API).
    Cloudevents {
        name: String,
        /// e.g. `https://openmeter.example/api/v1/events`.
        endpoint: String,
        /// Environment variable with a bearer token.
        #[serde(default)]
        token_env: Option<String>,
        #[serde(default = "default_source")]
        source: String,
        #[serde(default = "default_batch")]
        batch_size: usize,
    },
    /// Stripe Billing meter events (`/v1/billing/meter_events`), one per request, with the
    /// event id as `identifier`. Tenants need `billing.stripe_customer`.
    Stripe {
        name: String,
        #[serde(default = "default_stripe_endpoint")]
        endpoint: String,
        api_key_env: String,
        event_name: String,
        #[serde(default = "default_batch")]
        batch_size: usize,
    },
    /// NATS JetStream: one CloudEvent (structured JSON) per event on
    /// `<subject_prefix>.<tenant>`, with `Nats-Msg-Id` = the event id, so the stream's
    /// duplicate window drops a batch the exporter sends again after a crash. The stream is
    /// created (file storage) when absent.
    Nats {
        name: String,
        /// e.g. `nats://127.0.0.1:4222`.
        url: String,
        #[serde(default = "default_nats_stream")]
        stream: String,
        #[serde(default = "default_nats_subject_prefix")]
        subject_prefix: String,
        /// The duplicate window of a stream the exporter creates. A batch sent again after a
        /// crash is dropped by the broker only within it: keep it above the longest time a
        /// gateway may stay down; the broker keeps every message id of the window in memory.
        #[serde(default = "default_duplicate_window", with = "humantime_serde")]
        #[schemars(with = "String")]
        duplicate_window: Duration,
        /// Environment variable with the server's auth token, when it wants one.
        #[serde(default)]
        token_env: Option<String>,
        #[serde(default = "default_source")]
        source: String,
        #[serde(default = "default_batch")]
        batch_size: usize,
    },
    /// Chargebee usage records. Tenants need `billing.chargebee_subscription`.
    Chargebee {
        name: String,
        /// `https://<site>.chargebee.com`.
        endpoint: String,
        api_key_env: String,
        item_price_id: String,
        #[serde(default = "default_batch")]
        batch_size: usize,
    },
}

fn default_ledger_table() -> String {
    "usage_ledger".to_string()
}
fn default_batch() -> usize {
    500
}
fn default_source() -> String {
    "policy-gateway".to_string()
}
fn default_nats_stream() -> String {
    "GATEWAY_USAGE".to_string()
}
fn default_nats_subject_prefix() -> String {
    "gateway.usage".to_string()
}
fn default_duplicate_window() -> Duration {
    Duration::from_secs(600)
}
fn default_stripe_endpoint() -> String {
    "https://api.stripe.com".to_string()
}

impl ExporterConfig {
    pub fn name(&self) -> &str {
        match self {
            ExporterConfig::Postgres { name, .. }
            | ExporterConfig::Cloudevents { name, .. }
            | ExporterConfig::Stripe { name, .. }
            | ExporterConfig::Nats { name, .. }
            | ExporterConfig::Chargebee { name, .. } => name,
        }
    }

    pub fn batch_size(&self) -> usize {
        match self {
            ExporterConfig::Postgres { batch_size, .. }
            | ExporterConfig::Cloudevents { batch_size, .. }
            | ExporterConfig::Stripe { batch_size, .. }
            | ExporterConfig::Nats { batch_size, .. }
            | ExporterConfig::Chargebee { batch_size, .. } => (*batch_size).max(1),
        }
    }
}

impl ExporterConfig {
    /// Checks what the exporter's own settings need (`field` is its place in the file).
    pub fn validate(&self, field: &str, source: &SourceText, issues: &mut Vec<SourceIssue>) {
        if let ExporterConfig::Nats {
            url,
            stream,
            subject_prefix,
            duplicate_window,
            ..
        } = self
        {
            if url.trim().is_empty() {
                issues.push(source.issue(format!("{field}.url"), "a NATS server URL"));
            }
            // JetStream stream names: no whitespace, `.`, `*`, `>`, path separators.
            if stream.is_empty()
                || stream.chars().any(|c| {
                    c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\')
                })
            {
                issues.push(source.issue(
                    format!("{field}.stream"),
                    "a stream name: no whitespace, `.`, `*`, `>`, `/` or `\\`",
                ));
            }
            let tokens_ok = subject_prefix.split('.').all(|token| {
                !token.is_empty()
                    && !token
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '*' | '>'))
            });
            if !tokens_ok {
                issues.push(source.issue(
                    format!("{field}.subject_prefix"),
                    "dot-separated subject tokens without wildcards or whitespace (events go to `<subject_prefix>.<tenant>`)",
                ));
            }
            if duplicate_window.is_zero() {
                issues.push(source.issue(
                    format!("{field}.duplicate_window"),
                    "more than zero: redelivery after a crash is dropped by the broker only within it",
                ));
            }
        }
    }
}

/// Why a delivery failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryError {
    /// Try the same batch again later.
    Transient(String),
    /// The sink refuses this data; retrying will not help.
    Rejected(String),
}

#[async_trait]
pub trait Sink: Send + Sync {
    async fn deliver(&self, events: &[UsageEvent]) -> Result<(), DeliveryError>;
}

/// Builds the sink of an exporter configuration.
pub fn sink(
    config: &ExporterConfig,
    registry: Arc<dyn LiveRegistry>,
) -> Result<Box<dyn Sink>, String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let env = |var: &str| {
        std::env::var(var).map_err(|_| format!("environment variable `{var}` is not set"))
    };
    Ok(match config {
        ExporterConfig::Postgres {
            database,
            ledger_table,
            ..
        } => {
            if !crate::tenancy::postgres::is_identifier(ledger_table) {
                return Err(format!("`{ledger_table}` is not a valid table name"));
            }
            Box::new(PostgresLedger {
                config: database.clone(),
                table: ledger_table.clone(),
                client: tokio::sync::Mutex::new(None),
            })
        }
        ExporterConfig::Cloudevents {
            endpoint,
            token_env,
            source,
            ..
        } => Box::new(CloudEventsSink {
            http,
            endpoint: endpoint.clone(),
            token: token_env.as_deref().map(env).transpose()?,
            source: source.clone(),
        }),
        ExporterConfig::Stripe {
            endpoint,
            api_key_env,
            event_name,
            ..
        } => Box::new(StripeSink {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            api_key: env(api_key_env)?,
            event_name: event_name.clone(),
            registry,
        }),
        ExporterConfig::Nats {
            url,
            stream,
            subject_prefix,
            duplicate_window,
            token_env,
            source,
            ..
        } => Box::new(NatsSink {
            url: url.clone(),
            token: token_env.as_deref().map(env).transpose()?,
            stream: stream.clone(),
            subject_prefix: subject_prefix.clone(),
            duplicate_window: *duplicate_window,
            source: source.clone(),
            jetstream: tokio::sync::Mutex::new(None),
        }),
        ExporterConfig::Chargebee {
            endpoint,
            api_key_env,
            item_price_id,
            ..
        } => Box::new(ChargebeeSink {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            api_key: env(api_key_env)?,
            item_price_id: item_price_id.clone(),
            registry,
        }),
    })
}

/// Where an exporter stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Reading resumes here (the oldest begin still waiting for its end).
    pub resume_from: u64,
    /// Events completed at or before this offset are delivered.
    pub delivered_through: Option<u64>,
}

fn checkpoint_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("exporters").join(format!("{name}.json"))
}

pub fn load_checkpoint(dir: &Path, name: &str) -> Checkpoint {
    std::fs::read(checkpoint_path(dir, name))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Writes the checkpoint atomically (temp file, fsync, rename).
fn save_checkpoint(dir: &Path, name: &str, checkpoint: &Checkpoint) -> std::io::Result<()> {
    crate::durable::write_atomically(
        &checkpoint_path(dir, name),
        &serde_json::to_vec(checkpoint).unwrap_or_default(),
    )
}

fn dead_letter(dir: &Path, name: &str, event: &UsageEvent, reason: &str) {
    let path = dir.join("dead-letter").join(format!("{name}.jsonl"));
    let line = serde_json::json!({ "reason": reason, "event": event });
    let result = crate::durable::append_line(&path, &line.to_string());
    metrics::counter!(crate::telemetry::EXPORTER_DEAD_LETTERS_TOTAL, "exporter" => name.to_string())
        .increment(1);
    match result {
        Ok(()) => {
            tracing::error!(exporter = name, event = %event.id, reason, "event refused by the sink: dead-lettered")
        }
        Err(e) => {
            tracing::error!(exporter = name, event = %event.id, reason, error = %e, "event refused and the dead-letter file failed")
        }
    }
}

/// The offset every event up to which is delivered, after a batch ending at `last` when the
/// backlog goes on at `next`. Events share an offset when a start finds requests of an earlier
/// process interrupted (each carries the boot record's): while some of them wait in the
/// backlog, that offset is not delivered through — a restart rebuilds the group and, past it,
/// would skip the rest. It is sent again whole instead (sinks deduplicate on the event id).
fn delivered_through(before: Option<u64>, last: Option<u64>, next: Option<u64>) -> Option<u64> {
    match last {
        Some(last) if next == Some(last) => last.checked_sub(1).max(before),
        Some(last) => Some(last),
        None => before,
    }
}

/// Where reading must resume so that nothing undelivered is lost: at the oldest begin still
/// pending, and no later than the first record of any event still in the backlog — an event's
/// end is read after its begin, and reading from its end alone would take the end for a
/// duplicate and drop the event.
pub(super) fn resume_point(assembler: &Assembler, backlog: &[Assembled], next: u64) -> u64 {
    backlog
        .iter()
        .map(|a| a.first)
        .fold(assembler.resume_from(next), u64::min)
}

/// How often a busy exporter saves its checkpoint (one that has caught up saves at once).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Runs one exporter until `shutdown`. Whenever it has delivered everything it has read, it
/// publishes in `exported` the outbox offset it has read up to (a graceful shutdown waits for
/// it to reach the last record written: [`wait_exported`]).
pub async fn run(
    name: String,
    batch_size: usize,
    sink: Box<dyn Sink>,
    dir: PathBuf,
    mut progress: watch::Receiver<Written>,
    exported: watch::Sender<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut checkpoint = load_checkpoint(&dir, &name);
    let mut cursor = OutboxCursor::new(&dir, checkpoint.resume_from);
    let mut assembler = Assembler::default();
    let mut backlog: Vec<Assembled> = Vec::new();
    // The checkpoint on disk is behind the one in memory (saved at most every
    // CHECKPOINT_EVERY while busy, and whenever the exporter catches up).
    let mut unsaved = false;
    let mut last_saved = std::time::Instant::now();
    loop {
        if *shutdown.borrow() {
            return;
        }
        // Fill a batch.
        while backlog.len() < batch_size {
            let records = match cursor.read(1024) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(exporter = %name, error = %e, "reading the outbox failed");
                    break;
                }
            };
            if records.is_empty() {
                break;
            }
            for record in records {
                for assembled in assembler.push(record) {
                    if checkpoint
                        .delivered_through
                        .is_none_or(|d| assembled.offset > d)
                    {
                        backlog.push(assembled);
                    }
                }
            }
        }
        let lag = progress
            .borrow()
            .next_offset
            .saturating_sub(cursor.next_offset());
        metrics::gauge!(crate::telemetry::EXPORTER_LAG_RECORDS, "exporter" => name.clone())
            .set(lag as f64);
        if backlog.is_empty() {
            let resume = assembler.resume_from(cursor.next_offset());
            if resume != checkpoint.resume_from {
                checkpoint.resume_from = resume;
                unsaved = true;
            }
            if unsaved && last_saved.elapsed() >= CHECKPOINT_EVERY {
                if let Err(e) = save_checkpoint(&dir, &name, &checkpoint) {
                    tracing::error!(exporter = %name, error = %e, "saving the checkpoint failed (events may be re-sent; sinks deduplicate)");
                }
                unsaved = false;
                last_saved = std::time::Instant::now();
            }
            // Caught up with the checkpoint on disk: what a graceful shutdown waits for.
            if !unsaved {
                exported.send_replace(cursor.next_offset());
            }
            let wait = if unsaved {
                CHECKPOINT_EVERY.saturating_sub(last_saved.elapsed())
            } else {
                Duration::from_millis(500)
            };
            tokio::select! {
                _ = progress.changed() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            continue;
        }
        let take = backlog.len().min(batch_size);
        let batch: Vec<Assembled> = backlog.drain(..take).collect();
        let events: Vec<UsageEvent> = batch.iter().map(|a| a.event.clone()).collect();
        if !deliver_with_retries(&name, sink.as_ref(), &events, &dir, &mut shutdown).await {
            return;
        }
        checkpoint.delivered_through = delivered_through(
            checkpoint.delivered_through,
            batch.last().map(|a| a.offset),
            backlog.first().map(|a| a.offset),
        );
        checkpoint.resume_from = resume_point(&assembler, &backlog, cursor.next_offset());
        // A checkpoint is an fsync and a rename: while busy, at most one per CHECKPOINT_EVERY.
        // A crash re-sends what was delivered since (sinks deduplicate on the event id).
        if last_saved.elapsed() >= CHECKPOINT_EVERY {
            if let Err(e) = save_checkpoint(&dir, &name, &checkpoint) {
                tracing::error!(exporter = %name, error = %e, "saving the checkpoint failed (events may be re-sent; sinks deduplicate)");
            }
            unsaved = false;
            last_saved = std::time::Instant::now();
        } else {
            unsaved = true;
        }
        metrics::counter!(crate::telemetry::EXPORTER_EVENTS_TOTAL, "exporter" => name.clone())
            .increment(events.len() as u64);
    }
}

/// What a graceful shutdown waits for before the process exits: every exporter having
/// delivered the outbox up to its last record, for at most `timeout`
/// (`[metering] export_drain_timeout`).
pub struct ExportDrain {
    /// Each exporter's offset delivered through (see [`run`]).
    pub exported: Vec<watch::Receiver<u64>>,
    /// The outbox's progress (the offset after its last record).
    pub written: Option<watch::Receiver<Written>>,
    pub timeout: Duration,
    /// The exporters' stop signal, sent once the drain is over (its receivers would take the
    /// sender's drop for a stop).
    pub stop: watch::Sender<bool>,
}

impl Default for ExportDrain {
    fn default() -> Self {
        ExportDrain {
            exported: Vec::new(),
            written: None,
            timeout: Duration::ZERO,
            stop: watch::channel(false).0,
        }
    }
}

impl ExportDrain {
    /// Call once the last request's records are written (the outbox flushed).
    pub async fn run(mut self) {
        if let Some(written) = &self.written {
            let target = written.borrow().next_offset;
            if !self.exported.is_empty() && !self.timeout.is_zero() {
                let started = std::time::Instant::now();
                if wait_exported(&mut self.exported, target, self.timeout).await {
                    tracing::info!(
                        waited_ms = started.elapsed().as_millis() as u64,
                        "usage exporters delivered every recorded event"
                    );
                } else {
                    tracing::warn!(
                        timeout = ?self.timeout,
                        "usage exporters did not deliver every event before exit: the rest stays in the outbox for the next start"
                    );
                }
            }
        }
        self.stop.send_replace(true);
    }
}

/// Waits until every exporter has delivered the outbox up to `written` (the offset after the
/// last record), or `limit` has passed; true when all have.
async fn wait_exported(
    exported: &mut [watch::Receiver<u64>],
    written: u64,
    limit: Duration,
) -> bool {
    let all = async {
        for receiver in exported.iter_mut() {
            // An exporter that has stopped cannot deliver more: stop waiting for it.
            if receiver
                .wait_for(|offset| *offset >= written)
                .await
                .is_err()
            {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(limit, all).await.unwrap_or(false)
}

/// Delivers a batch: transient failures retry with backoff until they succeed (or shutdown:
/// returns false); refused batches are split and refused events dead-lettered.
async fn deliver_with_retries(
    name: &str,
    sink: &dyn Sink,
    events: &[UsageEvent],
    dir: &Path,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let mut delays = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        match sink.deliver(events).await {
            Ok(()) => return true,
            Err(DeliveryError::Transient(e)) => {
                metrics::counter!(crate::telemetry::EXPORTER_RETRIES_TOTAL, "exporter" => name.to_string())
                    .increment(1);
                let delay = delays.next().unwrap_or(Duration::from_secs(30));
                tracing::warn!(exporter = name, error = %e, retry_in = ?delay, "delivery failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return false,
                }
            }
            Err(DeliveryError::Rejected(e)) if events.len() > 1 => {
                tracing::warn!(exporter = name, error = %e, "batch refused; delivering its events one by one");
                for event in events {
                    if !Box::pin(deliver_with_retries(
                        name,
                        sink,
                        std::slice::from_ref(event),
                        dir,
                        shutdown,
                    ))
                    .await
                    {
                        return false;
                    }
                }
                return true;
            }
            Err(DeliveryError::Rejected(e)) => {
                for event in events {
                    dead_letter(dir, name, event, &e);
                }
                return true;
            }
        }
    }
}

fn classify_status(status: reqwest::StatusCode, body: &str) -> Result<(), DeliveryError> {
    if status.is_success() {
        Ok(())
    } else if status.is_server_error()
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
    {
        Err(DeliveryError::Transient(format!("status {status}: {body}")))
    } else {
        Err(DeliveryError::Rejected(format!("status {status}: {body}")))
    }
}

async fn send(
    request: reqwest::RequestBuilder,
) -> Result<(reqwest::StatusCode, String), DeliveryError> {
    let response = request
        .send()
        .await
        .map_err(|e| DeliveryError::Transient(e.to_string()))?;
    let status = response.status();
    // What the sink says goes into an error message: its first 500 bytes, the rest unread.
    Ok((status, crate::http_body::read_prefix(response, 500).await))
}

struct PostgresLedger {
    config: PostgresConfig,
    table: String,
    client: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
}

#[async_trait]
impl Sink for PostgresLedger {
    async fn deliver(&self, events: &[UsageEvent]) -> Result<(), DeliveryError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            let client = crate::db::connect_config(&self.config, None)
                .await
                .map_err(|e| DeliveryError::Transient(e.to_string()))?;
            client
                .batch_execute(&ledger_ddl(&self.table))
                .await
                .map_err(|e| DeliveryError::Transient(e.to_string()))?;
            *guard = Some(client);
        }
        let Some(client) = guard.as_ref() else {
            return Err(DeliveryError::Transient("no connection".into()));
        };
        let col = |f: fn(&UsageEvent) -> Option<String>| {
            events.iter().map(f).collect::<Vec<Option<String>>>()
        };
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        let times: Vec<String> = events.iter().map(|e| e.time.clone()).collect();
        let request_ids: Vec<String> = events.iter().map(|e| e.request_id.clone()).collect();
        let methods: Vec<String> = events.iter().map(|e| e.method.clone()).collect();
        let statuses: Vec<i32> = events.iter().map(|e| i32::from(e.status)).collect();
        let req_bytes: Vec<i64> = events.iter().map(|e| e.request_bytes as i64).collect();
        let resp_bytes: Vec<i64> = events.iter().map(|e| e.response_bytes as i64).collect();
        let latency: Vec<Option<i64>> = events
            .iter()
            .map(|e| e.upstream_latency_us.map(|v| v as i64))
            .collect();
        let outcomes: Vec<String> = events
            .iter()
            .map(|e| {
                serde_json::to_value(e.outcome)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            })
            .collect();
        let meters: Vec<String> = events
            .iter()
            .map(|e| serde_json::to_string(&e.meters).unwrap_or_default())
            .collect();
        let attributes: Vec<String> = events
            .iter()
            .map(|e| serde_json::to_string(&e.attributes).unwrap_or_default())
            .collect();
        let sql = format!(
            "INSERT INTO {} (id, occurred_at, request_id, tenant, principal, action, route, method, status, \
             request_bytes, response_bytes, upstream_latency_us, region, outcome, reason, meters, tier, attributes) \
             SELECT u.id, u.t::timestamptz, u.rid, u.tenant, u.principal, u.action, u.route, u.method, u.status, \
             u.rb, u.sb, u.lat, u.region, u.outcome, u.reason, u.meters::jsonb, u.tier, u.attributes::jsonb \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], \
             $9::int[], $10::bigint[], $11::bigint[], $12::bigint[], $13::text[], $14::text[], $15::text[], $16::text[], \
             $17::text[], $18::text[]) \
             AS u(id, t, rid, tenant, principal, action, route, method, status, rb, sb, lat, region, outcome, reason, meters, \
             tier, attributes) \
             ON CONFLICT (id) DO NOTHING",
            self.table
        );
        let result = client
            .execute(
                &sql,
                &[
                    &ids,
                    &times,
                    &request_ids,
                    &col(|e| e.tenant.clone()),
                    &col(|e| e.principal.clone()),
                    &col(|e| e.action.clone()),
                    &col(|e| e.route.clone()),
                    &methods,
                    &statuses,
                    &req_bytes,
                    &resp_bytes,
                    &latency,
                    &col(|e| e.region.clone()),
                    &outcomes,
                    &col(|e| e.reason.clone()),
                    &meters,
                    &col(|e| e.tier.clone()),
                    &attributes,
                ],
            )
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                // Data errors (class 22) are the data's fault; anything else may pass later.
                let data_error = e.code().is_some_and(|c| c.code().starts_with("22"));
                if data_error {
                    Err(DeliveryError::Rejected(e.to_string()))
                } else {
                    *guard = None;
                    Err(DeliveryError::Transient(e.to_string()))
                }
            }
        }
    }
}

/// The ledger table: one row per event, the event id as primary key (replays are harmless).
/// Columns added since the first release are added to existing tables too.
pub fn ledger_ddl(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (
            id text PRIMARY KEY,
            occurred_at timestamptz NOT NULL,
            request_id text NOT NULL,
            tenant text,
            principal text,
            action text,
            route text,
            method text NOT NULL,
            status int NOT NULL,
            request_bytes bigint NOT NULL,
            response_bytes bigint NOT NULL,
            upstream_latency_us bigint,
            region text,
            outcome text NOT NULL,
            reason text,
            meters jsonb NOT NULL DEFAULT '[]',
            recorded_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX IF NOT EXISTS {table}_tenant_time ON {table} (tenant, occurred_at);
        ALTER TABLE {table} ADD COLUMN IF NOT EXISTS tier text;
        ALTER TABLE {table} ADD COLUMN IF NOT EXISTS attributes jsonb NOT NULL DEFAULT '{{}}';"
    )
}

struct CloudEventsSink {
    http: reqwest::Client,
    endpoint: String,
    token: Option<String>,
    source: String,
}

#[async_trait]
impl Sink for CloudEventsSink {
    async fn deliver(&self, events: &[UsageEvent]) -> Result<(), DeliveryError> {
        let batch = events
            .iter()
            .map(|e| cloudevent(e, &self.source))
            .collect::<Result<Vec<_>, _>>()?;
        let mut request = self
            .http
            .post(&self.endpoint)
            .header("content-type", "application/cloudevents-batch+json")
            .body(serde_json::to_vec(&batch).unwrap_or_default());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let (status, body) = send(request).await?;
        classify_status(status, &body)
    }
}

/// A usage event as a CloudEvent (JSON, structured mode): the event id is the CloudEvent id,
/// the tenant its subject.
fn cloudevent(e: &UsageEvent, source: &str) -> Result<serde_json::Value, DeliveryError> {
    use cloudevents::{EventBuilder, EventBuilderV10};
    let mut builder = EventBuilderV10::new()
        .id(e.id.clone())
        .ty("com.policy-gateway.request")
        .source(source.to_string())
        .time(e.time.as_str())
        .data(
            "application/json",
            serde_json::to_value(e).unwrap_or_default(),
        );
    if let Some(tenant) = &e.tenant {
        builder = builder.subject(tenant.clone());
    }
    let event = builder
        .build()
        .map_err(|err| DeliveryError::Rejected(err.to_string()))?;
    serde_json::to_value(event).map_err(|err| DeliveryError::Rejected(err.to_string()))
}

struct NatsSink {
    url: String,
    token: Option<String>,
    stream: String,
    subject_prefix: String,
    duplicate_window: Duration,
    source: String,
    /// Connected (and the stream ensured) on first delivery, so a broker that is down when the
    /// gateway starts only delays export; the client reconnects by itself after that.
    jetstream: tokio::sync::Mutex<Option<async_nats::jetstream::Context>>,
}

impl NatsSink {
    async fn jetstream(&self) -> Result<async_nats::jetstream::Context, DeliveryError> {
        let mut slot = self.jetstream.lock().await;
        if let Some(context) = slot.as_ref() {
            return Ok(context.clone());
        }
        let mut options = async_nats::ConnectOptions::new()
            .name("policy-gateway usage exporter")
            .connection_timeout(Duration::from_secs(5));
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        let client = options
            .connect(self.url.as_str())
            .await
            .map_err(|e| DeliveryError::Transient(format!("connecting to {}: {e}", self.url)))?;
        let context = async_nats::jetstream::new(client);
        let wanted = format!("{}.>", self.subject_prefix);
        let stream = context
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: self.stream.clone(),
                subjects: vec![wanted.clone()],
                duplicate_window: self.duplicate_window,
                storage: async_nats::jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| DeliveryError::Transient(format!("stream `{}`: {e}", self.stream)))?;
        // An existing stream must capture the exporter's subjects, or every publish would
        // wait for an acknowledgement that never comes.
        let subjects = &stream.cached_info().config.subjects;
        if !subjects.iter().any(|s| s == &wanted || s == ">") {
            return Err(DeliveryError::Transient(format!(
                "stream `{}` exists with subjects {subjects:?}, not `{wanted}`",
                self.stream
            )));
        }
        *slot = Some(context.clone());
        Ok(context)
    }
}

#[async_trait]
impl Sink for NatsSink {
    async fn deliver(&self, events: &[UsageEvent]) -> Result<(), DeliveryError> {
        use async_nats::jetstream::message::PublishMessage;
        let jetstream = self.jetstream().await?;
        let transient = |e: &dyn std::fmt::Display| DeliveryError::Transient(e.to_string());
        // All published, then all acknowledgements awaited: one round trip per batch.
        let mut acks = Vec::with_capacity(events.len());
        for e in events {
            let payload = serde_json::to_vec(&cloudevent(e, &self.source)?)
                .map_err(|err| DeliveryError::Rejected(err.to_string()))?;
            let message = PublishMessage::build()
                .payload(payload.into())
                .header("content-type", "application/cloudevents+json")
                .message_id(&e.id);
            let subject = nats_subject(&self.subject_prefix, e.tenant.as_deref());
            acks.push(
                jetstream
                    .send_publish(subject, message)
                    .await
                    .map_err(|e| transient(&e))?,
            );
        }
        for ack in acks {
            // A duplicate (sent before a crash, within the window) is stored once: fine.
            ack.await.map_err(|e| transient(&e))?;
        }
        Ok(())
    }
}

/// `<prefix>.<tenant>`; a tenant id is one subject token, so the bytes NATS reserves there
/// (`.`, `*`, `>`, whitespace, `%` itself) are percent-encoded. Events without a tenant go to
/// `<prefix>._none`.
fn nats_subject(prefix: &str, tenant: Option<&str>) -> String {
    use std::fmt::Write as _;
    let mut subject = String::with_capacity(prefix.len() + 24);
    subject.push_str(prefix);
    subject.push('.');
    match tenant {
        None => subject.push_str("_none"),
        Some(tenant) => {
            for c in tenant.chars() {
                if matches!(c, '.' | '*' | '>' | '%') || c.is_whitespace() || c.is_control() {
                    let mut utf8 = [0u8; 4];
                    for b in c.encode_utf8(&mut utf8).bytes() {
                        // Writing to a String cannot fail.
                        let _ = write!(subject, "%{b:02X}");
                    }
                } else {
                    subject.push(c);
                }
            }
        }
    }
    subject
}

/// Whether a billing sink (Stripe, Chargebee: one unit per event) is sent the event: requests
/// the gateway refused cost nothing, as in the price table; forwarded ones, interrupted
/// included, are billed.
fn is_billable(event: &UsageEvent) -> bool {
    event.outcome != Outcome::Rejected
}

struct StripeSink {
    http: reqwest::Client,
    endpoint: String,
    api_key: String,
    event_name: String,
    registry: Arc<dyn LiveRegistry>,
}

#[async_trait]
impl Sink for StripeSink {
    async fn deliver(&self, events: &[UsageEvent]) -> Result<(), DeliveryError> {
        let registry = self.registry.current();
        for e in events.iter().filter(|e| is_billable(e)) {
            let Some(customer) = e
                .tenant
                .as_deref()
                .and_then(|t| registry.get(t))
                .and_then(|t| t.billing.get("stripe_customer").cloned())
            else {
                metrics::counter!(crate::telemetry::EXPORTER_UNMAPPED_TOTAL, "exporter" => "stripe")
                    .increment(1);
                continue;
            };
            let timestamp = e.epoch_secs().to_string();
            let form = [
                ("event_name", self.event_name.as_str()),
                ("identifier", e.id.as_str()),
                ("timestamp", timestamp.as_str()),
                ("payload[stripe_customer_id]", customer.as_str()),
                ("payload[value]", "1"),
            ];
            let request = self
                .http
                .post(format!("{}/v1/billing/meter_events", self.endpoint))
                .bearer_auth(&self.api_key)
                .header("idempotency-key", &e.id)
                .form(&form);
            let (status, body) = send(request).await?;
            // A replay after a crash: Stripe already has this identifier.
            if status == reqwest::StatusCode::BAD_REQUEST
                && body.contains("resource_already_exists")
            {
                continue;
            }
            classify_status(status, &body)?;
        }
        Ok(())
    }
}

struct ChargebeeSink {
    http: reqwest::Client,
    endpoint: String,
    api_key: String,
    item_price_id: String,
    registry: Arc<dyn LiveRegistry>,
}

#[async_trait]
impl Sink for ChargebeeSink {
    async fn deliver(&self, events: &[UsageEvent]) -> Result<(), DeliveryError> {
        let registry = self.registry.current();
        for e in events.iter().filter(|e| is_billable(e)) {
            let Some(subscription) = e
                .tenant
                .as_deref()
                .and_then(|t| registry.get(t))
                .and_then(|t| t.billing.get("chargebee_subscription").cloned())
            else {
                metrics::counter!(crate::telemetry::EXPORTER_UNMAPPED_TOTAL, "exporter" => "chargebee")
                    .increment(1);
                continue;
            };
            let usage_date = e.epoch_secs().to_string();
            let form = [
                ("id", e.id.as_str()),
                ("item_price_id", self.item_price_id.as_str()),
                ("quantity", "1"),
                ("usage_date", usage_date.as_str()),
                ("note", e.action.as_deref().unwrap_or("request")),
            ];
            let request = self
                .http
                .post(format!(
                    "{}/api/v2/subscriptions/{subscription}/usages",
                    self.endpoint
                ))
                .basic_auth(&self.api_key, Some(""))
                .form(&form);
            let (status, body) = send(request).await?;
            if status == reqwest::StatusCode::CONFLICT || body.contains("already exists") {
                continue;
            }
            classify_status(status, &body)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_shutdown_waits_for_every_exporter_but_not_for_ever() {
        let (first, first_rx) = watch::channel(0u64);
        let (second, second_rx) = watch::channel(0u64);
        let mut exported = vec![first_rx, second_rx];
        // Both reach the outbox's end: done as soon as the slower one does.
        let slow = tokio::spawn(async move {
            first.send_replace(100);
            tokio::time::sleep(Duration::from_millis(30)).await;
            second.send_replace(100);
            (first, second)
        });
        assert!(wait_exported(&mut exported, 100, Duration::from_secs(5)).await);
        let (first, second) = slow.await.unwrap();
        // One stuck behind (its sink down): the limit ends the wait.
        first.send_replace(150);
        let started = std::time::Instant::now();
        assert!(!wait_exported(&mut exported, 150, Duration::from_millis(50)).await);
        assert!(started.elapsed() < Duration::from_secs(1));
        // One that has stopped cannot deliver more: no waiting for it.
        drop(second);
        assert!(!wait_exported(&mut exported, 150, Duration::from_secs(5)).await);
    }

    #[test]
    fn an_offset_is_delivered_through_only_when_all_its_events_are() {
        // A batch ending inside the interrupted events a boot record at 40 produced.
        assert_eq!(delivered_through(Some(12), Some(40), Some(40)), Some(39));
        // ... and the one that ends the group.
        assert_eq!(delivered_through(Some(39), Some(40), Some(41)), Some(40));
        assert_eq!(delivered_through(Some(39), Some(40), None), Some(40));
        // Nothing before offset 0 to have delivered.
        assert_eq!(delivered_through(None, Some(0), Some(0)), None);
        assert_eq!(delivered_through(Some(7), None, None), Some(7));
    }

    #[test]
    fn nats_subjects_are_one_token_per_tenant() {
        assert_eq!(nats_subject("usage", Some("acme")), "usage.acme");
        assert_eq!(
            nats_subject("gateway.usage", Some("a.b *>%c d")),
            "gateway.usage.a%2Eb%20%2A%3E%25c%20d"
        );
        assert_eq!(nats_subject("usage", None), "usage._none");
    }

    #[test]
    fn nats_settings_are_checked_with_their_line() {
        let text = "[metering]\ndir = \"outbox\"\n\n[[metering.exporter]]\nkind = \"nats\"\nname = \"js\"\nurl = \"nats://127.0.0.1:4222\"\nstream = \"usage.events\"\nsubject_prefix = \"usage.>\"\nduplicate_window = \"0s\"\n";
        let source = SourceText::new("gateway.toml", text);
        #[derive(Deserialize)]
        struct Doc {
            metering: super::super::MeteringConfig,
        }
        let doc: Doc = source.deserialize().unwrap();
        let mut issues = Vec::new();
        doc.metering
            .validate(&source, &Default::default(), &mut issues);
        let found: Vec<(String, Option<usize>)> = issues
            .iter()
            .map(|i| (i.field.clone(), i.location.line))
            .collect();
        assert_eq!(
            found,
            vec![
                ("metering.exporter[0].stream".to_string(), Some(8)),
                ("metering.exporter[0].subject_prefix".to_string(), Some(9)),
                (
                    "metering.exporter[0].duplicate_window".to_string(),
                    Some(10)
                ),
            ],
            "{issues:?}"
        );
    }
}
