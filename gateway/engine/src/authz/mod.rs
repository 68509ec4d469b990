//! Authorization with Cedar: the compiled policy package (schema, global policies, per-tenant
//! policies, shadow policies, roles, routes) and the decision for one request.
//!
//! Per-tenant policies are kept as separate policy sets. A request is evaluated against the
//! global set and its own tenant's set only, and the two answers are combined with Cedar's
//! semantics (any satisfied forbid denies; otherwise any satisfied permit allows; otherwise
//! deny), so the cost does not grow with the number of tenants.

mod config;
pub mod facts;
pub mod load;
mod request_parts;
pub mod routes;
pub mod shapes;
pub mod store;
pub mod testing;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    AuthorizationError, Authorizer, Decision, Effect, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, PolicySet, Request, Response, RestrictedExpression, Schema,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use cedar_policy_core::ast::Entity as CoreEntity;

use crate::diagnostics::{SourceIssue, SourceIssues, SourceText};
use crate::identity::principal::ANONYMOUS_ID;
use crate::identity::Principal;
use crate::tenancy::{TenantRegistry, TenantSpec};
pub use config::{AuthorizationConfig, EntityProviderKind, EntityStoreConfig};
use facts::ContextFacts;
use load::{ParsedPolicies, PolicyOrigin};
use request_parts::{core_entity, ContextRecord};
use routes::{RouteTable, RoutesFile};
use shapes::{AttrType, SchemaShapes};
pub use store::ResourceRecord;
use store::{EntityFile, StoredEntity};

/// Facts about the request that policies may use (the Cedar `context`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct RequestFacts {
    /// UTC hour, 0-23.
    pub hour: i64,
    /// ISO weekday, 1 = Monday.
    pub weekday: i64,
    pub method: String,
    /// ISO 3166-1 alpha-2 client country, when known.
    pub country: Option<String>,
    pub ip: Option<IpAddr>,
}

impl RequestFacts {
    /// Facts for a request arriving now.
    pub fn now(method: &str, country: Option<String>, ip: Option<IpAddr>) -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let days = secs / 86_400;
        RequestFacts {
            hour: ((secs / 3600) % 24) as i64,
            // 1970-01-01 was a Thursday (ISO weekday 4).
            weekday: ((days + 3) % 7 + 1) as i64,
            method: method.to_string(),
            country,
            ip,
        }
    }
}

/// What is being decided.
#[derive(Debug, Clone)]
pub struct DecisionInput<'a> {
    pub principal: &'a Principal,
    pub tenant: &'a TenantSpec,
    /// Feature flags of the tenant's tier, added to its own.
    pub tier_features: &'a [String],
    pub action: &'a str,
    pub resource_type: &'a str,
    pub resource_id: &'a str,
    /// Resource attributes from the route's path parameters (typed by the schema; never an
    /// entity reference such as an owner: those come from the entity store).
    pub resource_attributes: &'a [(String, String)],
    /// What the entity store knows of the resource.
    pub resource_record: ResourceRecord<'a>,
    /// What the entity store knows of the principal (a `User` record: attributes its token
    /// does not carry, and parents such as roles or groups).
    pub principal_record: ResourceRecord<'a>,
    /// The declared request facts' raw values (routes.toml `[context]`), in
    /// [`AuthzEngine::context_facts`] order; empty when none are declared.
    pub declared_facts: &'a [Option<String>],
    pub facts: &'a RequestFacts,
}

/// The outcome of evaluating the policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evaluation {
    pub allowed: bool,
    /// The determining policies: satisfied forbids of a deny, satisfied permits of an allow
    /// (empty for a deny because nothing permitted it).
    pub policies: Vec<String>,
    /// Policies that failed to evaluate (they count as not satisfied).
    pub errors: Vec<String>,
    /// For a denial: the `@reason` annotation of the first determining forbid that has one,
    /// which the refusal tells the caller (the policy author chose to say it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the shadow policies would have decided, when there are any.
    pub shadow: Option<ShadowOutcome>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShadowOutcome {
    pub allowed: bool,
    pub policies: Vec<String>,
}

impl Evaluation {
    /// The shadow policies would decide differently.
    pub fn shadow_differs(&self) -> bool {
        self.shadow
            .as_ref()
            .is_some_and(|s| s.allowed != self.allowed)
    }
}

struct EntityTypes {
    user: EntityTypeName,
    /// Callers without credentials: a type of its own, so that no path parameter or attribute
    /// (which name `User`s) can ever denote them.
    anonymous: EntityTypeName,
    tenant: EntityTypeName,
    by_name: HashMap<String, EntityTypeName>,
}

/// What a principal entity is built from: the entity cache key. A structured key (not a joined
/// string) so that no id, whatever characters it holds, can collide with another principal's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum EntityKey {
    Principal {
        anonymous: bool,
        id: String,
        tenant: EntityUid,
        platform: bool,
        roles: Vec<String>,
        /// The mapped attributes the schema declares for users, in
        /// [`AuthzEngine::principal_attributes`] order, as JSON text.
        attributes: Vec<Option<String>>,
        /// The fingerprint of the principal's record in the entity store, when it has one.
        record: Option<String>,
    },
    Tenant {
        id: String,
        tier: String,
        features: Vec<String>,
        tier_features: Vec<String>,
        home_region: Option<String>,
        regime: Option<String>,
    },
}

/// A Cedar request with its entities, ready to evaluate.
#[doc(hidden)]
pub struct Prepared {
    action: EntityUid,
    pub request: Request,
    pub entities: Entities,
}

/// A loaded, validated policy package.
pub struct AuthzEngine {
    pub dir: PathBuf,
    schema: Schema,
    global: PolicySet,
    shadow: Option<PolicySet>,
    /// The global and shadow sets sliced per action: only policies whose action scope can match
    /// are evaluated (Cedar otherwise evaluates every policy of a set).
    global_slices: HashMap<EntityUid, PolicySet>,
    shadow_slices: HashMap<EntityUid, PolicySet>,
    /// Each tenant's own policies: those of `tenants/<id>/` (validated at load) plus the text in
    /// its registry entry, compiled on first use and kept in a bounded cache keyed by a digest of
    /// the text (so 100,000 tenants' policies cost memory only while in use). Registry text is
    /// validated when it is written (see [`AuthzEngine::check_tenant_policies`]).
    compiled_tenants: quick_cache::sync::Cache<String, Arc<CompiledTenant>>,
    /// Tenant compilations so far (each [`CompiledTenant`]'s `generation`).
    tenant_compilations: std::sync::atomic::AtomicU64,
    /// Which request inputs the global and shadow policies read (the decision cache key holds
    /// only those).
    uses: KeyUses,
    /// Built principal and tenant entities, keyed by everything they are built from (in
    /// cedar-policy-core's form, which a request's entity set takes without copying).
    entity_cache: quick_cache::sync::Cache<EntityKey, Arc<CoreEntity>>,
    /// Tenant policies from `tenants/<id>/`, kept to combine with registry-provided ones.
    file_tenant_policies: HashMap<String, ParsedPolicies>,
    origins: BTreeMap<String, PolicyOrigin>,
    pub routes: RouteTable,
    roles: HashMap<String, Vec<EntityUid>>,
    actions: HashMap<String, EntityUid>,
    /// Per action: its entity and its groups' entities (only these join a request's entities;
    /// all 60-odd actions would make Cedar's closure computation dominate the cost).
    action_entities: HashMap<EntityUid, Vec<Arc<CoreEntity>>>,
    types: EntityTypes,
    /// The attribute types the schema declares.
    shapes: SchemaShapes,
    /// The user attributes a token's claims may fill (declared by the schema, of a type a
    /// claim can have; not `tenant` or `platform`, which the gateway sets), sorted by name.
    principal_attributes: Vec<(String, AttrType)>,
    /// `entities.json` of the package.
    entity_file: EntityFile,
    /// Policy id → its `@reason` annotation.
    reasons: HashMap<String, String>,
    /// Request facts declared in routes.toml `[context]`.
    context_facts: ContextFacts,
    /// Whether the schema's context declares `resource_found`.
    context_has_resource_found: bool,
    authorizer: Authorizer,
    /// The decision cache. (quick_cache rather than moka on the request path: moka runs its
    /// maintenance inline on reading threads, which measured p99 25 µs per `get` against
    /// quick_cache's 1 µs in bench/.)
    cache: Option<quick_cache::sync::Cache<String, Arc<Evaluation>>>,
    /// Digest of every file of the package.
    pub version: String,
}

/// A tenant's own policies, compiled and sliced per action (or why they could not be).
struct CompiledTenant {
    /// The registry text it was compiled from: a changed text means recompiling.
    source: Option<String>,
    /// Which compilation this is (never 0): in the decision cache key, so a decision made
    /// under the tenant's earlier policies is not served once they change.
    generation: u64,
    slices: Result<HashMap<EntityUid, Arc<PolicySet>>, String>,
    uses: KeyUses,
}

/// Which inputs policies read. Decisions depend on nothing else, so the decision cache key
/// leaves the rest out: e.g. without a policy naming a specific document, `Document::"1"` and
/// `Document::"2"` share a cache entry.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct KeyUses {
    principal_id: bool,
    resource_id: bool,
    hour: bool,
    weekday: bool,
    method: bool,
    country: bool,
    ip: bool,
    /// Bit `i`: the principal attribute `i` of [`AuthzEngine::principal_attributes`] is read
    /// (bit 63 stands for every attribute from the 63rd on).
    principal_attributes: u64,
    /// Bit `i`: the declared context fact `i` is read (likewise).
    context_facts: u64,
}

/// The open-ended inputs a key may hold, by position: the principal attributes claims fill
/// and the declared context facts.
struct KeyNames<'a> {
    principal: &'a [(String, AttrType)],
    context: &'a ContextFacts,
}

