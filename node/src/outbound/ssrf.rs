//! The guard against server-side request forgery for outbound calls a tenant
//! chooses the address of (webhooks). A URL must be `http(s)://`, carry no
//! user or password, and name a host; every address its host resolves to
//! must be public: not loopback, private, link-local, cloud metadata, shared
//! (CGNAT), unique-local, multicast, broadcast, documentation or
//! unspecified, in IPv4 or IPv6 (IPv4 inside IPv6 included). It is checked
//! when the URL is given and again, on the addresses then resolved, at each
//! delivery, since a name can point elsewhere later; the caller connects to
//! exactly the addresses checked. Tests may allow loopback, and loopback
//! only (`webhook_allow_loopback`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use actors::domain::webhook::{UrlRefused, parse_url};

/// Why a URL or address is refused; the text is safe to show the tenant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The URL's form (`actors::domain::webhook::parse_url`).
    #[error(transparent)]
    Form(#[from] UrlRefused),
    #[error("the host does not resolve")]
    Unresolved,
    #[error("the host resolves to a {0} address, which webhooks may not call")]
    Address(&'static str),
}

/// Parses `raw` as a URL a webhook may be sent to, before any lookup (the
/// domain's rule: `http(s)://`, a host, no credentials, at most 2,048
/// characters).
pub fn parse(raw: &str) -> Result<url::Url, Refused> {
    Ok(parse_url(raw)?)
}

/// What kind of address `ip` is, if it is not a public one.
pub fn forbidden_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => {
            // An IPv4 address written as IPv6 is judged as the IPv4 address.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_kind(v4);
            }
            v6_kind(v6)
        }
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let kind = if ip.is_loopback() {
        "loopback"
    } else if ip == Ipv4Addr::new(169, 254, 169, 254) {
        "cloud metadata"
    } else if ip.is_link_local() {
        "link-local"
    } else if ip.is_private() {
        "private"
    } else if a == 0 {
        "unspecified"
    } else if ip.is_broadcast() {
        "broadcast"
    } else if a >= 224 {
        "multicast or reserved"
    } else if a == 100 && (64..128).contains(&b) {
        "shared (CGNAT)"
    } else if a == 192 && b == 0 && c == 0 {
        "IETF protocol"
    } else if ip.is_documentation() {
        "documentation"
    } else if a == 198 && (b == 18 || b == 19) {
        "benchmarking"
    } else {
        return None;
    };
    Some(kind)
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let kind = if ip.is_loopback() {
        "loopback"
    } else if ip.is_unspecified() {
        "unspecified"
    } else if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        "cloud metadata"
    } else if ip.is_multicast() {
        "multicast"
    } else if (s[0] & 0xffc0) == 0xfe80 {
        "link-local"
    } else if (s[0] & 0xfe00) == 0xfc00 {
        "unique-local (private)"
    } else if (s[0] & 0xffc0) == 0xfec0 {
        "site-local"
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        "documentation"
    } else if s[0] == 0x0064 && s[1] == 0xff9b {
        // NAT64 and 6to4 embed an IPv4 address a gateway would reach.
        "NAT64"
    } else if s[0] == 0x2002 {
        "6to4"
    } else if s[..6].iter().all(|x| *x == 0) {
        // IPv4-compatible (deprecated) `::a.b.c.d`.
        "IPv4-compatible"
    } else {
        return None;
    };
    Some(kind)
}

/// Whether `ip` may be called: a public address, or, when the operator allows
/// it for tests, a loopback one.
pub fn allowed(ip: IpAddr, allow_loopback: bool) -> Result<(), Refused> {
    match forbidden_kind(ip) {
        None => Ok(()),
        Some("loopback") if allow_loopback => Ok(()),
        Some(kind) => Err(Refused::Address(kind)),
    }
}

/// How long a name may take to resolve.
const LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The addresses `name` resolves to (with `port`), within `LOOKUP_TIMEOUT`:
/// a resolver that never answers must not hold a request or a delivery.
pub async fn lookup(name: &str, port: u16) -> Result<Vec<SocketAddr>, Refused> {
    match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((name, port))).await {
        Ok(Ok(addrs)) => Ok(addrs.collect()),
        _ => Err(Refused::Unresolved),
    }
}

