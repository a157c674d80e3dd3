//! SSRF guard for the URL-import service.
//!
//! Every URL a user asks us to import is checked here *before any connection
//! is made*, and this module itself never does I/O (no DNS, no sockets), so a
//! refusal never touches the network.
//!
//! How the caller must use it:
//!
//! 1. [`check_url`] parses the URL and refuses anything that is not plain
//!    `http`/`https`, that carries credentials (`user:pass@`), or whose host is
//!    an IP literal in a forbidden range (see [`forbidden`]). The WHATWG parser
//!    of the `url` crate has already normalised the odd IPv4 spellings
//!    (`2130706433`, `0x7f000001`, `017700000001`, `127.1`, `0177.0.0.1`) to
//!    dotted quads, so they are judged like `127.0.0.1`. The names
//!    `localhost` and `*.localhost` (with or without trailing dots) are refused
//!    as loopback without resolving them.
//! 2. For any other host name the caller resolves the name itself and passes
//!    *every* resolved address to [`check_ip`], dropping the refused ones.
//! 3. The caller connects only to an address that passed [`check_ip`] (never
//!    re-resolving the name for the connection, which would reopen the door to
//!    DNS rebinding).
//! 4. Redirects are not followed blindly: every `Location` is a new URL and
//!    goes through steps 1–3 again, hop by hop.
//!
//! Operators can let forbidden addresses through with an [`Allow`] list of
//! IPs and CIDR networks (tests, for example, allow `127.0.0.0/8`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// Why a URL or address is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The scheme is not `http` or `https` (holds the scheme, lowercased).
    Scheme(String),
    /// The URL is unusable: unparseable, no host, credentials present, port 0.
    Url(String),
    /// The address is forbidden; the `&str` is its category (see [`forbidden`]).
    /// Host names `localhost`/`*.localhost` are reported as `127.0.0.1`.
    Address(IpAddr, &'static str),
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Scheme(scheme) => write!(
                f,
                "scheme {scheme:?} is not allowed (only http and https): refused"
            ),
            Refused::Url(why) => write!(f, "unusable URL ({why}): refused"),
            Refused::Address(ip, category) => match classify(*ip) {
                Some(Verdict {
                    category: found,
                    via: Some((kind, v4)),
                }) if found == *category => write!(
                    f,
                    "address {ip} embeds {kind} address {v4}, which is {}: refused",
                    describe(category, true)
                ),
                _ => write!(
                    f,
                    "address {ip} is {}: refused",
                    describe(category, ip.is_ipv4())
                ),
            },
        }
    }
}

impl std::error::Error for Refused {}

/// An operator allowlist: exact IPs and CIDR networks that are let through even
/// though [`forbidden`] refuses them by default.
///
/// Entries look like `"127.0.0.1"`, `"10.0.0.0/8"`, `"::1"`, `"fd00::/8"`.
/// An IPv4 entry also covers the IPv4-mapped IPv6 form of its addresses
/// (`::ffff:127.0.0.1`), which reaches the same host; NAT64, 6to4 and Teredo
/// addresses must be allowed by their IPv6 form. Cloud metadata addresses
/// (category `"metadata"`) are only let through by an entry naming exactly
/// that address, never by a wider network such as `169.254.0.0/16`.
#[derive(Debug, Clone, Default)]
pub struct Allow {
    nets: Vec<Net>,
}

