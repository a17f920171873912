//! Bearer-token authentication for everything under `/api/`.

use crate::api::error::ApiError;

/// Checks an `Authorization` header value against the accepted tokens (`agent_api.auth_token`,
/// and the platform's `api_token` once registration gave one) in constant time: every token is
/// compared, whole, whichever matches, so timing leaks neither a prefix nor which one matched.
pub fn check(header: Option<&[u8]>, tokens: &[&str]) -> Result<(), ApiError> {
    let Some(value) = header else {
        return Err(ApiError::unauthorized(
            "missing Authorization header; send `Authorization: Bearer <agent_api.auth_token>`",
        ));
    };
    let presented = match value.split_first_chunk::<7>() {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer ") => rest.trim_ascii(),
        _ => {
            return Err(ApiError::unauthorized(
                "Authorization header must use the Bearer scheme",
            ))
        }
    };
    let mut matched = false;
    for token in tokens {
        // `|`, not `||`: no early exit.
        matched |= constant_time_eq(presented, token.as_bytes());
    }
    if std::hint::black_box(matched) {
        Ok(())
    } else {
        Err(ApiError::unauthorized("invalid bearer token"))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Every byte of both is looked at whatever they hold: the common part pairwise (without
    // bounds checks per byte, so it runs on every request cheaply), then what is left of the
    // longer one (which already makes them differ, through the lengths).
    let common = a.len().min(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for (x, y) in a[..common].iter().zip(&b[..common]) {
        diff |= x ^ y;
    }
    let mut rest = 0u8;
    for x in a[common..].iter().chain(&b[common..]) {
        rest |= x;
    }
    std::hint::black_box(rest);
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &[&str] = &["0123456789abcdef"];

    #[test]
    fn accepts_only_the_exact_token() {
        assert!(check(Some(b"Bearer 0123456789abcdef"), TOKEN).is_ok());
        assert!(check(Some(b"bearer 0123456789abcdef"), TOKEN).is_ok());
        assert!(check(Some(b"Bearer 0123456789abcdeF"), TOKEN).is_err());
        assert!(check(Some(b"Bearer 0123456789abcde"), TOKEN).is_err());
        assert!(check(Some(b"Bearer 0123456789abcdef0"), TOKEN).is_err());
        assert!(check(Some(b"Bearer "), TOKEN).is_err());
        assert!(check(Some(b"Basic 0123456789abcdef"), TOKEN).is_err());
        assert!(check(Some(b"0123456789abcdef"), TOKEN).is_err());
        assert!(check(None, TOKEN).is_err());
    }

    #[test]
    fn accepts_any_of_the_tokens() {
        let both = &["0123456789abcdef", "platform-token-0123456789"];
        assert!(check(Some(b"Bearer 0123456789abcdef"), both).is_ok());
        assert!(check(Some(b"Bearer platform-token-0123456789"), both).is_ok());
        assert!(check(Some(b"Bearer platform-token-012345678"), both).is_err());
        assert!(check(Some(b"Bearer wrong"), both).is_err());
        assert!(check(Some(b"Bearer "), &[]).is_err());
        assert!(check(Some(b"Bearer x"), &[]).is_err());
    }

    #[test]
    fn constant_time_eq_handles_lengths() {
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"a", b""));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(!constant_time_eq(b"\xff", b""));
        assert!(constant_time_eq(b"same token", b"same token"));
        assert!(!constant_time_eq(b"same token", b"same tokem"));
        assert!(!constant_time_eq(b"same token", b"same token!"));
        assert!(!constant_time_eq(b"\0", b"\0\0"));
    }
}
