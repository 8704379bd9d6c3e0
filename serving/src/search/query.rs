//! The query language of `q=`: Lucene's, as tantivy's grammar reads it, over an event's
//! fields.
//!
//! - `os_type:ios` matches the value exactly; `url:/checkout*` every value that starts so;
//!   `url:*` every event that has the field; `country:IN [fr de]` any of the values. A field
//!   is `event_type`, `user_id`, `source` or a tag, by its name or one of its aliases.
//! - A word without a field (`checkout`) matches the words of any field, case-insensitively;
//!   `check*` words that start so.
//! - `AND`, `OR`, `NOT`, `+`, `-` and parentheses combine them; terms side by side are
//!   `OR`ed, as in Lucene.
//!
//! Ranges and regular expressions are refused: time is the request's range, and a regular
//! expression could cost far more than its text.

use serde::Serialize;
use tally_model::Event;
use tantivy::Term;
use tantivy::query::{AllQuery, BooleanQuery, EmptyQuery, Occur, Query, TermQuery};
use tantivy::query_grammar::{
    Delimiter, UserInputAst, UserInputLeaf, UserInputLiteral, parse_query,
};
use tantivy::schema::{Field, IndexRecordOption};
use thiserror::Error;

use super::document::{event_fields, field_term};
use super::prefix_query;

/// The longest query text.
pub const MAX_QUERY_BYTES: usize = 2_000;
/// The most terms one query may hold.
pub const MAX_TERMS: usize = 64;

/// Why a query was refused: the caller's to fix.
#[derive(Debug, Error, PartialEq)]
#[non_exhaustive]
pub enum SearchQueryError {
    /// Not Lucene syntax.
    #[error(
        "q '{0}' is not a query: write field:value, field:prefix*, words, and AND, OR, NOT or parentheses between them"
    )]
    Syntax(String),
    /// Too long or too many terms.
    #[error("q is too large: at most {MAX_QUERY_BYTES} bytes and {MAX_TERMS} terms")]
    TooLarge,
    /// Something the language leaves out.
    #[error("{0} are not supported in q; {1}")]
    Unsupported(&'static str, &'static str),
}

/// Which part of a field's value a query matched.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Highlight {
    /// The field: `event_type`, `user_id`, `source`, a tag, or `text` for a free-text match
    /// (then `value` is the fragment of the event's text around it).
    pub field: String,
    /// Its value.
    pub value: String,
    /// The matched byte ranges of `value`, `[start, end)`.
    pub ranges: Vec<[usize; 2]>,
}

/// A condition on one field, kept to say which fields of a hit matched.
#[derive(Debug, Clone, PartialEq)]
enum FieldMatch {
    /// The value is this.
    Exact(String, String),
    /// The value starts with this.
    Prefix(String, String),
}

/// A query ready to run, and what it asks of each field.
pub struct ParsedQuery {
    /// The tantivy query.
    pub query: Box<dyn Query>,
    matches: Vec<FieldMatch>,
}

impl ParsedQuery {
    /// The fields of `event` its field conditions match.
    pub fn highlights(&self, event: &Event) -> Vec<Highlight> {
        let mut highlights = Vec::new();
        for (name, value) in event_fields(event) {
            let matched = self.matches.iter().find_map(|condition| match condition {
                FieldMatch::Exact(field, exact) if field == name && *exact == value => {
                    Some(value.len())
                }
                FieldMatch::Prefix(field, prefix)
                    if field == name && value.starts_with(prefix.as_str()) =>
                {
                    Some(prefix.len())
                }
                _ => None,
            });
            if let Some(end) = matched {
                highlights.push(Highlight {
                    field: name.to_owned(),
                    value,
                    ranges: vec![[0, end]],
                });
            }
        }
        highlights
    }
}

/// Reads `q` into a query over the `fields` terms and the `text` words; `canonical` names
/// the field an alias stands for.
pub fn parse(
    q: &str,
    fields: Field,
    text: Field,
    canonical: &dyn Fn(&str) -> String,
) -> Result<ParsedQuery, SearchQueryError> {
    if q.len() > MAX_QUERY_BYTES {
        return Err(SearchQueryError::TooLarge);
    }
    let ast = parse_query(q).map_err(|_| SearchQueryError::Syntax(q.to_owned()))?;
    let mut translator = Translator {
        fields,
        text,
        canonical,
        matches: Vec::new(),
        terms: 0,
    };
    let query = translator.translate(ast)?;
    Ok(ParsedQuery {
        query,
        matches: translator.matches,
    })
}

struct Translator<'a> {
    fields: Field,
    text: Field,
    canonical: &'a dyn Fn(&str) -> String,
    matches: Vec<FieldMatch>,
    terms: usize,
}

