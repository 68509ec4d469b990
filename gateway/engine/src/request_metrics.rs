//! The proxy's per-request metrics, with their handles resolved once per label set.
//!
//! `metrics::counter!(name, labels)` builds a key (allocating owned label values) and looks it up
//! in the registry on every call; on the request path that is several allocations and hash
//! lookups per request. Here each label set is looked up once and its handle kept. Labels stay
//! bounded: route templates (from the route table, or `unmatched`), status codes, rejection
//! slugs, regions of configured pools.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Histogram};
use parking_lot::RwLock;

/// The route label of requests no route matched.
pub const UNMATCHED: &str = "unmatched";

#[derive(Default)]
pub struct RequestMetrics {
    routes: RwLock<HashMap<String, Arc<RouteMetrics>>>,
    rejections: RwLock<HashMap<&'static str, Counter>>,
    residency: RwLock<Vec<(String, &'static str, Counter)>>,
    upstream_duration: std::sync::OnceLock<Histogram>,
}

struct RouteMetrics {
    duration: Histogram,
    /// Few statuses per route: a short list beats a map.
    by_status: RwLock<Vec<(u16, Counter)>>,
    route: String,
}

impl RequestMetrics {
    /// One finished request: `gateway_requests_total{route,status}`,
    /// `gateway_request_duration_seconds{route}`, `gateway_upstream_duration_seconds`,
    /// `gateway_rejections_total{reason}`.
    pub fn request(
        &self,
        route: Option<&str>,
        status: u16,
        duration: Duration,
        upstream: Option<Duration>,
        rejection: Option<&'static str>,
    ) {
        let route = self.route(route.unwrap_or(UNMATCHED));
        route.duration.record(duration.as_secs_f64());
        route.status(status).increment(1);
        if let Some(upstream) = upstream {
            self.upstream_duration
                .get_or_init(|| metrics::histogram!(crate::telemetry::UPSTREAM_DURATION_SECONDS))
                .record(upstream.as_secs_f64());
        }
        if let Some(reason) = rejection {
            self.rejection(reason).increment(1);
        }
    }

    /// `gateway_residency_routes_total{region,reason}`.
    pub fn routed(&self, region: &str, reason: &'static str) {
        if let Some(counter) = self
            .residency
            .read()
            .iter()
            .find(|(r, why, _)| r == region && *why == reason)
            .map(|(_, _, c)| c.clone())
        {
            counter.increment(1);
            return;
        }
        let counter = metrics::counter!(
            crate::telemetry::RESIDENCY_ROUTES_TOTAL,
            "region" => region.to_string(),
            "reason" => reason
        );
        counter.increment(1);
        self.residency
            .write()
            .push((region.to_string(), reason, counter));
    }

    fn route(&self, route: &str) -> Arc<RouteMetrics> {
        if let Some(m) = self.routes.read().get(route) {
            return m.clone();
        }
        self.routes
            .write()
            .entry(route.to_string())
            .or_insert_with(|| {
                Arc::new(RouteMetrics {
                    duration: metrics::histogram!(
                        crate::telemetry::REQUEST_DURATION_SECONDS,
                        "route" => route.to_string()
                    ),
                    by_status: RwLock::new(Vec::new()),
                    route: route.to_string(),
                })
            })
            .clone()
    }

    fn rejection(&self, reason: &'static str) -> Counter {
        if let Some(c) = self.rejections.read().get(reason) {
            return c.clone();
        }
        self.rejections
            .write()
            .entry(reason)
            .or_insert_with(
                || metrics::counter!(crate::telemetry::REJECTIONS_TOTAL, "reason" => reason),
            )
            .clone()
    }
}

impl RouteMetrics {
    fn status(&self, status: u16) -> Counter {
        if let Some((_, c)) = self.by_status.read().iter().find(|(s, _)| *s == status) {
            return c.clone();
        }
        let mut by_status = self.by_status.write();
        if let Some((_, c)) = by_status.iter().find(|(s, _)| *s == status) {
            return c.clone();
        }
        let counter = metrics::counter!(
            crate::telemetry::REQUESTS_TOTAL,
            "route" => self.route.clone(),
            "status" => status.to_string()
        );
        by_status.push((status, counter.clone()));
        counter
    }
}

/// Counters of one metric whose label values are all static strings (outcomes, modes), each
/// label set resolved on first use and kept: for the stages' per-request counters.
pub struct StaticCounters<const N: usize> {
    name: &'static str,
    keys: [&'static str; N],
    resolved: RwLock<Vec<([&'static str; N], Counter)>>,
}

impl<const N: usize> StaticCounters<N> {
    pub const fn new(name: &'static str, keys: [&'static str; N]) -> Self {
        StaticCounters {
            name,
            keys,
            resolved: parking_lot::const_rwlock(Vec::new()),
        }
    }

    pub fn increment(&self, values: [&'static str; N], by: u64) {
        if let Some((_, c)) = self.resolved.read().iter().find(|(v, _)| *v == values) {
            c.increment(by);
            return;
        }
        let labels: Vec<metrics::Label> = self
            .keys
            .iter()
            .zip(values)
            .map(|(k, v)| metrics::Label::from_static_parts(k, v))
            .collect();
        let counter = metrics::counter!(self.name, labels);
        counter.increment(by);
        self.resolved.write().push((values, counter));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    #[test]
    fn counts_per_route_status_reason_and_region_with_resolved_handles() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let m = RequestMetrics::default();
            for _ in 0..3 {
                m.request(
                    Some("/projects/{id}"),
                    200,
                    Duration::from_millis(1),
                    Some(Duration::from_micros(500)),
                    None,
                );
            }
            m.request(
                None,
                404,
                Duration::from_millis(1),
                None,
                Some("unknown-route"),
            );
            m.routed("eu-central", "home");
            m.routed("eu-central", "home");
            let decisions = StaticCounters::new("test_decisions_total", ["outcome", "by"]);
            decisions.increment(["admitted", "local"], 1);
            decisions.increment(["admitted", "local"], 2);
            decisions.increment(["limited", "redis"], 1);
        });
        let text = handle.render();
        for line in [
            r#"gateway_requests_total{route="/projects/{id}",status="200"} 3"#,
            r#"gateway_requests_total{route="unmatched",status="404"} 1"#,
            r#"gateway_rejections_total{reason="unknown-route"} 1"#,
            r#"gateway_residency_routes_total{region="eu-central",reason="home"} 2"#,
            "gateway_upstream_duration_seconds_count 3",
            r#"test_decisions_total{outcome="admitted",by="local"} 3"#,
            r#"test_decisions_total{outcome="limited",by="redis"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }
}
