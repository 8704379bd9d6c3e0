//! Full-text search over recent raw events (`q=` on `GET /v1/events/search`), for validating
//! instrumentation: a tantivy index of the last `serving.search_days` of events, on local disk
//! beside each serving process, fed from the event log by [`indexer`].
//!
//! Every event is one document (`document`):
//! - `fields`: one untokenized term per field, `name=value`, for `event_type`, `user_id`,
//!   `source` and every tag, so `os_type:ios` is an exact term and `url:/checkout*` a range of
//!   terms ([`query`]);
//! - `text`: the same words tokenized and lower-cased, for free text (`checkout`);
//! - `tenant`, `ts` (sorted on, newest first) and `key` (tenant, event id and event hour: an
//!   event indexed twice, resent or read from both the archive and the log, replaces itself,
//!   through a delete of its key issued only where `seen`'s filters may hold it);
//! - `event`: the event as JSON, what a hit returns.
//!
//! Events leave with the window, or sooner with their event type's raw retention.
//!
//! The log positions indexed so far are the payload of each commit, so a restart resumes
//! where the last commit ended; an index that is missing, unreadable or behind the log is
//! rebuilt from the archive and the log ([`indexer`]).

mod document;
pub mod indexer;
pub mod query;
mod seen;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;

use serde::{Deserialize, Serialize};
use tally_model::time::{DAY_MS, HOUR_MS};
use tally_model::{Catalog, Event, Millis};
use tantivy::collector::{Count, TopDocs};
use tantivy::query::{BooleanQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, Value};
use tantivy::snippet::SnippetGenerator;
use tantivy::{Index, IndexReader, IndexWriter, Order, TantivyDocument, Term};
use thiserror::Error;

use document::{Fields, event_key, event_terms, field_term};
pub use query::{Highlight, SearchQueryError};
use seen::SeenKeys;

/// The memory tantivy's writer may buffer before it flushes a segment.
const WRITER_MEMORY_BYTES: usize = 64 << 20;
/// The furthest a search may page: hits beyond it need a narrower query (Elasticsearch's
/// `max_result_window` is the same).
pub const MAX_RESULT_WINDOW: usize = 10_000;

/// Why the index failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SearchError {
    /// tantivy failed.
    #[error("search index: {0}")]
    Index(#[from] tantivy::TantivyError),
    /// The folder could not be made.
    #[error("search index folder {path}: {source}")]
    Folder {
        /// The folder.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A query the index cannot answer: the caller's to fix.
    #[error(transparent)]
    Query(#[from] SearchQueryError),
}

/// How far the index has read each partition of the event log: the next offset to read.
pub type Positions = BTreeMap<u32, u64>;

/// What each commit records beside the documents.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CommitPayload {
    positions: Positions,
}

/// One search: a tenant's events in a time range that a query admits.
#[derive(Debug, Clone)]
pub struct SearchRequest<'a> {
    /// The key's tenant: no other tenant's event is ever a hit.
    pub tenant: &'a str,
    /// Lucene-style query text ([`query`]).
    pub q: &'a str,
    /// Only this event type.
    pub event_type: Option<&'a str>,
    /// Only this user.
    pub user_id: Option<&'a str>,
    /// Event times in this range.
    pub range: std::ops::Range<Millis>,
    /// Hits to skip, newest first.
    pub offset: usize,
    /// Hits to return.
    pub limit: usize,
}

/// A hit: the event, and why it matched.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    /// The event as ingest kept it.
    #[serde(flatten)]
    pub event: Event,
    /// The parts of its fields the query matched.
    pub highlights: Vec<Highlight>,
}

/// How often one source published a field.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Publisher {
    /// The source (API key name).
    pub source: String,
    /// Its events in the range that carry the field.
    pub events: usize,
    /// The event time of the newest of them (ms, UTC).
    pub last_seen: Option<Millis>,
}

/// A page of hits, newest first.
#[derive(Debug, Clone)]
pub struct SearchPage {
    /// The hits.
    pub hits: Vec<Hit>,
    /// Every hit of the query, on this page or not.
    pub total: usize,
}

/// tantivy's writer, and the keys of the documents it may hold: only those are deleted
/// before an add.
struct Writer {
    documents: IndexWriter,
    seen: SeenKeys,
}

/// The index, shared by the indexer and the search route.
pub struct SearchIndex {
    reader: IndexReader,
    writer: Mutex<Writer>,
    fields: Fields,
    window_ms: Millis,
    indexed: Counter,
}

