//! One DNS query (one name, one record type) through hickory's name server pool, and what its
//! result means for the cache.
//!
//! hickory does the wire work: the name server pool, retries, TCP fallback, following a CNAME
//! chain within an answer and the negative TTL of an SOA. Its own cache is off (`cache_size:
//! 0`) and so is its hosts file: this module's caller keeps the one cache and reads the hosts
//! file itself.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use hickory_resolver::TokioResolver;

use super::cache::Family;
use super::ResolverSettings;
use crate::metrics::DnsQueryResult;

/// The label a Private Link zone has (`<name>.privatelink.<zone>`).
const PRIVATE_LINK_LABEL: &[u8] = b"privatelink";

/// What one query produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryResult {
    /// Addresses of the asked family (never empty), the smallest TTL in the chain, and whether
    /// the CNAME chain passed through a `privatelink.` zone.
    Answer {
        ips: Vec<IpAddr>,
        ttl: u32,
        private_link: bool,
    },
    /// NXDOMAIN, with the SOA's negative TTL if the server sent one.
    NxDomain { negative_ttl: Option<u32> },
    /// The name exists without records of this type (NODATA).
    NoData { negative_ttl: Option<u32> },
    /// SERVFAIL, REFUSED, a network error or no usable name server.
    ServFail,
    /// No answer within the time allowed.
    Timeout,
}

impl QueryResult {
    pub fn label(&self) -> DnsQueryResult {
        match self {
            QueryResult::Answer { .. } => DnsQueryResult::Answer,
            QueryResult::NxDomain { .. } => DnsQueryResult::NxDomain,
            QueryResult::NoData { .. } => DnsQueryResult::NoData,
            QueryResult::ServFail => DnsQueryResult::ServFail,
            QueryResult::Timeout => DnsQueryResult::Timeout,
        }
    }
}

/// Why hickory could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("reading the system DNS configuration: {0}")]
    SystemConfig(NetError),
    #[error("building the resolver: {0}")]
    Build(NetError),
}

/// hickory's resolver with its cache and hosts file off. Each attempt may take half of
/// `timeout`, so a retry still fits in it.
pub fn build(settings: &ResolverSettings, timeout: Duration) -> Result<TokioResolver, BuildError> {
    let mut builder = if settings.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(BuildError::SystemConfig)?
    } else {
        let servers = settings.nameservers.iter().map(name_server).collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], servers),
            TokioRuntimeProvider::default(),
        )
    };
    let opts = builder.options_mut();
    opts.cache_size = 0;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.timeout = (timeout / 2).max(Duration::from_millis(100));
    opts.attempts = 2;
    // Keep the CNAMEs of a chain in the answer: Private Link is judged on them.
    opts.preserve_intermediates = true;
    // Names come from CONNECT requests and are absolute: never append search domains.
    opts.ndots = 0;
    builder.build().map_err(BuildError::Build)
}

fn name_server(addr: &SocketAddr) -> NameServerConfig {
    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
    for c in &mut ns.connections {
        c.port = addr.port();
    }
    ns
}

/// Ask `name` (lower case, no trailing dot) for `family`, within `limit`.
pub async fn ask(
    resolver: Option<&TokioResolver>,
    name: &str,
    family: Family,
    limit: Duration,
) -> QueryResult {
    let Some(r) = resolver else {
        return QueryResult::ServFail;
    };
    // A trailing dot makes the name fully qualified for the resolver.
    let fqdn = format!("{name}.");
    let rtype = match family {
        Family::V4 => RecordType::A,
        Family::V6 => RecordType::AAAA,
    };
    match tokio::time::timeout(limit, r.lookup(fqdn.as_str(), rtype)).await {
        Err(_) => QueryResult::Timeout,
        Ok(Ok(lookup)) => from_records(lookup.answers(), family),
        Ok(Err(e)) => from_error(&e),
    }
}

