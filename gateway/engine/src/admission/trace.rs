//! What `explain` asks of [`super::admit`]: the facts it substitutes for a live request's and
//! the reasons each stage records as it runs. Explaining goes through the very code that
//! serves requests, so it cannot disagree with it (a tier's feature gate, a residency rule, a
//! tenant binding); it differs in two deliberate ways, both recorded in the trace: it spends no
//! rate-limit or quota budget (the limits that would apply are listed instead), and it emits no
//! webhooks, decision log lines or decision metrics.

use std::sync::Arc;

use serde::Serialize;

use crate::identity::Principal;

/// An explain run: optional substitutes for the request's own facts, and the trace.
#[derive(Debug, Default)]
pub struct Explaining {
    /// Use this principal instead of identifying the request's credentials; after the run, the
    /// principal the stages used.
    pub principal: Option<Arc<Principal>>,
    /// Use this client country instead of a GeoIP lookup of the client address.
    pub country: Option<String>,
    pub trace: Trace,
}

/// The reasons `admit` recorded, stage by stage.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Trace {
    pub stages: Vec<StageNote>,
    /// Stage 4's full evaluation, when it ran on a matched route.
    pub authorization: Option<crate::pipeline::authorize::AuthorizationTrace>,
}

/// One stage's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageNote {
    pub stage: &'static str,
    pub outcome: StageOutcome,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageOutcome {
    Passed,
    Refused,
    /// Not configured in this deployment.
    Skipped,
    /// Configured, deliberately not run by explain (rate limits spend budget).
    NotEvaluated,
}

impl Trace {
    pub(crate) fn note(&mut self, stage: &'static str, outcome: StageOutcome, detail: String) {
        self.stages.push(StageNote {
            stage,
            outcome,
            detail,
        });
    }
}

/// Records a stage's result when explaining; a no-op on the live path.
pub(crate) fn note<T, E: std::fmt::Display>(
    explaining: &mut Option<&mut Explaining>,
    stage: &'static str,
    result: &Result<T, E>,
    passed: impl FnOnce(&T) -> String,
) {
    if let Some(x) = explaining {
        match result {
            Ok(value) => x.trace.note(stage, StageOutcome::Passed, passed(value)),
            Err(e) => x.trace.note(stage, StageOutcome::Refused, e.to_string()),
        }
    }
}
