//! The one rule for every name a tenant declares: tags and their aliases, event types,
//! views, sources and tenants. Names travel into URLs, object paths, metrics labels and the
//! console, so they are kept to characters that mean nothing in any of them.

use crate::problem::NameError;

/// The longest name.
pub const MAX_NAME_LEN: usize = 64;

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
}
