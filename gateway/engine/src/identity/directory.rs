//! The principal directory: each tenant's users as its identity provider provisions them over
//! SCIM 2.0 (RFC 7643), and the one fact the request path needs from it — whether a principal
//! has been deactivated or deleted, so its still-valid tokens and the API keys it owns are
//! refused (`401 principal-deactivated`).
//!
//! A user's `userName` (and `externalId`, when set) is the principal id its tokens carry (the
//! JWT `sub`). SCIM groups (`/Groups`) hold users by id; the request path adds the names of a
//! principal's groups to its roles (each tenant may rename them, `scim.group_roles`), so an
//! IdP's group membership decides what policies let the user do. The request path reads an immutable snapshot (arc-swap): one hash lookup, and
//! none at all while no principal of any tenant is deactivated. Writes (the SCIM API) replace
//! the snapshot after the store has the change: a JSON file written atomically (one replica),
//! or a PostgreSQL table whose trigger NOTIFYs every replica of each changed row; each
//! replica's follower applies it to its snapshot ([`Directory::follow`]), so a deactivation
//! reaches every replica within the notification's round trip.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One user of a tenant, as SCIM describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectoryUser {
    /// The directory's own id (a UUID), stable for the user's life.
    pub id: String,
    /// Unique within the tenant: the principal id of the user's tokens.
    pub user_name: String,
    /// The provisioning client's id for the user; also matched against principal ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    pub active: bool,
    /// Every other attribute the client sent (`name`, `emails`, `displayName`, …), kept as is.
    #[serde(default)]
    pub attributes: Map<String, Value>,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339.
    pub last_modified: String,
    /// Incremented on every change (the SCIM `meta.version` ETag).
    pub version: u64,
    /// The user's browser sessions that are over before their time.
    #[serde(flatten)]
    pub sessions: EndedSessions,
}

/// A user's browser sessions that are over before their time. Not SCIM attributes: a SCIM
/// replacement of the user keeps them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndedSessions {
    /// Sessions that began before this moment (ms since the epoch) are over: the identity
    /// provider logged the user out (back-channel logout).
    #[serde(
        default,
        rename = "sessions_not_before",
        skip_serializing_if = "Option::is_none"
    )]
    pub not_before: Option<u64>,
    /// Single sessions the user logged out of, each kept until its own end (a copy of the
    /// cookie must not outlive the logout).
    #[serde(
        default,
        rename = "logged_out_sessions",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub logged_out: Vec<LoggedOutSession>,
}

/// One browser session ended by its logout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedOutSession {
    /// When the session began (ms since the epoch): with the principal, what names it.
    pub login: u64,
    /// When it would have ended by itself (ms): forgotten after that.
    pub end: u64,
}

impl EndedSessions {
    /// Whether the session of this user that began at `login` (ms) is over.
    pub fn ends(&self, login: u64) -> bool {
        self.not_before.is_some_and(|floor| login <= floor)
            || self.logged_out.iter().any(|s| s.login == login)
    }

    fn is_empty(&self) -> bool {
        self.not_before.is_none() && self.logged_out.is_empty()
    }
}

impl DirectoryUser {
    /// A new active user named `user_name`, created `now` (RFC 3339).
    pub fn new(user_name: &str, now: String) -> DirectoryUser {
        DirectoryUser {
            id: uuid::Uuid::new_v4().to_string(),
            user_name: user_name.to_string(),
            external_id: None,
            active: true,
            attributes: Map::new(),
            created: now.clone(),
            last_modified: now,
            version: 1,
            sessions: EndedSessions::default(),
        }
    }
}

/// One group of a tenant, as SCIM describes it: its members are users of the same tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectoryGroup {
    /// The directory's own id (a UUID).
    pub id: String,
    /// Unique within the tenant (case-insensitively); becomes a role of every member.
    pub display_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// Ids of member users. A member deleted from the directory stays listed here until the
    /// group is next written, but counts for nothing.
    #[serde(default)]
    pub members: Vec<String>,
    /// Every other attribute the client sent, kept as is.
    #[serde(default)]
    pub attributes: Map<String, Value>,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339.
    pub last_modified: String,
    pub version: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DirectoryError {
    #[error("userName `{0}` is taken in this tenant")]
    UserNameTaken(String),
    #[error("no user `{0}`")]
    NoSuchUser(String),
    #[error("displayName `{0}` is taken by another group of this tenant")]
    GroupNameTaken(String),
    #[error("no group `{0}`")]
    NoSuchGroup(String),
    #[error("member `{0}` is not a user of this tenant")]
    NoSuchMember(String),
    #[error("the directory store failed: {0}")]
    Store(String),
    #[error("this tenant has {limit} {what}, the most the directory keeps for one tenant")]
    TenantFull { what: &'static str, limit: usize },
    /// A shared store refused a write: another replica changed the row (named as its change
    /// notice names it) since this replica read it. The change is made again on the new row.
    #[error("`{0}` was changed on another replica at the same time; retry")]
    ChangedElsewhere(String),
    /// The change required another version of the resource (a SCIM `If-Match`).
    #[error("`{0}` has changed since it was read")]
    NotAtVersion(String),
}

/// How many times a change is made again when other replicas keep changing its row first.
const CHANGED_ELSEWHERE_ATTEMPTS: usize = 8;

/// The most users, and groups, the directory keeps for one tenant: every replica holds every
/// tenant's directory in memory, so one tenant's provisioning client must not fill it.
pub const MAX_USERS_PER_TENANT: usize = 250_000;
pub const MAX_GROUPS_PER_TENANT: usize = 25_000;

/// The directory at one moment.
#[derive(Debug, Default, Serialize, Deserialize)]
struct DirectoryState {
    /// tenant → user id → user.
    users: BTreeMap<String, BTreeMap<String, DirectoryUser>>,
    /// `tenant \0 principal` of users deleted from the directory: refused like deactivated
    /// ones until a user of that name is created again.
    #[serde(default)]
    deleted: HashSet<String>,
    /// tenant → group id → group.
    #[serde(default)]
    groups: BTreeMap<String, BTreeMap<String, DirectoryGroup>>,
    /// Derived: `tenant \0 principal` of every refused principal (deactivated or deleted).
    #[serde(skip)]
    refused: HashSet<String>,
    /// Derived: `tenant \0 principal` → the display names of the principal's groups.
    #[serde(skip)]
    group_names: HashMap<String, Vec<String>>,
    /// Derived: `tenant \0 principal` → the principal's ended sessions, for users with any.
    #[serde(skip)]
    ended_sessions: HashMap<String, EndedSessions>,
}

impl DirectoryState {
    /// The stored parts of the state, to change and derive again.
    fn to_next(&self) -> DirectoryState {
        DirectoryState {
            users: self.users.clone(),
            deleted: self.deleted.clone(),
            groups: self.groups.clone(),
            refused: HashSet::new(),
            group_names: HashMap::new(),
            ended_sessions: HashMap::new(),
        }
    }

    fn derive(mut self) -> Self {
        let mut group_names: HashMap<String, Vec<String>> = HashMap::new();
        for (tenant, groups) in &self.groups {
            let Some(users) = self.users.get(tenant) else {
                continue;
            };
            for group in groups.values() {
                for user in group.members.iter().filter_map(|id| users.get(id)) {
                    let names = std::iter::once(&user.user_name).chain(user.external_id.as_ref());
                    for name in names {
                        let entry = group_names.entry(grant_key(tenant, name)).or_default();
                        if !entry.contains(&group.display_name) {
                            entry.push(group.display_name.clone());
                        }
                    }
                }
            }
        }
        self.group_names = group_names;
        let mut ended_sessions = HashMap::new();
        for (tenant, users) in &self.users {
            for user in users.values().filter(|u| !u.sessions.is_empty()) {
                ended_sessions.insert(key(tenant, &user.user_name), user.sessions.clone());
                if let Some(external) = &user.external_id {
                    ended_sessions.insert(key(tenant, external), user.sessions.clone());
                }
            }
        }
        self.ended_sessions = ended_sessions;
        let mut refused = self.deleted.clone();
        for (tenant, users) in &self.users {
            for user in users.values().filter(|u| !u.active) {
                refused.insert(key(tenant, &user.user_name));
                if let Some(external) = &user.external_id {
                    refused.insert(key(tenant, external));
                }
            }
        }
        self.refused = refused;
        self
    }
}

/// `tenant \0 principal`, the principal lower-cased as Unicode does it, for what takes from a
/// principal (refusals, ended sessions): SCIM user names are case-insensitive, so `Alice`
/// deactivated refuses a token whose `sub` is `alice`. Unicode folds more names together than
/// the directory's ASCII uniqueness (`\u{212A}ate`, KELVIN SIGN, folds to `kate`), which here
/// errs on the safe side; the file store's tombstones are kept in this form.
fn key(tenant: &str, principal: &str) -> String {
    format!("{tenant}\u{0}{}", principal.to_lowercase())
}

/// `tenant \0 principal`, ASCII lower-cased, for what gives a principal something (its groups'
/// roles): exactly the folding of the directory's name uniqueness, so a name the directory
/// holds apart from a user's (`\u{212A}ate` from `kate`) never takes that user's roles.
fn grant_key(tenant: &str, principal: &str) -> String {
    format!("{tenant}\u{0}{}", principal.to_ascii_lowercase())
}

/// Whether a tenant's `resources` (users or groups by id) have room for the one with `id`: a
/// replaced one always has, a new one while the tenant has fewer than `limit`.
fn room_for<T>(
    resources: Option<&BTreeMap<String, T>>,
    id: &str,
    what: &'static str,
    limit: usize,
) -> Result<(), DirectoryError> {
    let new = !resources.is_some_and(|r| r.contains_key(id));
    if new && resources.map_or(0, BTreeMap::len) >= limit {
        return Err(DirectoryError::TenantFull { what, limit });
    }
    Ok(())
}

/// Replaces the file store's document with `state` atomically.
async fn write_file(path: &std::path::Path, state: &DirectoryState) -> Result<(), DirectoryError> {
    let bytes =
        serde_json::to_vec_pretty(state).map_err(|e| DirectoryError::Store(e.to_string()))?;
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::durable::write_atomically(&path, &bytes)
    })
    .await
    .map_err(|e| DirectoryError::Store(e.to_string()))?
    .map_err(|e| DirectoryError::Store(e.to_string()))
}

