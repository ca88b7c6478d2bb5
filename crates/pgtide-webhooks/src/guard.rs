//! Server-side request forgery guard: webhook targets on any address of the
//! IANA special-purpose registries (IPv4 and IPv6: loopback, private-use,
//! shared, link-local, documentation, benchmarking, reserved, …) or on a
//! multicast address are refused unless `--webhook-allow-private`. Addresses
//! that carry an IPv4 address (IPv4-mapped, IPv4-compatible, 6to4, NAT64,
//! Teredo) are judged by what they carry as well. Checked when an endpoint is
//! created and again at every delivery on every address the name resolves
//! to; the addresses checked are the ones connected to, so a name that
//! changes its answer between check and connect gains nothing.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

#[derive(Debug, Clone, thiserror::Error)]
pub enum GuardError {
    #[error("{0}")]
    BadUrl(String),
    #[error(
        "{host} is a {kind} address ({addr}); webhooks to it are refused unless pgtide runs with --webhook-allow-private"
    )]
    Private {
        host: String,
        addr: IpAddr,
        kind: NonPublic,
    },
    #[error("cannot resolve {host}: {message}")]
    Resolve { host: String, message: String },
}

/// A registry range: `bits` of `base` are the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range<T> {
    pub base: T,
    pub bits: u8,
    pub name: &'static str,
}

const fn v4(o: [u8; 4], bits: u8, name: &'static str) -> Range<u32> {
    Range {
        base: u32::from_be_bytes(o),
        bits,
        name,
    }
}

const fn v6(s: [u16; 8], bits: u8, name: &'static str) -> Range<u128> {
    let mut base = 0u128;
    let mut i = 0;
    while i < 8 {
        base = (base << 16) | s[i] as u128;
        i += 1;
    }
    Range { base, bits, name }
}

/// The IANA IPv4 Special-Purpose Address Registry, every entry (the few
/// marked globally reachable, anycast services, are no webhook receivers
/// either), plus multicast. Narrower entries come first so they name the
/// address.
pub const IPV4_SPECIAL: &[Range<u32>] = &[
    v4([0, 0, 0, 0], 8, "\"this network\""),
    v4([10, 0, 0, 0], 8, "private-use"),
    v4([100, 64, 0, 0], 10, "shared (carrier-grade NAT)"),
    v4([127, 0, 0, 0], 8, "loopback"),
    v4([169, 254, 0, 0], 16, "link-local"),
    v4([172, 16, 0, 0], 12, "private-use"),
    v4([192, 0, 0, 0], 29, "IPv4 service continuity"),
    v4([192, 0, 0, 170], 31, "NAT64/DNS64 discovery"),
    v4([192, 0, 0, 0], 24, "IETF protocol assignment"),
    v4([192, 0, 2, 0], 24, "documentation (TEST-NET-1)"),
    v4([192, 31, 196, 0], 24, "AS112"),
    v4([192, 52, 193, 0], 24, "AMT"),
    v4([192, 88, 99, 0], 24, "6to4 relay anycast (deprecated)"),
    v4([192, 168, 0, 0], 16, "private-use"),
    v4([192, 175, 48, 0], 24, "AS112 direct delegation"),
    v4([198, 18, 0, 0], 15, "benchmarking"),
    v4([198, 51, 100, 0], 24, "documentation (TEST-NET-2)"),
    v4([203, 0, 113, 0], 24, "documentation (TEST-NET-3)"),
    v4([224, 0, 0, 0], 4, "multicast"),
    v4([255, 255, 255, 255], 32, "limited broadcast"),
    v4([240, 0, 0, 0], 4, "reserved"),
];