impl KeyUses {
    fn of<'a>(
        policies: impl IntoIterator<Item = &'a cedar_policy::Policy>,
        names: &KeyNames<'_>,
    ) -> Self {
        let mut uses = KeyUses::default();
        for policy in policies {
            for uid in policy.entity_literals() {
                match uid.type_name().basename() {
                    "Role" | "Tenant" | "Action" => {}
                    "User" | "Anonymous" => uses.principal_id = true,
                    _ => uses.resource_id = true,
                }
            }
            match policy.to_json() {
                Ok(json) => {
                    // The conditions only: annotations and ids are not read by a decision.
                    if let Some(conditions) = json.get("conditions") {
                        uses.read_in(conditions, names);
                    }
                }
                // Not expressible as JSON (cannot happen for parsed policies): assume it
                // reads everything.
                Err(_) => uses.read_everything(),
            }
        }
        uses
    }

    /// Records what `expr` (a part of a policy in cedar's JSON form, the EST) reads: attribute
    /// accesses (`.` and `has`) of `context` and of entities, and `context` used whole.
    fn read_in(&mut self, expr: &serde_json::Value, names: &KeyNames<'_>) {
        use serde_json::Value;
        match expr {
            Value::Object(map) => {
                for (op, operand) in map {
                    match (op.as_str(), operand) {
                        ("." | "has", Value::Object(access)) => {
                            let attr = access
                                .get("attr")
                                .and_then(Value::as_str)
                                .unwrap_or_default();
                            match access.get("left") {
                                Some(left) if is_var(left, "context") => {
                                    self.read_context(attr, names)
                                }
                                Some(left) => {
                                    // An entity's attribute: the principal's, or another
                                    // entity's of the same name (e.g. an owner who is the
                                    // principal).
                                    self.read_entity_attribute(attr, names);
                                    self.read_in(left, names);
                                }
                                None => self.read_everything(),
                            }
                        }
                        ("Var", Value::String(var)) if var == "context" => self.read_everything(),
                        _ => self.read_in(operand, names),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| self.read_in(item, names)),
            _ => {}
        }
    }

    fn read_context(&mut self, attr: &str, names: &KeyNames<'_>) {
        if let Some(index) = names.context.position(attr) {
            self.context_facts |= 1 << index.min(63);
        }
        match attr {
            "hour" => self.hour = true,
            "weekday" => self.weekday = true,
            "method" => self.method = true,
            "country" => self.country = true,
            "ip" => self.ip = true,
            // `mfa`, `auth`, `scope_ok` come from what every key holds; a name the schema
            // lacks does not validate.
            _ => {}
        }
    }

    /// Assumes every request input is read.
    fn read_everything(&mut self) {
        self.hour = true;
        self.weekday = true;
        self.method = true;
        self.country = true;
        self.ip = true;
        self.principal_attributes = u64::MAX;
        self.context_facts = u64::MAX;
    }

    /// An entity attribute read: when it is one a claim fills, the key holds the principal's
    /// value of it. (Tenant, platform, roles and resource attributes are in every key.)
    fn read_entity_attribute(&mut self, attr: &str, names: &KeyNames<'_>) {
        if let Some(index) = names.principal.iter().position(|(name, _)| name == attr) {
            self.principal_attributes |= 1 << index.min(63);
        }
    }

    fn union(self, o: KeyUses) -> KeyUses {
        KeyUses {
            principal_id: self.principal_id || o.principal_id,
            resource_id: self.resource_id || o.resource_id,
            hour: self.hour || o.hour,
            weekday: self.weekday || o.weekday,
            method: self.method || o.method,
            country: self.country || o.country,
            ip: self.ip || o.ip,
            principal_attributes: self.principal_attributes | o.principal_attributes,
            context_facts: self.context_facts | o.context_facts,
        }
    }
}

impl AuthzEngine {
    /// Loads and validates the package in `dir`, with the tenant policies of `registry`.
    pub fn load(
        dir: &Path,
        registry: &TenantRegistry,
        cache_capacity: u64,
    ) -> Result<AuthzEngine, SourceIssues> {
        let schema = load::load_schema(dir)?;
        let roles = load::load_roles(dir, &schema)?;
        let global_parsed = load::load_policy_dir(dir, "")?;
        let global = global_parsed.to_set().map_err(|e| dir_issue(dir, e))?;
        load::validate(&schema, &global, &global_parsed)?;
        let shadow_parsed = load::load_policy_dir(&dir.join("shadow"), "")?;
        let shadow = if shadow_parsed.policies.is_empty() {
            None
        } else {
            let set = shadow_parsed.to_set().map_err(|e| dir_issue(dir, e))?;
            load::validate(&schema, &set, &shadow_parsed)?;
            Some(set)
        };
        let file_tenant_policies = load_tenant_dirs(&dir.join("tenants"))?;
        let mut origins = global_parsed.origins.clone();
        origins.extend(shadow_parsed.origins.clone());
        let schema_source = SourceText::read(&dir.join("schema.cedarschema"))?;
        let shapes = SchemaShapes::from_cedarschema(&schema_source.text)
            .map_err(|e| dir_issue(dir, format!("schema.cedarschema: {e}")))?;
        let entity_file = EntityFile::load(dir, &schema)?;
        let routes_source = SourceText::read(&dir.join("routes.toml"))?;
        let routes_file: RoutesFile = routes_source.deserialize()?;
        check_route_attributes(&routes_file, &routes_source, &shapes)?;
        let context_facts = ContextFacts::build(&routes_file.context, &routes_source, &shapes)?;
        if !context_facts.reads_body() {
            let reading: Vec<_> = routes_file
                .route
                .iter()
                .enumerate()
                .filter(|(_, r)| r.read_body)
                .map(|(i, _)| {
                    routes_source.issue(
                        format!("route[{i}].read_body"),
                        "no `[context]` fact comes from the body (`{ body = \"/field\" }`)",
                    )
                })
                .collect();
            if !reading.is_empty() {
                return Err(SourceIssues(reading));
            }
        }
        let routes = RouteTable::build(routes_file, &routes_source, |action, resource| {
            check_action(&schema, action, resource)
        })
        .map_err(SourceIssues)?;
        let actions = schema
            .actions()
            .map(|uid| (uid.id().unescaped().to_string(), uid.clone()))
            .collect();
        let mut by_name = HashMap::new();
        for t in schema.entity_types() {
            by_name.insert(t.basename().to_string(), t.clone());
        }
        let type_named = |name: &str| {
            by_name.get(name).cloned().ok_or_else(|| {
                dir_issue(
                    dir,
                    format!("schema.cedarschema: entity type `{name}` is required"),
                )
            })
        };
        let types = EntityTypes {
            user: type_named("User")?,
            anonymous: type_named("Anonymous")?,
            tenant: type_named("Tenant")?,
            by_name: by_name.clone(),
        };
        let all_actions = schema
            .action_entities()
            .map_err(|e| dir_issue(dir, format!("schema actions: {e}")))?;
        let action_entities: HashMap<EntityUid, Vec<Arc<CoreEntity>>> = all_actions
            .iter()
            .map(|entity| {
                let uid = entity.uid();
                let mut related = vec![core_entity(entity)];
                if let Some(ancestors) = all_actions.ancestors(&uid) {
                    related.extend(ancestors.filter_map(|a| all_actions.get(a).map(core_entity)));
                }
                (uid, related)
            })
            .collect();
        let principal_attributes = claim_attributes(&shapes, &types.user);
        let context_has_resource_found = shapes.context.contains_key("resource_found");
        let mut reasons = HashMap::new();
        for policy in global.policies().chain(
            file_tenant_policies
                .values()
                .flat_map(|p| p.policies.iter()),
        ) {
            if let Some(reason) = policy.annotation("reason") {
                reasons.insert(policy.id().to_string(), reason.to_string());
            }
        }
        let global_slices = slice_per_action(&global, &action_entities);
        let shadow_slices = shadow
            .as_ref()
            .map(|s| slice_per_action(s, &action_entities))
            .unwrap_or_default();
        let mut engine = AuthzEngine {
            dir: dir.to_path_buf(),
            action_entities,
            schema,
            global,
            shadow,
            global_slices,
            shadow_slices,
            compiled_tenants: new_compiled_cache(),
            tenant_compilations: std::sync::atomic::AtomicU64::new(0),
            entity_cache: new_entity_cache(),
            uses: KeyUses::default(),
            file_tenant_policies,
            origins,
            routes,
            roles,
            actions,
            types,
            shapes,
            principal_attributes,
            entity_file,
            reasons,
            context_facts,
            context_has_resource_found,
            authorizer: Authorizer::new(),
            cache: None,
            version: package_digest(dir),
        };
        // Tenant directories are validated now; registry texts when written and on first use.
        let mut issues = Vec::new();
        let ids: Vec<String> = engine.file_tenant_policies.keys().cloned().collect();
        for id in ids {
            match engine.compile_tenant(&id, None) {
                Ok(Some((_, parsed))) => engine.origins.extend(parsed.origins),
                Ok(None) => {}
                Err(mut e) => issues.append(&mut e.0),
            }
        }
        if !issues.is_empty() {
            return Err(SourceIssues(issues));
        }
        let _ = registry;
        engine.uses = KeyUses::of(
            engine
                .global
                .policies()
                .chain(engine.shadow.iter().flat_map(|s| s.policies())),
            &engine.key_names(),
        );
        engine.cache = new_cache(cache_capacity);
        Ok(engine)
    }

    /// The tenant's policy set from its directory and its registry text, validated.
    fn compile_tenant(
        &self,
        id: &str,
        registry_text: Option<&str>,
    ) -> Result<Option<(PolicySet, ParsedPolicies)>, SourceIssues> {
        let mut parsed = self
            .file_tenant_policies
            .get(id)
            .cloned()
            .unwrap_or_default();
        if let Some(text) = registry_text {
            let source = SourceText::new(format!("<tenant {id} policies in the registry>"), text);
            let more = load::parse_policies(&source, &format!("tenant:{id}:"))?;
            let mut issues = Vec::new();
            load::merge(&mut parsed, more, &mut issues);
            if !issues.is_empty() {
                return Err(SourceIssues(issues));
            }
        }
        if parsed.policies.is_empty() {
            return Ok(None);
        }
        let set = parsed.to_set().map_err(|e| dir_issue(&self.dir, e))?;
        load::validate(&self.schema, &set, &parsed)?;
        Ok(Some((set, parsed)))
    }

    /// Validates a tenant's registry policies (with its directory's), as they would be used.
    pub fn check_tenant_policies(&self, id: &str, text: Option<&str>) -> Result<(), SourceIssues> {
        self.compile_tenant(id, text).map(|_| ())
    }

    /// The tenant's compiled policies (file-based plus registry text), from the cache.
    fn tenant_policies(&self, tenant: &TenantSpec) -> Option<Arc<CompiledTenant>> {
        let text = tenant.policies.as_deref();
        if text.is_none() && !self.file_tenant_policies.contains_key(&tenant.id) {
            return None;
        }
        if let Some(hit) = self.compiled_tenants.get(&tenant.id) {
            if hit.source.as_deref() == text {
                return Some(hit);
            }
        }
        let slices = match self.compile_tenant(&tenant.id, text) {
            Ok(Some((set, _))) => Ok(slice_per_action(&set, &self.action_entities)
                .into_iter()
                .map(|(action, slice)| (action, Arc::new(slice)))
                .collect::<HashMap<_, _>>()),
            Ok(None) => Ok(HashMap::new()),
            Err(issues) => {
                metrics::counter!(crate::telemetry::AUTHZ_TENANT_POLICY_ERRORS_TOTAL).increment(1);
                tracing::error!(tenant = %tenant.id, error = %issues, "tenant policies invalid: the tenant's requests are denied");
                Err(issues.to_string())
            }
        };
        let uses = match &slices {
            Ok(map) => KeyUses::of(
                map.values().flat_map(|set| set.policies()),
                &self.key_names(),
            ),
            Err(_) => KeyUses::default(),
        };
        let generation = 1 + self
            .tenant_compilations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let compiled = Arc::new(CompiledTenant {
            source: text.map(str::to_string),
            generation,
            slices,
            uses,
        });
        self.compiled_tenants
            .insert(tenant.id.clone(), compiled.clone());
        Some(compiled)
    }

    /// Every policy id with where it is defined.    /// Every policy id with where it is defined.
    pub fn policy_origins(&self) -> &BTreeMap<String, PolicyOrigin> {
        &self.origins
    }

    /// Policies of the package, tenant directories included (not registry texts).
    pub fn policy_count(&self) -> usize {
        self.global.num_of_policies()
            + self.shadow.as_ref().map_or(0, |s| s.num_of_policies())
            + self
                .file_tenant_policies
                .values()
                .map(|p| p.policies.len())
                .sum::<usize>()
    }

    /// Tenants whose compiled policies are in memory right now.
    pub fn compiled_tenant_sets(&self) -> usize {
        self.compiled_tenants.len()
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    fn key_names(&self) -> KeyNames<'_> {
        KeyNames {
            principal: &self.principal_attributes,
            context: &self.context_facts,
        }
    }

    /// Request facts declared in routes.toml `[context]`.
    pub fn context_facts(&self) -> &ContextFacts {
        &self.context_facts
    }

    /// The attribute types the schema declares.
    pub fn shapes(&self) -> &SchemaShapes {
        &self.shapes
    }

    /// The entity type of authenticated principals (`User`).
    pub fn user_type(&self) -> &str {
        self.types.user.basename()
    }

    /// What `entities.json` says of `type_name::"id"`.
    pub fn file_record(&self, type_name: &str, id: &str) -> ResourceRecord<'_> {
        if !self.entity_file.covers(type_name) {
            return ResourceRecord::NotCovered;
        }
        match self
            .uid(type_name, id)
            .ok()
            .and_then(|uid| self.entity_file.get(&uid))
        {
            Some(record) => ResourceRecord::Found(record),
            None => ResourceRecord::Missing,
        }
    }

    /// Records in `entities.json`.
    pub fn entity_file_len(&self) -> usize {
        self.entity_file.len()
    }

    /// Whether a resource of this type can be an entity the request builds anyway: the
    /// principal (`User`, `Anonymous`), a tenant, a role or an action. Its id then changes the
    /// entity set — the resource is the principal itself, or collides with a tenant entity and
    /// the request fails to build — so it must be part of the decision cache key (found by the
    /// `cedar_request` fuzz target: a cached denial by policy answered for a request whose
    /// entities could not be built).
    fn builds_entities_of(&self, resource_type: &str) -> bool {
        resource_type == self.types.user.basename()
            || resource_type == self.types.anonymous.basename()
            || resource_type == self.types.tenant.basename()
            || resource_type == "Role"
            || resource_type == "Action"
    }

    /// Empties the decision and entity caches, so that what follows is decided from the
    /// inputs alone (fuzzing: every input starts from the same state).
    #[doc(hidden)]
    pub fn clear_caches(&self) {
        if let Some(cache) = &self.cache {
            cache.clear();
        }
        self.entity_cache.clear();
    }

    /// What the global, shadow and the tenant's own policies read, and which compilation of
    /// the tenant's own policies decides (0: it has none).
    fn uses_for(&self, tenant: &TenantSpec) -> (KeyUses, u64) {
        match self.tenant_policies(tenant) {
            Some(compiled) => (self.uses.union(compiled.uses), compiled.generation),
            None => (self.uses, 0),
        }
    }

    /// Decides one request, using the decision cache.
    pub fn decide(&self, input: &DecisionInput<'_>) -> Arc<Evaluation> {
        let Some(cache) = &self.cache else {
            return Arc::new(self.evaluate(input).0);
        };
        let (uses, tenant_policies) = self.uses_for(input.tenant);
        let key = cache_key(
            input,
            uses,
            tenant_policies,
            self.builds_entities_of(input.resource_type),
            &self.key_names(),
        );
        if let Some(hit) = cache.get(&key) {
            return hit;
        }
        let evaluation = Arc::new(self.evaluate(input).0);
        cache.insert(key, evaluation.clone());
        evaluation
    }

    /// Evaluates without the cache, also returning the entities used (for `explain`).
    pub fn evaluate(&self, input: &DecisionInput<'_>) -> (Evaluation, Option<Entities>) {
        match self.prepare(input) {
            Ok(prepared) => {
                let evaluation = self.evaluate_prepared(input, &prepared);
                (evaluation, Some(prepared.entities))
            }
            Err(e) => (denied_with_error(e), None),
        }
    }

    /// The first half of an evaluation: the Cedar request and entities built from the input
    /// (principal, tenant and resource entities, context). Public for the benchmark that
    /// splits a decision's cost; [`AuthzEngine::evaluate`] is the API.
    #[doc(hidden)]
    pub fn prepare(&self, input: &DecisionInput<'_>) -> Result<Prepared, String> {
        let action = self
            .actions
            .get(input.action)
            .ok_or_else(|| format!("unknown action `{}`", input.action))?;
        let (request, entities) = self.request(input, action)?;
        Ok(Prepared {
            action: action.clone(),
            request,
            entities,
        })
    }

    /// The global policy set (for the benchmark comparing Cedar on the whole set).
    #[doc(hidden)]
    pub fn global_policies(&self) -> &PolicySet {
        &self.global
    }

    /// The second half: Cedar's `is_authorized` on the action's slices of the global, tenant
    /// and shadow sets, combined.
    #[doc(hidden)]
    pub fn evaluate_prepared(&self, input: &DecisionInput<'_>, prepared: &Prepared) -> Evaluation {
        let Prepared {
            action,
            request,
            entities,
        } = prepared;
        let tenant_set = match self.tenant_slice(input.tenant, action) {
            Ok(set) => set,
            // The tenant's own policies are broken: fail closed.
            Err(e) => return denied_with_error(e),
        };
        let mut responses: Vec<(Response, &PolicySet)> = Vec::with_capacity(3);
        let sets = self
            .global_slices
            .get(action)
            .into_iter()
            .chain(tenant_set.as_deref());
        for set in sets {
            responses.push((self.authorizer.is_authorized(request, set, entities), set));
        }
        let (allowed, policies, errors) = combine(&responses);
        let shadow = self.shadow.as_ref().map(|_| {
            if let Some(set) = self.shadow_slices.get(action) {
                responses.push((self.authorizer.is_authorized(request, set, entities), set));
            }
            let (allowed, policies, _) = combine(&responses);
            ShadowOutcome { allowed, policies }
        });
        let reason = if allowed {
            None
        } else {
            policies.iter().find_map(|id| self.reasons.get(id).cloned())
        };
        Evaluation {
            allowed,
            policies,
            errors,
            reason,
            shadow,
        }
    }

    /// The tenant's policies that can apply to `action`, or `None` when none can.
    fn tenant_slice(
        &self,
        tenant: &TenantSpec,
        action: &EntityUid,
    ) -> Result<Option<Arc<PolicySet>>, String> {
        let Some(compiled) = self.tenant_policies(tenant) else {
            return Ok(None);
        };
        match &compiled.slices {
            Ok(slices) => Ok(slices.get(action).cloned()),
            Err(e) => Err(format!("tenant `{}` policies: {e}", tenant.id)),
        }
    }

    fn tenant_entity(
        &self,
        input: &DecisionInput<'_>,
        tenant_uid: &EntityUid,
    ) -> Result<Entity, String> {
        let mut features: Vec<String> = input.tenant.features.clone();
        features.extend(input.tier_features.iter().cloned());
        features.sort();
        features.dedup();
        let mut tenant_attrs = vec![
            (
                "tier".to_string(),
                RestrictedExpression::new_string(input.tenant.tier.clone()),
            ),
            (
                "features".to_string(),
                RestrictedExpression::new_set(
                    features.into_iter().map(RestrictedExpression::new_string),
                ),
            ),
        ];
        if let Some(r) = &input.tenant.home_region {
            tenant_attrs.push((
                "home_region".to_string(),
                RestrictedExpression::new_string(r.clone()),
            ));
        }
        if let Some(r) = &input.tenant.regime {
            tenant_attrs.push((
                "regime".to_string(),
                RestrictedExpression::new_string(r.clone()),
            ));
        }
        Entity::new(
            tenant_uid.clone(),
            tenant_attrs.into_iter().collect(),
            Default::default(),
        )
        .map_err(|e| e.to_string())
    }

    /// The principal's entity: an `Anonymous` caller has its tenant only; a `User` has its
    /// tenant, `platform`, the text attributes policies read and its roles (transitively) as
    /// parents.
    fn principal_entity(
        &self,
        key: &EntityKey,
        uid: EntityUid,
        record: Option<&StoredEntity>,
    ) -> Result<Entity, String> {
        let EntityKey::Principal {
            anonymous,
            tenant,
            platform,
            roles,
            attributes,
            ..
        } = key
        else {
            return Err("not a principal".to_string());
        };
        let mut attrs = vec![(
            "tenant".to_string(),
            RestrictedExpression::new_entity_uid(tenant.clone()),
        )];
        let mut parents = Vec::new();
        if !anonymous {
            attrs.push((
                "platform".to_string(),
                RestrictedExpression::new_bool(*platform),
            ));
            for ((name, ty), value) in self.principal_attributes.iter().zip(attributes) {
                let Some(text) = value else { continue };
                let converted = serde_json::from_str(text)
                    .map_err(|e| e.to_string())
                    .and_then(|v| ty.convert(&v, &self.types.by_name));
                match converted {
                    Ok(expr) => attrs.push((name.clone(), expr)),
                    // Left out: `principal has <name>` is false, as for a token without it.
                    Err(e) => {
                        metrics::counter!(crate::telemetry::AUTHZ_ATTRIBUTE_TYPE_ERRORS_TOTAL)
                            .increment(1);
                        tracing::debug!(attribute = %name, error = %e, "claim left out of the principal entity");
                    }
                }
            }
            for role in roles {
                match self.roles.get(role) {
                    Some(closure) => parents.extend(closure.iter().cloned()),
                    None => parents.push(self.uid("Role", role)?),
                }
            }
            // The store's record adds what the token does not say: attributes the claims left
            // unset (never `tenant` or `platform`, which are the credential's), and its parents
            // (role records bring their ladder along).
            let record = record.filter(|stored| record_applies(stored, tenant, *platform));
            if let Some(StoredEntity { entity, .. }) = record {
                let (_, record_attrs, record_parents) = entity.clone().into_inner();
                for (name, expr) in record_attrs {
                    if !attrs.iter().any(|(set, _)| *set == name) {
                        attrs.push((name, expr));
                    }
                }
                for parent in record_parents {
                    let ladder = (parent.type_name().basename() == "Role")
                        .then(|| self.roles.get(parent.id().unescaped()))
                        .flatten();
                    match ladder {
                        Some(closure) => parents.extend(closure.iter().cloned()),
                        None => parents.push(parent),
                    }
                }
            }
        }
        Entity::new(
            uid,
            attrs.into_iter().collect(),
            parents.into_iter().collect(),
        )
        .map_err(|e| e.to_string())
    }

    /// The resource: the store's record as it is when there is one (its `tenant`, `owner` …
    /// are the data's, not the request's), else an entity of the request's tenant. Route
    /// attributes (typed by the schema) add what the record does not have.
    fn resource_entity(
        &self,
        input: &DecisionInput<'_>,
        resource_uid: &EntityUid,
        tenant_uid: &EntityUid,
    ) -> Result<Arc<CoreEntity>, String> {
        let (mut attrs, parents) = match input.resource_record {
            ResourceRecord::Found(StoredEntity { entity, .. })
                if input.resource_attributes.is_empty() =>
            {
                return Ok(core_entity(entity));
            }
            ResourceRecord::Found(StoredEntity { entity, .. }) => {
                let (_, attrs, parents) = entity.clone().into_inner();
                (attrs, parents)
            }
            ResourceRecord::NotCovered | ResourceRecord::Missing => (
                HashMap::from([(
                    "tenant".to_string(),
                    RestrictedExpression::new_entity_uid(tenant_uid.clone()),
                )]),
                Default::default(),
            ),
        };
        for (name, value) in input.resource_attributes {
            if attrs.contains_key(name) {
                continue;
            }
            let expr = match self.shapes.entity_attribute(input.resource_type, name) {
                Some(shape) => shape.ty.convert(
                    &serde_json::Value::String(value.clone()),
                    &self.types.by_name,
                )?,
                None => RestrictedExpression::new_string(value.clone()),
            };
            attrs.insert(name.clone(), expr);
        }
        Entity::new(resource_uid.clone(), attrs, parents)
            .map(|entity| core_entity(&entity))
            .map_err(|e| e.to_string())
    }

    fn uid(&self, type_name: &str, id: &str) -> Result<EntityUid, String> {
        let t = match self.types.by_name.get(type_name) {
            Some(t) => t.clone(),
            None => EntityTypeName::from_str(type_name)
                .map_err(|e| format!("entity type `{type_name}`: {e}"))?,
        };
        Ok(EntityUid::from_type_name_and_id(t, EntityId::new(id)))
    }

    fn request(
        &self,
        input: &DecisionInput<'_>,
        action: &EntityUid,
    ) -> Result<(Request, Entities), String> {
        let tenant_uid = EntityUid::from_type_name_and_id(
            self.types.tenant.clone(),
            EntityId::new(&input.tenant.id),
        );
        let principal = input.principal;
        let anonymous = principal.is_anonymous();
        // Anonymous callers act in the request's tenant, and so do platform principals (their
        // token names no tenant of its own).
        let principal_tenant = match &principal.tenant {
            Some(t) if !anonymous && **t != *input.tenant.id => {
                EntityUid::from_type_name_and_id(self.types.tenant.clone(), EntityId::new(&**t))
            }
            _ => tenant_uid.clone(),
        };
        // Built with the Cedar API from the id as it is: whatever characters a token subject
        // holds (`"`, `::` ...), it stays one id of one type.
        let principal_uid = if anonymous {
            EntityUid::from_type_name_and_id(
                self.types.anonymous.clone(),
                EntityId::new(ANONYMOUS_ID),
            )
        } else {
            EntityUid::from_type_name_and_id(self.types.user.clone(), EntityId::new(&principal.id))
        };
        let principal_record = match input.principal_record {
            ResourceRecord::Found(record) if !anonymous => Some(record),
            _ => None,
        };
        let principal_key = EntityKey::Principal {
            anonymous,
            id: principal.id.clone(),
            tenant: principal_tenant.clone(),
            platform: principal.platform,
            roles: if anonymous {
                Vec::new()
            } else {
                principal.roles.clone()
            },
            attributes: if anonymous {
                Vec::new()
            } else {
                self.principal_attributes
                    .iter()
                    .map(|(name, _)| principal.attributes.get(name).map(|v| v.to_string()))
                    .collect()
            },
            record: principal_record.map(|r| r.fingerprint.clone()),
        };
        let user = match self.entity_cache.get(&principal_key) {
            Some(e) => e,
            None => {
                let e =
                    self.principal_entity(&principal_key, principal_uid.clone(), principal_record)?;
                let e = core_entity(&e);
                self.entity_cache.insert(principal_key, e.clone());
                e
            }
        };
        let tenant_key = EntityKey::Tenant {
            id: input.tenant.id.clone(),
            tier: input.tenant.tier.clone(),
            features: input.tenant.features.clone(),
            tier_features: input.tier_features.to_vec(),
            home_region: input.tenant.home_region.clone(),
            regime: input.tenant.regime.clone(),
        };
        let tenant = match self.entity_cache.get(&tenant_key) {
            Some(e) => e,
            None => {
                let e = core_entity(&self.tenant_entity(input, &tenant_uid)?);
                self.entity_cache.insert(tenant_key, e.clone());
                e
            }
        };
        let resource_uid = self.uid(input.resource_type, input.resource_id)?;
        let resource = self.resource_entity(input, &resource_uid, &tenant_uid)?;
        let mut list = vec![user, tenant];
        // A principal's other tenant (a mismatch the tenant stage should have refused) still
        // needs an entity so the isolation guard can compare it.
        if principal_tenant != tenant_uid {
            list.push(Arc::new(CoreEntity::with_uid(
                principal_tenant.as_ref().clone(),
            )));
        }
        if resource_uid != principal_uid {
            list.push(resource);
        }
        let actions = self
            .action_entities
            .get(action)
            .map_or(&[][..], Vec::as_slice);
        let entities = request_parts::request_entities(actions, list)?;
        // Optional context attributes no policy reads are left out: building them costs (an
        // `ipaddr` is parsed through Cedar's extension machinery, ~3 µs) and cannot change a
        // decision.
        let (uses, _) = self.uses_for(input.tenant);
        let mut context = context_record(input, uses)?;
        for (fact, value) in self.context_facts.iter().zip(input.declared_facts) {
            let Some(text) = value else { continue };
            match fact.ty.convert(
                &serde_json::Value::String(text.clone()),
                &self.types.by_name,
            ) {
                Ok(expr) => context.expression(&fact.name, &expr)?,
                // Absent, as if the request did not carry it.
                Err(e) => {
                    metrics::counter!(crate::telemetry::AUTHZ_ATTRIBUTE_TYPE_ERRORS_TOTAL)
                        .increment(1);
                    tracing::debug!(fact = %fact.name, error = %e, "request fact left out of the context");
                }
            }
        }
        if self.context_has_resource_found {
            match input.resource_record {
                ResourceRecord::NotCovered => {}
                ResourceRecord::Missing => context.value("resource_found", false)?,
                ResourceRecord::Found(_) => context.value("resource_found", true)?,
            }
        }
        let request = Request::new(
            principal_uid,
            action.clone(),
            resource_uid,
            context.into_context(),
            None,
        )
        .map_err(|e| e.to_string())?;
        Ok((request, entities))
    }
}