impl SearchIndex {
    /// Opens the index in `dir`, or makes a new one; also the log positions of its last
    /// commit, none for an index that must be rebuilt. An index that cannot be opened (of
    /// another schema, or damaged) is deleted and made anew, to be rebuilt.
    pub fn open(
        dir: &Path,
        window_ms: Millis,
    ) -> Result<(SearchIndex, Option<Positions>), SearchError> {
        let folder_error = |source| SearchError::Folder {
            path: dir.display().to_string(),
            source,
        };
        let (schema, fields) = Fields::schema();
        let opened = match Index::open_in_dir(dir) {
            Ok(index) if index.schema() == schema => Some(index),
            Ok(_) | Err(_) if dir.join("meta.json").exists() => {
                tracing::warn!(dir = %dir.display(), "the search index is of another schema or damaged; rebuilding it");
                std::fs::remove_dir_all(dir).map_err(folder_error)?;
                None
            }
            _ => None,
        };
        let index = match opened {
            Some(index) => index,
            None => {
                std::fs::create_dir_all(dir).map_err(folder_error)?;
                Index::create_in_dir(dir, schema)?
            }
        };
        let payload = index.load_metas()?.payload;
        let positions = payload
            .and_then(|text| serde_json::from_str::<CommitPayload>(&text).ok())
            .map(|payload| payload.positions);
        let reader = index.reader()?;
        let writer = index.writer(WRITER_MEMORY_BYTES)?;
        let seen = SeenKeys::load(&reader, fields.key)?;
        let search = SearchIndex {
            reader,
            writer: Mutex::new(Writer {
                documents: writer,
                seen,
            }),
            fields,
            window_ms,
            indexed: Counter::default(),
        };
        Ok((search, positions))
    }

    /// Days of events kept, in ms.
    pub fn window_ms(&self) -> Millis {
        self.window_ms
    }

    /// Events indexed by this process since it started, as a counter to export.
    pub fn indexed(&self) -> Counter {
        self.indexed.clone()
    }

