//! Address classification for the private-destination (SSRF) guard.
//!
//! [`classify`] maps an address to an [`AddrClass`]: [`AddrClass::Public`] for ordinary
//! globally routed unicast, or the special-purpose class that makes it unsafe to dial on a
//! client's behalf (loopback, RFC 1918, link-local including cloud metadata, CGNAT, ...).
//! IPv6 forms that embed an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo)
//! are refused as a class of their own, whatever the embedded address is: a public IPv4 host
//! is always reachable by its plain IPv4 address, so nothing legitimate needs the wrapper.
//!
//! The tables are ordered: the first matching range wins, so narrower ranges come before the
//! wider ones that contain them. Sources: the IANA IPv4 and IPv6 Special-Purpose Address
//! Registries (RFC 6890 and updates).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What kind of destination an address is. Every class except [`AddrClass::Public`] is refused
/// by the guard unless the configuration exempts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrClass {
    /// Ordinary globally routed unicast.
    Public,
    /// `0.0.0.0/8` ("this network") and `::`.
    Unspecified,
    /// `127.0.0.0/8` and `::1`.
    Loopback,
    /// RFC 1918 (`10/8`, `172.16/12`, `192.168/16`) and the deprecated IPv6 site-local `fec0::/10`.
    Private,
    /// `169.254.0.0/16` (including the cloud metadata service `169.254.169.254`) and `fe80::/10`.
    LinkLocal,
    /// Shared address space for carrier-grade NAT, `100.64.0.0/10` (RFC 6598).
    Cgnat,
    /// IPv6 unique local addresses, `fc00::/7`.
    UniqueLocal,
    /// `224.0.0.0/4` and `ff00::/8`.
    Multicast,
    /// The limited broadcast address `255.255.255.255`.
    Broadcast,
    /// Reserved or non-routable space: `240.0.0.0/4`, the 6to4 relay anycast `192.88.99.0/24`,
    /// the IPv6 discard prefix `100::/64` and ORCHID `2001:10::/28`, `2001:20::/28`.
    Reserved,
    /// Documentation networks: `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24`,
    /// `2001:db8::/32`, `3fff::/20`.
    Documentation,
    /// Benchmarking networks: `198.18.0.0/15`, `2001:2::/48`.
    Benchmarking,
    /// IETF protocol assignments, `192.0.0.0/24`.
    IetfProtocol,
    /// IPv6 that embeds an IPv4 address: IPv4-mapped `::ffff:0:0/96`, IPv4-translated
    /// `::ffff:0:0:0/96`, IPv4-compatible `::/96`, NAT64 `64:ff9b::/96` and `64:ff9b:1::/48`,
    /// 6to4 `2002::/16` and Teredo `2001::/32`.
    Ipv4Embedded,
}

impl AddrClass {
    /// Every class, in declaration order.
    pub const ALL: [AddrClass; 14] = [
        AddrClass::Public,
        AddrClass::Unspecified,
        AddrClass::Loopback,
        AddrClass::Private,
        AddrClass::LinkLocal,
        AddrClass::Cgnat,
        AddrClass::UniqueLocal,
        AddrClass::Multicast,
        AddrClass::Broadcast,
        AddrClass::Reserved,
        AddrClass::Documentation,
        AddrClass::Benchmarking,
        AddrClass::IetfProtocol,
        AddrClass::Ipv4Embedded,
    ];

    /// Whether the address may be dialled without an explicit exemption.
    pub fn is_public(&self) -> bool {
        matches!(self, AddrClass::Public)
    }

    /// A stable `snake_case` name, used in logs and as a metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            AddrClass::Public => "public",
            AddrClass::Unspecified => "unspecified",
            AddrClass::Loopback => "loopback",
            AddrClass::Private => "private",
            AddrClass::LinkLocal => "link_local",
            AddrClass::Cgnat => "cgnat",
            AddrClass::UniqueLocal => "unique_local",
            AddrClass::Multicast => "multicast",
            AddrClass::Broadcast => "broadcast",
            AddrClass::Reserved => "reserved",
            AddrClass::Documentation => "documentation",
            AddrClass::Benchmarking => "benchmarking",
            AddrClass::IetfProtocol => "ietf_protocol",
            AddrClass::Ipv4Embedded => "ipv4_embedded",
        }
    }
}

impl fmt::Display for AddrClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Classifies one address. Pure and allocation-free.
pub fn classify(ip: IpAddr) -> AddrClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// Classifies an IPv4 address.
pub fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    let bits = u32::from(ip);
    V4_RANGES
        .iter()
        .find(|r| prefix_match_u32(bits, r.network, r.len))
        .map_or(AddrClass::Public, |r| r.class)
}

