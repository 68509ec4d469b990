//! Command line: `run`, `check`, `demo`, `schema`.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 invalid configuration or usage.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::{self, LoadedConfig};
use crate::example_upstream::ExampleUpstream;
use crate::server;

pub const EXIT_RUNTIME: i32 = 1;
pub const EXIT_CONFIG: i32 = 2;

#[derive(Parser, Debug)]
#[command(name = "gateway", version, about = "Policy-as-code gateway sidecar")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration and everything it points at, without starting.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the gateway with the example configuration in front of the built-in example upstream.
    Demo {
        /// Defaults to `deploy/examples/gateway.toml` of this repository.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the JSON Schema of `gateway.toml`.
    Schema,
    /// Usage reports.
    Usage {
        #[command(subcommand)]
        command: UsageCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Which regions served each tenant's traffic in a period (from the audit log).
    ResidencyReport {
        /// Audit directory (or give --config).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long, value_enum, default_value_t = ReportFormat::Json)]
        format: ReportFormat,
    },
    /// Policy tooling.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Show how a request would be decided: principal, tenant, route, decision, policies,
    /// entities (JSON). Nothing is forwarded.
    Explain {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, default_value = "GET")]
        method: String,
        /// Path (and query) of the request.
        #[arg(long)]
        path: String,
        #[arg(long)]
        host: Option<String>,
        /// A bearer token to verify as the request would.
        #[arg(long)]
        token: Option<String>,
        /// An API key.
        #[arg(long)]
        api_key: Option<String>,
        /// Extra request headers, `name: value` (repeatable).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// Skip identification and use this principal: JSON such as
        /// `{"id": "alice", "tenant": "acme", "roles": ["viewer"], "mfa": true}` (`"platform": true`
        /// for a platform principal without a tenant).
        #[arg(long)]
        principal: Option<String>,
        /// Client country (ISO 3166-1 alpha-2) for the policy context, instead of GeoIP.
        #[arg(long)]
        country: Option<String>,
        /// The address the request comes from; with `[geoip]`, its country is looked up (after
        /// walking `X-Forwarded-For` through the trusted proxies, as the proxy does).
        #[arg(long)]
        peer: Option<std::net::IpAddr>,
    },
}

#[derive(Subcommand, Debug)]
pub enum UsageCommand {
    /// Requests, rejections, bytes and (with `[metering.pricing]`) cost per hour or day, per
    /// tenant and action or any other grouping (`--by`).
    Report {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        tenant: Option<String>,
        /// RFC 3339 time or date (UTC), inclusive.
        #[arg(long)]
        from: String,
        /// RFC 3339 time or date (UTC), exclusive.
        #[arg(long)]
        to: String,
        #[arg(long, value_enum, default_value_t = ReportBucket::Hour)]
        bucket: ReportBucket,
        /// Rows per period and per value of these, comma-separated: tenant, action, route,
        /// region, tier, principal, attribute:<name> (a chargeback attribute, e.g.
        /// `attribute:cost_center`).
        #[arg(long, default_value = "tenant,action")]
        by: String,
        /// Only requests of principals with this chargeback attribute value, NAME=VALUE (a
        /// cost centre's report, e.g. `cost_center=cc-17`).
        #[arg(long)]
        attribute: Option<String>,
        /// `xlsx`: a workbook with the rows, totals per tenant and a chart sheet; `pdf`: the
        /// totals, bar charts and the rows.
        #[arg(long, value_enum, default_value_t = UsageFormat::Csv)]
        format: UsageFormat,
        /// Read a PostgreSQL ledger exporter (all replicas) instead of this replica's outbox.
        #[arg(long)]
        ledger: Option<String>,
        /// Write the report to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Per tenant and meter (requests, cost, custom meters): use so far this month, the
    /// projected month-end total and when the monthly quota and budgets run out (MSTL forecast
    /// of the hourly series).
    Forecast {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        tenant: Option<String>,
        /// Forecast as of this RFC 3339 time or date (default: now).
        #[arg(long)]
        at: Option<String>,
        /// Weeks of hourly history to fit on (1-26).
        #[arg(long, default_value_t = 6)]
        weeks: u32,
        /// Read a PostgreSQL ledger exporter (all replicas) instead of this replica's outbox.
        #[arg(long)]
        ledger: Option<String>,
        #[arg(long, value_enum, default_value_t = ReportFormat::Json)]
        format: ReportFormat,
    },
}

/// What a usage report covers and where it reads from.
struct ReportSelection {
    tenant: Option<String>,
    from: String,
    to: String,
    bucket: ReportBucket,
    by: String,
    /// `NAME=VALUE`: one chargeback attribute value only.
    attribute: Option<String>,
    /// A PostgreSQL ledger exporter's name; the outbox when absent.
    ledger: Option<String>,
}

/// Where a usage report goes, in which format.
struct ReportOutput<'a> {
    format: UsageFormat,
    /// A file; standard output when absent.
    path: Option<&'a Path>,
}

/// `gateway usage report --format`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum UsageFormat {
    Csv,
    Json,
    Xlsx,
    Pdf,
}

/// `--bucket`: the period usage is summed over.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ReportBucket {
    Hour,
    Day,
}

