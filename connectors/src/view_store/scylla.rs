//! The ScyllaDB view store, for when the real-time views must outlive one machine or be read by
//! several serving replicas.
//!
//! Tables, in the keyspace named by the URI (created if missing):
//!
//! - `view_states ((tenant, view_name, day_start), bucket_start, dimension_values)`: one row
//!   per state. A partition holds one UTC day of one tenant's view, so a 24 h query reads one or
//!   two partitions and no partition grows without bound.
//! - `view_days ((tenant, view_name), day_start)`: which day partitions exist, so a scan and
//!   a delete below the horizon visit only those.
//! - `writer_progress (writer_name)`: what each speed-layer worker's states reflect.
//! - `view_generations ((tenant, view_name))`: a number drawn anew after each write to a
//!   view's states, so serving keeps what it derived from them until the next write.
//!
//! Upserts go out as unlogged batches of one partition each (at most `BATCH_BYTES`): ScyllaDB
//! applies a single-partition batch as one mutation, so a reader never sees half of one.
//! Every statement is idempotent (absolute states), so the driver may retry any of them.
//!
//! The [`ViewStore`] trait is synchronous (timely workers call it); this store runs the async
//! driver on its own small tokio runtime and waits on a channel, which works from any thread,
//! inside another runtime or not.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use tally_model::time::Granularity;
use tally_model::{AggregateState, Millis};

use super::{ViewKey, ViewStore, ViewStoreError};

/// The URI scheme: `scylla://host:port[,host:port...]/keyspace[?replication_factor=N]`.
pub const SCHEME: &str = "scylla://";

/// The largest unlogged batch sent, in state bytes (ScyllaDB warns above 128 KB by default and
/// refuses above 1 MB).
const BATCH_BYTES: usize = 96 * 1024;

/// Requests in flight at once for one call.
const CONCURRENCY: usize = 32;

/// Where and how to connect, parsed from a `scylla://` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScyllaUri {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// The keyspace holding Tally's tables.
    pub keyspace: String,
    /// Replication factor used if the keyspace has to be created.
    pub replication_factor: u32,
}

impl ScyllaUri {
    /// Parses `scylla://host:port[,host:port...]/keyspace[?replication_factor=N]`; the keyspace
    /// defaults to `tally`, the replication factor to 1.
    pub fn parse(uri: &str) -> Result<Self, ViewStoreError> {
        let bad = |why: String| ViewStoreError::BadUri {
            uri: uri.to_owned(),
            why,
        };
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad(format!("it must start with {SCHEME}")))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (hosts, keyspace) = rest.split_once('/').unwrap_or((rest, ""));
        let nodes: Vec<String> = hosts
            .split(',')
            .filter(|host| !host.is_empty())
            .map(|host| {
                if host.contains(':') {
                    host.to_owned()
                } else {
                    format!("{host}:9042")
                }
            })
            .collect();
        if nodes.is_empty() {
            return Err(bad(
                "it names no node, e.g. scylla://127.0.0.1:9042/tally".into()
            ));
        }
        let keyspace = match keyspace.trim_end_matches('/') {
            "" => "tally".to_owned(),
            name if name.len() <= 48
                && name.starts_with(|c: char| c.is_ascii_alphabetic())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                name.to_owned()
            }
            name => {
                return Err(bad(format!(
                    "keyspace {name:?} must be a letter then up to 47 letters, digits or _"
                )));
            }
        };
        let mut replication_factor = 1;
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            match pair.split_once('=') {
                Some(("replication_factor", value)) => {
                    replication_factor = value
                        .parse()
                        .ok()
                        .filter(|&factor| factor > 0)
                        .ok_or_else(|| {
                            bad(format!(
                                "replication_factor {value:?} is not a positive integer"
                            ))
                        })?;
                }
                _ => {
                    return Err(bad(format!(
                        "unknown setting {pair:?}; the only one is replication_factor=N"
                    )));
                }
            }
        }
        Ok(ScyllaUri {
            nodes,
            keyspace,
            replication_factor,
        })
    }
}

