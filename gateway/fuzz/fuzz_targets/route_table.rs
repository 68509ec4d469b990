//! The route table (`policies/routes.toml`): building it from arbitrary text, and matching
//! arbitrary request paths after stage 1.
//!
//! Input: NUL-separated parts: the text of `routes.toml`, then requests `METHOD raw-path`.
//! Actions and resource types are checked against the repository's Cedar schema, as
//! `gateway check` does.
//!
//! Properties:
//! - a refused table names, for every problem, its field or line (inside the file);
//! - a route matched the whole normalised path: its template with the matched parameters
//!   filled in is exactly that path, which is what the upstream receives;
//! - the parameters the route's `id` and `attributes` name were matched (a resource id never
//!   falls back to `*` for a route that has one);
//! - the route is one registered for the method (HEAD also finds GET routes).
#![no_main]

use gateway::authz::routes::{Methods, RouteTable, RoutesFile};
use gateway::config::SourceText;
use gateway::pipeline::sanitize::normalize_path;
use gateway_fuzz::{assert_located, deployment, fill_template, fixture_dir, parts};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parts = parts(data);
    let Ok(text) = std::str::from_utf8(parts[0]) else {
        return;
    };
    let source = SourceText::new(fixture_dir().join("routes.toml"), text);
    let file: RoutesFile = match source.deserialize() {
        Ok(f) => f,
        Err(issue) => return assert_located(&issue.into(), &[&source]),
    };
    let specs = file.route.clone();
    let snapshot = deployment().snapshot();
    let Some(engine) = snapshot.authz.as_ref() else {
        panic!("the fixture has [authorization]");
    };
    let table = match RouteTable::build(file, &source, |action, resource| {
        gateway::authz::check_action(engine.schema(), action, resource)
    }) {
        Ok(t) => t,
        Err(issues) => return assert_located(&gateway::config::SourceIssues(issues), &[&source]),
    };
    for request in &parts[1..] {
        let Some(space) = request.iter().position(|&b| b == b' ') else {
            continue;
        };
        let Ok(method) = http::Method::from_bytes(&request[..space]) else {
            continue;
        };
        let Ok(path) = normalize_path(&request[space + 1..], true) else {
            continue;
        };
        let Some(m) = table.find(&method, &path) else {
            continue;
        };
        let filled = fill_template(&m.route.template, &m.params);
        assert_eq!(
            filled.as_deref(),
            Some(path.as_str()),
            "{method} {path:?} matched {:?} with {:?}",
            m.route.template,
            m.params
        );
        if let Some(id) = &m.route.id_param {
            assert!(
                m.param(id).is_some(),
                "route {:?}: its id `{id}` was not matched in {path:?} ({:?})",
                m.route.template,
                m.params
            );
        }
        for (attribute, param) in &m.route.attributes {
            assert!(
                m.param(param).is_some(),
                "route {:?}: attribute {attribute} = `{param}` was not matched in {path:?}",
                m.route.template
            );
        }
        let registered = specs.iter().any(|spec| {
            spec.path == m.route.template
                && spec.action == m.route.action
                && match &spec.method {
                    Methods::One(one) => methods_match(one, &method),
                    Methods::Many(many) => many.iter().any(|one| methods_match(one, &method)),
                }
        });
        assert!(registered, "{method} {path:?} matched {:?}", m.route);
    }
});

fn methods_match(configured: &str, method: &http::Method) -> bool {
    let configured = configured.to_ascii_uppercase();
    configured == method.as_str() || (method == http::Method::HEAD && configured == "GET")
}
