//! Every metric the gateway exports, declared once: its name, kind and the HELP text
//! Prometheus shows. Code records through these constants; [`describe`] registers the HELP
//! texts with whatever recorder is installed (the CLI installs the Prometheus exporter).
//! Labels stay bounded: route templates, never raw paths; tenant ids only on usage.

/// A metric's kind, as Prometheus types it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One exported metric.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

/// Requests answered, by route template and status.
pub const REQUESTS_TOTAL: &str = "gateway_requests_total";

/// Time from the request head to the end of the response, by route template.
pub const REQUEST_DURATION_SECONDS: &str = "gateway_request_duration_seconds";

/// Requests the gateway answered itself, by problem type (reason).
pub const REJECTIONS_TOTAL: &str = "gateway_rejections_total";

/// Time the upstream took to answer a forwarded request.
pub const UPSTREAM_DURATION_SECONDS: &str = "gateway_upstream_duration_seconds";

/// Forwarded requests by the region that served them and why it was chosen.
pub const RESIDENCY_ROUTES_TOTAL: &str = "gateway_residency_routes_total";

/// Billable requests recorded in the usage outbox, by tenant.
pub const USAGE_REQUESTS_TOTAL: &str = "gateway_usage_requests_total";

/// Cedar decisions, by decision (allow, deny).
pub const AUTHZ_DECISIONS_TOTAL: &str = "gateway_authz_decisions_total";

/// Cedar evaluations in which a policy raised an error (the policy was skipped).
pub const AUTHZ_POLICY_ERRORS_TOTAL: &str = "gateway_authz_policy_errors_total";

/// Evaluations of a tenant's own policy set that raised an error.
pub const AUTHZ_TENANT_POLICY_ERRORS_TOTAL: &str = "gateway_authz_tenant_policy_errors_total";

/// Entity store lookups that failed (provider down or timed out, record not fitting the schema).
pub const AUTHZ_ENTITY_STORE_ERRORS_TOTAL: &str = "gateway_authz_entity_store_errors_total";

/// Claim or request-fact values left out of a decision because they do not have the type the
/// schema declares for their attribute.
pub const AUTHZ_ATTRIBUTE_TYPE_ERRORS_TOTAL: &str = "gateway_authz_attribute_type_errors_total";

/// Requests on which the shadow policies decided differently from the enforced ones.
pub const AUTHZ_SHADOW_DIFFS_TOTAL: &str = "gateway_authz_shadow_diffs_total";

/// Time to build and evaluate one Cedar request (decision cache misses).
pub const AUTHZ_DURATION_SECONDS: &str = "gateway_authz_duration_seconds";

/// Rate limit and quota decisions, by outcome and backend.
pub const RATELIMIT_DECISIONS_TOTAL: &str = "gateway_ratelimit_decisions_total";
/// Spending-budget thresholds crossed (each announced once cluster-wide).
pub const BUDGET_THRESHOLDS_TOTAL: &str = "gateway_budget_thresholds_total";
/// Budgets forecast to run out before their month ends (each announced once cluster-wide).
pub const BUDGET_FORECASTS_EXCEEDING_TOTAL: &str = "gateway_budget_forecasts_exceeding_total";

/// Decisions taken by the configured fallback while Redis was unreachable, by mode.
pub const RATELIMIT_FALLBACK_DECISIONS_TOTAL: &str = "gateway_ratelimit_fallback_decisions_total";

/// 1 while the Redis rate-limit backend answers, 0 while the fallback decides.
pub const RATELIMIT_REDIS_UP: &str = "gateway_ratelimit_redis_up";

/// Fetches of an issuer's signing keys, by outcome (ok, error, rate_limited).
pub const JWKS_REFRESHES_TOTAL: &str = "gateway_jwks_refreshes_total";

/// First-seen principals recorded by just-in-time provisioning.
pub const PRINCIPALS_PROVISIONED_TOTAL: &str = "gateway_principals_provisioned_total";

/// Provisioning records dropped because the provisioning queue was full (retried on the principal's next request).
pub const PROVISIONING_DEFERRED_TOTAL: &str = "gateway_provisioning_deferred_total";

/// Tenant registry changes applied from PostgreSQL.
pub const REGISTRY_CHANGES_TOTAL: &str = "gateway_registry_changes_total";