/// Classifies an IPv6 address. IPv4-embedding forms are [`AddrClass::Ipv4Embedded`] whatever
/// the embedded address is.
pub fn classify_v6(ip: Ipv6Addr) -> AddrClass {
    let bits = u128::from(ip);
    V6_RANGES
        .iter()
        .find(|r| prefix_match_u128(bits, r.network, r.len))
        .map_or(AddrClass::Public, |r| r.class)
}

/// One row of a classification table.
struct Range<T> {
    network: T,
    len: u32,
    class: AddrClass,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u32, class: AddrClass) -> Range<u32> {
    Range {
        network: u32::from_be_bytes([a, b, c, d]),
        len,
        class,
    }
}

const fn v6(segments: [u16; 8], len: u32, class: AddrClass) -> Range<u128> {
    let mut network: u128 = 0;
    let mut i = 0;
    while i < 8 {
        network = (network << 16) | segments[i] as u128;
        i += 1;
    }
    Range {
        network,
        len,
        class,
    }
}

/// IPv4 special-purpose ranges, first match wins.
const V4_RANGES: &[Range<u32>] = &[
    v4(0, 0, 0, 0, 8, AddrClass::Unspecified),
    v4(10, 0, 0, 0, 8, AddrClass::Private),
    v4(100, 64, 0, 0, 10, AddrClass::Cgnat),
    v4(127, 0, 0, 0, 8, AddrClass::Loopback),
    v4(169, 254, 0, 0, 16, AddrClass::LinkLocal),
    v4(172, 16, 0, 0, 12, AddrClass::Private),
    v4(192, 0, 0, 0, 24, AddrClass::IetfProtocol),
    v4(192, 0, 2, 0, 24, AddrClass::Documentation),
    v4(192, 88, 99, 0, 24, AddrClass::Reserved),
    v4(192, 168, 0, 0, 16, AddrClass::Private),
    v4(198, 18, 0, 0, 15, AddrClass::Benchmarking),
    v4(198, 51, 100, 0, 24, AddrClass::Documentation),
    v4(203, 0, 113, 0, 24, AddrClass::Documentation),
    v4(224, 0, 0, 0, 4, AddrClass::Multicast),
    v4(255, 255, 255, 255, 32, AddrClass::Broadcast),
    v4(240, 0, 0, 0, 4, AddrClass::Reserved),
];

/// IPv6 special-purpose ranges, first match wins (`::` and `::1` before `::/96`).
const V6_RANGES: &[Range<u128>] = &[
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128, AddrClass::Unspecified),
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128, AddrClass::Loopback),
    v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96, AddrClass::Ipv4Embedded),
    v6([0, 0, 0, 0, 0xffff, 0, 0, 0], 96, AddrClass::Ipv4Embedded),
    v6([0, 0, 0, 0, 0, 0, 0, 0], 96, AddrClass::Ipv4Embedded),
    v6(
        [0x64, 0xff9b, 0, 0, 0, 0, 0, 0],
        96,
        AddrClass::Ipv4Embedded,
    ),
    v6(
        [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
        48,
        AddrClass::Ipv4Embedded,
    ),
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64, AddrClass::Reserved),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, AddrClass::Ipv4Embedded),
    v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48, AddrClass::Benchmarking),
    v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28, AddrClass::Reserved),
    v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28, AddrClass::Reserved),
    v6(
        [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],
        32,
        AddrClass::Documentation,
    ),
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, AddrClass::Ipv4Embedded),
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, AddrClass::Documentation),
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, AddrClass::UniqueLocal),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, AddrClass::LinkLocal),
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, AddrClass::Private),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, AddrClass::Multicast),
];

fn prefix_match_u32(addr: u32, network: u32, len: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    addr & mask == network & mask
}