/// The IANA IPv6 Special-Purpose Address Registry, every entry, plus
/// multicast and the deprecated site-local range. The forms that carry an
/// IPv4 address are also judged by it (see [`classify`]).
pub const IPV6_SPECIAL: &[Range<u128>] = &[
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128, "unspecified"),
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128, "loopback"),
    v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96, "IPv4-mapped"),
    v6([0, 0, 0, 0, 0, 0, 0, 0], 96, "IPv4-compatible (deprecated)"),
    v6(
        [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
        48,
        "local-use IPv4/IPv6 translation",
    ),
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "discard-only"),
    v6([0x100, 0, 0, 1, 0, 0, 0, 0], 64, "dummy"),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, "Teredo"),
    v6([0x2001, 0x2, 0, 0, 0, 0, 0, 0], 48, "benchmarking"),
    v6(
        [0x2001, 0, 0, 0, 0, 0, 0, 0],
        23,
        "IETF protocol assignment",
    ),
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, "documentation"),
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, "6to4"),
    v6(
        [0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0],
        48,
        "AS112 direct delegation",
    ),
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "documentation"),
    v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16, "segment routing SID"),
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "unique-local"),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "link-local"),
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "site-local (deprecated)"),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "multicast"),
];

fn find<T>(table: &'static [Range<T>], addr: T, width: u32) -> Option<&'static Range<T>>
where
    T: Copy + std::ops::BitXor<Output = T> + std::ops::Shr<u32, Output = T> + PartialEq + Default,
{
    table.iter().find(|r| {
        let bits = u32::from(r.bits);
        bits == 0 || (bits <= width && ((addr ^ r.base) >> (width - bits)) == T::default())
    })
}

/// The IPv4 address an IPv6 address carries, and the form it is in:
/// IPv4-mapped and IPv4-compatible (last 32 bits), NAT64 `64:ff9b::/96`
/// (last 32 bits), 6to4 `2002::/16` (bits 16–47), Teredo `2001::/32` (the
/// client, last 32 bits inverted).
pub fn embedded_ipv4(a: Ipv6Addr) -> Option<(&'static str, Ipv4Addr)> {
    let bits = u128::from(a);
    let s = a.segments();
    let low = Ipv4Addr::from(bits as u32);
    if bits >> 32 == 0xffff {
        Some(("IPv4-mapped", low))
    } else if bits >> 32 == 0 && bits > 1 {
        Some(("IPv4-compatible", low))
    } else if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        Some(("NAT64", low))
    } else if s[0] == 0x2002 {
        Some(("6to4", Ipv4Addr::from((bits >> 80) as u32)))
    } else if s[0] == 0x2001 && s[1] == 0 {
        Some(("Teredo", Ipv4Addr::from(!(bits as u32))))
    } else {
        None
    }
}

/// Why an address is not a public webhook target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonPublic {
    V4(&'static Range<u32>),
    V6(&'static Range<u128>),
    /// An IPv6 form carrying an IPv4 address that is itself not public.
    Carries {
        form: &'static str,
        inner: Ipv4Addr,
        range: &'static Range<u32>,
    },
    /// IPv6 outside `2000::/3`, the only range IANA allocates unicast from.
    UnallocatedV6,
}

impl NonPublic {
    /// The registry name of the range, e.g. `loopback`.
    pub fn name(&self) -> &'static str {
        match self {
            NonPublic::V4(r) | NonPublic::Carries { range: r, .. } => r.name,
            NonPublic::V6(r) => r.name,
            NonPublic::UnallocatedV6 => "unallocated",
        }
    }
}

impl fmt::Display for NonPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NonPublic::V4(r) => write!(f, "{} ({}/{})", r.name, Ipv4Addr::from(r.base), r.bits),
            NonPublic::V6(r) => write!(f, "{} ({}/{})", r.name, Ipv6Addr::from(r.base), r.bits),
            NonPublic::Carries { form, inner, range } => write!(
                f,
                "{} ({}/{}, as {form} {inner})",
                range.name,
                Ipv4Addr::from(range.base),
                range.bits
            ),
            NonPublic::UnallocatedV6 => f.write_str("unallocated (outside 2000::/3)"),
        }
    }
}