impl Allow {
    /// Parses allowlist entries. Blank entries are skipped (handy for a
    /// comma-separated setting that is empty); surrounding whitespace is
    /// ignored. Refused: anything that is not an IP or `IP/prefix`, a prefix
    /// longer than the address (`/33`, `/129`), and a network with host bits
    /// set (`10.0.0.1/8`), which is more likely a typo than a wish.
    pub fn parse(entries: &[String]) -> Result<Allow, String> {
        let nets = entries
            .iter()
            .map(|entry| entry.trim())
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                Net::parse(entry).map_err(|why| format!("allowlist entry {entry:?}: {why}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Allow { nets })
    }

    /// Whether some entry covers `ip` (or, for an IPv4-mapped address, the
    /// IPv4 address it maps).
    pub fn permits(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        self.nets
            .iter()
            .any(|net| net.contains(ip) || net.contains(canonical))
    }

    /// Whether some single-address entry is exactly `ip` (or its IPv4 form).
    fn names(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        self.nets
            .iter()
            .any(|net| net.is_single() && (net.contains(ip) || net.contains(canonical)))
    }
}

/// The category if `ip` must never be fetched from (by default), else `None`.
///
/// IPv4 categories: `"unspecified"` (0.0.0.0), `"this-network"` (rest of
/// 0.0.0.0/8), `"private"` (10/8, 172.16/12, 192.168/16), `"loopback"`
/// (127/8), `"link-local"` (169.254/16), `"metadata"` (169.254.169.254,
/// 169.254.170.2, 169.254.170.23, 100.100.100.200, 192.0.0.192: cloud
/// metadata and credential endpoints), `"cgnat"` (100.64/10),
/// `"ietf-protocol"` (192.0.0/24), `"documentation"` (192.0.2/24,
/// 198.51.100/24, 203.0.113/24), `"benchmarking"` (198.18/15), `"6to4-relay"`
/// (192.88.99/24), `"multicast"` (224/4), `"reserved"` (240/4), `"broadcast"`
/// (255.255.255.255).
///
/// IPv6 categories: `"unspecified"` (::), `"loopback"` (::1), `"private"`
/// (unique-local fc00::/7), `"metadata"` (fd00:ec2::254, fd00:ec2::23),
/// `"link-local"` (fe80::/10), `"site-local"` (fec0::/10, deprecated),
/// `"multicast"` (ff00::/8), `"discard"` (100::/64), `"benchmarking"`
/// (2001:2::/48), `"ietf-protocol"` (the rest of 2001::/23 outside Teredo),
/// `"documentation"` (2001:db8::/32, 3fff::/20), `"ipv4-compatible"` (see
/// below), and `"reserved"` for everything outside global unicast 2000::/3
/// that no rule below lets through.
///
/// IPv6 addresses embedding an IPv4 address are judged by that address and
/// get its category (so `::ffff:127.0.0.1` is `"loopback"`):
/// - IPv4-mapped `::ffff:a.b.c.d`: exactly the IPv4 host; public is allowed.
/// - IPv4-compatible `::a.b.c.d` (deprecated, any ::/96 address other than ::
///   and ::1): the embedded category if it is forbidden, else
///   `"ipv4-compatible"`: the form is obsolete and never needed, so it is
///   refused outright.
/// - NAT64 well-known prefix 64:ff9b::/96: the last 32 bits.
/// - NAT64 local-use 64:ff9b:1::/48: the operator may embed the IPv4 address
///   at any RFC 6052 layout (/48, /56, /64, /96); every layout whose fixed
///   zero bits are zero is tried and the address is refused if any reading is
///   forbidden, so an ambiguous address errs on the side of refusal.
/// - 6to4 2002::/16: bits 16..48.
/// - Teredo 2001::/32: the client (last 32 bits XOR 0xffffffff), which is
///   where the traffic ends up, and, to be conservative, the server (bits
///   32..64) too; refused if either is forbidden, allowed otherwise.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    classify(ip).map(|verdict| verdict.category)
}

/// Checks `ip` against [`forbidden`] and the allowlist: `Ok` if it is not
/// forbidden or the allowlist permits it (metadata addresses only if named
/// exactly, see [`Allow`]).
pub fn check_ip(ip: IpAddr, allow: &Allow) -> Result<(), Refused> {
    match forbidden(ip) {
        None => Ok(()),
        Some(METADATA) if allow.names(ip) => Ok(()),
        Some(category) if category != METADATA && allow.permits(ip) => Ok(()),
        Some(category) => Err(Refused::Address(ip, category)),
    }
}

/// Parses and checks a URL before any connection.
///
/// The scheme must be `http` or `https`; a host is required; credentials
/// (`user:pass@`) and port 0 are refused. An IP-literal host is checked with
/// [`check_ip`]. `localhost`, `*.localhost` and their trailing-dot forms are
/// refused as loopback (reported as 127.0.0.1) unless the allowlist permits
/// 127.0.0.1. Any other host name is returned unresolved: the caller resolves
/// it, checks each address with [`check_ip`] and connects only to a checked
/// address. Other trailing-dot names (`example.com.`) are ordinary fully
/// qualified names and are left to that resolved-address check.
pub fn check_url(raw: &str, allow: &Allow) -> Result<Url, Refused> {
    let url = Url::parse(raw).map_err(|err| Refused::Url(err.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refused::Scheme(url.scheme().to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refused::Url(
            "credentials (user:pass@) are not allowed".into(),
        ));
    }
    if url.port() == Some(0) {
        return Err(Refused::Url("port 0 is not allowed".into()));
    }
    match url.host() {
        None => Err(Refused::Url("no host".into())),
        Some(Host::Ipv4(v4)) => check_ip(IpAddr::V4(v4), allow),
        Some(Host::Ipv6(v6)) => check_ip(IpAddr::V6(v6), allow),
        Some(Host::Domain(name)) => check_name(name, allow),
    }?;
    Ok(url)
}

/// Checks a host name without resolving it.
fn check_name(name: &str, allow: &Allow) -> Result<(), Refused> {
    let bare = name.trim_end_matches('.').to_ascii_lowercase();
    if bare.is_empty() {
        return Err(Refused::Url("empty host name".into()));
    }
    // The WHATWG parser never leaves an IP address as a domain; be safe anyway.
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return check_ip(ip, allow);
    }
    if bare == "localhost" || bare.ends_with(".localhost") {
        return check_ip(IpAddr::V4(Ipv4Addr::LOCALHOST), allow);
    }
    Ok(())
}

const UNSPECIFIED: &str = "unspecified";
const THIS_NETWORK: &str = "this-network";
const LOOPBACK: &str = "loopback";
const PRIVATE: &str = "private";
const LINK_LOCAL: &str = "link-local";
const METADATA: &str = "metadata";
const CGNAT: &str = "cgnat";
const IETF_PROTOCOL: &str = "ietf-protocol";
const DOCUMENTATION: &str = "documentation";
const BENCHMARKING: &str = "benchmarking";
const SIX_TO_FOUR_RELAY: &str = "6to4-relay";
const MULTICAST: &str = "multicast";
const RESERVED: &str = "reserved";
const BROADCAST: &str = "broadcast";
const SITE_LOCAL: &str = "site-local";
const DISCARD: &str = "discard";
const IPV4_COMPATIBLE: &str = "ipv4-compatible";

/// Forbidden IPv4 ranges; the first match wins, so exact addresses come first.
const V4_RANGES: &[(Ipv4Addr, u8, &str)] = &[
    (Ipv4Addr::new(255, 255, 255, 255), 32, BROADCAST),
    (Ipv4Addr::new(169, 254, 169, 254), 32, METADATA),
    (Ipv4Addr::new(169, 254, 170, 2), 32, METADATA),
    (Ipv4Addr::new(169, 254, 170, 23), 32, METADATA),
    (Ipv4Addr::new(100, 100, 100, 200), 32, METADATA),
    (Ipv4Addr::new(192, 0, 0, 192), 32, METADATA),
    (Ipv4Addr::new(0, 0, 0, 0), 32, UNSPECIFIED),
    (Ipv4Addr::new(0, 0, 0, 0), 8, THIS_NETWORK),
    (Ipv4Addr::new(10, 0, 0, 0), 8, PRIVATE),
    (Ipv4Addr::new(172, 16, 0, 0), 12, PRIVATE),
    (Ipv4Addr::new(192, 168, 0, 0), 16, PRIVATE),
    (Ipv4Addr::new(127, 0, 0, 0), 8, LOOPBACK),
    (Ipv4Addr::new(169, 254, 0, 0), 16, LINK_LOCAL),
    (Ipv4Addr::new(100, 64, 0, 0), 10, CGNAT),
    (Ipv4Addr::new(192, 0, 0, 0), 24, IETF_PROTOCOL),
    (Ipv4Addr::new(192, 0, 2, 0), 24, DOCUMENTATION),
    (Ipv4Addr::new(198, 51, 100, 0), 24, DOCUMENTATION),
    (Ipv4Addr::new(203, 0, 113, 0), 24, DOCUMENTATION),
    (Ipv4Addr::new(198, 18, 0, 0), 15, BENCHMARKING),
    (Ipv4Addr::new(192, 88, 99, 0), 24, SIX_TO_FOUR_RELAY),
    (Ipv4Addr::new(224, 0, 0, 0), 4, MULTICAST),
    (Ipv4Addr::new(240, 0, 0, 0), 4, RESERVED),
];

/// Forbidden IPv6 ranges that embed no IPv4 address; first match wins.
const V6_RANGES: &[(Ipv6Addr, u8, &str)] = &[
    (
        Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
        128,
        METADATA,
    ),
    (
        Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23),
        128,
        METADATA,
    ),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, PRIVATE),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, LINK_LOCAL),
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, SITE_LOCAL),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, MULTICAST),
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64, DISCARD),
    (
        Ipv6Addr::new(0x2001, 0x2, 0, 0, 0, 0, 0, 0),
        48,
        BENCHMARKING,
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        IETF_PROTOCOL,
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        DOCUMENTATION,
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        DOCUMENTATION,
    ),
];