impl From<ReportBucket> for crate::metering::report::Bucket {
    fn from(bucket: ReportBucket) -> Self {
        match bucket {
            ReportBucket::Hour => Self::Hour,
            ReportBucket::Day => Self::Day,
        }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ReportFormat {
    Csv,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Checks the hash chain; reports the first edited, reordered or missing record.
    Verify { dir: PathBuf },
    /// The records matching a filter: JSON lines with the chain material to verify them
    /// (`verify-excerpt`), or CSV to read. Several directories (one per replica: each keeps
    /// its own chain): each chain is verified and gets its own section; CSV merges them by time.
    Export {
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        #[command(flatten)]
        filter: AuditFilterArgs,
        #[arg(long, value_enum, default_value_t = AuditFormat::Jsonl)]
        format: AuditFormat,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Checks an exported JSON-lines excerpt on its own: each record against its hash, and
    /// the chain from the excerpt's first record to its last without a gap.
    VerifyExcerpt { file: PathBuf },
}

/// `gateway audit export` filters.
#[derive(clap::Args, Debug)]
pub struct AuditFilterArgs {
    #[arg(long)]
    tenant: Option<String>,
    #[arg(long)]
    principal: Option<String>,
    /// Cedar action, e.g. `projects:delete`.
    #[arg(long)]
    action: Option<String>,
    #[arg(long, value_enum)]
    decision: Option<AuditDecision>,
    /// A determining policy's id.
    #[arg(long)]
    policy: Option<String>,
    /// RFC 3339 time or date (UTC), inclusive.
    #[arg(long)]
    from: Option<String>,
    /// RFC 3339 time or date (UTC), exclusive.
    #[arg(long)]
    to: Option<String>,
    /// Only cross-organization records: principals acting in another organization than their
    /// own (platform operators, other tenants' credentials) and refusals of such attempts.
    #[arg(long)]
    cross_org: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AuditDecision {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AuditFormat {
    Jsonl,
    Csv,
    /// A summary: chains verified, decisions per tenant, determining policies.
    Pdf,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Run the policy test cases in DIR (default `policy-tests/`) against a policy package.
    Test {
        dir: Option<PathBuf>,
        /// The policy package (default: `policies/` next to DIR, or of `--config`).
        #[arg(long)]
        policies: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// Runs the command line; buffered log lines are written before it returns.
pub fn main() -> i32 {
    let code = run_command();
    crate::logging::flush();
    code
}

fn run_command() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_CONFIG } else { 0 };
        }
    };
    init_logging(cli.log_format);
    match cli.command {
        Command::Run { config } => match load(&config) {
            Ok(loaded) => run(loaded),
            Err(code) => code,
        },
        Command::Check { config } => match load(&config) {
            Ok(loaded) => check(&config, &loaded),
            Err(code) => code,
        },
        Command::Demo { config } => demo(config.unwrap_or_else(default_demo_config)),
        Command::Policy {
            command:
                PolicyCommand::Test {
                    dir,
                    policies,
                    config,
                },
        } => policy_test(dir, policies, config),
        Command::Usage {
            command:
                UsageCommand::Report {
                    config,
                    tenant,
                    from,
                    to,
                    bucket,
                    by,
                    attribute,
                    format,
                    ledger,
                    output,
                },
        } => usage_report(
            &config,
            ReportSelection {
                tenant,
                from,
                to,
                bucket,
                by,
                attribute,
                ledger,
            },
            ReportOutput {
                format,
                path: output.as_deref(),
            },
        ),
        Command::Usage {
            command:
                UsageCommand::Forecast {
                    config,
                    tenant,
                    at,
                    weeks,
                    ledger,
                    format,
                },
        } => crate::usage_forecast::run(crate::usage_forecast::ForecastArgs {
            config: &config,
            tenant,
            at,
            weeks,
            ledger,
            csv: matches!(format, ReportFormat::Csv),
        }),
        Command::Audit {
            command: AuditCommand::Verify { dir },
        } => audit_verify(&dir),
        Command::Audit {
            command:
                AuditCommand::Export {
                    dirs,
                    filter,
                    format,
                    output,
                },
        } => audit_export(&dirs, filter, format, output.as_deref()),
        Command::Audit {
            command: AuditCommand::VerifyExcerpt { file },
        } => audit_verify_excerpt(&file),
        Command::ResidencyReport {
            dir,
            config,
            tenant,
            from,
            to,
            format,
        } => residency_report(dir, config, tenant, &from, &to, format),
        Command::Explain {
            config,
            method,
            path,
            host,
            token,
            api_key,
            headers,
            principal,
            country,
            peer,
        } => {
            let loaded = match load(&config) {
                Ok(l) => l,
                Err(code) => return code,
            };
            let mut header_pairs = Vec::new();
            for h in &headers {
                match h.split_once(':') {
                    Some((k, v)) => header_pairs.push((k.trim().to_string(), v.trim().to_string())),
                    None => {
                        eprintln!("--header `{h}`: expected `name: value`");
                        return EXIT_CONFIG;
                    }
                }
            }
            if let Some(t) = token {
                header_pairs.push(("authorization".into(), format!("Bearer {t}")));
            }
            if let Some(k) = api_key {
                let name = loaded
                    .config
                    .identity
                    .as_ref()
                    .map(|i| i.api_key_header.clone())
                    .unwrap_or_else(|| "x-api-key".into());
                header_pairs.push((name, k));
            }
            let principal = match principal.map(|p| parse_principal(&p)).transpose() {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("--principal: {e}");
                    return EXIT_CONFIG;
                }
            };
            let request = crate::explain::ExplainRequest {
                method,
                path,
                host,
                headers: header_pairs,
                principal,
                country,
                peer,
                body: None,
            };
            match explain(&loaded, &request) {
                Ok(out) => {
                    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
                    0
                }
                Err(e) => {
                    eprintln!("{e}");
                    EXIT_CONFIG
                }
            }
        }
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&config::json_schema()).unwrap_or_default()
            );
            0
        }
    }
}

