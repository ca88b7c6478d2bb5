//! Server-side request forgery guard: webhook targets on loopback, private,
//! link-local (and similar non-public) addresses are refused unless
//! `--webhook-allow-private`. Checked when an endpoint is created and again
//! at every delivery on every address the name resolves to; the addresses
//! checked are the ones connected to, so a name that changes its answer
//! between check and connect gains nothing.

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
        kind: &'static str,
    },
    #[error("cannot resolve {host}: {message}")]
    Resolve { host: String, message: String },
}

/// Why an address is not public, or `None` when it is.
pub fn classify(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(a) => classify_v4(a),
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return classify_v4(v4);
            }
            classify_v6(a)
        }
    }
}

fn classify_v4(a: Ipv4Addr) -> Option<&'static str> {
    let [o0, o1, ..] = a.octets();
    if a.is_loopback() {
        Some("loopback")
    } else if a.is_private() || (o0 == 100 && (64..128).contains(&o1)) {
        Some("private")
    } else if a.is_link_local() {
        Some("link-local")
    } else if a.is_unspecified() || o0 == 0 {
        Some("unspecified")
    } else if a.is_broadcast() || a.is_multicast() || o0 >= 240 {
        Some("reserved")
    } else {
        None
    }
}

fn classify_v6(a: Ipv6Addr) -> Option<&'static str> {
    let first = a.segments()[0];
    if a.is_loopback() {
        Some("loopback")
    } else if a.is_unspecified() {
        Some("unspecified")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfec0 {
        Some("private")
    } else if a.is_multicast() {
        Some("reserved")
    } else if first == 0x0064 && a.segments()[1] == 0xff9b {
        // NAT64: the embedded IPv4 address decides.
        let s = a.segments();
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        classify_v4(v4)
    } else {
        None
    }
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
        classify(text.parse().unwrap())
    }

    #[test]
    fn classifies_addresses() {
        assert_eq!(kind("127.0.0.1"), Some("loopback"));
        assert_eq!(kind("127.1.2.3"), Some("loopback"));
        assert_eq!(kind("10.1.2.3"), Some("private"));
        assert_eq!(kind("172.16.0.1"), Some("private"));
        assert_eq!(kind("172.31.255.255"), Some("private"));
        assert_eq!(kind("192.168.1.1"), Some("private"));
        assert_eq!(kind("100.64.0.1"), Some("private"));
        assert_eq!(kind("169.254.169.254"), Some("link-local"));
        assert_eq!(kind("0.0.0.0"), Some("unspecified"));
        assert_eq!(kind("255.255.255.255"), Some("reserved"));
        assert_eq!(kind("::1"), Some("loopback"));
        assert_eq!(kind("::"), Some("unspecified"));
        assert_eq!(kind("fe80::1"), Some("link-local"));
        assert_eq!(kind("fd00::1"), Some("private"));
        assert_eq!(kind("::ffff:127.0.0.1"), Some("loopback"));
        assert_eq!(kind("::ffff:169.254.1.1"), Some("link-local"));
        assert_eq!(kind("64:ff9b::a00:1"), Some("private"));
        for public in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "1.1.1.1",
        ] {
            assert_eq!(kind(public), None, "{public}");
        }
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