/// The URI again, in the form [`ScyllaUri::parse`] reads.
impl std::fmt::Display for ScyllaUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (nodes, keyspace) = (self.nodes.join(","), &self.keyspace);
        let factor = self.replication_factor;
        write!(f, "{SCHEME}{nodes}/{keyspace}?replication_factor={factor}")
    }
}

/// Views in ScyllaDB (or Cassandra). See the module doc and [`ViewStore`].
pub struct ScyllaViewStore {
    /// Runs the driver; `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    client: Arc<Client>,
}

struct Client {
    session: Session,
    keyspace: String,
    upsert: PreparedStatement,
    add_day: PreparedStatement,
    days_between: PreparedStatement,
    scan_day: PreparedStatement,
    buckets_before: PreparedStatement,
    delete_day: PreparedStatement,
    forget_day: PreparedStatement,
    delete_before_in_day: PreparedStatement,
    record_progress: PreparedStatement,
    progress: PreparedStatement,
    set_generation: PreparedStatement,
    generation: PreparedStatement,
}

/// Turns a driver error into a [`ViewStoreError`] that says what the store was doing.
fn failed<E: std::error::Error + Send + Sync + 'static>(
    operation: &str,
) -> impl FnOnce(E) -> ViewStoreError + '_ {
    move |source| ViewStoreError::Scylla {
        operation: operation.to_owned(),
        source: Box::new(source),
    }
}

impl ScyllaViewStore {
    /// Connects to the cluster in `uri` (see [`ScyllaUri`]), creates the keyspace and tables
    /// if missing, and prepares the statements.
    pub fn connect(uri: &str) -> Result<Self, ViewStoreError> {
        let target = ScyllaUri::parse(uri)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tally-scylla")
            .enable_all()
            .build()
            .map_err(failed("starting the ScyllaDB client's runtime"))?;
        // Not `block_on`, nor dropping the runtime: both panic when the caller is itself
        // inside a runtime.
        let client = match wait_for(&runtime, Client::connect(target)) {
            Ok(client) => client,
            Err(error) => {
                runtime.shutdown_background();
                return Err(error);
            }
        };
        Ok(ScyllaViewStore {
            runtime: Some(runtime),
            client: Arc::new(client),
        })
    }

    /// Drops the keyspace and everything in it: for tests that made their own.
    pub fn drop_keyspace(&self) -> Result<(), ViewStoreError> {
        self.run(|client| async move {
            let statement = format!("DROP KEYSPACE IF EXISTS {}", client.keyspace);
            client
                .session
                .query_unpaged(statement, ())
                .await
                .map(drop)
                .map_err(failed("dropping the keyspace"))
        })
    }

    /// Runs `work` on the driver's runtime and waits for it.
    fn run<T, F>(&self, work: impl FnOnce(Arc<Client>) -> F) -> Result<T, ViewStoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, ViewStoreError>> + Send + 'static,
    {
        let runtime = self.runtime.as_ref().expect("the runtime lives until drop");
        wait_for(runtime, work(self.client.clone()))
    }
}

/// Runs `work` on `runtime` and blocks the calling thread until it is done, from any thread,
/// inside another runtime or not.
fn wait_for<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    work: impl Future<Output = Result<T, ViewStoreError>> + Send + 'static,
) -> Result<T, ViewStoreError> {
    let (reply, answer) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = reply.send(work.await);
    });
    answer.recv().map_err(|_| ViewStoreError::Scylla {
        operation: "waiting for the ScyllaDB client".into(),
        source: "its runtime stopped".into(),
    })?
}

