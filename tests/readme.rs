//! The README's examples, run as written against `tally up`: the event it sends and the query
//! it makes must answer what the README prints (`…` in a printed answer stands for any time),
//! so the front door cannot drift from the product.

use serde_json::Value;

use crate::support::Tally;

const README: &str = include_str!("../README.md");

/// The fenced block that follows `heading`.
fn example(heading: &str) -> &'static str {
    let after = &README[README
        .find(heading)
        .unwrap_or_else(|| panic!("{heading} in README"))..];
    let start = after.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let block = &after[start..];
    &block[..block.find("```").expect("the block ends")]
}

/// What the example's `# ` comment lines print, as JSON (after a leading status, if any).
fn printed(block: &str) -> (Option<u16>, Value) {
    let text: String = block
        .lines()
        .filter_map(|line| line.strip_prefix("# "))
        .collect::<Vec<_>>()
        .join("\n");
    let (status, json) = match text.split_once(' ') {
        Some((status, rest)) if status.parse::<u16>().is_ok() => (status.parse().ok(), rest),
        _ => (None, text.as_str()),
    };
    (
        status,
        serde_json::from_str(json).expect("the printed answer is JSON"),
    )
}

/// The text between `open` and the next `'` after it.
fn quoted<'a>(block: &'a str, open: &str) -> &'a str {
    let rest = &block[block
        .find(open)
        .unwrap_or_else(|| panic!("{open} in {block}"))
        + open.len()..];
    &rest[..rest.find('\'').expect("a closing quote")]
}

/// Whether `actual` is what `expected` prints, `"…"` matching any value.
fn matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::String(any), _) if any == "…" => true,
        (Value::Object(e), Value::Object(a)) => {
            e.len() == a.len()
                && e.iter()
                    .all(|(k, v)| a.get(k).is_some_and(|av| matches(v, av)))
        }
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(e, a)| matches(e, a))
        }
        _ => expected == actual,
    }
}

#[test]
fn the_readme_examples_answer_what_the_readme_prints() {
    let dir = tempfile::tempdir().unwrap();
    let server = Tally::up(dir.path());
    let keys = std::fs::read_to_string(dir.path().join("demo-keys.txt")).unwrap();
    let key = |name: &str| {
        keys.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} in demo-keys.txt: the README reads it there"))
            .to_owned()
    };

    let send = example("### Send an event");
    let (status, expected) = printed(send);
    let authorization = format!("Bearer {}", key("write_key"));
    let (got_status, body) = server.http(
        "POST",
        "/v1/events",
        &[
            ("Authorization", &authorization),
            ("Content-Type", "application/json"),
        ],
        quoted(send, "-d '"),
    );
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(Some(got_status), status, "{body}");
    assert!(
        matches(&expected, &answer),
        "README prints {expected}\nTally answers {answer}"
    );

    let query = example("### Query it");
    let (_, expected) = printed(query);
    let path = quoted(query, "'http://127.0.0.1:8080");
    let authorization = format!("Bearer {}", key("read_key"));
    let started = std::time::Instant::now();
    loop {
        let (status, body) = server.http("GET", path, &[("Authorization", &authorization)], "");
        let answer: Value = serde_json::from_str(&body).unwrap();
        if status == 200 && matches(&expected, &answer) {
            break;
        }
        // The speed layer shows the event within an epoch or two.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "README prints {expected}\nTally answers {status} {answer}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
