//! Identity and tenancy through the real gateway: JWTs from a real issuer on loopback (RSA and EC
//! keys generated here), key rotation, the JWT attacks, API keys, cross-tenant requests, tenant
//! issuers, just-in-time provisioning, the signed context token.
// A test crate: helpers fail loudly (the lints guard the gateway's own code).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use crate::common;
use std::time::Duration;

use crate::common::idp::{ec_key, forge, now, rsa_key, TestIdp};
use crate::common::{client, config_for, upstream, TestGateway};
use gateway::example_upstream::Echo;
use gateway::tenancy::registry::api_key_hash;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

struct Setup {
    idp: TestIdp,
    tenant_idp: TestIdp,
    up: gateway::example_upstream::ExampleUpstream,
    gw: TestGateway,
}

fn tenants_toml(tenant_issuer: &str) -> String {
    format!(
        r#"
[[tenant]]
id = "acme"
tier = "pro"

[[tenant.api_keys]]
id = "ci"
sha256 = "{ci}"
scopes = ["projects:read"]
roles = ["viewer"]

[[tenant.api_keys]]
id = "old"
sha256 = "{old}"
expires = "2020-01-01T00:00:00Z"

[[tenant]]
id = "globex"

[[tenant]]
id = "frozen"
status = "suspended"

[[tenant]]
id = "initech"

[[tenant.issuers]]
issuer = "{tenant_issuer}"
audiences = ["gateway"]
algorithms = ["ES256"]
"#,
        ci = hex::encode(api_key_hash("acme-ci-key")),
        old = hex::encode(api_key_hash("acme-old-key")),
    )
}

fn identity_config(issuer: &str, extra: &str) -> String {
    format!(
        r#"
[identity]
jwks_min_refresh_interval = "1s"

[[identity.issuer]]
issuer = "{issuer}"
audiences = ["gateway"]
algorithms = ["RS256", "ES256"]
leeway = "5s"

[identity.issuer.claims]
tenant = "org"
roles = "roles"
attributes = {{ mfa = "mfa" }}

[identity.provisioning]
store = "file"
{extra}
[tenancy]
host_pattern = "{{tenant}}.api.example.test"
path_prefix = "/t/{{tenant}}"

[tenancy.registry]
file = "tenants.toml"
"#
    )
}

async fn setup(extra: &str, files: &[(&str, &[u8])]) -> Setup {
    let idp = TestIdp::start().await;
    idp.add_key("rsa-1", rsa_key("rsa-1"));
    idp.add_key("ec-1", ec_key("ec-1"));
    let tenant_idp = TestIdp::start().await;
    tenant_idp.add_key("initech-1", ec_key("initech-1"));
    let up = upstream("app").await;
    let config = config_for(&[up.addr], &identity_config(&idp.issuer, extra));
    let tenants = tenants_toml(&tenant_idp.issuer);
    let mut all_files: Vec<(&str, &[u8])> = vec![("tenants.toml", tenants.as_bytes())];
    all_files.extend_from_slice(files);
    let gw = TestGateway::start(&config, &all_files);
    Setup {
        idp,
        tenant_idp,
        up,
        gw,
    }
}

fn user_claims(
    idp: &TestIdp,
    sub: &str,
    org: &str,
    roles: &[&str],
) -> serde_json::Map<String, serde_json::Value> {
    let mut c = idp.claims(sub);
    c.insert("org".into(), json!(org));
    c.insert("roles".into(), json!(roles));
    c.insert("mfa".into(), json!(true));
    c
}