/// Tenant rows in PostgreSQL refused as invalid (the previous version stays in force).
pub const REGISTRY_REFUSED_TENANTS_TOTAL: &str = "gateway_registry_refused_tenants_total";

/// Failed attempts to follow the PostgreSQL tenant registry.
pub const REGISTRY_SYNC_ERRORS_TOTAL: &str = "gateway_registry_sync_errors_total";

/// Reloads of policies, tenants and maps, by outcome.
pub const RELOADS_TOTAL: &str = "gateway_reloads_total";

/// Reloads of the GeoIP database, by outcome.
pub const GEOIP_RELOADS_TOTAL: &str = "gateway_geoip_reloads_total";

/// Records appended to a journal (usage outbox, audit log).
pub const JOURNAL_RECORDS_TOTAL: &str = "gateway_journal_records_total";

/// Records of refused requests a journal dropped while it could not write and its queue was full.
pub const JOURNAL_DROPPED_TOTAL: &str = "gateway_journal_dropped_total";

/// Write or sync errors of a journal (a full disk, an I/O error).
pub const JOURNAL_WRITE_ERRORS_TOTAL: &str = "gateway_journal_write_errors_total";

/// 1 while a journal writes, 0 while it cannot (requests are refused with 503).
pub const JOURNAL_HEALTHY: &str = "gateway_journal_healthy";

/// Bytes appended to a journal and not yet on disk.
pub const JOURNAL_QUEUED_BYTES: &str = "gateway_journal_queued_bytes";

/// Usage events delivered by an exporter.
pub const EXPORTER_EVENTS_TOTAL: &str = "gateway_exporter_events_total";

/// Failed deliveries an exporter retries.
pub const EXPORTER_RETRIES_TOTAL: &str = "gateway_exporter_retries_total";

/// Usage events an exporter gave up on (written to its dead-letter file).
pub const EXPORTER_DEAD_LETTERS_TOTAL: &str = "gateway_exporter_dead_letters_total";

/// Usage records in the outbox an exporter has not acknowledged yet.
pub const EXPORTER_LAG_RECORDS: &str = "gateway_exporter_lag_records";

/// Usage events skipped by a billing exporter because no meter or customer maps them.
pub const EXPORTER_UNMAPPED_TOTAL: &str = "gateway_exporter_unmapped_total";

/// Webhook delivery attempts, by outcome (delivered, retried, dead-lettered).
pub const WEBHOOK_DELIVERIES_TOTAL: &str = "gateway_webhook_deliveries_total";

/// Webhook events dropped because the queue was full.
pub const WEBHOOK_DROPPED_TOTAL: &str = "gateway_webhook_dropped_total";

/// Errors writing or reading the durable webhook queue.
pub const WEBHOOK_QUEUE_ERRORS_TOTAL: &str = "gateway_webhook_queue_errors_total";

/// Client connections open now.
pub const CONNECTIONS_OPEN: &str = "gateway_connections_open";

/// Client connections closed for idling or a slow request head, by state.
pub const CONNECTIONS_IDLE_CLOSED_TOTAL: &str = "gateway_connections_idle_closed_total";

/// Peers of an upstream pool.
pub const UPSTREAM_PEERS: &str = "gateway_upstream_peers";

/// Peers of an upstream pool whose health check passes.
pub const UPSTREAM_HEALTHY_PEERS: &str = "gateway_upstream_healthy_peers";

/// Tenant changes made through the admin API.
pub const ADMIN_TENANT_WRITES_TOTAL: &str = "gateway_admin_tenant_writes_total";

