//! The parser's errors in the operator's words: no Rust type names (`expected u16` says "a port
//! number (1-65535)", `expected struct ApiConfig` says "a mapping"), and the line of the
//! mistake itself (a duplicate key at the duplicate, not at its mapping; an unclosed quote at
//! the quote, not at the end of the file; a tab named as such).

/// Rewrites one YAML parse or schema error of `text` (the file's content).
pub fn yaml_error(text: &str, raw: &str) -> String {
    // An unclosed quote: the scanner reports the end of the file, then where the quote began.
    if let Some((_, start)) = raw.split_once("while scanning a quoted scalar at ") {
        return format!(
            "unclosed quote at {}: the quoted value has no closing quote",
            start.trim()
        );
    }
    if raw.contains("found character that cannot start any token") {
        if let Some((line, column)) = location(raw) {
            let found = text
                .lines()
                .nth(line.saturating_sub(1))
                .and_then(|l| l.chars().nth(column.saturating_sub(1)));
            if found == Some('\t') {
                return format!(
                    "a tab at line {line} column {column}: YAML indents with spaces, not tabs"
                );
            }
        }
    }
    if let Some(rest) = raw.split("duplicate field `").nth(1) {
        let name = rest.split('`').next().unwrap_or_default();
        if let Some(dup) = duplicate_key(text, name) {
            return format!(
                "duplicate key `{}` at line {} (first set at line {}): each key may appear once \
                 in its section",
                dup.key, dup.line, dup.first_line
            );
        }
    }
    // `key.path: message at line N column M`: only the middle needs words.
    let (key, rest) = match raw.split_once(": ") {
        Some((key, rest)) if !key.contains(' ') => (Some(key), rest),
        _ => (None, raw),
    };
    let (body, at) = match rest.rfind(" at line ") {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let body = plain_body(body);
    match key {
        Some(key) => format!("{key}: {body}{at}"),
        None => format!("{body}{at}"),
    }
}

/// `invalid type: X, expected T` and friends, without Rust types.
fn plain_body(body: &str) -> String {
    if let Some(rest) = body.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            return format!(
                "expected {}, found {}",
                expected_words(expected),
                found_words(found)
            );
        }
    }
    if let Some(rest) = body.strip_prefix("invalid value: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            return format!("{} is not {}", found_words(found), expected_words(expected));
        }
    }
    if let Some(rest) = body.strip_prefix("unknown variant `") {
        if let Some((value, expected)) = rest.split_once("`, expected ") {
            let choices = expected.trim_start_matches("one of ").replace('`', "");
            return format!("{value:?} is not one of {choices}");
        }
    }
    if let Some(rest) = body.strip_prefix("unknown field `") {
        if let Some((name, expected)) = rest.split_once("`, expected ") {
            let choices = expected.trim_start_matches("one of ").replace('`', "");
            return format!("unknown key `{name}` (this section has: {choices})");
        }
        if let Some(name) = rest.strip_suffix("`, there are no fields") {
            return format!("unknown key `{name}`");
        }
    }
    body.replace("struct Config", "a mapping of the config's sections")
}

/// What a key wants, in words.
fn expected_words(expected: &str) -> String {
    let expected = expected.trim();
    match expected {
        "u16" => "a port number (1-65535)".into(),
        "u8" | "u32" | "u64" | "usize" => "a whole number (0 or more)".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" => "true or false".into(),
        "a string" | "string" => "text".into(),
        "path string" => "a path".into(),
        "a sequence" => "a list".into(),
        "a map" => "a mapping".into(),
        "struct Config" => "a mapping of the config's sections".into(),
        other if other.starts_with("struct ") => "a mapping (indented `key: value` lines)".into(),
        other if other.starts_with("enum ") => "one of its listed values".into(),
        other => other.to_string(),
    }
}

