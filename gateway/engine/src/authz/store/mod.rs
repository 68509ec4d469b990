//! The entity store: what the gateway knows about a resource (its owner, its tenant, its
//! classification …) from data rather than from the caller's URL.
//!
//! Three providers answer "what is `Document::"7"`?":
//! - [`EntityFile`]: `entities.json` in the policy package, Cedar's entity JSON format,
//!   validated against the schema at load and hot reloaded with the policies;
//! - a PostgreSQL table (`postgres.rs`), changes followed with LISTEN/NOTIFY;
//! - an HTTP endpoint of the upstream (`http.rs`), with a timeout.
//!
//! The latter two implement [`EntityProvider`] and sit behind [`EntityStore`], which caches
//! answers (found and not found) with bounded memory and a TTL, and coalesces concurrent misses
//! of one entity into one fetch. A record is validated against the schema of the policy package
//! in force, so a record that does not fit the schema is a provider error, never a half-typed
//! entity.
//!
//! What a decision sees: a found record becomes the resource entity as it is (its `tenant` and
//! `owner` come from the record); a missing one is an absence policies can test
//! (`context.resource_found == false`, no `owner`) and the resource belongs to the request's
//! tenant, as without a store. A provider that cannot answer fails the request closed
//! (`503 entity-store-unavailable`) unless configured `on_error = "absent"`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cedar_policy::{Entity, EntityUid, Schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::diagnostics::{SourceIssue, SourceIssues, SourceText};

pub mod http;
pub mod postgres;

use super::config::{EntityProviderKind, EntityStoreConfig};
use postgres::EntityChange;

/// One record of the store, validated against the schema.
#[derive(Debug, Clone)]
pub struct StoredEntity {
    pub entity: Entity,
    /// The record's attributes, parents and tags as canonical text: the decision cache key
    /// holds it, so a changed record is decided anew.
    pub fingerprint: String,
    /// The id of the record's `tenant` attribute, when it names one.
    pub tenant: Option<String>,
}