impl Drop for ScyllaViewStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime; this does not.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Client {
    async fn connect(target: ScyllaUri) -> Result<Self, ViewStoreError> {
        let nodes = target.nodes.join(",");
        let session = SessionBuilder::new()
            .known_nodes(&target.nodes)
            .connection_timeout(Duration::from_secs(5))
            .build()
            .await
            .map_err(failed(&format!(
                "connecting to ScyllaDB at {nodes} (is it up?)"
            )))?;
        let keyspace = target.keyspace;
        let schema = [
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = \
                 {{'class': 'NetworkTopologyStrategy', 'replication_factor': {}}}",
                target.replication_factor
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {keyspace}.view_states (tenant text, view_name text, \
                 day_start bigint, bucket_start bigint, dimension_values frozen<list<text>>, \
                 state_bytes blob, \
                 PRIMARY KEY ((tenant, view_name, day_start), bucket_start, dimension_values))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {keyspace}.view_days (tenant text, view_name text, \
                 day_start bigint, PRIMARY KEY ((tenant, view_name), day_start))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {keyspace}.writer_progress \
                 (writer_name text PRIMARY KEY, progress_bytes blob)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {keyspace}.view_generations (tenant text, \
                 view_name text, generation bigint, PRIMARY KEY ((tenant, view_name)))"
            ),
        ];
        for statement in schema {
            session
                .query_unpaged(statement.clone(), ())
                .await
                .map_err(failed(&format!("creating the schema: {statement}")))?;
        }
        session
            .await_schema_agreement()
            .await
            .map_err(failed("waiting for schema agreement"))?;
        let prepare = async |text: String| {
            let mut statement = session
                .prepare(text.clone())
                .await
                .map_err(failed(&format!("preparing {text}")))?;
            statement.set_is_idempotent(true);
            Ok::<_, ViewStoreError>(statement)
        };
        let states = format!("{keyspace}.view_states");
        let days = format!("{keyspace}.view_days");
        let partition = "tenant = ? AND view_name = ? AND day_start = ?";
        Ok(Client {
            upsert: prepare(format!(
                "INSERT INTO {states} (tenant, view_name, day_start, bucket_start, \
                 dimension_values, state_bytes) VALUES (?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            add_day: prepare(format!(
                "INSERT INTO {days} (tenant, view_name, day_start) VALUES (?, ?, ?)"
            ))
            .await?,
            days_between: prepare(format!(
                "SELECT day_start FROM {days} WHERE tenant = ? AND view_name = ? \
                 AND day_start >= ? AND day_start < ?"
            ))
            .await?,
            scan_day: prepare(format!(
                "SELECT bucket_start, dimension_values, state_bytes FROM {states} \
                 WHERE {partition} AND bucket_start >= ? AND bucket_start < ?"
            ))
            .await?,
            buckets_before: prepare(format!(
                "SELECT bucket_start FROM {states} WHERE {partition} AND bucket_start < ?"
            ))
            .await?,
            delete_day: prepare(format!("DELETE FROM {states} WHERE {partition}")).await?,
            forget_day: prepare(format!("DELETE FROM {days} WHERE {partition}")).await?,
            delete_before_in_day: prepare(format!(
                "DELETE FROM {states} WHERE {partition} AND bucket_start < ?"
            ))
            .await?,
            record_progress: prepare(format!(
                "INSERT INTO {keyspace}.writer_progress (writer_name, progress_bytes) \
                 VALUES (?, ?)"
            ))
            .await?,
            progress: prepare(format!(
                "SELECT progress_bytes FROM {keyspace}.writer_progress WHERE writer_name = ?"
            ))
            .await?,
            set_generation: prepare(format!(
                "INSERT INTO {keyspace}.view_generations (tenant, view_name, generation) \
                 VALUES (?, ?, ?)"
            ))
            .await?,
            generation: prepare(format!(
                "SELECT generation FROM {keyspace}.view_generations \
                 WHERE tenant = ? AND view_name = ?"
            ))
            .await?,
            session,
            keyspace,
        })
    }

    /// Every row a prepared `SELECT` returns, page by page.
    async fn select<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        operation: &str,
    ) -> Result<Vec<R>, ViewStoreError>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata> + Send + 'static,
    {
        self.session
            .execute_iter(statement.clone(), values)
            .await
            .map_err(failed(operation))?
            .rows_stream::<R>()
            .map_err(failed(operation))?
            .try_collect()
            .await
            .map_err(failed(operation))
    }

    /// The day partitions of a view that may hold buckets in `buckets`, in order.
    async fn days(
        &self,
        tenant: &str,
        view: &str,
        buckets: Range<Millis>,
    ) -> Result<Vec<Millis>, ViewStoreError> {
        let values = (
            tenant,
            view,
            Granularity::Day.bucket_start(buckets.start),
            buckets.end,
        );
        let what = format!("listing the days of {tenant}/{view}");
        let days: Vec<(Millis,)> = self.select(&self.days_between, values, &what).await?;
        Ok(days.into_iter().map(|(day,)| day).collect())
    }

    async fn scan_day(
        &self,
        tenant: &str,
        view: &str,
        day: Millis,
        buckets: Range<Millis>,
    ) -> Result<Vec<(ViewKey, AggregateState)>, ViewStoreError> {
        let values = (tenant, view, day, buckets.start, buckets.end);
        let what = format!("reading {tenant}/{view} on day {day}");
        let stored: Vec<(Millis, Vec<String>, Vec<u8>)> =
            self.select(&self.scan_day, values, &what).await?;
        stored
            .into_iter()
            .map(|(bucket, dimensions, bytes)| {
                let key = ViewKey {
                    tenant: tenant.to_owned(),
                    view: view.to_owned(),
                    bucket,
                    dimensions,
                };
                let state = AggregateState::decode(&bytes)
                    .map_err(|e| ViewStoreError::Corrupt(format!("{key:?}: {e}")))?;
                Ok((key, state))
            })
            .collect()
    }

    /// How many states of one day partition lie before `bucket`.
    async fn count_before(
        &self,
        tenant: &str,
        view: &str,
        day: Millis,
        bucket: Millis,
    ) -> Result<u64, ViewStoreError> {
        let values = (tenant, view, day, bucket);
        let what = format!("counting {tenant}/{view} on day {day}");
        let buckets: Vec<(Millis,)> = self.select(&self.buckets_before, values, &what).await?;
        Ok(buckets.len() as u64)
    }

    async fn execute(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        operation: String,
    ) -> Result<(), ViewStoreError> {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map(drop)
            .map_err(failed(&operation))
    }

    /// Draws a new generation for each of `views` (tenant, view), after their states changed.
    /// Drawn, not counted: a counter update is not idempotent, and writers in several
    /// processes would need a read-modify-write to count.
    async fn renew_generations(
        &self,
        views: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ViewStoreError> {
        let renewals = views.into_iter().map(|(tenant, view)| async move {
            let what = format!("renewing the generation of {tenant}/{view}");
            let values = (&tenant, &view, fresh_generation());
            self.execute(&self.set_generation, values, what).await
        });
        in_flight(renewals).await
    }

    /// Writes rows of one partition as one unlogged batch.
    async fn write_batch(
        &self,
        (tenant, view, day): Partition,
        rows: PartitionRows,
    ) -> Result<(), ViewStoreError> {
        let mut batch = Batch::new(BatchType::Unlogged);
        batch.set_is_idempotent(true);
        let values: Vec<_> = rows
            .iter()
            .map(|(bucket, dimensions, state)| {
                batch.append_statement(self.upsert.clone());
                (&tenant, &view, day, bucket, dimensions, state)
            })
            .collect();
        self.session
            .batch(&batch, values)
            .await
            .map(drop)
            .map_err(failed(&format!(
                "writing {} states of {tenant}/{view} on day {day}",
                rows.len()
            )))
    }
}