/// Why an address is not public, or `None` when it is. IPv4-mapped
/// addresses and the well-known NAT64 prefix `64:ff9b::/96` reach the IPv4
/// address they carry, so they are judged as that address. The other forms
/// that carry one (IPv4-compatible, 6to4, Teredo) are refused whatever they
/// carry, since their own prefix is special-purpose, and are named by the
/// IPv4 range when what they carry is not public either.
pub fn classify(addr: IpAddr) -> Option<NonPublic> {
    let a = match addr {
        IpAddr::V4(a) => return classify_v4(a).map(NonPublic::V4),
        IpAddr::V6(a) => a,
    };
    let embedded = embedded_ipv4(a);
    if let Some((form @ ("IPv4-mapped" | "NAT64"), inner)) = embedded {
        return classify_v4(inner).map(|range| NonPublic::Carries { form, inner, range });
    }
    if let Some((form, inner)) = embedded
        && let Some(range) = classify_v4(inner)
    {
        return Some(NonPublic::Carries { form, inner, range });
    }
    let bits = u128::from(a);
    if let Some(range) = find(IPV6_SPECIAL, bits, 128) {
        return Some(NonPublic::V6(range));
    }
    if bits >> 125 != 0b001 {
        return Some(NonPublic::UnallocatedV6);
    }
    None
}

fn classify_v4(a: Ipv4Addr) -> Option<&'static Range<u32>> {
    find(IPV4_SPECIAL, u32::from(a), 32)
}

fn check_addr(host: &str, addr: IpAddr, allow_private: bool) -> Result<(), GuardError> {
    match classify(addr) {
        Some(kind) if !allow_private => Err(GuardError::Private {
            host: host.to_owned(),
            addr,
            kind,
        }),
        _ => Ok(()),
    }
}

/// A webhook URL: absolute `http` or `https` with a host.
pub fn parse_url(text: &str) -> Result<Url, GuardError> {
    let url = Url::parse(text).map_err(|e| GuardError::BadUrl(format!("url {text:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(GuardError::BadUrl(format!(
            "url {text:?}: only http and https targets are allowed"
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(GuardError::BadUrl(format!("url {text:?} has no host")));
    }
    Ok(url)
}

/// The address of an IP-literal URL host, which skips name resolution.
fn literal(url: &Url) -> Option<IpAddr> {
    // IPv6 hosts print in brackets; a domain never parses as an address.
    url.host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Checks a URL at create time: its literal address, or every address its
/// name resolves to now. A name that does not resolve yet is let through;
/// the delivery checks again.
pub async fn check_url(text: &str, allow_private: bool) -> Result<Url, GuardError> {
    let url = parse_url(text)?;
    let host = url.host_str().unwrap_or_default().to_owned();
    if let Some(addr) = literal(&url) {
        check_addr(&host, addr, allow_private)?;
        return Ok(url);
    }
    if !allow_private {
        let port = url.port_or_known_default().unwrap_or(80);
        if let Ok(addrs) = tokio::net::lookup_host((host.as_str(), port)).await {
            for a in addrs {
                check_addr(&host, a.ip(), allow_private)?;
            }
        }
    }
    Ok(url)
}

/// Checks the literal address of a URL about to be sent to (names are
/// checked by [`GuardedResolver`]).
pub fn check_literal(url: &Url, allow_private: bool) -> Result<(), GuardError> {
    match literal(url) {
        Some(addr) => check_addr(url.host_str().unwrap_or_default(), addr, allow_private),
        None => Ok(()),
    }
}

/// The HTTP client's resolver: resolves with the system resolver and fails
/// when any address is refused, so a name with one public and one private
/// answer is refused as a whole.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl GuardedResolver {
    pub fn shared(allow_private: bool) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver { allow_private })
    }
}