/// The context attributes every request has (and `country`, `ip` when a policy reads them).
fn context_record(input: &DecisionInput<'_>, uses: KeyUses) -> Result<ContextRecord, String> {
    let principal = input.principal;
    let mfa = principal.attributes.get("mfa").is_some_and(claims_mfa);
    let auth = principal.auth.label();
    let scope_ok = auth != "api-key"
        || principal.scopes.is_empty()
        || principal.scopes.iter().any(|s| s == input.action);
    let facts = input.facts;
    let mut context = ContextRecord::default();
    context.value("hour", facts.hour)?;
    context.value("weekday", facts.weekday)?;
    context.value("mfa", mfa)?;
    context.value("auth", auth)?;
    context.value("scope_ok", scope_ok)?;
    context.value("method", facts.method.as_str())?;
    if let (Some(c), true) = (&facts.country, uses.country) {
        context.value("country", c.as_str())?;
    }
    if let (Some(ip), true) = (facts.ip, uses.ip) {
        context.expression("ip", &RestrictedExpression::new_ip(ip.to_string()))?;
    }
    Ok(context)
}

/// Slices `set` per action: each action gets only the policies whose action scope can match it.
fn slice_per_action(
    set: &PolicySet,
    actions: &HashMap<EntityUid, Vec<Arc<CoreEntity>>>,
) -> HashMap<EntityUid, PolicySet> {
    let mut out = HashMap::new();
    for action in actions.keys() {
        let ancestors = action_ancestors(actions, action);
        let matching: Vec<_> = set
            .policies()
            .filter(|p| action_scope_matches(p, action, &ancestors))
            .cloned()
            .collect();
        if let Ok(slice) = PolicySet::from_policies(matching) {
            if !slice.is_empty() {
                out.insert(action.clone(), slice);
            }
        }
    }
    out
}