/// A generation unlike any drawn before, as CQL's `bigint`.
fn fresh_generation() -> i64 {
    i64::from_ne_bytes(tally_model::token::fresh_token().to_ne_bytes())
}

/// A day partition: tenant, view, day start.
type Partition = (String, String, Millis);

/// One partition's share of an upsert: bucket, dimension values, encoded state.
type PartitionRows = Vec<(Millis, Vec<String>, Vec<u8>)>;

/// Splits one partition's rows into batches of at most [`BATCH_BYTES`] of states (a single
/// larger state goes alone).
fn split_by_bytes(rows: PartitionRows) -> impl Iterator<Item = PartitionRows> {
    let mut batches = vec![PartitionRows::new()];
    let mut bytes = 0;
    for row in rows {
        let size = row.2.len();
        if bytes + size > BATCH_BYTES && !batches.last().is_some_and(Vec::is_empty) {
            batches.push(PartitionRows::new());
            bytes = 0;
        }
        bytes += size;
        batches.last_mut().expect("never empty").push(row);
    }
    batches.into_iter().filter(|batch| !batch.is_empty())
}

/// Runs `requests` with up to [`CONCURRENCY`] in flight; the first error ends the call.
async fn in_flight(
    requests: impl Iterator<Item = impl Future<Output = Result<(), ViewStoreError>>>,
) -> Result<(), ViewStoreError> {
    futures::stream::iter(requests)
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await
}

