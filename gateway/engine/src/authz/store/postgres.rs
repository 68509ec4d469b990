//! Entity records in a PostgreSQL table: one row per entity,
//! `(entity_type, entity_id, attrs jsonb, parents jsonb, updated_at)`, primary key on the first
//! two. `attrs` and `parents` are the `attrs` and `parents` of Cedar's entity JSON (entity
//! references as `{"__entity": {"type": "User", "id": "bob"}}`); the uid is the row's key.
//!
//! A trigger (created with the table when `migrate` is on) sends `{"type": …, "id": …}` on the
//! channel `<table>_changes` for every inserted, updated or deleted row, and `*` ("anything may
//! have changed") for a TRUNCATE or a key too long for a notification. [`connect`] returns, with
//! the provider, the stream of these changes as [`EntityChange`]s for the store's cache.
//!
//! Two connections per provider: one answers fetches (one prepared statement, pipelined by
//! concurrent fetches), the other only LISTENs. Each is re-opened when it is lost: the fetch
//! connection by the first fetch that finds it closed (one attempt in flight, shared by every
//! fetch waiting for it), the LISTEN connection by the provider's follower task, which then sends
//! [`EntityChange::All`]: changes made while nobody listened are not known one by one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_postgres::{Client, Notification, Statement};

use super::{describe, EntityProvider, ProviderError};
use crate::db::{self, DbError, PostgresConfig};
use crate::tenancy::postgres::is_identifier;

/// A change the table notified: forget what is cached of one entity, or of all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntityChange {
    One {
        type_name: String,
        id: String,
    },
    /// Anything may have changed (the change feed was lost and is back, a TRUNCATE, a payload
    /// that could not be read).
    All,
}

/// The NOTIFY channel of an entity table.
pub fn channel(table: &str) -> String {
    format!("{table}_changes")
}

/// How long a fetch may take by default (see [`PostgresEntities::with_timeout`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// After a failed reconnection, fetches fail at once for this long instead of trying again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Delays between attempts to re-open the LISTEN connection.
const FOLLOW_BACKOFF: Duration = Duration::from_millis(500);
const FOLLOW_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Creates the entity table and its NOTIFY triggers if missing. Safe to run from many replicas
/// at once (serialised by an advisory lock). Refuses a table of that name that is not an entity
/// table, rather than putting a trigger on it.
pub async fn migrate(client: &Client, table: &str) -> Result<(), DbError> {
    check_table_name(table)?;
    let channel = channel(table);
    let sql = crate::db::locked_migration(&format!(
        r#"
CREATE TABLE IF NOT EXISTS {table} (
    entity_type text NOT NULL,
    entity_id text NOT NULL,
    attrs jsonb NOT NULL DEFAULT '{{}}',
    parents jsonb NOT NULL DEFAULT '[]',
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (entity_type, entity_id),
    CHECK (jsonb_typeof(attrs) = 'object'),
    CHECK (jsonb_typeof(parents) = 'array')
);
DO $check$
BEGIN
    IF (SELECT count(*) FROM pg_attribute
        WHERE attrelid = '{table}'::regclass AND NOT attisdropped
          AND attname IN ('entity_type', 'entity_id', 'attrs', 'parents')) <> 4 THEN
        RAISE EXCEPTION 'table {table} exists and is not an entity table (entity_type, entity_id, attrs, parents)';
    END IF;
END
$check$;
CREATE OR REPLACE FUNCTION {table}_entity_notify() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    payload text;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('{channel}', '*');
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        payload := json_build_object('type', OLD.entity_type, 'id', OLD.entity_id)::text;
        -- A notification carries less than 8000 bytes: a longer key is announced as "all".
        PERFORM pg_notify('{channel}', CASE WHEN octet_length(payload) < 8000 THEN payload ELSE '*' END);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE'
        AND (NEW.entity_type, NEW.entity_id) IS DISTINCT FROM (OLD.entity_type, OLD.entity_id)) THEN
        payload := json_build_object('type', NEW.entity_type, 'id', NEW.entity_id)::text;
        PERFORM pg_notify('{channel}', CASE WHEN octet_length(payload) < 8000 THEN payload ELSE '*' END);
    END IF;
    RETURN NULL;
END
$fn$;
CREATE OR REPLACE TRIGGER {table}_entity_notify
    AFTER INSERT OR UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION {table}_entity_notify();
CREATE OR REPLACE TRIGGER {table}_entity_trunc
    AFTER TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {table}_entity_notify();
"#
    ));
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| DbError::Config(format!("creating entity table `{table}`: {}", describe(&e))))
}