/// The action groups `action` belongs to (transitively).
fn action_ancestors(
    actions: &HashMap<EntityUid, Vec<Arc<CoreEntity>>>,
    action: &EntityUid,
) -> Vec<EntityUid> {
    actions
        .get(action)
        .map(|related| {
            related
                .iter()
                .skip(1)
                .map(|e| EntityUid::from(e.uid().clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a policy's action scope admits `action` (whose groups are `ancestors`). Conditions
/// are not looked at, so this never drops a policy that could be satisfied.
fn action_scope_matches(
    policy: &cedar_policy::Policy,
    action: &EntityUid,
    ancestors: &[EntityUid],
) -> bool {
    use cedar_policy::ActionConstraint;
    match policy.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(uid) => &uid == action,
        ActionConstraint::In(uids) => uids.iter().any(|u| u == action || ancestors.contains(u)),
    }
}

fn new_compiled_cache() -> quick_cache::sync::Cache<String, Arc<CompiledTenant>> {
    quick_cache::sync::Cache::new(20_000)
}

fn new_entity_cache() -> quick_cache::sync::Cache<EntityKey, Arc<CoreEntity>> {
    quick_cache::sync::Cache::new(100_000)
}

/// A second factor is proven by `mfa: true`, or an `amr` list naming one (RFC 8176).
fn claims_mfa(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::String(s) => s == "true",
        serde_json::Value::Array(items) => items.iter().filter_map(|v| v.as_str()).any(|m| {
            matches!(
                m,
                "mfa" | "otp" | "hwk" | "swk" | "sms" | "fido" | "face" | "fpt"
            )
        }),
        _ => false,
    }
}

/// Cedar's combination of several sets: a satisfied forbid anywhere denies; otherwise a
/// satisfied permit anywhere allows; otherwise deny.
fn combine(responses: &[(Response, &PolicySet)]) -> (bool, Vec<String>, Vec<String>) {
    let mut forbids = Vec::new();
    let mut permits = Vec::new();
    let mut errors = Vec::new();
    for (r, set) in responses {
        let reasons = r.diagnostics().reason().map(|id| id.to_string());
        match r.decision() {
            Decision::Deny => forbids.extend(reasons),
            Decision::Allow => permits.extend(reasons),
        }
        for error in r.diagnostics().errors() {
            // Cedar skips a policy whose evaluation fails. A forbid that fails (it read an
            // attribute of an entity the request does not have, say) is taken as applying:
            // its author meant to refuse something, and skipping it would let a permit through.
            let AuthorizationError::PolicyEvaluationError(failed) = error;
            if set
                .policy(failed.policy_id())
                .is_some_and(|p| p.effect() == Effect::Forbid)
            {
                forbids.push(failed.policy_id().to_string());
            }
            errors.push(error.to_string());
        }
    }
    forbids.sort();
    permits.sort();
    if !forbids.is_empty() {
        (false, forbids, errors)
    } else if !permits.is_empty() {
        (true, permits, errors)
    } else {
        (false, Vec::new(), errors)
    }
}

fn denied_with_error(error: String) -> Evaluation {
    Evaluation {
        allowed: false,
        policies: Vec::new(),
        errors: vec![error],
        reason: None,
        shadow: None,
    }
}

/// `{"Var": name}`.
fn is_var(expr: &serde_json::Value, name: &str) -> bool {
    expr.get("Var").and_then(serde_json::Value::as_str) == Some(name)
}

/// Everything a decision depends on, as one string (inputs no policy reads are left out).
/// The decision cache key: everything the decision reads. `resource_id_matters` when the
/// resource can be one of the entities the request builds anyway (see
/// [`AuthzEngine::builds_entities_of`]).
fn cache_key(
    input: &DecisionInput<'_>,
    uses: KeyUses,
    tenant_policies: u64,
    resource_id_matters: bool,
    names: &KeyNames<'_>,
) -> String {
    let p = input.principal;
    let t = input.tenant;
    let f = input.facts;
    // The principal's id matters when a policy names a user, when the resource's record or
    // attributes may refer to users (an owner the principal may be), and when the resource may
    // be the principal's own entity (`resource_id_matters`: `User::"alice"` is alice herself
    // when she asks, and another user when bob does).
    let principal_id = uses.principal_id
        || resource_id_matters
        || !input.resource_attributes.is_empty()
        || matches!(input.resource_record, ResourceRecord::Found(_));
    let mut key = KeyWriter(String::with_capacity(160));
    key.text(input.action);
    key.text(input.resource_type);
    key.text(if uses.resource_id || resource_id_matters {
        input.resource_id
    } else {
        ""
    });
    key.text(if principal_id { p.id.as_str() } else { "" });
    key.maybe(p.tenant.as_deref(), KeyWriter::text);
    key.list(p.roles.iter().map(String::as_str));
    key.list(p.scopes.iter().map(String::as_str));
    key.text(p.auth.label());
    key.flag(p.platform);
    key.text(&t.id);
    key.text(&t.tier);
    key.list(t.features.iter().map(String::as_str));
    key.list(input.tier_features.iter().map(String::as_str));
    key.maybe(t.home_region.as_deref(), KeyWriter::text);
    key.maybe(t.regime.as_deref(), KeyWriter::text);
    // The tenant's own policies as compiled now (0: none).
    key.display(&tenant_policies);
    key.list(
        input
            .resource_attributes
            .iter()
            .flat_map(|(name, value)| [name.as_str(), value.as_str()]),
    );
    key.maybe(p.attributes.get("mfa"), KeyWriter::json);
    // The store's records: none, missing, or the record itself.
    for record in [input.resource_record, input.principal_record] {
        match record {
            ResourceRecord::NotCovered => key.maybe(None::<&str>, KeyWriter::text),
            ResourceRecord::Missing => key.text(""),
            ResourceRecord::Found(record) => key.text(&record.fingerprint),
        }
    }
    // Inputs only some policies read: a marker when no policy reads them.
    key.maybe(uses.hour.then_some(f.hour), KeyWriter::number);
    key.maybe(uses.weekday.then_some(f.weekday), KeyWriter::number);
    key.maybe(uses.method.then_some(f.method.as_str()), KeyWriter::text);
    key.maybe(uses.country.then_some(&f.country), |k, c| {
        k.maybe(c.as_deref(), KeyWriter::text)
    });
    key.maybe(uses.ip.then_some(f.ip), |k, ip| {
        k.maybe(ip, |k, ip| k.display(&ip))
    });
    for (index, (name, _)) in names.principal.iter().enumerate() {
        let read = uses.principal_attributes & (1 << index.min(63)) != 0;
        key.maybe(read.then(|| p.attributes.get(name)), |k, v| {
            k.maybe(v, KeyWriter::json)
        });
    }
    for (index, value) in input.declared_facts.iter().enumerate() {
        let read = uses.context_facts & (1 << index.min(63)) != 0;
        key.maybe(read.then_some(value), |k, v| {
            k.maybe(v.as_deref(), KeyWriter::text)
        });
    }
    key.0
}

/// Writes the decision cache key: each field ends with a separator; values from the request
/// (ids, path parameters, claims) have the separators and the escape character escaped, so
/// no value can pass for a separator and another field. (Written directly rather than with
/// `{:?}`: the key is built for every decision.)
struct KeyWriter(String);

impl KeyWriter {
    const END: char = '\u{1f}';
    const NONE: char = '\u{1e}';
    const LIST_END: char = '\u{1d}';
    const ESCAPE: char = '\\';

    fn text(&mut self, value: &str) {
        let special = |c: char| matches!(c, Self::END | Self::NONE | Self::LIST_END | Self::ESCAPE);
        if value.contains(special) {
            for c in value.chars() {
                if special(c) {
                    self.0.push(Self::ESCAPE);
                }
                self.0.push(c);
            }
        } else {
            self.0.push_str(value);
        }
        self.0.push(Self::END);
    }

    fn list<'a>(&mut self, items: impl Iterator<Item = &'a str>) {
        for item in items {
            self.text(item);
        }
        self.0.push(Self::LIST_END);
    }

    fn flag(&mut self, value: bool) {
        self.0.push(if value { '1' } else { '0' });
        self.0.push(Self::END);
    }

    fn number(&mut self, value: i64) {
        self.display(&value);
    }

    fn display(&mut self, value: &dyn std::fmt::Display) {
        // Numbers and addresses contain no separator; writing to a String cannot fail.
        let _ = write!(self.0, "{value}");
        self.0.push(Self::END);
    }

    /// A claim: tagged by kind, so `true`, `1` and `"1"` differ.
    fn json(&mut self, value: &serde_json::Value) {
        match value {
            serde_json::Value::Bool(b) => {
                self.0.push('b');
                self.flag(*b);
            }
            serde_json::Value::String(s) => {
                self.0.push('s');
                self.text(s);
            }
            other => {
                self.0.push('j');
                self.text(&other.to_string());
            }
        }
    }

    fn maybe<T>(&mut self, value: Option<T>, write: impl FnOnce(&mut Self, T)) {
        match value {
            Some(v) => {
                self.0.push('+');
                write(self, v);
            }
            None => self.0.push(Self::NONE),
        }
    }
}

fn new_cache(capacity: u64) -> Option<quick_cache::sync::Cache<String, Arc<Evaluation>>> {
    (capacity > 0).then(|| quick_cache::sync::Cache::new(capacity as usize))
}

/// Checks that `action` exists and applies to `resource` (used by the route table).
/// Route attributes come from the caller's URL: each must be declared by the resource type, of
/// a type a path segment can have, and never an entity reference — an owner named in the URL
/// is whoever the caller writes there (ownership comes from the entity store).
fn check_route_attributes(
    file: &RoutesFile,
    source: &SourceText,
    shapes: &SchemaShapes,
) -> Result<(), SourceIssues> {
    let mut issues = Vec::new();
    for (i, route) in file.route.iter().enumerate() {
        for attr in route.attributes.keys() {
            let field = format!("route[{i}].attributes.{attr}");
            match shapes.entity_attribute(&route.resource, attr) {
                // An undeclared type or attribute: the action check and policy validation
                // report what is wrong with the type; an undeclared attribute is a typo.
                None if shapes.entities.contains_key(&route.resource) => issues.push(source.issue(
                    field,
                    format!(
                        "the schema's `{}` has no attribute `{attr}`",
                        route.resource
                    ),
                )),
                None => {}
                Some(shape) => match &shape.ty {
                    AttrType::Entity(target) => issues.push(source.issue(
                        field,
                        format!(
                            "`{attr}` is a reference to a `{target}`: it cannot come from the URL, \
                             where the caller writes whatever they like; give resources their \
                             `{attr}` in the entity store (entities.json or \
                             [[authorization.entity_store]])"
                        ),
                    )),
                    AttrType::String
                    | AttrType::Long
                    | AttrType::Bool
                    | AttrType::Decimal
                    | AttrType::IpAddr => {}
                    other => issues.push(source.issue(
                        field,
                        format!("a path parameter cannot be a {}", other.describe()),
                    )),
                },
            }
        }
    }
    if issues.is_empty() {
        Ok(())
    } else {
        Err(SourceIssues(issues))
    }
}

/// The user attributes claims may fill: declared by the schema, of a fillable type, and not
/// one the gateway sets itself.
fn claim_attributes(shapes: &SchemaShapes, user: &EntityTypeName) -> Vec<(String, AttrType)> {
    let mut attrs: Vec<(String, AttrType)> = shapes
        .entities
        .get(user.basename())
        .into_iter()
        .flatten()
        .filter(|(name, shape)| {
            !GATEWAY_SET_USER_ATTRIBUTES.contains(&name.as_str()) && shape.ty.is_fillable()
        })
        .map(|(name, shape)| (name.clone(), shape.ty.clone()))
        .collect();
    attrs.sort_by(|a, b| a.0.cmp(&b.0));
    attrs
}

/// User attributes the gateway sets from what it verified, never from a claim mapping.
const GATEWAY_SET_USER_ATTRIBUTES: [&str; 2] = ["tenant", "platform"];

/// Why a claim mapping (`identity.issuer[].claims.attributes.<name>`) cannot fill a user
/// attribute of this schema, if it cannot.
pub fn check_claim_attribute(shapes: &SchemaShapes, name: &str) -> Result<(), String> {
    // `mfa` feeds `context.mfa`; it needs no user attribute.
    if name == "mfa" {
        return Ok(());
    }
    if GATEWAY_SET_USER_ATTRIBUTES.contains(&name) {
        return Err(format!(
            "`{name}` is set by the gateway from what it verified, not from a claim"
        ));
    }
    let Some(shape) = shapes.entity_attribute("User", name) else {
        return Err(format!(
            "the schema's `User` has no attribute `{name}` (declare it in schema.cedarschema, \
             e.g. `{name}?: String`)"
        ));
    };
    if !shape.ty.is_fillable() {
        return Err(format!(
            "`User.{name}` is a {}, which a claim cannot fill",
            shape.ty.describe()
        ));
    }
    if shape.required {
        return Err(format!(
            "`User.{name}` is required in the schema, but a token may lack the claim: declare \
             it optional (`{name}?: {}`)",
            shape.ty.describe()
        ));
    }
    Ok(())
}

pub fn check_action(schema: &Schema, action: &str, resource: &str) -> Result<(), String> {
    let uid = schema
        .actions()
        .find(|a| a.id().unescaped() == action)
        .ok_or_else(|| format!("unknown action `{action}` (not in schema.cedarschema)"))?;
    let applies = schema
        .resources_for_action(uid)
        .map(|mut types| types.any(|t| t.basename() == resource))
        .unwrap_or(false);
    if applies {
        Ok(())
    } else {
        Err(format!(
            "action `{action}` does not apply to resource type `{resource}`"
        ))
    }
}

fn load_tenant_dirs(dir: &Path) -> Result<HashMap<String, ParsedPolicies>, SourceIssues> {
    let mut out = HashMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(_) => return Ok(out),
    };
    let mut issues = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let id = entry.file_name().to_string_lossy().into_owned();
        if !crate::tenancy::model::is_valid_tenant_id(&id) {
            issues.push(
                dir_issue(&path, format!("`{id}` is not a tenant id"))
                    .0
                    .remove(0),
            );
            continue;
        }
        match load::load_policy_dir(&path, &format!("tenant:{id}:")) {
            Ok(parsed) if !parsed.policies.is_empty() => {
                out.insert(id, parsed);
            }
            Ok(_) => {}
            Err(mut e) => issues.append(&mut e.0),
        }
    }
    if issues.is_empty() {
        Ok(out)
    } else {
        Err(SourceIssues(issues))
    }
}