const NAT64_WELL_KNOWN: Ipv6Addr = Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0);
const NAT64_LOCAL_USE: Ipv6Addr = Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0);
const TEREDO: Ipv6Addr = Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0);
const SIX_TO_FOUR: Ipv6Addr = Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0);
const GLOBAL_UNICAST: Ipv6Addr = Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0);

/// A category, and for an IPv6 address judged by an embedded IPv4 address,
/// the kind of embedding and that address.
struct Verdict {
    category: &'static str,
    via: Option<(&'static str, Ipv4Addr)>,
}

fn classify(ip: IpAddr) -> Option<Verdict> {
    match ip {
        IpAddr::V4(v4) => direct(classify_v4(v4)),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn direct(category: Option<&'static str>) -> Option<Verdict> {
    category.map(|category| Verdict {
        category,
        via: None,
    })
}

fn embedded(kind: &'static str, v4: Ipv4Addr) -> Option<Verdict> {
    classify_v4(v4).map(|category| Verdict {
        category,
        via: Some((kind, v4)),
    })
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let bits = ip.to_bits();
    V4_RANGES
        .iter()
        .find(|(net, len, _)| bits & mask4(*len) == net.to_bits())
        .map(|(_, _, category)| *category)
}

fn classify_v6(ip: Ipv6Addr) -> Option<Verdict> {
    let bits = ip.to_bits();
    let o = ip.octets();
    let in_net = |net: Ipv6Addr, len: u8| bits & mask6(len) == net.to_bits();

    if let Some(v4) = ip.to_ipv4_mapped() {
        return embedded("IPv4-mapped", v4);
    }
    if ip.is_unspecified() {
        return direct(Some(UNSPECIFIED));
    }
    if ip.is_loopback() {
        return direct(Some(LOOPBACK));
    }
    if bits >> 32 == 0 {
        let v4 = quad(o[12], o[13], o[14], o[15]);
        return embedded("IPv4-compatible", v4).or(direct(Some(IPV4_COMPATIBLE)));
    }
    if in_net(NAT64_WELL_KNOWN, 96) {
        return embedded("NAT64", quad(o[12], o[13], o[14], o[15]));
    }
    if in_net(NAT64_LOCAL_USE, 48) {
        return nat64_local_use(&o);
    }
    if in_net(TEREDO, 32) {
        let server = quad(o[4], o[5], o[6], o[7]);
        let client = quad(!o[12], !o[13], !o[14], !o[15]);
        return embedded("Teredo client", client).or_else(|| embedded("Teredo server", server));
    }
    if in_net(SIX_TO_FOUR, 16) {
        return embedded("6to4", quad(o[2], o[3], o[4], o[5]));
    }
    if let Some((_, _, category)) = V6_RANGES.iter().find(|(net, len, _)| in_net(*net, *len)) {
        return direct(Some(category));
    }
    if !in_net(GLOBAL_UNICAST, 3) {
        return direct(Some(RESERVED));
    }
    None
}

/// Judges an address under the local-use NAT64 prefix 64:ff9b:1::/48 by every
/// RFC 6052 layout it is consistent with (the "u" octet, bits 64..72, and the
/// suffix after the IPv4 address must be zero; the /96 layout has neither).
/// The layouts with the most zero bits are tried first, for the category.
fn nat64_local_use(o: &[u8; 16]) -> Option<Verdict> {
    let zero = |from: usize| o.iter().skip(from).all(|b| *b == 0);
    let layouts = [
        (o[8] == 0 && zero(11), quad(o[6], o[7], o[9], o[10])),
        (o[8] == 0 && zero(12), quad(o[7], o[9], o[10], o[11])),
        (o[8] == 0 && zero(13), quad(o[9], o[10], o[11], o[12])),
        (true, quad(o[12], o[13], o[14], o[15])),
    ];
    layouts
        .into_iter()
        .filter(|(consistent, _)| *consistent)
        .find_map(|(_, v4)| embedded("NAT64 (local-use)", v4))
}

fn quad(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

fn mask4(len: u8) -> u32 {
    u32::MAX
        .checked_shl(32u32.saturating_sub(u32::from(len)))
        .unwrap_or(0)
}

fn mask6(len: u8) -> u128 {
    u128::MAX
        .checked_shl(128u32.saturating_sub(u32::from(len)))
        .unwrap_or(0)
}

/// English for a category, as used in [`Refused`]'s messages.
fn describe(category: &'static str, v4: bool) -> &'static str {
    match (category, v4) {
        (UNSPECIFIED, true) => "unspecified (0.0.0.0)",
        (UNSPECIFIED, false) => "unspecified (::)",
        (THIS_NETWORK, _) => "in \"this network\" (0.0.0.0/8)",
        (LOOPBACK, true) => "loopback (127.0.0.0/8)",
        (LOOPBACK, false) => "loopback (::1)",
        (PRIVATE, true) => "private (RFC 1918)",
        (PRIVATE, false) => "private (unique-local fc00::/7, RFC 4193)",
        (LINK_LOCAL, true) => "link-local (169.254.0.0/16)",
        (LINK_LOCAL, false) => "link-local (fe80::/10)",
        (METADATA, _) => "a cloud metadata endpoint",
        (CGNAT, _) => "carrier-grade NAT shared space (100.64.0.0/10, RFC 6598)",
        (IETF_PROTOCOL, true) => "reserved for IETF protocol assignments (192.0.0.0/24)",
        (IETF_PROTOCOL, false) => "reserved for IETF protocol assignments (2001::/23)",
        (DOCUMENTATION, true) => "reserved for documentation (RFC 5737)",
        (DOCUMENTATION, false) => "reserved for documentation (2001:db8::/32, 3fff::/20)",
        (BENCHMARKING, true) => "reserved for benchmarking (198.18.0.0/15)",
        (BENCHMARKING, false) => "reserved for benchmarking (2001:2::/48)",
        (SIX_TO_FOUR_RELAY, _) => "the deprecated 6to4 relay anycast range (192.88.99.0/24)",
        (MULTICAST, true) => "multicast (224.0.0.0/4)",
        (MULTICAST, false) => "multicast (ff00::/8)",
        (RESERVED, true) => "reserved (240.0.0.0/4)",
        (RESERVED, false) => "reserved (outside global unicast 2000::/3)",
        (BROADCAST, _) => "the limited broadcast address",
        (SITE_LOCAL, _) => "site-local (fec0::/10, deprecated)",
        (DISCARD, _) => "discard-only (100::/64)",
        (IPV4_COMPATIBLE, _) => "a deprecated IPv4-compatible address (::/96)",
        (other, _) => other,
    }
}

/// One allowlist entry: a network address (host bits zero) and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Net {
    V4(u32, u8),
    V6(u128, u8),
}

impl Net {
    fn parse(entry: &str) -> Result<Net, String> {
        let (addr, len) = match entry.split_once('/') {
            None => (entry, None),
            Some((addr, len)) => {
                if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("bad prefix length {len:?}"));
                }
                let len: u8 = len
                    .parse()
                    .map_err(|_| format!("bad prefix length {len:?}"))?;
                (addr, Some(len))
            }
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let (net, max) = match ip {
            IpAddr::V4(v4) => (Net::V4(v4.to_bits(), len.unwrap_or(32)), 32),
            IpAddr::V6(v6) => (Net::V6(v6.to_bits(), len.unwrap_or(128)), 128),
        };
        let len = len.unwrap_or(max);
        if len > max {
            return Err(format!("prefix length /{len} is longer than {max} bits"));
        }
        let host_bits_clear = match net {
            Net::V4(bits, len) => bits & mask4(len) == bits,
            Net::V6(bits, len) => bits & mask6(len) == bits,
        };
        if !host_bits_clear {
            return Err(format!("{addr}/{len} has host bits set"));
        }
        Ok(net)
    }

    fn contains(self, ip: IpAddr) -> bool {
        match (self, ip) {
            (Net::V4(net, len), IpAddr::V4(v4)) => v4.to_bits() & mask4(len) == net,
            (Net::V6(net, len), IpAddr::V6(v6)) => v6.to_bits() & mask6(len) == net,
            _ => false,
        }
    }

    fn is_single(self) -> bool {
        matches!(self, Net::V4(_, 32) | Net::V6(_, 128))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> Allow {
        Allow::default()
    }

    fn allow_of(entries: &[&str]) -> Result<Allow, String> {
        Allow::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    /// One `#[test]` per URL refused as a forbidden address of `category`.
    macro_rules! refused_address {
        ($($name:ident: $url:expr => $category:expr;)*) => {$(
            #[test]
            fn $name() {
                match check_url($url, &none()) {
                    Err(Refused::Address(_, category)) => assert_eq!(category, $category, "{}", $url),
                    other => panic!("{}: expected {} refusal, got {other:?}", $url, $category),
                }
            }
        )*};
    }

    /// One `#[test]` per URL refused with a given `Refused` variant.
    macro_rules! refused_as {
        ($($name:ident: $url:expr => $variant:ident;)*) => {$(
            #[test]
            fn $name() {
                let got = check_url($url, &none());
                assert!(matches!(got, Err(Refused::$variant(_))), "{}: got {got:?}", $url);
            }
        )*};
    }

    /// One `#[test]` per URL that must be accepted.
    macro_rules! accepted {
        ($($name:ident: $url:expr;)*) => {$(
            #[test]
            fn $name() {
                if let Err(err) = check_url($url, &none()) {
                    panic!("{}: refused: {err}", $url);
                }
            }
        )*};
    }

    refused_address! {
        loopback_literal: "http://127.0.0.1/" => "loopback";
        loopback_other: "http://127.255.10.1:8080/x" => "loopback";
        localhost: "http://localhost/" => "loopback";
        localhost_trailing_dot: "http://localhost./" => "loopback";
        localhost_two_dots: "http://localhost../" => "loopback";
        localhost_upper: "http://LOCALHOST:80/" => "loopback";
        sub_localhost: "http://foo.localhost/" => "loopback";
        sub_localhost_dot: "http://a.b.localhost./" => "loopback";
        unspecified_v4: "http://0.0.0.0/" => "unspecified";
        unspecified_zero: "http://0/" => "unspecified";
        this_network: "http://0.1.2.3/" => "this-network";
        loopback_v6: "http://[::1]/" => "loopback";
        loopback_v6_https: "https://[0:0:0:0:0:0:0:1]:443/" => "loopback";
        unspecified_v6: "http://[::]/" => "unspecified";
        mapped_dotted: "http://[::ffff:127.0.0.1]/" => "loopback";
        mapped_hex: "http://[::ffff:7f00:1]/" => "loopback";
        mapped_long: "http://[0:0:0:0:0:ffff:127.0.0.1]/" => "loopback";
        mapped_unspecified: "http://[::ffff:0.0.0.0]/" => "unspecified";
        mapped_private: "http://[::ffff:10.0.0.1]/" => "private";
        mapped_metadata: "http://[::ffff:a9fe:a9fe]/" => "metadata";
        compatible_loopback: "http://[::127.0.0.1]/" => "loopback";
        compatible_private: "http://[::192.168.0.1]/" => "private";
        compatible_public: "http://[::93.184.216.34]/" => "ipv4-compatible";
        decimal: "http://2130706433/" => "loopback";
        hex: "http://0x7f000001/" => "loopback";
        octal: "http://017700000001/" => "loopback";
        short: "http://127.1/" => "loopback";
        short_hex: "http://0x7f.1/" => "loopback";
        octal_dotted: "http://0177.0.0.1/" => "loopback";
        trailing_dot_ip: "http://127.0.0.1./" => "loopback";
        percent_encoded: "http://%31%32%37.0.0.1/" => "loopback";
        uppercase_scheme: "HTTP://127.0.0.1/" => "loopback";
        private_10: "http://10.1.2.3/" => "private";
        private_172_low: "http://172.16.0.1/" => "private";
        private_172_high: "http://172.31.255.255/" => "private";
        private_192: "http://192.168.1.1/" => "private";
        metadata: "http://169.254.169.254/latest/meta-data/" => "metadata";
        metadata_ecs: "http://169.254.170.2/v2/credentials" => "metadata";
        metadata_alibaba: "http://100.100.100.200/latest/meta-data/" => "metadata";
        metadata_v6: "http://[fd00:ec2::254]/latest/meta-data/" => "metadata";
        link_local_v4: "http://169.254.1.1/" => "link-local";
        cgnat: "http://100.64.0.1/" => "cgnat";
        cgnat_high: "http://100.127.255.255/" => "cgnat";
        ietf_protocol: "http://192.0.0.8/" => "ietf-protocol";
        documentation_1: "http://192.0.2.1/" => "documentation";
        documentation_2: "http://198.51.100.7/" => "documentation";
        documentation_3: "http://203.0.113.9/" => "documentation";
        benchmarking: "http://198.18.0.1/" => "benchmarking";
        benchmarking_high: "http://198.19.255.255/" => "benchmarking";
        relay_6to4: "http://192.88.99.1/" => "6to4-relay";
        multicast_v4: "http://224.0.0.1/" => "multicast";
        multicast_v4_high: "http://239.255.255.250/" => "multicast";
        reserved_v4: "http://240.0.0.1/" => "reserved";
        broadcast: "http://255.255.255.255/" => "broadcast";
        unique_local_fd: "http://[fd00::1]/" => "private";
        unique_local_fc: "http://[fc00::1]/" => "private";
        link_local_v6: "http://[fe80::1]/" => "link-local";
        site_local: "http://[fec0::1]/" => "site-local";
        multicast_v6: "http://[ff02::1]/" => "multicast";
        multicast_v6_site: "http://[ff05::1:3]/" => "multicast";
        discard: "http://[100::1]/" => "discard";
        documentation_v6: "http://[2001:db8::1]/" => "documentation";
        documentation_v6_new: "http://[3fff::1]/" => "documentation";
        benchmarking_v6: "http://[2001:2::1]/" => "benchmarking";
        ietf_protocol_v6: "http://[2001:1::1]/" => "ietf-protocol";
        reserved_v6: "http://[5f00::1]/" => "reserved";
        reserved_v6_low: "http://[::1:0:0:1]/" => "reserved";
        nat64_metadata: "http://[64:ff9b::a9fe:a9fe]/" => "metadata";
        nat64_loopback_dotted: "http://[64:ff9b::127.0.0.1]/" => "loopback";
        nat64_other: "http://[64:ff9b:2::1]/" => "reserved";
        nat64_local_96: "http://[64:ff9b:1::a00:1]/" => "private";
        nat64_local_64: "http://[64:ff9b:1:0:7f:0:100:0]/" => "loopback";
        nat64_local_48: "http://[64:ff9b:1:7f00:0:100::]/" => "loopback";
        six_to_four_loopback: "http://[2002:7f00:1::]/" => "loopback";
        six_to_four_private: "http://[2002:a00:1::]/" => "private";
        six_to_four_metadata: "http://[2002:a9fe:a9fe::1]/" => "metadata";
        teredo_loopback_client: "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/" => "loopback";
        teredo_private_server: "http://[2001:0:a00:1::a247:27dd]/" => "private";
    }

    refused_as! {
        userinfo: "http://user:pass@example.com/" => Url;
        user_only: "http://user@example.com/" => Url;
        userinfo_hiding_ip: "http://example.com@127.0.0.1/" => Url;
        port_zero: "http://example.com:0/" => Url;
        port_too_big: "http://example.com:65536/" => Url;
        not_a_url: "not a url" => Url;
        empty: "" => Url;
        unclosed_v6: "http://[::1/" => Url;
        no_host: "http:///" => Url;
        zone_id: "http://[fe80::1%25eth0]/" => Url;
        file: "file:///etc/passwd" => Scheme;
        gopher: "gopher://example.com/" => Scheme;
        ftp: "ftp://example.com/" => Scheme;
        data: "data:text/plain,hi" => Scheme;
        javascript: "javascript:alert(1)" => Scheme;
        ws: "ws://example.com/" => Scheme;
        dict: "dict://127.0.0.1:11211/" => Scheme;
        bare_host_port: "localhost:8080" => Scheme;
    }

    accepted! {
        public_v4: "http://93.184.216.34/";
        public_v6: "http://[2606:4700::1111]/";
        mapped_public: "http://[::ffff:93.184.216.34]/";
        above_private_172: "http://172.32.0.1/";
        below_private_172: "http://172.15.255.255/";
        above_cgnat: "http://100.128.0.1/";
        below_cgnat: "http://100.63.255.255/";
        above_private_192: "http://192.169.0.1/";
        above_benchmarking: "http://198.20.0.1/";
        below_multicast: "http://223.255.255.255/";
        nat64_public: "http://[64:ff9b::5db8:d822]/";
        nat64_local_public: "http://[64:ff9b:1::5db8:d822]/";
        six_to_four_public: "http://[2002:5db8:d822::1]/";
        teredo_public: "http://[2001:0:4136:e378:8000:63bf:a247:27dd]/";
        fqdn_trailing_dot: "https://example.com./";
        localhost_lookalike: "http://localhost.example.com/";
        notlocalhost: "http://notlocalhost/";
        https_port: "https://example.com:8443/a?b=c#d";
    }

    #[test]
    fn hostname_returned_unresolved() {
        let url = check_url("https://example.com/path", &none()).expect("accepted");
        assert_eq!(url.host_str(), Some("example.com"));
        assert_eq!(url.path(), "/path");
        assert_eq!(url.scheme(), "https");
    }

    #[test]
    fn allowlist_permits_loopback_only() {
        let allow = allow_of(&["127.0.0.0/8"]).expect("valid");
        let url = check_url("http://127.0.0.1:8080/x", &allow).expect("allowed");
        assert_eq!(url.port(), Some(8080));
        assert!(check_url("http://localhost:8080/", &allow).is_ok());
        assert!(check_url("http://[::ffff:127.0.0.1]/", &allow).is_ok());
        assert_eq!(
            check_url("http://10.0.0.1/", &allow),
            Err(Refused::Address(ip("10.0.0.1"), "private"))
        );
        assert_eq!(
            check_url("http://[::1]/", &allow),
            Err(Refused::Address(ip("::1"), "loopback"))
        );
        assert!(check_url("file:///etc/passwd", &allow).is_err());
        assert!(check_url("http://u:p@127.0.0.1/", &allow).is_err());
    }

    #[test]
    fn allowlist_parses_good_entries() {
        let allow = allow_of(&[
            "127.0.0.1",
            "10.0.0.0/8",
            "::1",
            "fd00::/8",
            " 192.168.0.0/16 ",
            "",
        ])
        .expect("valid");
        for yes in ["127.0.0.1", "10.255.0.1", "::1", "fd12::1", "192.168.3.4"] {
            assert!(allow.permits(ip(yes)), "{yes}");
        }
        for no in ["127.0.0.2", "11.0.0.1", "::2", "fc00::1", "192.169.0.1"] {
            assert!(!allow.permits(ip(no)), "{no}");
        }
        assert!(!Allow::default().permits(ip("127.0.0.1")));
        assert!(
            allow_of(&["0.0.0.0/0"])
                .expect("valid")
                .permits(ip("8.8.8.8"))
        );
    }

    #[test]
    fn allowlist_rejects_bad_entries() {
        for bad in [
            "300.1.1.1",
            "10.0.0.0/33",
            "x",
            "10.0.0.1/8",
            "fd00::/129",
            "1.2.3.4/",
            "/8",
            "1.2.3.4/+8",
            "1.2.3.4/-1",
            "1.2.3.4/8/8",
            "010.0.0.1",
            "fe80::1%eth0",
            "[::1]",
            "1.2.3.4/0008",
        ] {
            assert!(allow_of(&[bad]).is_err(), "{bad:?} accepted");
        }
        let err = allow_of(&["ok", "10.0.0.0/8"]).expect_err("invalid");
        assert!(err.contains("\"ok\""), "{err}");
    }

    #[test]
    fn metadata_needs_an_exact_entry() {
        let wide = allow_of(&["169.254.0.0/16", "fd00::/8"]).expect("valid");
        assert!(check_url("http://169.254.1.1/", &wide).is_ok());
        assert_eq!(
            check_url("http://169.254.169.254/", &wide),
            Err(Refused::Address(ip("169.254.169.254"), "metadata"))
        );
        assert!(check_url("http://[fd00:ec2::254]/", &wide).is_err());
        let exact = allow_of(&["169.254.169.254"]).expect("valid");
        assert!(check_url("http://169.254.169.254/", &exact).is_ok());
        assert!(check_url("http://[::ffff:169.254.169.254]/", &exact).is_ok());
    }

    #[test]
    fn check_ip_for_resolved_addresses() {
        let none = none();
        assert_eq!(check_ip(ip("8.8.8.8"), &none), Ok(()));
        assert_eq!(check_ip(ip("2001:4860:4860::8888"), &none), Ok(()));
        assert_eq!(
            check_ip(ip("192.168.0.10"), &none),
            Err(Refused::Address(ip("192.168.0.10"), "private"))
        );
    }

    #[test]
    fn forbidden_boundaries() {
        let cases = [
            ("9.255.255.255", None),
            ("11.0.0.0", None),
            ("126.255.255.255", None),
            ("128.0.0.0", None),
            ("169.253.255.255", None),
            ("169.255.0.0", None),
            ("192.0.1.0", None),
            ("192.0.3.0", None),
            ("192.88.98.255", None),
            ("198.17.255.255", None),
            ("223.255.255.255", None),
            ("1.1.1.1", None),
            ("1.0.0.0", None),
            ("0.255.255.255", Some("this-network")),
            ("239.255.255.255", Some("multicast")),
            ("255.255.255.254", Some("reserved")),
            ("2000::1", None),
            ("3ffe:ffff::1", None),
            ("3fff:1000::1", None),
            ("2001:200::1", None),
            ("2001:db7:ffff::1", None),
            ("2001:1ff:ffff::1", Some("ietf-protocol")),
            ("4000::1", Some("reserved")),
            ("100::1:0:0:0:1", Some("reserved")),
            ("fbff::1", Some("reserved")),
            ("febf::1", Some("link-local")),
            ("fd00:ec2::253", Some("private")),
            ("::ffff:0:7f00:1", Some("reserved")),
        ];
        for (addr, want) in cases {
            assert_eq!(forbidden(ip(addr)), want, "{addr}");
        }
    }

    #[test]
    fn display_messages() {
        let private = Refused::Address(ip("10.0.0.1"), "private");
        assert_eq!(
            private.to_string(),
            "address 10.0.0.1 is private (RFC 1918): refused"
        );
        let mapped = check_url("http://[::ffff:127.0.0.1]/", &none()).expect_err("refused");
        assert_eq!(
            mapped.to_string(),
            "address ::ffff:127.0.0.1 embeds IPv4-mapped address 127.0.0.1, \
             which is loopback (127.0.0.0/8): refused"
        );
        let teredo = check_url("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", &none())
            .expect_err("refused");
        assert!(
            teredo
                .to_string()
                .contains("Teredo client address 127.0.0.1"),
            "{teredo}"
        );
        let ula = check_url("http://[fd00::1]/", &none()).expect_err("refused");
        assert!(ula.to_string().contains("RFC 4193"), "{ula}");
        let scheme = check_url("gopher://x/", &none()).expect_err("refused");
        assert_eq!(
            scheme.to_string(),
            "scheme \"gopher\" is not allowed (only http and https): refused"
        );
        let creds = check_url("http://a:b@example.com/", &none()).expect_err("refused");
        assert!(creds.to_string().contains("credentials"), "{creds}");
        let custom = Refused::Address(ip("8.8.8.8"), "custom");
        assert_eq!(custom.to_string(), "address 8.8.8.8 is custom: refused");
        let err: Box<dyn std::error::Error> = Box::new(private);
        assert!(err.to_string().contains("10.0.0.1"));
    }

    #[test]
    fn never_panics() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let hi = u128::from(next());
            let v6 = Ipv6Addr::from_bits((hi << 64) | u128::from(next()));
            let _ = forbidden(IpAddr::V6(v6));
            let _ = check_ip(IpAddr::V6(v6), &none()).map_err(|e| e.to_string());
            let v4 = Ipv4Addr::from_bits(next() as u32);
            let _ = check_ip(IpAddr::V4(v4), &none()).map_err(|e| e.to_string());
        }
        for raw in [
            "http://",
            "http://[",
            "http://]",
            "http://.",
            "http://../",
            "http://%00/",
            "http://\u{0}/",
            "http://0x/",
            "http://4294967296/",
            "http://①②⑦.0.0.1/",
            "http://[::ffff:1.2.3.4.5]/",
            "https://xn--/",
            "http://a..b/",
            "\u{feff}http://127.0.0.1/",
            " http://127.0.0.1/ ",
        ] {
            let _ = check_url(raw, &none()).map_err(|e| e.to_string());
        }
    }
}