/// What was found, in words.
fn found_words(found: &str) -> String {
    let found = found.trim();
    let quoted = |prefix: &str| {
        found
            .strip_prefix(prefix)
            .map(|v| v.trim_matches('`').to_string())
    };
    if let Some(v) = found.strip_prefix("string ") {
        return v.to_string();
    }
    for prefix in ["integer ", "floating point ", "boolean ", "char "] {
        if let Some(v) = quoted(prefix) {
            return v;
        }
    }
    match found {
        "sequence" => "a list".into(),
        "map" => "a mapping".into(),
        "unit value" => "nothing (an empty value)".into(),
        other => other.to_string(),
    }
}

/// A key set twice in one mapping.
#[derive(Debug, PartialEq, Eq)]
pub struct Duplicate {
    pub key: String,
    pub line: usize,
    pub first_line: usize,
}

/// The first key set twice in one block mapping of `text` (preferring `name` when it is one of
/// them), with both lines; flow mappings (`{a: 1}`) are not looked into.
pub fn duplicate_key(text: &str, name: &str) -> Option<Duplicate> {
    // One frame per open mapping: its indent and the keys seen with their lines.
    let mut frames: Vec<(usize, Vec<(String, usize)>)> = Vec::new();
    let mut found: Vec<Duplicate> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim_start_matches(' ');
        if trimmed.is_empty() || trimmed.starts_with('#') || raw.starts_with("---") {
            continue;
        }
        let indent = raw.len() - trimmed.len();
        if trimmed.starts_with("- ") || trimmed == "-" {
            // A list item: what follows belongs to the list, not to a mapping.
            while frames.last().is_some_and(|(i, _)| *i > indent) {
                frames.pop();
            }
            continue;
        }
        let Some(key) = block_key(trimmed) else {
            continue;
        };
        while frames.last().is_some_and(|(i, _)| *i > indent) {
            frames.pop();
        }
        if frames.last().is_none_or(|(i, _)| *i < indent) {
            frames.push((indent, Vec::new()));
        }
        let Some((_, keys)) = frames.last_mut() else {
            continue;
        };
        if let Some((_, first_line)) = keys.iter().find(|(k, _)| *k == key) {
            found.push(Duplicate {
                key: key.clone(),
                line,
                first_line: *first_line,
            });
        } else {
            keys.push((key, line));
        }
    }
    let preferred = found.iter().position(|d| d.key == name).unwrap_or(0);
    (!found.is_empty()).then(|| found.swap_remove(preferred))
}

/// The key of a `key: value` (or `key:`) line, unquoted.
fn block_key(line: &str) -> Option<String> {
    let (key, rest) = if let Some(quote @ ('"' | '\'')) = line.chars().next() {
        let end = line[1..].find(quote)? + 1;
        (&line[1..end], &line[end + 1..])
    } else {
        let colon = line
            .find(": ")
            .or_else(|| line.strip_suffix(':').map(|k| k.len()))?;
        (&line[..colon], &line[colon..])
    };
    let rest = rest.trim_start();
    (rest.starts_with(':') && !key.contains(['{', '[', '#'])).then(|| key.trim().to_string())
}

