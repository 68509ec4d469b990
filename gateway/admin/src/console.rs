//! The console: one server-rendered HTML page on the admin listener (`/console`) with
//! per-tenant requests, rejections by reason, cost, budget burn-down with the forecast cone,
//! top routes, residency routing per region and the latest decisions with their determining
//! policies. Charts are SVG drawn here: no script, nothing fetched from elsewhere.
//!
//! Figures come from this replica's outbox and audit log over the month so far (or `from`/
//! `to`), as `gateway usage report` computes them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gateway_engine::metering::forecast::{self, UsageSeries, WEEK};
use gateway_engine::metering::pricing::PriceList;
use gateway_engine::metering::report::{self, Facts};
use gateway_engine::metering::UtcMonth;
use gateway_engine::snapshot::Snapshot;
use rust_decimal::Decimal;

/// The cookie a console login sets (derived from the admin token, never the token itself).
pub const COOKIE: &str = "gw-console";

/// Per-tenant figures over the period.
#[derive(Debug, Default)]
struct TenantFigures {
    requests: u64,
    rejected: u64,
    interrupted: u64,
    cost: Decimal,
    reasons: BTreeMap<String, u64>,
    regions: BTreeMap<String, u64>,
    routes: BTreeMap<String, u64>,
}

/// One of the latest decisions.
struct Decision {
    time: String,
    tenant: String,
    principal: String,
    action: String,
    allowed: bool,
    policies: String,
    status: String,
}

/// Everything the page shows.
struct Figures {
    from: SystemTime,
    to: SystemTime,
    currency: Option<String>,
    tenants: BTreeMap<String, TenantFigures>,
    /// Hourly cost of each tenant over the last six weeks (budget forecasts).
    cost_series: UsageSeries,
    series_first_hour: i64,
    decisions: Vec<Decision>,
}

fn hours(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs() / 3600).unwrap_or(0))
        .unwrap_or(0)
}

/// This UTC month's bounds (seconds since the epoch).
fn this_month() -> UtcMonth {
    let now = i64::try_from(epoch(SystemTime::now())).unwrap_or(0);
    UtcMonth::at(now).unwrap_or(UtcMonth {
        key: 0,
        start: now,
        resets_at: now,
    })
}