/// The addresses `url`'s host resolves to, every one of them allowed; the
/// caller connects to these and no others (a second lookup could answer
/// differently).
pub async fn resolve(url: &url::Url, allow_loopback: bool) -> Result<Vec<SocketAddr>, Refused> {
    let port = url.port_or_known_default().ok_or(Refused::Form(UrlRefused::NoHost))?;
    let addrs: Vec<SocketAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
        Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
        Some(url::Host::Domain(name)) => lookup(name, port).await?,
        None => return Err(Refused::Form(UrlRefused::NoHost)),
    };
    if addrs.is_empty() {
        return Err(Refused::Unresolved);
    }
    for a in &addrs {
        allowed(a.ip(), allow_loopback)?;
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_without_credentials_are_taken() {
        assert!(parse("https://hooks.example.com/canopy?x=1").is_ok());
        assert!(parse("http://hooks.example.com:8080/").is_ok());
        let long = format!("https://example.com/{}", "a".repeat(actors::domain::webhook::MAX_URL));
        for (raw, why) in [
            ("ftp://example.com/", Refused::Form(UrlRefused::Scheme)),
            ("file:///etc/passwd", Refused::Form(UrlRefused::Scheme)),
            ("gopher://example.com/", Refused::Form(UrlRefused::Scheme)),
            ("javascript:alert(1)", Refused::Form(UrlRefused::Scheme)),
            ("https://user:pw@example.com/", Refused::Form(UrlRefused::Credentials)),
            ("https://user@example.com/", Refused::Form(UrlRefused::Credentials)),
            ("not a url", Refused::Form(UrlRefused::NotAUrl)),
            ("", Refused::Form(UrlRefused::NotAUrl)),
            (long.as_str(), Refused::Form(UrlRefused::TooLong)),
        ] {
            assert_eq!(parse(raw).unwrap_err(), why, "{raw}");
        }
    }

    #[test]
    fn private_loopback_link_local_and_metadata_addresses_are_refused() {
        for bad in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "100.127.255.254",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.0.1",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.1",
            "198.18.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2002:a00:1::",
            "2001:db8::1",
            "::127.0.0.1",
            "fec0::1",
        ] {
            let ip: IpAddr = bad.parse().unwrap();
            assert!(allowed(ip, false).is_err(), "{bad} was allowed");
        }
        for good in ["93.184.216.34", "8.8.8.8", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert_eq!(allowed(good.parse().unwrap(), false), Ok(()), "{good}");
        }
    }

    #[test]
    fn allowing_loopback_allows_loopback_and_nothing_else() {
        assert!(allowed("127.0.0.1".parse().unwrap(), true).is_ok());
        assert!(allowed("::1".parse().unwrap(), true).is_ok());
        for still in ["10.0.0.1", "169.254.169.254", "192.168.0.1", "fc00::1", "0.0.0.0"] {
            assert!(allowed(still.parse().unwrap(), true).is_err(), "{still}");
        }
    }

    #[tokio::test]
    async fn a_name_is_judged_by_every_address_it_resolves_to() {
        let local = parse("http://localhost:9/hook").unwrap();
        assert_eq!(resolve(&local, false).await.unwrap_err(), Refused::Address("loopback"));
        assert!(resolve(&local, true).await.unwrap().iter().all(|a| a.ip().is_loopback() && a.port() == 9));
        let literal = parse("http://[::ffff:169.254.169.254]/").unwrap();
        assert_eq!(resolve(&literal, true).await.unwrap_err(), Refused::Address("cloud metadata"));
        let decimal = parse("http://2130706433/").unwrap();
        assert_eq!(resolve(&decimal, false).await.unwrap_err(), Refused::Address("loopback"), "127.0.0.1 in decimal");
        let unknown = parse("http://no-such-host.invalid/").unwrap();
        assert_eq!(resolve(&unknown, false).await.unwrap_err(), Refused::Unresolved);
    }
}