/// Everything `run` would load, without listening: registry (files; PostgreSQL is not
/// contacted), policies, tenant policies, keys.
fn check(path: &Path, loaded: &LoadedConfig) -> i32 {
    let pg = loaded
        .config
        .tenancy
        .as_ref()
        .is_some_and(|t| t.registry.postgres.is_some());
    let registry = if pg {
        Default::default()
    } else {
        match crate::snapshot::load_file_registry(loaded) {
            Ok(r) => r,
            Err(issues) => {
                eprintln!("invalid configuration:\n{issues}");
                return EXIT_CONFIG;
            }
        }
    };
    let tenants = registry.len();
    match crate::snapshot::Snapshot::build(loaded, registry) {
        Ok(snapshot) => {
            println!(
                "{}: ok ({} listener(s), {} upstream pool(s), {} tenant(s){}, {})",
                path.display(),
                loaded.listen.len() + loaded.tls_listen.len(),
                loaded.config.upstream.pool.len(),
                tenants,
                if pg {
                    " (PostgreSQL registry not contacted)"
                } else {
                    ""
                },
                match &snapshot.authz {
                    Some(a) => format!("{} policies, version {}", a.policy_count(), a.version),
                    None => "no authorization".to_string(),
                }
            );
            0
        }
        Err(issues) => {
            eprintln!("invalid configuration:\n{issues}");
            EXIT_CONFIG
        }
    }
}

fn usage_report(config: &Path, selection: ReportSelection, output: ReportOutput<'_>) -> i32 {
    use crate::metering::report;
    let ReportOutput {
        format,
        path: output,
    } = output;
    let loaded = match load(config) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let (from, to, by) = match (
        report::parse_time(&selection.from),
        report::parse_time(&selection.to),
        report::Dimension::parse_list(&selection.by),
    ) {
        (Ok(f), Ok(t), Ok(by)) => (f, t, by),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            eprintln!("{e}");
            return EXIT_CONFIG;
        }
    };
    let Some(metering) = &loaded.config.metering else {
        eprintln!("{}: no [metering] section", config.display());
        return EXIT_CONFIG;
    };
    let prices = match metering
        .pricing
        .as_ref()
        .map(crate::metering::pricing::PriceList::new)
        .transpose()
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{}: metering.pricing: {e}", config.display());
            return EXIT_CONFIG;
        }
    };
    let attribute = match selection
        .attribute
        .as_deref()
        .map(report::parse_attribute_filter)
        .transpose()
    {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_CONFIG;
        }
    };
    let query = report::ReportQuery {
        tenant: selection.tenant,
        from,
        to,
        bucket: selection.bucket.into(),
        by,
        attribute,
    };
    let source = match &selection.ledger {
        Some(name) => format!("ledger `{name}` (every replica)"),
        None => "this replica's outbox".to_string(),
    };
    let heading = report::ReportHeading::usage(&query, &source);
    // Rows beyond the bound go to a temporary file: a year of hourly rows per tenant and
    // attribute is written with memory for the bound.
    let aggregator =
        report::Aggregator::new(&query, prices.as_ref()).spill_beyond(report::ROWS_IN_MEMORY);
    let rows = match selection.ledger {
        Some(name) => {
            let (database, ledger_table) = match metering.ledger(&name) {
                Ok(ledger) => ledger,
                Err(e) => {
                    eprintln!("{e}");
                    return EXIT_CONFIG;
                }
            };
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{e}");
                    return EXIT_RUNTIME;
                }
            };
            runtime.block_on(report::ledger_rows(aggregator, database, ledger_table))
        }
        None => {
            let progress = ReportProgress::on_terminal();
            report::outbox_rows(aggregator, &metering.dir, |p| progress.show(p))
        }
    };
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("usage report failed: {e}");
            return EXIT_RUNTIME;
        }
    };
    match write_usage_report(rows, format, &heading, output) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            EXIT_RUNTIME
        }
    }
}

/// Writes the rows in `format` to `output` (standard output without one), one row at a time
/// for CSV and JSON, through a constant-memory worksheet for XLSX, and from the totals and
/// first rows for PDF. A file is written under a temporary name and renamed when complete,
/// so a failed report leaves no half-written file behind.
fn write_usage_report(
    rows: crate::metering::report::ReportRows,
    format: UsageFormat,
    heading: &crate::metering::report::ReportHeading,
    output: Option<&std::path::Path>,
) -> Result<(), String> {
    use crate::metering::report::{self, ReportFormat};
    use std::io::Write as _;
    let format = match format {
        UsageFormat::Csv => ReportFormat::Csv,
        UsageFormat::Json => ReportFormat::JsonArray,
        UsageFormat::Xlsx => ReportFormat::Xlsx,
        UsageFormat::Pdf => ReportFormat::Pdf,
    };
    let write = |out: &mut dyn std::io::Write| -> Result<(), String> {
        let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
        report::write_report(rows, format, heading, &mut out)?;
        out.flush().map_err(|e| e.to_string())
    };
    match output {
        Some(path) => {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => std::path::Path::new("."),
            };
            let mut file = tempfile::NamedTempFile::new_in(dir)
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            write(file.as_file_mut()).map_err(|e| format!("{}: {e}", path.display()))?;
            file.persist(path)
                .map(drop)
                .map_err(|e| format!("{}: {e}", path.display()))
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            write(&mut stdout).map_err(|e| format!("standard output: {e}"))
        }
    }
}