/// Where the directory is kept.
#[derive(Debug, Clone)]
pub enum DirectoryStore {
    /// Nowhere (tests; a restart forgets it).
    Memory,
    /// One JSON document, replaced atomically on every change.
    File(PathBuf),
    /// A table shared by every replica (`<table>`: one row per user, deleted users kept as
    /// tombstones), changes NOTIFYed on `<table>_changed`.
    Postgres {
        config: crate::db::PostgresConfig,
        table: String,
    },
}

/// One change of the directory, as stores write it.
enum Change<'a> {
    /// A new user, or a replacement of the user this replica read at version `read` (a
    /// shared store refuses it if the row has changed since).
    Save {
        tenant: &'a str,
        user: &'a DirectoryUser,
        read: Option<u64>,
    },
    Delete {
        tenant: &'a str,
        user: &'a DirectoryUser,
    },
    /// As `Save`, for a group.
    SaveGroup {
        tenant: &'a str,
        group: &'a DirectoryGroup,
        read: Option<u64>,
    },
    DeleteGroup {
        tenant: &'a str,
        id: &'a str,
    },
}

/// The principal directory of every tenant.
pub struct Directory {
    state: ArcSwap<DirectoryState>,
    store: DirectoryStore,
    /// One writer at a time (reads never wait).
    writing: tokio::sync::Mutex<()>,
    /// The PostgreSQL store's connection for writes, made on first use and replaced after a
    /// failure.
    pg_writer: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
}

impl Default for Directory {
    /// An empty directory kept in memory.
    fn default() -> Self {
        Directory {
            state: ArcSwap::from_pointee(DirectoryState::default()),
            store: DirectoryStore::Memory,
            writing: tokio::sync::Mutex::new(()),
            pg_writer: tokio::sync::Mutex::new(None),
        }
    }
}

impl Directory {
    /// Opens a directory kept in PostgreSQL: creates the table and its trigger if missing and
    /// reads it; [`Directory::follow`] then keeps it current.
    pub async fn open_postgres(
        config: crate::db::PostgresConfig,
        table: String,
    ) -> Result<Directory, DirectoryError> {
        if !crate::tenancy::postgres::is_identifier(&table) {
            return Err(DirectoryError::Store(format!(
                "`{table}` is not a valid table name"
            )));
        }
        let client = crate::db::connect_config(&config, None)
            .await
            .map_err(|e| DirectoryError::Store(e.to_string()))?;
        pg::migrate(&client, &table).await?;
        let state = pg::load_all(&client, &table).await?;
        Ok(Directory {
            state: ArcSwap::from_pointee(state.derive()),
            store: DirectoryStore::Postgres { config, table },
            writing: tokio::sync::Mutex::new(()),
            pg_writer: tokio::sync::Mutex::new(None),
        })
    }

    /// Opens the directory, reading what the store holds (a file; PostgreSQL: use
    /// [`Directory::open_postgres`]).
    pub fn open(store: DirectoryStore) -> Result<Directory, DirectoryError> {
        let state = match &store {
            DirectoryStore::Memory | DirectoryStore::Postgres { .. } => DirectoryState::default(),
            DirectoryStore::File(path) => match std::fs::read(path) {
                Ok(bytes) => serde_json::from_slice::<DirectoryState>(&bytes)
                    .map_err(|e| DirectoryError::Store(format!("{}: {e}", path.display())))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => DirectoryState::default(),
                Err(e) => return Err(DirectoryError::Store(format!("{}: {e}", path.display()))),
            },
        };
        Ok(Directory {
            state: ArcSwap::from_pointee(state.derive()),
            store,
            writing: tokio::sync::Mutex::new(()),
            pg_writer: tokio::sync::Mutex::new(None),
        })
    }

    /// Whether requests of `principal` in `tenant` are refused (deactivated or deleted).
    pub fn is_refused(&self, tenant: &str, principal: &str) -> bool {
        let state = self.state.load();
        !state.refused.is_empty() && state.refused.contains(&key(tenant, principal))
    }

    /// Whether any principal at all is refused (the request path skips the lookup otherwise).
    pub fn refuses_anyone(&self) -> bool {
        !self.state.load().refused.is_empty()
    }

    /// A tenant's users in `userName` order, optionally only the one with `user_name`.
    pub fn users(&self, tenant: &str, user_name: Option<&str>) -> Vec<DirectoryUser> {
        let state = self.state.load();
        let mut users: Vec<DirectoryUser> = state
            .users
            .get(tenant)
            .into_iter()
            .flat_map(|u| u.values())
            .filter(|u| user_name.is_none_or(|n| u.user_name.eq_ignore_ascii_case(n)))
            .cloned()
            .collect();
        users.sort_by(|a, b| a.user_name.cmp(&b.user_name));
        users
    }

    pub fn user(&self, tenant: &str, id: &str) -> Option<DirectoryUser> {
        self.state.load().users.get(tenant)?.get(id).cloned()
    }

    /// Creates `user` (its `id` is new) or replaces the user with its `id`; the `userName`
    /// must be unique in the tenant (case-insensitively, as SCIM says).
    pub async fn save(
        &self,
        tenant: &str,
        user: DirectoryUser,
    ) -> Result<DirectoryUser, DirectoryError> {
        let _writing = self.writing.lock().await;
        self.save_writing(tenant, user).await
    }

    /// Changes the user with `id` as `change` says, reading and writing under the write lock,
    /// so two changes at once (an identity provider's concurrent PATCHes) both count. The
    /// user's ended sessions are kept (not SCIM attributes). `Ok(Err(e))`: `change` refused.
    /// Returns the user before and after.
    pub async fn update_user<E>(
        &self,
        tenant: &str,
        id: &str,
        change: impl Fn(&DirectoryUser) -> Result<DirectoryUser, E>,
    ) -> Result<Result<(DirectoryUser, DirectoryUser), E>, DirectoryError> {
        let _writing = self.writing.lock().await;
        let mut attempts = 0;
        loop {
            let changed = self.update_user_writing(tenant, id, &change).await;
            if !self.again(&changed, &mut attempts).await? {
                return changed;
            }
        }
    }

    /// One attempt of [`Directory::update_user`], the caller holding the write lock.
    async fn update_user_writing<E>(
        &self,
        tenant: &str,
        id: &str,
        change: &impl Fn(&DirectoryUser) -> Result<DirectoryUser, E>,
    ) -> Result<Result<(DirectoryUser, DirectoryUser), E>, DirectoryError> {
        let before = self
            .user(tenant, id)
            .ok_or_else(|| DirectoryError::NoSuchUser(id.to_string()))?;
        let mut after = match change(&before) {
            Ok(after) => after,
            Err(e) => return Ok(Err(e)),
        };
        after.sessions = before.sessions.clone();
        let after = self.save_writing(tenant, after).await?;
        Ok(Ok((before, after)))
    }