fn dir_issue(path: &Path, message: String) -> SourceIssues {
    SourceIssues(vec![SourceIssue {
        location: crate::diagnostics::Location {
            file: path.to_path_buf(),
            line: None,
            column: None,
        },
        field: String::new(),
        message,
    }])
}

/// SHA-256 over the package's files (names and contents), shown by status and explain.
pub fn package_digest(dir: &Path) -> String {
    let mut files = Vec::new();
    collect_files(dir, &mut files);
    files.sort();
    let mut hasher = Sha256::new();
    for f in files {
        hasher.update(
            f.strip_prefix(dir)
                .unwrap_or(&f)
                .to_string_lossy()
                .as_bytes(),
        );
        hasher.update([0]);
        if let Ok(bytes) = std::fs::read(&f) {
            hasher.update(&bytes);
        }
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    hex::encode(digest.get(..8).unwrap_or_default())
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                collect_files(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

/// Whether a stored `User` record is the principal's own. Principal ids are unique within a
/// tenant only, so the record of `User::"alice"` describes the alice of the tenant it names:
/// another tenant's alice (any tenant's issuer may mint that subject) gets none of its roles
/// or attributes. A platform principal, acting in whichever tenant a request names, takes a
/// record that says `platform: true`. A record that names no tenant applies to every tenant's
/// principal of that id.
fn record_applies(stored: &StoredEntity, tenant: &EntityUid, platform: bool) -> bool {
    match &stored.tenant {
        None => true,
        Some(own) if own == tenant.id().unescaped() => true,
        Some(_) => {
            platform
                && matches!(
                    stored.entity.attr("platform"),
                    Some(Ok(cedar_policy::EvalResult::Bool(true)))
                )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AuthMethod;

    fn example() -> AuthzEngine {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
        match AuthzEngine::load(&dir, &TenantRegistry::default(), 1000) {
            Ok(e) => e,
            Err(e) => panic!("{e}"),
        }
    }

    fn principal(id: &str, tenant: &str, roles: &[&str], mfa: bool) -> Principal {
        let mut p = Principal::anonymous();
        p.id = id.to_string();
        p.tenant = Some(Arc::from(tenant));
        p.roles = roles.iter().map(|r| r.to_string()).collect();
        p.auth = AuthMethod::Jwt { issuer: "i".into() };
        p.attributes
            .insert("mfa".into(), serde_json::Value::Bool(mfa));
        p
    }

    fn pro_tenant(id: &str) -> TenantSpec {
        toml::from_str(&format!("id = \"{id}\"\ntier = \"pro\"")).unwrap()
    }

    fn tuesday_ten_am_get() -> RequestFacts {
        RequestFacts {
            hour: 10,
            weekday: 2,
            method: "GET".into(),
            country: None,
            ip: None,
        }
    }

    fn decide(
        engine: &AuthzEngine,
        p: &Principal,
        tenant: &str,
        action: &str,
        resource: &str,
    ) -> Arc<Evaluation> {
        let tenant = pro_tenant(tenant);
        let facts = tuesday_ten_am_get();
        engine.decide(&DecisionInput {
            principal: p,
            tenant: &tenant,
            tier_features: &[],
            action,
            resource_type: resource,
            resource_id: "1",
            resource_attributes: &[],
            resource_record: Default::default(),
            principal_record: Default::default(),
            declared_facts: &[],
            facts: &facts,
        })
    }

    #[test]
    fn resource_ids_that_can_name_request_entities_key_the_cache() {
        let engine = example();
        // A principal of another tenant ("") on `Tenant` resources: one of them is its own
        // tenant's entity, which the request builds too, so the two decisions differ.
        let mut p = principal("", "", &["admin"], true);
        p.auth = AuthMethod::ApiKey { key_id: "k".into() };
        p.scopes = vec![")".into()];
        let attributes = vec![(String::new(), String::new())];
        for resource_type in ["Tenant", "User", "Role", "Action", "Project"] {
            engine.clear_caches();
            for resource_id in ["x", "", "admin", "projects:read"] {
                assert_cache_agrees(&engine, &p, resource_type, resource_id, &attributes);
            }
        }
    }

    /// `projects:read` of `Project::"1"` by `principal` in `tenant`, nothing else known.
    fn reads_project_1<'a>(
        principal: &'a Principal,
        tenant: &'a TenantSpec,
        facts: &'a RequestFacts,
    ) -> DecisionInput<'a> {
        DecisionInput {
            principal,
            tenant,
            tier_features: &[],
            action: "projects:read",
            resource_type: "Project",
            resource_id: "1",
            resource_attributes: &[],
            resource_record: Default::default(),
            principal_record: Default::default(),
            declared_facts: &[],
            facts,
        }
    }

    /// A tenant's own policies changed in the registry (an admin API `PUT`, a NOTIFY) change
    /// its next decision: the cached one was made under the old text. Before, the key held
    /// the tenant's id and tier but not its policies, and the allow kept being served.
    #[test]
    fn a_tenant_policy_change_is_not_answered_from_the_cache() {
        let engine = example();
        let reader = principal("alice", "acme", &["viewer"], false);
        let mut tenant = pro_tenant("acme");
        let facts = tuesday_ten_am_get();
        let allowed = |tenant: &TenantSpec| {
            engine
                .decide(&reads_project_1(&reader, tenant, &facts))
                .allowed
        };
        tenant.policies = Some(
            r#"@id("none") forbid (principal, action, resource) when { context.weekday == 99 };"#
                .into(),
        );
        assert!(
            allowed(&tenant),
            "the tenant's forbid does not apply on Tuesdays"
        );
        tenant.policies = Some(
            r#"@id("closed") forbid (principal, action == Action::"projects:read", resource);"#
                .into(),
        );
        assert!(!allowed(&tenant), "the changed forbid applies at once");
        tenant.policies = None;
        assert!(allowed(&tenant), "and no longer once removed");
    }

    /// A forbid whose evaluation fails (it reads an attribute of an entity the request does
    /// not have) refuses, rather than being skipped as Cedar skips a failing policy — which
    /// let the role's permit through. A permit that fails still allows nothing.
    #[test]
    fn a_forbid_that_fails_to_evaluate_refuses() {
        let engine = example();
        let reader = principal("alice", "acme", &["viewer"], false);
        let mut tenant = pro_tenant("acme");
        let facts = tuesday_ten_am_get();
        let evaluate =
            |tenant: &TenantSpec| engine.evaluate(&reads_project_1(&reader, tenant, &facts)).0;
        // `User::"nobody"` is no entity of the request: reading its tenant fails.
        tenant.policies = Some(
            r#"@id("nobody-in-sales") forbid (principal, action, resource)
               unless { User::"nobody".tenant == principal.tenant };"#
                .into(),
        );
        let refused = evaluate(&tenant);
        assert!(!refused.allowed, "{refused:?}");
        assert!(
            refused
                .policies
                .iter()
                .any(|p| p.ends_with("nobody-in-sales")),
            "{refused:?}"
        );
        assert!(!refused.errors.is_empty());
        tenant.policies = Some(
            r#"@id("nobody-permits") permit (principal, action, resource)
               when { User::"nobody".tenant == principal.tenant };"#
                .into(),
        );
        let evaluation = evaluate(&tenant);
        assert!(evaluation.allowed, "the role's permit: {evaluation:?}");
        assert!(!evaluation
            .policies
            .iter()
            .any(|p| p.ends_with("nobody-permits")));
    }

    /// `projects:read` of `resource_type::resource_id` by `p` in pro tenant acme: the decision
    /// cache's answer is what a fresh evaluation decides.
    fn assert_cache_agrees(
        engine: &AuthzEngine,
        p: &Principal,
        resource_type: &str,
        resource_id: &str,
        resource_attributes: &[(String, String)],
    ) {
        let tenant = pro_tenant("acme");
        let facts = tuesday_ten_am_get();
        let input = DecisionInput {
            principal: p,
            tenant: &tenant,
            tier_features: &[],
            action: "projects:read",
            resource_type,
            resource_id,
            resource_attributes,
            resource_record: Default::default(),
            principal_record: Default::default(),
            declared_facts: &[],
            facts: &facts,
        };
        let cached = engine.decide(&input);
        let (fresh, _) = engine.evaluate(&input);
        assert_eq!(
            *cached, fresh,
            "{} on {resource_type}::{resource_id:?}",
            p.id
        );
    }

    #[test]
    fn a_resource_that_may_be_the_principal_keys_the_cache_by_the_principal() {
        // Found by the `cedar_request` fuzz target: `User::"alice"` as the resource is the
        // principal's own entity when alice asks (her tenant, globex) and another user of the
        // request's tenant (acme) when bob asks, so tenant isolation refuses only bob; with
        // no resource attributes and no policy naming a user, the key left the principal out
        // and bob got alice's cached answer.
        let engine = example();
        for resource_type in ["User", "Project"] {
            engine.clear_caches();
            for id in ["alice", "bob"] {
                let p = principal(id, "globex", &["viewer"], false);
                assert_cache_agrees(&engine, &p, resource_type, "alice", &[]);
            }
        }
    }

    fn uses_of(text: &str) -> KeyUses {
        let set: PolicySet = text.parse().unwrap();
        let attrs = [
            ("department".to_string(), AttrType::String),
            ("email".to_string(), AttrType::String),
        ];
        KeyUses::of(
            set.policies(),
            &KeyNames {
                principal: &attrs,
                context: &ContextFacts::default(),
            },
        )
    }

    #[test]
    fn key_fields_cannot_run_into_each_other() {
        let write = |fields: &[&str]| {
            let mut key = KeyWriter(String::new());
            key.list(fields.iter().copied());
            key.0
        };
        assert_ne!(write(&["a\u{1f}b"]), write(&["a", "b"]));
        assert_ne!(write(&["a\\", "b"]), write(&["a\\\u{1f}b"]));
        assert_ne!(write(&["a\u{1d}"]), write(&["a"]));
        let claim = |v: serde_json::Value| {
            let mut key = KeyWriter(String::new());
            key.maybe(Some(&v), KeyWriter::json);
            key.0
        };
        let claims = [
            serde_json::json!(true),
            serde_json::json!(1),
            serde_json::json!("1"),
            serde_json::json!("true"),
            serde_json::json!(["1"]),
        ];
        let written: std::collections::HashSet<String> = claims.into_iter().map(claim).collect();
        assert_eq!(written.len(), 5);
        let mut absent = KeyWriter(String::new());
        absent.maybe(None::<&str>, KeyWriter::text);
        let mut empty = KeyWriter(String::new());
        empty.maybe(Some(""), KeyWriter::text);
        assert_ne!(absent.0, empty.0);
    }

    #[test]
    fn key_uses_come_from_what_conditions_read() {
        let none = KeyUses::default();
        // Words in annotations, ids and string literals are not reads.
        assert_eq!(
            uses_of(
                r#"@id("ip-hour-email") permit(principal, action, resource) when { context.auth == "ip weekday" };"#
            ),
            none
        );
        let u = uses_of(
            r#"permit(principal, action, resource) when { context.hour < 9 && context has country && context.country == "DE" };
               forbid(principal, action, resource) when { context has ip && context.ip.isInRange(ip("10.0.0.0/8")) };"#,
        );
        assert_eq!(
            u,
            KeyUses {
                hour: true,
                country: true,
                ip: true,
                ..none
            }
        );
        let u = uses_of(
            r#"permit(principal, action, resource) when { principal has email && principal.email like "*@acme.test" };
               permit(principal, action, resource) when { resource.owner.department == "eng" };"#,
        );
        assert_eq!(
            u,
            KeyUses {
                principal_attributes: 0b11,
                ..none
            }
        );
        // `context` compared whole reads all of it.
        let u = uses_of(r#"permit(principal, action, resource) when { context == {"hour": 1} };"#);
        assert!(
            u.hour && u.weekday && u.method && u.country && u.ip,
            "{u:?}"
        );
        let u = uses_of(
            r#"permit(principal == User::"u1", action, resource) when { resource == Project::"7" };"#,
        );
        assert!(u.principal_id && u.resource_id && !u.hour, "{u:?}");
    }

    /// A copy of the example package with `extra` as one more policy file.
    #[test]
    fn declared_request_facts_are_typed_and_key_the_cache_only_when_read() {
        let (dir, _) = package_with(
            r#"@id("deep-pages") forbid (principal, action == Action::"projects:read", resource)
               when { context has page && context.page > 100 };"#,
        );
        let schema = dir.path().join("schema.cedarschema");
        let text = std::fs::read_to_string(&schema).unwrap().replace(
            "  resource_found?: Bool,",
            "  resource_found?: Bool,\n  page?: Long,\n  plan?: String,",
        );
        std::fs::write(&schema, text).unwrap();
        let routes = dir.path().join("routes.toml");
        let mut text = std::fs::read_to_string(&routes).unwrap();
        text.push_str("\n[context]\npage = { query = \"page\" }\nplan = { header = \"x-plan\" }\n");
        std::fs::write(&routes, text).unwrap();
        let engine = AuthzEngine::load(dir.path(), &TenantRegistry::default(), 1000).unwrap();
        let names: Vec<_> = engine
            .context_facts()
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(names, ["page", "plan"]);

        let p = principal("alice", "acme", &["viewer"], false);
        let tenant = pro_tenant("acme");
        let facts = tuesday_ten_am_get();
        let decide = |page: Option<&str>, plan: Option<&str>| {
            let declared = [page.map(str::to_string), plan.map(str::to_string)];
            let input = DecisionInput {
                principal: &p,
                tenant: &tenant,
                tier_features: &[],
                action: "projects:read",
                resource_type: "Project",
                resource_id: "1",
                resource_attributes: &[],
                resource_record: ResourceRecord::NotCovered,
                principal_record: ResourceRecord::NotCovered,
                declared_facts: &declared,
                facts: &facts,
            };
            let cached = engine.decide(&input);
            assert_eq!(*cached, engine.evaluate(&input).0, "{page:?} {plan:?}");
            let uses = engine.uses;
            (
                cached.allowed,
                cache_key(&input, uses, 0, false, &engine.key_names()),
            )
        };
        let (shallow, key_3) = decide(Some("3"), None);
        let (deep, key_101) = decide(Some("101"), None);
        assert!(shallow && !deep);
        assert_ne!(key_3, key_101, "a fact a policy reads is in the key");
        // Not a Long: absent, so the forbid does not apply (and it is not an error).
        let (allowed, _) = decide(Some("many"), None);
        assert!(allowed);
        // A fact no policy reads stays out of the key.
        let (_, gold) = decide(Some("3"), Some("gold"));
        let (_, silver) = decide(Some("3"), Some("silver"));
        assert_eq!(gold, silver);
        assert_eq!(gold, key_3);
    }

    #[test]
    fn user_records_add_what_the_token_lacks_and_key_the_cache() {
        let (dir, _) = package_with(
            "@id(\"finance-deletes-projects\")\npermit (principal, action == Action::\"projects:delete\", resource)\n\
             when { principal is User && principal has department && principal.department == \"finance\" };\n",
        );
        // The package keeps a record of acme's alice: a department her token lacks, the editor
        // role her token lacks, and a platform flag the credential's value overrides.
        let path = dir.path().join("entities.json");
        let mut records: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        records.push(serde_json::json!({
            "uid": {"type": "User", "id": "alice"},
            "attrs": {"tenant": {"__entity": {"type": "Tenant", "id": "acme"}}, "platform": true, "department": "finance"},
            "parents": [{"type": "Role", "id": "editor"}],
        }));
        std::fs::write(&path, serde_json::to_vec(&records).unwrap()).unwrap();
        let engine = AuthzEngine::load(dir.path(), &TenantRegistry::default(), 1000).unwrap();
        let alice = principal("alice", "acme", &["viewer"], false);
        let bob = principal("bob", "acme", &["viewer"], false);
        let tenant = pro_tenant("acme");
        let globex = pro_tenant("globex");
        let facts = tuesday_ten_am_get();
        let ask = |p: &Principal, action: &str, resource_type: &str| {
            let tenant = if p.tenant.as_deref() == Some("globex") {
                &globex
            } else {
                &tenant
            };
            let input = DecisionInput {
                principal: p,
                tenant,
                tier_features: &[],
                action,
                resource_type,
                resource_id: "9",
                resource_attributes: &[],
                resource_record: ResourceRecord::NotCovered,
                principal_record: engine.file_record(engine.user_type(), &p.id),
                declared_facts: &[],
                facts: &facts,
            };
            let cached = engine.decide(&input);
            let (fresh, _) = engine.evaluate(&input);
            assert_eq!(*cached, fresh, "{} {action}", p.id);
            fresh.allowed
        };
        // The record's department and role apply; bob has no record.
        assert!(
            ask(&alice, "projects:delete", "Project"),
            "department from the record"
        );
        assert!(!ask(&bob, "projects:delete", "Project"));
        assert!(
            ask(&alice, "projects:update", "Project"),
            "editor from the record"
        );
        assert!(!ask(&bob, "projects:update", "Project"));
        // Another tenant's alice (any tenant's issuer may mint that subject) is someone else:
        // neither the department nor the role of acme's alice is hers.
        let other_alice = principal("alice", "globex", &["viewer"], false);
        assert!(!ask(&other_alice, "projects:delete", "Project"));
        assert!(!ask(&other_alice, "projects:update", "Project"));
        // ... unless she is a platform principal and the record one of a platform user (the
        // guards let platform staff read only: the record shows in the entities Cedar sees).
        let mut platform_alice = principal("alice", "globex", &["viewer"], false);
        platform_alice.platform = true;
        let seen_by_cedar = |p: &Principal| {
            let input = DecisionInput {
                principal: p,
                tenant: &globex,
                tier_features: &[],
                action: "projects:read",
                resource_type: "Project",
                resource_id: "9",
                resource_attributes: &[],
                resource_record: ResourceRecord::NotCovered,
                principal_record: engine.file_record("User", "alice"),
                declared_facts: &[],
                facts: &facts,
            };
            let (_, entities) = engine.evaluate(&input);
            entities.unwrap().to_json_value().unwrap().to_string()
        };
        assert!(seen_by_cedar(&platform_alice).contains("\"department\":\"finance\""));
        assert!(!seen_by_cedar(&other_alice).contains("finance"));
        // The credential's platform flag stays: the record's `platform` is not acme alice's.
        assert!(matches!(
            engine.file_record("User", "alice"),
            ResourceRecord::Found(_)
        ));
        let input = DecisionInput {
            principal: &alice,
            tenant: &tenant,
            tier_features: &[],
            action: "projects:read",
            resource_type: "Project",
            resource_id: "9",
            resource_attributes: &[],
            resource_record: ResourceRecord::NotCovered,
            principal_record: engine.file_record("User", "alice"),
            declared_facts: &[],
            facts: &facts,
        };
        let (_, entities) = engine.evaluate(&input);
        let entities = entities.unwrap().to_json_value().unwrap().to_string();
        assert!(
            entities.contains("\"department\":\"finance\""),
            "{entities}"
        );
        assert!(!entities.contains("\"platform\":true"), "{entities}");
    }

    fn package_with(extra: &str) -> (tempfile::TempDir, AuthzEngine) {
        fn copy(from: &Path, to: &Path) {
            std::fs::create_dir_all(to).unwrap();
            for entry in std::fs::read_dir(from).unwrap().flatten() {
                let target = to.join(entry.file_name());
                if entry.path().is_dir() {
                    copy(&entry.path(), &target);
                } else {
                    std::fs::copy(entry.path(), target).unwrap();
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        copy(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies"),
            dir.path(),
        );
        std::fs::write(dir.path().join("generated.cedar"), extra).unwrap();
        match AuthzEngine::load(dir.path(), &TenantRegistry::default(), 1000) {
            Ok(engine) => (dir, engine),
            Err(e) => panic!("{e}\n{extra}"),
        }
    }

    mod cached_equals_uncached {
        use super::*;
        use proptest::prelude::*;

        /// Conditions over every input a decision can read, valid against the example schema.
        fn condition() -> impl Strategy<Value = String> {
            let atom = prop_oneof![
                (0i64..24).prop_map(|h| format!("context.hour < {h}")),
                (1i64..8).prop_map(|d| format!("context.weekday == {d}")),
                prop_oneof![Just("GET"), Just("DELETE")]
                    .prop_map(|m| format!("context.method == \"{m}\"")),
                prop_oneof![Just("DE"), Just("US")]
                    .prop_map(|c| format!("(context has country && context.country == \"{c}\")")),
                Just("(context has ip && context.ip.isInRange(ip(\"10.0.0.0/8\")))".to_string()),
                Just("context.mfa".to_string()),
                Just("context.auth == \"jwt\"".to_string()),
                Just("(principal is User && principal has email && principal.email like \"*@acme.test\")".to_string()),
                prop_oneof![Just("eng"), Just("sales")].prop_map(|d| format!(
                    "(principal is User && principal has department && principal.department == \"{d}\")"
                )),
                prop_oneof![Just("u1"), Just("u2")].prop_map(|u| format!("principal == User::\"{u}\"")),
                prop_oneof![Just("7"), Just("8")].prop_map(|r| format!("resource == Project::\"{r}\"")),
                // Store records and schema-typed claims.
                Just("(resource has owner && resource.owner == principal)".to_string()),
                Just("(principal is User && resource.tenant == principal.tenant)".to_string()),
                (0i64..5).prop_map(|c| format!(
                    "(principal is User && principal has clearance && principal.clearance > {c})"
                )),
            ];
            atom.prop_recursive(2, 6, 2, |inner| {
                prop_oneof![
                    (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} && {b})")),
                    (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} || {b})")),
                    inner.prop_map(|a| format!("!({a})")),
                ]
            })
        }

        fn policies() -> impl Strategy<Value = String> {
            prop::collection::vec(
                (
                    prop_oneof![Just("permit"), Just("forbid")],
                    prop_oneof![Just("projects:read"), Just("projects:delete")],
                    condition(),
                ),
                1..4,
            )
            .prop_map(|rules| {
                rules
                    .iter()
                    .enumerate()
                    .map(|(i, (effect, action, when))| {
                        format!(
                            "@id(\"generated-{i}\")\n{effect}(principal, action == Action::\"{action}\", resource)\nwhen {{ {when} }};\n"
                        )
                    })
                    .collect()
            })
        }

        #[derive(Debug, Clone)]
        struct Ask {
            principal: &'static str,
            email: Option<&'static str>,
            department: Option<&'static str>,
            mfa: bool,
            admin: bool,
            action: &'static str,
            resource: &'static str,
            hour: i64,
            weekday: i64,
            method: &'static str,
            country: Option<&'static str>,
            ip: Option<&'static str>,
            clearance: Option<i64>,
            /// The store: not covering Project (`None`), or its record (tenant, owner), or
            /// no record (`Some(None)`).
            record: Option<Option<(&'static str, Option<&'static str>)>>,
        }

        fn asks() -> impl Strategy<Value = Vec<Ask>> {
            let ask = (
                (
                    prop_oneof![Just("u1"), Just("u2")],
                    prop::option::of(prop_oneof![Just("a@acme.test"), Just("b@other.test")]),
                    prop::option::of(prop_oneof![Just("eng"), Just("sales")]),
                    any::<bool>(),
                    any::<bool>(),
                    prop_oneof![Just("projects:read"), Just("projects:delete")],
                    prop_oneof![Just("7"), Just("8")],
                ),
                (
                    0i64..24,
                    1i64..8,
                    prop_oneof![Just("GET"), Just("DELETE")],
                    prop::option::of(prop_oneof![Just("DE"), Just("US")]),
                    prop::option::of(prop_oneof![Just("10.1.2.3"), Just("192.168.1.1")]),
                ),
                (
                    prop::option::of(0i64..5),
                    prop::option::of(prop::option::of((
                        prop_oneof![Just("acme"), Just("globex")],
                        prop::option::of(prop_oneof![Just("u1"), Just("u2")]),
                    ))),
                ),
            )
                .prop_map(
                    |(
                        (principal, email, department, mfa, admin, action, resource),
                        (hour, weekday, method, country, ip),
                        (clearance, record),
                    )| Ask {
                        principal,
                        email,
                        department,
                        mfa,
                        admin,
                        action,
                        resource,
                        hour,
                        weekday,
                        method,
                        country,
                        ip,
                        clearance,
                        record,
                    },
                );
            prop::collection::vec(ask, 3..6)
        }

        /// `ask` and, after it, each request that differs from it in one input only: any
        /// input the key leaves out while a policy reads it shows as a wrong cached answer.
        fn with_neighbours(ask: &Ask) -> Vec<Ask> {
            let other = |v: Option<&'static str>, values: [&'static str; 2]| match v {
                None => Some(values[0]),
                Some(x) if x == values[0] => Some(values[1]),
                Some(_) => None,
            };
            let mut out = vec![ask.clone()];
            let mut vary = |change: &dyn Fn(&mut Ask)| {
                let mut next = ask.clone();
                change(&mut next);
                out.push(next);
            };
            vary(&|a| a.principal = if a.principal == "u1" { "u2" } else { "u1" });
            vary(&|a| a.email = other(a.email, ["a@acme.test", "b@other.test"]));
            vary(&|a| a.department = other(a.department, ["eng", "sales"]));
            vary(&|a| a.mfa = !a.mfa);
            vary(&|a| a.admin = !a.admin);
            vary(&|a| a.resource = if a.resource == "7" { "8" } else { "7" });
            vary(&|a| a.hour = (a.hour + 1) % 24);
            vary(&|a| a.hour = (a.hour + 12) % 24);
            vary(&|a| a.weekday = a.weekday % 7 + 1);
            vary(&|a| a.method = if a.method == "GET" { "DELETE" } else { "GET" });
            vary(&|a| a.country = other(a.country, ["DE", "US"]));
            vary(&|a| a.ip = other(a.ip, ["10.1.2.3", "192.168.1.1"]));
            vary(&|a| a.clearance = a.clearance.map_or(Some(3), |c| (c < 4).then_some(c + 1)));
            vary(&|a| {
                a.record = match a.record {
                    None => Some(None),
                    Some(None) => Some(Some(("acme", Some("u1")))),
                    Some(Some(_)) => None,
                }
            });
            vary(&|a| {
                if let Some(Some((tenant, owner))) = a.record {
                    let tenant = if tenant == "acme" { "globex" } else { "acme" };
                    a.record = Some(Some((tenant, owner)));
                }
            });
            vary(&|a| {
                if let Some(Some((tenant, owner))) = a.record {
                    let owner = match owner {
                        None => Some("u1"),
                        Some("u1") => Some("u2"),
                        Some(_) => None,
                    };
                    a.record = Some(Some((tenant, owner)));
                }
            });
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

            /// Whatever the policies read, a decision served from the cache equals the one
            /// evaluated afresh: the key holds every input the policies read.
            #[test]
            fn for_random_policies_and_requests(extra in policies(), asks in asks()) {
                let (_dir, engine) = package_with(&extra);
                let tenant = pro_tenant("acme");
                for ask in asks.iter().flat_map(with_neighbours) {
                    let roles: &[&str] = if ask.admin { &["admin"] } else { &["viewer"] };
                    let mut p = principal(ask.principal, "acme", roles, ask.mfa);
                    if let Some(email) = ask.email {
                        p.attributes.insert("email".into(), serde_json::Value::from(email));
                    }
                    if let Some(department) = ask.department {
                        p.attributes.insert("department".into(), serde_json::Value::from(department));
                    }
                    if let Some(clearance) = ask.clearance {
                        p.attributes.insert("clearance".into(), serde_json::Value::from(clearance));
                    }
                    let stored = ask.record.flatten().map(|(tenant, owner)| {
                        let mut attrs = serde_json::json!({
                            "tenant": {"__entity": {"type": "Tenant", "id": tenant}}
                        });
                        if let Some(owner) = owner {
                            attrs["owner"] = serde_json::json!({"__entity": {"type": "User", "id": owner}});
                        }
                        let json = serde_json::json!({
                            "uid": {"type": "Project", "id": ask.resource},
                            "attrs": attrs,
                            "parents": [],
                        });
                        StoredEntity::from_json(json, engine.schema()).unwrap()
                    });
                    let resource_record = match (&ask.record, &stored) {
                        (None, _) => ResourceRecord::NotCovered,
                        (Some(_), Some(record)) => ResourceRecord::Found(record),
                        (Some(_), None) => ResourceRecord::Missing,
                    };
                    let facts = RequestFacts {
                        hour: ask.hour,
                        weekday: ask.weekday,
                        method: ask.method.to_string(),
                        country: ask.country.map(str::to_string),
                        ip: ask.ip.map(|ip| ip.parse().unwrap()),
                    };
                    let input = DecisionInput {
                        principal: &p,
                        tenant: &tenant,
                        tier_features: &[],
                        action: ask.action,
                        resource_type: "Project",
                        resource_id: ask.resource,
                        resource_attributes: &[],
                        resource_record,
                        principal_record: ResourceRecord::NotCovered,
                        declared_facts: &[],
                        facts: &facts,
                    };
                    let cached = engine.decide(&input);
                    let (fresh, _) = engine.evaluate(&input);
                    prop_assert_eq!(&*cached, &fresh, "{:?}\n{}", &ask, extra);
                }
            }
        }
    }

    #[test]
    fn example_package_loads_and_decides() {
        let engine = example();
        assert!(engine.policy_count() > 10);
        let viewer = principal("v", "acme", &["viewer"], false);
        let e = decide(&engine, &viewer, "acme", "projects:read", "Project");
        assert!(e.allowed, "{e:?}");
        assert_eq!(e.policies, vec!["viewer-reads"]);
        assert!(!decide(&engine, &viewer, "acme", "projects:delete", "Project").allowed);
        let operator = principal("o", "acme", &["platform-operator"], true);
        assert!(decide(&engine, &operator, "acme", "projects:delete", "Project").allowed);
        // Isolation: the principal's tenant differs from the resource's.
        let e = decide(&engine, &operator, "globex", "projects:read", "Project");
        assert!(!e.allowed);
        assert_eq!(e.policies, vec!["tenant-isolation"]);
        // Cached answers are identical.
        assert_eq!(
            decide(&engine, &viewer, "acme", "projects:read", "Project"),
            decide(&engine, &viewer, "acme", "projects:read", "Project")
        );
    }
}
