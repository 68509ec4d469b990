//! SCIM 2.0 provisioning through the real gateway's admin listener (the example deployment:
//! tenant acme's SCIM token), replaying the request sequences Okta and Entra ID document, and
//! deprovisioning: a user deactivated or deleted is refused on the next request — a still-valid
//! token and an API key the user owns — with `401 principal-deactivated`, and the audit record
//! says so; reactivation restores access; the directory survives a restart.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::example::{example_config, example_file, token};
use crate::common::{client, free_addr, upstream, TestGateway};

const SCIM_TOKEN: &str = "demo-acme-scim-token-4b1d3c9e";

struct Scim {
    base: String,
    http: reqwest::Client,
}

impl Scim {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_with(method, path, body, SCIM_TOKEN).await
    }

    async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: &str,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/scim+json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

fn patch(operations: Value) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations})
}

async fn status_of(gw: &TestGateway, bearer: &str) -> (u16, String) {
    let response = client()
        .get(gw.url("/projects/42"))
        .header("authorization", bearer)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// How long until `bearer` gets `want` on `GET /projects/42`.
async fn until_status(gw: &TestGateway, bearer: &str, want: u16) -> Duration {
    let started = Instant::now();
    loop {
        if status_of(gw, bearer).await.0 == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no {want} within 5 s\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The reports route with the demo API key (owned by bob).
async fn reports(gw: &TestGateway) -> reqwest::Response {
    client()
        .get(gw.url("/reports"))
        .header("x-api-key", "demo-acme-reporting-key")
        .send()
        .await
        .unwrap()
}

fn start(admin: SocketAddr, eu: SocketAddr, us: SocketAddr) -> TestGateway {
    let mut gw = TestGateway::start(
        &example_config(admin, eu, us),
        &[
            ("demo-issuer.secret", &example_file("demo-issuer.secret")),
            ("demo-admin.token", &example_file("demo-admin.token")),
            ("tenants.toml", &example_file("tenants.toml")),
        ],
    );
    gw.wait_accepting(admin);
    gw
}

#[tokio::test(flavor = "multi_thread")]
async fn okta_and_entra_provision_and_deprovision_users_on_the_next_request() {
    let eu = upstream("app-eu (eu-central)").await;
    let us = upstream("app-us (us-east)").await;
    let admin = free_addr();
    let mut gw = start(admin, eu.addr, us.addr);
    let scim = Scim {
        base: format!("http://{admin}/scim/v2/acme"),
        http: client(),
    };

    // Only the tenant's own token opens its SCIM endpoint.
    let admin_token = String::from_utf8(example_file("demo-admin.token")).unwrap();
    for (tenant, token) in [
        ("acme", "wrong"),
        ("acme", admin_token.trim()),
        ("globex", SCIM_TOKEN),
    ] {
        let wrong = Scim {
            base: format!("http://{admin}/scim/v2/{tenant}"),
            http: client(),
        };
        let (status, _) = wrong.call_with("GET", "/Users", None, token).await;
        assert_eq!(status, 401, "{tenant} with {token}");
    }

    // Discovery, as both clients start.
    let (status, config) = scim.call("GET", "/ServiceProviderConfig", None).await;
    assert_eq!(status, 200);
    assert_eq!(config["patch"]["supported"], true);
    assert_eq!(config["filter"]["supported"], true);
    let (status, schemas) = scim.call("GET", "/Schemas", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        schemas["Resources"][0]["id"],
        "urn:ietf:params:scim:schemas:core:2.0:User"
    );

    // Okta: look the user up by userName, create when absent.
    let (status, found) = scim
        .call(
            "GET",
            "/Users?filter=userName%20eq%20%22alice%22&startIndex=1&count=100",
            None,
        )
        .await;
    assert_eq!((status, found["totalResults"].clone()), (200, json!(0)));
    let (status, alice) = scim
        .call(
            "POST",
            "/Users",
            Some(json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "alice",
                "name": {"givenName": "Alice", "familyName": "Anders"},
                "emails": [{"primary": true, "value": "alice@acme.example", "type": "work"}],
                "displayName": "Alice Anders",
                "locale": "en-US",
                "externalId": "00u1okta",
                "groups": [],
                "password": "never-stored-1!",
                "active": true
            })),
        )
        .await;
    assert_eq!(status, 201, "{alice}");
    let alice_id = alice["id"].as_str().unwrap().to_string();
    assert_eq!(
        alice["meta"]["location"],
        format!("/scim/v2/acme/Users/{alice_id}")
    );
    assert!(alice.get("password").is_none(), "{alice}");
    let (status, conflict) = scim
        .call("POST", "/Users", Some(json!({"userName": "ALICE"})))
        .await;
    assert_eq!(
        (status, conflict["scimType"].clone()),
        (409, json!("uniqueness"))
    );
    let (status, found) = scim
        .call("GET", "/Users?filter=userName%20eq%20%22alice%22", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(found["totalResults"], 1);
    assert_eq!(found["Resources"][0]["id"], alice_id.as_str());
    assert_eq!(found["Resources"][0]["name"]["givenName"], "Alice");

    // Alice's token works; Okta deactivates her (PATCH, op replace without a path): the same,
    // still valid token is refused on the next request.
    let alice_bearer = format!(
        "Bearer {}",
        token("alice", Some("acme"), &["viewer".into()], false)
    );
    assert_eq!(status_of(&gw, &alice_bearer).await.0, 200);
    let (status, patched) = scim
        .call(
            "PATCH",
            &format!("/Users/{alice_id}"),
            Some(patch(
                json!([{"op": "replace", "value": {"active": false}}]),
            )),
        )
        .await;
    assert_eq!((status, patched["active"].clone()), (200, json!(false)));
    let took = until_status(&gw, &alice_bearer, 401).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    let (status, body) = status_of(&gw, &alice_bearer).await;
    assert_eq!(status, 401);
    assert!(body.contains("principal-deactivated"), "{body}");
    // Okta reactivates her.
    scim.call(
        "PATCH",
        &format!("/Users/{alice_id}"),
        Some(patch(json!([{"op": "replace", "value": {"active": true}}]))),
    )
    .await;
    until_status(&gw, &alice_bearer, 200).await;

    // Entra ID: create bob, then its PATCH forms (capitalised ops, paths, string booleans).
    let (status, bob) = scim
        .call(
            "POST",
            "/Users",
            Some(json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User",
                            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
                "externalId": "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef",
                "userName": "bob",
                "active": true,
                "emails": [{"primary": true, "type": "work", "value": "bob@acme.example"}],
                "meta": {"resourceType": "User"},
                "name": {"formatted": "Bob B", "familyName": "B", "givenName": "Bob"},
                "roles": []
            })),
        )
        .await;
    assert_eq!(status, 201, "{bob}");
    let bob_id = bob["id"].as_str().unwrap().to_string();
    let (status, bob) = scim
        .call(
            "PATCH",
            &format!("/Users/{bob_id}"),
            Some(patch(json!([
                {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "robert@acme.example"},
                {"op": "Replace", "path": "name.givenName", "value": "Robert"},
                {"op": "Add", "path": "displayName", "value": "Robert B"}
            ]))),
        )
        .await;
    assert_eq!(status, 200, "{bob}");
    assert_eq!(bob["emails"][0]["value"], "robert@acme.example");
    assert_eq!(bob["name"]["givenName"], "Robert");
    assert_eq!(bob["meta"]["version"], "W/\"2\"");
    let (status, found) = scim
        .call(
            "GET",
            "/Users?filter=externalId%20eq%20%220a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef%22",
            None,
        )
        .await;
    assert_eq!((status, found["totalResults"].clone()), (200, json!(1)));
    // The API key bob owns works until Entra disables bob ("False", a string).
    assert_eq!(reports(&gw).await.status(), 200);
    let (status, _) = scim
        .call(
            "PATCH",
            &format!("/Users/{bob_id}"),
            Some(patch(
                json!([{"op": "Replace", "path": "active", "value": "False"}]),
            )),
        )
        .await;
    assert_eq!(status, 200);
    let refused = reports(&gw).await;
    assert_eq!(refused.status(), 401);
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("principal-deactivated"));

    // Pagination over the two users.
    let (_, page) = scim.call("GET", "/Users?startIndex=2&count=1", None).await;
    assert_eq!(
        (
            page["totalResults"].clone(),
            page["itemsPerPage"].clone(),
            page["startIndex"].clone()
        ),
        (json!(2), json!(1), json!(2))
    );
    assert_eq!(page["Resources"][0]["userName"], "bob");
    // Bad filters and paths are SCIM errors, not guesses.
    let (status, error) = scim
        .call("GET", "/Users?filter=userName%20sw%20%22a%22", None)
        .await;
    assert_eq!(
        (status, error["scimType"].clone()),
        (400, json!("invalidFilter"))
    );
    let (status, _) = scim
        .call(
            "PATCH",
            &format!("/Users/{alice_id}"),
            Some(patch(json!([{"op": "move", "path": "active"}]))),
        )
        .await;
    assert_eq!(status, 400);

    // A deleted user stays refused; the directory survives a restart.
    let (status, _) = scim
        .call("DELETE", &format!("/Users/{alice_id}"), None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        scim.call("GET", &format!("/Users/{alice_id}"), None)
            .await
            .0,
        404
    );
    until_status(&gw, &alice_bearer, 401).await;
    gw.restart();
    gw.wait_accepting(admin);
    assert_eq!(status_of(&gw, &alice_bearer).await.0, 401);
    assert_eq!(reports(&gw).await.status(), 401);
    let (_, found) = scim.call("GET", "/Users", None).await;
    assert_eq!(found["totalResults"], 1, "{found}");

    // The audit log says why.
    let audit = std::fs::read_dir(gw.dir.path().join("state/audit"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .collect::<String>();
    assert!(audit.contains("principal-deactivated"), "no audit reason");
}

/// Three replicas on one PostgreSQL registry: a user deactivated through one replica's SCIM
/// endpoint is refused by every replica within a second (its API key here), and a user deleted
/// through another is too; reactivation reaches all of them again.
#[tokio::test(flavor = "multi_thread")]
async fn a_deactivation_reaches_every_replica_within_a_second() {
    use crate::common::{config_for, pg_url, unique_table};
    use gateway::tenancy::registry::api_key_hash;
    use sha2::Digest;

    let db = gateway::db::connect(&pg_url(), None).await.unwrap();
    let table = unique_table("scim_tenants");
    gateway::tenancy::postgres::migrate(&db, &table)
        .await
        .unwrap();
    let key_of = |id: &str, owner: &str| json!({"id": id, "sha256": hex::encode(api_key_hash(&format!("{id}-secret"))), "owner": owner});
    let doc = json!({
        "id": "acme",
        "scim": {"token_sha256": hex::encode(sha2::Sha256::digest(SCIM_TOKEN.as_bytes()))},
        "api_keys": [key_of("alice-key", "alice"), key_of("bob-key", "bob")],
    });
    db.execute(
        &format!("INSERT INTO {table} (id, doc) VALUES ('acme', $1)"),
        &[&doc],
    )
    .await
    .unwrap();
    let up = upstream("app").await;
    let admins = [free_addr(), free_addr(), free_addr()];
    let token = "replica-test-admin-token-0123456789abcdef";
    let mut gateways = Vec::new();
    for admin in admins {
        let config = config_for(
            &[up.addr],
            &format!(
                "\n[identity]\n[tenancy]\nsources = [\"credential\"]\n\
                 [tenancy.registry.postgres]\nurl = \"{}\"\ntable = \"{table}\"\n\
                 [admin]\nlisten = \"{admin}\"\ntoken_file = \"admin.token\"\n",
                pg_url()
            ),
        );
        let mut gw = TestGateway::start(&config, &[("admin.token", token.as_bytes())]);
        gw.wait_accepting(admin);
        gateways.push(gw);
    }
    let scim = |i: usize| Scim {
        base: format!("http://{}/scim/v2/acme", admins[i]),
        http: client(),
    };
    let with_key = |gw: &TestGateway, key: &str| {
        client()
            .get(gw.url("/things"))
            .header("x-api-key", format!("{key}-secret"))
            .send()
    };
    let (status, alice) = scim(0)
        .call("POST", "/Users", Some(json!({"userName": "alice"})))
        .await;
    assert_eq!(status, 201, "{alice}");
    let (status, bob) = scim(1)
        .call("POST", "/Users", Some(json!({"userName": "bob"})))
        .await;
    assert_eq!(status, 201, "{bob}");
    // The name is taken for every replica (the table's unique index).
    let (status, _) = scim(2)
        .call("POST", "/Users", Some(json!({"userName": "Alice"})))
        .await;
    assert_eq!(status, 409);
    for gw in &gateways {
        for key in ["alice-key", "bob-key"] {
            assert_eq!(with_key(gw, key).await.unwrap().status(), 200, "{key}");
        }
    }

    // Alice deactivated through replica 0: every replica refuses her key within a second.
    let alice_id = alice["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    let (status, _) = scim(0)
        .call(
            "PATCH",
            &format!("/Users/{alice_id}"),
            Some(patch(
                json!([{"op": "replace", "path": "active", "value": false}]),
            )),
        )
        .await;
    assert_eq!(status, 200);
    let mut slowest = Duration::ZERO;
    for gw in &gateways {
        loop {
            let response = with_key(gw, "alice-key").await.unwrap();
            if response.status() == 401 {
                assert!(response
                    .text()
                    .await
                    .unwrap()
                    .contains("principal-deactivated"));
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "{}", gw.log());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        slowest = slowest.max(started.elapsed());
    }
    eprintln!("deactivation refused by all three replicas after {slowest:?}");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    for gw in &gateways {
        assert_eq!(with_key(gw, "bob-key").await.unwrap().status(), 200);
    }

    // Bob deleted through replica 2, alice reactivated through replica 1.
    let bob_id = bob["id"].as_str().unwrap().to_string();
    assert_eq!(
        scim(2)
            .call("DELETE", &format!("/Users/{bob_id}"), None)
            .await
            .0,
        204
    );
    scim(1)
        .call(
            "PATCH",
            &format!("/Users/{alice_id}"),
            Some(patch(
                json!([{"op": "replace", "path": "active", "value": true}]),
            )),
        )
        .await;
    let started = Instant::now();
    for gw in &gateways {
        loop {
            let alice = with_key(gw, "alice-key").await.unwrap().status();
            let bob = with_key(gw, "bob-key").await.unwrap().status();
            if (alice, bob) == (reqwest::StatusCode::OK, reqwest::StatusCode::UNAUTHORIZED) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "{}", gw.log());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // Every replica lists the same directory.
    for i in 0..3 {
        let (_, list) = scim(i).call("GET", "/Users", None).await;
        assert_eq!(list["totalResults"], 1, "replica {i}: {list}");
    }

    // Groups are shared too: created through replica 0, listed with alice by every replica,
    // their names unique across replicas, deleted through replica 2 for all.
    let (status, group) = scim(0)
        .call(
            "POST",
            "/Groups",
            Some(json!({"displayName": "editors", "members": [{"value": alice_id}]})),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    let (status, _) = scim(1)
        .call("POST", "/Groups", Some(json!({"displayName": "Editors"})))
        .await;
    assert_eq!(status, 409);
    let group_id = group["id"].as_str().unwrap().to_string();
    for i in 0..3 {
        let seen = crate::common::eventually(Duration::from_secs(1), || async {
            let (_, list) = scim(i).call("GET", "/Groups", None).await;
            list["Resources"][0]["members"][0]["display"] == "alice"
        })
        .await;
        assert!(seen.is_some(), "replica {i} does not list the group");
    }
    assert_eq!(
        scim(2)
            .call("DELETE", &format!("/Groups/{group_id}"), None)
            .await
            .0,
        204
    );
    for i in 0..3 {
        let gone = crate::common::eventually(Duration::from_secs(1), || async {
            scim(i).call("GET", "/Groups", None).await.1["totalResults"] == 0
        })
        .await;
        assert!(gone.is_some(), "replica {i} still lists the group");
    }
}

/// The operator's switch, without an identity provider: `POST /admin/tenants/acme/principals/
/// bob/deactivate` refuses bob (a principal the directory never had) on the next request, with
/// his tokens and his API key; `activate` lets him in again.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_deactivates_and_activates_a_principal() {
    let eu = upstream("app-eu (eu-central)").await;
    let us = upstream("app-us (us-east)").await;
    let admin = free_addr();
    let gw = start(admin, eu.addr, us.addr);
    let admin_token = String::from_utf8(example_file("demo-admin.token")).unwrap();
    let switch = |principal: &str, what: &str| {
        client()
            .post(format!(
                "http://{admin}/admin/tenants/acme/principals/{principal}/{what}"
            ))
            .bearer_auth(admin_token.trim())
            .send()
    };
    let bob = format!(
        "Bearer {}",
        token("bob", Some("acme"), &["admin".into()], true)
    );
    assert_eq!(status_of(&gw, &bob).await.0, 200);
    assert_eq!(reports(&gw).await.status(), 200);
    let response = switch("bob", "deactivate").await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (body["principal"].clone(), body["active"].clone()),
        (json!("bob"), json!(false))
    );
    assert!(until_status(&gw, &bob, 401).await < Duration::from_secs(1));
    assert_eq!(reports(&gw).await.status(), 401);
    // SCIM sees the same directory.
    let scim = Scim {
        base: format!("http://{admin}/scim/v2/acme"),
        http: client(),
    };
    let (_, found) = scim
        .call("GET", "/Users?filter=userName%20eq%20%22bob%22", None)
        .await;
    assert_eq!(found["Resources"][0]["active"], false, "{found}");
    assert_eq!(switch("bob", "activate").await.unwrap().status(), 200);
    until_status(&gw, &bob, 200).await;
    assert_eq!(reports(&gw).await.status(), 200);
    // dave came with a token only (just-in-time provisioned): the directory lists him, so the
    // identity provider finds him over SCIM.
    let dave = format!(
        "Bearer {}",
        token("dave", Some("acme"), &["viewer".into()], false)
    );
    assert_eq!(status_of(&gw, &dave).await.0, 200);
    let listed = crate::common::eventually(Duration::from_secs(5), || async {
        let (_, found) = scim
            .call("GET", "/Users?filter=userName%20eq%20%22dave%22", None)
            .await;
        found["totalResults"] == 1 && found["Resources"][0]["active"] == true
    })
    .await;
    assert!(listed.is_some(), "dave not listed\n{}", gw.log());
    // An unknown tenant, and no admin token: refused.
    let unknown = client()
        .post(format!(
            "http://{admin}/admin/tenants/nope/principals/bob/deactivate"
        ))
        .bearer_auth(admin_token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let anonymous = client()
        .post(format!(
            "http://{admin}/admin/tenants/acme/principals/bob/deactivate"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

/// Status of `PUT /projects/42` (the `write` action: editors may, viewers may not).
async fn update_status(gw: &TestGateway, bearer: &str) -> u16 {
    client()
        .put(gw.url("/projects/42"))
        .header("authorization", bearer)
        .body("{}")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// How long until `PUT /projects/42` with `bearer` answers `want`.
async fn until_update_status(gw: &TestGateway, bearer: &str, want: u16) -> Duration {
    let started = Instant::now();
    while update_status(gw, bearer).await != want {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no {want} within 5 s\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn scim_groups_give_their_members_roles_on_the_next_request() {
    let eu = upstream("app-eu (eu-central)").await;
    let us = upstream("app-us (us-east)").await;
    let admin = free_addr();
    let gw = start(admin, eu.addr, us.addr);
    let scim = Scim {
        base: format!("http://{admin}/scim/v2/acme"),
        http: client(),
    };
    // erin's token says viewer; the example tenant maps the group "Acme Editors" to `editor`.
    let erin = format!(
        "Bearer {}",
        token("erin", Some("acme"), &["viewer".into()], false)
    );
    assert_eq!(update_status(&gw, &erin).await, 403);
    let (status, user) = scim
        .call(
            "POST",
            "/Users",
            Some(
                json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "erin", "externalId": "00u-erin", "active": true}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{user}");
    let erin_id = user["id"].as_str().unwrap().to_string();

    // Discovery lists groups.
    let (_, types) = scim.call("GET", "/ResourceTypes", None).await;
    assert_eq!(types["Resources"][1]["endpoint"], "/Groups", "{types}");

    // Okta: create the group empty, then PATCH members in; lookups exclude members.
    let (status, group) = scim
        .call(
            "POST",
            "/Groups",
            Some(
                json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                "displayName": "Acme Editors", "members": []}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    let group_id = group["id"].as_str().unwrap().to_string();
    let (status, taken) = scim
        .call(
            "POST",
            "/Groups",
            Some(json!({"displayName": "acme editors"})),
        )
        .await;
    assert_eq!(
        (status, taken["scimType"].clone()),
        (409, json!("uniqueness"))
    );
    let (_, found) = scim
        .call(
            "GET",
            "/Groups?filter=displayName%20eq%20%22Acme%20Editors%22&excludedAttributes=members",
            None,
        )
        .await;
    assert_eq!(found["totalResults"], 1, "{found}");
    assert!(found["Resources"][0].get("members").is_none(), "{found}");
    let (status, patched) = scim
        .call(
            "PATCH",
            &format!("/Groups/{group_id}"),
            Some(patch(json!([{"op": "add", "path": "members",
                "value": [{"value": erin_id, "display": "erin"}]}]))),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["members"][0]["display"], "erin");
    let granted = until_update_status(&gw, &erin, 200).await;
    assert!(granted < Duration::from_secs(1), "{granted:?}");
    // Reading still works (the role only widens).
    assert_eq!(status_of(&gw, &erin).await.0, 200);

    // Okta removes a member with a value filter.
    let (status, _) = scim
        .call(
            "PATCH",
            &format!("/Groups/{group_id}"),
            Some(patch(json!([{"op": "remove",
                "path": format!("members[value eq \"{erin_id}\"]")}]))),
        )
        .await;
    assert_eq!(status, 200);
    until_update_status(&gw, &erin, 403).await;

    // Entra ID: capitalised ops, add and remove with a value list, a rename by path.
    let (status, _) = scim
        .call(
            "PATCH",
            &format!("/Groups/{group_id}"),
            Some(patch(
                json!([{"op": "Add", "path": "members", "value": [{"value": erin_id}]}]),
            )),
        )
        .await;
    assert_eq!(status, 200);
    until_update_status(&gw, &erin, 200).await;
    let (status, renamed) = scim
        .call(
            "PATCH",
            &format!("/Groups/{group_id}"),
            Some(patch(
                json!([{"op": "Replace", "path": "displayName", "value": "Acme Readers"}]),
            )),
        )
        .await;
    assert_eq!(
        (status, renamed["displayName"].clone()),
        (200, json!("Acme Readers"))
    );
    // "Acme Readers" is not in the tenant's group_roles: no role.
    until_update_status(&gw, &erin, 403).await;
    let (status, _) = scim
        .call(
            "PUT",
            &format!("/Groups/{group_id}"),
            Some(json!({"displayName": "Acme Editors", "members": [{"value": erin_id}]})),
        )
        .await;
    assert_eq!(status, 200);
    until_update_status(&gw, &erin, 200).await;

    // A member must be a user of the tenant; unknown groups are 404.
    let (status, bad) = scim
        .call(
            "PATCH",
            &format!("/Groups/{group_id}"),
            Some(patch(
                json!([{"op": "add", "path": "members", "value": [{"value": "nobody"}]}]),
            )),
        )
        .await;
    assert_eq!(
        (status, bad["scimType"].clone()),
        (400, json!("invalidValue")),
        "{bad}"
    );
    assert_eq!(scim.call("GET", "/Groups/nope", None).await.0, 404);

    // An identity provider's PATCHes at once (one member each): every one counts. Each read
    // the group before any wrote it, and the last write won (members lost their role).
    let mut ids = Vec::new();
    for i in 0..12 {
        let (status, user) = scim
            .call(
                "POST",
                "/Users",
                Some(json!({"userName": format!("crowd-{i}")})),
            )
            .await;
        assert_eq!(status, 201, "{user}");
        ids.push(user["id"].as_str().unwrap().to_string());
    }
    let group_path = format!("/Groups/{group_id}");
    let statuses = futures_util::future::join_all(ids.iter().map(|id| {
        scim.call(
            "PATCH",
            &group_path,
            Some(patch(
                json!([{"op": "add", "path": "members", "value": [{"value": id}]}]),
            )),
        )
    }))
    .await;
    assert!(statuses.iter().all(|(s, _)| *s == 200), "{statuses:?}");
    let (_, group) = scim.call("GET", &format!("/Groups/{group_id}"), None).await;
    let members: Vec<&str> = group["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["value"].as_str())
        .collect();
    for id in &ids {
        assert!(members.contains(&id.as_str()), "{id} lost: {members:?}");
    }
    assert!(members.contains(&erin_id.as_str()), "{members:?}");

    // Deleting the group takes the role away.
    let (status, _) = scim
        .call("DELETE", &format!("/Groups/{group_id}"), None)
        .await;
    assert_eq!(status, 204);
    until_update_status(&gw, &erin, 403).await;
    let (_, all) = scim.call("GET", "/Groups", None).await;
    assert_eq!(all["totalResults"], 0, "{all}");
}