    /// Whether a change that ended in `result` is to be made again: a shared store refused
    /// its write because another replica changed the row first, the row is read from the
    /// store now, and fewer than [`CHANGED_ELSEWHERE_ATTEMPTS`] were made — so concurrent
    /// changes on different replicas all count. The caller holds the write lock.
    async fn again<T>(
        &self,
        result: &Result<T, DirectoryError>,
        attempts: &mut usize,
    ) -> Result<bool, DirectoryError> {
        *attempts += 1;
        match result {
            Err(DirectoryError::ChangedElsewhere(row))
                if *attempts < CHANGED_ELSEWHERE_ATTEMPTS =>
            {
                self.reread_rows_writing(&HashSet::from([row.clone()]))
                    .await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// [`Directory::save`], the caller holding the write lock.
    async fn save_writing(
        &self,
        tenant: &str,
        user: DirectoryUser,
    ) -> Result<DirectoryUser, DirectoryError> {
        let current = self.state.load();
        let taken = current.users.get(tenant).is_some_and(|users| {
            users
                .values()
                .any(|u| u.id != user.id && u.user_name.eq_ignore_ascii_case(&user.user_name))
        });
        if taken {
            return Err(DirectoryError::UserNameTaken(user.user_name));
        }
        room_for(
            current.users.get(tenant),
            &user.id,
            "users",
            MAX_USERS_PER_TENANT,
        )?;
        let read = current
            .users
            .get(tenant)
            .and_then(|users| users.get(&user.id))
            .map(|known| known.version);
        let mut next = current.to_next();
        next.deleted.remove(&key(tenant, &user.user_name));
        next.users
            .entry(tenant.to_string())
            .or_default()
            .insert(user.id.clone(), user.clone());
        self.commit(
            next,
            Change::Save {
                tenant,
                user: &user,
                read,
            },
        )
        .await?;
        Ok(user)
    }

    /// Sets whether `principal` of `tenant` may make requests (the admin API's deactivate and
    /// activate): the directory user of that name, created when the directory has none yet
    /// (a principal that only ever came with tokens).
    pub async fn set_active(
        &self,
        tenant: &str,
        principal: &str,
        active: bool,
    ) -> Result<DirectoryUser, DirectoryError> {
        let changed = self.with_active(tenant, principal, active);
        self.save_active(tenant, principal, active, changed).await
    }

    /// Saves `changed` (the principal's user as [`Self::with_active`] made it). When the name
    /// was listed meanwhile — by just-in-time provisioning, which lists a principal after its
    /// first request, on this replica or another, or by SCIM — `changed` is a second user of
    /// that name and the store refuses it: that user is changed instead, as the store holds it
    /// (a shared store's is read first: this replica may not have heard of it yet).
    async fn save_active(
        &self,
        tenant: &str,
        principal: &str,
        active: bool,
        changed: DirectoryUser,
    ) -> Result<DirectoryUser, DirectoryError> {
        match self.save(tenant, changed).await {
            Err(DirectoryError::UserNameTaken(_) | DirectoryError::ChangedElsewhere(_)) => {
                self.reread_user(tenant, principal).await?;
                let _writing = self.writing.lock().await;
                let mut attempts = 0;
                loop {
                    let changed = self.with_active(tenant, principal, active);
                    let saved = self.save_writing(tenant, changed).await;
                    if !self.again(&saved, &mut attempts).await? {
                        return saved;
                    }
                }
            }
            other => other,
        }
    }

    /// The directory user named `principal` as this replica knows it (or a new one), with
    /// `active` set.
    fn with_active(&self, tenant: &str, principal: &str, active: bool) -> DirectoryUser {
        let now = jiff::Timestamp::now().to_string();
        match self.users(tenant, Some(principal)).into_iter().next() {
            Some(user) => DirectoryUser {
                active,
                last_modified: now,
                version: user.version + 1,
                ..user
            },
            None => DirectoryUser {
                active,
                ..DirectoryUser::new(principal, now)
            },
        }
    }

    /// Reads the users named `user_name` of `tenant` from a shared store into this replica's
    /// view, ahead of their change notification (a replica's own store: nothing to read).
    async fn reread_user(&self, tenant: &str, user_name: &str) -> Result<(), DirectoryError> {
        let DirectoryStore::Postgres { config, table } = &self.store else {
            return Ok(());
        };
        let _writing = self.writing.lock().await;
        let rows = {
            let mut writer = self.pg_writer.lock().await;
            let client = pg::writer_client(&mut writer, config).await?;
            let rows = pg::load_named(&client, table, tenant, user_name).await?;
            *writer = Some(client);
            rows
        };
        if rows.is_empty() {
            return Ok(());
        }
        let mut next = self.state.load().to_next();
        for row in rows {
            row.apply(&mut next);
        }
        self.state.store(Arc::new(next.derive()));
        Ok(())
    }

    /// Lists `principal` (just-in-time provisioned: it came with a valid token) as an active
    /// user unless the directory has a user of that name, or had one and it was deleted (a
    /// deleted user stays out). True when it was added.
    pub async fn ensure_listed(
        &self,
        tenant: &str,
        principal: &str,
    ) -> Result<bool, DirectoryError> {
        let added = self
            .ensure_listed_all(&[(tenant.to_string(), principal.to_string())])
            .await?;
        Ok(added == 1)
    }

    /// Deletes a user; its principal stays refused until a user of that name is created again.
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<DirectoryUser, DirectoryError> {
        self.delete_at(tenant, id, |_| true).await
    }

    /// [`Directory::delete`] if the user's version is one `at_version` accepts (a SCIM
    /// `If-Match`), checked under the write lock; [`DirectoryError::NotAtVersion`] otherwise.
    pub async fn delete_at(
        &self,
        tenant: &str,
        id: &str,
        at_version: impl Fn(u64) -> bool,
    ) -> Result<DirectoryUser, DirectoryError> {
        let _writing = self.writing.lock().await;
        let current = self.state.load();
        let mut next = current.to_next();
        let user = next
            .users
            .get_mut(tenant)
            .and_then(|users| users.remove(id))
            .ok_or_else(|| DirectoryError::NoSuchUser(id.to_string()))?;
        if !at_version(user.version) {
            return Err(DirectoryError::NotAtVersion(id.to_string()));
        }
        next.deleted.insert(key(tenant, &user.user_name));
        if let Some(external) = &user.external_id {
            next.deleted.insert(key(tenant, external));
        }
        self.commit(
            next,
            Change::Delete {
                tenant,
                user: &user,
            },
        )
        .await?;
        Ok(user)
    }

    /// Whether the browser session of `principal` that began at `login` (ms since the epoch)
    /// is over: its identity provider logged the principal out since, or it logged out.
    pub fn session_ended(&self, tenant: &str, principal: &str, login: u64) -> bool {
        let state = self.state.load();
        !state.ended_sessions.is_empty()
            && state
                .ended_sessions
                .get(&key(tenant, principal))
                .is_some_and(|ended| ended.ends(login))
    }

    /// Ends every browser session of `principal` that began before `at` (ms since the epoch),
    /// on every replica: the user of that name (created when the directory has none yet).
    pub async fn end_sessions(
        &self,
        tenant: &str,
        principal: &str,
        at: u64,
    ) -> Result<Option<DirectoryUser>, DirectoryError> {
        self.change_sessions(tenant, principal, |sessions| {
            sessions.not_before = Some(sessions.not_before.unwrap_or(0).max(at));
        })
        .await
    }

    /// Ends the one browser session of `principal` that began at `login` (ms) and would last
    /// until `end`, on every replica (its logout): a copy of its cookie is refused from now on.
    /// Sessions ended this way are forgotten after their own end.
    pub async fn end_session(
        &self,
        tenant: &str,
        principal: &str,
        login: u64,
        end: u64,
    ) -> Result<Option<DirectoryUser>, DirectoryError> {
        let now = u64::try_from(jiff::Timestamp::now().as_millisecond()).unwrap_or(0);
        self.change_sessions(tenant, principal, |sessions| {
            sessions
                .logged_out
                .retain(|s| s.end > now && s.login != login);
            sessions.logged_out.push(LoggedOutSession { login, end });
        })
        .await
    }

    /// Saves `principal`'s user with its ended sessions changed by `change` (a new user when
    /// the directory has none of that name). A deleted principal stays deleted (`None`): its
    /// sessions are refused already, and a new user of its name would let it in again.
    async fn change_sessions(
        &self,
        tenant: &str,
        principal: &str,
        change: impl Fn(&mut EndedSessions),
    ) -> Result<Option<DirectoryUser>, DirectoryError> {
        // Read and written under the lock: two logouts at once both count (and on two
        // replicas, through the store's check of the row's version).
        let _writing = self.writing.lock().await;
        let mut attempts = 0;
        loop {
            let now = jiff::Timestamp::now().to_string();
            let mut user = match self.users(tenant, Some(principal)).into_iter().next() {
                Some(user) => DirectoryUser {
                    last_modified: now,
                    version: user.version + 1,
                    ..user
                },
                None if self.state.load().deleted.contains(&key(tenant, principal)) => {
                    return Ok(None);
                }
                None => DirectoryUser::new(principal, now),
            };
            change(&mut user.sessions);
            let saved = self.save_writing(tenant, user).await.map(Some);
            if !self.again(&saved, &mut attempts).await? {
                return saved;
            }
        }
    }

    /// The display names of the groups `principal` of `tenant` belongs to (none: empty).
    pub fn groups_of(&self, tenant: &str, principal: &str) -> Vec<String> {
        let state = self.state.load();
        if state.group_names.is_empty() {
            return Vec::new();
        }
        state
            .group_names
            .get(&grant_key(tenant, principal))
            .cloned()
            .unwrap_or_default()
    }

    /// A tenant's groups in `displayName` order, optionally only the one named `display_name`.
    pub fn groups(&self, tenant: &str, display_name: Option<&str>) -> Vec<DirectoryGroup> {
        let state = self.state.load();
        let mut groups: Vec<DirectoryGroup> = state
            .groups
            .get(tenant)
            .into_iter()
            .flat_map(|g| g.values())
            .filter(|g| display_name.is_none_or(|n| g.display_name.eq_ignore_ascii_case(n)))
            .cloned()
            .collect();
        groups.sort_by(|a, b| a.display_name.cmp(&b.display_name));
        groups
    }

    pub fn group(&self, tenant: &str, id: &str) -> Option<DirectoryGroup> {
        self.state.load().groups.get(tenant)?.get(id).cloned()
    }

    /// Creates or replaces a group (by its `id`). Its `displayName` must be unique in the
    /// tenant and its members users of the tenant; members listed twice are kept once.
    pub async fn save_group(
        &self,
        tenant: &str,
        group: DirectoryGroup,
    ) -> Result<DirectoryGroup, DirectoryError> {
        let _writing = self.writing.lock().await;
        self.save_group_writing(tenant, group).await
    }

    /// Changes the group with `id` as `change` says, reading and writing under the write lock
    /// (two member additions at once both count). `Ok(Err(e))`: `change` refused.
    pub async fn update_group<E>(
        &self,
        tenant: &str,
        id: &str,
        change: impl Fn(&DirectoryGroup) -> Result<DirectoryGroup, E>,
    ) -> Result<Result<DirectoryGroup, E>, DirectoryError> {
        let _writing = self.writing.lock().await;
        let mut attempts = 0;
        loop {
            let before = self
                .group(tenant, id)
                .ok_or_else(|| DirectoryError::NoSuchGroup(id.to_string()))?;
            let changed = match change(&before) {
                Ok(after) => self.save_group_writing(tenant, after).await.map(Ok),
                Err(e) => return Ok(Err(e)),
            };
            if !self.again(&changed, &mut attempts).await? {
                return changed;
            }
        }
    }

    /// [`Directory::save_group`], the caller holding the write lock.
    async fn save_group_writing(
        &self,
        tenant: &str,
        mut group: DirectoryGroup,
    ) -> Result<DirectoryGroup, DirectoryError> {
        let current = self.state.load();
        let taken = current.groups.get(tenant).is_some_and(|groups| {
            groups.values().any(|g| {
                g.id != group.id && g.display_name.eq_ignore_ascii_case(&group.display_name)
            })
        });
        if taken {
            return Err(DirectoryError::GroupNameTaken(group.display_name));
        }
        room_for(
            current.groups.get(tenant),
            &group.id,
            "groups",
            MAX_GROUPS_PER_TENANT,
        )?;
        let users = current.users.get(tenant);
        if let Some(unknown) = group
            .members
            .iter()
            .find(|m| !users.is_some_and(|u| u.contains_key(m.as_str())))
        {
            return Err(DirectoryError::NoSuchMember(unknown.clone()));
        }
        let mut seen = HashSet::new();
        group.members.retain(|m| seen.insert(m.clone()));
        let read = current
            .groups
            .get(tenant)
            .and_then(|groups| groups.get(&group.id))
            .map(|known| known.version);
        let mut next = current.to_next();
        next.groups
            .entry(tenant.to_string())
            .or_default()
            .insert(group.id.clone(), group.clone());
        self.commit(
            next,
            Change::SaveGroup {
                tenant,
                group: &group,
                read,
            },
        )
        .await?;
        Ok(group)
    }

    pub async fn delete_group(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<DirectoryGroup, DirectoryError> {
        self.delete_group_at(tenant, id, |_| true).await
    }

    /// [`Directory::delete_group`] if the group's version is one `at_version` accepts.
    pub async fn delete_group_at(
        &self,
        tenant: &str,
        id: &str,
        at_version: impl Fn(u64) -> bool,
    ) -> Result<DirectoryGroup, DirectoryError> {
        let _writing = self.writing.lock().await;
        let mut next = self.state.load().to_next();
        let group = next
            .groups
            .get_mut(tenant)
            .and_then(|groups| groups.remove(id))
            .ok_or_else(|| DirectoryError::NoSuchGroup(id.to_string()))?;
        if !at_version(group.version) {
            return Err(DirectoryError::NotAtVersion(id.to_string()));
        }
        self.commit(next, Change::DeleteGroup { tenant, id })
            .await?;
        Ok(group)
    }

    /// Writes `change` (whose result is `next`) to the store, then makes `next` the state
    /// requests see.
    async fn commit(&self, next: DirectoryState, change: Change<'_>) -> Result<(), DirectoryError> {
        match &self.store {
            DirectoryStore::Memory => {}
            DirectoryStore::File(path) => write_file(path, &next).await?,
            DirectoryStore::Postgres { config, table } => {
                let mut writer = self.pg_writer.lock().await;
                let client = pg::writer_client(&mut writer, config).await?;
                pg::write(&client, table, &change).await?;
                // Kept only after a write went through (a failed one reconnects next time).
                *writer = Some(client);
            }
        }
        self.state.store(Arc::new(next.derive()));
        Ok(())
    }

    /// Lists each of `principals` (`(tenant, principal)`, just-in-time provisioned) as
    /// [`Directory::ensure_listed`] does, in one write of the directory: every write copies and
    /// derives the whole directory again, so a burst of newcomers listed one by one would cost
    /// time quadratic in the directory's size, with SCIM writes waiting behind it. Returns how
    /// many were added. With PostgreSQL each is one row, and a name another replica listed
    /// meanwhile is left to that replica's row.
    pub async fn ensure_listed_all(
        &self,
        principals: &[(String, String)],
    ) -> Result<usize, DirectoryError> {
        let _writing = self.writing.lock().await;
        let current = self.state.load();
        let now = jiff::Timestamp::now().to_string();
        // Names taken, per tenant (ASCII case-insensitively, as names are unique).
        let mut taken: HashMap<&str, HashSet<String>> = HashMap::new();
        let mut new_users: Vec<(&str, DirectoryUser)> = Vec::new();
        for (tenant, principal) in principals {
            if current.refused.contains(&key(tenant, principal)) {
                continue;
            }
            let names = taken.entry(tenant.as_str()).or_insert_with(|| {
                current
                    .users
                    .get(tenant.as_str())
                    .into_iter()
                    .flat_map(|users| users.values())
                    .map(|u| u.user_name.to_ascii_lowercase())
                    .collect()
            });
            // A full tenant lists no more newcomers (they are still served; only the
            // directory's record of them waits for room).
            if names.len() >= MAX_USERS_PER_TENANT {
                continue;
            }
            if names.insert(principal.to_ascii_lowercase()) {
                new_users.push((tenant, DirectoryUser::new(principal, now.clone())));
            }
        }
        if new_users.is_empty() {
            return Ok(0);
        }
        let mut written = Vec::with_capacity(new_users.len());
        let mut failure = None;
        if let DirectoryStore::Postgres { config, table } = &self.store {
            let mut writer = self.pg_writer.lock().await;
            let client = pg::writer_client(&mut writer, config).await?;
            for (tenant, user) in new_users {
                match pg::write(
                    &client,
                    table,
                    &Change::Save {
                        tenant,
                        user: &user,
                        read: None,
                    },
                )
                .await
                {
                    Ok(()) => written.push((tenant, user)),
                    // Listed meanwhile by another replica: its row arrives by notification.
                    Err(DirectoryError::UserNameTaken(_)) => {}
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if failure.is_none() {
                *writer = Some(client);
            }
        } else {
            written = new_users;
        }
        // What was written is kept even when a later row failed (the rows are in the store).
        let added = written.len();
        let mut next = current.to_next();
        for (tenant, user) in written {
            next.users
                .entry(tenant.to_string())
                .or_default()
                .insert(user.id.clone(), user);
        }
        if let DirectoryStore::File(path) = &self.store {
            write_file(path, &next).await?;
        }
        self.state.store(Arc::new(next.derive()));
        match failure {
            Some(e) => Err(e),
            None => Ok(added),
        }
    }

    /// Keeps a PostgreSQL directory current: applies every change another replica makes (and
    /// re-reads the table after a lost connection) until shutdown. Nothing to do otherwise.
    pub async fn follow(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let DirectoryStore::Postgres { config, table } = &self.store else {
            return;
        };
        let mut backoff = std::time::Duration::from_millis(500);
        loop {
            let result = tokio::select! {
                r = self.follow_once(config, table) => r,
                _ = shutdown.changed() => return,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, retry_in = ?backoff, "principal directory sync interrupted");
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
        }
    }

    async fn follow_once(
        &self,
        config: &crate::db::PostgresConfig,
        table: &str,
    ) -> Result<(), DirectoryError> {
        let store_error = |e: tokio_postgres::Error| DirectoryError::Store(e.to_string());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let client = crate::db::connect_config(config, Some(tx))
            .await
            .map_err(|e| DirectoryError::Store(e.to_string()))?;
        client
            .batch_execute(&format!("LISTEN {}", pg::channel(table)))
            .await
            .map_err(store_error)?;
        // What changed while nobody listened: the whole table, once LISTEN is active. Read
        // under the write lock, as below: a write of this replica committed between the read
        // and the swap would otherwise be undone by the older rows.
        {
            let _writing = self.writing.lock().await;
            let state = pg::load_all(&client, table).await?;
            self.state.store(Arc::new(state.derive()));
        }
        tracing::info!(table, "principal directory synchronised from PostgreSQL");
        while let Some(first) = rx.recv().await {
            let mut changed: HashSet<String> = HashSet::from([first.payload().to_string()]);
            while let Ok(more) = rx.try_recv() {
                changed.insert(more.payload().to_string());
            }
            // The rows are read under the write lock: read before it, they could be older
            // than a write this replica committed meanwhile (e.g. a deactivation's notice
            // arriving while the admin API re-activates), and would undo it until that
            // write's own notice came in.
            let _writing = self.writing.lock().await;
            self.apply_rows_writing(&client, table, &changed).await?;
            tracing::info!(changes = changed.len(), "principal directory updated");
        }
        Err(DirectoryError::Store("notification stream ended".into()))
    }

    /// Reads `rows` (named as their change notices name them) from a shared store into this
    /// replica's view, ahead of their notices. The caller holds the write lock.
    async fn reread_rows_writing(&self, rows: &HashSet<String>) -> Result<(), DirectoryError> {
        let DirectoryStore::Postgres { config, table } = &self.store else {
            return Ok(());
        };
        let mut writer = self.pg_writer.lock().await;
        let client = pg::writer_client(&mut writer, config).await?;
        self.apply_rows_writing(&client, table, rows).await?;
        *writer = Some(client);
        Ok(())
    }

    /// Replaces this replica's view of `rows` (users notify `tenant \t id`, groups
    /// `tenant \t id \t group`) with what the store holds now (gone: removed). The caller
    /// holds the write lock.
    async fn apply_rows_writing(
        &self,
        client: &tokio_postgres::Client,
        table: &str,
        rows: &HashSet<String>,
    ) -> Result<(), DirectoryError> {
        let (group_keys, user_keys): (HashSet<String>, HashSet<String>) = rows
            .iter()
            .cloned()
            .partition(|p| p.ends_with(pg::GROUP_MARK));
        let user_rows = pg::load_some(client, table, &user_keys).await?;
        let group_rows = pg::load_some_groups(client, table, &group_keys).await?;
        let current = self.state.load();
        let mut next = current.to_next();
        for payload in &user_keys {
            let Some((tenant, id)) = payload.split_once('\t') else {
                continue;
            };
            if let Some(users) = next.users.get_mut(tenant) {
                if let Some(old) = users.remove(id) {
                    next.deleted.remove(&key(tenant, &old.user_name));
                }
            }
        }
        for payload in &group_keys {
            let mut parts = payload.split('\t');
            if let (Some(tenant), Some(id)) = (parts.next(), parts.next()) {
                if let Some(groups) = next.groups.get_mut(tenant) {
                    groups.remove(id);
                }
            }
        }
        for row in user_rows {
            row.apply(&mut next);
        }
        for (tenant, group) in group_rows {
            next.groups
                .entry(tenant)
                .or_default()
                .insert(group.id.clone(), group);
        }
        self.state.store(Arc::new(next.derive()));
        Ok(())
    }
}

/// The directory in PostgreSQL: one row per user of a tenant, deleted users as tombstones
/// (`deleted = true`), a trigger NOTIFYing `tenant \t id` of every changed row.
mod pg {
    use std::collections::HashSet;

    use tokio_postgres::Client;

    use super::{key, Change, DirectoryError, DirectoryGroup, DirectoryState, DirectoryUser};

    /// The NOTIFY channel of a table, named as the tenant registry's.
    pub use crate::tenancy::postgres::channel;

    fn store_error(e: tokio_postgres::Error) -> DirectoryError {
        if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
            return DirectoryError::UserNameTaken("(taken on another replica)".into());
        }
        DirectoryError::Store(crate::diagnostics::describe(&e))
    }

    pub async fn migrate(client: &Client, table: &str) -> Result<(), DirectoryError> {
        let sql = crate::db::locked_migration(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (
    tenant_id text NOT NULL,
    id text NOT NULL,
    user_name text NOT NULL,
    deleted boolean NOT NULL DEFAULT false,
    doc jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX IF NOT EXISTS {table}_user_name ON {table} (tenant_id, lower(user_name))
    WHERE NOT deleted;
{}",
            crate::db::row_notify_trigger(
                table,
                &channel(table),
                "COALESCE(NEW.tenant_id, OLD.tenant_id) || chr(9) || COALESCE(NEW.id, OLD.id)",
            )
        ));
        client.batch_execute(&sql).await.map_err(store_error)?;
        let groups = groups_table(table);
        let sql = crate::db::locked_migration(&format!(
            "CREATE TABLE IF NOT EXISTS {groups} (
    tenant_id text NOT NULL,
    id text NOT NULL,
    display_name text NOT NULL,
    doc jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX IF NOT EXISTS {groups}_display_name ON {groups} (tenant_id, lower(display_name));
{}",
            crate::db::row_notify_trigger(
                &groups,
                &channel(table),
                &format!(
                    "COALESCE(NEW.tenant_id, OLD.tenant_id) || chr(9) || COALESCE(NEW.id, OLD.id) || '{GROUP_MARK}'"
                ),
            )
        ));
        client.batch_execute(&sql).await.map_err(store_error)
    }

    /// Ends the NOTIFY payload of a group's row (after `tenant \t id`).
    pub const GROUP_MARK: &str = "\tgroup";

    /// Groups live beside the users, in `<table>_groups`, notified on the users' channel.
    fn groups_table(table: &str) -> String {
        format!("{table}_groups")
    }

    /// The groups of `changed` (`tenant \t id \t group` each) that still exist.
    pub async fn load_some_groups(
        client: &Client,
        table: &str,
        changed: &HashSet<String>,
    ) -> Result<Vec<(String, DirectoryGroup)>, DirectoryError> {
        if changed.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = changed.iter().cloned().collect();
        let found = client
            .query(
                &format!(
                    "SELECT tenant_id, doc FROM {} WHERE tenant_id || chr(9) || id || '{GROUP_MARK}' = ANY($1)",
                    groups_table(table)
                ),
                &[&keys],
            )
            .await
            .map_err(store_error)?;
        Ok(group_rows(found))
    }

    pub async fn load_all_groups(
        client: &Client,
        table: &str,
    ) -> Result<Vec<(String, DirectoryGroup)>, DirectoryError> {
        let found = client
            .query(
                &format!("SELECT tenant_id, doc FROM {}", groups_table(table)),
                &[],
            )
            .await
            .map_err(store_error)?;
        Ok(group_rows(found))
    }

    fn group_rows(rows: Vec<tokio_postgres::Row>) -> Vec<(String, DirectoryGroup)> {
        rows.into_iter()
            .filter_map(|row| {
                let tenant: String = row.get(0);
                let doc: serde_json::Value = row.get(1);
                match serde_json::from_value::<DirectoryGroup>(doc) {
                    Ok(group) => Some((tenant, group)),
                    Err(e) => {
                        tracing::error!(tenant, error = %e, "principal directory: a row that is not a group is skipped");
                        None
                    }
                }
            })
            .collect()
    }

    /// One row as read back.
    pub struct Row {
        tenant: String,
        deleted: bool,
        user: DirectoryUser,
    }

    impl Row {
        pub fn apply(self, state: &mut DirectoryState) {
            if self.deleted {
                state
                    .deleted
                    .insert(key(&self.tenant, &self.user.user_name));
                if let Some(external) = &self.user.external_id {
                    state.deleted.insert(key(&self.tenant, external));
                }
            } else {
                state
                    .deleted
                    .remove(&key(&self.tenant, &self.user.user_name));
                state
                    .users
                    .entry(self.tenant)
                    .or_default()
                    .insert(self.user.id.clone(), self.user);
            }
        }
    }

    fn rows(rows: Vec<tokio_postgres::Row>) -> Vec<Row> {
        rows.into_iter()
            .filter_map(|row| {
                let tenant: String = row.get(0);
                let deleted: bool = row.get(1);
                let doc: serde_json::Value = row.get(2);
                match serde_json::from_value::<DirectoryUser>(doc) {
                    Ok(user) => Some(Row {
                        tenant,
                        deleted,
                        user,
                    }),
                    Err(e) => {
                        tracing::error!(tenant, error = %e, "principal directory: a row that is not a user is skipped");
                        None
                    }
                }
            })
            .collect()
    }

    pub async fn load_all(client: &Client, table: &str) -> Result<DirectoryState, DirectoryError> {
        let found = client
            .query(&format!("SELECT tenant_id, deleted, doc FROM {table}"), &[])
            .await
            .map_err(store_error)?;
        let mut state = DirectoryState::default();
        for row in rows(found) {
            row.apply(&mut state);
        }
        for (tenant, group) in load_all_groups(client, table).await? {
            state
                .groups
                .entry(tenant)
                .or_default()
                .insert(group.id.clone(), group);
        }
        Ok(state)
    }

    /// The rows of `changed` (`tenant \t id` each) that still exist.
    pub async fn load_some(
        client: &Client,
        table: &str,
        changed: &HashSet<String>,
    ) -> Result<Vec<Row>, DirectoryError> {
        if changed.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = changed.iter().cloned().collect();
        let found = client
            .query(
                &format!(
                    "SELECT tenant_id, deleted, doc FROM {table} WHERE tenant_id || chr(9) || id = ANY($1)"
                ),
                &[&keys],
            )
            .await
            .map_err(store_error)?;
        Ok(rows(found))
    }

    /// The directory's connection for writes, taken out of `writer` (or made when there is none
    /// or it broke); put it back once a statement went through, so a failed one reconnects.
    pub async fn writer_client(
        writer: &mut Option<Client>,
        config: &crate::db::PostgresConfig,
    ) -> Result<Client, DirectoryError> {
        match writer.take() {
            Some(client) if !client.is_closed() => Ok(client),
            _ => crate::db::connect_config(config, None)
                .await
                .map_err(|e| DirectoryError::Store(e.to_string())),
        }
    }

    /// The rows of `tenant`'s users named `user_name` (case-insensitively, as names are
    /// unique), tombstones included.
    pub async fn load_named(
        client: &Client,
        table: &str,
        tenant: &str,
        user_name: &str,
    ) -> Result<Vec<Row>, DirectoryError> {
        let found = client
            .query(
                &format!(
                    "SELECT tenant_id, deleted, doc FROM {table} WHERE tenant_id = $1 AND lower(user_name) = lower($2)"
                ),
                &[&tenant, &user_name],
            )
            .await
            .map_err(store_error)?;
        Ok(rows(found))
    }

    pub async fn write(
        client: &Client,
        table: &str,
        change: &Change<'_>,
    ) -> Result<(), DirectoryError> {
        let (tenant, user, deleted, read) = match change {
            Change::Save { tenant, user, read } => (*tenant, *user, false, *read),
            Change::Delete { tenant, user } => (*tenant, *user, true, None),
            Change::SaveGroup {
                tenant,
                group,
                read,
            } => return write_group(client, table, tenant, group, *read).await,
            Change::DeleteGroup { tenant, id } => {
                client
                    .execute(
                        &format!(
                            "DELETE FROM {} WHERE tenant_id = $1 AND id = $2",
                            groups_table(table)
                        ),
                        &[tenant, id],
                    )
                    .await
                    .map_err(store_error)?;
                return Ok(());
            }
        };
        let doc = serde_json::to_value(user).map_err(|e| DirectoryError::Store(e.to_string()))?;
        match read {
            // A replacement: only of the row as this replica read it.
            Some(version) => {
                let version = i64::try_from(version).unwrap_or(i64::MAX);
                let replaced = client
                    .execute(
                        &format!(
                            "UPDATE {table} SET user_name = $3, deleted = false, doc = $4, updated_at = now() \
                             WHERE tenant_id = $1 AND id = $2 AND NOT deleted \
                             AND (doc->>'version')::bigint = $5"
                        ),
                        &[&tenant, &user.id, &user.user_name, &doc, &version],
                    )
                    .await
                    .map_err(store_error)?;
                if replaced == 0 {
                    return Err(DirectoryError::ChangedElsewhere(format!(
                        "{tenant}\t{}",
                        user.id
                    )));
                }
            }
            None => {
                client
                    .execute(
                        &format!(
                            "INSERT INTO {table} (tenant_id, id, user_name, deleted, doc) VALUES ($1, $2, $3, $4, $5) \
                             ON CONFLICT (tenant_id, id) DO UPDATE SET user_name = EXCLUDED.user_name, \
                             deleted = EXCLUDED.deleted, doc = EXCLUDED.doc, updated_at = now()"
                        ),
                        &[&tenant, &user.id, &user.user_name, &deleted, &doc],
                    )
                    .await
                    .map_err(store_error)?;
            }
        }
        if !deleted {
            // A name taken again ends its tombstone (another row: this one is not deleted).
            client
                .execute(
                    &format!("DELETE FROM {table} WHERE tenant_id = $1 AND deleted AND lower(user_name) = lower($2)"),
                    &[&tenant, &user.user_name],
                )
                .await
                .map_err(store_error)?;
        }
        Ok(())
    }

    async fn write_group(
        client: &Client,
        table: &str,
        tenant: &str,
        group: &DirectoryGroup,
        read: Option<u64>,
    ) -> Result<(), DirectoryError> {
        let doc = serde_json::to_value(group).map_err(|e| DirectoryError::Store(e.to_string()))?;
        let groups = groups_table(table);
        let written = match read {
            // A replacement: only of the row as this replica read it.
            Some(version) => {
                let version = i64::try_from(version).unwrap_or(i64::MAX);
                client
                    .execute(
                        &format!(
                            "UPDATE {groups} SET display_name = $3, doc = $4, updated_at = now() \
                             WHERE tenant_id = $1 AND id = $2 AND (doc->>'version')::bigint = $5"
                        ),
                        &[&tenant, &group.id, &group.display_name, &doc, &version],
                    )
                    .await
            }
            None => {
                client
                    .execute(
                        &format!(
                            "INSERT INTO {groups} (tenant_id, id, display_name, doc) VALUES ($1, $2, $3, $4) \
                             ON CONFLICT (tenant_id, id) DO UPDATE SET display_name = EXCLUDED.display_name, \
                             doc = EXCLUDED.doc, updated_at = now()"
                        ),
                        &[&tenant, &group.id, &group.display_name, &doc],
                    )
                    .await
            }
        };
        match written {
            Ok(0) => Err(DirectoryError::ChangedElsewhere(format!(
                "{tenant}\t{}{GROUP_MARK}",
                group.id
            ))),
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                Err(DirectoryError::GroupNameTaken(group.display_name.clone()))
            }
            Err(e) => Err(store_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test database's settings for a directory table of its own (`<prefix>_<pid>_<n>`).
    fn pg_table(prefix: &str) -> (crate::db::PostgresConfig, String) {
        let url = std::env::var("GATEWAY_TEST_PG_URL").unwrap_or_else(|_| {
            "postgres://gateway_test:gateway_test@127.0.0.1:5432/gateway_test".to_string()
        });
        let table = format!("{prefix}_{}_{}", std::process::id(), rand::random::<u32>());
        let config = crate::db::PostgresConfig {
            url: Some(url),
            url_env: None,
            table: table.clone(),
            migrate: true,
            ca_file: None,
        };
        (config, table)
    }

    async fn drop_pg_table(config: &crate::db::PostgresConfig, table: &str) {
        let client = crate::db::connect_config(config, None).await.unwrap();
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {table}, {table}_groups CASCADE; \
                 DROP FUNCTION IF EXISTS {table}_notify() CASCADE"
            ))
            .await
            .unwrap();
    }

    /// Two replicas' directories on one PostgreSQL table, neither following the other's
    /// notifications: the window between a write on one and its NOTIFY on the other.
    #[tokio::test]
    async fn a_principal_listed_on_another_replica_is_deactivated_not_duplicated() {
        let (config, table) = pg_table("dir_race");
        let first = Directory::open_postgres(config.clone(), table.clone())
            .await
            .unwrap();
        let second = Directory::open_postgres(config.clone(), table.clone())
            .await
            .unwrap();
        assert!(first.ensure_listed("acme", "alice").await.unwrap());
        let listed = first.users("acme", Some("alice")).remove(0);
        assert!(second.users("acme", Some("alice")).is_empty());

        let deactivated = second.set_active("acme", "ALICE", false).await.unwrap();
        assert_eq!(deactivated.id, listed.id, "a second user was made");
        assert!(!deactivated.active);
        assert!(second.is_refused("acme", "alice"));
        // The store holds the one user, deactivated.
        let reread = Directory::open_postgres(config.clone(), table.clone())
            .await
            .unwrap();
        let users = reread.users("acme", None);
        assert_eq!(users.len(), 1, "{users:?}");
        assert!(!users[0].active && users[0].id == listed.id);
        // Unknown everywhere: still created, as before.
        assert!(second.set_active("acme", "bob", false).await.is_ok());

        drop_pg_table(&config, &table).await;
    }

    /// A replica following its own table's notices while the admin API switches a principal
    /// off and on again: the notice of the deactivation must never undo the activation that
    /// followed it (the follower read the row before the activation and swapped it in after).
    /// The follower runs on a thread of its own, as in the gateway (on one thread the window
    /// hardly opens; before the fix this undid the activation 6–14 times in 60 rounds).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_late_change_notice_does_not_undo_a_later_write() {
        let (config, table) = pg_table("dir_notice");
        let directory = Arc::new(
            Directory::open_postgres(config.clone(), table.clone())
                .await
                .unwrap(),
        );
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let follower = tokio::spawn(directory.clone().follow(shutdown));
        directory.set_active("acme", "alice", true).await.unwrap();
        // Until the follower listens, nothing can race it.
        let listening = std::time::Instant::now();
        while directory.users("acme", Some("alice")).is_empty()
            && listening.elapsed() < std::time::Duration::from_secs(5)
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;

        let mut undone = 0;
        for _ in 0..60 {
            directory.set_active("acme", "alice", false).await.unwrap();
            directory.set_active("acme", "alice", true).await.unwrap();
            // Long enough for both notices to be applied.
            for _ in 0..20 {
                if directory.is_refused("acme", "alice") {
                    undone += 1;
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        assert_eq!(undone, 0, "the activation was undone {undone} times");

        stop.send(true).unwrap();
        follower.await.unwrap();
        drop_pg_table(&config, &table).await;
    }

    /// Two replicas change one user and one group, the second before it has heard of the
    /// first's change (neither follows the other's notices): both changes count, in the
    /// store and in the second's view. Before, the second wrote its stale copy over the
    /// first's change: a SCIM attribute, a group member — or a deactivation undone by a
    /// logout recorded on the other replica.
    #[tokio::test]
    async fn changes_on_two_replicas_at_once_all_count() {
        let (config, table) = pg_table("dir_both");
        let first = Directory::open_postgres(config.clone(), table.clone())
            .await
            .unwrap();
        first.save("acme", user("1", "alice", true)).await.unwrap();
        first.save("acme", user("2", "bob", true)).await.unwrap();
        first
            .save_group("acme", group("g", "editors", &[]))
            .await
            .unwrap();
        let second = Directory::open_postgres(config.clone(), table.clone())
            .await
            .unwrap();
        let set = |name: &'static str| {
            move |current: &DirectoryUser| {
                let mut changed = current.clone();
                changed.attributes.insert(name.into(), Value::Bool(true));
                changed.version += 1;
                Ok::<_, ()>(changed)
            }
        };
        first
            .update_user("acme", "1", set("title"))
            .await
            .unwrap()
            .unwrap();
        let (_, after) = second
            .update_user("acme", "1", set("locale"))
            .await
            .unwrap()
            .unwrap();
        assert!(
            after.attributes.contains_key("title") && after.attributes.contains_key("locale"),
            "{after:?}"
        );
        assert_eq!(after.version, 3);

        let add = |member: &'static str| {
            move |current: &DirectoryGroup| {
                let mut changed = current.clone();
                changed.members.push(member.into());
                changed.version += 1;
                Ok::<_, ()>(changed)
            }
        };
        first
            .update_group("acme", "g", add("1"))
            .await
            .unwrap()
            .unwrap();
        let group = second
            .update_group("acme", "g", add("2"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(group.members, vec!["1".to_string(), "2".to_string()]);

        // A deactivation on one replica, a logout recorded on the other.
        first.set_active("acme", "bob", false).await.unwrap();
        second
            .end_session("acme", "bob", 1, u64::MAX)
            .await
            .unwrap();
        assert!(
            second.is_refused("acme", "bob"),
            "the logout re-activated bob"
        );

        let reread = Directory::open_postgres(config.clone(), table.clone())
            .await
            .unwrap();
        let alice = reread.user("acme", "1").unwrap();
        assert!(alice.attributes.contains_key("title") && alice.attributes.contains_key("locale"));
        assert_eq!(reread.group("acme", "g").unwrap().members.len(), 2);
        assert!(reread.is_refused("acme", "bob"));
        assert!(reread.session_ended("acme", "bob", 1));

        drop_pg_table(&config, &table).await;
    }

    /// A logout (or the identity provider's back-channel logout) of a principal deleted from
    /// the directory records nothing: before, it listed a new active user of that name, and the
    /// deleted principal's tokens were accepted again.
    #[tokio::test]
    async fn ending_a_deleted_principals_sessions_does_not_bring_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let directory =
            Directory::open(DirectoryStore::File(dir.path().join("directory.json"))).unwrap();
        directory
            .save("acme", user("1", "alice", true))
            .await
            .unwrap();
        directory.delete("acme", "1").await.unwrap();
        assert!(directory.is_refused("acme", "alice"));

        assert_eq!(
            directory.end_session("acme", "alice", 1, u64::MAX).await,
            Ok(None)
        );
        assert_eq!(directory.end_sessions("acme", "Alice", 5).await, Ok(None));
        assert!(directory.is_refused("acme", "alice"));
        assert!(directory.users("acme", None).is_empty());
        // A principal the directory never had is listed with its ended session, as before.
        let carol = directory.end_sessions("acme", "carol", 5).await.unwrap();
        assert_eq!(carol.map(|c| c.sessions.not_before), Some(Some(5)));
    }

    fn user(id: &str, name: &str, active: bool) -> DirectoryUser {
        DirectoryUser {
            id: id.into(),
            user_name: name.into(),
            external_id: None,
            active,
            attributes: Map::new(),
            created: "2026-12-04T00:00:00Z".into(),
            last_modified: "2026-12-04T00:00:00Z".into(),
            version: 1,
            sessions: EndedSessions::default(),
        }
    }

    /// The admin API's switch racing just-in-time provisioning on one replica: the principal is
    /// listed between the switch reading the directory (no such user) and saving.
    #[tokio::test]
    async fn a_principal_listed_while_being_deactivated_is_changed_not_duplicated() {
        let dir = tempfile::tempdir().unwrap();
        let directory =
            Directory::open(DirectoryStore::File(dir.path().join("directory.json"))).unwrap();
        let stale = directory.with_active("acme", "bob", false);
        assert!(directory.ensure_listed("acme", "bob").await.unwrap());
        let listed = directory.users("acme", Some("bob")).remove(0);

        let deactivated = directory
            .save_active("acme", "bob", false, stale)
            .await
            .unwrap();
        assert_eq!(deactivated.id, listed.id, "a second user was made");
        assert!(!deactivated.active);
        assert!(directory.is_refused("acme", "bob"));
        assert_eq!(directory.users("acme", None).len(), 1);
    }

    #[tokio::test]
    async fn deactivated_and_deleted_principals_are_refused_in_their_tenant_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("directory.json");
        let directory = Directory::open(DirectoryStore::File(path.clone())).unwrap();
        assert!(!directory.refuses_anyone());
        directory
            .save("acme", user("1", "alice", true))
            .await
            .unwrap();
        directory
            .save("acme", user("2", "bob", true))
            .await
            .unwrap();
        assert!(!directory.is_refused("acme", "alice"));
        directory
            .save("acme", user("1", "alice", false))
            .await
            .unwrap();
        assert!(directory.is_refused("acme", "alice"));
        assert!(!directory.is_refused("globex", "alice"));
        assert!(!directory.is_refused("acme", "bob"));
        // User names are case-insensitive: the deactivated `alice` is `ALICE` too.
        assert!(directory.is_refused("acme", "ALICE"));
        // userName is unique per tenant, case-insensitively.
        assert_eq!(
            directory.save("acme", user("3", "BOB", true)).await,
            Err(DirectoryError::UserNameTaken("BOB".into()))
        );
        directory.delete("acme", "2").await.unwrap();
        assert!(directory.is_refused("acme", "bob"));
        assert_eq!(directory.users("acme", None).len(), 1);
        // Survives a restart; creating the name again lets it in again.
        let reopened = Directory::open(DirectoryStore::File(path)).unwrap();
        assert!(reopened.is_refused("acme", "alice") && reopened.is_refused("acme", "bob"));
        reopened.save("acme", user("4", "bob", true)).await.unwrap();
        assert!(!reopened.is_refused("acme", "bob"));
        reopened
            .save("acme", user("1", "alice", true))
            .await
            .unwrap();
        assert!(!reopened.refuses_anyone());
        // Just-in-time principals are listed, unless deleted or listed already.
        assert!(reopened.ensure_listed("acme", "erin").await.unwrap());
        assert!(!reopened.ensure_listed("acme", "ERIN").await.unwrap());
        reopened
            .delete("acme", &reopened.users("acme", Some("erin"))[0].id)
            .await
            .unwrap();
        assert!(!reopened.ensure_listed("acme", "erin").await.unwrap());
        assert!(reopened.users("acme", Some("erin")).is_empty());
        reopened
            .save("acme", user("5", "erin", true))
            .await
            .unwrap();
        // The admin API's switch: a principal the directory never had is added, refused.
        let carol = reopened.set_active("acme", "carol", false).await.unwrap();
        assert!(reopened.is_refused("acme", "carol") && !carol.active);
        let carol_again = reopened.set_active("acme", "Carol", true).await.unwrap();
        assert_eq!((carol_again.id, carol_again.version), (carol.id, 2));
        assert!(!reopened.refuses_anyone());
    }

    fn group(id: &str, name: &str, members: &[&str]) -> DirectoryGroup {
        DirectoryGroup {
            id: id.into(),
            display_name: name.into(),
            external_id: None,
            members: members.iter().map(|m| m.to_string()).collect(),
            attributes: Map::new(),
            created: "2026-12-05T00:00:00Z".into(),
            last_modified: "2026-12-05T00:00:00Z".into(),
            version: 1,
        }
    }

    #[tokio::test]
    async fn group_members_get_the_group_names_by_user_name_and_external_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("directory.json");
        let directory = Directory::open(DirectoryStore::File(path.clone())).unwrap();
        let mut alice = user("u1", "alice", true);
        alice.external_id = Some("00u-alice".into());
        directory.save("acme", alice).await.unwrap();
        directory
            .save("acme", user("u2", "bob", true))
            .await
            .unwrap();
        directory
            .save("globex", user("u3", "carol", true))
            .await
            .unwrap();
        assert!(directory.groups_of("acme", "alice").is_empty());
        directory
            .save_group("acme", group("g1", "editor", &["u1", "u1"]))
            .await
            .unwrap();
        directory
            .save_group("acme", group("g2", "Finance Team", &["u1", "u2"]))
            .await
            .unwrap();
        let mut of_alice = directory.groups_of("acme", "ALICE");
        of_alice.sort();
        assert_eq!(
            of_alice,
            vec!["Finance Team".to_string(), "editor".to_string()]
        );
        assert_eq!(directory.groups_of("acme", "00u-alice").len(), 2);
        assert_eq!(
            directory.groups_of("acme", "bob"),
            vec!["Finance Team".to_string()]
        );
        // Per tenant: the same name elsewhere is not a member.
        assert!(directory.groups_of("globex", "alice").is_empty());
        // Members are users of the tenant; names are unique case-insensitively; a member
        // listed twice is kept once.
        assert_eq!(
            directory
                .save_group("acme", group("g3", "x", &["u3"]))
                .await,
            Err(DirectoryError::NoSuchMember("u3".into()))
        );
        assert_eq!(
            directory
                .save_group("acme", group("g3", "EDITOR", &[]))
                .await,
            Err(DirectoryError::GroupNameTaken("EDITOR".into()))
        );
        assert_eq!(
            directory.group("acme", "g1").unwrap().members,
            vec!["u1".to_string()]
        );
        // A deleted user counts for no group; a removed member loses the group at once.
        directory.delete("acme", "u2").await.unwrap();
        assert!(directory.groups_of("acme", "bob").is_empty());
        directory
            .save_group("acme", group("g1", "editor", &[]))
            .await
            .unwrap();
        assert_eq!(
            directory.groups_of("acme", "alice"),
            vec!["Finance Team".to_string()]
        );
        // Survives a restart; a deleted group is gone.
        let reopened = Directory::open(DirectoryStore::File(path)).unwrap();
        assert_eq!(reopened.groups("acme", None).len(), 2);
        assert_eq!(reopened.groups("acme", Some("finance team"))[0].id, "g2");
        reopened.delete_group("acme", "g2").await.unwrap();
        assert!(reopened.groups_of("acme", "alice").is_empty());
        assert_eq!(
            reopened.delete_group("acme", "g2").await,
            Err(DirectoryError::NoSuchGroup("g2".into()))
        );
    }

    /// A burst of newcomers is listed in one write: each once (names fold ASCII-case), none
    /// that is listed or was deleted, every tenant apart; the file holds them after.
    #[tokio::test]
    async fn newcomers_are_listed_together_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("directory.json");
        let directory = Directory::open(DirectoryStore::File(path.clone())).unwrap();
        directory
            .save("acme", user("u1", "carol", true))
            .await
            .unwrap();
        directory
            .save("acme", user("u2", "dave", true))
            .await
            .unwrap();
        directory.delete("acme", "u2").await.unwrap();
        let newcomers: Vec<(String, String)> = [
            ("acme", "alice"),
            ("acme", "ALICE"),
            ("acme", "Carol"),
            ("acme", "dave"),
            ("globex", "alice"),
        ]
        .iter()
        .map(|(t, p)| (t.to_string(), p.to_string()))
        .collect();
        assert_eq!(directory.ensure_listed_all(&newcomers).await.unwrap(), 2);
        assert_eq!(directory.ensure_listed_all(&newcomers).await.unwrap(), 0);
        let reopened = Directory::open(DirectoryStore::File(path)).unwrap();
        let names = |tenant: &str| -> Vec<String> {
            reopened
                .users(tenant, None)
                .into_iter()
                .map(|u| u.user_name)
                .collect()
        };
        assert_eq!(
            names("acme"),
            vec!["alice".to_string(), "carol".to_string()]
        );
        assert_eq!(names("globex"), vec!["alice".to_string()]);
        assert!(reopened.is_refused("acme", "dave"));
    }

    /// With PostgreSQL, a newcomer another replica listed meanwhile is left to that replica's
    /// row; the rest of the burst is listed.
    #[tokio::test]
    async fn a_burst_skips_a_name_another_replica_listed() {
        let (config, table) = pg_table("dir_burst");
        let first = Directory::open_postgres(config.clone(), table.clone())
            .await
            .unwrap();
        let second = Directory::open_postgres(config.clone(), table.clone())
            .await
            .unwrap();
        assert!(first.ensure_listed("acme", "alice").await.unwrap());
        let burst = vec![
            ("acme".to_string(), "Alice".to_string()),
            ("acme".to_string(), "bob".to_string()),
        ];
        assert_eq!(second.ensure_listed_all(&burst).await.unwrap(), 1);
        let reread = Directory::open_postgres(config.clone(), table.clone())
            .await
            .unwrap();
        let mut names: Vec<String> = reread
            .users("acme", None)
            .into_iter()
            .map(|u| u.user_name)
            .collect();
        names.sort();
        assert_eq!(names, vec!["alice".to_string(), "bob".to_string()]);
        drop_pg_table(&config, &table).await;
    }

    /// KELVIN SIGN lower-cases to ASCII `k` in Unicode, but the directory's names are unique
    /// ASCII case-insensitively, so `\u{212A}ate` is not `kate`: it takes none of her groups'
    /// roles, while refusing kate still refuses it (refusals err on the safe side).
    #[tokio::test]
    async fn a_name_unicode_folds_onto_takes_no_groups_but_shares_refusals() {
        let directory = Directory::default();
        directory
            .save("acme", user("u1", "kate", true))
            .await
            .unwrap();
        directory
            .save_group("acme", group("g1", "admins", &["u1"]))
            .await
            .unwrap();
        assert_eq!(
            directory.groups_of("acme", "KATE"),
            vec!["admins".to_string()]
        );
        assert!(directory.groups_of("acme", "\u{212A}ate").is_empty());
        assert!(directory.groups_of("acme", "\u{212A}ATE").is_empty());
        directory
            .save("acme", user("u2", "\u{212A}ate", true))
            .await
            .unwrap();
        assert!(directory.groups_of("acme", "\u{212A}ate").is_empty());
        directory
            .save("acme", user("u1", "kate", false))
            .await
            .unwrap();
        assert!(directory.is_refused("acme", "kate"));
        assert!(directory.is_refused("acme", "\u{212A}ate"));
    }

    #[test]
    fn a_corrupt_store_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("directory.json");
        std::fs::write(&path, b"{not json").unwrap();
        let Err(error) = Directory::open(DirectoryStore::File(path)) else {
            panic!("opened a corrupt store");
        };
        assert!(error.to_string().contains("directory.json"), "{error}");
    }
}