/// Progress of a long report on standard error, when that is a terminal (scripts and pipes
/// get the report alone).
struct ReportProgress {
    terminal: bool,
    started: std::time::Instant,
}

impl ReportProgress {
    fn on_terminal() -> Self {
        use std::io::IsTerminal as _;
        ReportProgress {
            terminal: std::io::stderr().is_terminal(),
            started: std::time::Instant::now(),
        }
    }

    fn show(&self, progress: crate::metering::report::Progress) {
        if self.terminal {
            eprint!(
                "\r{} usage events read in {:.1} s",
                progress.events,
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}

impl Drop for ReportProgress {
    fn drop(&mut self) {
        if self.terminal {
            eprintln!();
        }
    }
}

fn audit_export(
    dirs: &[PathBuf],
    args: AuditFilterArgs,
    format: AuditFormat,
    output: Option<&Path>,
) -> i32 {
    use crate::audit_export::{export_csv_replicas, export_jsonl_replicas, AuditFilter};
    let time = |t: &Option<String>| {
        t.as_deref()
            .map(crate::metering::report::parse_time)
            .transpose()
    };
    let (from, to) = match (time(&args.from), time(&args.to)) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{e}");
            return EXIT_CONFIG;
        }
    };
    let filter = AuditFilter {
        tenant: args.tenant,
        principal: args.principal,
        action: args.action,
        allowed: args.decision.map(|d| matches!(d, AuditDecision::Allow)),
        policy: args.policy,
        from,
        to,
        cross_org: args.cross_org,
        tenant_view: false,
    };
    let mut out: Box<dyn std::io::Write> = match output {
        Some(path) => match std::fs::File::create(path) {
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return EXIT_RUNTIME;
            }
        },
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let replicas: Vec<(String, &Path)> = dirs
        .iter()
        .map(|d| (d.display().to_string(), d.as_path()))
        .collect();
    let written = match format {
        AuditFormat::Jsonl => export_jsonl_replicas(&replicas, &filter, &mut out),
        AuditFormat::Csv => export_csv_replicas(&replicas, &filter, &mut out),
        AuditFormat::Pdf => {
            let generated = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
                .unwrap_or(0);
            crate::audit_export::summary_pdf(&replicas, &filter, generated).and_then(|bytes| {
                out.write_all(&bytes)?;
                out.flush()?;
                Ok(crate::audit_export::ExportSummary {
                    matched: 0,
                    links: 0,
                })
            })
        }
    };
    match written {
        Ok(summary) => {
            eprintln!(
                "{} record(s) exported, {} linked by hash only",
                summary.matched, summary.links
            );
            0
        }
        Err(e) => {
            eprintln!("audit export: {e}");
            EXIT_RUNTIME
        }
    }
}

fn audit_verify_excerpt(file: &Path) -> i32 {
    let reader = match std::fs::File::open(file) {
        Ok(f) => std::io::BufReader::new(f),
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return EXIT_CONFIG;
        }
    };
    match crate::audit_export::verify_excerpt(reader) {
        Ok(report) => {
            println!(
                "{}: ok ({} records and {} links in {} section(s); the first chains from record {} to {})",
                file.display(),
                report.records,
                report.links,
                report.sections,
                report
                    .first_seq
                    .map(|s| s.to_string())
                    .unwrap_or("-".into()),
                report.last_seq.map(|s| s.to_string()).unwrap_or("-".into()),
            );
            0
        }
        Err(e) => {
            println!("{}:{e}", file.display());
            EXIT_RUNTIME
        }
    }
}

fn audit_verify(dir: &Path) -> i32 {
    match crate::audit::verify(dir) {
        Ok(report) => match report.failure {
            None => {
                println!(
                    "{}: ok ({} records in {} segment(s))",
                    dir.display(),
                    report.records,
                    report.segments
                );
                0
            }
            Some(f) => {
                println!(
                    "{}:{}: record {}: {} ({} records verified before it)",
                    f.file.display(),
                    f.line,
                    f.seq.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
                    f.problem,
                    report.records
                );
                EXIT_RUNTIME
            }
        },
        Err(e) => {
            eprintln!("{}: {e}", dir.display());
            EXIT_CONFIG
        }
    }
}

fn residency_report(
    dir: Option<PathBuf>,
    config: Option<PathBuf>,
    tenant: Option<String>,
    from: &str,
    to: &str,
    format: ReportFormat,
) -> i32 {
    let dir = match (dir, config) {
        (Some(d), _) => d,
        (None, Some(c)) => match load(&c) {
            Ok(loaded) => match &loaded.config.audit {
                Some(a) => a.dir.clone(),
                None => {
                    eprintln!("{}: no [audit] section", c.display());
                    return EXIT_CONFIG;
                }
            },
            Err(code) => return code,
        },
        (None, None) => {
            eprintln!("give --dir or --config");
            return EXIT_CONFIG;
        }
    };
    let (from, to) = match (
        crate::metering::report::parse_time(from),
        crate::metering::report::parse_time(to),
    ) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{e}");
            return EXIT_CONFIG;
        }
    };
    let rows = match crate::audit::records(&dir)
        .and_then(|records| crate::residency::report(records, tenant.as_deref(), from, to))
    {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("{}: {e}", dir.display());
            return EXIT_RUNTIME;
        }
    };
    match format {
        ReportFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        ),
        ReportFormat::Csv => {
            let mut w = csv::Writer::from_writer(std::io::stdout());
            for row in &rows {
                if let Err(e) = w.serialize(row) {
                    eprintln!("{e}");
                    return EXIT_RUNTIME;
                }
            }
            let _ = w.flush();
        }
    }
    0
}