/// All of them, for [`describe`] and for tests that check dashboards and alerts.
pub const ALL: &[Metric] = &[
    Metric {
        name: REQUESTS_TOTAL,
        kind: Kind::Counter,
        help: "Requests answered, by route template and status.",
    },
    Metric {
        name: REQUEST_DURATION_SECONDS,
        kind: Kind::Histogram,
        help: "Time from the request head to the end of the response, by route template.",
    },
    Metric {
        name: REJECTIONS_TOTAL,
        kind: Kind::Counter,
        help: "Requests the gateway answered itself, by problem type (reason).",
    },
    Metric {
        name: UPSTREAM_DURATION_SECONDS,
        kind: Kind::Histogram,
        help: "Time the upstream took to answer a forwarded request.",
    },
    Metric {
        name: RESIDENCY_ROUTES_TOTAL,
        kind: Kind::Counter,
        help: "Forwarded requests by the region that served them and why it was chosen.",
    },
    Metric {
        name: USAGE_REQUESTS_TOTAL,
        kind: Kind::Counter,
        help: "Billable requests recorded in the usage outbox, by tenant.",
    },
    Metric {
        name: AUTHZ_DECISIONS_TOTAL,
        kind: Kind::Counter,
        help: "Cedar decisions, by decision (allow, deny).",
    },
    Metric {
        name: AUTHZ_POLICY_ERRORS_TOTAL,
        kind: Kind::Counter,
        help: "Cedar evaluations in which a policy raised an error (the policy was skipped).",
    },
    Metric {
        name: AUTHZ_TENANT_POLICY_ERRORS_TOTAL,
        kind: Kind::Counter,
        help: "Evaluations of a tenant's own policy set that raised an error.",
    },
    Metric {
        name: AUTHZ_ENTITY_STORE_ERRORS_TOTAL,
        kind: Kind::Counter,
        help: "Entity store lookups that failed (provider down or timed out, record not fitting the schema).",
    },
    Metric {
        name: AUTHZ_ATTRIBUTE_TYPE_ERRORS_TOTAL,
        kind: Kind::Counter,
        help: "Claim or request-fact values left out of a decision: not of the type the schema declares.",
    },
    Metric {
        name: AUTHZ_SHADOW_DIFFS_TOTAL,
        kind: Kind::Counter,
        help: "Requests on which the shadow policies decided differently from the enforced ones.",
    },
    Metric {
        name: AUTHZ_DURATION_SECONDS,
        kind: Kind::Histogram,
        help: "Time to build and evaluate one Cedar request (decision cache misses).",
    },
    Metric {
        name: RATELIMIT_DECISIONS_TOTAL,
        kind: Kind::Counter,
        help: "Rate limit and quota decisions, by outcome and backend.",
    },
    Metric {
        name: RATELIMIT_FALLBACK_DECISIONS_TOTAL,
        kind: Kind::Counter,
        help: "Decisions taken by the configured fallback while Redis was unreachable, by mode.",
    },
    Metric {
        name: RATELIMIT_REDIS_UP,
        kind: Kind::Gauge,
        help: "1 while the Redis rate-limit backend answers, 0 while the fallback decides.",
    },
    Metric {
        name: JWKS_REFRESHES_TOTAL,
        kind: Kind::Counter,
        help: "Fetches of an issuer's signing keys, by outcome (ok, error, rate_limited).",
    },
    Metric {
        name: PRINCIPALS_PROVISIONED_TOTAL,
        kind: Kind::Counter,
        help: "First-seen principals recorded by just-in-time provisioning.",
    },
    Metric {
        name: PROVISIONING_DEFERRED_TOTAL,
        kind: Kind::Counter,
        help: "Provisioning records dropped because the provisioning queue was full (retried on the principal's next request).",
    },
    Metric {
        name: REGISTRY_CHANGES_TOTAL,
        kind: Kind::Counter,
        help: "Tenant registry changes applied from PostgreSQL.",
    },
    Metric {
        name: REGISTRY_REFUSED_TENANTS_TOTAL,
        kind: Kind::Counter,
        help: "Tenant rows in PostgreSQL refused as invalid (the previous version stays in force).",
    },
    Metric {
        name: REGISTRY_SYNC_ERRORS_TOTAL,
        kind: Kind::Counter,
        help: "Failed attempts to follow the PostgreSQL tenant registry.",
    },
    Metric {
        name: RELOADS_TOTAL,
        kind: Kind::Counter,
        help: "Reloads of policies, tenants and maps, by outcome.",
    },
    Metric {
        name: GEOIP_RELOADS_TOTAL,
        kind: Kind::Counter,
        help: "Reloads of the GeoIP database, by outcome.",
    },
    Metric {
        name: JOURNAL_RECORDS_TOTAL,
        kind: Kind::Counter,
        help: "Records appended to a journal (usage outbox, audit log).",
    },
    Metric {
        name: JOURNAL_DROPPED_TOTAL,
        kind: Kind::Counter,
        help: "Records of refused requests a journal dropped while it could not write and its queue was full.",
    },
    Metric {
        name: JOURNAL_WRITE_ERRORS_TOTAL,
        kind: Kind::Counter,
        help: "Write or sync errors of a journal (a full disk, an I/O error).",
    },
    Metric {
        name: JOURNAL_HEALTHY,
        kind: Kind::Gauge,
        help: "1 while a journal writes, 0 while it cannot (requests are refused with 503).",
    },
    Metric {
        name: JOURNAL_QUEUED_BYTES,
        kind: Kind::Gauge,
        help: "Bytes appended to a journal and not yet on disk.",
    },
    Metric {
        name: EXPORTER_EVENTS_TOTAL,
        kind: Kind::Counter,
        help: "Usage events delivered by an exporter.",
    },
    Metric {
        name: EXPORTER_RETRIES_TOTAL,
        kind: Kind::Counter,
        help: "Failed deliveries an exporter retries.",
    },
    Metric {
        name: EXPORTER_DEAD_LETTERS_TOTAL,
        kind: Kind::Counter,
        help: "Usage events an exporter gave up on (written to its dead-letter file).",
    },
    Metric {
        name: EXPORTER_LAG_RECORDS,
        kind: Kind::Gauge,
        help: "Usage records in the outbox an exporter has not acknowledged yet.",
    },
    Metric {
        name: EXPORTER_UNMAPPED_TOTAL,
        kind: Kind::Counter,
        help: "Usage events skipped by a billing exporter because no meter or customer maps them.",
    },
    Metric {
        name: WEBHOOK_DELIVERIES_TOTAL,
        kind: Kind::Counter,
        help: "Webhook delivery attempts, by outcome (delivered, retried, dead-lettered).",
    },
    Metric {
        name: WEBHOOK_DROPPED_TOTAL,
        kind: Kind::Counter,
        help: "Webhook events dropped because the queue was full.",
    },
    Metric {
        name: WEBHOOK_QUEUE_ERRORS_TOTAL,
        kind: Kind::Counter,
        help: "Errors writing or reading the durable webhook queue.",
    },
    Metric {
        name: CONNECTIONS_OPEN,
        kind: Kind::Gauge,
        help: "Client connections open now.",
    },
    Metric {
        name: CONNECTIONS_IDLE_CLOSED_TOTAL,
        kind: Kind::Counter,
        help: "Client connections closed for idling or a slow request head, by state.",
    },
    Metric {
        name: UPSTREAM_PEERS,
        kind: Kind::Gauge,
        help: "Peers of an upstream pool.",
    },
    Metric {
        name: UPSTREAM_HEALTHY_PEERS,
        kind: Kind::Gauge,
        help: "Peers of an upstream pool whose health check passes.",
    },
    Metric {
        name: ADMIN_TENANT_WRITES_TOTAL,
        kind: Kind::Counter,
        help: "Tenant changes made through the admin API.",
    },
];