/// An answer section (CNAMEs then addresses) -> the result.
pub fn from_records(records: &[Record], family: Family) -> QueryResult {
    let mut ips = Vec::new();
    let mut ttl = u32::MAX;
    let mut private_link = false;
    for r in records {
        match (&r.data, family) {
            (RData::A(a), Family::V4) => ips.push(IpAddr::V4(a.0)),
            (RData::AAAA(a), Family::V6) => ips.push(IpAddr::V6(a.0)),
            (RData::CNAME(target), _) => {
                private_link |= target
                    .0
                    .iter()
                    .any(|l| l.eq_ignore_ascii_case(PRIVATE_LINK_LABEL));
            }
            _ => continue,
        }
        ttl = ttl.min(r.ttl);
    }
    if ips.is_empty() {
        return QueryResult::NoData { negative_ttl: None };
    }
    QueryResult::Answer {
        ips,
        ttl,
        private_link,
    }
}

fn from_error(e: &NetError) -> QueryResult {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(nr))
            if nr.response_code == ResponseCode::NXDomain =>
        {
            QueryResult::NxDomain {
                negative_ttl: nr.negative_ttl,
            }
        }
        NetError::Dns(DnsError::NoRecordsFound(nr)) => QueryResult::NoData {
            negative_ttl: nr.negative_ttl,
        },
        NetError::Timeout => QueryResult::Timeout,
        _ => QueryResult::ServFail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::net::NoRecords;
    use hickory_resolver::proto::op::Query;
    use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME};
    use hickory_resolver::proto::rr::Name;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::str::FromStr;

    fn name(s: &str) -> Name {
        Name::from_str(s).unwrap()
    }

    #[test]
    fn addresses_of_the_family_with_the_smallest_ttl_of_the_chain() {
        let recs = vec![
            Record::from_rdata(
                name("ws1.ods.opinsights.azure.com."),
                300,
                RData::CNAME(CNAME(name("ws1.privatelink.ods.opinsights.azure.com."))),
            ),
            Record::from_rdata(
                name("ws1.privatelink.ods.opinsights.azure.com."),
                10,
                RData::A(A(Ipv4Addr::new(10, 1, 2, 3))),
            ),
            Record::from_rdata(name("x."), 5, RData::AAAA(AAAA(Ipv6Addr::LOCALHOST))),
        ];
        assert_eq!(
            from_records(&recs, Family::V4),
            QueryResult::Answer {
                ips: vec![IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))],
                ttl: 10,
                private_link: true
            }
        );
        let QueryResult::Answer { ttl, .. } = from_records(&recs, Family::V6) else {
            panic!("AAAA expected");
        };
        assert_eq!(ttl, 5);
    }

    #[test]
    fn private_link_needs_a_whole_label() {
        let recs = vec![
            Record::from_rdata(
                name("a.example."),
                60,
                RData::CNAME(CNAME(name("notprivatelink.example."))),
            ),
            Record::from_rdata(
                name("notprivatelink.example."),
                60,
                RData::A(A(Ipv4Addr::new(10, 0, 0, 1))),
            ),
        ];
        assert!(matches!(
            from_records(&recs, Family::V4),
            QueryResult::Answer {
                private_link: false,
                ..
            }
        ));
        assert_eq!(
            from_records(&recs[..1], Family::V4),
            QueryResult::NoData { negative_ttl: None }
        );
    }

    #[test]
    fn errors_map_to_results() {
        let q = Query::query(name("nx.example."), RecordType::A);
        let mut nx = NoRecords::new(q.clone(), ResponseCode::NXDomain);
        nx.negative_ttl = Some(7);
        assert_eq!(
            from_error(&NetError::Dns(DnsError::NoRecordsFound(nx))),
            QueryResult::NxDomain {
                negative_ttl: Some(7)
            }
        );
        let nodata = NoRecords::new(q, ResponseCode::NoError);
        assert_eq!(
            from_error(&NetError::Dns(DnsError::NoRecordsFound(nodata))),
            QueryResult::NoData { negative_ttl: None }
        );
        assert_eq!(
            from_error(&NetError::Dns(DnsError::ResponseCode(
                ResponseCode::ServFail
            ))),
            QueryResult::ServFail
        );
        assert_eq!(from_error(&NetError::Timeout), QueryResult::Timeout);
    }
}