async fn get(
    gw: &TestGateway,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = client().get(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.text().await.unwrap())
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread")]
async fn valid_tokens_reach_the_upstream_with_verified_context() {
    let s = setup("", &[]).await;
    for kid in ["rsa-1", "ec-1"] {
        let token = s.idp.token(
            kid,
            &user_claims(&s.idp, "alice", "acme", &["editor", "viewer"]),
        );
        let (status, _, body) =
            get(&s.gw, "/projects/1", &[("authorization", &bearer(&token))]).await;
        assert_eq!(status, 200, "{kid}: {body}");
        let echo: Echo = serde_json::from_str(&body).unwrap();
        assert_eq!(echo.headers["x-tenant-id"], vec!["acme"]);
        assert_eq!(echo.headers["x-principal-id"], vec!["alice"]);
        assert_eq!(echo.headers["x-principal-roles"], vec!["editor,viewer"]);
        assert_eq!(echo.headers["x-principal-auth"], vec!["jwt"]);
        assert_eq!(echo.headers["authorization"], vec![bearer(&token)]);
    }
    // Keys were fetched once, then served from the cache.
    assert_eq!(s.idp.jwks_fetches(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_jwt_attack_is_refused_with_401_and_a_precise_logged_reason() {
    let s = setup("", &[]).await;
    let idp = &s.idp;
    let good = user_claims(idp, "mallory", "acme", &["admin"]);
    // Warm the key cache with a good token first.
    let ok = idp.token("rsa-1", &good);
    assert_eq!(
        get(&s.gw, "/", &[("authorization", &bearer(&ok))]).await.0,
        200
    );
    let served = s.up.served();

    let mut attacks: Vec<(&str, String)> = Vec::new();
    attacks.push((
        "alg-none",
        forge(&json!({"alg": "none", "typ": "JWT"}), &good, b""),
    ));
    attacks.push((
        "alg-none",
        forge(&json!({"alg": "None", "kid": "rsa-1"}), &good, b""),
    ));
    // RS256 → HS256 confusion: HMAC keyed with the issuer's public RSA key.
    let public_pem = idp.key("rsa-1").public_pem.clone();
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some("rsa-1".into());
    attacks.push((
        "alg-not-allowed",
        jsonwebtoken::encode(
            &hs_header,
            &good,
            &EncodingKey::from_secret(public_pem.as_bytes()),
        )
        .unwrap(),
    ));
    let mut expired = good.clone();
    expired.insert("exp".into(), json!(now() - 3600));
    attacks.push(("expired", idp.token("rsa-1", &expired)));
    let mut no_exp = good.clone();
    no_exp.remove("exp");
    attacks.push(("missing-claim", idp.token("rsa-1", &no_exp)));
    let mut future_nbf = good.clone();
    future_nbf.insert("nbf".into(), json!(now() + 3600));
    attacks.push(("not-yet-valid", idp.token("rsa-1", &future_nbf)));
    let mut future_iat = good.clone();
    future_iat.insert("iat".into(), json!(now() + 3600));
    attacks.push(("issued-in-future", idp.token("rsa-1", &future_iat)));
    let mut wrong_iss = good.clone();
    wrong_iss.insert("iss".into(), json!("https://evil.example"));
    attacks.push(("unknown-issuer", idp.token("rsa-1", &wrong_iss)));
    let mut wrong_aud = good.clone();
    wrong_aud.insert("aud".into(), json!("another-service"));
    attacks.push(("wrong-audience", idp.token("rsa-1", &wrong_aud)));
    // Payload swapped after signing.
    let signed = idp.token("rsa-1", &good);
    let mut admin = good.clone();
    admin.insert("sub".into(), json!("root"));
    let parts: Vec<&str> = signed.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            serde_json::to_vec(&admin).unwrap()
        ),
        parts[2]
    );
    attacks.push(("bad-signature", tampered));
    // Signed by a key the issuer never published, under a published kid.
    idp.add_unpublished_key("rogue", rsa_key("rogue"));
    let mut rogue_header = Header::new(Algorithm::RS256);
    rogue_header.kid = Some("rsa-1".into());
    attacks.push((
        "bad-signature",
        jsonwebtoken::encode(&rogue_header, &good, &idp.key("rogue").encoding).unwrap(),
    ));
    // Unknown kid.
    attacks.push(("unknown-key", idp.token("rogue", &good)));
    // A `crit` header the gateway does not understand.
    attacks.push((
        "unsupported-crit",
        forge(
            &json!({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"]}),
            &good,
            b"sig",
        ),
    ));
    attacks.push(("malformed-token", "abc.def".to_string()));

    for (reason, token) in &attacks {
        let (status, headers, body) = get(&s.gw, "/", &[("authorization", &bearer(token))]).await;
        assert_eq!(status, 401, "{reason}: {body}");
        let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            problem["detail"], "missing or invalid credentials",
            "{reason}"
        );
        assert!(headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token"));
        assert!(
            !body.contains(reason),
            "the reason leaked to the client: {body}"
        );
    }
    // Requests without credentials, and with two at once.
    let (status, headers, _) = get(&s.gw, "/", &[]).await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"gateway\"");
    let (status, _, _) = get(
        &s.gw,
        "/",
        &[
            ("authorization", &bearer(&ok)),
            ("x-api-key", "acme-ci-key"),
        ],
    )
    .await;
    assert_eq!(status, 401);
    let (status, _, _) = get(&s.gw, "/", &[("authorization", "Basic dXNlcjpwYXNz")]).await;
    assert_eq!(status, 401);

    assert_eq!(
        s.up.served(),
        served,
        "a refused request reached the upstream"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = s.gw.settled_log();
    for (reason, _) in &attacks {
        assert!(
            log.contains(&format!("reason=\"{reason}\"")),
            "no `{reason}` in the log:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_rotate_without_restart_and_refreshes_are_rate_limited() {
    let s = setup("", &[]).await;
    let idp = &s.idp;
    let claims = user_claims(idp, "bob", "acme", &[]);
    let old = idp.token("rsa-1", &claims);
    assert_eq!(
        get(&s.gw, "/", &[("authorization", &bearer(&old))]).await.0,
        200
    );
    assert_eq!(idp.jwks_fetches(), 1);

    // The issuer rotates: a new key is published, the old one withdrawn. (Wait out the refetch
    // rate limit of 1 s configured for the test; the default is 30 s.)
    idp.add_key("rsa-2", rsa_key("rsa-2"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    idp.unpublish("rsa-1");
    let new = idp.token("rsa-2", &claims);
    assert_eq!(
        get(&s.gw, "/", &[("authorization", &bearer(&new))]).await.0,
        200
    );
    assert_eq!(idp.jwks_fetches(), 2, "an unknown kid triggers one refetch");
    // The withdrawn key is gone from the refreshed set. (Tokens verified with it before are
    // refused too, once a refresh no longer lists it: see `jwt_matrix.rs`.)
    let mut other = claims.clone();
    other.insert("sub".into(), json!("bob-2"));
    let withdrawn = idp.token("rsa-1", &other);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        get(&s.gw, "/", &[("authorization", &bearer(&withdrawn))])
            .await
            .0,
        401
    );

    // A flood of made-up kids does not hammer the issuer.
    let before = idp.jwks_fetches();
    for i in 0..30 {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(format!("made-up-{i}"));
        let token = jsonwebtoken::encode(&header, &claims, &idp.key("rsa-2").encoding).unwrap();
        assert_eq!(
            get(&s.gw, "/", &[("authorization", &bearer(&token))])
                .await
                .0,
            401
        );
    }
    assert!(
        idp.jwks_fetches() - before <= 2,
        "{} refetches",
        idp.jwks_fetches() - before
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cross_tenant_requests_are_refused_before_the_upstream() {
    let s = setup("", &[]).await;
    let token = s
        .idp
        .token("ec-1", &user_claims(&s.idp, "alice", "acme", &["admin"]));
    let auth = bearer(&token);
    let served = s.up.served();
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("/x", vec![("x-tenant", "globex")], 403, "tenant-mismatch"),
        (
            "/x",
            vec![("host", "globex.api.example.test")],
            403,
            "tenant-mismatch",
        ),
        ("/t/globex/x", vec![], 403, "tenant-mismatch"),
        (
            "/x",
            vec![("x-tenant", "acme"), ("x-tenant", "globex")],
            403,
            "tenant-mismatch",
        ),
    ];
    for (path, extra, expected, slug) in cases {
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend(extra.iter().copied());
        let (status, _, body) = get(&s.gw, path, &headers).await;
        assert_eq!(status, expected, "{path} {extra:?}: {body}");
        assert!(body.contains(slug), "{body}");
    }
    assert_eq!(s.up.served(), served);

    // Agreeing sources are fine; the path prefix is stripped before forwarding.
    let (status, _, body) = get(
        &s.gw,
        "/t/acme/projects/7?x=1",
        &[
            ("authorization", &auth),
            ("host", "acme.api.example.test"),
            ("x-tenant", "acme"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let echo: Echo = serde_json::from_str(&body).unwrap();
    assert_eq!(echo.path, "/projects/7");
    assert_eq!(echo.query.as_deref(), Some("x=1"));
    assert_eq!(echo.headers["x-tenant-id"], vec!["acme"]);

    // Unknown and suspended tenants never reach the upstream either.
    let served = s.up.served();
    let ghost = s.idp.token("ec-1", &user_claims(&s.idp, "g", "ghost", &[]));
    assert_eq!(
        get(&s.gw, "/", &[("authorization", &bearer(&ghost))])
            .await
            .0,
        404
    );
    let frozen = s
        .idp
        .token("ec-1", &user_claims(&s.idp, "f", "frozen", &[]));
    let (status, _, body) = get(&s.gw, "/", &[("authorization", &bearer(&frozen))]).await;
    assert_eq!(status, 403);
    assert!(body.contains("tenant-suspended"));
    assert_eq!(s.up.served(), served);
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_that_name_no_tenant_act_for_none() {
    let s = setup("", &[]).await;
    // A token of the global issuer without its `org` claim, aimed at a tenant every way a
    // request can name one.
    let mut claims = s.idp.claims("drifter");
    claims.insert("roles".into(), json!(["admin"]));
    let token = s.idp.token("rsa-1", &claims);
    let auth = bearer(&token);
    let served = s.up.served();
    for (path, extra) in [
        ("/projects/1", vec![("x-tenant", "acme")]),
        ("/projects/1", vec![("host", "globex.api.example.test")]),
        ("/t/acme/projects/1", vec![]),
        ("/projects/1", vec![]),
    ] {
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend(extra.iter().copied());
        let (status, headers_out, body) = get(&s.gw, path, &headers).await;
        assert_eq!(status, 403, "{path} {extra:?}: {body}");
        assert_eq!(headers_out["content-type"], "application/problem+json");
        let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            problem["type"], "tag:policy-gateway,2026:problem/credential-without-tenant",
            "{body}"
        );
        assert_eq!(problem["status"], 403);
    }
    assert_eq!(
        s.up.served(),
        served,
        "a tenantless token reached the upstream"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        s.gw.settled_log()
            .contains("reason=\"credential-without-tenant\""),
        "{}",
        s.gw.log()
    );
    // The same user with the claim is fine.
    let named = s
        .idp
        .token("rsa-1", &user_claims(&s.idp, "drifter", "acme", &["admin"]));
    assert_eq!(
        get(&s.gw, "/projects/1", &[("authorization", &bearer(&named))])
            .await
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn platform_issuers_act_in_the_named_tenant_and_tenant_claims_always_bind() {
    let idp = TestIdp::start().await;
    idp.add_key("rsa-1", rsa_key("rsa-1"));
    let staff_idp = TestIdp::start().await;
    staff_idp.add_key("staff-1", ec_key("staff-1"));
    let up = upstream("app").await;
    // `credential` is not a configured source: a token's tenant claim binds it all the same.
    let config = config_for(
        &[up.addr],
        &format!(
            r#"
[identity]

[[identity.issuer]]
issuer = "{issuer}"
audiences = ["gateway"]
algorithms = ["RS256"]
claims = {{ tenant = "org" }}

[[identity.issuer]]
issuer = "{staff}"
audiences = ["gateway"]
algorithms = ["ES256"]
platform = true
claims = {{ tenant = "org" }}

[tenancy]
sources = ["header", "host"]
host_pattern = "{{tenant}}.api.example.test"

[tenancy.registry]
file = "tenants.toml"
"#,
            issuer = idp.issuer,
            staff = staff_idp.issuer,
        ),
    );
    let tenants = tenants_toml("https://unused.example");
    let gw = TestGateway::start(&config, &[("tenants.toml", tenants.as_bytes())]);

    let acme_user = bearer(&idp.token("rsa-1", &user_claims(&idp, "alice", "acme", &[])));
    let (status, _, body) = get(
        &gw,
        "/",
        &[("authorization", &acme_user), ("x-tenant", "globex")],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("tenant-mismatch"), "{body}");
    let (status, _, body) = get(
        &gw,
        "/",
        &[
            ("authorization", &acme_user),
            ("host", "globex.api.example.test"),
        ],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = get(&gw, "/", &[("authorization", &acme_user)]).await;
    assert_eq!(status, 200, "the token's own tenant: {body}");
    let echo: Echo = serde_json::from_str(&body).unwrap();
    assert_eq!(echo.headers["x-tenant-id"], vec!["acme"]);

    // Staff of the platform-wide issuer act in the tenant the request names.
    let staff = bearer(&staff_idp.token("staff-1", &staff_idp.claims("sam")));
    for tenant in ["acme", "globex"] {
        let (status, _, body) =
            get(&gw, "/", &[("authorization", &staff), ("x-tenant", tenant)]).await;
        assert_eq!(status, 200, "{tenant}: {body}");
        let echo: Echo = serde_json::from_str(&body).unwrap();
        assert_eq!(echo.headers["x-tenant-id"], vec![tenant]);
        assert_eq!(echo.headers["x-principal-id"], vec!["sam"]);
    }
    // ... but a request that names no tenant is still refused, as are unknown tenants.
    let (status, _, body) = get(&gw, "/", &[("authorization", &staff)]).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("tenant-required"), "{body}");
    assert_eq!(
        get(
            &gw,
            "/",
            &[("authorization", &staff), ("x-tenant", "ghost")]
        )
        .await
        .0,
        404
    );
    // The regular issuer's tokens without a tenant claim get no such pass.
    let mut claims = idp.claims("sam");
    claims.insert("roles".into(), json!(["platform-operator"]));
    let (status, _, body) = get(
        &gw,
        "/",
        &[
            ("authorization", &bearer(&idp.token("rsa-1", &claims))),
            ("x-tenant", "acme"),
        ],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("credential-without-tenant"), "{body}");
}

#[test]
fn check_refuses_issuers_whose_tokens_could_bind_to_no_tenant() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tenants.toml"),
        tenants_toml("https://tenant-idp.example").replace(
            "algorithms = [\"ES256\"]",
            "algorithms = [\"ES256\"]\nplatform = true",
        ),
    )
    .unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        config_for(
            &["127.0.0.1:9".parse().unwrap()],
            "[identity]\n\n[[identity.issuer]]\nissuer = \"https://idp.example\"\naudiences = [\"gateway\"]\nalgorithms = [\"RS256\"]\n\n[tenancy]\n[tenancy.registry]\nfile = \"tenants.toml\"\n",
        )
        .replace("{listen}", "127.0.0.1:1"),
    )
    .unwrap();
    let out = std::process::Command::new(common::gateway_bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("identity.issuer[0].claims.tenant"),
        "{stderr}"
    );
    assert!(stderr.contains("issuers[0].platform"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_issuers_are_trusted_only_for_their_tenant() {
    let s = setup("", &[]).await;
    let tidp = &s.tenant_idp;
    let claims = tidp.claims("ines");
    let token = tidp.token("initech-1", &claims);
    let (status, _, body) = get(&s.gw, "/", &[("authorization", &bearer(&token))]).await;
    assert_eq!(status, 200, "{body}");
    let echo: Echo = serde_json::from_str(&body).unwrap();
    assert_eq!(echo.headers["x-tenant-id"], vec!["initech"]);
    // The same token aimed at another tenant is a mismatch.
    let (status, _, _) = get(
        &s.gw,
        "/",
        &[("authorization", &bearer(&token)), ("x-tenant", "acme")],
    )
    .await;
    assert_eq!(status, 403);
    // The tenant's issuer cannot mint tokens for other tenants through a claim either.
    let mut c = tidp.claims("ines");
    c.insert("org".into(), json!("acme"));
    let (status, _, _) = get(
        &s.gw,
        "/",
        &[("authorization", &bearer(&tidp.token("initech-1", &c)))],
    )
    .await;
    // The tenant issuer has no `tenant` claim mapping, so the claim is ignored: still initech.
    assert_eq!(status, 200);
    // RS256 is not among the tenant issuer's pinned algorithms.
    tidp.add_key("initech-rsa", rsa_key("initech-rsa"));
    let rs = tidp.token("initech-rsa", &tidp.claims("ines"));
    assert_eq!(
        get(&s.gw, "/", &[("authorization", &bearer(&rs))]).await.0,
        401
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_identify_machine_clients() {
    let s = setup("", &[]).await;
    let (status, _, body) = get(&s.gw, "/reports", &[("x-api-key", "acme-ci-key")]).await;
    assert_eq!(status, 200, "{body}");
    let echo: Echo = serde_json::from_str(&body).unwrap();
    assert_eq!(echo.headers["x-tenant-id"], vec!["acme"]);
    assert_eq!(echo.headers["x-principal-id"], vec!["apikey:ci"]);
    assert_eq!(echo.headers["x-principal-auth"], vec!["api-key"]);
    assert_eq!(echo.headers["x-principal-scopes"], vec!["projects:read"]);
    assert_eq!(get(&s.gw, "/", &[("x-api-key", "wrong")]).await.0, 401);
    assert_eq!(
        get(&s.gw, "/", &[("x-api-key", "acme-old-key")]).await.0,
        401
    );
    // A key is bound to its tenant.
    assert_eq!(
        get(
            &s.gw,
            "/",
            &[("x-api-key", "acme-ci-key"), ("x-tenant", "globex")]
        )
        .await
        .0,
        403
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn first_seen_principals_are_provisioned_once() {
    let door = common::free_addr();
    let mut s = setup(
        &format!("\n[forward_auth]\nlisten = \"{door}\"\npath = \"/auth\"\n"),
        &[],
    )
    .await;
    s.gw.wait_accepting(door);
    // A principal seen only through a decision door (forward-auth here) is provisioned too.
    let token = s.idp.token(
        "rsa-1",
        &user_claims(&s.idp, "newbie-3", "globex", &["viewer"]),
    );
    let answer = client()
        .get(format!("http://{door}/auth"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/")
        .header("authorization", bearer(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{}", s.gw.log());
    for _ in 0..3 {
        for user in ["newbie-1", "newbie-2"] {
            let token = s
                .idp
                .token("rsa-1", &user_claims(&s.idp, user, "globex", &["viewer"]));
            assert_eq!(
                get(&s.gw, "/", &[("authorization", &bearer(&token))])
                    .await
                    .0,
                200
            );
        }
    }
    let path = s.gw.dir.path().join("state/principals.jsonl");
    let mut records = String::new();
    for _ in 0..50 {
        records = std::fs::read_to_string(&path).unwrap_or_default();
        if records.lines().count() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines: Vec<serde_json::Value> = records
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{records}");
    for (line, user) in lines.iter().zip(["newbie-3", "newbie-1", "newbie-2"]) {
        assert_eq!(line["tenant"], "globex");
        assert_eq!(line["principal"], user);
        assert_eq!(line["issuer"], s.idp.issuer);
        assert!(line["request_id"].is_string());
    }
    assert!(s.gw.settled_log().contains("principal.provisioned"));
}

#[tokio::test(flavor = "multi_thread")]
async fn upstreams_receive_a_verifiable_context_token() {
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let private_pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let public_pem = secret
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let extra = "\n[identity.context_token]\nkey = \"context.pem\"\nalgorithm = \"ES256\"\nkey_id = \"gw-1\"\naudience = \"orders-service\"\nttl = \"60s\"\n";
    let s = setup(extra, &[("context.pem", private_pem.as_bytes())]).await;
    let token = s
        .idp
        .token("rsa-1", &user_claims(&s.idp, "carol", "acme", &["admin"]));
    // A client-sent context header is stripped and replaced.
    let (status, _, body) = get(
        &s.gw,
        "/",
        &[
            ("authorization", &bearer(&token)),
            ("x-gateway-context", "forged"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let echo: Echo = serde_json::from_str(&body).unwrap();
    let context = &echo.headers["x-gateway-context"];
    assert_eq!(context.len(), 1);
    let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
    validation.set_audience(&["orders-service"]);
    validation.set_issuer(&["policy-gateway"]);
    let key = jsonwebtoken::DecodingKey::from_ec_pem(public_pem.as_bytes()).unwrap();
    let data = jsonwebtoken::decode::<serde_json::Value>(&context[0], &key, &validation)
        .expect("verifiable");
    assert_eq!(data.header.kid.as_deref(), Some("gw-1"));
    assert_eq!(data.claims["sub"], "carol");
    assert_eq!(data.claims["tenant"], "acme");
    assert_eq!(data.claims["roles"], json!(["admin"]));
    let exp = data.claims["exp"].as_u64().unwrap();
    assert!(exp <= now() + 61);
}