fn policy_test(dir: Option<PathBuf>, policies: Option<PathBuf>, config: Option<PathBuf>) -> i32 {
    let dir = dir.unwrap_or_else(|| PathBuf::from("policy-tests"));
    let policies = match (policies, config) {
        (Some(p), _) => p,
        (None, Some(config)) => match load(&config) {
            Ok(loaded) => match &loaded.config.authorization {
                Some(a) => loaded.resolve(&a.policies),
                None => {
                    eprintln!("{}: no [authorization] section", config.display());
                    return EXIT_CONFIG;
                }
            },
            Err(code) => return code,
        },
        (None, None) => {
            let sibling = dir.join("../policies");
            if sibling.join("schema.cedarschema").exists() {
                sibling
            } else {
                PathBuf::from("policies")
            }
        }
    };
    let engine = match crate::authz::AuthzEngine::load(&policies, &Default::default(), 0) {
        Ok(e) => e,
        Err(issues) => {
            eprintln!("invalid policy package:\n{issues}");
            return EXIT_CONFIG;
        }
    };
    match crate::authz::testing::run(&engine, &dir) {
        Ok(report) => {
            print!("{}", report.render());
            if report.failed() > 0 {
                EXIT_RUNTIME
            } else {
                0
            }
        }
        Err(issues) => {
            eprintln!("invalid test cases:\n{issues}");
            EXIT_CONFIG
        }
    }
}

fn parse_principal(json: &str) -> Result<crate::identity::Principal, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Spec {
        id: String,
        tenant: Option<String>,
        #[serde(default)]
        roles: Vec<String>,
        #[serde(default)]
        mfa: bool,
        #[serde(default)]
        scopes: Vec<String>,
        /// A platform principal (a platform-wide issuer's token without a tenant).
        #[serde(default)]
        platform: bool,
    }
    let spec: Spec = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let mut p = crate::identity::Principal::anonymous();
    p.id = spec.id;
    p.tenant = spec.tenant.map(std::sync::Arc::from);
    p.roles = spec.roles;
    p.scopes = spec.scopes;
    p.platform = spec.platform;
    p.auth = crate::identity::AuthMethod::Jwt {
        issuer: "explain".into(),
    };
    p.attributes
        .insert("mfa".into(), serde_json::Value::Bool(spec.mfa));
    Ok(p)
}

fn explain(
    loaded: &LoadedConfig,
    request: &crate::explain::ExplainRequest,
) -> Result<crate::explain::Explanation, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let registry = crate::snapshot::load_registry(loaded)
            .await
            .map_err(|e| e.to_string())?;
        let snapshot =
            crate::snapshot::Snapshot::build(loaded, registry).map_err(|e| e.to_string())?;
        let geoip = match &loaded.config.geoip {
            Some(g) => Some(
                crate::geoip::GeoIp::open(&loaded.resolve(&g.database), g.field.clone())
                    .map_err(|e| format!("geoip.database: {e}"))?,
            ),
            None => None,
        };
        let services = crate::admission::Services {
            authenticator: crate::identity::Authenticator::new(Default::default(), 16),
            geoip,
            trusted_proxies: loaded
                .config
                .geoip
                .as_ref()
                .map(|g| g.trusted_proxies.clone())
                .unwrap_or_default(),
            // The configured limits, to list them; explaining never spends from them.
            limiter: std::sync::Arc::new(crate::limits::Limiter::new(
                loaded.config.limits.as_ref(),
                &loaded.config.tiers,
            )),
            webhooks: None,
            entity_store: Default::default(),
            directory: Default::default(),
            sessions: None,
            budgets: None,
        };
        Ok(crate::explain::explain(&snapshot, &services, request).await)
    })
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(crate::logging::writer());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn load(path: &Path) -> Result<LoadedConfig, i32> {
    config::load(path).map_err(|issues| {
        eprintln!("invalid configuration:\n{issues}");
        EXIT_CONFIG
    })
}

fn run(loaded: LoadedConfig) -> i32 {
    match server::run(loaded) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("gateway failed to start: {e}");
            EXIT_RUNTIME
        }
    }
}

