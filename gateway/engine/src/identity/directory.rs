//! The principal directory: each tenant's users as its identity provider provisions them over
//! SCIM 2.0 (RFC 7643), and the one fact the request path needs from it — whether a principal
//! has been deactivated or deleted, so its still-valid tokens and the API keys it owns are
//! refused (`401 principal-deactivated`).
//!
//! A user's `userName` (and `externalId`, when set) is the principal id its tokens carry (the
//! JWT `sub`). The request path reads an immutable snapshot (arc-swap): one hash lookup, and
//! none at all while no principal of any tenant is deactivated. Writes (the SCIM API) replace
//! the snapshot after the store has the change: a JSON file written atomically.

use std::collections::{BTreeMap, HashSet};
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
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DirectoryError {
    #[error("userName `{0}` is taken in this tenant")]
    UserNameTaken(String),
    #[error("no user `{0}`")]
    NoSuchUser(String),
    #[error("the directory store failed: {0}")]
    Store(String),
}

/// The directory at one moment.
#[derive(Debug, Default, Serialize, Deserialize)]
struct DirectoryState {
    /// tenant → user id → user.
    users: BTreeMap<String, BTreeMap<String, DirectoryUser>>,
    /// `tenant \0 principal` of users deleted from the directory: refused like deactivated
    /// ones until a user of that name is created again.
    #[serde(default)]
    deleted: HashSet<String>,
    /// Derived: `tenant \0 principal` of every refused principal (deactivated or deleted).
    #[serde(skip)]
    refused: HashSet<String>,
}

impl DirectoryState {
    fn derive(mut self) -> Self {
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

fn key(tenant: &str, principal: &str) -> String {
    format!("{tenant}\u{0}{principal}")
}

/// Where the directory is kept.
#[derive(Debug, Clone)]
pub enum DirectoryStore {
    /// Nowhere (tests; a restart forgets it).
    Memory,
    /// One JSON document, replaced atomically on every change.
    File(PathBuf),
}

/// The principal directory of every tenant.
pub struct Directory {
    state: ArcSwap<DirectoryState>,
    store: DirectoryStore,
    /// One writer at a time (reads never wait).
    writing: tokio::sync::Mutex<()>,
}

impl Default for Directory {
    /// An empty directory kept in memory.
    fn default() -> Self {
        Directory {
            state: ArcSwap::from_pointee(DirectoryState::default()),
            store: DirectoryStore::Memory,
            writing: tokio::sync::Mutex::new(()),
        }
    }
}

impl Directory {
    /// Opens the directory, reading what the store holds.
    pub fn open(store: DirectoryStore) -> Result<Directory, DirectoryError> {
        let state = match &store {
            DirectoryStore::Memory => DirectoryState::default(),
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
        let current = self.state.load();
        let taken = current.users.get(tenant).is_some_and(|users| {
            users
                .values()
                .any(|u| u.id != user.id && u.user_name.eq_ignore_ascii_case(&user.user_name))
        });
        if taken {
            return Err(DirectoryError::UserNameTaken(user.user_name));
        }
        let mut next = DirectoryState {
            users: current.users.clone(),
            deleted: current.deleted.clone(),
            refused: HashSet::new(),
        };
        next.deleted.remove(&key(tenant, &user.user_name));
        next.users
            .entry(tenant.to_string())
            .or_default()
            .insert(user.id.clone(), user.clone());
        self.commit(next).await?;
        Ok(user)
    }

    /// Deletes a user; its principal stays refused until a user of that name is created again.
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<DirectoryUser, DirectoryError> {
        let _writing = self.writing.lock().await;
        let current = self.state.load();
        let mut next = DirectoryState {
            users: current.users.clone(),
            deleted: current.deleted.clone(),
            refused: HashSet::new(),
        };
        let user = next
            .users
            .get_mut(tenant)
            .and_then(|users| users.remove(id))
            .ok_or_else(|| DirectoryError::NoSuchUser(id.to_string()))?;
        next.deleted.insert(key(tenant, &user.user_name));
        if let Some(external) = &user.external_id {
            next.deleted.insert(key(tenant, external));
        }
        self.commit(next).await?;
        Ok(user)
    }

    /// Writes `next` to the store, then makes it the state requests see.
    async fn commit(&self, next: DirectoryState) -> Result<(), DirectoryError> {
        if let DirectoryStore::File(path) = &self.store {
            let bytes = serde_json::to_vec_pretty(&next)
                .map_err(|e| DirectoryError::Store(e.to_string()))?;
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                crate::durable::write_atomically(&path, &bytes)
            })
            .await
            .map_err(|e| DirectoryError::Store(e.to_string()))?
            .map_err(|e| DirectoryError::Store(e.to_string()))?;
        }
        self.state.store(Arc::new(next.derive()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        }
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