/// Resolves `host` and checks every answer.
pub async fn resolve_checked(
    host: &str,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, GuardError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| GuardError::Resolve {
            host: host.to_owned(),
            message: e.to_string(),
        })?
        .collect();
    for a in &addrs {
        check_addr(host, a.ip(), allow_private)?;
    }
    Ok(addrs)
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = resolve_checked(&host, allow_private).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(text: &str) -> Option<&'static str> {
        classify(text.parse().unwrap()).map(|k| k.name())
    }

    fn refused(text: &str) -> bool {
        kind(text).is_some()
    }

    /// Every entry of the IANA IPv4 special-purpose registry (and multicast)
    /// is refused, at its first and last address, and named.
    #[test]
    fn every_ipv4_registry_range_is_refused() {
        for (first, last, name) in [
            ("0.0.0.0", "0.255.255.255", "\"this network\""),
            ("10.0.0.0", "10.255.255.255", "private-use"),
            (
                "100.64.0.0",
                "100.127.255.255",
                "shared (carrier-grade NAT)",
            ),
            ("127.0.0.0", "127.255.255.255", "loopback"),
            ("169.254.0.0", "169.254.255.255", "link-local"),
            ("172.16.0.0", "172.31.255.255", "private-use"),
            ("192.0.0.0", "192.0.0.7", "IPv4 service continuity"),
            ("192.0.0.8", "192.0.0.255", "IETF protocol assignment"),
            ("192.0.0.170", "192.0.0.171", "NAT64/DNS64 discovery"),
            ("192.0.2.0", "192.0.2.255", "documentation (TEST-NET-1)"),
            ("192.31.196.0", "192.31.196.255", "AS112"),
            ("192.52.193.0", "192.52.193.255", "AMT"),
            (
                "192.88.99.0",
                "192.88.99.255",
                "6to4 relay anycast (deprecated)",
            ),
            ("192.168.0.0", "192.168.255.255", "private-use"),
            ("192.175.48.0", "192.175.48.255", "AS112 direct delegation"),
            ("198.18.0.0", "198.19.255.255", "benchmarking"),
            (
                "198.51.100.0",
                "198.51.100.255",
                "documentation (TEST-NET-2)",
            ),
            ("203.0.113.0", "203.0.113.255", "documentation (TEST-NET-3)"),
            ("224.0.0.0", "239.255.255.255", "multicast"),
            ("240.0.0.0", "255.255.255.254", "reserved"),
            ("255.255.255.255", "255.255.255.255", "limited broadcast"),
        ] {
            assert_eq!(kind(first), Some(name), "{first}");
            assert_eq!(kind(last), Some(name), "{last}");
        }
    }

    /// Every entry of the IANA IPv6 special-purpose registry (and multicast,
    /// site-local, everything outside 2000::/3) is refused, at its first and
    /// last address, and named.
    #[test]
    fn every_ipv6_registry_range_is_refused() {
        for (first, last, name) in [
            ("::", "::", "unspecified"),
            ("::1", "::1", "loopback"),
            (
                "::8.8.8.8",
                "::223.255.255.255",
                "IPv4-compatible (deprecated)",
            ),
            (
                "64:ff9b:1::",
                "64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
                "local-use IPv4/IPv6 translation",
            ),
            ("100::", "100::ffff:ffff:ffff:ffff", "discard-only"),
            ("100:0:0:1::", "100::1:ffff:ffff:ffff:ffff", "dummy"),
            (
                "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
                "2001:0:ffff:ffff:ffff:ffff:f7f7:f7f7",
                "Teredo",
            ),
            (
                "2001:1::1",
                "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff",
                "IETF protocol assignment",
            ),
            (
                "2001:2::",
                "2001:2:0:ffff:ffff:ffff:ffff:ffff",
                "benchmarking",
            ),
            (
                "2001:db8::",
                "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
                "documentation",
            ),
            (
                "3fff::",
                "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff",
                "documentation",
            ),
            (
                "2002:808:808::",
                "2002:dfff:ffff:ffff:ffff:ffff:ffff:ffff",
                "6to4",
            ),
            (
                "2620:4f:8000::",
                "2620:4f:8000:ffff:ffff:ffff:ffff:ffff",
                "AS112 direct delegation",
            ),
            (
                "5f00::",
                "5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "segment routing SID",
            ),
            (
                "fc00::",
                "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "unique-local",
            ),
            (
                "fe80::",
                "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "link-local",
            ),
            (
                "fec0::",
                "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "site-local (deprecated)",
            ),
            (
                "ff00::",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "multicast",
            ),
            (
                "4000::",
                "fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "unallocated",
            ),
            (
                "1::",
                "1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "unallocated",
            ),
        ] {
            assert_eq!(kind(first), Some(name), "{first}");
            assert_eq!(kind(last), Some(name), "{last}");
        }
    }

    /// IPv6 forms carrying an IPv4 address are judged by it: mapped,
    /// compatible, NAT64 (well-known), 6to4 and Teredo.
    #[test]
    fn embedded_ipv4_is_unwrapped() {
        for (text, name) in [
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:10.0.0.1", "private-use"),
            ("::127.0.0.1", "loopback"),
            ("::10.1.2.3", "private-use"),
            ("64:ff9b::127.0.0.1", "loopback"),
            ("64:ff9b::a00:1", "private-use"),
            ("64:ff9b::198.18.0.1", "benchmarking"),
            ("2002:7f00:1::", "loopback"),
            ("2002:a9fe:a9fe::1", "link-local"),
            ("2002:c000:201::", "documentation (TEST-NET-1)"),
            // Teredo: the client address is the last 32 bits, inverted.
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"),
        ] {
            assert_eq!(kind(text), Some(name), "{text}");
        }
        let carried = classify("2002:7f00:1::".parse().unwrap()).unwrap();
        assert_eq!(
            carried.to_string(),
            "loopback (127.0.0.0/8, as 6to4 127.0.0.1)"
        );
        assert_eq!(
            classify("198.18.0.1".parse().unwrap()).unwrap().to_string(),
            "benchmarking (198.18.0.0/15)"
        );
        // Mapped and NAT64 forms of a public address are that address.
        assert_eq!(kind("::ffff:8.8.8.8"), None);
        assert_eq!(kind("64:ff9b::8.8.8.8"), None);
        // 6to4, Teredo and IPv4-compatible are refused whatever they carry.
        assert_eq!(kind("2002:808:808::1"), Some("6to4"));
        assert_eq!(kind("2001:0:4136:e378:8000:63bf:f7f7:f7f7"), Some("Teredo"));
        assert_eq!(kind("::8.8.8.8"), Some("IPv4-compatible (deprecated)"));
    }

    /// Just outside each range, addresses are public.
    #[test]
    fn neighbours_of_the_ranges_are_public() {
        for public in [
            "1.0.0.0",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.0",
            "192.0.3.0",
            "192.88.98.255",
            "192.88.100.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "198.51.99.255",
            "198.51.101.0",
            "203.0.112.255",
            "203.0.114.0",
            "223.255.255.255",
            "8.8.8.8",
            "1.1.1.1",
            "2000::1",
            "2001:200::1",
            "2001:db7:ffff::1",
            "2001:db9::1",
            "2003::1",
            "2606:4700::1111",
            "2620:4f:7fff::1",
            "3ffe::1",
            "3fff:1000::1",
            "64:ff9b::1.1.1.1",
        ] {
            assert_eq!(kind(public), None, "{public}");
        }
        assert!(refused("::ffff:0.0.0.0"));
    }

    #[test]
    fn urls_must_be_http_with_a_host() {
        assert!(parse_url("ftp://example.com/").is_err());
        assert!(parse_url("not a url").is_err());
        assert!(parse_url("https://example.com/hook").is_ok());
    }

    #[tokio::test]
    async fn literal_private_targets_are_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1:9/x",
            "http://[::1]/x",
            "http://169.254.169.254/latest",
            "http://10.0.0.5/",
        ] {
            assert!(matches!(
                check_url(url, false).await,
                Err(GuardError::Private { .. })
            ));
            assert!(check_url(url, true).await.is_ok());
        }
    }

    /// `localhost` resolves to loopback: refused after resolution, both at
    /// create and by the delivery resolver.
    #[tokio::test]
    async fn names_are_checked_after_resolution() {
        assert!(matches!(
            check_url("http://localhost:9/x", false).await,
            Err(GuardError::Private { .. })
        ));
        assert!(matches!(
            resolve_checked("localhost", false).await,
            Err(GuardError::Private { .. })
        ));
        assert!(!resolve_checked("localhost", true).await.unwrap().is_empty());
    }
}
