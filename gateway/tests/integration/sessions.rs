//! Browser login against a real OpenID Provider (the npm `oidc-provider`, started by the test):
//! a tenant onboarded with SSO through the admin API (no restart, no file edit), a browser sent
//! to log in, the authorization code flow with PKCE through the provider's login form, the
//! session cookie's attributes, the session as the same principal as a bearer token (same
//! roles, same Cedar decisions), refresh past the ID token's expiry, deactivation, back-channel
//! logout and RP-initiated logout. A second test drives the same login in headless Chromium.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gateway_testkit::oidc::{HttpFlow, OidcProvider};
use serde_json::{json, Value};

use crate::common::example::{example_config, example_file};
use crate::common::{client, free_addr, upstream, TestGateway};

const CLIENT_ID: &str = "acme-portal";
const CLIENT_SECRET: &str = "acme-portal-secret-0123456789abcdef";

/// The example deployment with its tenant registry in PostgreSQL (seeded from the example
/// tenants.toml), so tenants are onboarded through the admin API as in production.
async fn start(admin: SocketAddr, eu: SocketAddr, us: SocketAddr) -> TestGateway {
    let table = seeded_registry().await;
    start_on(&table, admin, eu, us)
}

/// A PostgreSQL tenant registry holding the example tenants: its table.
async fn seeded_registry() -> String {
    use crate::common::{pg_url, unique_table};
    let db = gateway::db::connect(&pg_url(), None).await.unwrap();
    let table = unique_table("sso_tenants");
    gateway::tenancy::postgres::migrate(&db, &table)
        .await
        .unwrap();
    let tenants: toml::Value =
        toml::from_str(&String::from_utf8(example_file("tenants.toml")).unwrap()).unwrap();
    for tenant in tenants["tenant"].as_array().unwrap() {
        let doc = serde_json::to_value(tenant).unwrap();
        db.execute(
            &format!("INSERT INTO {table} (id, doc) VALUES ($1, $2)"),
            &[&doc["id"].as_str().unwrap(), &doc],
        )
        .await
        .unwrap();
    }
    table
}

/// A gateway (one replica) of the example deployment on the registry `table`.
fn start_on(table: &str, admin: SocketAddr, eu: SocketAddr, us: SocketAddr) -> TestGateway {
    use crate::common::pg_url;
    let config = example_config(admin, eu, us).replace(
        "[tenancy.registry]\nfile = \"tenants.toml\"",
        &format!(
            "[tenancy.registry.postgres]\nurl = \"{}\"\ntable = \"{table}\"",
            pg_url()
        ),
    );
    assert!(
        config.contains(table),
        "the example's registry section changed shape"
    );
    let mut gw = TestGateway::start(
        &config,
        &[
            ("demo-issuer.secret", &example_file("demo-issuer.secret")),
            ("demo-admin.token", &example_file("demo-admin.token")),
            ("tenants.toml", &example_file("tenants.toml")),
        ],
    );
    gw.wait_accepting(admin);
    gw
}

/// The provider, with the gateway's callback, logout and back-channel URIs registered.
fn provider_for(gw: &TestGateway, id_token_ttl: u64) -> OidcProvider {
    OidcProvider::start(&json!({
        "clients": [{
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [gw.url("/.gateway/callback")],
            "post_logout_redirect_uris": [gw.url("/.gateway/logged-out")],
            "backchannel_logout_uri": gw.url("/.gateway/backchannel-logout"),
        }],
        "accounts": {
            "alice": {"email": "alice@acme.test", "roles": ["viewer"], "department": "eng"},
            "olga": {"email": "olga@acme.test", "roles": ["admin"]},
        },
        "ttl": {"IdToken": id_token_ttl},
    }))
}

/// A client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn admin_token() -> String {
    String::from_utf8(example_file("demo-admin.token"))
        .unwrap()
        .trim()
        .to_string()
}