impl StoredEntity {
    /// A record from Cedar's entity JSON (`{"uid": …, "attrs": …, "parents": […]}`), validated
    /// against `schema`.
    pub fn from_json(value: Value, schema: &Schema) -> Result<StoredEntity, String> {
        let tenant = value
            .pointer("/attrs/tenant")
            .and_then(|t| t.get("__entity").or(Some(t)))
            .and_then(|t| t.get("id"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let fingerprint = {
            let part = |name: &str| value.get(name).cloned().unwrap_or(Value::Null);
            // serde_json's map is ordered by key: the same record gives the same text. Tags
            // too: `resource.hasTag(…)` decides by them.
            serde_json::to_string(&(part("attrs"), part("parents"), part("tags")))
                .map_err(|e| e.to_string())?
        };
        let entity = Entity::from_json_value(value, Some(schema)).map_err(|e| {
            // Cedar's top message is generic ("does not conform"): the causes say what.
            let mut message = describe(&e);
            if let Some(help) = miette::Diagnostic::help(&e) {
                message.push_str(&format!(" ({help})"));
            }
            message
        })?;
        Ok(StoredEntity {
            entity,
            fingerprint,
            tenant,
        })
    }
}

pub(crate) use crate::diagnostics::describe;

/// What the store says about a request's resource.
#[derive(Debug, Clone, Copy, Default)]
pub enum ResourceRecord<'a> {
    /// No store covers the resource's type: it is built from the request as always.
    #[default]
    NotCovered,
    /// A store covers the type and has no record of this id.
    Missing,
    Found(&'a StoredEntity),
}

/// `entities.json` of the policy package.
#[derive(Debug, Default)]
pub struct EntityFile {
    records: HashMap<EntityUid, StoredEntity>,
    /// Entity type basenames the file holds records of: the file covers these types.
    types: std::collections::HashSet<String>,
}

impl EntityFile {
    pub const FILE_NAME: &'static str = "entities.json";

    /// Loads `dir/entities.json` (none: an empty store), every record validated against the
    /// schema; problems name the file and the line of the record.
    pub fn load(dir: &Path, schema: &Schema) -> Result<EntityFile, SourceIssues> {
        let path = dir.join(Self::FILE_NAME);
        if !path.exists() {
            return Ok(EntityFile::default());
        }
        let source = SourceText::read(&path)?;
        let values: Vec<Value> = serde_json::from_str(&source.text).map_err(|e| {
            SourceIssues(vec![SourceIssue {
                location: crate::diagnostics::Location {
                    file: source.path.clone(),
                    line: Some(e.line()),
                    column: Some(e.column()),
                },
                field: String::new(),
                message: format!("not a JSON array of Cedar entities: {e}"),
            }])
        })?;
        let mut file = EntityFile::default();
        let mut issues = Vec::new();
        let mut search_from = 0;
        for (index, value) in values.into_iter().enumerate() {
            // The record's line: where its `"uid"` key is, searching on from the last one.
            let offset = source.text[search_from..]
                .find("\"uid\"")
                .map(|o| search_from + o)
                .unwrap_or(search_from);
            search_from = (offset + 1).min(source.text.len());
            let issue = |message: String| SourceIssue {
                location: source.location_of(offset),
                field: format!("[{index}]"),
                message,
            };
            match StoredEntity::from_json(value, schema) {
                Ok(record) => {
                    let uid = record.entity.uid();
                    file.types.insert(uid.type_name().basename().to_string());
                    if file.records.insert(uid.clone(), record).is_some() {
                        issues.push(issue(format!("{uid} is defined twice")));
                    }
                }
                Err(e) => issues.push(issue(e)),
            }
        }
        if issues.is_empty() {
            Ok(file)
        } else {
            Err(SourceIssues(issues))
        }
    }

    pub fn covers(&self, type_name: &str) -> bool {
        self.types.contains(type_name)
    }

    pub fn get(&self, uid: &EntityUid) -> Option<&StoredEntity> {
        self.records.get(uid)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Why a provider could not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{provider}: {reason}")]
pub struct ProviderError {
    pub provider: String,
    pub reason: String,
}

/// A source of entity records outside the policy package.
#[async_trait::async_trait]
pub trait EntityProvider: Send + Sync {
    /// The record of `type_name::"id"` in Cedar's entity JSON form, `Ok(None)` when the
    /// provider knows no such entity.
    async fn fetch(&self, type_name: &str, id: &str) -> Result<Option<Value>, ProviderError>;
}

/// What to do when a provider cannot answer.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Refuse the request (503 `entity-store-unavailable`): no decision without the data.
    #[default]
    Deny,
    /// Decide as if the entity were missing (policies see `context.resource_found == false`).
    Absent,
}

/// A provider's answer as cached: the raw record, and the record validated under the schema of
/// the package version that last used it (a reload with a new schema validates it again; a
/// refetch after the TTL starts from the new raw record).
#[derive(Debug, Clone)]
struct Cached {
    record: Option<Arc<Fetched>>,
}

#[derive(Debug)]
struct Fetched {
    raw: Value,
    validated: arc_swap::ArcSwapOption<Validated>,
}

#[derive(Debug)]
struct Validated {
    version: String,
    record: Arc<StoredEntity>,
}

/// A provider with its cache, for the entity types it serves.
struct CachedProvider {
    provider: Arc<dyn EntityProvider>,
    cache: moka::future::Cache<(String, String), Cached>,
    on_error: OnError,
}

/// The configured providers, by entity type, with their caches.
pub struct EntityStore {
    by_type: HashMap<String, Arc<CachedProvider>>,
}

/// How a provider's answers are cached.
#[derive(Debug, Clone, Copy)]
pub struct CachePolicy {
    /// Entries kept at most (found and missing together).
    pub capacity: u64,
    /// How long a found record is used before it is fetched again.
    pub ttl: Duration,
    /// How long "no such entity" is remembered (short: a new object should appear soon).
    pub negative_ttl: Duration,
}

/// A provider error by lookup, or the store's answer.
#[derive(Debug, Clone)]
pub enum Lookup {
    NotCovered,
    Missing,
    Found(Arc<StoredEntity>),
}

impl Default for EntityStore {
    fn default() -> Self {
        EntityStore::new()
    }
}

impl EntityStore {
    pub fn new() -> EntityStore {
        EntityStore {
            by_type: HashMap::new(),
        }
    }

    /// Serves `types` from `provider`.
    pub fn add(
        &mut self,
        types: &[String],
        provider: Arc<dyn EntityProvider>,
        cache: CachePolicy,
        on_error: OnError,
    ) {
        let negative_ttl = cache.negative_ttl;
        let ttl = cache.ttl;
        let cache = moka::future::Cache::builder()
            .max_capacity(cache.capacity)
            .expire_after(CacheExpiry { ttl, negative_ttl })
            .build();
        let cached = Arc::new(CachedProvider {
            provider,
            cache,
            on_error,
        });
        for t in types {
            self.by_type.insert(t.clone(), cached.clone());
        }
    }

    /// Whether a provider serves this entity type.
    pub fn covers(&self, type_name: &str) -> bool {
        self.by_type.contains_key(type_name)
    }

    /// Opens the configured providers (PostgreSQL ones connect now; `resolve` makes their CA
    /// file paths absolute). Returns the store and the PostgreSQL change feeds, which
    /// [`EntityStore::follow`] applies.
    pub async fn open(
        configs: &[EntityStoreConfig],
        resolve: impl Fn(&Path) -> std::path::PathBuf,
    ) -> Result<
        (
            EntityStore,
            Vec<tokio::sync::mpsc::UnboundedReceiver<EntityChange>>,
        ),
        String,
    > {
        let mut store = EntityStore::new();
        let mut feeds = Vec::new();
        for (i, config) in configs.iter().enumerate() {
            let field = format!("authorization.entity_store[{i}]");
            let provider: Arc<dyn EntityProvider> = match config.kind {
                EntityProviderKind::Postgres => {
                    let mut pg = config
                        .postgres
                        .clone()
                        .ok_or_else(|| format!("{field}: `postgres` is missing"))?;
                    pg.ca_file = pg.ca_file.as_deref().map(&resolve);
                    let (provider, changes) = postgres::connect(&pg)
                        .await
                        .map_err(|e| format!("{field}.postgres: {e}"))?;
                    feeds.push(changes);
                    Arc::new(provider.with_timeout(config.timeout))
                }
                EntityProviderKind::Http => {
                    let url = config
                        .url
                        .as_deref()
                        .ok_or_else(|| format!("{field}: `url` is missing"))?;
                    Arc::new(
                        http::HttpEntities::new(url, config.timeout)
                            .map_err(|e| format!("{field}.url: {e}"))?,
                    )
                }
            };
            store.add(
                &config.types,
                provider,
                CachePolicy {
                    capacity: config.cache_capacity,
                    ttl: config.ttl,
                    negative_ttl: config.negative_ttl,
                },
                config.on_error,
            );
        }
        Ok((store, feeds))
    }

    /// Applies the providers' change notifications to the caches until shutdown.
    pub async fn follow(
        self: Arc<Self>,
        feeds: Vec<tokio::sync::mpsc::UnboundedReceiver<EntityChange>>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut merged = futures_util::stream::select_all(
            feeds
                .into_iter()
                .map(|mut rx| Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))),
        );
        loop {
            tokio::select! {
                change = futures_util::StreamExt::next(&mut merged) => match change {
                    Some(EntityChange::One { type_name, id }) => {
                        self.invalidate(&type_name, &id).await;
                    }
                    Some(EntityChange::All) => self.invalidate_all(),
                    None => return,
                },
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Forgets everything cached (a change feed was lost and is back).
    pub fn invalidate_all(&self) {
        for provider in self.by_type.values() {
            provider.cache.invalidate_all();
        }
    }

    /// Forgets what is cached of one entity (a provider's change notification).
    pub async fn invalidate(&self, type_name: &str, id: &str) {
        if let Some(p) = self.by_type.get(type_name) {
            p.cache
                .invalidate(&(type_name.to_string(), id.to_string()))
                .await;
        }
    }

    /// The record of `type_name::"id"`, validated against `schema` (of package `version`).
    pub async fn lookup(
        &self,
        type_name: &str,
        id: &str,
        schema: &Schema,
        version: &str,
    ) -> Result<Lookup, ProviderError> {
        let Some(provider) = self.by_type.get(type_name) else {
            return Ok(Lookup::NotCovered);
        };
        let key = (type_name.to_string(), id.to_string());
        let fetched = provider
            .cache
            .try_get_with(key.clone(), async {
                provider
                    .provider
                    .fetch(type_name, id)
                    .await
                    .map(|record| Cached {
                        record: record.map(|raw| {
                            Arc::new(Fetched {
                                raw,
                                validated: Default::default(),
                            })
                        }),
                    })
            })
            .await;
        let cached = match fetched {
            Ok(cached) => cached,
            Err(e) => {
                metrics::counter!(crate::telemetry::AUTHZ_ENTITY_STORE_ERRORS_TOTAL).increment(1);
                return match provider.on_error {
                    OnError::Deny => Err((*e).clone()),
                    OnError::Absent => Ok(Lookup::Missing),
                };
            }
        };
        let Some(fetched) = cached.record else {
            return Ok(Lookup::Missing);
        };
        if let Some(hit) = fetched.validated.load().as_ref() {
            if hit.version == version {
                return Ok(Lookup::Found(hit.record.clone()));
            }
        }
        let record = StoredEntity::from_json(fetched.raw.clone(), schema)
            .map_err(|reason| ProviderError {
                provider: format!("entity store record {type_name}::{id:?}"),
                reason,
            })
            .and_then(|record| {
                let uid = record.entity.uid();
                if uid.type_name().basename() == type_name && uid.id().unescaped() == id {
                    Ok(record)
                } else {
                    Err(ProviderError {
                        provider: format!("entity store record {type_name}::{id:?}"),
                        reason: format!("the record is of {uid}"),
                    })
                }
            });
        match record {
            Ok(record) => {
                let record = Arc::new(record);
                fetched.validated.store(Some(Arc::new(Validated {
                    version: version.to_string(),
                    record: record.clone(),
                })));
                Ok(Lookup::Found(record))
            }
            Err(e) => {
                metrics::counter!(crate::telemetry::AUTHZ_ENTITY_STORE_ERRORS_TOTAL).increment(1);
                tracing::warn!(error = %e, "entity store record does not fit the schema");
                match provider.on_error {
                    OnError::Deny => Err(e),
                    OnError::Absent => Ok(Lookup::Missing),
                }
            }
        }
    }
}

/// Found records live `ttl`, "no such entity" `negative_ttl`.
struct CacheExpiry {
    ttl: Duration,
    negative_ttl: Duration,
}

impl moka::Expiry<(String, String), Cached> for CacheExpiry {
    fn expire_after_create(
        &self,
        _key: &(String, String),
        value: &Cached,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(if value.record.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Schema {
        let text = r#"
            entity Tenant;
            entity User = { tenant: Tenant };
            entity Doc = { tenant: Tenant, owner?: User, level?: Long } tags String;
        "#;
        Schema::from_cedarschema_str(text).expect("schema").0
    }

    fn doc(id: &str, owner: &str) -> Value {
        json!({"uid": {"type": "Doc", "id": id},
               "attrs": {"tenant": {"__entity": {"type": "Tenant", "id": "acme"}},
                         "owner": {"__entity": {"type": "User", "id": owner}}},
               "parents": []})
    }

    #[test]
    fn entity_file_validates_records_and_names_their_line() {
        let dir = tempfile::tempdir().expect("dir");
        let text = format!(
            "[\n  {},\n  {{\"uid\": {{\"type\": \"Doc\", \"id\": \"2\"}},\n   \"attrs\": {{\"tenant\": {{\"__entity\": {{\"type\": \"Tenant\", \"id\": \"a\"}}}}, \"level\": \"high\"}}, \"parents\": []}}\n]\n",
            doc("1", "alice")
        );
        std::fs::write(dir.path().join("entities.json"), text).expect("write");
        let err = EntityFile::load(dir.path(), &schema()).unwrap_err();
        let issue = &err.0[0];
        assert_eq!(issue.location.line, Some(3), "{err}");
        assert_eq!(issue.field, "[1]");
        assert!(issue.message.contains("level"), "{err}");
    }

    #[test]
    fn entity_file_holds_records_and_the_types_it_covers() {
        let dir = tempfile::tempdir().expect("dir");
        let text = serde_json::to_string(&vec![doc("1", "alice"), doc("2", "bob")]).expect("json");
        std::fs::write(dir.path().join("entities.json"), text).expect("write");
        let file = EntityFile::load(dir.path(), &schema()).expect("load");
        assert!(file.covers("Doc") && !file.covers("User"));
        let uid: EntityUid = r#"Doc::"2""#.parse().expect("uid");
        let record = file.get(&uid).expect("record");
        assert_eq!(record.tenant.as_deref(), Some("acme"));
        assert!(record.fingerprint.contains("bob"));
    }

    /// Two records that differ only in their tags are different records to the decision
    /// cache (before, they shared one cached decision, and a changed tag kept the old one).
    #[test]
    fn tags_are_part_of_a_records_fingerprint() {
        let tagged = |value: &str| {
            let mut record = doc("1", "alice");
            record["tags"] = json!({"stage": value});
            StoredEntity::from_json(record, &schema()).expect("record")
        };
        assert_ne!(tagged("draft").fingerprint, tagged("final").fingerprint);
        assert_eq!(tagged("draft").fingerprint, tagged("draft").fingerprint);
    }

    struct Counting {
        calls: std::sync::atomic::AtomicUsize,
        fail: bool,
    }

    /// Answers with a different owner on every fetch.
    struct Changing(std::sync::atomic::AtomicUsize);

    #[async_trait::async_trait]
    impl EntityProvider for Changing {
        async fn fetch(&self, _t: &str, id: &str) -> Result<Option<Value>, ProviderError> {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Some(doc(id, &format!("owner-{n}"))))
        }
    }

    #[tokio::test]
    async fn a_record_fetched_again_after_its_ttl_is_the_new_one() {
        let mut store = EntityStore::new();
        let policy = CachePolicy {
            capacity: 10,
            ttl: Duration::from_millis(50),
            negative_ttl: Duration::from_millis(50),
        };
        let provider = Arc::new(Changing(Default::default()));
        store.add(&["Doc".to_string()], provider, policy, OnError::Deny);
        let s = schema();
        let owner = |lookup: Result<Lookup, ProviderError>| match lookup {
            Ok(Lookup::Found(record)) => record.fingerprint.clone(),
            other => panic!("{other:?}"),
        };
        let first = owner(store.lookup("Doc", "1", &s, "v1").await);
        assert_eq!(owner(store.lookup("Doc", "1", &s, "v1").await), first);
        tokio::time::sleep(Duration::from_millis(120)).await;
        let second = owner(store.lookup("Doc", "1", &s, "v1").await);
        assert_ne!(
            first, second,
            "the refetched record replaces the validated one"
        );
        assert!(second.contains("owner-1"), "{second}");
    }

    #[async_trait::async_trait]
    impl EntityProvider for Counting {
        async fn fetch(&self, _t: &str, id: &str) -> Result<Option<Value>, ProviderError> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.fail {
                return Err(ProviderError {
                    provider: "test".into(),
                    reason: "down".into(),
                });
            }
            Ok((id != "404").then(|| doc(id, "alice")))
        }
    }

    fn store(fail: bool, on_error: OnError) -> (EntityStore, Arc<Counting>) {
        let provider = Arc::new(Counting {
            calls: Default::default(),
            fail,
        });
        let mut store = EntityStore::new();
        let policy = CachePolicy {
            capacity: 100,
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(60),
        };
        store.add(&["Doc".to_string()], provider.clone(), policy, on_error);
        (store, provider)
    }

    #[tokio::test]
    async fn store_caches_found_and_missing_and_refetches_after_invalidation() {
        let (store, provider) = store(false, OnError::Deny);
        let s = schema();
        let calls = || provider.calls.load(std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(
            store.lookup("Doc", "1", &s, "v1").await,
            Ok(Lookup::Found(_))
        ));
        assert!(matches!(
            store.lookup("Doc", "1", &s, "v1").await,
            Ok(Lookup::Found(_))
        ));
        assert!(matches!(
            store.lookup("Doc", "404", &s, "v1").await,
            Ok(Lookup::Missing)
        ));
        assert!(matches!(
            store.lookup("Doc", "404", &s, "v1").await,
            Ok(Lookup::Missing)
        ));
        assert_eq!(calls(), 2);
        store.invalidate("Doc", "1").await;
        assert!(matches!(
            store.lookup("Doc", "1", &s, "v1").await,
            Ok(Lookup::Found(_))
        ));
        assert_eq!(calls(), 3);
        assert!(matches!(
            store.lookup("User", "1", &s, "v1").await,
            Ok(Lookup::NotCovered)
        ));
    }

    #[tokio::test]
    async fn a_provider_failure_denies_or_reads_as_absent_as_configured() {
        let s = schema();
        let (deny, _) = store(true, OnError::Deny);
        assert!(deny.lookup("Doc", "1", &s, "v1").await.is_err());
        let (absent, _) = store(true, OnError::Absent);
        assert!(matches!(
            absent.lookup("Doc", "1", &s, "v1").await,
            Ok(Lookup::Missing)
        ));
    }
}