fn default_demo_config() -> PathBuf {
    let relative = PathBuf::from("deploy/examples/gateway.toml");
    if relative.exists() {
        return relative;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/gateway.toml")
}

fn demo(config_path: PathBuf) -> i32 {
    let loaded = match load(&config_path) {
        Ok(l) => l,
        Err(code) => return code,
    };
    // The example upstreams run on their own runtime; Pingora builds its own runtimes.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("example-upstream")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the example upstream runtime: {e}");
            return EXIT_RUNTIME;
        }
    };
    let mut upstreams: Vec<(String, ExampleUpstream)> = Vec::new();
    for (pool, peers) in loaded.config.upstream.pool.iter().zip(&loaded.pool_peers) {
        for peer in peers.iter().filter(|p| p.ip().is_loopback()) {
            let label = match &pool.region {
                Some(region) => format!("{} ({region})", pool.name),
                None => pool.name.clone(),
            };
            match runtime.block_on(ExampleUpstream::start(*peer, &label)) {
                Ok(up) => upstreams.push((label, up)),
                Err(e) => {
                    eprintln!("cannot start the example upstream on {peer}: {e}");
                    return EXIT_RUNTIME;
                }
            }
        }
    }
    let scim_users = match runtime.block_on(seed_demo_directory(&loaded)) {
        Ok(users) => users,
        Err(e) => {
            eprintln!("cannot seed the demo's principal directory: {e}");
            return EXIT_RUNTIME;
        }
    };
    print_demo_banner(&config_path, &loaded, &upstreams, &scim_users);
    let code = run(loaded);
    drop(upstreams);
    drop(runtime);
    code
}

/// The SCIM token of the example tenant `acme` (its SHA-256 is in the example tenants.toml), as
/// the demo API key is: a demo secret, printed for trying it out.
const DEMO_ACME_SCIM_TOKEN: &str = "demo-acme-scim-token-4b1d3c9e";

