//! A whole request through the pipeline (`admission::admit`: sanitize, identify, tenant,
//! authorize with the route table, residency route, limits) against the fixture deployment,
//! then applied to the upstream request exactly as the proxy applies it
//! (`proxy::apply_admitted`).
//!
//! Input: NUL-separated parts: `METHOD raw-target`, then header lines `name: value` (the
//! seeds carry tokens of the fixture's issuer, valid until 2100).
//!
//! Properties:
//! - a refusal is a 4xx or 503 (an input never causes a 500);
//! - an admitted request can be applied to the upstream request;
//! - the path the route table matched (and the residency pins saw) is the path the upstream
//!   receives, byte for byte, and the route's template filled with the matched parameters is
//!   that path;
//! - that path is a fixed point of the normaliser, and the upstream's whole target is one of
//!   stage 1 (sanitising it again changes nothing);
//! - no header the gateway owns reaches the upstream from the client;
//! - the request is planned only into regions its tenant's regime allows.
#![no_main]

use gateway::pipeline::sanitize::{normalize_path, sanitize};
use gateway::pipeline::RequestHead;
use gateway_fuzz::{deployment, fill_template, parts};
use http::{HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use pingora::http::RequestHeader;

fuzz_target!(|data: &[u8]| {
    let parts = parts(data);
    let Some(space) = parts[0].iter().position(|&b| b == b' ') else {
        return;
    };
    let (method, target) = (&parts[0][..space], &parts[0][space + 1..]);
    // What Pingora accepts as a request head is what reaches the pipeline.
    let Ok(mut req) = RequestHeader::build(method, target, None) else {
        return;
    };
    for line in &parts[1..] {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        let _ = req.append_header(name, value);
    }
    let d = deployment();
    let snapshot = d.snapshot();
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok());
    let peer: std::net::IpAddr = [127, 0, 0, 1].into();
    let head = RequestHead {
        method: &req.method,
        target: req.raw_path(),
        host,
        headers: &req.headers,
        client_ip: gateway::geoip::client_ip(peer, &req.headers, &d.services.trusted_proxies),
        body: None,
    };
    let admitted = match d.block_on(gateway::admission::admit(&head, &snapshot, &d.services)) {
        Ok(a) => a,
        Err(refused) => {
            let status = refused.rejection.status();
            assert!(
                (400..500).contains(&status) || status == 503,
                "{status}: {:?}",
                refused.rejection
            );
            return;
        }
    };
    let mut upstream = req.clone();
    gateway::proxy::apply_admitted(&mut upstream, &admitted)
        .unwrap_or_else(|e| panic!("admitted, then failed to forward: {e}"));

    let matched = admitted.path();
    let sent = upstream.raw_path();
    let sent_path = sent.split(|&b| b == b'?').next().unwrap_or_default();
    assert_eq!(
        sent_path,
        matched.as_bytes(),
        "the route table matched {matched:?}, the upstream receives {:?}",
        String::from_utf8_lossy(sent)
    );
    assert_eq!(sent, admitted.upstream_target().as_bytes());
    assert_eq!(
        normalize_path(matched.as_bytes(), true).as_deref(),
        Ok(matched)
    );
    let again = sanitize(
        &RequestHead {
            target: sent,
            ..head
        },
        &snapshot.sanitize,
    )
    .unwrap_or_else(|e| panic!("the upstream target {sent:?} does not pass stage 1: {e}"));
    assert_eq!(again.target().as_bytes(), sent);

    if let (Some(engine), Some(decision)) = (
        snapshot.authz.as_ref(),
        admitted
            .authorized
            .as_ref()
            .and_then(|a| a.decision.as_ref()),
    ) {
        let m = engine
            .routes
            .find(&admitted.sanitized.method, matched)
            .unwrap_or_else(|| {
                panic!(
                    "decided on route {:?}, no route for {matched:?}",
                    decision.route
                )
            });
        assert_eq!(m.route.template, decision.route);
        assert_eq!(
            fill_template(&m.route.template, &m.params).as_deref(),
            Some(matched)
        );
    }

    for name in upstream.headers.keys() {
        if req.headers.contains_key(name) {
            assert!(
                !snapshot.sanitize.is_owned(name.as_str()),
                "the client's {name} reached the upstream"
            );
        }
    }

    if let Some(residency) = snapshot.residency.as_ref() {
        let regime_id = admitted
            .tenant_spec()
            .regime
            .clone()
            .unwrap_or_else(|| residency.default_regime.clone());
        let regime = residency
            .maps
            .regime(&regime_id)
            .unwrap_or_else(|| panic!("admitted under unknown regime {regime_id}"));
        let allowed = residency.maps.processing_regions(regime);
        for region in &admitted.placement.regions {
            assert!(
                allowed.contains(&region.as_str()),
                "planned into {region}, regime {regime_id} allows {allowed:?}"
            );
        }
    }
});
