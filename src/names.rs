//! The characters names may use wherever a name reaches docker, a label, a URL path or a file
//! name (claim ids, label values, runtimes, CDI kinds, image tags, path segments): one
//! definition, so that a name one part accepts is never refused by another.

/// `A-Z a-z 0-9 _ . -`.
pub fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

/// True when `name` is 1..=`max_len` bytes of [`is_name_byte`] characters.
pub fn is_name(name: &str, max_len: usize) -> bool {
    !name.is_empty() && name.len() <= max_len && name.bytes().all(is_name_byte)
}

/// True when `text` holds a Go template marker (`{{` or `}}`): frpc renders its config file as a
/// template before parsing it, so such a value written there could read the agent's environment
/// or files.
pub fn has_template_marker(text: &str) -> bool {
    text.contains("{{") || text.contains("}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_characters() {
        assert!(is_name("claim-1_a.b", 64));
        assert!(!is_name("", 64));
        assert!(!is_name("a b", 64));
        assert!(!is_name("a/b", 64));
        assert!(!is_name("é", 64));
        assert!(!is_name("abc", 2));
    }
}
