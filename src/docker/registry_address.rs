//! Where an image's registry resolves to, checked right before the pull: a name that only DNS
//! turns into this host's loopback or a link-local address (`127.0.0.1.nip.io`, a renter's own
//! domain pointing at `127.0.0.1` or `169.254.169.254`) is refused like those addresses written
//! out ([`check_registry_host`](crate::docker::spec::check_registry_host)). The engine treats a
//! registry resolving to loopback as an insecure (plain HTTP) one, so it would otherwise make
//! requests, for a renter, to services that listen only to the host itself.

use crate::docker::spec::{is_local_address, registry_of, DEFAULT_REGISTRY};
use std::net::{IpAddr, ToSocketAddrs};
use std::time::Duration;

/// The most the name lookup may take.
pub const LOOKUP_LIMIT: Duration = Duration::from_secs(5);

/// Why the registry may not be pulled from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryAddressError {
    /// It resolves to an address on this host.
    Local { registry: String, address: IpAddr },
    /// The lookup gave no answer in time.
    LookupTimedOut { registry: String },
}

impl std::fmt::Display for RegistryAddressError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryAddressError::Local { registry, address } => write!(
                f,
                "registry {registry} resolves to {address}, a loopback or link-local address; \
                 images are pulled only from registries outside this host"
            ),
            RegistryAddressError::LookupTimedOut { registry } => write!(
                f,
                "the name of registry {registry} could not be resolved within {}s",
                LOOKUP_LIMIT.as_secs()
            ),
        }
    }
}

impl std::error::Error for RegistryAddressError {}

/// Checks the registry of `image` with the system's resolver. A name that does not resolve is
/// let through (the pull fails on it the same way).
pub fn check(image: &str) -> Result<(), RegistryAddressError> {
    check_with(image, |host| {
        let host = host.to_string();
        let (tx, rx) = crossbeam_channel::bounded(1);
        // getaddrinfo has no timeout of its own: the lookup runs on a thread of its own and is
        // left behind if it takes too long.
        let spawned = std::thread::Builder::new()
            .name("registry-lookup".into())
            .spawn(move || {
                let addresses = (host.as_str(), 443)
                    .to_socket_addrs()
                    .map(|found| found.map(|a| a.ip()).collect::<Vec<_>>());
                let _ = tx.send(addresses);
            });
        if spawned.is_err() {
            return Lookup::TimedOut;
        }
        match rx.recv_timeout(LOOKUP_LIMIT) {
            Ok(Ok(addresses)) => Lookup::Found(addresses),
            Ok(Err(_)) => Lookup::NotFound,
            Err(_) => Lookup::TimedOut,
        }
    })
}

/// What a name lookup gave.
pub enum Lookup {
    Found(Vec<IpAddr>),
    NotFound,
    TimedOut,
}

/// [`check`] with the resolver given.
pub fn check_with(
    image: &str,
    resolve: impl FnOnce(&str) -> Lookup,
) -> Result<(), RegistryAddressError> {
    let registry = registry_of(image);
    if registry == DEFAULT_REGISTRY || registry.starts_with('[') {
        // Docker Hub, or an IPv6 literal (checked as written when the request was validated).
        return Ok(());
    }
    let host = registry
        .rsplit_once(':')
        .map_or(registry.as_str(), |(host, _)| host);
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    match resolve(host) {
        Lookup::Found(addresses) => match addresses.into_iter().find(|a| is_local_address(*a)) {
            Some(address) => Err(RegistryAddressError::Local { registry, address }),
            None => Ok(()),
        },
        Lookup::NotFound => Ok(()),
        Lookup::TimedOut => Err(RegistryAddressError::LookupTimedOut { registry }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(addresses: &[&str]) -> impl FnOnce(&str) -> Lookup {
        let addresses: Vec<IpAddr> = addresses.iter().map(|a| a.parse().unwrap()).collect();
        move |_| Lookup::Found(addresses)
    }

    #[test]
    fn a_name_resolving_to_this_host_is_refused() {
        for (image, address) in [
            ("127.0.0.1.nip.io:5000/x", "127.0.0.1"),
            ("evil.example.com/app:1", "169.254.169.254"),
            ("evil.example.com:443/app", "::1"),
        ] {
            let e = check_with(image, answer(&["203.0.113.7", address])).unwrap_err();
            assert!(
                matches!(&e, RegistryAddressError::Local { address: a, .. } if a.to_string() == address),
                "{image}: {e}"
            );
            assert!(e.to_string().contains("loopback or link-local"), "{e}");
        }
        assert_eq!(
            check_with("evil.example.com/app", |_| Lookup::TimedOut),
            Err(RegistryAddressError::LookupTimedOut {
                registry: "evil.example.com".into()
            })
        );
    }

    #[test]
    fn public_names_docker_hub_and_unknown_names_pass() {
        assert_eq!(
            check_with("ghcr.io/o/i:1", answer(&["140.82.112.33"])),
            Ok(())
        );
        assert_eq!(check_with("nope.invalid/x", |_| Lookup::NotFound), Ok(()));
        let never = |_: &str| -> Lookup { panic!("no lookup for Docker Hub or literals") };
        assert_eq!(check_with("busybox", never), Ok(()));
        assert_eq!(check_with("library/busybox:1", never), Ok(()));
        assert_eq!(check_with("10.0.0.5:5000/x", never), Ok(()));
        assert_eq!(check_with("[2001:db8::1]:5000/x", never), Ok(()));
    }

    #[test]
    fn the_system_resolver_is_asked() {
        // `localhost` comes from /etc/hosts (no network): the real lookup finds loopback.
        let e = check("localhost:5000/x").unwrap_err();
        assert!(matches!(e, RegistryAddressError::Local { .. }), "{e}");
    }
}