/// The demo identities as the tenants' identity providers would have provisioned them: users
/// of the directory (state_dir/directory.json), added once. Returns (tenant, user) of each.
async fn seed_demo_directory(
    loaded: &LoadedConfig,
) -> Result<Vec<(String, crate::identity::directory::DirectoryUser)>, String> {
    use crate::identity::directory::{Directory, DirectoryStore, DirectoryUser};
    let path = loaded
        .resolve(&loaded.config.server.state_dir)
        .join("directory.json");
    let directory = Directory::open(DirectoryStore::File(path)).map_err(|e| e.to_string())?;
    let people = [
        ("acme", "alice"),
        ("acme", "bob"),
        ("acme", "olga"),
        ("acme", "dave"),
        ("globex", "carol"),
    ];
    let mut users = Vec::new();
    for (tenant, name) in people {
        let user = match directory.users(tenant, Some(name)).into_iter().next() {
            Some(user) => user,
            None => {
                let user = DirectoryUser::new(name, jiff::Timestamp::now().to_string());
                directory
                    .save(tenant, user)
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        users.push((tenant.to_string(), user));
    }
    Ok(users)
}

fn print_demo_banner(
    config_path: &Path,
    loaded: &LoadedConfig,
    upstreams: &[(String, ExampleUpstream)],
    scim_users: &[(String, crate::identity::directory::DirectoryUser)],
) {
    let base = gateway_base_url(loaded);
    println!("Policy gateway demo  (config: {})", config_path.display());
    for addr in &loaded.listen {
        println!("  gateway     http://{addr}");
    }
    for addr in &loaded.tls_listen {
        println!("  gateway     https://{addr}");
    }
    for (label, up) in upstreams {
        println!("  upstream    http://{}  example app: {label}", up.addr);
    }
    println!();
    let tokens = demo_tokens(loaded);
    if !tokens.is_empty() {
        println!("Demo identities (HS256 tokens of the demo issuer, valid 12 h):");
        for (name, who, token) in &tokens {
            println!("  export {name}='{token}'   # {who}");
        }
        println!();
    }
    println!("Try:");
    if !tokens.is_empty() {
        println!("  # a viewer of acme reads a project: the upstream sees verified x-tenant-id / x-principal-* headers");
        println!("  curl -s {base}/projects/42 -H \"authorization: Bearer $ALICE\"");
        println!("  # ...but may not delete it (403, decided by Cedar: see the decision log line)");
        println!("  curl -si -X DELETE {base}/projects/42 -H \"authorization: Bearer $ALICE\"");
        println!("  # an admin with MFA may");
        println!("  curl -s -X DELETE {base}/projects/42 -H \"authorization: Bearer $BOB\"");
        println!("  # a token of acme aimed at tenant globex: refused before the upstream (403)");
        println!("  curl -si {base}/projects/42 -H \"authorization: Bearer $ALICE\" -H 'x-tenant: globex'");
        println!("  # an API key with scopes; the public status page for anonymous callers");
        println!("  curl -s {base}/reports -H 'x-api-key: demo-acme-reporting-key'");
        println!("  curl -s -H 'x-tenant: acme' {base}/status");
        println!("  # residency: globex (CCPA) is served from us-east, acme (GDPR) from eu-central (see the x-upstream header)");
        println!("  curl -si {base}/projects/42 -H \"authorization: Bearer $CAROL\" | grep -i x-upstream");
        println!(
            "  # billing is pinned to us-east, where GDPR data may not go: 451 with the reason"
        );
        println!("  curl -si {base}/billing -H \"authorization: Bearer $OLGA\"");
        println!("  # tiers: globex is on the free plan, which has no exports (403 feature-not-in-tier) ...");
        println!(
            "  curl -si -X POST {base}/documents/7/export -H \"authorization: Bearer $CAROL\""
        );
        println!("  # ... and a rate limit of 20 at once, 5/s per tenant: RateLimit headers, then 429 + Retry-After");
        println!("  for i in $(seq 30); do curl -s -o /dev/null -w '%{{http_code}} ' {base}/projects/42 -H \"authorization: Bearer $CAROL\"; done; echo");
        println!("  # GeoIP behind a trusted proxy: a download from an embargoed country is denied by policy");
        println!("  curl -si {base}/documents/7/download -H \"authorization: Bearer $ALICE\" -H 'x-forwarded-for: 175.45.1.1'");
        println!("  # ownership and tenancy from data (policies/entities.json): acme's documents 1-3 are alice's, 4-6 bob's, 100 is globex's");
        println!("  # alice, only a viewer, may update her own document ...");
        println!("  curl -si -X PUT {base}/documents/1 -H \"authorization: Bearer $ALICE\"");
        println!("  # ... but not bob's, whatever owner the URL names (403)");
        println!("  curl -si -X PUT {base}/documents/4 -H \"authorization: Bearer $ALICE\"");
        println!(
            "  curl -si -X PUT {base}/users/alice/documents/4 -H \"authorization: Bearer $ALICE\""
        );
        println!(
            "  # globex's document through acme: 403, \"the resource belongs to another tenant\""
        );
        println!("  curl -si {base}/documents/100 -H \"authorization: Bearer $ALICE\"");
        println!("  # a custom claim: DAVE's clearance 3 reads document 5 (classified 2) but not 6 (classified 4)");
        println!("  curl -si {base}/documents/5 -H \"authorization: Bearer $DAVE\"");
        println!("  curl -si {base}/documents/6 -H \"authorization: Bearer $DAVE\"");
        println!("  # why was that denied?");
        println!("  cargo run -q -p gateway -- explain --config {} --method DELETE --path /projects/42 --token \"$ALICE\"", config_path.display());
        println!("  # edit policies/*.cedar while this runs: the change is live within a second (or refused with file:line)");
    }
    if let Some(audit) = &loaded.config.audit {
        println!("  # every decision and routing choice is in a hash-chained audit log");
        println!(
            "  cargo run -q -p gateway -- audit verify {}",
            audit.dir.display()
        );
        println!(
            "  cargo run -q -p gateway -- residency-report --config {} --from 2026-01-01 --to 2100-01-01",
            config_path.display()
        );
    }
    if let Some(metering) = &loaded.config.metering {
        let config = config_path.display();
        let priced = if metering.pricing.is_some() {
            " and cost (deploy/examples/gateway.toml [metering.pricing])"
        } else {
            ""
        };
        println!("  # usage per tenant and action{priced}, from the durable outbox");
        println!(
            "  cargo run -q -p gateway -- usage report --config {config} --from 2026-01-01 --to 2100-01-01 --bucket day"
        );
        if metering
            .pricing
            .as_ref()
            .is_some_and(|p| p.chargeback.iter().any(|a| a == "department"))
        {
            println!("  # cost charged back to the callers' department claim");
            println!(
                "  cargo run -q -p gateway -- usage report --config {config} --from 2026-01-01 --to 2100-01-01 --bucket day --by tenant,attribute:department"
            );
        }
        println!("  # the same as a workbook (rows, totals, charts) and as a PDF with charts");
        for format in ["xlsx", "pdf"] {
            println!(
                "  cargo run -q -p gateway -- usage report --config {config} --from 2026-01-01 --to 2100-01-01 --bucket day --format {format} --output usage.{format}"
            );
        }
    }
    if let Some(admin) = &loaded.config.admin {
        println!(
            "  # admin API (token in {}): status, metrics, reload, explain",
            admin.token_file.display()
        );
        println!("  export ADMIN=$(cat {})", admin.token_file.display());
        println!(
            "  curl -s http://{}/admin/status -H \"authorization: Bearer $ADMIN\"",
            admin.listen
        );
        println!("  curl -s http://{}/metrics -H \"authorization: Bearer $ADMIN\" | grep gateway_requests_total", admin.listen);
        println!(
            "  # the console (sign in with the admin token): requests, rejections, cost, budgets, decisions"
        );
        println!("  open http://{}/console", admin.listen);
    }
    let registry = crate::snapshot::load_file_registry(loaded).ok();
    let acme_scim = registry
        .as_ref()
        .and_then(|r| r.get("acme"))
        .and_then(|t| t.scim.as_ref())
        .is_some_and(|s| {
            use sha2::Digest;
            s.token_sha256 == hex::encode(sha2::Sha256::digest(DEMO_ACME_SCIM_TOKEN.as_bytes()))
        });
    let alice = scim_users
        .iter()
        .find(|(tenant, user)| tenant == "acme" && user.user_name == "alice");
    if let (Some(admin), true, Some((_, alice)), false) =
        (&loaded.config.admin, acme_scim, alice, tokens.is_empty())
    {
        let scim = format!("http://{}/scim/v2/acme", admin.listen);
        let patch = |active: bool| {
            format!(
                "  curl -s -X PATCH {scim}/Users/{} -H \"authorization: Bearer $ACME_SCIM\" -H 'content-type: application/scim+json' -d '{{\"schemas\":[\"urn:ietf:params:scim:api:messages:2.0:PatchOp\"],\"Operations\":[{{\"op\":\"replace\",\"value\":{{\"active\":{active}}}}}]}}'",
                alice.id
            )
        };
        println!("  # SCIM 2.0: acme's identity provider provisions its users (base URL {scim})");
        println!("  export ACME_SCIM='{DEMO_ACME_SCIM_TOKEN}'");
        println!("  curl -s '{scim}/Users?filter=userName%20eq%20%22alice%22' -H \"authorization: Bearer $ACME_SCIM\"");
        println!("  # deactivate alice: her still-valid token answers 401 principal-deactivated within a second");
        println!("{}", patch(false));
        println!("  curl -si {base}/projects/42 -H \"authorization: Bearer $ALICE\"");
        println!("  # and back");
        println!("{}", patch(true));
    }
    let acme_sso = registry
        .as_ref()
        .and_then(|r| r.get("acme"))
        .is_some_and(|t| t.sso.is_some());
    if let (Some(_), true, Some(addr)) = (&loaded.config.sessions, acme_sso, loaded.listen.first())
    {
        let app = format!("http://acme.api.localhost:{}", addr.port());
        println!("  # Browser login (SSO): acme's people sign in at acme's own OpenID provider and browse with a session cookie (README \"Browser login with SSO\")");
        println!("  scripts/sso-provider   # in another terminal: a local OpenID provider on 127.0.0.1:9400");
        println!(
            "  # then open {app}/projects/42 in a browser and sign in as alice (any password);"
        );
        println!("  # {app}/.gateway/session says who you are, {app}/.gateway/logout signs out");
    }
    if let (Some(door), false) = (&loaded.config.ext_authz, tokens.is_empty()) {
        println!("  # Envoy ext_authz (gRPC, reflection on): the same decision as the proxy's, as a CheckResponse");
        println!(
            "  grpcurl -plaintext -d '{{\"attributes\":{{\"request\":{{\"http\":{{\"method\":\"GET\",\"path\":\"/projects/42\",\"headers\":{{\"authorization\":\"Bearer '\"$ALICE\"'\"}}}}}}}}}}' {} envoy.service.auth.v3.Authorization/Check",
            door.listen
        );
    }
    if let (Some(door), false) = (&loaded.config.forward_auth, tokens.is_empty()) {
        println!("  # forward-auth (nginx auth_request, Traefik, Caddy): 200 with the context headers, or the refusal");
        println!(
            "  curl -si http://{}{} -H 'x-original-method: DELETE' -H 'x-original-uri: /projects/42' -H \"authorization: Bearer $ALICE\"",
            door.listen, door.path
        );
    }
    println!(
        "  # the path is normalised before anything else sees it; ambiguous encodings are refused"
    );
    println!("  curl -si '{base}/projects/42%2f..%2fadmin'");
    println!("  # a streamed 5 MB body over HTTP/2 cleartext");
    println!("  curl -s --http2-prior-knowledge '{base}/_upstream/stream?bytes=5000000' -H 'x-tenant: acme' | wc -c");
    println!();
    println!("Stop with Ctrl-C (fast) or SIGTERM (graceful).");
}

/// Tokens of the demo identities, signed with the first HS256 issuer's secret.
fn demo_tokens(loaded: &LoadedConfig) -> Vec<(&'static str, &'static str, String)> {
    let Some(issuer) = loaded
        .config
        .identity
        .as_ref()
        .and_then(|i| i.issuer.iter().find(|i| i.secret_file.is_some()))
    else {
        return Vec::new();
    };
    let Some(secret) = issuer
        .secret_file
        .as_ref()
        .and_then(|f| std::fs::read_to_string(loaded.resolve(Path::new(f))).ok())
    else {
        return Vec::new();
    };
    let key = jsonwebtoken::EncodingKey::from_secret(secret.trim_end().as_bytes());
    let now = crate::identity::now_secs();
    let audience = issuer.audiences.first().cloned().unwrap_or_default();
    // (variable, subject, tenant, role, MFA, `clearance` claim)
    type Person<'a> = (&'a str, &'a str, &'a str, &'a str, bool, Option<i64>);
    let people: [Person; 5] = [
        ("ALICE", "alice", "acme", "viewer", false, None),
        ("BOB", "bob", "acme", "admin", true, None),
        ("OLGA", "olga", "acme", "tenant-owner", true, None),
        ("CAROL", "carol", "globex", "editor", false, None),
        ("DAVE", "dave", "acme", "viewer", false, Some(3)),
    ];
    people
        .iter()
        .filter_map(|(var, sub, org, role, mfa, clearance)| {
            let mut claims = serde_json::json!({
                "iss": issuer.issuer, "aud": audience, "sub": sub, "org": org,
                "roles": [role], "mfa": mfa, "iat": now, "exp": now + 12 * 3600,
            });
            if let (Some(level), Some(map)) = (clearance, claims.as_object_mut()) {
                map.insert("clearance".to_string(), serde_json::json!(level));
            }
            let token = jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &key,
            )
            .ok()?;
            let who: &'static str = match *var {
                "ALICE" => "alice, viewer of acme",
                "BOB" => "bob, admin of acme, with MFA",
                "OLGA" => "olga, tenant owner of acme, with MFA",
                "DAVE" => "dave, viewer of acme, with a `clearance: 3` claim",
                _ => "carol, editor of globex",
            };
            Some((*var, who, token))
        })
        .collect()
}

fn gateway_base_url(loaded: &LoadedConfig) -> String {
    let display = |addr: &SocketAddr| {
        if addr.ip().is_unspecified() {
            format!("127.0.0.1:{}", addr.port())
        } else {
            addr.to_string()
        }
    };
    match (loaded.listen.first(), loaded.tls_listen.first()) {
        (Some(a), _) => format!("http://{}", display(a)),
        (None, Some(a)) => format!("https://{}", display(a)),
        (None, None) => String::new(),
    }
}