/// `line N column M` of an error, when it has one (the first).
fn location(raw: &str) -> Option<(usize, usize)> {
    let rest = raw.split("at line ").nth(1)?;
    let mut words = rest.split_whitespace();
    let line = words.next()?.trim_end_matches(',').parse().ok()?;
    let column = match (words.next(), words.next()) {
        (Some("column"), Some(c)) => c.trim_end_matches(',').parse().ok()?,
        _ => 1,
    };
    Some((line, column))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const TOKEN: &str = "agent_api:\n  auth_token: \"0123456789abcdef0\"\n";

    fn error_of(yaml: &str) -> String {
        Config::parse(yaml).unwrap_err()
    }

    #[test]
    fn no_rust_type_names() {
        for (yaml, want) in [
            (
                "frp:\n  server_port: 70000\n",
                "frp.server_port: 70000 is not a port number (1-65535) at line 2",
            ),
            (
                "agent_api: 5\n",
                "agent_api: expected a mapping (indented `key: value` lines), found 5 at line 1",
            ),
            (
                "agent_api:\n  max_connections: many\n",
                "agent_api.max_connections: expected a whole number (0 or more), found \"many\" \
                 at line 2",
            ),
            (
                "identity_file_path: [1]\n",
                "identity_file_path: expected a path, found a list",
            ),
            (
                "docker:\n  init: maybe\n",
                "docker.init: expected true or false, found \"maybe\"",
            ),
            (
                "docker:\n  block_metadata: 1\n",
                "docker.block_metadata: expected true or false, found 1",
            ),
            (
                "frp:\n  api_allow_users: x\n",
                "frp.api_allow_users: expected a list, found \"x\"",
            ),
            (
                "- a\n",
                "expected a mapping of the config's sections, found a list",
            ),
            (
                "gpu:\n  sample_intervall_ms: 5\n",
                "gpu: unknown key `sample_intervall_ms` (this section has: nvml_library_path",
            ),
        ] {
            let e = error_of(yaml);
            assert!(e.contains(want), "{yaml:?}: {e}");
            for rust in [
                "u16",
                "u64",
                "usize",
                "struct",
                "ApiConfig",
                "sequence",
                "variant",
            ] {
                assert!(!e.contains(rust), "{yaml:?}: {e}");
            }
        }
    }

    #[test]
    fn a_duplicate_key_is_shown_at_the_duplicate() {
        let e = error_of(&format!("{TOKEN}frp:\n  token: a\n  user: b\n  token: c\n"));
        assert!(
            e.contains("duplicate key `token` at line 6 (first set at line 4)"),
            "{e}"
        );
        let e = error_of(&format!("log_level: info\n{TOKEN}log_level: debug\n"));
        assert!(
            e.contains("duplicate key `log_level` at line 4 (first set at line 1)"),
            "{e}"
        );
        // The same key in two sections is no duplicate.
        assert!(Config::parse("frp:\n  token: a\nagent_api:\n  auth_token: b\n").is_ok());
    }

    #[test]
    fn an_unclosed_quote_is_shown_at_the_quote() {
        let e = error_of(&format!(
            "{TOKEN}  listen_address: 'x\ngpu:\n  init_retry_secs: 1\n"
        ));
        assert!(e.contains("unclosed quote at line 3 column 19"), "{e}");
    }

    #[test]
    fn duplicates_are_found_per_mapping() {
        let text = "a:\n  x: 1\n  - no\nb:\n  x: 2\n  'y': 3\n  y: 4\n";
        assert_eq!(
            duplicate_key(text, "y"),
            Some(Duplicate {
                key: "y".into(),
                line: 7,
                first_line: 6
            })
        );
        assert_eq!(duplicate_key("a: 1\nb: {a: 1, a: 2}\n", "a"), None);
    }

    #[test]
    fn a_tab_is_named() {
        let e = error_of(&format!("{TOKEN}\tlisten_address: x\n"));
        assert!(e.contains("a tab at line 3 column 1"), "{e}");
    }

    #[test]
    fn values_are_case_insensitive() {
        let c = Config::parse(
            "log_level: DEBUG\ndocker:\n  gpu_mode: CDI\nfrp:\n  api_proxy_type: Stcp\n",
        )
        .unwrap();
        assert_eq!(c.log_level, crate::config::LogLevel::Debug);
        assert_eq!(c.docker.gpu_mode, crate::config::GpuMode::Cdi);
        assert_eq!(c.frp.api_proxy_type, crate::config::ApiProxyType::Stcp);
        let e = error_of("log_level: loud\n");
        assert!(
            e.contains(
                "log_level: \"loud\" is not one of error, warn, info, debug, trace at line 1"
            ),
            "{e}"
        );
        let e = error_of("docker:\n  gpu_mode: all\n");
        assert!(e.contains("\"all\" is not one of gpus, cdi, env"), "{e}");
    }
}