fn prefix_match_u128(addr: u128, network: u128, len: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    addr & mask == network & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class_of(s: &str) -> AddrClass {
        match s.parse::<IpAddr>() {
            Ok(ip) => classify(ip),
            Err(e) => panic!("bad test address {s}: {e}"),
        }
    }

    /// Every class, with both ends of every range and the addresses just outside them.
    #[test]
    fn classify_table() {
        use AddrClass::*;
        let cases: &[(&str, AddrClass)] = &[
            // 0.0.0.0/8
            ("0.0.0.0", Unspecified),
            ("0.255.255.255", Unspecified),
            ("1.0.0.0", Public),
            // 10/8
            ("9.255.255.255", Public),
            ("10.0.0.0", Private),
            ("10.255.255.255", Private),
            ("11.0.0.0", Public),
            // 100.64/10
            ("100.63.255.255", Public),
            ("100.64.0.0", Cgnat),
            ("100.127.255.255", Cgnat),
            ("100.128.0.0", Public),
            // 127/8
            ("126.255.255.255", Public),
            ("127.0.0.0", Loopback),
            ("127.0.0.1", Loopback),
            ("127.255.255.255", Loopback),
            ("128.0.0.0", Public),
            // 169.254/16
            ("169.253.255.255", Public),
            ("169.254.0.0", LinkLocal),
            ("169.254.169.254", LinkLocal),
            ("169.254.255.255", LinkLocal),
            ("169.255.0.0", Public),
            // 172.16/12
            ("172.15.255.255", Public),
            ("172.16.0.0", Private),
            ("172.31.255.255", Private),
            ("172.32.0.0", Public),
            // 192.0.0/24
            ("191.255.255.255", Public),
            ("192.0.0.0", IetfProtocol),
            ("192.0.0.255", IetfProtocol),
            ("192.0.1.0", Public),
            // 192.0.2/24
            ("192.0.2.0", Documentation),
            ("192.0.2.255", Documentation),
            ("192.0.3.0", Public),
            // 192.88.99/24
            ("192.88.98.255", Public),
            ("192.88.99.0", Reserved),
            ("192.88.99.255", Reserved),
            ("192.88.100.0", Public),
            // 192.168/16
            ("192.167.255.255", Public),
            ("192.168.0.0", Private),
            ("192.168.255.255", Private),
            ("192.169.0.0", Public),
            // 198.18/15
            ("198.17.255.255", Public),
            ("198.18.0.0", Benchmarking),
            ("198.19.255.255", Benchmarking),
            ("198.20.0.0", Public),
            // 198.51.100/24
            ("198.51.99.255", Public),
            ("198.51.100.0", Documentation),
            ("198.51.100.255", Documentation),
            ("198.51.101.0", Public),
            // 203.0.113/24
            ("203.0.112.255", Public),
            ("203.0.113.0", Documentation),
            ("203.0.113.255", Documentation),
            ("203.0.114.0", Public),
            // 224/4
            ("223.255.255.255", Public),
            ("224.0.0.0", Multicast),
            ("239.255.255.255", Multicast),
            // 240/4 and broadcast
            ("240.0.0.0", Reserved),
            ("255.255.255.254", Reserved),
            ("255.255.255.255", Broadcast),
            // IPv6: unspecified, loopback, compatible
            ("::", Unspecified),
            ("::1", Loopback),
            ("::2", Ipv4Embedded),
            ("::0.0.1.0", Ipv4Embedded),
            ("::255.255.255.255", Ipv4Embedded),
            ("::1:0:0", Public),
            // IPv4-mapped
            ("::fffe:ffff:ffff", Public),
            ("::ffff:0.0.0.0", Ipv4Embedded),
            ("::ffff:8.8.8.8", Ipv4Embedded),
            ("::ffff:127.0.0.1", Ipv4Embedded),
            ("::ffff:255.255.255.255", Ipv4Embedded),
            ("::1:0:0:0", Public),
            // IPv4-translated
            ("::ffff:0:0:0", Ipv4Embedded),
            ("::ffff:0:ffff:ffff", Ipv4Embedded),
            ("::ffff:1:0:0", Public),
            // NAT64
            ("64:ff9a:ffff:ffff:ffff:ffff:ffff:ffff", Public),
            ("64:ff9b::", Ipv4Embedded),
            ("64:ff9b::ffff:ffff", Ipv4Embedded),
            ("64:ff9b::1:0:0", Public),
            ("64:ff9b:1::", Ipv4Embedded),
            ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", Ipv4Embedded),
            ("64:ff9b:2::", Public),
            // discard-only
            ("100::", Reserved),
            ("100::ffff:ffff:ffff:ffff", Reserved),
            ("100:0:0:1::", Public),
            // Teredo
            ("2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Public),
            ("2001::", Ipv4Embedded),
            ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", Ipv4Embedded),
            ("2001:1::", Public),
            // benchmarking
            ("2001:2::", Benchmarking),
            ("2001:2:0:ffff:ffff:ffff:ffff:ffff", Benchmarking),
            ("2001:2:1::", Public),
            // ORCHID
            ("2001:f:ffff:ffff:ffff:ffff:ffff:ffff", Public),
            ("2001:10::", Reserved),
            ("2001:1f:ffff:ffff:ffff:ffff:ffff:ffff", Reserved),
            ("2001:20::", Reserved),
            ("2001:2f:ffff:ffff:ffff:ffff:ffff:ffff", Reserved),
            ("2001:30::", Public),
            // 2001:db8::/32
            ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", Public),
            ("2001:db8::", Documentation),
            ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", Documentation),
            ("2001:db9::", Public),
            // 6to4
            ("2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Public),
            ("2002::", Ipv4Embedded),
            ("2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Ipv4Embedded),
            ("2003::", Public),
            // 3fff::/20
            ("3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Public),
            ("3fff::", Documentation),
            ("3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", Documentation),
            ("3fff:1000::", Public),
            // fc00::/7
            ("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Public),
            ("fc00::", UniqueLocal),
            ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", UniqueLocal),
            ("fe00::", Public),
            // fe80::/10
            ("fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Public),
            ("fe80::", LinkLocal),
            ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", LinkLocal),
            // fec0::/10
            ("fec0::", Private),
            ("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Private),
            // ff00::/8
            ("ff00::", Multicast),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Multicast),
        ];
        for &(addr, want) in cases {
            assert_eq!(class_of(addr), want, "classify({addr})");
        }
        for class in AddrClass::ALL {
            assert!(
                cases.iter().any(|&(_, c)| c == class),
                "class {class} is not covered by the table"
            );
        }
    }

    /// The cases of smokescreen's `TestClassifyAddr` that concern classification alone
    /// (its allow/deny lists and self-connection detection live elsewhere here).
    #[test]
    fn smokescreen_cases() {
        use AddrClass::*;
        let cases: &[(&str, AddrClass)] = &[
            ("8.8.8.8", Public),
            ("8.8.9.8", Public),
            ("10.0.0.1", Private),
            ("10.0.1.1", Private),
            ("172.16.0.1", Private),
            ("172.16.1.1", Private),
            ("192.168.0.1", Private),
            ("192.168.1.1", Private),
            ("100.64.0.1", Cgnat),
            ("100.64.0.100", Cgnat),
            ("100.127.255.254", Cgnat),
            ("100.63.255.254", Public),
            ("100.128.0.1", Public),
            ("1.1.1.1", Public),
            ("127.0.0.1", Loopback),
            ("127.255.255.255", Loopback),
            ("127.0.1.1", Loopback),
            ("::1", Loopback),
            ("169.254.169.254", LinkLocal),
            ("255.255.255.255", Broadcast),
            ("ff02:0:0:0:0:0:0:2", Multicast),
            ("64:ff9b::ac1c:5", Ipv4Embedded),
            ("64:ff9b::c000:201", Ipv4Embedded),
            ("64:ff9b::a00:1", Ipv4Embedded),
            ("64:ff9b::808:808", Ipv4Embedded),
            ("64:ff9b::ffff:ffff", Ipv4Embedded),
            ("2002:c000:201::1", Ipv4Embedded),
            ("2002:a00:1::1", Ipv4Embedded),
            ("2002:808:808::1", Ipv4Embedded),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Ipv4Embedded),
            ("2001:0:1234:5678:9abc:def0:1234:5678", Ipv4Embedded),
            ("2001:4860:4860::8888", Public),
            ("2606:4700:4700::1111", Public),
            ("64:ff9c::1", Public),
            ("192.0.2.10", Documentation),
            ("2001:db8::1", Documentation),
            ("fd12:3456::1", UniqueLocal),
            ("fe80::1", LinkLocal),
            ("ff01::2", Multicast),
            ("::ffff:10.0.0.9", Ipv4Embedded),
        ];
        for &(addr, want) in cases {
            assert_eq!(class_of(addr), want, "classify({addr})");
        }
    }

    #[test]
    fn names_are_stable_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for class in AddrClass::ALL {
            assert!(seen.insert(class.as_str()), "duplicate name {class}");
            assert_eq!(class.is_public(), class == AddrClass::Public);
            assert_eq!(class.to_string(), class.as_str());
        }
        assert_eq!(AddrClass::LinkLocal.as_str(), "link_local");
        assert_eq!(AddrClass::Ipv4Embedded.as_str(), "ipv4_embedded");
    }

    #[test]
    fn table_networks_have_no_host_bits() {
        for r in V4_RANGES {
            assert!(r.len <= 32, "{:#x}/{}", r.network, r.len);
            let mask = u32::MAX.checked_shl(32 - r.len).unwrap_or(0);
            assert_eq!(r.network & !mask, 0, "{:#x}/{}", r.network, r.len);
            // The range's last address is in it, the address after it is not.
            let last = r.network | !mask;
            assert!(prefix_match_u32(last, r.network, r.len));
            if let (Some(next), true) = (last.checked_add(1), r.len > 0) {
                assert!(!prefix_match_u32(next, r.network, r.len), "{next:#x}");
            }
        }
        for r in V6_RANGES {
            let mask = u128::MAX.checked_shl(128 - r.len).unwrap_or(0);
            assert_eq!(r.network & !mask, 0, "{:#x}/{}", r.network, r.len);
        }
    }
}
