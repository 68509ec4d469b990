//! `gateway usage forecast`: per tenant and meter (requests, cost, custom meters), the use so
//! far this month, the projected month-end total with its interval, and when the tenant's
//! monthly quota and budgets will run out — from the outbox or a PostgreSQL ledger.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::metering::forecast::{self, UsageSeries};
use crate::metering::report::{self, Bucket, Dimension, ReportQuery};

/// What `gateway usage forecast` was asked.
pub struct ForecastArgs<'a> {
    pub config: &'a Path,
    pub tenant: Option<String>,
    /// The forecast is made as of this time (default: now); history is the weeks before it.
    pub at: Option<String>,
    pub weeks: u32,
    pub ledger: Option<String>,
    pub csv: bool,
}

const EXIT_CONFIG: i32 = 2;
const EXIT_RUNTIME: i32 = 1;

pub fn run(args: ForecastArgs<'_>) -> i32 {
    match forecast_rows(&args) {
        Ok(rows) => {
            if args.csv {
                match to_csv(&rows) {
                    Ok(text) => print!("{text}"),
                    Err(e) => {
                        eprintln!("{e}");
                        return EXIT_RUNTIME;
                    }
                }
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows).unwrap_or_default()
                );
            }
            0
        }
        Err((code, message)) => {
            eprintln!("{message}");
            code
        }
    }
}

