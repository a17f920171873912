//! Query strings: `a=1&b=x%20y` into decoded `(name, value)` pairs.

/// Why a query string cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError(pub String);

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for QueryError {}

/// The pairs of `query` in order, names and values percent-decoded (`+` is a space, as in
/// forms). A `%` not followed by two hex digits, or bytes that are not UTF-8 once decoded, are
/// an error.
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, QueryError> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(name)?, percent_decode(value)?))
        })
        .collect()
}

/// Decodes `%XX` escapes and `+`.
pub fn percent_decode(text: &str) -> Result<String, QueryError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        QueryError(format!("{text:?} has a % not followed by two hex digits"))
                    })?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| QueryError(format!("{text:?} is not UTF-8 once decoded")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_pairs() {
        assert_eq!(
            parse_query("tail=%31&x=a+b%2Fc&flag&&").unwrap(),
            vec![
                ("tail".to_string(), "1".to_string()),
                ("x".to_string(), "a b/c".to_string()),
                ("flag".to_string(), String::new()),
            ]
        );
        assert_eq!(parse_query("t%61il=2").unwrap()[0].0, "tail");
        assert!(parse_query("").unwrap().is_empty());
    }

    #[test]
    fn refuses_bad_escapes() {
        for bad in ["tail=%", "tail=%3", "tail=%zz", "tail=%ff", "a=%+1"] {
            assert!(parse_query(bad).is_err(), "{bad}");
        }
    }
}