    /// Indexes `events` received by `now`, replacing any earlier copy of each; events older
    /// than the window are left out.
    pub fn add<'a>(
        &self,
        events: impl IntoIterator<Item = &'a Event>,
        now: Millis,
    ) -> Result<(), SearchError> {
        let oldest = now.saturating_sub(self.window_ms);
        let mut writer = self.writer.lock().expect("writer lock");
        let Writer { documents, seen } = &mut *writer;
        let mut added = 0;
        for event in events.into_iter().filter(|event| event.ts >= oldest) {
            let key = event_key(event);
            if seen.insert(event.ts.div_euclid(HOUR_MS), &key) {
                documents.delete_term(Term::from_field_text(self.fields.key, &key));
            }
            documents.add_document(self.fields.document(event, &key))?;
            added += 1;
        }
        self.indexed.inc_by(added);
        Ok(())
    }

    /// Makes what was added searchable and durable, with the log positions it reached.
    pub fn commit(&self, positions: &Positions) -> Result<(), SearchError> {
        let payload = serde_json::to_string(&CommitPayload {
            positions: positions.clone(),
        })
        .expect("positions serialize");
        let mut writer = self.writer.lock().expect("writer lock");
        let mut commit = writer.documents.prepare_commit()?;
        commit.set_payload(&payload);
        commit.commit()?;
        drop(writer);
        self.reader.reload()?;
        Ok(())
    }

    /// Deletes every document, for a rebuild.
    pub fn clear(&self) -> Result<(), SearchError> {
        let mut writer = self.writer.lock().expect("writer lock");
        writer.documents.delete_all_documents()?;
        writer.seen.clear();
        Ok(())
    }

    /// Deletes (at the next commit) the events older than the window at `now`, and those
    /// whose event type keeps its raw events for less (`retention_days` in the `catalog`):
    /// the index never holds an event the archive has let go.
    pub fn expire(&self, now: Millis, catalog: &Catalog) -> Result<(), SearchError> {
        let mut writer = self.writer.lock().expect("writer lock");
        let oldest = now.saturating_sub(self.window_ms);
        writer.seen.forget_before(oldest.div_euclid(HOUR_MS));
        let before = |oldest: Millis| self.time_range(&(Millis::MIN..oldest));
        writer.documents.delete_query(before(oldest))?;
        for (name, tenant) in &catalog.tenants {
            for (event_type, spec) in &tenant.registry.event_types {
                let kept = i64::from(spec.retention_days).saturating_mul(DAY_MS);
                if kept >= self.window_ms {
                    continue;
                }
                writer
                    .documents
                    .delete_query(Box::new(BooleanQuery::new(vec![
                        (Occur::Must, term(self.fields.tenant, name)),
                        (Occur::Must, self.field_is("event_type", event_type)),
                        (Occur::Must, before(now.saturating_sub(kept))),
                    ])))?;
            }
        }
        Ok(())
    }

    /// The page of hits `request` asks for, newest first, with their highlights.
    pub fn search(
        &self,
        request: &SearchRequest<'_>,
        canonical: &dyn Fn(&str) -> String,
    ) -> Result<SearchPage, SearchError> {
        let parsed = query::parse(request.q, self.fields.fields, self.fields.text, canonical)?;
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![
            (Occur::Must, parsed.query.box_clone()),
            (Occur::Must, term(self.fields.tenant, request.tenant)),
            (Occur::Must, self.time_range(&request.range)),
        ];
        for (name, value) in [
            ("event_type", request.event_type),
            ("user_id", request.user_id),
        ] {
            if let Some(value) = value {
                clauses.push((Occur::Must, self.field_is(name, value)));
            }
        }
        let whole = BooleanQuery::new(clauses);
        let searcher = self.reader.searcher();
        let top = TopDocs::with_limit(request.limit.max(1))
            .and_offset(request.offset)
            .order_by_fast_field::<i64>("ts", Order::Desc);
        let (total, found) = searcher.search(&whole, &(Count, top))?;
        let snippets = SnippetGenerator::create(&searcher, &*parsed.query, self.fields.text)?;
        let mut hits = Vec::with_capacity(found.len());
        for (_, address) in found {
            let document: TantivyDocument = searcher.doc(address)?;
            let Some(bytes) = document
                .get_first(self.fields.event)
                .and_then(|v| v.as_bytes())
            else {
                continue;
            };
            let Ok(event) = serde_json::from_slice::<Event>(bytes) else {
                continue;
            };
            let mut highlights = parsed.highlights(&event);
            let snippet = snippets.snippet(&event_terms(&event).join(" "));
            if !snippet.highlighted().is_empty() {
                let start = snippet.fragment_range().start;
                highlights.push(Highlight {
                    field: "text".to_owned(),
                    value: snippet.fragment().to_owned(),
                    ranges: (snippet.highlighted().iter())
                        .map(|range| {
                            [
                                range.start.saturating_sub(start),
                                range.end.saturating_sub(start),
                            ]
                        })
                        .collect(),
                });
            }
            hits.push(Hit { event, highlights });
        }
        Ok(SearchPage { hits, total })
    }

    /// For each of `sources`, how many of the tenant's events in `range` it published with
    /// the field `field`, and when the newest was: one count and one top-1 per source.
    pub fn publishers(
        &self,
        tenant: &str,
        field: &str,
        sources: &[String],
        range: std::ops::Range<Millis>,
    ) -> Result<Vec<Publisher>, SearchError> {
        let searcher = self.reader.searcher();
        let mut publishers = Vec::new();
        for source in sources {
            let query = BooleanQuery::new(vec![
                (
                    Occur::Must,
                    prefix_query(self.fields.fields, &field_term(field, "")),
                ),
                (Occur::Must, term(self.fields.tenant, tenant)),
                (Occur::Must, self.field_is("source", source)),
                (Occur::Must, self.time_range(&range)),
            ]);
            let newest = TopDocs::with_limit(1).order_by_fast_field::<i64>("ts", Order::Desc);
            let (events, newest) = searcher.search(&query, &(Count, newest))?;
            publishers.push(Publisher {
                source: source.clone(),
                events,
                last_seen: newest.first().and_then(|(ts, _)| *ts),
            });
        }
        Ok(publishers)
    }

    /// Events whose field `name` is `value`.
    fn field_is(&self, name: &str, value: &str) -> Box<dyn Query> {
        term(self.fields.fields, &field_term(name, value))
    }

    /// Events whose time is in `range`.
    fn time_range(&self, range: &std::ops::Range<Millis>) -> Box<dyn Query> {
        Box::new(RangeQuery::new(
            std::ops::Bound::Included(Term::from_field_i64(self.fields.ts, range.start)),
            std::ops::Bound::Excluded(Term::from_field_i64(self.fields.ts, range.end)),
        ))
    }
}

/// Every term of `field` that starts with `prefix`: a range of the term dictionary.
fn prefix_query(field: Field, prefix: &str) -> Box<dyn Query> {
    let mut upper = prefix.to_owned();
    upper.push(char::MAX);
    Box::new(RangeQuery::new(
        std::ops::Bound::Included(Term::from_field_text(field, prefix)),
        std::ops::Bound::Excluded(Term::from_field_text(field, &upper)),
    ))
}

fn term(field: Field, text: &str) -> Box<dyn Query> {
    Box::new(TermQuery::new(
        Term::from_field_text(field, text),
        IndexRecordOption::Basic,
    ))
}

#[cfg(test)]
mod tests;
