//! `dns`: a small authoritative DNS server over UDP for the resolution-path benchmark
//! (`loadtest/resolve.sh`). It answers A queries for the names it is given with one address at a
//! fixed TTL, AAAA queries for them with NODATA (and an SOA whose minimum is the same TTL), and
//! everything else with NXDOMAIN (with that SOA). It counts the queries it receives and keeps the
//! count in `--count-file` (`total a aaaa other`, then one line per name and type), so a script can print how many queries each
//! run cost. Bounded by `--seconds`; loopback addresses only in the scripts that use it.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Counts by query type, and by name and type.
#[derive(Default)]
struct Counts {
    a: u64,
    aaaa: u64,
    other: u64,
    by_name: BTreeMap<(String, u16), u64>,
}

/// Serve until `seconds` have passed.
pub fn serve(
    listen: SocketAddr,
    names: &[String],
    address: Ipv4Addr,
    ttl: u32,
    seconds: u64,
    count_file: &Path,
) -> Result<()> {
    let sock = UdpSocket::bind(listen).with_context(|| format!("bind UDP {listen}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let names: Vec<String> = names
        .iter()
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
        .collect();
    let mut counts = Counts::default();
    write_counts(count_file, &counts)?;
    println!("listening {}", sock.local_addr()?);
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut buf = [0u8; 1500];
    while Instant::now() < end {
        let Ok((n, peer)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let Some((name, qtype, qend)) = question(&buf[..n]) else {
            continue;
        };
        match qtype {
            1 => counts.a += 1,
            28 => counts.aaaa += 1,
            _ => counts.other += 1,
        }
        *counts.by_name.entry((name.clone(), qtype)).or_default() += 1;
        let known = names.contains(&name);
        let resp = response(&buf[..qend], qtype, known, address, ttl);
        let _ = sock.send_to(&resp, peer);
        write_counts(count_file, &counts)?;
    }
    Ok(())
}

fn write_counts(path: &Path, c: &Counts) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut text = format!(
        "{} {} {} {}\n",
        c.a + c.aaaa + c.other,
        c.a,
        c.aaaa,
        c.other
    );
    for ((name, qtype), n) in &c.by_name {
        text.push_str(&format!("{name} type {qtype}: {n}\n"));
    }
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The question's name (lower case), type, and where the question ends.
fn question(q: &[u8]) -> Option<(String, u16, usize)> {
    if q.len() < 12 || q[2] & 0x80 != 0 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    let mut pos = 12;
    let mut labels = Vec::new();
    for _ in 0..128 {
        let len = *q.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            let qtype = u16::from_be_bytes([*q.get(pos)?, *q.get(pos + 1)?]);
            q.get(pos + 3)?;
            return Some((labels.join("."), qtype, pos + 4));
        }
        if len & 0xC0 != 0 {
            return None;
        }
        labels.push(String::from_utf8_lossy(q.get(pos..pos + len)?).to_ascii_lowercase());
        pos += len;
    }
    None
}

/// The answer to the question `head` (header + question).
fn response(head: &[u8], qtype: u16, known: bool, address: Ipv4Addr, ttl: u32) -> Vec<u8> {
    let answer = known && qtype == 1;
    let rcode = if known { 0 } else { 3 };
    let mut r = Vec::with_capacity(head.len() + 96);
    r.extend_from_slice(&head[0..2]);
    r.push(0x84 | (head[2] & 0x01)); // QR, AA, RD copied
    r.push(0x80 | rcode); // RA
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&u16::from(answer).to_be_bytes());
    r.extend_from_slice(&u16::from(!answer).to_be_bytes());
    r.extend_from_slice(&0u16.to_be_bytes());
    r.extend_from_slice(&head[12..]);
    if answer {
        r.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1]);
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&4u16.to_be_bytes());
        r.extend_from_slice(&address.octets());
    } else {
        // SOA of the root-less zone "test.": negative TTL = min(SOA TTL, minimum) = ttl.
        let mut rdata = Vec::new();
        for name in ["ns.test", "hostmaster.test"] {
            for label in name.split('.') {
                rdata.push(label.len() as u8);
                rdata.extend_from_slice(label.as_bytes());
            }
            rdata.push(0);
        }
        for v in [1u32, 3600, 600, 86_400, ttl] {
            rdata.extend_from_slice(&v.to_be_bytes());
        }
        r.extend_from_slice(&[4, b't', b'e', b's', b't', 0, 0, 6, 0, 1]);
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        r.extend_from_slice(&rdata);
    }
    r
}