fn at_second(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// Reads the outbox and the audit log. `from`/`to`: the period (default: this month).
fn gather(
    outbox: Option<&Path>,
    audit: Option<&Path>,
    prices: Option<&PriceList>,
    budgeted: &std::collections::HashSet<&str>,
    from: Option<SystemTime>,
    to: Option<SystemTime>,
) -> Result<Figures, String> {
    let now = SystemTime::now();
    let from = from.unwrap_or_else(|| at_second(this_month().start));
    let to = to.unwrap_or(now + Duration::from_secs(3600));
    // Six weeks of history up to and including the current (partial) hour.
    let series_first_hour = hours(now) - i64::try_from(6 * WEEK).unwrap_or(0);
    let mut figures = Figures {
        from,
        to,
        currency: prices.map(|p| p.currency.clone()),
        tenants: BTreeMap::new(),
        cost_series: UsageSeries::new(series_first_hour, 6 * WEEK + 1),
        series_first_hour,
        decisions: Vec::new(),
    };
    let (from_secs, to_secs) = (epoch(from), epoch(to));
    if let Some(dir) = outbox {
        report::for_each_outbox_event(dir, |event| {
            let facts = Facts::of(&event);
            if event
                .tenant
                .as_deref()
                .is_some_and(|t| budgeted.contains(t))
            {
                figures.cost_series.add(&facts, prices);
            }
            if !(from_secs..to_secs).contains(&facts.epoch_secs) {
                return;
            }
            let tenant = figures
                .tenants
                .entry(event.tenant.clone().unwrap_or_else(|| "-".into()))
                .or_default();
            tenant.requests += 1;
            match event.outcome {
                gateway_engine::metering::Outcome::Rejected => {
                    tenant.rejected += 1;
                    *tenant
                        .reasons
                        .entry(event.reason.clone().unwrap_or_else(|| "-".into()))
                        .or_default() += 1;
                }
                gateway_engine::metering::Outcome::Interrupted => tenant.interrupted += 1,
                gateway_engine::metering::Outcome::Completed => {}
            }
            if event.outcome != gateway_engine::metering::Outcome::Rejected {
                if let Some(region) = &event.region {
                    *tenant.regions.entry(region.clone()).or_default() += 1;
                }
            }
            if let Some(route) = &event.route {
                *tenant
                    .routes
                    .entry(format!("{} {route}", event.method))
                    .or_default() += 1;
            }
            if let Some(prices) = prices {
                tenant.cost += prices.cost(&facts.tally());
            }
        })
        .map_err(|e| e.to_string())?;
    }
    if let Some(dir) = audit {
        figures.decisions = latest_decisions(dir, 20).map_err(|e| e.to_string())?;
    }
    Ok(figures)
}

fn epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The newest `n` audit records with a decision, newest first (reads segments from the last).
fn latest_decisions(dir: &Path, n: usize) -> std::io::Result<Vec<Decision>> {
    use std::io::BufRead as _;
    let mut found = Vec::new();
    for path in gateway_engine::audit::segments(dir)?.iter().rev() {
        let file = std::io::BufReader::new(std::fs::File::open(path)?);
        let mut in_segment = Vec::new();
        // Bytes: a damaged line (not UTF-8) is skipped like any unreadable one.
        for line in file.split(b'\n') {
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(&line?) else {
                continue;
            };
            let Some(decision) = value.get("decision").filter(|d| d.is_object()) else {
                continue;
            };
            let text = |v: Option<&serde_json::Value>| match v {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Null) | None => "-".into(),
                Some(other) => other.to_string(),
            };
            in_segment.push(Decision {
                time: text(value.get("time")),
                tenant: text(value.get("tenant")),
                principal: text(value.get("principal")),
                action: text(decision.get("action")),
                allowed: decision.get("allowed").and_then(|a| a.as_bool()) == Some(true),
                policies: decision
                    .get("policies")
                    .and_then(|p| p.as_array())
                    .map(|p| {
                        p.iter()
                            .filter_map(|id| id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default(),
                status: text(value.get("status")),
            });
        }
        found.extend(in_segment.into_iter().rev());
        if found.len() >= n {
            break;
        }
    }
    found.truncate(n);
    Ok(found)
}

/// `text` escaped for the page: in element text and in double-quoted attribute values alike
/// (`data-tenant="…"`, `aria-label="…"`), so quotes are escaped too.
fn esc(text: &str) -> String {
    html_escape::encode_double_quoted_attribute(text).into_owned()
}

/// A cost exactly as the usage report prints it (so the two can be compared).
fn money(cost: Decimal) -> String {
    report::format_cost(cost)
}

/// A horizontal bar chart: one bar per label, value written at its end.
fn bars_svg(title: &str, rows: &[(String, f64, String)], colour: &str) -> String {
    let width = 520.0;
    let label_width = 150.0;
    let bar_height = 18.0;
    let height = 24.0 + rows.len() as f64 * (bar_height + 6.0);
    let max = rows.iter().map(|r| r.1).fold(0.0, f64::max).max(1e-12);
    let mut svg = format!(
        r#"<svg role="img" aria-label="{t}" viewBox="0 0 {width} {height}" width="{width}" height="{height}"><title>{t}</title>"#,
        t = esc(title)
    );
    for (i, (label, value, text)) in rows.iter().enumerate() {
        let y = 12.0 + i as f64 * (bar_height + 6.0);
        let length = (width - label_width - 90.0) * value / max;
        let _ = write!(
            svg,
            r#"<text x="0" y="{ty}" font-size="12">{label}</text><rect x="{label_width}" y="{y}" width="{length:.1}" height="{bar_height}" fill="{colour}"/><text x="{tx:.1}" y="{ty}" font-size="12">{text}</text>"#,
            ty = y + 13.0,
            label = esc(label),
            tx = label_width + length + 6.0,
            text = esc(text),
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A budget burn-down: cumulative spend so far, the budget line, and the forecast with its
/// interval (a cone) to the end of the month.
fn burn_down_svg(
    title: &str,
    spent: &[f64],
    cone: Option<(&[f64], &[f64], &[f64])>,
    amount: f64,
) -> String {
    let (width, height, left, bottom) = (520.0, 200.0, 50.0, 20.0);
    let total_hours = spent.len() + cone.map(|c| c.0.len()).unwrap_or(0);
    let mut top = amount;
    let mut cumulative = Vec::with_capacity(spent.len());
    let mut sum = 0.0;
    for v in spent {
        sum += v;
        cumulative.push(sum);
    }
    let cone_paths = cone.map(|(point, lower, upper)| {
        let run = |values: &[f64]| {
            let mut total = sum;
            values
                .iter()
                .map(|v| {
                    total += v;
                    total
                })
                .collect::<Vec<f64>>()
        };
        (run(point), run(lower), run(upper))
    });
    if let Some((_, _, upper)) = &cone_paths {
        top = top.max(upper.last().copied().unwrap_or(0.0));
    }
    top = top.max(sum).max(1e-12) * 1.05;
    let x = |hour: usize| left + (width - left - 10.0) * hour as f64 / total_hours.max(1) as f64;
    let y = |value: f64| (height - bottom) - (height - bottom - 10.0) * value / top;
    let line = |offset: usize, values: &[f64]| {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x(offset + i + 1), y(*v)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut svg = format!(
        r#"<svg role="img" aria-label="{t}" viewBox="0 0 {width} {height}" width="{width}" height="{height}"><title>{t}</title>"#,
        t = esc(title)
    );
    let _ = write!(
        svg,
        r##"<line x1="{left}" y1="{by:.1}" x2="{right}" y2="{by:.1}" stroke="#c0392b" stroke-dasharray="4 3"/><text x="{left}" y="{ty:.1}" font-size="11" fill="#c0392b">budget {amount}</text>"##,
        by = y(amount),
        right = width - 10.0,
        ty = y(amount) - 3.0,
    );
    if let Some((point, lower, upper)) = &cone_paths {
        let offset = spent.len();
        let mut polygon = line(offset, upper);
        let lower_back: Vec<String> = lower
            .iter()
            .enumerate()
            .rev()
            .map(|(i, v)| format!("{:.1},{:.1}", x(offset + i + 1), y(*v)))
            .collect();
        polygon.push(' ');
        polygon.push_str(&lower_back.join(" "));
        let _ = write!(
            svg,
            r##"<polygon class="cone" points="{polygon}" fill="#2e86de" fill-opacity="0.18"/><polyline points="{p}" fill="none" stroke="#2e86de" stroke-dasharray="3 2"/>"##,
            p = line(offset, point)
        );
    }
    let _ = write!(
        svg,
        r##"<polyline points="{}" fill="none" stroke="#222" stroke-width="2"/><line x1="{left}" y1="{b}" x2="{r}" y2="{b}" stroke="#888"/><text x="0" y="{b}" font-size="11">0</text><text x="0" y="14" font-size="11">{top:.2}</text></svg>"##,
        line(0, &cumulative),
        b = height - bottom,
        r = width - 10.0,
    );
    svg
}

/// The page.
pub fn render(
    snapshot: &Snapshot,
    outbox: Option<&Path>,
    audit: Option<&Path>,
    from: Option<SystemTime>,
    to: Option<SystemTime>,
    viewer: &str,
) -> Result<String, String> {
    let prices = snapshot.prices.as_deref();
    // Hourly cost series are drawn for the tenants with a currency budget only: one of six
    // weeks for every tenant of a large registry would take gigabytes per page view.
    let budgeted: std::collections::HashSet<&str> = snapshot
        .registry
        .tenants()
        .filter(|t| {
            t.budgets
                .iter()
                .any(|b| b.attribute.is_none() && b.amount.is_some())
        })
        .map(|t| t.id.as_str())
        .collect();
    let figures = gather(outbox, audit, prices, &budgeted, from, to)?;
    let currency = figures.currency.clone().unwrap_or_default();
    let mut html = String::from(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Gateway console</title>
<style>body{font:14px system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0 20px}
td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:right}td:first-child,th:first-child{text-align:left}
h2{margin-top:28px}section{margin-bottom:12px}.muted{color:#777}form{display:inline}</style></head><body>"#,
    );
    let time = |t: SystemTime| humantime_like(t);
    let _ = write!(
        html,
        r#"<h1>Gateway console</h1><p class="muted">Period {} to {} (UTC), this replica's outbox and audit log. Signed in as <span id="viewer">{}</span>. <form method="post" action="/console/logout"><button type="submit">Sign out</button></form></p>"#,
        time(figures.from),
        time(figures.to),
        esc(viewer)
    );
    // Per tenant.
    html.push_str(r#"<h2>Tenants</h2><table id="tenants"><tr><th>tenant</th><th>requests</th><th>rejected</th><th>interrupted</th>"#);
    if figures.currency.is_some() {
        let _ = write!(html, "<th>cost ({})</th>", esc(&currency));
    }
    html.push_str("</tr>");
    for (id, t) in &figures.tenants {
        let _ = write!(
            html,
            r#"<tr data-tenant="{id}"><td>{id}</td><td class="requests">{}</td><td class="rejected">{}</td><td class="interrupted">{}</td>"#,
            t.requests,
            t.rejected,
            t.interrupted,
            id = esc(id)
        );
        if figures.currency.is_some() {
            let _ = write!(html, r#"<td class="cost">{}</td>"#, money(t.cost));
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>");
    let request_bars: Vec<(String, f64, String)> = figures
        .tenants
        .iter()
        .map(|(id, t)| (id.clone(), t.requests as f64, t.requests.to_string()))
        .collect();
    html.push_str(&bars_svg("Requests per tenant", &request_bars, "#2e86de"));
    if figures.currency.is_some() {
        let cost_bars: Vec<(String, f64, String)> = figures
            .tenants
            .iter()
            .map(|(id, t)| {
                (
                    id.clone(),
                    t.cost.to_string().parse().unwrap_or(0.0),
                    format!("{} {}", money(t.cost), currency),
                )
            })
            .collect();
        html.push_str(&bars_svg("Cost per tenant", &cost_bars, "#27ae60"));
    }
    // Rejections by reason.
    html.push_str(r#"<h2>Rejections by reason</h2><table id="rejections"><tr><th>tenant</th><th>reason</th><th>requests</th></tr>"#);
    for (id, t) in &figures.tenants {
        for (reason, count) in &t.reasons {
            let _ = write!(
                html,
                r#"<tr data-tenant="{}" data-reason="{}"><td>{}</td><td>{}</td><td>{count}</td></tr>"#,
                esc(id),
                esc(reason),
                esc(id),
                esc(reason)
            );
        }
    }
    html.push_str("</table>");
    // Budgets.
    html.push_str("<h2>Budgets</h2>");
    let now_hour = hours(SystemTime::now());
    let month = this_month();
    let month_start_hour = month.start.div_euclid(3600);
    let hours_left = usize::try_from(month.resets_at.div_euclid(3600) - now_hour).unwrap_or(0);
    let mut any_budget = false;
    for tenant in snapshot.registry.tenants() {
        for budget in tenant.budgets.iter().filter(|b| b.attribute.is_none()) {
            let Some(amount) = budget.amount.as_deref().and_then(|a| a.parse::<f64>().ok()) else {
                continue;
            };
            any_budget = true;
            let series = figures
                .cost_series
                .series()
                .get(&(tenant.id.clone(), "cost".to_string()))
                .cloned()
                .unwrap_or_else(|| vec![0.0; 6 * WEEK + 1]);
            let start = usize::try_from(month_start_hour - figures.series_first_hour).unwrap_or(0);
            let spent_hours = series.get(start..).unwrap_or(&[]).to_vec();
            let projected = forecast::project_month(&series, start, hours_left, Some(amount));
            let title = format!(
                "{} budget {} ({} {currency})",
                tenant.id, budget.name, amount
            );
            let _ = write!(
                html,
                r#"<section data-budget="{}">"#,
                esc(&format!("{}/{}", tenant.id, budget.name))
            );
            match &projected {
                Ok((projection, model)) => {
                    let _ = write!(
                        html,
                        "<p>{}: spent {:.4} of {amount} {cur}; projected {:.4} (90 % interval {:.4} to {:.4}){}</p>",
                        esc(&title),
                        projection.used,
                        projection.total,
                        projection.total_lower,
                        projection.total_upper,
                        match projection.limit_reached_in_hours {
                            Some(h) => format!(", runs out in about {h} h"),
                            None => String::new(),
                        },
                        cur = esc(&currency),
                    );
                    html.push_str(&burn_down_svg(
                        &title,
                        &spent_hours,
                        Some((&model.point, &model.lower, &model.upper)),
                        amount,
                    ));
                }
                Err(e) => {
                    let used: f64 = spent_hours.iter().sum();
                    let _ = write!(
                        html,
                        "<p>{}: spent {used:.4} of {amount} {cur}; no forecast yet ({})</p>",
                        esc(&title),
                        esc(&e.to_string()),
                        cur = esc(&currency),
                    );
                    html.push_str(&burn_down_svg(&title, &spent_hours, None, amount));
                }
            }
            html.push_str("</section>");
        }
    }
    if !any_budget {
        html.push_str(r#"<p class="muted">No tenant has a spending budget in currency.</p>"#);
    }
    // Top routes and residency.
    html.push_str(r#"<h2>Top routes</h2><table id="routes"><tr><th>tenant</th><th>route</th><th>requests</th></tr>"#);
    for (id, t) in &figures.tenants {
        let mut routes: Vec<(&String, &u64)> = t.routes.iter().collect();
        routes.sort_by_key(|(_, n)| std::cmp::Reverse(**n));
        for (route, n) in routes.into_iter().take(5) {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{n}</td></tr>",
                esc(id),
                esc(route)
            );
        }
    }
    html.push_str("</table>");
    html.push_str(r#"<h2>Residency: where requests were served</h2><table id="regions"><tr><th>tenant</th><th>region</th><th>requests</th></tr>"#);
    for (id, t) in &figures.tenants {
        for (region, n) in &t.regions {
            let _ = write!(
                html,
                r#"<tr data-tenant="{}" data-region="{}"><td>{}</td><td>{}</td><td>{n}</td></tr>"#,
                esc(id),
                esc(region),
                esc(id),
                esc(region)
            );
        }
    }
    html.push_str("</table>");
    // Latest decisions.
    html.push_str(r#"<h2>Latest decisions</h2><table id="decisions"><tr><th>time</th><th>tenant</th><th>principal</th><th>action</th><th>decision</th><th>determining policies</th><th>status</th></tr>"#);
    for d in &figures.decisions {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&d.time),
            esc(&d.tenant),
            esc(&d.principal),
            esc(&d.action),
            if d.allowed { "allow" } else { "deny" },
            esc(&d.policies),
            esc(&d.status)
        );
    }
    html.push_str("</table></body></html>");
    Ok(html)
}

fn humantime_like(t: SystemTime) -> String {
    jiff::Timestamp::from_second(i64::try_from(epoch(t)).unwrap_or(0))
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The login page (with an error line after a wrong token); with `[admin.sso]`, a link to
/// sign in with the platform's identity provider above the token form.
pub fn login_page(error: Option<&str>, sso: bool) -> String {
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Gateway console: sign in</title>
<style>body{{font:14px system-ui,sans-serif;margin:48px}}input{{width:28em}}</style></head><body>
<h1>Gateway console</h1>{}{}<form method="post" action="/console/login">
<label>Admin token <input type="password" name="token" autocomplete="off"></label>
<button type="submit">Sign in</button></form></body></html>"#,
        error
            .map(|e| format!(r#"<p role="alert" style="color:#c0392b">{}</p>"#, esc(e)))
            .unwrap_or_default(),
        if sso {
            r#"<p><a id="sso" href="/console/sso">Sign in with your identity provider</a></p><p class="muted">or with the admin token:</p>"#
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_for_text_and_attributes() {
        assert_eq!(
            esc(r#"a"b<c>&d"#),
            "a&quot;b&lt;c&gt;&amp;d",
            "safe inside data-tenant=\"…\""
        );
    }

    #[test]
    fn charts_are_svg_with_escaped_labels() {
        let svg = bars_svg(
            "Requests <per> tenant",
            &[
                ("acme".into(), 3.0, "3".into()),
                ("<b>".into(), 1.0, "1".into()),
            ],
            "#000",
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"), "{svg}");
        assert!(svg.contains("&lt;b&gt;") && !svg.contains("<b>"), "{svg}");
        let burn = burn_down_svg("b", &[1.0, 2.0], Some((&[1.0], &[0.5], &[2.0])), 10.0);
        assert!(burn.contains("class=\"cone\""), "{burn}");
        assert!(burn.contains("budget 10"), "{burn}");
    }

    #[test]
    fn the_login_page_escapes_its_message_and_offers_sso_when_configured() {
        assert!(login_page(Some("<x>"), false).contains("&lt;x&gt;"));
        assert!(login_page(None, true).contains(r#"href="/console/sso""#));
        assert!(!login_page(None, false).contains("/console/sso"));
    }
}
