//! The one rule for every name a tenant declares: tags and their aliases, event types,
//! views, sources and tenants. Names travel into URLs, object paths, metrics labels and the
//! console, so they are kept to characters that mean nothing in any of them.

use thiserror::Error;

/// The event type that stands for every type, in a view's events and a source's policy.
pub const ANY_EVENT_TYPE: &str = "*";

/// The longest name.
pub const MAX_NAME_LEN: usize = 64;

/// A name that is not plain (see [`check_name`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "{what} name {shown:?} is not allowed: use 1 to {max} letters, digits, '_', '-' or '.', starting with a letter, a digit or '_'",
    max = MAX_NAME_LEN
)]
pub struct NameError {
    /// What the name names: "tag", "alias", "view", ...
    pub what: &'static str,
    /// The name, cut to the longest allowed.
    pub shown: String,
}

/// An event type alias that is empty, too long, padded, `*` or holds control characters
/// (see [`check_event_type_alias`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "event type alias {shown:?} is not allowed: use 1 to 128 bytes of text without control characters or surrounding spaces, other than '*'"
)]
pub struct EventTypeAliasError {
    /// The alias, cut to the longest allowed.
    pub shown: String,
}

/// Checks `name`, a `what` (e.g. "tag"): 1 to 64 ASCII letters, digits, `_`, `-` or `.`,
/// starting with a letter, a digit or `_`. Dots let aliases name the trackers' fields
/// (`context.os.name`); no name can be `.`, `..` or contain a `/`.
pub fn check_name(what: &'static str, name: &str) -> Result<(), NameError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    let starts_well = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if name.len() <= MAX_NAME_LEN && starts_well && name.chars().all(allowed) {
        Ok(())
    } else {
        Err(NameError {
            what,
            shown: name.chars().take(MAX_NAME_LEN).collect(),
        })
    }
}

/// Checks an event type's alias: the name a tracking plan gives it (`Order Completed`).
/// Aliases are only looked up, never used in paths or labels, so they may hold spaces and
/// any letters: 1 to 128 bytes, no control characters, no surrounding spaces, not `*`.
pub fn check_event_type_alias(alias: &str) -> Result<(), EventTypeAliasError> {
    let plain = !alias.is_empty()
        && alias.len() <= 2 * MAX_NAME_LEN
        && alias.trim() == alias
        && alias != ANY_EVENT_TYPE
        && !alias.chars().any(char::is_control);
    if plain {
        Ok(())
    } else {
        Err(EventTypeAliasError {
            shown: alias.chars().take(2 * MAX_NAME_LEN).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain() {
        for good in [
            "os_type",
            "context.os.name",
            "demo-web",
            "_private",
            "p99",
            "A1",
        ] {
            assert_eq!(check_name("tag", good), Ok(()), "{good}");
        }
        let long = "x".repeat(MAX_NAME_LEN + 1);
        for bad in [
            "",
            " ",
            "..",
            ".hidden",
            "../../etc",
            "a/b",
            "<b>x</b>",
            "a b",
            "é",
            &long,
        ] {
            let err = check_name("tag", bad).unwrap_err().to_string();
            assert!(err.starts_with("tag name"), "{bad}: {err}");
        }
    }

    #[test]
    fn event_type_aliases_are_free_text_without_controls() {
        for good in ["Order Completed", "Añadir al carrito", "purchase.v2", "x"] {
            assert_eq!(check_event_type_alias(good), Ok(()), "{good}");
        }
        let long = "x".repeat(2 * MAX_NAME_LEN + 1);
        for bad in ["", " Order", "Order ", "*", "a\nb", "\u{7}", &long] {
            let err = check_event_type_alias(bad).unwrap_err().to_string();
            assert!(err.starts_with("event type alias"), "{bad}: {err}");
        }
    }
}