fn check_table_name(table: &str) -> Result<(), DbError> {
    if is_identifier(table) {
        Ok(())
    } else {
        Err(DbError::Config(format!(
            "`{table}` is not a valid table name (lowercase letters, digits and `_`, at most 48)"
        )))
    }
}

/// Connects to the entity table of `config` (creating it first when `migrate` is on), starts
/// following its changes, and returns the provider with the stream of changes. The follower
/// ends when the provider is dropped or the receiver is.
pub async fn connect(
    config: &PostgresConfig,
) -> Result<(PostgresEntities, mpsc::UnboundedReceiver<EntityChange>), DbError> {
    let table = &config.table;
    check_table_name(table)?;
    let select =
        format!("SELECT attrs, parents FROM {table} WHERE entity_type = $1 AND entity_id = $2");
    let client = open_client(config, None).await?;
    if config.migrate {
        migrate(&client, table).await?;
    }
    let statement = client
        .prepare(&select)
        .await
        .map_err(|e| DbError::Config(format!("entity table `{table}`: {}", describe(&e))))?;
    let listener = listen(config).await?;
    let (changes, receiver) = mpsc::unbounded_channel();
    let follower = tokio::spawn(follow(config.clone(), listener, changes));
    let entities = PostgresEntities {
        provider: format!("postgres entity store {table}"),
        config: config.clone(),
        select,
        session: Arc::new(ArcSwap::from_pointee(Session { client, statement })),
        reconnecting: parking_lot::Mutex::new(None),
        reconnects: Default::default(),
        timeout: DEFAULT_TIMEOUT,
        follower,
    };
    Ok((entities, receiver))
}

/// The fetch connection and its prepared statement.
struct Session {
    client: Client,
    statement: Statement,
}

/// A failed attempt to reconnect.
#[derive(Debug, Clone)]
struct Failure {
    at: Instant,
    reason: String,
}

/// One attempt to re-open the fetch connection, awaited by every fetch that needs it. It runs
/// in a task of its own, so a fetch that gives up (its timeout, a dropped request) does not
/// cancel it.
type Attempt = Shared<BoxFuture<'static, Result<Arc<Session>, Failure>>>;

/// Entity records in a PostgreSQL table (see the module documentation).
pub struct PostgresEntities {
    provider: String,
    config: PostgresConfig,
    select: String,
    session: Arc<ArcSwap<Session>>,
    /// The last (or the running) reconnection attempt.
    reconnecting: parking_lot::Mutex<Option<Attempt>>,
    /// Reconnection attempts started.
    reconnects: std::sync::atomic::AtomicU64,
    timeout: Duration,
    /// Forwards the table's notifications; aborted when the provider is dropped.
    follower: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for PostgresEntities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresEntities")
            .field("table", &self.config.table)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresEntities {
    fn drop(&mut self) {
        // Drops the LISTEN client: its connection ends with it.
        self.follower.abort();
    }
}

impl PostgresEntities {
    /// How long one fetch may take, reconnecting included ([`DEFAULT_TIMEOUT`] unless set).
    pub fn with_timeout(mut self, timeout: Duration) -> PostgresEntities {
        self.timeout = timeout;
        self
    }

    fn error(&self, reason: String) -> ProviderError {
        ProviderError {
            provider: self.provider.clone(),
            reason,
        }
    }

    async fn fetch_row(
        &self,
        type_name: &str,
        id: &str,
    ) -> Result<Option<tokio_postgres::Row>, ProviderError> {
        let mut session = self.session.load_full();
        if session.client.is_closed() {
            session = self.reconnect(&session).await?;
        }
        match query(&session, type_name, id).await {
            Ok(row) => Ok(row),
            Err(e) if connection_lost(&e, &session.client) => {
                // The connection went away under this query: once more on a new one (a read).
                tracing::debug!(error = %describe(&e), table = %self.config.table, "entity store connection lost; reconnecting");
                let session = self.reconnect(&session).await?;
                query(&session, type_name, id)
                    .await
                    .map_err(|e| self.error(format!("query failed: {}", describe(&e))))
            }
            Err(e) => Err(self.error(format!("query failed: {}", describe(&e)))),
        }
    }