fn forecast_rows(args: &ForecastArgs<'_>) -> Result<Vec<Value>, (i32, String)> {
    let config_error = |e: String| (EXIT_CONFIG, e);
    let loaded = crate::config::load(args.config)
        .map_err(|issues| config_error(format!("invalid configuration:\n{issues}")))?;
    let metering =
        loaded.config.metering.as_ref().ok_or_else(|| {
            config_error(format!("{}: no [metering] section", args.config.display()))
        })?;
    let prices = metering
        .pricing
        .as_ref()
        .map(crate::metering::pricing::PriceList::new)
        .transpose()
        .map_err(|e| config_error(format!("metering.pricing: {e}")))?;
    let at = match &args.at {
        Some(text) => report::parse_time(text).map_err(config_error)?,
        None => SystemTime::now(),
    };
    let at_secs = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Whole hours: the current one is not complete.
    let end_hour = i64::try_from(at_secs / 3600).unwrap_or(0);
    let hours = usize::try_from(args.weeks.clamp(1, 26)).unwrap_or(6) * forecast::WEEK;
    let first_hour = end_hour - i64::try_from(hours).unwrap_or(0);
    let month = crate::metering::UtcMonth::at(end_hour * 3600)
        .ok_or_else(|| config_error(format!("no month holds {at_secs}")))?;
    let (month_start, month_end, month_label) = (month.start, month.resets_at, month.label());
    let query = ReportQuery {
        tenant: args.tenant.clone(),
        from: UNIX_EPOCH + Duration::from_secs(u64::try_from(first_hour * 3600).unwrap_or(0)),
        to: UNIX_EPOCH + Duration::from_secs(u64::try_from(end_hour * 3600).unwrap_or(0)),
        bucket: Bucket::Hour,
        by: vec![Dimension::Tenant],
        attribute: None,
    };
    let mut series = UsageSeries::new(first_hour, hours);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| (EXIT_RUNTIME, e.to_string()))?;
    match &args.ledger {
        Some(name) => {
            let (database, ledger_table) = metering.ledger(name).map_err(config_error)?;
            runtime
                .block_on(report::ledger_facts(
                    database,
                    ledger_table,
                    &query,
                    |facts| series.add(facts, prices.as_ref()),
                ))
                .map_err(|e| (EXIT_RUNTIME, e))?;
        }
        None => {
            let (from, to) = (first_hour * 3600, end_hour * 3600);
            report::for_each_outbox_event(&metering.dir, |event| {
                let facts = report::Facts::of(&event);
                let t = i64::try_from(facts.epoch_secs).unwrap_or(0);
                let tenant_matches = args
                    .tenant
                    .as_deref()
                    .is_none_or(|t| facts.tenant == Some(t));
                if (from..to).contains(&t) && tenant_matches {
                    series.add(&facts, prices.as_ref());
                }
            })
            .map_err(|e| (EXIT_RUNTIME, e.to_string()))?;
        }
    }
    let registry = runtime
        .block_on(crate::snapshot::load_registry(&loaded))
        .map_err(|e| config_error(e.to_string()))?;
    let month_start_index = usize::try_from((month_start / 3600 - first_hour).max(0)).unwrap_or(0);
    let hours_left = usize::try_from(month_end / 3600 - end_hour).unwrap_or(0);
    let mut rows = Vec::new();
    for ((tenant_id, meter), values) in series.series() {
        let tenant = registry.get(tenant_id);
        // The limits this meter counts against: the monthly quota (requests), budgets.
        let mut limits: Vec<(String, f64)> = Vec::new();
        if let Some(tenant) = tenant {
            if meter == "requests" {
                let quota = tenant.limits.monthly_requests.or_else(|| {
                    loaded
                        .config
                        .tiers
                        .get(&tenant.tier)
                        .and_then(|t| t.monthly_requests)
                });
                if let Some(quota) = quota {
                    limits.push(("monthly quota".into(), quota as f64));
                }
            }
            for budget in tenant.budgets.iter().filter(|b| b.attribute.is_none()) {
                match (&budget.amount, budget.requests) {
                    (Some(amount), _) if meter == "cost" => {
                        if let Ok(amount) = amount.parse::<f64>() {
                            limits.push((format!("budget {}", budget.name), amount));
                        }
                    }
                    (None, Some(requests)) if meter == "requests" => {
                        limits.push((format!("budget {}", budget.name), requests as f64));
                    }
                    _ => {}
                }
            }
        }
        let targets: Vec<Option<(String, f64)>> = if limits.is_empty() {
            vec![None]
        } else {
            limits.into_iter().map(Some).collect()
        };
        for target in targets {
            let limit = target.as_ref().map(|(_, l)| *l);
            let unit = if meter == "cost" {
                prices
                    .as_ref()
                    .map(|p| p.currency.clone())
                    .unwrap_or_default()
            } else {
                "requests".to_string()
            };
            let mut row = serde_json::Map::new();
            row.insert("tenant".into(), json!(tenant_id));
            row.insert("meter".into(), json!(meter));
            row.insert("unit".into(), json!(unit));
            row.insert("month".into(), json!(month_label));
            row.insert(
                "limit_name".into(),
                json!(target.as_ref().map(|(n, _)| n.clone())),
            );
            row.insert("limit".into(), json!(limit));
            match forecast::project_month(values, month_start_index, hours_left, limit) {
                Ok((projection, model)) => {
                    let exhausted_at = projection.limit_reached_in_hours.and_then(|h| {
                        let hour = end_hour + i64::try_from(h).ok()?;
                        jiff::Timestamp::from_second(hour * 3600)
                            .ok()
                            .map(|t| t.to_string())
                    });
                    row.insert("used".into(), json!(round(projection.used)));
                    row.insert("projected".into(), json!(round(projection.total)));
                    row.insert(
                        "projected_lower".into(),
                        json!(round(projection.total_lower)),
                    );
                    row.insert(
                        "projected_upper".into(),
                        json!(round(projection.total_upper)),
                    );
                    row.insert("exhausted_at".into(), json!(exhausted_at));
                    row.insert("seasons".into(), json!(model.seasons));
                }
                Err(e) => {
                    let used: f64 = values.get(month_start_index..).unwrap_or(&[]).iter().sum();
                    row.insert("used".into(), json!(round(used)));
                    row.insert("error".into(), json!(e.to_string()));
                }
            }
            rows.push(Value::Object(row));
        }
    }
    Ok(rows)
}

fn round(value: f64) -> f64 {
    (value * 10_000.0).round() / 10_000.0
}

const CSV_COLUMNS: [&str; 13] = [
    "tenant",
    "meter",
    "unit",
    "month",
    "used",
    "projected",
    "projected_lower",
    "projected_upper",
    "limit_name",
    "limit",
    "exhausted_at",
    "seasons",
    "error",
];

fn to_csv(rows: &[Value]) -> Result<String, String> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer
        .write_record(CSV_COLUMNS)
        .map_err(|e| e.to_string())?;
    for row in rows {
        let record: Vec<String> = CSV_COLUMNS
            .iter()
            .map(|c| match row.get(*c) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            })
            .collect();
        writer.write_record(&record).map_err(|e| e.to_string())?;
    }
    String::from_utf8(writer.into_inner().map_err(|e| e.to_string())?).map_err(|e| e.to_string())
}
