//! SCIM 2.0 (RFC 7643/7644) for each tenant's identity provider, at `/scim/v2/<tenant>/` on the
//! admin listener, authorised by the tenant's own bearer token (`scim.token_sha256` in its
//! registry document): `/Users` (create, read, replace, PATCH in the forms Okta and Entra ID
//! send, delete; `filter=userName eq "…"` and `externalId eq "…"`, `startIndex`/`count`
//! pagination), `/Groups` (the same operations; PATCH adds and removes members as Okta and
//! Entra ID send it; `filter=displayName eq "…"`), `/ServiceProviderConfig`, `/Schemas`,
//! `/ResourceTypes`. A user set `active: false` or deleted is refused on the next request with
//! `401 principal-deactivated`, its still-valid tokens and the API keys it owns included. A
//! group's members get the group as a role on their next request (renamed by the tenant's
//! `scim.group_roles` when that names it).

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use gateway_engine::identity::directory::{
    Directory, DirectoryError, DirectoryGroup, DirectoryUser,
};
use gateway_engine::snapshot::SnapshotStore;

use super::preconditions::Precondition;
use super::{body_response, AdminResponse};

const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
/// Most users in one page.
const MAX_PAGE: usize = 200;

fn scim_response(status: StatusCode, body: Value) -> AdminResponse {
    body_response(
        status,
        Bytes::from(body.to_string()),
        "application/scim+json",
    )
}

/// A refused request, as RFC 7644 §3.12 describes it (small, unlike the response it becomes).
struct ScimError {
    status: StatusCode,
    scim_type: Option<&'static str>,
    detail: String,
}

impl ScimError {
    /// `412`: the request's `If-Match` names another version than the resource's.
    fn changed(precondition: &Precondition) -> Self {
        ScimError {
            status: StatusCode::PRECONDITION_FAILED,
            scim_type: None,
            detail: format!(
                "the resource has changed since it was read ({}); read it again",
                precondition.describe()
            ),
        }
    }

    fn bad(scim_type: &'static str, detail: impl Into<String>) -> Self {
        ScimError {
            status: StatusCode::BAD_REQUEST,
            scim_type: Some(scim_type),
            detail: detail.into(),
        }
    }

    fn response(self) -> AdminResponse {
        scim_error(self.status, self.scim_type, self.detail)
    }
}

/// An RFC 7644 §3.12 error.
fn scim_error(
    status: StatusCode,
    scim_type: Option<&str>,
    detail: impl Into<String>,
) -> AdminResponse {
    let mut body = json!({
        "schemas": [ERROR_SCHEMA],
        "status": status.as_u16().to_string(),
        "detail": detail.into(),
    });
    if let (Some(kind), Some(map)) = (scim_type, body.as_object_mut()) {
        map.insert("scimType".into(), json!(kind));
    }
    scim_response(status, body)
}

/// A resource version as SCIM's `meta.version` and the `ETag` header give it (RFC 7644 §3.14).
fn version_tag(version: u64) -> String {
    format!("W/\"{version}\"")
}

/// `response` with the `ETag` of the resource at `version`.
fn tagged(mut response: AdminResponse, version: u64) -> AdminResponse {
    if let Ok(tag) = http::HeaderValue::from_str(&version_tag(version)) {
        response.headers_mut().insert(http::header::ETAG, tag);
    }
    response
}

/// A single resource read: `304` when the client's `If-None-Match` names its version, else the
/// resource with its `ETag`.
fn read_tagged(
    precondition: &Precondition,
    version: u64,
    body: impl FnOnce() -> Value,
) -> AdminResponse {
    if matches!(precondition, Precondition::NoneMatch(_))
        && !precondition.holds(Some(&version_tag(version)))
    {
        return tagged(
            body_response(
                StatusCode::NOT_MODIFIED,
                Bytes::new(),
                "application/scim+json",
            ),
            version,
        );
    }
    tagged(scim_response(StatusCode::OK, body()), version)
}

/// Whether `authorization` carries the tenant's SCIM token.
pub fn authorized(store: &SnapshotStore, tenant: &str, authorization: Option<&str>) -> bool {
    let Some(token) = authorization.and_then(|v| v.strip_prefix("Bearer ")) else {
        return false;
    };
    let snapshot = store.load();
    let Some(expected) = snapshot
        .registry
        .get(tenant)
        .and_then(|t| t.scim.as_ref())
        .and_then(|s| hex::decode(&s.token_sha256).ok())
    else {
        return false;
    };
    let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
    digest.as_slice().ct_eq(expected.as_slice()).into()
}

