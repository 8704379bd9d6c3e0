//! The embedded view store: one redb database file under the data directory.

use std::ops::Range;
use std::path::{Path, PathBuf};

use redb::{Database, ReadOnlyDatabase, ReadableDatabase, ReadableTable, TableDefinition};
use tally_model::{AggregateState, Millis};

use super::{ViewKey, ViewStore, ViewStoreError, key};

const STATES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("view_states");
const PROGRESS: TableDefinition<&str, &[u8]> = TableDefinition::new("writer_progress");
/// Per view (its key prefix), a counter bumped by every write to its states.
const GENERATIONS: TableDefinition<&[u8], u64> = TableDefinition::new("view_generations");

fn builder() -> redb::Builder {
    let mut builder = redb::Builder::new();
    builder.set_concurrency_mode(redb::ConcurrencyMode::SingleWriter);
    builder
}

/// Views in a redb database file. See [`ViewStore`].
///
/// One process writes ([`open`](Self::open)); others may read beside it and follow its
/// commits ([`open_read_only`](Self::open_read_only)): redb's single-writer mode.
pub struct EmbeddedViewStore {
    path: PathBuf,
    database: Handle,
}

enum Handle {
    Writer(Database),
    Reader(ReadOnlyDatabase),
}

impl EmbeddedViewStore {
    /// Opens or creates the database at `path` for writing.
    pub fn open(path: &Path) -> Result<Self, ViewStoreError> {
        let error = |source: redb::Error| ViewStoreError::Embedded {
            path: path.to_owned(),
            source: Box::new(source),
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| error(e.into()))?;
        }
        let database = builder().create(path).map_err(|e| error(e.into()))?;
        let store = EmbeddedViewStore {
            path: path.to_owned(),
            database: Handle::Writer(database),
        };
        store.write(|transaction| {
            transaction.open_table(STATES)?;
            transaction.open_table(PROGRESS)?;
            transaction.open_table(GENERATIONS)?;
            Ok(())
        })?;
        Ok(store)
    }

    /// Opens the database at `path` to read beside its writer; writes fail.
    pub fn open_read_only(path: &Path) -> Result<Self, ViewStoreError> {
        let database = builder()
            .open_read_only(path)
            .map_err(|e| ViewStoreError::Embedded {
                path: path.to_owned(),
                source: Box::new(e.into()),
            })?;
        Ok(EmbeddedViewStore {
            path: path.to_owned(),
            database: Handle::Reader(database),
        })
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction, ViewStoreError> {
        match &self.database {
            Handle::Writer(database) => database.begin_read(),
            Handle::Reader(database) => database.begin_read(),
        }
        .map_err(|e| self.error(e))
    }

    fn error(&self, source: impl Into<redb::Error>) -> ViewStoreError {
        ViewStoreError::Embedded {
            path: self.path.clone(),
            source: Box::new(source.into()),
        }
    }

    fn write<T>(
        &self,
        change: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, ViewStoreError> {
        let Handle::Writer(database) = &self.database else {
            return Err(ViewStoreError::ReadOnly(self.path.clone()));
        };
        let transaction = database.begin_write().map_err(|e| self.error(e))?;
        let result = change(&transaction).map_err(|e| self.error(e))?;
        transaction.commit().map_err(|e| self.error(e))?;
        Ok(result)
    }
}

/// Bumps the generation of each view (by key prefix) in the transaction that changes it.
fn bump_generations<'p>(
    transaction: &redb::WriteTransaction,
    prefixes: impl IntoIterator<Item = &'p [u8]>,
) -> Result<(), redb::Error> {
    let mut generations = transaction.open_table(GENERATIONS)?;
    for prefix in prefixes {
        let next = generations.get(prefix)?.map_or(0, |g| g.value()) + 1;
        generations.insert(prefix, next)?;
    }
    Ok(())
}

impl ViewStore for EmbeddedViewStore {
    fn record_progress(&self, writer: &str, progress: &[u8]) -> Result<(), ViewStoreError> {
        self.write(|transaction| {
            transaction.open_table(PROGRESS)?.insert(writer, progress)?;
            Ok(())
        })
    }

    fn progress(&self, writer: &str) -> Result<Option<Vec<u8>>, ViewStoreError> {
        let transaction = self.begin_read()?;
        let table = transaction
            .open_table(PROGRESS)
            .map_err(|e| self.error(e))?;
        let value = table.get(writer).map_err(|e| self.error(e))?;
        Ok(value.map(|stored| stored.value().to_vec()))
    }

