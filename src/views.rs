//! `tally views get`: read the real-time view store, beside a running `tally up` or after it.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};
use tally_connectors::view_store::Access;
use tally_model::state::MeasureSummary;
use tally_model::tenant::DEMO_TENANT;
use tally_model::time::{MINUTE_MS, format_rfc3339, parse_timestamp};
use tally_model::{AggregateState, Measure, ViewSpec};

use crate::settings;
use crate::settings::ConfigArgs;

/// Reading views.
#[derive(Subcommand)]
pub enum ViewsCommand {
    /// Print a view's rows from the real-time store, one per bucket and dimension values.
    Get(GetArgs),
}

/// Options of `tally views get`.
#[derive(Args)]
pub struct GetArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The view, e.g. events_by_type, revenue_by_country, latency_by_type for the demo tenant.
    #[arg(long)]
    view: String,
    /// The tenant.
    #[arg(long, default_value = DEMO_TENANT)]
    tenant: String,
    /// Start: RFC 3339 or epoch ms [default: an hour ago].
    #[arg(long)]
    from: Option<String>,
    /// End, exclusive: RFC 3339 or epoch ms [default: a minute from now].
    #[arg(long)]
    to: Option<String>,
    /// Keep only these dimensions, merging rows over the others (comma-separated).
    #[arg(long, value_delimiter = ',')]
    group_by: Option<Vec<String>>,
    /// One JSON object per row: bucket, the dimensions, the measures.
    #[arg(long)]
    json: bool,
}

/// Runs a `tally views` command.
pub fn run(command: ViewsCommand) -> anyhow::Result<()> {
    let ViewsCommand::Get(args) = command;
    let config = settings::load(&args.config)?;
    // Reading must not seed a new data directory (with new demo keys) where none runs.
    if config.views.url.is_empty() && !config.data_dir.exists() {
        bail!(
            "no data directory at {}: pass --data-dir (or TALLY_DATA_DIR) where `tally up` or `tally speed` runs",
            config.data_dir.display()
        );
    }
    let catalog = crate::catalog::load(&config)?.0.current();
    let tenants = &catalog.tenants;
    let Some(tenant) = tenants.get(&args.tenant) else {
        bail!(
            "no tenant '{}'; the tenants are {:?}",
            args.tenant,
            tenants.keys().collect::<Vec<_>>()
        );
    };
    let Some(view) = tenant.views.iter().find(|v| v.name == args.view) else {
        let names: Vec<&str> = tenant.views.iter().map(|v| v.name.as_str()).collect();
        bail!(
            "tenant '{}' has no view '{}'; its views are {}",
            args.tenant,
            args.view,
            names.join(", ")
        );
    };
    let kept = match &args.group_by {
        None => (0..view.dimensions.len()).collect::<Vec<_>>(),
        Some(names) => names
            .iter()
            .map(|name| {
                view.dimensions
                    .iter()
                    .position(|d| d == name)
                    .with_context(|| {
                        format!(
                            "view '{}' has no dimension '{name}'; its dimensions are {}",
                            view.name,
                            view.dimensions.join(", ")
                        )
                    })
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let time = |given: &Option<String>, default| {
        given
            .as_deref()
            .map_or(Ok(default), parse_timestamp)
            .map_err(anyhow::Error::msg)
    };
    let (from, to) = (
        time(&args.from, now - 60 * MINUTE_MS)?,
        time(&args.to, now + MINUTE_MS)?,
    );
    if from > to {
        bail!("--from is after --to");
    }
    let store = settings::view_store(
        &config,
        Access::ReadOnly,
        "has `tally up` run with this configuration and --data-dir?",
    )?;
    let mut rows: BTreeMap<(i64, Vec<String>), AggregateState> = BTreeMap::new();
    for (key, state) in store.scan(&args.tenant, &view.stored_name(), from..to)? {
        // The store keeps this spec's states apart (`ViewSpec::stored_name`); a key short of
        // a dimension would be a damaged store, shown as empty rather than a panic.
        let dimensions = kept
            .iter()
            .map(|&i| key.dimensions.get(i).cloned().unwrap_or_default())
            .collect();
        match rows.entry((key.bucket, dimensions)) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(state);
            }
            std::collections::btree_map::Entry::Occupied(mut slot) => {
                slot.get_mut().merge(&state)?
            }
        }
    }
    let names: Vec<&str> = kept.iter().map(|&i| view.dimensions[i].as_str()).collect();
    for ((bucket, dimensions), state) in &rows {
        let mut row = Map::new();
        row.insert("bucket".into(), json!(format_rfc3339(*bucket)));
        for (name, value) in names.iter().zip(dimensions) {
            row.insert((*name).to_owned(), json!(value));
        }
        row.extend(measures(view, state));
        if args.json {
            println!("{}", Value::Object(row));
        } else {
            let cells: Vec<String> = row
                .iter()
                .map(|(k, v)| format!("{k}={}", v.to_string().trim_matches('"')))
                .collect();
            println!("{}", cells.join("  "));
        }
    }
    if rows.is_empty() && !args.json {
        eprintln!(
            "no rows for view '{}' between {} and {}",
            view.name,
            format_rfc3339(from),
            format_rfc3339(to)
        );
    }
    Ok(())
}

/// The view's measures of one state, by their names in the spec.
fn measures(view: &ViewSpec, state: &AggregateState) -> Map<String, Value> {
    let summary = state.summary();
    let mut values = summary.measures.into_iter();
    view.measures
        .iter()
        .map(|measure| {
            let value = match measure {
                Measure::Count => json!(summary.count),
                _ => match values.next() {
                    Some(MeasureSummary::Sum { sum, .. }) => json!(sum),
                    Some(MeasureSummary::Min(v) | MeasureSummary::Max(v)) => json!(v),
                    Some(MeasureSummary::Uniq(estimate)) => json!(estimate.round()),
                    Some(MeasureSummary::Quantiles { n, p50, p90, p99 }) => {
                        json!({"n": n, "p50": p50, "p90": p90, "p99": p99})
                    }
                    None => Value::Null,
                },
            };
            (measure.to_string(), value)
        })
        .collect()
}