/// Answers one SCIM request of `tenant`; `rest` are the path segments after the tenant.
/// `precondition` (`If-Match` / `If-None-Match`) applies to the single-resource requests.
pub async fn handle(
    directory: &Directory,
    tenant: &str,
    method: &Method,
    rest: &[&str],
    query: &str,
    body: &[u8],
    precondition: &Precondition,
) -> AdminResponse {
    let at_version = |version: u64| precondition.holds(Some(&version_tag(version)));
    let base = format!("/scim/v2/{tenant}");
    match (method, rest) {
        (&Method::GET, ["ServiceProviderConfig"]) => {
            scim_response(StatusCode::OK, service_provider_config(&base))
        }
        (&Method::GET, ["Schemas"]) => scim_response(
            StatusCode::OK,
            list(vec![user_schema(), group_schema()], 2, 1),
        ),
        (&Method::GET, ["Schemas", id]) if *id == USER_SCHEMA => {
            scim_response(StatusCode::OK, user_schema())
        }
        (&Method::GET, ["Schemas", id]) if *id == GROUP_SCHEMA => {
            scim_response(StatusCode::OK, group_schema())
        }
        (&Method::GET, ["ResourceTypes"]) => scim_response(
            StatusCode::OK,
            list(
                vec![
                    resource_type(&base, "User", "/Users", USER_SCHEMA),
                    resource_type(&base, "Group", "/Groups", GROUP_SCHEMA),
                ],
                2,
                1,
            ),
        ),
        (&Method::GET, ["Groups"]) => list_groups(directory, tenant, &base, query),
        (&Method::POST, ["Groups"]) => create_group(directory, tenant, &base, body).await,
        (&Method::GET, ["Groups", id]) => match directory.group(tenant, id) {
            Some(group) => read_tagged(precondition, group.version, || {
                group_json(directory, tenant, &group, &base, excludes_members(query))
            }),
            None => scim_error(StatusCode::NOT_FOUND, None, format!("no group {id}")),
        },
        (&Method::PUT, ["Groups", id]) => {
            replace_group(directory, tenant, &base, id, body, precondition).await
        }
        (&Method::PATCH, ["Groups", id]) => {
            patch_group(directory, tenant, &base, id, body, precondition).await
        }
        (&Method::DELETE, ["Groups", id]) => {
            match directory.delete_group_at(tenant, id, at_version).await {
                Ok(group) => {
                    tracing::info!(target: "audit", event = "group.deleted", tenant, group = %group.display_name, "SCIM: group deleted");
                    body_response(
                        StatusCode::NO_CONTENT,
                        Bytes::new(),
                        "application/scim+json",
                    )
                }
                Err(e) => directory_error(e),
            }
        }
        (&Method::GET, ["Users"]) => list_users(directory, tenant, &base, query),
        (&Method::POST, ["Users"]) => create_user(directory, tenant, &base, body).await,
        (&Method::GET, ["Users", id]) => match directory.user(tenant, id) {
            Some(user) => read_tagged(precondition, user.version, || user_json(&user, &base)),
            None => scim_error(StatusCode::NOT_FOUND, None, format!("no user {id}")),
        },
        (&Method::PUT, ["Users", id]) => {
            replace_user(directory, tenant, &base, id, body, precondition).await
        }
        (&Method::PATCH, ["Users", id]) => {
            patch_user(directory, tenant, &base, id, body, precondition).await
        }
        (&Method::DELETE, ["Users", id]) => match directory.delete_at(tenant, id, at_version).await
        {
            Ok(user) => {
                tracing::info!(target: "audit", event = "principal.deleted", tenant, principal = %user.user_name, "SCIM: user deleted");
                body_response(
                    StatusCode::NO_CONTENT,
                    Bytes::new(),
                    "application/scim+json",
                )
            }
            Err(e) => directory_error(e),
        },
        _ => scim_error(
            StatusCode::NOT_FOUND,
            None,
            format!("no SCIM endpoint {method} {base}/{}", rest.join("/")),
        ),
    }
}

fn directory_error(error: DirectoryError) -> AdminResponse {
    match error {
        DirectoryError::UserNameTaken(_) | DirectoryError::GroupNameTaken(_) => {
            scim_error(StatusCode::CONFLICT, Some("uniqueness"), error.to_string())
        }
        DirectoryError::NoSuchUser(_) | DirectoryError::NoSuchGroup(_) => {
            scim_error(StatusCode::NOT_FOUND, None, error.to_string())
        }
        DirectoryError::NotAtVersion(_) => {
            scim_error(StatusCode::PRECONDITION_FAILED, None, error.to_string())
        }
        DirectoryError::NoSuchMember(_) | DirectoryError::TenantFull { .. } => scim_error(
            StatusCode::BAD_REQUEST,
            Some("invalidValue"),
            error.to_string(),
        ),
        // Other replicas changed the same row before each of this one's attempts: transient.
        DirectoryError::Store(_) | DirectoryError::ChangedElsewhere(_) => {
            tracing::error!(%error, "SCIM: the directory could not be written");
            scim_error(
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "the directory could not be written; retry",
            )
        }
    }
}

fn list(resources: Vec<Value>, total: usize, start_index: usize) -> Value {
    json!({
        "schemas": [LIST_SCHEMA],
        "totalResults": total,
        "startIndex": start_index,
        "itemsPerPage": resources.len(),
        "Resources": resources,
    })
}

/// `<attribute> eq "…"` (e.g. `userName eq "alice"`) for one of `attributes`, matched
/// case-insensitively and spelt as listed: (attribute, value).
fn parse_filter_of(filter: &str, attributes: &[&'static str]) -> Result<(String, String), String> {
    let filter = filter.trim();
    let mut parts = filter.splitn(3, char::is_whitespace);
    let (Some(attribute), Some(op), Some(value)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!(
            "unsupported filter `{filter}`: expected `{} eq \"…\"`",
            attributes.first().copied().unwrap_or("userName")
        ));
    };
    let value = value.trim();
    let quoted = value.len() >= 2 && value.starts_with('"') && value.ends_with('"');
    if !op.eq_ignore_ascii_case("eq") || !quoted {
        return Err(format!(
            "unsupported filter `{filter}`: only `eq` with a quoted value"
        ));
    }
    let attribute = attribute.rsplit(':').next().unwrap_or(attribute);
    let Some(attribute) = attributes
        .iter()
        .find(|a| a.eq_ignore_ascii_case(attribute))
    else {
        return Err(format!(
            "unsupported filter attribute `{attribute}`: one of {}",
            attributes.join(", ")
        ));
    };
    let value: String = serde_json::from_str(value).map_err(|e| format!("filter value: {e}"))?;
    Ok((attribute.to_string(), value))
}

/// A list request's `filter` (parsed for `attributes`), `startIndex` and `count`.
struct ListQuery {
    filter: Option<(String, String)>,
    start_index: usize,
    count: usize,
}

impl ListQuery {
    fn parse(query: &str, attributes: &[&'static str]) -> Result<ListQuery, ScimError> {
        let mut list = ListQuery {
            filter: None,
            start_index: 1,
            count: MAX_PAGE,
        };
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            match name.as_ref() {
                "filter" => {
                    list.filter = Some(
                        parse_filter_of(&value, attributes)
                            .map_err(|e| ScimError::bad("invalidFilter", e))?,
                    )
                }
                // RFC 7644 §3.4.2.4: a start below 1 counts as 1, a negative count as 0.
                "startIndex" => {
                    list.start_index = value.parse::<i64>().unwrap_or(1).max(1) as usize
                }
                "count" => {
                    list.count = (value.parse::<i64>().unwrap_or(0).max(0) as usize).min(MAX_PAGE)
                }
                _ => {}
            }
        }
        Ok(list)
    }