    fn upsert(&self, rows: &[(ViewKey, AggregateState)]) -> Result<(), ViewStoreError> {
        let views: std::collections::BTreeSet<Vec<u8>> = rows
            .iter()
            .map(|(key, _)| key::view_prefix(&key.tenant, &key.view))
            .collect();
        self.write(|transaction| {
            let mut table = transaction.open_table(STATES)?;
            for (key, state) in rows {
                table.insert(key::encode(key).as_slice(), state.encode().as_slice())?;
            }
            bump_generations(transaction, views.iter().map(Vec::as_slice))
        })
    }

    fn scan(
        &self,
        tenant: &str,
        view: &str,
        buckets: Range<Millis>,
    ) -> Result<Vec<(ViewKey, AggregateState)>, ViewStoreError> {
        let prefix = key::view_prefix(tenant, view);
        let (from, to) = (
            key::bucket_start(&prefix, buckets.start),
            key::bucket_start(&prefix, buckets.end),
        );
        let transaction = self.begin_read()?;
        let table = transaction.open_table(STATES).map_err(|e| self.error(e))?;
        let mut rows = Vec::new();
        for entry in table
            .range(from.as_slice()..to.as_slice())
            .map_err(|e| self.error(e))?
        {
            let (stored_key, stored_state) = entry.map_err(|e| self.error(e))?;
            let view_key = key::decode(stored_key.value()).ok_or_else(|| {
                ViewStoreError::Corrupt(format!("undecodable key {:?}", stored_key.value()))
            })?;
            let state = AggregateState::decode(stored_state.value())
                .map_err(|e| ViewStoreError::Corrupt(format!("{view_key:?}: {e}")))?;
            rows.push((view_key, state));
        }
        Ok(rows)
    }

    fn generation(&self, tenant: &str, view: &str) -> Result<Option<u64>, ViewStoreError> {
        let transaction = self.begin_read()?;
        let generations = match transaction.open_table(GENERATIONS) {
            // A database written before generations were kept, until its writer opens it.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            opened => opened.map_err(|e| self.error(e))?,
        };
        let prefix = key::view_prefix(tenant, view);
        let generation = generations
            .get(prefix.as_slice())
            .map_err(|e| self.error(e))?;
        Ok(Some(generation.map_or(0, |g| g.value())))
    }

    fn delete_before(
        &self,
        tenant: &str,
        view: &str,
        bucket: Millis,
    ) -> Result<u64, ViewStoreError> {
        let prefix = key::view_prefix(tenant, view);
        let (from, to) = (
            key::bucket_start(&prefix, Millis::MIN),
            key::bucket_start(&prefix, bucket),
        );
        self.write(|transaction| {
            let mut deleted = 0;
            transaction
                .open_table(STATES)?
                .retain_in(from.as_slice()..to.as_slice(), |_, _| {
                    deleted += 1;
                    false
                })?;
            if deleted > 0 {
                bump_generations(transaction, [prefix.as_slice()])?;
            }
            Ok(deleted)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::conformance;
    use super::*;

    #[test]
    fn passes_the_view_store_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedViewStore::open(&dir.path().join("views.redb")).unwrap();
        conformance::run(&store);
    }

    #[test]
    fn spans_days_splits_batches_and_keeps_progress() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedViewStore::open(&dir.path().join("views.redb")).unwrap();
        conformance::spans_days_and_large_upserts(&store);
    }

    #[test]
    fn a_reader_beside_the_writer_follows_its_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("views.redb");
        let writer = EmbeddedViewStore::open(&path).unwrap();
        let reader = EmbeddedViewStore::open_read_only(&path).unwrap();
        let key = ViewKey {
            tenant: "t".into(),
            view: "v".into(),
            bucket: 0,
            dimensions: vec![],
        };
        let mut state = AggregateState::for_measures(&[]);
        let mut generations = vec![reader.generation("t", "v").unwrap()];
        for count in 1..=3 {
            state.count = count;
            writer.upsert(&[(key.clone(), state.clone())]).unwrap();
            assert_eq!(reader.scan("t", "v", 0..1).unwrap()[0].1.count, count);
            generations.push(reader.generation("t", "v").unwrap());
        }
        generations.dedup();
        assert_eq!(
            generations.len(),
            4,
            "a new generation per commit: {generations:?}"
        );
        assert!(matches!(
            reader.upsert(&[(key, state)]),
            Err(ViewStoreError::ReadOnly(_))
        ));
    }

    #[test]
    fn states_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("views.redb");
        let key = ViewKey {
            tenant: "t".into(),
            view: "v".into(),
            bucket: 60_000,
            dimensions: vec!["ios".into()],
        };
        let mut state = AggregateState::for_measures(&[]);
        state.count = 5;
        EmbeddedViewStore::open(&path)
            .unwrap()
            .upsert(&[(key.clone(), state.clone())])
            .unwrap();
        let reopened = EmbeddedViewStore::open(&path).unwrap();
        assert_eq!(reopened.scan("t", "v", 0..120_000).unwrap(), [(key, state)]);
    }
}