/// Onboards acme's identity provider through the admin API: its issuer (RS256 keys by
/// discovery, the `roles` claim) and its SSO client.
async fn onboard(admin: SocketAddr, provider: &OidcProvider) {
    let url = format!("http://{admin}/admin/tenants/acme");
    let mut doc: Value = client()
        .get(&url)
        .bearer_auth(admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    doc["issuers"] = json!([{
        "issuer": provider.issuer,
        "audiences": [CLIENT_ID],
        "algorithms": ["RS256"],
        "claims": {"roles": "roles", "attributes": {"department": "department"}},
    }]);
    doc["sso"] = json!({
        "oidc": {"issuer": provider.issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
        "email_domains": ["acme.test"],
    });
    let response = client()
        .put(&url)
        .bearer_auth(admin_token())
        .json(&doc)
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert_eq!(status, 200, "{}", response.text().await.unwrap());
}

/// The echo upstream's view of the forwarded request.
fn forwarded(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn header<'v>(echo: &'v Value, name: &str) -> &'v Value {
    &echo["headers"][name][0]
}

async fn status_with(flow: &HttpFlow, method: reqwest::Method, url: &str) -> (u16, String) {
    let response = flow
        .client
        .request(method, url)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn browser_login_is_the_same_principal_as_a_bearer_token() {
    let eu = upstream("app-eu (eu-central)").await;
    let us = upstream("app-us (us-east)").await;
    let admin = free_addr();
    let gw = start(admin, eu.addr, us.addr).await;
    let provider = provider_for(&gw, 3);

    // Onboarding: registry entry + IdP configuration through the admin API, then the first
    // successful login.
    let onboarding = Instant::now();
    onboard(admin, &provider).await;

    // A browser without a session is sent to log in, and back afterwards; an API client is
    // told 401 as before.
    let browser = no_redirects()
        .get(gw.url("/projects/42"))
        .header("accept", "text/html,application/xhtml+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(browser.status(), 302);
    assert_eq!(
        browser.headers()["location"],
        "/.gateway/login?rd=%2Fprojects%2F42"
    );
    // (The example allows anonymous callers: without a tenant an API client gets 400.)
    let api = no_redirects()
        .get(gw.url("/projects/42"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 400);

    // The login page finds the tenant by the e-mail domain typed into its form.
    let form = no_redirects()
        .get(gw.url("/.gateway/login?rd=%2Fprojects%2F42"))
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 200);
    assert!(form.text().await.unwrap().contains("name=\"email\""));
    let to_provider = no_redirects()
        .post(gw.url("/.gateway/login"))
        .form(&[("email", "alice@acme.test"), ("rd", "/projects/42")])
        .send()
        .await
        .unwrap();
    assert_eq!(to_provider.status(), 303);
    let location = to_provider.headers()["location"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        location.starts_with(&format!("{}/", provider.issuer)),
        "{location}"
    );
    for parameter in [
        "code_challenge_method=S256",
        "code_challenge=",
        "state=",
        "nonce=",
        "login_hint=alice%40acme.test",
    ] {
        assert!(location.contains(parameter), "{parameter} in {location}");
    }
    let login_cookie = to_provider.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    for attribute in [
        "__Host-gw-login=",
        "Secure",
        "HttpOnly",
        "SameSite=Lax",
        "Path=/",
    ] {
        assert!(
            login_cookie.contains(attribute),
            "{attribute} in {login_cookie}"
        );
    }
    let unknown = no_redirects()
        .post(gw.url("/.gateway/login"))
        .form(&[("email", "mallory@elsewhere.test")])
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);

    // The whole flow: login page (hinted) → provider's login form → callback → the app.
    let flow = HttpFlow::new();
    let page = flow
        .login(
            &gw.url("/.gateway/login?rd=%2Fprojects%2F42&login_hint=alice%40acme.test"),
            "alice",
        )
        .await;
    let onboarded_in = onboarding.elapsed();
    eprintln!("onboarding (PUT tenant with SSO -> first login reaching the app): {onboarded_in:?}");
    assert!(onboarded_in < Duration::from_secs(60), "{onboarded_in:?}");
    assert_eq!(
        page.status,
        200,
        "{page:?}\n{}\n{}",
        gw.log(),
        provider.log()
    );
    assert_eq!(page.url, gw.url("/projects/42"));
    let echo = forwarded(&page.body);
    assert_eq!(header(&echo, "x-principal-id"), "alice", "{echo}");
    assert_eq!(header(&echo, "x-tenant-id"), "acme");
    assert_eq!(header(&echo, "x-principal-roles"), "viewer");
    // The session (it holds the refresh token) never reaches the upstream.
    let cookies = echo["headers"]["cookie"].to_string();
    assert!(!cookies.contains("__Host-gw-"), "{cookies}");
    let session_cookie = flow.cookies(&gw.url("/")).unwrap_or_default();
    assert!(
        session_cookie.contains("__Host-gw-session="),
        "{session_cookie}"
    );
    assert!(
        !session_cookie.contains("__Host-gw-login="),
        "the login cookie is cleared"
    );

    // Same principal, same policies: a viewer reads but does not update.
    assert_eq!(
        status_with(&flow, reqwest::Method::GET, &gw.url("/projects"))
            .await
            .0,
        200
    );
    assert_eq!(
        status_with(&flow, reqwest::Method::PUT, &gw.url("/projects/42"))
            .await
            .0,
        403
    );
    let whoami: Value = flow
        .client
        .get(gw.url("/.gateway/session"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            whoami["principal"].clone(),
            whoami["tenant"].clone(),
            whoami["roles"].clone()
        ),
        (json!("alice"), json!("acme"), json!(["viewer"])),
        "{whoami}"
    );
    let first_expiry = whoami["expires_at"].as_u64().unwrap();

    // The ID token lives 3 s: past it, the session redeems its refresh token and the response
    // carries the renewed cookie.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let response = flow
        .client
        .get(gw.url("/projects/42"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", gw.log());
    let renewed = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .any(|v| v.to_str().unwrap_or("").starts_with("__Host-gw-session="));
    assert!(
        renewed,
        "no renewed session cookie: {:?}",
        response.headers()
    );
    let whoami: Value = flow
        .client
        .get(gw.url("/.gateway/session"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        whoami["expires_at"].as_u64().unwrap() > first_expiry,
        "{whoami}"
    );

    // Deactivated in the directory: the session is refused like a token would be.
    let switch = |what: &'static str| {
        client()
            .post(format!(
                "http://{admin}/admin/tenants/acme/principals/alice/{what}"
            ))
            .bearer_auth(admin_token())
            .send()
    };
    assert_eq!(switch("deactivate").await.unwrap().status(), 200);
    let (status, body) = status_with(&flow, reqwest::Method::GET, &gw.url("/projects/42")).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("principal-deactivated"), "{body}");
    assert_eq!(switch("activate").await.unwrap().status(), 200);
    assert_eq!(
        status_with(&flow, reqwest::Method::GET, &gw.url("/projects/42"))
            .await
            .0,
        200
    );

    // Back-channel logout from the provider ends the session (the directory carries it to
    // every replica); the browser is sent to log in again and its cookie cleared.
    let (status, answer) = provider
        .backchannel_logout("alice", None, Some(CLIENT_ID))
        .await;
    assert_eq!(status, 200, "{answer}\n{}\n{}", gw.log(), provider.log());
    let (status, body) = status_with(&flow, reqwest::Method::GET, &gw.url("/projects/42")).await;
    assert_eq!(status, 401, "{body}");
    let refused = flow
        .client
        .get(gw.url("/projects/42"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 302);
    assert!(refused.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    // A replayed logout token is refused; a forged one too.
    let forged = no_redirects()
        .post(gw.url("/.gateway/backchannel-logout"))
        .form(&[("logout_token", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJib2IifQ.")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);

    // Logging in again works (the provider still knows alice: no form this time), then
    // RP-initiated logout ends both sessions.
    let flow = HttpFlow::new();
    let page = flow
        .login(
            &gw.url("/.gateway/login?rd=%2Fprojects&login_hint=alice%40acme.test"),
            "alice",
        )
        .await;
    assert_eq!(page.status, 200, "{page:?}\n{}", gw.log());
    // Another site cannot sign the person out: a GET only shows the button, a POST from
    // another origin (or marked cross-site by the browser) is refused.
    let copied = flow.cookies(&gw.url("/")).unwrap_or_default();
    assert!(copied.contains("__Host-gw-session="), "{copied}");
    let page = flow
        .client
        .get(gw.url("/.gateway/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("gateway.logoutForm"));
    for (name, value) in [
        ("origin", "https://elsewhere.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let forged = flow
            .client
            .post(gw.url("/.gateway/logout"))
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), 403, "{name}: {value}");
    }
    let (status, body) = status_with(&flow, reqwest::Method::GET, &gw.url("/projects/42")).await;
    assert_eq!(status, 200, "{body}");
    let gone = flow.logout(&gw.url("/.gateway/logout")).await;
    assert_eq!(gone.url, gw.url("/.gateway/logged-out"), "{gone:?}");
    assert!(gone.body.contains("signed out"), "{}", gone.body);
    // The cookie is gone: an anonymous caller again.
    assert!(!flow
        .cookies(&gw.url("/"))
        .unwrap_or_default()
        .contains("__Host-gw-session="));
    let (status, _) = status_with(&flow, reqwest::Method::GET, &gw.url("/projects")).await;
    assert_eq!(status, 400);
    // The logout ended the session itself: a copy of its cookie is refused.
    let replayed = client()
        .get(gw.url("/projects/42"))
        .header("cookie", &copied)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let status = replayed.status();
    let body = replayed.text().await.unwrap();
    assert_eq!(status, 401, "{body}");
    // The problem document says only "unauthenticated"; the log says why.
    let request_id = body.split("\"request_id\":\"").nth(1).unwrap_or("-");
    let request_id = request_id.split('"').next().unwrap_or("-");
    let log = gw.settled_log();
    assert!(
        log.lines()
            .any(|l| l.contains(request_id) && l.contains("reason=\"session-ended\"")),
        "{body}\n{log}"
    );
}

/// How long until every replica answers `want` to the session on `GET /projects/42`.
async fn until_every_replica(flow: &HttpFlow, replicas: &[TestGateway], want: u16) -> Duration {
    let started = Instant::now();
    for gw in replicas {
        while status_with(flow, reqwest::Method::GET, &gw.url("/projects/42"))
            .await
            .0
            != want
        {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "no {want} within 5 s\n{}",
                gw.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_works_and_ends_on_every_replica() {
    let eu = upstream("app-eu (eu-central)").await;
    let us = upstream("app-us (us-east)").await;
    let table = seeded_registry().await;
    let admins = [free_addr(), free_addr(), free_addr()];
    let replicas: Vec<TestGateway> = admins
        .iter()
        .map(|admin| start_on(&table, *admin, eu.addr, us.addr))
        .collect();
    let provider = provider_for(&replicas[0], 300);
    onboard(admins[0], &provider).await;
    let flow = HttpFlow::new();
    let page = flow
        .login(
            &replicas[0].url("/.gateway/login?rd=%2Fprojects%2F42&login_hint=alice%40acme.test"),
            "alice",
        )
        .await;
    assert_eq!(page.status, 200, "{page:?}\n{}", replicas[0].log());
    // Sessions are kept by nobody: the cookie (host-only, any port) works on every replica
    // once the registry change reached it.
    until_every_replica(&flow, &replicas, 200).await;

    // Deactivated through replica 1: refused by all three within a second.
    let switch = |admin: SocketAddr, what: &'static str| {
        client()
            .post(format!(
                "http://{admin}/admin/tenants/acme/principals/alice/{what}"
            ))
            .bearer_auth(admin_token())
            .send()
    };
    assert_eq!(switch(admins[1], "deactivate").await.unwrap().status(), 200);
    let refused_in = until_every_replica(&flow, &replicas, 401).await;
    eprintln!("deactivated session refused by all three replicas after {refused_in:?}");
    assert!(refused_in < Duration::from_secs(1), "{refused_in:?}");
    assert_eq!(switch(admins[2], "activate").await.unwrap().status(), 200);
    until_every_replica(&flow, &replicas, 200).await;

    // The provider's back-channel logout reaches replica 0; every replica ends the session.
    let (status, answer) = provider
        .backchannel_logout("alice", None, Some(CLIENT_ID))
        .await;
    assert_eq!(status, 200, "{answer}");
    let ended_in = until_every_replica(&flow, &replicas, 401).await;
    eprintln!("back-channel logout ended the session on all three replicas after {ended_in:?}");
    assert!(ended_in < Duration::from_secs(1), "{ended_in:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_logs_in_with_chromium() {
    let eu = upstream("app-eu (eu-central)").await;
    let us = upstream("app-us (us-east)").await;
    let admin = free_addr();
    let gw = start(admin, eu.addr, us.addr).await;
    let provider = provider_for(&gw, 300);
    onboard(admin, &provider).await;
    let artefacts = std::env::temp_dir().join("gateway-browser-login");
    let outcome = gateway_testkit::browser::chromium_login_async(
        gw.url("/.gateway/login?rd=%2Fprojects%2F42&login_hint=olga%40acme.test"),
        "olga".to_string(),
        Some(artefacts.clone()),
    )
    .await;
    assert_eq!(outcome.status, 200, "{outcome:?}\n{}", gw.log());
    assert_eq!(outcome.final_url, gw.url("/projects/42"));
    assert!(
        outcome.body_text.contains("\"olga\""),
        "{}",
        outcome.body_text
    );
    let cookie = outcome
        .cookie("__Host-gw-session")
        .unwrap_or_else(|| panic!("no session cookie: {:?}", outcome.cookies));
    assert!(cookie.http_only && cookie.secure, "{cookie:?}");
    assert_eq!(cookie.same_site, "Lax");
    assert_eq!(cookie.path, "/");
    eprintln!("screenshots in {}", artefacts.display());
}

mod saml {
    //! SAML 2.0: acme's identity provider signs its responses with the `xmlsec1` program
    //! (gateway-testkit's test IdP); the gateway verifies them with `xmlsec1` and its own
    //! checks, and refuses every known attack on service providers.

    use super::*;
    use gateway_testkit::saml::{
        decode_redirect_request, root_attribute, ResponseOptions, Signing, TestIdp,
    };

    /// acme signs in with SAML (its document set through the admin API).
    async fn onboard_saml(admin: SocketAddr, idp: &TestIdp) {
        let url = format!("http://{admin}/admin/tenants/acme");
        let mut doc: Value = client()
            .get(&url)
            .bearer_auth(admin_token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        doc["sso"] = json!({
            "saml": {
                "idp_entity_id": idp.entity_id(),
                "idp_sso_url": "https://idp.acme.test/sso",
                "idp_certificate": idp.certificate_pem(),
                "claims": {"roles": "roles"},
            },
            "email_domains": ["acme.test"],
        });
        let response = client()
            .put(&url)
            .bearer_auth(admin_token())
            .json(&doc)
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert_eq!(status, 200, "{}", response.text().await.unwrap());
    }

    /// A login started at the gateway: the login cookie (`name=value`) and the AuthnRequest's ID.
    async fn start_login(gw: &TestGateway) -> (String, String) {
        let response = no_redirects()
            .get(gw.url("/.gateway/login?rd=%2Fprojects%2F42&login_hint=alice%40acme.test"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 302, "{}", gw.log());
        let location =
            reqwest::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
        assert_eq!(location.host_str(), Some("idp.acme.test"));
        let request = location
            .query_pairs()
            .find(|(k, _)| k == "SAMLRequest")
            .unwrap()
            .1
            .into_owned();
        let request = decode_redirect_request(&request);
        assert!(
            request.contains(&format!(
                "AssertionConsumerServiceURL=\"{}\"",
                gw.url("/.gateway/saml/acme/acs")
            )),
            "{request}"
        );
        let id = root_attribute(&request, "ID").unwrap();
        let set_cookie = response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .to_string();
        // The identity provider's POST back is cross-site: the login cookie must come along.
        assert!(
            set_cookie.contains("SameSite=None") && set_cookie.contains("Secure"),
            "{set_cookie}"
        );
        let cookie = set_cookie.split(';').next().unwrap().to_string();
        (cookie, id)
    }

    fn options(gw: &TestGateway, request_id: &str) -> ResponseOptions {
        ResponseOptions {
            sp_entity_id: gw.url("/.gateway/saml/acme/metadata"),
            acs_url: gw.url("/.gateway/saml/acme/acs"),
            in_response_to: Some(request_id.to_string()),
            name_id: "alice".to_string(),
            attributes: vec![("roles".to_string(), vec!["viewer".to_string()])],
            ..ResponseOptions::default()
        }
    }

    /// POSTs a SAMLResponse to the ACS with the login cookie: (status, session cookie if set).
    async fn post(
        gw: &TestGateway,
        cookie: &str,
        saml_response: &str,
    ) -> (u16, Option<String>, String) {
        let response = no_redirects()
            .post(gw.url("/.gateway/saml/acme/acs"))
            .header("cookie", cookie)
            .form(&[("SAMLResponse", saml_response)])
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let session = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("__Host-gw-session="))
            .map(|v| v.split(';').next().unwrap().to_string());
        let location = response
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, session, location)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_signed_assertion_logs_in_and_every_known_attack_is_refused() {
        let eu = upstream("app-eu (eu-central)").await;
        let us = upstream("app-us (us-east)").await;
        let admin = free_addr();
        let gw = start(admin, eu.addr, us.addr).await;
        let idp = TestIdp::new("https://idp.acme.test/saml");
        onboard_saml(admin, &idp).await;

        // The SP metadata the IdP's administrator imports.
        let metadata = client()
            .get(gw.url("/.gateway/saml/acme/metadata"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metadata.contains(&format!(
                "entityID=\"{}\"",
                gw.url("/.gateway/saml/acme/metadata")
            )),
            "{metadata}"
        );
        assert!(metadata.contains("urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"));

        // Every attack, answering this browser's own request, is refused and sets no session.
        let (cookie, id) = start_login(&gw).await;
        let attacks = idp.attacks(&options(&gw, &id));
        assert!(attacks.len() >= 18, "{}", attacks.len());
        for (name, response) in &attacks {
            let (status, session, _) = post(&gw, &cookie, response).await;
            assert!(
                session.is_none() && (status == 400 || status == 401),
                "attack `{name}` got {status} (session: {session:?})\n{}",
                gw.log()
            );
        }
        // A failed status from the IdP is refused too.
        let failed = idp.response(&ResponseOptions {
            status_success: false,
            ..options(&gw, &id)
        });
        assert_eq!(post(&gw, &cookie, &failed).await.0, 401);

        // The genuine answer to the same request logs in (assertion signed), and back to
        // where the browser was going.
        let genuine = idp.response(&options(&gw, &id));
        let (status, session, location) = post(&gw, &cookie, &genuine).await;
        assert_eq!(
            (status, location.as_str()),
            (303, "/projects/42"),
            "{}",
            gw.log()
        );
        let session = session.expect("a session cookie");
        // Replayed: refused (the assertion id was used).
        assert_eq!(post(&gw, &cookie, &genuine).await.0, 401);

        // The session is alice with the IdP's roles: a viewer reads, does not update.
        let read = client()
            .get(gw.url("/projects/42"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), 200);
        let echo = forwarded(&read.text().await.unwrap());
        assert_eq!(header(&echo, "x-principal-id"), "alice", "{echo}");
        assert_eq!(header(&echo, "x-tenant-id"), "acme");
        assert_eq!(header(&echo, "x-principal-roles"), "viewer");
        let update = client()
            .put(gw.url("/projects/42"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        assert_eq!(update.status(), 403);

        // Signed on the response only, or on both: accepted as well.
        for signing in [Signing::Response, Signing::Both] {
            let (cookie, id) = start_login(&gw).await;
            let response = idp.response(&ResponseOptions {
                signing,
                ..options(&gw, &id)
            });
            assert_eq!(post(&gw, &cookie, &response).await.0, 303, "{}", gw.log());
        }

        // Deactivated in the directory: the SAML session is refused.
        let deactivate = client()
            .post(format!(
                "http://{admin}/admin/tenants/acme/principals/alice/deactivate"
            ))
            .bearer_auth(admin_token())
            .send()
            .await
            .unwrap();
        assert_eq!(deactivate.status(), 200);
        let refused = client()
            .get(gw.url("/projects/42"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401);
        // And cannot log in again.
        let (cookie, id) = start_login(&gw).await;
        let again = idp.response(&options(&gw, &id));
        assert_eq!(post(&gw, &cookie, &again).await.0, 401);
    }
}

/// A gateway of the example deployment whose console takes operators' sign-in from a real
/// provider (`[admin.sso]`, roles `platform-operator`), the provider's accounts: olga (an
/// operator), victor (verified, no operator role), tess (operator role, but acme's user).
struct ConsoleSso {
    gw: TestGateway,
    provider: OidcProvider,
    console: String,
    admin: SocketAddr,
    _upstreams: [gateway::example_upstream::ExampleUpstream; 2],
}

async fn start_console_sso() -> ConsoleSso {
    const CONSOLE_CLIENT: &str = "gateway-console";
    const CONSOLE_SECRET: &str = "console-secret-0123456789abcdef0123";
    let eu = upstream("app-eu (eu-central)").await;
    let us = upstream("app-us (us-east)").await;
    let admin = free_addr();
    let provider = OidcProvider::start(&json!({
        "clients": [{
            "client_id": CONSOLE_CLIENT,
            "client_secret": CONSOLE_SECRET,
            "redirect_uris": [format!("http://{admin}/console/callback")],
        }],
        "accounts": {
            "olga": {"email": "olga@platform.test", "roles": ["platform-operator"]},
            "victor": {"email": "victor@platform.test", "roles": ["viewer"]},
            // An operator role, but a tenant's user: never a platform principal.
            "tess": {"email": "tess@acme.test", "roles": ["platform-operator"], "tenant": "acme"},
        },
    }));
    let config = example_config(admin, eu.addr, us.addr).replace(
        "[admin]\n",
        &format!(
            "[admin]\n\
                 sso = {{ issuer = \"{}\", client_id = \"{CONSOLE_CLIENT}\", \
                 client_secret_file = \"console.secret\", roles = [\"platform-operator\"] }}\n",
            provider.issuer
        ),
    ) + &format!(
        "\n[[identity.issuer]]\nissuer = \"{}\"\naudiences = [\"{CONSOLE_CLIENT}\"]\n\
             algorithms = [\"RS256\"]\nplatform = true\n\
             claims = {{ tenant = \"tenant\", roles = \"roles\" }}\n",
        provider.issuer
    );
    let mut gw = TestGateway::start(
        &config,
        &[
            ("demo-issuer.secret", &example_file("demo-issuer.secret")),
            ("demo-admin.token", &example_file("demo-admin.token")),
            ("tenants.toml", &example_file("tenants.toml")),
            ("console.secret", CONSOLE_SECRET.as_bytes()),
        ],
    );
    gw.wait_accepting(admin);
    ConsoleSso {
        gw,
        provider,
        console: format!("http://{admin}/console"),
        admin,
        _upstreams: [eu, us],
    }
}

/// Platform operators sign in to the admin console (`[admin.sso]`) through the platform's
/// identity provider: only a tenant-less principal of the platform issuer with an operator
/// role gets a console session; the session opens the console and nothing else of the admin
/// API; `state`, the login cookie and the sealed session cannot be forged.
#[tokio::test(flavor = "multi_thread")]
async fn operators_sign_in_to_the_console_with_the_platform_provider() {
    let ConsoleSso {
        gw: _gw,
        provider,
        console,
        admin,
        ..
    } = start_console_sso().await;

    // Signed out, the console offers both ways in.
    let page = HttpFlow::new().follow(&console).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains(r#"href="/console/sso""#),
        "{}",
        page.body
    );

    // An operator: provider login, callback, session, the console's figures.
    let olga = HttpFlow::new();
    let page = olga.login(&format!("{console}/sso"), "olga").await;
    assert_eq!(page.status, 200, "{:#?}\n{}", page.hops, page.body);
    assert!(page.url.ends_with("/console"), "{}", page.url);
    assert!(
        page.body
            .contains(r#"<span id="viewer">olga@platform.test</span>"#),
        "{}",
        page.body
    );
    assert!(page.body.contains(r#"id="tenants""#));
    let cookies = olga.cookies(&console).unwrap_or_default();
    assert!(cookies.contains("gw-console-sso="), "{cookies}");
    assert!(
        !cookies.contains("gw-console-login="),
        "login cookie not cleared: {cookies}"
    );
    // The session is the console's only: the admin API still wants the admin token, and the
    // cookie is not even sent outside /console.
    assert!(olga
        .cookies(&format!("http://{admin}/admin/status"))
        .is_none_or(|c| !c.contains("gw-console-sso")));
    let status = olga
        .client
        .get(format!("http://{admin}/admin/status"))
        .header("cookie", &cookies)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);

    // A tampered session is no session.
    let sealed = cookies
        .split(';')
        .map(str::trim)
        .find_map(|c| c.strip_prefix("gw-console-sso="))
        .unwrap()
        .to_string();
    let mut forged = sealed.into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let body = client()
        .get(&console)
        .header(
            "cookie",
            format!("gw-console-sso={}", String::from_utf8(forged).unwrap()),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.contains("Admin token"),
        "forged session opened the console"
    );

    // Signing out clears the session.
    let response = olga
        .client
        .post(format!("{console}/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let page = olga.follow(&console).await;
    assert!(
        page.body.contains(r#"href="/console/sso""#),
        "still signed in"
    );

    // Verified, but no operator role; or an operator role on a tenant's user: refused, no
    // session.
    for who in ["victor", "tess"] {
        let flow = HttpFlow::new();
        let page = flow.login(&format!("{console}/sso"), who).await;
        assert_eq!(page.status, 403, "{who}: {:#?}\n{}", page.hops, page.body);
        assert!(
            page.body.contains("Not a console operator"),
            "{}",
            page.body
        );
        assert!(!flow
            .cookies(&console)
            .unwrap_or_default()
            .contains("gw-console-sso="));
    }

    // A callback that is not this browser's login: no login cookie, or another `state`.
    let bare = no_redirects();
    let response = bare
        .get(format!("{console}/callback?code=abc&state=xyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let start = bare.get(format!("{console}/sso")).send().await.unwrap();
    assert_eq!(start.status(), 303);
    let location = start.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with(&provider.issuer)
            && location.contains("code_challenge_method=S256")
            && location.contains("nonce=")
            && location.contains("state="),
        "{location}"
    );
    let login_cookie = start.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        login_cookie.contains("Path=/console")
            && login_cookie.contains("HttpOnly")
            && login_cookie.contains("SameSite=Lax"),
        "{login_cookie}"
    );
    let pair = login_cookie.split(';').next().unwrap().to_string();
    let response = bare
        .get(format!("{console}/callback?code=abc&state=not-the-state"))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(!response
        .headers()
        .get_all("set-cookie")
        .iter()
        .any(|c| c.to_str().unwrap_or("").starts_with("gw-console-sso=")));
}

/// The operator's sign-in in headless Chromium: the provider's login form, back to the console
/// with its session cookie (`HttpOnly`, `SameSite=Lax`, `Path=/console`, not `Secure` on the
/// plain-http admin listener), the operator named on the page.
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_signs_in_to_the_console_with_chromium() {
    let sso = start_console_sso().await;
    let artefacts = std::env::temp_dir().join("gateway-console-sso");
    let outcome = gateway_testkit::browser::chromium_login_async(
        format!("{}/sso", sso.console),
        "olga".to_string(),
        Some(artefacts.clone()),
    )
    .await;
    assert_eq!(outcome.status, 200, "{outcome:?}\n{}", sso.gw.log());
    assert_eq!(outcome.final_url, sso.console);
    assert!(
        outcome
            .body_text
            .contains("Signed in as olga@platform.test"),
        "{}",
        outcome.body_text
    );
    let cookie = outcome
        .cookie("gw-console-sso")
        .unwrap_or_else(|| panic!("no console session cookie: {:?}", outcome.cookies));
    assert!(cookie.http_only && !cookie.secure, "{cookie:?}");
    assert_eq!(cookie.same_site, "Lax");
    assert_eq!(cookie.path, "/console");
    assert!(
        outcome.cookie("gw-console-login").is_none(),
        "{:?}",
        outcome.cookies
    );
    eprintln!("screenshots in {}", artefacts.display());
}
