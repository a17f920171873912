//! Image references (docker's reference grammar) and the registries they name: which are
//! well-formed, which is an image's, which are on this host and so refused.

use crate::names::is_name;

/// Checks an image reference against docker's reference grammar
/// (`[domain[:port]/]path[:tag][@digest]`, see distribution/reference's regexp.go).
pub fn validate_image(image: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{image:?} is not a docker image reference: {why}"));
    if image.is_empty() {
        return bad("empty");
    }
    if image.len() > 512 || !image.is_ascii() {
        return bad("too long or not ASCII");
    }
    let (rest, digest) = match image.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        if !valid_digest(digest) {
            return bad("malformed digest");
        }
    }
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let tag_ok = is_name(tag, 128)
            && (tag.as_bytes()[0].is_ascii_alphanumeric() || tag.as_bytes()[0] == b'_');
        if !tag_ok {
            return bad("malformed tag");
        }
    }
    if name.is_empty() || name.len() > 255 {
        return bad("the name must be 1 to 255 characters");
    }
    let mut components: Vec<&str> = name.split('/').collect();
    if components.len() > 1 {
        let first = components[0];
        if first.contains(['.', ':']) || first == "localhost" {
            if !valid_domain(first) {
                return bad("malformed registry host");
            }
            components.remove(0);
        }
    }
    if components.iter().all(|c| valid_path_component(c)) {
        Ok(())
    } else {
        bad("path components are lowercase letters and digits separated by ., _, __ or -")
    }
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    if bytes.is_empty() {
        return false;
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < bytes.len() && alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        let sep_start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[sep_start..i];
        let sep_ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-');
        if !sep_ok || i == bytes.len() {
            return false;
        }
    }
}

/// `host[:port]`; host is dot-separated labels of letters, digits and inner hyphens, or an
/// IPv6 address in brackets.
fn valid_domain(domain: &str) -> bool {
    let (host, port) = split_host_port(domain);
    if let Some(port) = port {
        let port_ok =
            port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p > 0);
        if !port_ok {
            return false;
        }
    }
    if let Some(inner) = host.strip_prefix('[') {
        return inner
            .strip_suffix(']')
            .is_some_and(|v6| v6.parse::<std::net::Ipv6Addr>().is_ok());
    }
    valid_host_name(host)
}

/// `host[:port]` split, an IPv6 host keeping its brackets.
fn split_host_port(domain: &str) -> (&str, Option<&str>) {
    if domain.starts_with('[') {
        return match domain.find(']') {
            Some(end) => match domain[end + 1..].strip_prefix(':') {
                Some(port) => (&domain[..=end], Some(port)),
                None => (domain, None),
            },
            None => (domain, None),
        };
    }
    match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    }
}

fn valid_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        })
}

/// `host[:port]` as an image reference's domain may be.
pub fn valid_registry(registry: &str) -> bool {
    registry.is_ascii() && registry.len() <= 255 && valid_domain(registry)
}

/// The default registry of references that name none.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// The registry an image reference is pulled from, lowercased: its domain (`host[:port]`), or
/// `docker.io` when it names none (docker's own aliases of it read as `docker.io` too).
pub fn registry_of(image: &str) -> String {
    let Some((first, _)) = image.split_once('/') else {
        return DEFAULT_REGISTRY.to_string();
    };
    if !(first.contains(['.', ':']) || first == "localhost") {
        return DEFAULT_REGISTRY.to_string();
    }
    normalize_registry(first)
}

/// `Index.Docker.IO` → `docker.io`; other hosts lowercased.
pub fn normalize_registry(registry: &str) -> String {
    let lower = registry.to_ascii_lowercase();
    match lower.as_str() {
        "index.docker.io" | "registry-1.docker.io" => DEFAULT_REGISTRY.to_string(),
        _ => lower,
    }
}

/// Refuses a registry on this host's loopback or a link-local address (`localhost`,
/// `127.0.0.1`, `[::1]`, `169.254.169.254`, and the spellings a resolver reads as those:
/// `127.1`, `2130706433`, `0x7f000001`, `0177.0.0.1`, `[::ffff:127.0.0.1]`, `0.0.0.0`): the
/// engine would reach, for a renter, services that listen only to the host itself.
pub fn check_registry_host(registry: &str) -> Result<(), String> {
    let (host, _) = split_host_port(registry);
    let host = host.to_ascii_lowercase();
    let refused = |what: &str| {
        Err(format!(
            "registry {registry} is {what}; images are pulled only from registries outside this \
             host"
        ))
    };
    let name = host.trim_end_matches('.');
    if name == "localhost"
        || name.ends_with(".localhost")
        || name == "localhost.localdomain"
        || name == "ip6-localhost"
        || name == "ip6-loopback"
    {
        return refused("this host (localhost)");
    }
    let address = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .and_then(|v6| v6.parse::<std::net::Ipv6Addr>().ok())
            .map(std::net::IpAddr::V6)
    } else {
        parse_ipv4_like_a_resolver(name).map(std::net::IpAddr::V4)
    };
    match address {
        Some(address) if is_local_address(address) => {
            refused(&format!("on a loopback or link-local address ({address})"))
        }
        _ => Ok(()),
    }
}

/// True for loopback, link-local and unspecified addresses (an IPv4 one inside IPv6 too).
pub fn is_local_address(address: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match address {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local() || v4.octets()[0] == 0,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_local_address(IpAddr::V4(v4));
            }
            let segments = v6.segments();
            // IPv4-compatible `::a.b.c.d` (deprecated, still parsed).
            if segments[..6].iter().all(|s| *s == 0) && !v6.is_loopback() && !v6.is_unspecified() {
                let [a, b] = segments[6].to_be_bytes();
                let [c, d] = segments[7].to_be_bytes();
                return is_local_address(IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)));
            }
            v6.is_loopback() || v6.is_unspecified() || (segments[0] & 0xffc0) == 0xfe80
        }
    }
}

/// An IPv4 address as `inet_aton` reads it: one to four parts, each decimal, octal (`0…`) or
/// hex (`0x…`), the last filling the remaining bytes (`127.1` is 127.0.0.1, `2130706433` too).
pub(super) fn parse_ipv4_like_a_resolver(host: &str) -> Option<std::net::Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut numbers = Vec::with_capacity(parts.len());
    for part in &parts {
        let lower = part.to_ascii_lowercase();
        let value = if let Some(hex) = lower.strip_prefix("0x") {
            if hex.is_empty() {
                0
            } else {
                u64::from_str_radix(hex, 16).ok()?
            }
        } else if lower.len() > 1 && lower.starts_with('0') {
            u64::from_str_radix(&lower[1..], 8).ok()?
        } else {
            if lower.is_empty() || !lower.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            lower.parse::<u64>().ok()?
        };
        numbers.push(value);
    }
    let (last, head) = numbers.split_last()?;
    let mut address: u64 = 0;
    for (i, n) in head.iter().enumerate() {
        if *n > 255 {
            return None;
        }
        address |= n << (24 - 8 * i);
    }
    let room = 32 - 8 * head.len();
    if room < 64 && *last >= (1u64 << room) {
        return None;
    }
    address |= last;
    u32::try_from(address).ok().map(std::net::Ipv4Addr::from)
}

/// `algorithm:hex` as the engine accepts it: sha256, sha384 or sha512 with exactly as many
/// lowercase hex digits (the reference grammar alone lets through digests every pull refuses).
fn valid_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let length = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == length
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