    /// This request's page of `items`, as a ListResponse.
    fn page<T>(&self, items: &[T], render: impl Fn(&T) -> Value) -> AdminResponse {
        let page: Vec<Value> = items
            .iter()
            .skip(self.start_index - 1)
            .take(self.count)
            .map(render)
            .collect();
        scim_response(StatusCode::OK, list(page, items.len(), self.start_index))
    }
}

fn list_users(directory: &Directory, tenant: &str, base: &str, query: &str) -> AdminResponse {
    let request = match ListQuery::parse(query, &["userName", "externalId"]) {
        Ok(request) => request,
        Err(error) => return error.response(),
    };
    let filter = &request.filter;
    let users: Vec<DirectoryUser> = match &filter {
        Some((attribute, value)) if attribute == "userName" => directory.users(tenant, Some(value)),
        Some((_, value)) => directory
            .users(tenant, None)
            .into_iter()
            .filter(|u| u.external_id.as_deref() == Some(value.as_str()))
            .collect(),
        None => directory.users(tenant, None),
    };
    request.page(&users, |u| user_json(u, base))
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// The user as SCIM returns it.
fn user_json(user: &DirectoryUser, base: &str) -> Value {
    let mut map = user.attributes.clone();
    map.insert("schemas".into(), json!([USER_SCHEMA]));
    map.insert("id".into(), json!(user.id));
    map.insert("userName".into(), json!(user.user_name));
    if let Some(external) = &user.external_id {
        map.insert("externalId".into(), json!(external));
    }
    map.insert("active".into(), json!(user.active));
    map.insert(
        "meta".into(),
        json!({
            "resourceType": "User",
            "created": user.created,
            "lastModified": user.last_modified,
            "version": version_tag(user.version),
            "location": format!("{base}/Users/{}", user.id),
        }),
    );
    Value::Object(map)
}

/// SCIM booleans arrive as JSON booleans or, from some clients (Entra ID), as `"True"`/`"False"`.
fn scim_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// A request body that must be a JSON object.
fn object(body: &[u8]) -> Result<Map<String, Value>, ScimError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ScimError::bad("invalidSyntax", format!("body: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ScimError::bad(
            "invalidSyntax",
            "the body must be a JSON object",
        )),
    }
}

/// The resource's name attribute (`userName`, `displayName`): a non-empty string of at most
/// 256 characters.
fn required_name(map: &mut Map<String, Value>, attribute: &str) -> Result<String, ScimError> {
    match map.remove(attribute) {
        Some(Value::String(name)) if !name.trim().is_empty() && name.len() <= 256 => Ok(name),
        _ => Err(ScimError::bad(
            "invalidValue",
            format!("{attribute} is required: a non-empty string of at most 256 characters"),
        )),
    }
}

/// The optional `externalId`.
fn external_id(map: &mut Map<String, Value>) -> Result<Option<String>, ScimError> {
    match map.remove("externalId") {
        None | Some(Value::Null) => Ok(None),
        // It names the principal too (a token's subject may be it): bounded as userName is.
        Some(Value::String(s)) if s.len() <= 256 => Ok(Some(s)),
        Some(_) => Err(ScimError::bad(
            "invalidValue",
            "externalId must be a string of at most 256 characters",
        )),
    }
}

/// The most bytes of a resource's other attributes (as JSON) the directory keeps: real users
/// and groups carry a few KiB (names, e-mails, an enterprise extension); every replica holds
/// every tenant's directory in memory.
const MAX_ATTRIBUTE_BYTES: usize = 16 * 1024;

/// What remains of `map` once the attributes the directory reads are taken: kept as sent, if
/// within [`MAX_ATTRIBUTE_BYTES`].
fn other_attributes(map: &mut Map<String, Value>) -> Result<Map<String, Value>, ScimError> {
    let size = serde_json::to_vec(map).map_or(usize::MAX, |bytes| bytes.len());
    if size > MAX_ATTRIBUTE_BYTES {
        return Err(ScimError::bad(
            "invalidValue",
            format!(
                "the resource's attributes take {size} bytes as JSON; at most {MAX_ATTRIBUTE_BYTES} are kept"
            ),
        ));
    }
    Ok(std::mem::take(map))
}

/// A user from a request body (`id` and `meta` are the server's; a password is never kept).
fn user_from(
    body: &[u8],
    id: String,
    created: String,
    version: u64,
) -> Result<DirectoryUser, ScimError> {
    user_from_map(&mut object(body)?, id, created, version)
}

fn user_from_map(
    map: &mut Map<String, Value>,
    id: String,
    created: String,
    version: u64,
) -> Result<DirectoryUser, ScimError> {
    for server_owned in ["id", "meta", "schemas", "password"] {
        map.remove(server_owned);
    }
    let user_name = required_name(map, "userName")?;
    let external_id = external_id(map)?;
    let active = match map.remove("active") {
        None | Some(Value::Null) => true,
        Some(v) => scim_bool(&v)
            .ok_or_else(|| ScimError::bad("invalidValue", "active must be a boolean"))?,
    };
    Ok(DirectoryUser {
        id,
        user_name,
        external_id,
        active,
        attributes: other_attributes(map)?,
        created: created.clone(),
        last_modified: if version == 1 { created } else { now() },
        version,
        sessions: Default::default(),
    })
}

async fn create_user(
    directory: &Directory,
    tenant: &str,
    base: &str,
    body: &[u8],
) -> AdminResponse {
    let user = match user_from(body, uuid::Uuid::new_v4().to_string(), now(), 1) {
        Ok(u) => u,
        Err(error) => return error.response(),
    };
    match directory.save(tenant, user).await {
        Ok(user) => {
            tracing::info!(target: "audit", event = "principal.scim_created", tenant, principal = %user.user_name, active = user.active, "SCIM: user created");
            let mut response = tagged(
                scim_response(StatusCode::CREATED, user_json(&user, base)),
                user.version,
            );
            if let Ok(location) = http::HeaderValue::from_str(&format!("{base}/Users/{}", user.id))
            {
                response
                    .headers_mut()
                    .insert(http::header::LOCATION, location);
            }
            response
        }
        Err(e) => directory_error(e),
    }
}

