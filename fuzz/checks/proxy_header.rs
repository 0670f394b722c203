// The `proxy_header` fuzz target's invariants, shared with `tests/fuzz_corpus.rs` (which replays
// the corpus and the regressions through them under `cargo test`).
//
// The PROXY protocol header parser (`proto::proxy::parse`), fed what a client or a broken
// balancer could send:
// - a decided header lies inside the buffer, within the protocol's bounds (107 bytes for v1,
//   16 + `V2_MAX_PAYLOAD` for v2), and the header alone parses to the same answer;
// - every strict prefix of a decided header is incomplete (`Ok(None)`), never an error or
//   another header; and any prefix of the input that decides agrees with the whole input (the
//   answer does not depend on how the bytes were split into reads);
// - `Ok(None)` only below the largest header;
// - round trip: a header generated from the input, encoded as v1 and as v2 (with TLVs), parses
//   back to itself, with its exact length, whatever follows it.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use splicegate::proto::proxy::{encode_v1, encode_v2, parse, Header, V1_MAX, V2_MAX_PAYLOAD};

const LARGEST: usize = 16 + V2_MAX_PAYLOAD;

/// Runs every invariant on one input; panics when one does not hold.
pub fn check(data: &[u8]) {
    let whole = parse(data);
    match whole {
        Ok(Some((_, len))) => {
            assert!(len <= data.len(), "header length {len} past the buffer");
            assert!(len <= LARGEST, "header of {len} bytes accepted");
            if data.first() == Some(&b'P') {
                assert!(len <= V1_MAX, "v1 header of {len} bytes accepted");
            }
            assert_eq!(
                parse(&data[..len]),
                whole,
                "the header alone decides differently"
            );
            every_prefix_incomplete(&data[..len]);
        }
        Ok(None) => assert!(data.len() < LARGEST, "Ok(None) at {} bytes", data.len()),
        Err(_) => {}
    }
    let first = usize::from(data.first().copied().unwrap_or(0));
    for cut in [
        first * data.len() / 256,
        data.len().saturating_sub(1),
        16,
        13,
        12,
    ] {
        let Some(prefix) = data.get(..cut) else {
            continue;
        };
        let early = parse(prefix);
        assert!(
            early == Ok(None) || early == whole,
            "prefix of {cut} bytes decided {early:?}, the whole input {whole:?}"
        );
    }
    round_trip(data);
}

/// Every strict prefix of a complete header is incomplete. Checked at every length for short
/// headers, at a spread of lengths for long ones.
fn every_prefix_incomplete(header: &[u8]) {
    let step = (header.len() / 64).max(1);
    let cuts = (0..header.len())
        .step_by(step)
        .chain([header.len().saturating_sub(1)]);
    for n in cuts.filter(|&n| n < header.len()) {
        assert_eq!(
            parse(&header[..n]),
            Ok(None),
            "prefix of {n} bytes of a valid header"
        );
    }
}

/// TLVs as (type, value).
type Tlvs = Vec<(u8, Vec<u8>)>;

/// A header made from the input's bytes: its kind, addresses and ports, and TLVs.
fn generated(data: &[u8]) -> Option<(Header, Tlvs)> {
    let (&kind, rest) = data.split_first()?;
    let header = match kind % 4 {
        0 => {
            let b = rest.get(..12)?;
            Header::Proxied {
                source: SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
                    u16::from_be_bytes([b[8], b[9]]),
                ),
                destination: SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(b[4], b[5], b[6], b[7])),
                    u16::from_be_bytes([b[10], b[11]]),
                ),
            }
        }
        1 => {
            let b = rest.get(..36)?;
            let ip = |at: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&b[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            Header::Proxied {
                source: SocketAddr::new(ip(0), u16::from_be_bytes([b[32], b[33]])),
                destination: SocketAddr::new(ip(16), u16::from_be_bytes([b[34], b[35]])),
            }
        }
        2 => Header::Local,
        _ => Header::Unknown,
    };
    // TLVs from what is left: a type byte, a length byte (scaled), the value.
    let mut tlvs = Vec::new();
    let mut tail = rest.get(36.min(rest.len())..).unwrap_or_default();
    while let [kind, len, more @ ..] = tail {
        let n = usize::from(*len).min(more.len());
        tlvs.push((*kind, more[..n].to_vec()));
        tail = &more[n..];
        if tlvs.len() >= 8 {
            break;
        }
    }
    Some((header, tlvs))
}

fn round_trip(data: &[u8]) {
    let Some((header, tlvs)) = generated(data) else {
        return;
    };
    let borrowed: Vec<(u8, &[u8])> = tlvs.iter().map(|(k, v)| (*k, v.as_slice())).collect();
    let mut encodings = Vec::new();
    if let Some(v2) = encode_v2(&header, &borrowed) {
        encodings.push((header, v2));
    }
    if let Header::Proxied {
        source,
        destination,
    } = header
    {
        encodings.push((header, encode_v1(source, destination)));
    }
    for (want, bytes) in encodings {
        assert_eq!(
            parse(&bytes),
            Ok(Some((want, bytes.len()))),
            "encoded {want:?} as {bytes:?}"
        );
        every_prefix_incomplete(&bytes);
        let mut followed = bytes.clone();
        followed.extend_from_slice(data);
        assert_eq!(
            parse(&followed),
            Ok(Some((want, bytes.len()))),
            "bytes after the header changed the answer"
        );
    }
}
