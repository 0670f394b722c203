//! The hosts file (`/etc/hosts` by default), answered before DNS as the C library's
//! `hosts: files dns` does: a listed name gets the file's addresses and no query of either
//! family.
//!
//! The file is re-read when it changes. At most once per [`RECHECK`] a lookup compares the
//! file's identity (inode, size, modification time) with the one last read: one `stat(2)` on
//! the control thread, never on a worker. A file that cannot be read has no entries (the C
//! library behaves the same), and the failure is reported once per change of the error.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How often, at most, the file's identity is checked.
pub const RECHECK: Duration = Duration::from_secs(1);

/// Largest hosts file read; more is ignored (with a warning).
const MAX_BYTES: u64 = 16 << 20;

/// What identifies one version of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

/// Name -> addresses, in file order (IPv4 first is not imposed: the file's order is kept).
pub type Table = HashMap<String, Vec<IpAddr>>;

/// The hosts file and what was last read from it.
#[derive(Debug)]
pub struct HostsFile {
    path: PathBuf,
    table: Table,
    /// Identity of the version in `table`; `None` = never read or unreadable.
    stamp: Option<Stamp>,
    checked_at: Option<Instant>,
    /// The last read error reported, so one failure is logged once.
    last_error: Option<String>,
}

/// A change the caller may want to log.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// Nothing changed.
    No,
    /// Read (again): this many names.
    Read(usize),
    /// The file could not be read; it now has no entries.
    Failed(String),
}

impl HostsFile {
    pub fn new(path: PathBuf) -> HostsFile {
        HostsFile {
            path,
            table: HashMap::new(),
            stamp: None,
            checked_at: None,
            last_error: None,
        }
    }

    /// The addresses listed for `name` (lower case, no trailing dot), if any.
    pub fn get(&self, name: &str) -> Option<&[IpAddr]> {
        self.table.get(name).map(Vec::as_slice)
    }

    /// Re-read the file if it changed, checking at most once per [`RECHECK`].
    pub fn refresh(&mut self, now: Instant) -> Reloaded {
        if self
            .checked_at
            .is_some_and(|t| now.saturating_duration_since(t) < RECHECK)
        {
            return Reloaded::No;
        }
        self.checked_at = Some(now);
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) => return self.failed(format!("{}: {e}", self.path.display())),
        };
        let stamp = Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        };
        if self.stamp == Some(stamp) {
            return Reloaded::No;
        }
        if meta.size() > MAX_BYTES {
            return self.failed(format!(
                "{}: larger than {} MiB",
                self.path.display(),
                MAX_BYTES >> 20
            ));
        }
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                self.table = parse(&String::from_utf8_lossy(&bytes));
                self.stamp = Some(stamp);
                self.last_error = None;
                Reloaded::Read(self.table.len())
            }
            Err(e) => self.failed(format!("{}: {e}", self.path.display())),
        }
    }

    fn failed(&mut self, error: String) -> Reloaded {
        self.table.clear();
        self.stamp = None;
        if self.last_error.as_deref() == Some(error.as_str()) {
            return Reloaded::No;
        }
        self.last_error = Some(error.clone());
        Reloaded::Failed(error)
    }
}

/// Parse hosts(5): `address name [aliases...]`, `#` starts a comment. Lines whose address does
/// not parse (or has a zone index, which a dial cannot use) are skipped, as the C library does.
/// Names are lower-cased without a trailing dot; a name listed twice collects every address.
pub fn parse(text: &str) -> Table {
    let mut table: Table = HashMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut fields = line.split_ascii_whitespace();
        let Some(Ok(ip)) = fields.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        for name in fields {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name.is_empty() {
                continue;
            }
            let ips = table.entry(name).or_default();
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn temp_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "splicegate-hosts-{}-{tag}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ))
    }

    #[test]
    fn parses_names_aliases_comments_and_both_families() {
        let t = parse(
            "# comment\n127.0.0.1 localhost\n::1 localhost ip6-localhost\n\
             10.1.2.3\tWS1.ods.opinsights.azure.com. alias # trailing\n\
             not-an-ip bad.example\nfe80::1%eth0 zoned.example\n10.1.2.4 ws1.ods.opinsights.azure.com\n",
        );
        assert_eq!(
            t.get("localhost").map(Vec::as_slice),
            Some(
                &[
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(Ipv6Addr::LOCALHOST)
                ][..]
            )
        );
        assert_eq!(
            t.get("ws1.ods.opinsights.azure.com").map(Vec::len),
            Some(2),
            "{t:?}"
        );
        assert!(t.contains_key("alias"));
        assert!(!t.contains_key("bad.example"));
        assert!(!t.contains_key("zoned.example"));
        assert!(!t.contains_key("trailing"));
    }

    #[test]
    fn rereads_on_change_at_most_once_per_recheck() {
        let path = temp_path("reread");
        std::fs::write(&path, "192.0.2.1 a.example\n").unwrap();
        let mut h = HostsFile::new(path.clone());
        let t0 = Instant::now();
        assert_eq!(h.refresh(t0), Reloaded::Read(1));
        assert!(h.get("a.example").is_some());
        // A new version (different size): not seen before RECHECK has passed.
        std::fs::write(&path, "192.0.2.2 b.example\n192.0.2.3 c.example\n").unwrap();
        assert_eq!(h.refresh(t0 + RECHECK / 2), Reloaded::No);
        assert!(h.get("a.example").is_some());
        assert_eq!(h.refresh(t0 + RECHECK), Reloaded::Read(2));
        assert!(h.get("a.example").is_none());
        assert!(h.get("c.example").is_some());
        // Unchanged: no re-read.
        assert_eq!(h.refresh(t0 + RECHECK * 3), Reloaded::No);
        // Gone: no entries, reported once.
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(h.refresh(t0 + RECHECK * 4), Reloaded::Failed(_)));
        assert!(h.get("c.example").is_none());
        assert_eq!(h.refresh(t0 + RECHECK * 5), Reloaded::No);
    }
}