    /// A working session in place of `stale`: one another fetch already opened, the attempt
    /// under way, or a new attempt. Fails at once while the last attempt failed recently.
    async fn reconnect(&self, stale: &Arc<Session>) -> Result<Arc<Session>, ProviderError> {
        let attempt = {
            let mut reconnecting = self.reconnecting.lock();
            let current = self.session.load_full();
            if !Arc::ptr_eq(&current, stale) && !current.client.is_closed() {
                return Ok(current);
            }
            match reconnecting
                .as_ref()
                .map(|attempt| (attempt, attempt.peek()))
            {
                Some((attempt, None)) => attempt.clone(),
                Some((_, Some(Err(failure)))) if failure.at.elapsed() < RETRY_AFTER => {
                    return Err(self.error(format!(
                        "no connection (reconnecting failed {:?} ago: {})",
                        failure.at.elapsed(),
                        failure.reason
                    )));
                }
                _ => {
                    let attempt = self.start_reconnect();
                    *reconnecting = Some(attempt.clone());
                    attempt
                }
            }
        };
        attempt
            .await
            .map_err(|failure| self.error(format!("reconnecting: {}", failure.reason)))
    }

    fn start_reconnect(&self) -> Attempt {
        self.reconnects
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let config = self.config.clone();
        let select = self.select.clone();
        let slot = self.session.clone();
        let task = tokio::spawn(async move {
            let opened = async {
                let client = open_client(&config, None).await?;
                let statement = tokio::time::timeout(CONNECT_TIMEOUT, client.prepare(&select))
                    .await
                    .map_err(|_| {
                        DbError::Config(format!(
                            "preparing the query timed out after {CONNECT_TIMEOUT:?}"
                        ))
                    })??;
                Ok::<_, DbError>(Session { client, statement })
            }
            .await;
            match opened {
                Ok(session) => {
                    let session = Arc::new(session);
                    slot.store(session.clone());
                    tracing::info!(table = %config.table, "entity store reconnected to PostgreSQL");
                    Ok(session)
                }
                Err(e) => {
                    let reason = describe(&e);
                    tracing::warn!(table = %config.table, error = %reason, "entity store cannot reconnect to PostgreSQL");
                    Err(Failure {
                        at: Instant::now(),
                        reason,
                    })
                }
            }
        });
        async move {
            task.await.unwrap_or_else(|e| {
                Err(Failure {
                    at: Instant::now(),
                    reason: format!("reconnection task ended: {e}"),
                })
            })
        }
        .boxed()
        .shared()
    }
}

#[async_trait::async_trait]
impl EntityProvider for PostgresEntities {
    async fn fetch(&self, type_name: &str, id: &str) -> Result<Option<Value>, ProviderError> {
        let row = tokio::time::timeout(self.timeout, self.fetch_row(type_name, id))
            .await
            .map_err(|_| self.error(format!("timed out after {:?}", self.timeout)))??;
        let Some(row) = row else {
            return Ok(None);
        };
        let attrs: Value = row
            .try_get(0)
            .map_err(|e| self.error(format!("attrs of {type_name}::{id:?}: {}", describe(&e))))?;
        let parents: Value = row
            .try_get(1)
            .map_err(|e| self.error(format!("parents of {type_name}::{id:?}: {}", describe(&e))))?;
        Ok(Some(serde_json::json!({
            "uid": {"type": type_name, "id": id},
            "attrs": attrs,
            "parents": parents,
        })))
    }
}

async fn query(
    session: &Session,
    type_name: &str,
    id: &str,
) -> Result<Option<tokio_postgres::Row>, tokio_postgres::Error> {
    session
        .client
        .query_opt(&session.statement, &[&type_name, &id])
        .await
}

/// Whether `e` means the connection is gone (rather than the query failing on it).
fn connection_lost(e: &tokio_postgres::Error, client: &Client) -> bool {
    // Class 57P: the server ended the session (pg_terminate_backend, shutdown, …).
    e.is_closed()
        || client.is_closed()
        || e.code().is_some_and(|code| code.code().starts_with("57P"))
}

/// A connection (notifications forwarded to `notifications`), given [`CONNECT_TIMEOUT`].
async fn open_client(
    config: &PostgresConfig,
    notifications: Option<mpsc::UnboundedSender<Notification>>,
) -> Result<Client, DbError> {
    tokio::time::timeout(CONNECT_TIMEOUT, db::connect_config(config, notifications))
        .await
        .map_err(|_| DbError::Config(format!("connecting timed out after {CONNECT_TIMEOUT:?}")))?
}

/// The LISTEN connection and its notifications.
struct Listener {
    /// Kept alive for the notifications; dropping it ends the connection.
    _client: Client,
    notifications: mpsc::UnboundedReceiver<Notification>,
}

async fn listen(config: &PostgresConfig) -> Result<Listener, DbError> {
    let (sender, notifications) = mpsc::unbounded_channel();
    let client = open_client(config, Some(sender)).await?;
    client
        .batch_execute(&format!("LISTEN {}", channel(&config.table)))
        .await?;
    Ok(Listener {
        _client: client,
        notifications,
    })
}

/// The change a notification announces; one that cannot be read announces "all".
fn parse_change(payload: &str) -> EntityChange {
    #[derive(serde::Deserialize)]
    struct Payload {
        #[serde(rename = "type")]
        type_name: String,
        id: String,
    }
    match serde_json::from_str::<Payload>(payload) {
        Ok(p) => EntityChange::One {
            type_name: p.type_name,
            id: p.id,
        },
        Err(_) => EntityChange::All,
    }
}

/// Forwards the table's changes until the receiver or the provider goes away; re-opens a lost
/// LISTEN connection (with backoff) and then announces [`EntityChange::All`].
async fn follow(
    config: PostgresConfig,
    mut listener: Listener,
    changes: mpsc::UnboundedSender<EntityChange>,
) {
    loop {
        loop {
            tokio::select! {
                notification = listener.notifications.recv() => match notification {
                    Some(n) => {
                        if changes.send(parse_change(n.payload())).is_err() {
                            return;
                        }
                    }
                    None => break,
                },
                _ = changes.closed() => return,
            }
        }
        tracing::warn!(table = %config.table, "entity store change feed lost; reconnecting");
        let mut backoff = FOLLOW_BACKOFF;
        listener = loop {
            let attempt = tokio::select! {
                attempt = listen(&config) => attempt,
                _ = changes.closed() => return,
            };
            match attempt {
                Ok(listener) => break listener,
                Err(e) => {
                    tracing::warn!(table = %config.table, error = %describe(&e), retry_in = ?backoff, "entity store change feed cannot reconnect");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = changes.closed() => return,
                    }
                    backoff = (backoff * 2).min(FOLLOW_BACKOFF_MAX);
                }
            }
        };
        tracing::info!(table = %config.table, "entity store change feed restored");
        // What changed while nobody listened is not known entity by entity.
        if changes.send(EntityChange::All).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// PostgreSQL of the test machine (`scripts/ensure-deps test` starts it).
    fn pg_url() -> String {
        std::env::var("GATEWAY_TEST_PG_URL").unwrap_or_else(|_| {
            "postgres://gateway_test:gateway_test@127.0.0.1:5432/gateway_test".to_string()
        })
    }

    /// A table name (and session application name) no other test uses.
    fn unique(prefix: &str) -> String {
        format!("{prefix}_{}_{}", std::process::id(), rand::random::<u32>())
    }

    /// The provider's config, its sessions named `app` in pg_stat_activity.
    fn config(table: &str, app: &str) -> PostgresConfig {
        let url = pg_url();
        let separator = if url.contains('?') { '&' } else { '?' };
        PostgresConfig {
            url: Some(format!("{url}{separator}application_name={app}")),
            url_env: None,
            table: table.to_string(),
            migrate: true,
            ca_file: None,
        }
    }

    async fn admin() -> Client {
        db::connect(&pg_url(), None)
            .await
            .expect("PostgreSQL must be running (scripts/ensure-deps test starts it)")
    }

    async fn drop_table(db: &Client, table: &str) {
        db.batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; DROP FUNCTION IF EXISTS {table}_entity_notify();"
        ))
        .await
        .expect("drop");
    }

    async fn sessions(db: &Client, app: &str) -> i64 {
        db.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .expect("count")
        .get(0)
    }

    async fn next_change(rx: &mut mpsc::UnboundedReceiver<EntityChange>) -> EntityChange {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a change within 10 s")
            .expect("the change feed is open")
    }

    fn one(type_name: &str, id: &str) -> EntityChange {
        EntityChange::One {
            type_name: type_name.to_string(),
            id: id.to_string(),
        }
    }

    #[tokio::test]
    async fn fetch_builds_the_record_from_the_row_and_misses_are_none() {
        let db = admin().await;
        let table = unique("gw_entities");
        let (entities, _changes) = connect(&config(&table, &unique("gw_ent")))
            .await
            .expect("connect");
        let attrs = json!({"tenant": {"__entity": {"type": "Tenant", "id": "acme"}}, "level": 3});
        let parents = json!([{"type": "Folder", "id": "f/1"}]);
        db.execute(
            &format!("INSERT INTO {table} (entity_type, entity_id, attrs, parents) VALUES ('Doc', 'a b/ü', $1, $2)"),
            &[&attrs, &parents],
        )
        .await
        .expect("insert");
        db.execute(
            &format!("INSERT INTO {table} (entity_type, entity_id) VALUES ('Doc', 'bare')"),
            &[],
        )
        .await
        .expect("insert");

        let record = entities.fetch("Doc", "a b/ü").await.expect("fetch");
        assert_eq!(
            record,
            Some(
                json!({"uid": {"type": "Doc", "id": "a b/ü"}, "attrs": attrs, "parents": parents})
            )
        );
        // What the store makes of it.
        let schema = cedar_policy::Schema::from_cedarschema_str(
            "entity Tenant; entity Folder; entity Doc in [Folder] = { tenant: Tenant, level?: Long };",
        )
        .expect("schema")
        .0;
        let stored = super::super::StoredEntity::from_json(record.expect("found"), &schema)
            .expect("a valid entity");
        assert_eq!(stored.tenant.as_deref(), Some("acme"));
        let bare = entities.fetch("Doc", "bare").await.expect("fetch");
        assert_eq!(
            bare,
            Some(json!({"uid": {"type": "Doc", "id": "bare"}, "attrs": {}, "parents": []}))
        );
        assert_eq!(entities.fetch("Doc", "nope").await.expect("fetch"), None);
        // The type is part of the key.
        assert_eq!(entities.fetch("User", "bare").await.expect("fetch"), None);

        // Concurrent fetches share the connection.
        let fetches = (0..50).map(|i| {
            let entities = &entities;
            async move {
                entities
                    .fetch("Doc", if i % 2 == 0 { "bare" } else { "nope" })
                    .await
            }
        });
        let answers = futures_util::future::join_all(fetches).await;
        for (i, answer) in answers.into_iter().enumerate() {
            assert_eq!(answer.expect("fetch").is_some(), i % 2 == 0);
        }
        drop(entities);
        drop_table(&db, &table).await;
    }

    #[tokio::test]
    async fn inserts_updates_deletes_and_truncates_are_notified() {
        let db = admin().await;
        let table = unique("gw_entities");
        let (_entities, mut changes) = connect(&config(&table, &unique("gw_ent")))
            .await
            .expect("connect");
        let sql = |s: &str| s.replace("{table}", &table);

        db.batch_execute(&sql(
            "INSERT INTO {table} (entity_type, entity_id) VALUES ('Doc', '1')",
        ))
        .await
        .expect("insert");
        assert_eq!(next_change(&mut changes).await, one("Doc", "1"));
        db.batch_execute(&sql(
            r#"UPDATE {table} SET attrs = '{"level": 2}', updated_at = now() WHERE entity_id = '1'"#,
        ))
        .await
        .expect("update");
        assert_eq!(next_change(&mut changes).await, one("Doc", "1"));
        // A changed key: the old and the new entity.
        db.batch_execute(&sql(
            "UPDATE {table} SET entity_id = 'quote\"d' WHERE entity_id = '1'",
        ))
        .await
        .expect("rename");
        assert_eq!(next_change(&mut changes).await, one("Doc", "1"));
        assert_eq!(next_change(&mut changes).await, one("Doc", "quote\"d"));
        db.batch_execute(&sql("DELETE FROM {table} WHERE entity_type = 'Doc'"))
            .await
            .expect("delete");
        assert_eq!(next_change(&mut changes).await, one("Doc", "quote\"d"));
        db.batch_execute(&sql("TRUNCATE {table}"))
            .await
            .expect("truncate");
        assert_eq!(next_change(&mut changes).await, EntityChange::All);
        // A key too long for a notification payload.
        let long = "x".repeat(9000);
        db.execute(
            &sql("INSERT INTO {table} (entity_type, entity_id) VALUES ('Doc', $1)"),
            &[&long],
        )
        .await
        .expect("insert long id");
        assert_eq!(next_change(&mut changes).await, EntityChange::All);
        drop_table(&db, &table).await;
    }

    #[test]
    fn a_payload_that_cannot_be_read_means_all() {
        assert_eq!(
            parse_change(r#"{"type" : "Doc", "id" : "7"}"#),
            one("Doc", "7")
        );
        assert_eq!(parse_change("*"), EntityChange::All);
        assert_eq!(parse_change(r#"{"type": "Doc"}"#), EntityChange::All);
        assert_eq!(
            parse_change(r#"{"type": "Doc", "id": 7}"#),
            EntityChange::All
        );
    }

    #[tokio::test]
    async fn lost_connections_are_reopened_and_the_change_feed_announces_all() {
        let db = admin().await;
        let table = unique("gw_entities");
        let app = unique("gw_ent");
        let (entities, mut changes) = connect(&config(&table, &app)).await.expect("connect");
        db.batch_execute(&format!(
            "INSERT INTO {table} (entity_type, entity_id) VALUES ('Doc', '1')"
        ))
        .await
        .expect("insert");
        assert_eq!(next_change(&mut changes).await, one("Doc", "1"));
        assert!(entities.fetch("Doc", "1").await.expect("fetch").is_some());
        assert_eq!(
            sessions(&db, &app).await,
            2,
            "one fetch and one LISTEN connection"
        );

        let terminated: i64 = db
            .query_one(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1) t",
                &[&app],
            )
            .await
            .expect("terminate")
            .get(0);
        assert_eq!(terminated, 2);

        // The follower is back and says anything may have changed.
        assert_eq!(next_change(&mut changes).await, EntityChange::All);
        // Concurrent fetches on the lost connection: all answered, over one new connection.
        let fetches = (0..20).map(|_| entities.fetch("Doc", "1"));
        for answer in futures_util::future::join_all(fetches).await {
            assert!(answer.expect("fetch after reconnect").is_some());
        }
        assert_eq!(
            sessions(&db, &app).await,
            2,
            "one fetch and one LISTEN connection"
        );
        assert_eq!(
            entities
                .reconnects
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // Changes are followed on the new LISTEN connection.
        db.batch_execute(&format!("DELETE FROM {table} WHERE entity_id = '1'"))
            .await
            .expect("delete");
        assert_eq!(next_change(&mut changes).await, one("Doc", "1"));
        assert_eq!(entities.fetch("Doc", "1").await.expect("fetch"), None);

        // Dropping the provider closes both connections.
        drop(entities);
        let mut left = -1;
        for _ in 0..100 {
            left = sessions(&db, &app).await;
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(left, 0, "sessions left after drop");
        drop_table(&db, &table).await;
    }

    #[tokio::test]
    async fn a_fetch_while_the_database_is_unreachable_is_an_error_naming_the_table() {
        let db = admin().await;
        let table = unique("gw_entities");
        let app = unique("gw_ent");
        let (mut entities, _changes) = connect(&config(&table, &app)).await.expect("connect");
        // From now on reconnecting goes to a port nobody listens on.
        entities.config.url =
            Some("postgres://gateway_test:gateway_test@127.0.0.1:1/gateway_test".into());
        db.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .expect("terminate");
        let mut error = None;
        for _ in 0..50 {
            match entities.fetch("Doc", "1").await {
                Err(e) => {
                    error = Some(e);
                    break;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let error = error.expect("an error once the connection is gone");
        assert_eq!(error.provider, format!("postgres entity store {table}"));
        assert!(error.reason.contains("reconnecting"), "{error}");
        // The next fetch fails at once instead of trying again.
        let started = Instant::now();
        let again = entities.fetch("Doc", "1").await.expect_err("still down");
        assert!(started.elapsed() < Duration::from_millis(200), "{again}");
        drop(entities);
        drop_table(&db, &table).await;
    }

    #[tokio::test]
    async fn bad_table_names_and_foreign_tables_are_refused() {
        let mut cfg = config("Robert'); drop table x; --", "gw_ent_bad");
        let err = connect(&cfg).await.expect_err("refused");
        assert!(err.to_string().contains("not a valid table name"), "{err}");

        // A table of that name that is not an entity table gets no trigger.
        let db = admin().await;
        let table = unique("gw_other");
        db.batch_execute(&format!(
            "CREATE TABLE {table} (id text primary key, doc jsonb)"
        ))
        .await
        .expect("create");
        cfg.table = table.clone();
        let err = connect(&cfg).await.expect_err("refused");
        assert!(err.to_string().contains("not an entity table"), "{err}");
        db.batch_execute(&format!("DROP TABLE {table}"))
            .await
            .expect("drop");
    }
}