async fn replace_user(
    directory: &Directory,
    tenant: &str,
    base: &str,
    id: &str,
    body: &[u8],
    precondition: &Precondition,
) -> AdminResponse {
    let updated = directory
        .update_user(tenant, id, |current| {
            // Checked on the user as it is when written (again after another replica's change).
            if !precondition.holds(Some(&version_tag(current.version))) {
                return Err(ScimError::changed(precondition));
            }
            user_from(
                body,
                current.id.clone(),
                current.created.clone(),
                current.version + 1,
            )
        })
        .await;
    user_changed(updated, tenant, base)
}

/// The answer to a replaced or patched user (read and written under the directory's lock, so
/// concurrent changes all count).
fn user_changed(
    updated: Result<Result<(DirectoryUser, DirectoryUser), ScimError>, DirectoryError>,
    tenant: &str,
    base: &str,
) -> AdminResponse {
    match updated {
        Ok(Ok((before, user))) => {
            if before.active != user.active {
                let event = if user.active {
                    "principal.activated"
                } else {
                    "principal.deactivated"
                };
                tracing::info!(target: "audit", event, tenant, principal = %user.user_name, "SCIM: user {}", if user.active { "activated" } else { "deactivated" });
            }
            tagged(
                scim_response(StatusCode::OK, user_json(&user, base)),
                user.version,
            )
        }
        Ok(Err(refusal)) => refusal.response(),
        Err(DirectoryError::NoSuchUser(id)) => {
            scim_error(StatusCode::NOT_FOUND, None, format!("no user {id}"))
        }
        Err(e) => directory_error(e),
    }
}

async fn patch_user(
    directory: &Directory,
    tenant: &str,
    base: &str,
    id: &str,
    body: &[u8],
    precondition: &Precondition,
) -> AdminResponse {
    let operations = match patch_operations(body) {
        Ok(operations) => operations,
        Err(error) => return error.response(),
    };
    let updated = directory
        .update_user(tenant, id, |current| {
            if !precondition.holds(Some(&version_tag(current.version))) {
                return Err(ScimError::changed(precondition));
            }
            // Patch the user's SCIM form, then read it back as a user (same checks as PUT).
            let mut resource = patched(user_json(current, base), &operations, apply)?;
            user_from_map(
                &mut resource,
                current.id.clone(),
                current.created.clone(),
                current.version + 1,
            )
        })
        .await;
    user_changed(updated, tenant, base)
}

/// A resource's SCIM form with a PATCH's `operations` applied by `apply`, in order.
fn patched(
    form: Value,
    operations: &[Value],
    apply: fn(&mut Map<String, Value>, &Value) -> Result<(), String>,
) -> Result<Map<String, Value>, ScimError> {
    let mut resource = match form {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    for (i, operation) in operations.iter().enumerate() {
        apply(&mut resource, operation).map_err(|detail| {
            ScimError::bad("invalidPath", format!("Operations[{i}]: {detail}"))
        })?;
    }
    Ok(resource)
}

/// One PATCH operation (RFC 7644 §3.5.2) on a user's SCIM form: `add`/`replace` with no path
/// (a map of attributes), with an attribute path (`active`, `name.givenName`), or with a value
/// filter (`emails[type eq "work"].value`, as Entra ID sends); `remove` with a path.
fn apply(resource: &mut Map<String, Value>, operation: &Value) -> Result<(), String> {
    let op = operation["op"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let path = operation["path"]
        .as_str()
        .map(str::trim)
        .filter(|p| !p.is_empty());
    let value = operation.get("value").cloned().unwrap_or(Value::Null);
    match (op.as_str(), path) {
        ("add" | "replace", None) => {
            let Value::Object(map) = value else {
                return Err("without a path, the value must be an object of attributes".into());
            };
            for (name, value) in map {
                set_path(resource, &name, value)?;
            }
            Ok(())
        }
        ("add" | "replace", Some(path)) => set_path(resource, path, value),
        ("remove", Some(path)) => remove_path(resource, path),
        ("remove", None) => Err("remove needs a path".into()),
        (other, _) => Err(format!("unknown op `{other}` (add, replace or remove)")),
    }
}

/// A PATCH path: `attr`, `attr.sub`, or `attr[key eq "v"].sub`.
type PathParts = (String, Option<(String, String)>, Option<String>);

/// The parts of a PATCH path; a schema URN prefix is dropped.
fn split_path(path: &str) -> Result<PathParts, String> {
    let path = match path
        .strip_prefix(USER_SCHEMA)
        .or_else(|| path.strip_prefix(GROUP_SCHEMA))
    {
        Some(rest) => rest.trim_start_matches(':'),
        None => path,
    };
    if let Some((attribute, rest)) = path.split_once('[') {
        let (filter, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("unbalanced `[` in `{path}`"))?;
        let (key, value) = parse_filter_pair(filter)?;
        let sub = after.strip_prefix('.').map(str::to_string);
        return Ok((attribute.to_string(), Some((key, value)), sub));
    }
    match path.split_once('.') {
        Some((attribute, sub)) => Ok((attribute.to_string(), None, Some(sub.to_string()))),
        None => Ok((path.to_string(), None, None)),
    }
}

/// `type eq "work"` inside a value filter.
fn parse_filter_pair(filter: &str) -> Result<(String, String), String> {
    let mut parts = filter.trim().splitn(3, char::is_whitespace);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(key), Some(op), Some(value)) if op.eq_ignore_ascii_case("eq") => {
            let value: String = serde_json::from_str(value.trim())
                .map_err(|_| format!("value filter `{filter}`: a quoted value"))?;
            Ok((key.to_string(), value))
        }
        _ => Err(format!(
            "value filter `{filter}`: only `<attribute> eq \"…\"`"
        )),
    }
}