impl Translator<'_> {
    fn translate(&mut self, ast: UserInputAst) -> Result<Box<dyn Query>, SearchQueryError> {
        match ast {
            UserInputAst::Clause(clauses) => {
                let mut translated = Vec::with_capacity(clauses.len());
                for (occur, clause) in clauses {
                    translated.push((occur.unwrap_or(Occur::Should), self.translate(clause)?));
                }
                Ok(Box::new(BooleanQuery::new(translated)))
            }
            // Hits come newest first, not by score: a boost changes nothing.
            UserInputAst::Boost(inner, _) => self.translate(*inner),
            UserInputAst::Leaf(leaf) => self.leaf(*leaf),
        }
    }

    fn leaf(&mut self, leaf: UserInputLeaf) -> Result<Box<dyn Query>, SearchQueryError> {
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return Err(SearchQueryError::TooLarge);
        }
        match leaf {
            UserInputLeaf::All => Ok(Box::new(AllQuery)),
            UserInputLeaf::Literal(literal) => self.literal(literal),
            UserInputLeaf::Exists { field } => {
                let field = (self.canonical)(&field);
                self.matches
                    .push(FieldMatch::Prefix(field.clone(), String::new()));
                Ok(prefix_query(self.fields, &field_term(&field, "")))
            }
            UserInputLeaf::Set { field, elements } => {
                let Some(field) = field else {
                    return Err(SearchQueryError::Unsupported(
                        "sets without a field",
                        "write field:IN [a b]",
                    ));
                };
                let field = (self.canonical)(&field);
                let mut any = Vec::with_capacity(elements.len());
                for value in elements {
                    self.terms += 1;
                    if self.terms > MAX_TERMS {
                        return Err(SearchQueryError::TooLarge);
                    }
                    any.push((Occur::Should, self.exact(&field, value)));
                }
                Ok(Box::new(BooleanQuery::new(any)))
            }
            // A range of times is the request's; values are matched as text, so a range of
            // tag values would compare them as text ("10" before "9").
            UserInputLeaf::Range { field, .. } => Err(SearchQueryError::Unsupported(
                "ranges",
                match field.as_deref() {
                    None | Some("ts" | "received_at") => {
                        "give the time range with start_time and end_time"
                    }
                    Some(_) => {
                        "a tag's values are matched as text: name the values (latency_ms:IN [1 2 3 4 5]), or group a view by the tag and filter it with /v1/query"
                    }
                },
            )),
            UserInputLeaf::Regex { .. } => Err(SearchQueryError::Unsupported(
                "regular expressions",
                "use a prefix such as url:/checkout*",
            )),
        }
    }

    fn literal(
        &mut self,
        mut literal: UserInputLiteral,
    ) -> Result<Box<dyn Query>, SearchQueryError> {
        // The grammar leaves an unquoted word's trailing `*` in the word: it asks for a
        // prefix, unless escaped (`\*`, a star).
        if literal.delimiter == Delimiter::None {
            let word = std::mem::take(&mut literal.phrase);
            let (word, prefix) = match word.strip_suffix('*') {
                Some(stem) if !stem.ends_with('\\') => (stem.to_owned(), true),
                _ => (word, false),
            };
            literal.phrase = word.replace("\\*", "*");
            literal.prefix |= prefix;
        }
        match literal.field_name {
            Some(field) => {
                let field = (self.canonical)(&field);
                if literal.prefix {
                    let query = prefix_query(self.fields, &field_term(&field, &literal.phrase));
                    self.matches.push(FieldMatch::Prefix(field, literal.phrase));
                    return Ok(query);
                }
                Ok(self.exact(&field, literal.phrase))
            }
            None => {
                // Free text: the words as the `default` tokenizer cuts and lower-cases them.
                let words: Vec<String> = literal
                    .phrase
                    .split(|c: char| !c.is_alphanumeric())
                    .filter(|word| !word.is_empty())
                    .map(str::to_lowercase)
                    .collect();
                let last = words.len().saturating_sub(1);
                let all: Vec<(Occur, Box<dyn Query>)> = (words.iter().enumerate())
                    .map(|(i, word)| {
                        let query: Box<dyn Query> = if literal.prefix && i == last {
                            prefix_query(self.text, word)
                        } else {
                            Box::new(TermQuery::new(
                                Term::from_field_text(self.text, word),
                                IndexRecordOption::Basic,
                            ))
                        };
                        (Occur::Must, query)
                    })
                    .collect();
                Ok(match all.is_empty() {
                    true => Box::new(EmptyQuery),
                    false => Box::new(BooleanQuery::new(all)),
                })
            }
        }
    }

    fn exact(&mut self, field: &str, value: String) -> Box<dyn Query> {
        let query = Box::new(TermQuery::new(
            Term::from_field_text(self.fields, &field_term(field, &value)),
            IndexRecordOption::Basic,
        ));
        self.matches
            .push(FieldMatch::Exact(field.to_owned(), value));
        query
    }
}