impl ViewStore for ScyllaViewStore {
    fn upsert(&self, rows: &[(ViewKey, AggregateState)]) -> Result<(), ViewStoreError> {
        let mut partitions: BTreeMap<Partition, PartitionRows> = BTreeMap::new();
        for (key, state) in rows {
            let partition = (
                key.tenant.clone(),
                key.view.clone(),
                Granularity::Day.bucket_start(key.bucket),
            );
            partitions.entry(partition).or_default().push((
                key.bucket,
                key.dimensions.clone(),
                state.encode(),
            ));
        }
        self.run(|client| async move {
            let views: std::collections::BTreeSet<(String, String)> = partitions
                .keys()
                .map(|(tenant, view, _)| (tenant.clone(), view.clone()))
                .collect();
            // The day index first, so a reader that finds a row also finds its day.
            let days: Vec<Partition> = partitions.keys().cloned().collect();
            let index = days.into_iter().map(|partition| {
                let client = client.clone();
                async move {
                    let what = format!(
                        "indexing day {} of {}/{}",
                        partition.2, partition.0, partition.1
                    );
                    client.execute(&client.add_day, partition, what).await
                }
            });
            in_flight(index).await?;
            let batches = partitions.into_iter().flat_map(|(partition, rows)| {
                split_by_bytes(rows).map(move |rows| (partition.clone(), rows))
            });
            let writes = batches.map(|(partition, rows)| {
                let client = client.clone();
                async move { client.write_batch(partition, rows).await }
            });
            in_flight(writes).await?;
            // Last: a reader that kept what it derived under the old generation reads anew.
            client.renew_generations(views).await
        })
    }

    fn scan(
        &self,
        tenant: &str,
        view: &str,
        buckets: Range<Millis>,
    ) -> Result<Vec<(ViewKey, AggregateState)>, ViewStoreError> {
        if buckets.is_empty() {
            return Ok(Vec::new());
        }
        let (tenant, view) = (tenant.to_owned(), view.to_owned());
        self.run(|client| async move {
            let days = client.days(&tenant, &view, buckets.clone()).await?;
            let per_day: Vec<Vec<_>> = futures::stream::iter(days)
                .map(|day| client.scan_day(&tenant, &view, day, buckets.clone()))
                .buffered(CONCURRENCY)
                .try_collect()
                .await?;
            let mut rows: Vec<_> = per_day.into_iter().flatten().collect();
            // Clustering order already sorts each day; this pins the trait's order (bucket,
            // then dimension values) whatever the server's list comparison.
            rows.sort_by(|(a, _), (b, _)| {
                (a.bucket, &a.dimensions).cmp(&(b.bucket, &b.dimensions))
            });
            Ok(rows)
        })
    }

    fn delete_before(
        &self,
        tenant: &str,
        view: &str,
        bucket: Millis,
    ) -> Result<u64, ViewStoreError> {
        let (tenant, view) = (tenant.to_owned(), view.to_owned());
        self.run(|client| async move {
            let last_day = Granularity::Day.bucket_start(bucket);
            let mut deleted = 0;
            for day in client.days(&tenant, &view, Millis::MIN..bucket).await? {
                deleted += client.count_before(&tenant, &view, day, bucket).await?;
                let partition = (&tenant, &view, day);
                if day < last_day {
                    let what = format!("deleting day {day} of {tenant}/{view}");
                    client
                        .execute(&client.delete_day, partition, what.clone())
                        .await?;
                    client.execute(&client.forget_day, partition, what).await?;
                } else {
                    let what = format!("deleting {tenant}/{view} before {bucket}");
                    let values = (&tenant, &view, day, bucket);
                    client
                        .execute(&client.delete_before_in_day, values, what)
                        .await?;
                }
            }
            if deleted > 0 {
                client.renew_generations([(tenant, view)]).await?;
            }
            Ok(deleted)
        })
    }