/// The attribute name as the resource spells it (SCIM names are case-insensitive).
fn existing_name(resource: &Map<String, Value>, name: &str) -> String {
    resource
        .keys()
        .find(|k| k.eq_ignore_ascii_case(name))
        .cloned()
        .unwrap_or_else(|| name.to_string())
}

fn set_path(resource: &mut Map<String, Value>, path: &str, value: Value) -> Result<(), String> {
    let (attribute, filter, sub) = split_path(path)?;
    let attribute = existing_name(resource, &attribute);
    match (filter, sub) {
        (None, None) => {
            resource.insert(attribute, value);
        }
        (None, Some(sub)) => {
            let entry = resource
                .entry(attribute.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(map) = entry else {
                return Err(format!("`{attribute}` is not a complex attribute"));
            };
            let sub = existing_name(map, &sub);
            map.insert(sub, value);
        }
        (Some((key, wanted)), sub) => {
            let entry = resource
                .entry(attribute.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            let Value::Array(items) = entry else {
                return Err(format!("`{attribute}` is not multi-valued"));
            };
            let position = items
                .iter()
                .position(|item| item.get(key.as_str()) == Some(&Value::String(wanted.clone())));
            let index = match position {
                Some(index) => index,
                None => {
                    items.push(json!({ key.as_str(): wanted }));
                    items.len() - 1
                }
            };
            let Some(Value::Object(item)) = items.get_mut(index) else {
                return Err(format!("`{attribute}` holds a value that is not an object"));
            };
            match (sub, value) {
                (Some(sub), value) => {
                    item.insert(sub, value);
                }
                (None, Value::Object(fields)) => item.extend(fields),
                (None, _) => {
                    return Err("a filtered path without a sub-attribute takes an object".into())
                }
            }
        }
    }
    Ok(())
}

fn remove_path(resource: &mut Map<String, Value>, path: &str) -> Result<(), String> {
    let (attribute, filter, sub) = split_path(path)?;
    let attribute = existing_name(resource, &attribute);
    match (filter, sub) {
        (None, None) => {
            resource.remove(&attribute);
        }
        (None, Some(sub)) => {
            if let Some(Value::Object(map)) = resource.get_mut(&attribute) {
                let sub = existing_name(map, &sub);
                map.remove(&sub);
            }
        }
        (Some((key, wanted)), sub) => {
            if let Some(Value::Array(items)) = resource.get_mut(&attribute) {
                match sub {
                    None => items.retain(|item| {
                        item.get(key.as_str()) != Some(&Value::String(wanted.clone()))
                    }),
                    Some(sub) => {
                        for item in items.iter_mut().filter(|item| {
                            item.get(key.as_str()) == Some(&Value::String(wanted.clone()))
                        }) {
                            if let Value::Object(fields) = item {
                                fields.remove(&sub);
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Whether the request asks to leave members out (`excludedAttributes=members`, as Okta and
/// Entra ID do when they only look a group up).
fn excludes_members(query: &str) -> bool {
    form_urlencoded::parse(query.as_bytes()).any(|(name, value)| {
        name == "excludedAttributes"
            && value
                .split(',')
                .any(|a| a.trim().eq_ignore_ascii_case("members"))
    })
}

fn list_groups(directory: &Directory, tenant: &str, base: &str, query: &str) -> AdminResponse {
    let request = match ListQuery::parse(query, &["displayName", "externalId"]) {
        Ok(request) => request,
        Err(error) => return error.response(),
    };
    let groups: Vec<DirectoryGroup> = match &request.filter {
        Some((attribute, value)) if attribute == "displayName" => {
            directory.groups(tenant, Some(value))
        }
        Some((_, value)) => directory
            .groups(tenant, None)
            .into_iter()
            .filter(|g| g.external_id.as_deref() == Some(value.as_str()))
            .collect(),
        None => directory.groups(tenant, None),
    };
    let without_members = excludes_members(query);
    request.page(&groups, |g| {
        group_json(directory, tenant, g, base, without_members)
    })
}

/// The group as SCIM returns it; members that are no longer users are left out.
fn group_json(
    directory: &Directory,
    tenant: &str,
    group: &DirectoryGroup,
    base: &str,
    without_members: bool,
) -> Value {
    let mut map = group.attributes.clone();
    map.insert("schemas".into(), json!([GROUP_SCHEMA]));
    map.insert("id".into(), json!(group.id));
    map.insert("displayName".into(), json!(group.display_name));
    if let Some(external) = &group.external_id {
        map.insert("externalId".into(), json!(external));
    }
    if !without_members {
        let members: Vec<Value> = group
            .members
            .iter()
            .filter_map(|id| directory.user(tenant, id))
            .map(|u| {
                json!({
                    "value": u.id,
                    "display": u.user_name,
                    "$ref": format!("{base}/Users/{}", u.id),
                })
            })
            .collect();
        map.insert("members".into(), Value::Array(members));
    }
    map.insert(
        "meta".into(),
        json!({
            "resourceType": "Group",
            "created": group.created,
            "lastModified": group.last_modified,
            "version": version_tag(group.version),
            "location": format!("{base}/Groups/{}", group.id),
        }),
    );
    Value::Object(map)
}

/// The member ids of a `members` value: `[{"value": "<user id>"}, …]` (a single object too).
fn member_ids(value: &Value) -> Result<Vec<String>, String> {
    let items = match value {
        Value::Array(items) => items.as_slice(),
        Value::Object(_) => std::slice::from_ref(value),
        Value::Null => &[],
        _ => return Err("members must be a list of {\"value\": \"<user id>\"}".into()),
    };
    items
        .iter()
        .map(|item| {
            item.get("value")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| "every member needs a string `value` (the user's id)".to_string())
        })
        .collect()
}

fn group_from_map(
    map: &mut Map<String, Value>,
    id: String,
    created: String,
    version: u64,
) -> Result<DirectoryGroup, ScimError> {
    for server_owned in ["id", "meta", "schemas"] {
        map.remove(server_owned);
    }
    let display_name = required_name(map, "displayName")?;
    let external_id = external_id(map)?;
    let members = member_ids(&map.remove("members").unwrap_or(Value::Null))
        .map_err(|e| ScimError::bad("invalidValue", e))?;
    Ok(DirectoryGroup {
        id,
        display_name,
        external_id,
        members,
        attributes: other_attributes(map)?,
        created: created.clone(),
        last_modified: if version == 1 { created } else { now() },
        version,
    })
}

fn group_from(
    body: &[u8],
    id: String,
    created: String,
    version: u64,
) -> Result<DirectoryGroup, ScimError> {
    group_from_map(&mut object(body)?, id, created, version)
}

async fn save_group(
    directory: &Directory,
    tenant: &str,
    base: &str,
    group: DirectoryGroup,
    status: StatusCode,
) -> AdminResponse {
    match directory.save_group(tenant, group).await {
        Ok(group) => {
            tracing::info!(target: "audit", event = "group.saved", tenant, group = %group.display_name, members = group.members.len(), "SCIM: group saved");
            let form = group_json(directory, tenant, &group, base, false);
            let mut response = tagged(scim_response(status, form), group.version);
            if status == StatusCode::CREATED {
                if let Ok(location) =
                    http::HeaderValue::from_str(&format!("{base}/Groups/{}", group.id))
                {
                    response
                        .headers_mut()
                        .insert(http::header::LOCATION, location);
                }
            }
            response
        }
        Err(e) => directory_error(e),
    }
}

async fn create_group(
    directory: &Directory,
    tenant: &str,
    base: &str,
    body: &[u8],
) -> AdminResponse {
    match group_from(body, uuid::Uuid::new_v4().to_string(), now(), 1) {
        Ok(group) => save_group(directory, tenant, base, group, StatusCode::CREATED).await,
        Err(error) => error.response(),
    }
}

async fn replace_group(
    directory: &Directory,
    tenant: &str,
    base: &str,
    id: &str,
    body: &[u8],
    precondition: &Precondition,
) -> AdminResponse {
    let updated = directory
        .update_group(tenant, id, |current| {
            if !precondition.holds(Some(&version_tag(current.version))) {
                return Err(ScimError::changed(precondition));
            }
            group_from(
                body,
                current.id.clone(),
                current.created.clone(),
                current.version + 1,
            )
        })
        .await;
    group_changed(directory, updated, tenant, base)
}

/// The answer to a replaced or patched group.
fn group_changed(
    directory: &Directory,
    updated: Result<Result<DirectoryGroup, ScimError>, DirectoryError>,
    tenant: &str,
    base: &str,
) -> AdminResponse {
    match updated {
        Ok(Ok(group)) => {
            tracing::info!(target: "audit", event = "group.saved", tenant, group = %group.display_name, members = group.members.len(), "SCIM: group saved");
            let form = group_json(directory, tenant, &group, base, false);
            tagged(scim_response(StatusCode::OK, form), group.version)
        }
        Ok(Err(refusal)) => refusal.response(),
        Err(DirectoryError::NoSuchGroup(id)) => {
            scim_error(StatusCode::NOT_FOUND, None, format!("no group {id}"))
        }
        Err(e) => directory_error(e),
    }
}

/// The operations of a PATCH body, checked for the PatchOp schema.
fn patch_operations(body: &[u8]) -> Result<Vec<Value>, ScimError> {
    let bad = |detail: String| ScimError::bad("invalidSyntax", detail);
    let mut patch: Value = serde_json::from_slice(body).map_err(|e| bad(format!("body: {e}")))?;
    if !patch
        .get("schemas")
        .and_then(Value::as_array)
        .is_some_and(|s| s.iter().any(|v| v == PATCH_SCHEMA))
    {
        return Err(bad(format!("a PATCH body names the schema {PATCH_SCHEMA}")));
    }
    let operations = match patch.as_object_mut() {
        Some(map) => map
            .remove("Operations")
            .or_else(|| map.remove("operations")),
        None => None,
    };
    match operations {
        Some(Value::Array(operations)) => Ok(operations),
        _ => Err(bad("no Operations".into())),
    }
}

/// One PATCH operation on a group: member additions and removals as Okta and Entra ID send
/// them (`add` `members` with a list; `remove` `members[value eq "…"]`, or `members` with a
/// list, or `members` alone for all), anything else as on users.
fn apply_to_group(resource: &mut Map<String, Value>, operation: &Value) -> Result<(), String> {
    let op = operation["op"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let path = operation["path"].as_str().map(str::trim).unwrap_or("");
    let value = operation.get("value").cloned().unwrap_or(Value::Null);
    // Without a path, each attribute of the value is one operation of its own: `add` of
    // `members` adds to them (RFC 7644 §3.5.2.1), it does not replace them.
    if let (true, Value::Object(attributes)) = (path.is_empty(), &value) {
        for (name, value) in attributes {
            apply_to_group(resource, &json!({ "op": op, "path": name, "value": value }))?;
        }
        return Ok(());
    }
    let mut members = member_ids(resource.get("members").unwrap_or(&Value::Null))?;
    let (attribute, filter, _) = split_path(path)?;
    if !attribute.eq_ignore_ascii_case("members") {
        return apply(resource, operation);
    }
    match (op.as_str(), filter) {
        ("add", None) => {
            for id in member_ids(&value)? {
                if !members.contains(&id) {
                    members.push(id);
                }
            }
        }
        ("replace", None) => members = member_ids(&value)?,
        ("remove", Some((key, wanted))) if key.eq_ignore_ascii_case("value") => {
            members.retain(|m| *m != wanted)
        }
        ("remove", None) if value.is_null() => members.clear(),
        ("remove", None) => {
            let gone = member_ids(&value)?;
            members.retain(|m| !gone.contains(m));
        }
        (other, _) => return Err(format!("`{other}` of `{path}` is not supported on members")),
    }
    let members: Vec<Value> = members
        .into_iter()
        .map(|id| json!({ "value": id }))
        .collect();
    resource.insert("members".into(), Value::Array(members));
    Ok(())
}

async fn patch_group(
    directory: &Directory,
    tenant: &str,
    base: &str,
    id: &str,
    body: &[u8],
    precondition: &Precondition,
) -> AdminResponse {
    let operations = match patch_operations(body) {
        Ok(operations) => operations,
        Err(error) => return error.response(),
    };
    let updated = directory
        .update_group(tenant, id, |current| {
            if !precondition.holds(Some(&version_tag(current.version))) {
                return Err(ScimError::changed(precondition));
            }
            let form = group_json(directory, tenant, current, base, false);
            let mut resource = patched(form, &operations, apply_to_group)?;
            group_from_map(
                &mut resource,
                current.id.clone(),
                current.created.clone(),
                current.version + 1,
            )
        })
        .await;
    group_changed(directory, updated, tenant, base)
}

fn service_provider_config(base: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
        "documentationUri": "https://github.com/policy-gateway/policy-gateway#provision-users-with-scim",
        "patch": { "supported": true },
        "bulk": { "supported": false, "maxOperations": 0, "maxPayloadSize": 0 },
        "filter": { "supported": true, "maxResults": MAX_PAGE },
        "changePassword": { "supported": false },
        "sort": { "supported": false },
        "etag": { "supported": true },
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "Bearer token",
            "description": "The tenant's SCIM token (scim.token_sha256 in its registry document)",
            "primary": true,
        }],
        "meta": { "resourceType": "ServiceProviderConfig", "location": format!("{base}/ServiceProviderConfig") },
    })
}

fn resource_type(base: &str, name: &str, endpoint: &str, schema: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
        "id": name,
        "name": name,
        "endpoint": endpoint,
        "schema": schema,
        "meta": { "resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/{name}") },
    })
}

fn attribute(name: &str, kind: &str, required: bool, uniqueness: &str) -> Value {
    json!({
        "name": name, "type": kind, "multiValued": false, "required": required,
        "caseExact": false, "mutability": "readWrite", "returned": "default",
        "uniqueness": uniqueness,
    })
}

fn user_schema() -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": USER_SCHEMA,
        "name": "User",
        "description": "A user of the tenant; userName is the principal id of the user's tokens. Other attributes of RFC 7643's User are kept as sent.",
        "attributes": [
            attribute("userName", "string", true, "server"),
            attribute("externalId", "string", false, "none"),
            attribute("active", "boolean", false, "none"),
            attribute("displayName", "string", false, "none"),
        ],
        "meta": { "resourceType": "Schema" },
    })
}

fn group_schema() -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": GROUP_SCHEMA,
        "name": "Group",
        "description": "A group of the tenant's users; its displayName becomes a role of its members (renamed by the tenant's scim.group_roles).",
        "attributes": [
            attribute("displayName", "string", true, "server"),
            attribute("externalId", "string", false, "none"),
            {
                "name": "members", "type": "complex", "multiValued": true, "required": false,
                "mutability": "readWrite", "returned": "default", "uniqueness": "none",
                "subAttributes": [
                    attribute("value", "string", true, "none"),
                    attribute("display", "string", false, "none"),
                ],
            },
        ],
        "meta": { "resourceType": "Schema" },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// One SCIM request to `directory` with `headers` (`If-Match` …): status, `ETag`, body.
    async fn request(
        directory: &Directory,
        method: Method,
        path: &str,
        body: Value,
        headers: &[(&'static str, &str)],
    ) -> (StatusCode, Option<String>, Value) {
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, value.parse().unwrap());
        }
        let rest: Vec<&str> = path.trim_matches('/').split('/').collect();
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let response = handle(
            directory,
            "acme",
            &method,
            &rest,
            "",
            &body,
            &Precondition::of(&map),
        )
        .await;
        let status = response.status();
        let tag = response
            .headers()
            .get(http::header::ETAG)
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            tag,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// RFC 7644 §3.14: resources carry their version as `ETag`; `If-None-Match` on a read of
    /// that version is `304`; `If-Match` with an older version refuses a replace, a PATCH or a
    /// delete with `412` and changes nothing.
    #[tokio::test]
    async fn versions_are_etags_and_if_match_guards_every_change() {
        let directory = Directory::default();
        let (status, tag, user) = request(
            &directory,
            Method::POST,
            "Users",
            json!({"schemas": [USER_SCHEMA], "userName": "alice"}),
            &[],
        )
        .await;
        assert_eq!(
            (status, tag.as_deref()),
            (StatusCode::CREATED, Some("W/\"1\""))
        );
        let path = format!("Users/{}", user["id"].as_str().unwrap());
        let (status, _, _) = request(
            &directory,
            Method::GET,
            &path,
            Value::Null,
            &[("if-none-match", "W/\"1\"")],
        )
        .await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);

        let deactivate = json!({"schemas": [PATCH_SCHEMA],
            "Operations": [{"op": "replace", "value": {"active": false}}]});
        let (status, tag, _) = request(
            &directory,
            Method::PATCH,
            &path,
            deactivate.clone(),
            &[("if-match", "W/\"1\"")],
        )
        .await;
        assert_eq!((status, tag.as_deref()), (StatusCode::OK, Some("W/\"2\"")));
        // A client that read version 1 replaces, patches or deletes: refused, nothing changes.
        let replace = json!({"schemas": [USER_SCHEMA], "userName": "alice", "active": true});
        for (method, body) in [
            (Method::PUT, replace.clone()),
            (Method::PATCH, deactivate.clone()),
            (Method::DELETE, Value::Null),
        ] {
            let (status, _, error) = request(
                &directory,
                method.clone(),
                &path,
                body,
                &[("if-match", "W/\"1\"")],
            )
            .await;
            assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{method}: {error}");
        }
        assert!(directory.is_refused("acme", "alice"), "still deactivated");
        let (status, tag, _) = request(
            &directory,
            Method::GET,
            &path,
            Value::Null,
            &[("if-none-match", "W/\"1\"")],
        )
        .await;
        assert_eq!((status, tag.as_deref()), (StatusCode::OK, Some("W/\"2\"")));
        let (status, _, _) = request(
            &directory,
            Method::DELETE,
            &path,
            Value::Null,
            &[("if-match", "\"2\"")],
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);

        let (status, tag, group) = request(
            &directory,
            Method::POST,
            "Groups",
            json!({"schemas": [GROUP_SCHEMA], "displayName": "editors"}),
            &[],
        )
        .await;
        assert_eq!(
            (status, tag.as_deref()),
            (StatusCode::CREATED, Some("W/\"1\""))
        );
        let path = format!("Groups/{}", group["id"].as_str().unwrap());
        let rename = json!({"schemas": [GROUP_SCHEMA], "displayName": "writers"});
        let (status, tag, _) = request(
            &directory,
            Method::PUT,
            &path,
            rename.clone(),
            &[("if-match", "*")],
        )
        .await;
        assert_eq!((status, tag.as_deref()), (StatusCode::OK, Some("W/\"2\"")));
        let (status, _, _) = request(
            &directory,
            Method::PUT,
            &path,
            rename,
            &[("if-match", "W/\"1\"")],
        )
        .await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED);
        let (status, _, _) = request(
            &directory,
            Method::DELETE,
            &path,
            Value::Null,
            &[("if-match", "W/\"1\"")],
        )
        .await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED);
        assert!(directory
            .group("acme", group["id"].as_str().unwrap())
            .is_some());
        let (_, _, config) = request(
            &directory,
            Method::GET,
            "ServiceProviderConfig",
            Value::Null,
            &[],
        )
        .await;
        assert_eq!(config["etag"]["supported"], json!(true));
    }

    fn parse_filter(filter: &str) -> Result<(String, String), String> {
        parse_filter_of(filter, &["userName", "externalId"])
    }

    #[test]
    fn filters_are_user_name_or_external_id_equality() {
        assert_eq!(
            parse_filter("userName eq \"alice\"").unwrap(),
            ("userName".into(), "alice".into())
        );
        assert_eq!(
            parse_filter("urn:ietf:params:scim:schemas:core:2.0:User:userName EQ \"a b\"").unwrap(),
            ("userName".into(), "a b".into())
        );
        assert_eq!(
            parse_filter("externalId eq \"00u1\"").unwrap(),
            ("externalId".into(), "00u1".into())
        );
        for bad in [
            "userName sw \"a\"",
            "emails eq \"a\"",
            "userName eq alice",
            "userName",
        ] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patch_operations_of_okta_and_entra() {
        let mut user = json!({"userName": "alice", "active": true, "name": {"givenName": "A"}})
            .as_object()
            .cloned()
            .unwrap();
        // Okta: replace without a path.
        apply(
            &mut user,
            &json!({"op": "replace", "value": {"active": false}}),
        )
        .unwrap();
        assert_eq!(user["active"], false);
        // Entra ID: capitalised op, a path, a string boolean.
        apply(
            &mut user,
            &json!({"op": "Replace", "path": "active", "value": "True"}),
        )
        .unwrap();
        assert_eq!(scim_bool(&user["active"]), Some(true));
        apply(
            &mut user,
            &json!({"op": "Add", "path": "emails[type eq \"work\"].value", "value": "a@acme.test"}),
        )
        .unwrap();
        apply(&mut user, &json!({"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "alice@acme.test"})).unwrap();
        assert_eq!(
            user["emails"],
            json!([{"type": "work", "value": "alice@acme.test"}])
        );
        apply(
            &mut user,
            &json!({"op": "Replace", "path": "name.familyName", "value": "Z"}),
        )
        .unwrap();
        assert_eq!(user["name"], json!({"givenName": "A", "familyName": "Z"}));
        apply(
            &mut user,
            &json!({"op": "Remove", "path": "emails[type eq \"work\"]"}),
        )
        .unwrap();
        assert_eq!(user["emails"], json!([]));
        assert!(apply(&mut user, &json!({"op": "move", "path": "active"})).is_err());
        assert!(apply(&mut user, &json!({"op": "remove"})).is_err());
        assert!(apply(
            &mut user,
            &json!({"op": "replace", "path": "emails[type eq work].value", "value": 1})
        )
        .is_err());
    }

    /// What one tenant's provisioning client may store is bounded: every replica keeps every
    /// tenant's directory in memory.
    #[test]
    fn resources_are_bounded() {
        let user = |extra: Value| {
            let mut body = json!({"userName": "alice"});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            user_from(
                body.to_string().as_bytes(),
                "u1".into(),
                "2026-12-07T00:00:00Z".into(),
                1,
            )
        };
        assert!(user(json!({"displayName": "Alice", "externalId": "00u-1"})).is_ok());
        assert!(user(json!({"externalId": "x".repeat(257)})).is_err());
        assert!(user(json!({"displayName": "x".repeat(MAX_ATTRIBUTE_BYTES)})).is_err());
        let group = group_from(
            json!({"displayName": "g", "description": "x".repeat(MAX_ATTRIBUTE_BYTES)})
                .to_string()
                .as_bytes(),
            "g1".into(),
            "2026-12-07T00:00:00Z".into(),
            1,
        );
        assert!(group.is_err());
    }

    /// `add` without a path adds the value's members to the group's (RFC 7644 §3.5.2.1); it
    /// replaced them, so u1 and u2 lost the group's role when u3 was added this way.
    #[test]
    fn adding_members_without_a_path_keeps_the_members_there_are() {
        let mut group =
            json!({"displayName": "admins", "members": [{"value": "u1"}, {"value": "u2"}]})
                .as_object()
                .cloned()
                .unwrap();
        apply_to_group(
            &mut group,
            &json!({"op": "add", "value": {"members": [{"value": "u3"}, {"value": "u1"}]}}),
        )
        .unwrap();
        assert_eq!(
            group["members"],
            json!([{"value": "u1"}, {"value": "u2"}, {"value": "u3"}])
        );
        // Replace without a path still replaces, and other attributes are set as before.
        apply_to_group(
            &mut group,
            &json!({"op": "replace", "value": {"members": [{"value": "u2"}], "displayName": "ops"}}),
        )
        .unwrap();
        assert_eq!(group["members"], json!([{"value": "u2"}]));
        assert_eq!(group["displayName"], "ops");
    }
}