/// Registers every metric's HELP text (and the unit of durations and sizes) with the installed
/// recorder. Call once, after installing it.
pub fn describe() {
    for metric in ALL {
        let unit = if metric.name.ends_with("_seconds") {
            Some(metrics::Unit::Seconds)
        } else if metric.name.ends_with("_bytes") {
            Some(metrics::Unit::Bytes)
        } else {
            None
        };
        match (metric.kind, unit) {
            (Kind::Counter, _) => metrics::describe_counter!(metric.name, metric.help),
            (Kind::Gauge, Some(unit)) => metrics::describe_gauge!(metric.name, unit, metric.help),
            (Kind::Gauge, None) => metrics::describe_gauge!(metric.name, metric.help),
            (Kind::Histogram, Some(unit)) => {
                metrics::describe_histogram!(metric.name, unit, metric.help)
            }
            (Kind::Histogram, None) => metrics::describe_histogram!(metric.name, metric.help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_prometheus_style() {
        let mut seen = std::collections::HashSet::new();
        for metric in ALL {
            assert!(seen.insert(metric.name), "{} declared twice", metric.name);
            assert!(metric.name.starts_with("gateway_"), "{}", metric.name);
            assert!(
                metric
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{}",
                metric.name
            );
            assert_eq!(
                metric.kind == Kind::Counter,
                metric.name.ends_with("_total"),
                "{}: counters and only counters end in _total",
                metric.name
            );
            assert!(!metric.help.is_empty());
        }
    }
}