    fn generation(&self, tenant: &str, view: &str) -> Result<Option<u64>, ViewStoreError> {
        let (tenant, view) = (tenant.to_owned(), view.to_owned());
        self.run(|client| async move {
            let what = format!("reading the generation of {tenant}/{view}");
            let values = (&tenant, &view);
            let found: Vec<(i64,)> = client.select(&client.generation, values, &what).await?;
            // A view never written has generation 0, as in the embedded store.
            let drawn = found.first().map_or(0, |(generation,)| *generation);
            Ok(Some(u64::from_ne_bytes(drawn.to_ne_bytes())))
        })
    }

    fn record_progress(&self, writer: &str, progress: &[u8]) -> Result<(), ViewStoreError> {
        let (writer, progress) = (writer.to_owned(), progress.to_vec());
        self.run(|client| async move {
            let what = format!("recording the progress of {writer}");
            client
                .execute(&client.record_progress, (&writer, &progress), what)
                .await
        })
    }

    fn progress(&self, writer: &str) -> Result<Option<Vec<u8>>, ViewStoreError> {
        let writer = writer.to_owned();
        self.run(|client| async move {
            let what = format!("reading the progress of {writer}");
            let found: Vec<(Vec<u8>,)> = client.select(&client.progress, (&writer,), &what).await?;
            Ok(found.into_iter().next().map(|(bytes,)| bytes))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::conformance;
    use super::*;
    use crate::testing::scylla_uri;

    #[test]
    fn uris_parse_with_defaults_and_say_what_is_wrong() {
        assert_eq!(
            ScyllaUri::parse("scylla://10.0.0.1,10.0.0.2:19042").unwrap(),
            ScyllaUri {
                nodes: vec!["10.0.0.1:9042".into(), "10.0.0.2:19042".into()],
                keyspace: "tally".into(),
                replication_factor: 1,
            }
        );
        assert_eq!(
            ScyllaUri::parse("scylla://db:9042/views_prod?replication_factor=3").unwrap(),
            ScyllaUri {
                nodes: vec!["db:9042".into()],
                keyspace: "views_prod".into(),
                replication_factor: 3,
            }
        );
        let uri = "scylla://db:9042,db2:9043/views_prod?replication_factor=3";
        assert_eq!(
            ScyllaUri::parse(uri).unwrap().to_string(),
            uri,
            "prints as it parses"
        );
        for (uri, says) in [
            ("cassandra://db", "must start with scylla://"),
            ("scylla:///tally", "names no node"),
            ("scylla://db/views-prod", "keyspace \"views-prod\""),
            (
                "scylla://db/tally?replication_factor=0",
                "not a positive integer",
            ),
            (
                "scylla://db/tally?consistency=one",
                "unknown setting \"consistency=one\"",
            ),
        ] {
            let error = ScyllaUri::parse(uri).unwrap_err().to_string();
            assert!(error.contains(says), "{uri}: {error}");
        }
    }

    #[test]
    fn an_unreachable_cluster_is_named_in_the_error_even_from_inside_a_runtime() {
        let address = crate::testing::free_local_address();
        let caller = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let error = caller
            .block_on(async { ScyllaViewStore::connect(&format!("scylla://{address}/tally")) })
            .err()
            .expect("nothing listens there")
            .to_string();
        assert!(
            error.contains(&format!("connecting to ScyllaDB at {address} (is it up?)")),
            "{error}"
        );
    }

    /// Runs `check` on a fresh keyspace of the test bed's Cassandra (or the cluster
    /// `TALLY_SCYLLA_URI` names), then drops it.
    fn on_scratch_keyspace(test: &str, check: impl FnOnce(&dyn ViewStore)) {
        let Some(uri) = scylla_uri(test) else {
            return;
        };
        let store = ScyllaViewStore::connect(&uri).expect("connecting to the test cluster");
        check(&store);
        store.drop_keyspace().unwrap();
    }

    #[test]
    fn passes_the_view_store_conformance_suite() {
        let test = "connectors::view_store::scylla::conformance";
        on_scratch_keyspace(test, conformance::run);
    }

    #[test]
    fn spans_days_splits_batches_and_keeps_progress() {
        let test = "connectors::view_store::scylla::spans_days";
        on_scratch_keyspace(test, conformance::spans_days_and_large_upserts);
    }
}
