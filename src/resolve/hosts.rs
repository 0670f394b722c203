//! The hosts file (`/etc/hosts` by default), answered before DNS as the C library's
//! `hosts: files dns` does: a listed name gets the file's addresses and no query of either
//! family. Order on a worker: the config's `hosts:` map, then this file, then DNS.
//!
//! # Who reads, who answers
//! The control thread owns the file: the resolver task reads it at start and, on a timer of its
//! own, compares the file's identity (device, inode, size, modification and change times) with
//! the version last read, at most once per [`RECHECK`]: one `stat(2)`, never on a worker. Each
//! version it takes is published whole as an immutable [`Table`] behind an `ArcSwap`
//! ([`Shared`]), the way the configuration snapshot is; a worker answers a listed name itself
//! through its own [`Pins`] (a per-worker `arc_swap::Cache`): no syscall, no lock, no round
//! trip to the resolver.
//!
//! # A file being written
//! An editor that truncates and rewrites in place leaves the file briefly empty or half
//! written, and the C library reads whatever is there. Here a changed file is taken only once
//! it holds still: a version is published when two re-checks in a row ([`RECHECK`] apart) find
//! the same identity, and the bytes read match the size `stat(2)` gave. Until then the previous
//! table stays in force, so a pinned name never falls to DNS for the moment of a rewrite. A
//! change (an edit, a rename over it, a removal) is therefore in force within two re-checks
//! (about 2 s). Falling to DNS never widens access anyway (policy is on the name, and every
//! address still meets the private-destination guard), but it would send a pinned Private Link
//! name to its public address, which an operator does not expect. Limits: a writer that
//! pauses mid-file for longer than a re-check is taken as it stands (and replaced once it
//! finishes), and a rewrite to the same size within one tick of the file system's clock
//! keeps the same identity, as it did before.
//!
//! A file that cannot be read (absent, not readable, larger than the 16 MiB read) has no
//! entries once the failure has held for two re-checks (at start: at once), as the C library
//! has none; the failure is reported once per change of the error.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Cache};

/// How often the file's identity is checked.
pub const RECHECK: Duration = Duration::from_secs(1);

/// Largest hosts file read; a larger one is an error (no entries, with a warning).
const MAX_BYTES: u64 = 16 << 20;

/// What identifies one version of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    /// Moved by `chmod` too, so a file that becomes readable is read again.
    ctime_ns: i128,
}

/// Name -> addresses, in file order (IPv4 first is not imposed: the file's order is kept).
pub type Table = HashMap<String, Vec<IpAddr>>;

/// The published table: written by the resolver task, read by every worker.
pub type Shared = Arc<ArcSwap<Table>>;

/// One worker's view of the published table. `get` touches no shared reference count unless
/// a new table was published since the last call.
#[derive(Debug, Clone)]
pub struct Pins(Cache<Shared, Arc<Table>>);

impl Pins {
    pub fn new(shared: Shared) -> Pins {
        Pins(Cache::new(shared))
    }

    /// The addresses listed for `name` (as a CONNECT gives it: any case, maybe a trailing
    /// dot), if any.
    pub fn get(&mut self, name: &str) -> Option<&[IpAddr]> {
        let table = self.0.load();
        if table.is_empty() {
            return None;
        }
        let name = name.trim_end_matches('.');
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            table.get(&name.to_ascii_lowercase())
        } else {
            table.get(name)
        }
        .map(Vec::as_slice)
    }
}

/// What one look at the file found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// A version of the file, by identity.
    File(Stamp),
    /// It cannot be read: absent, not a file we may stat, or too large.
    Error(String),
}

/// The hosts file, the version last published and a change waiting to hold still.
#[derive(Debug)]
pub struct HostsFile {
    path: PathBuf,
    /// The table the workers read; stored only by [`HostsFile::refresh`].
    shared: Shared,
    /// What the published table came from; `None` until the first version is taken.
    published: Option<Seen>,
    /// A change seen at the last look, taken if the next look sees it unchanged.
    pending: Option<Seen>,
    checked_at: Option<Instant>,
}

/// A change the caller may want to log.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// Nothing published.
    No,
    /// Read (again) and published: this many names.
    Read(usize),
    /// The file cannot be read; an empty table is published.
    Failed(String),
}

impl HostsFile {
    pub fn new(path: PathBuf) -> HostsFile {
        HostsFile {
            path,
            shared: Arc::new(ArcSwap::from_pointee(Table::new())),
            published: None,
            pending: None,
            checked_at: None,
        }
    }

    /// The table the workers read.
    pub fn shared(&self) -> Shared {
        Arc::clone(&self.shared)
    }

    /// The addresses the published table lists for `name` (lower case, no trailing dot).
    pub fn get(&self, name: &str) -> Option<Vec<IpAddr>> {
        self.shared.load().get(name).cloned()
    }

    /// Look at the file if [`RECHECK`] has passed since the last look, and publish a change
    /// that held still (see the module's docs).
    pub fn refresh(&mut self, now: Instant) -> Reloaded {
        if self
            .checked_at
            .is_some_and(|t| now.saturating_duration_since(t) < RECHECK)
        {
            return Reloaded::No;
        }
        self.checked_at = Some(now);
        let seen = self.look();
        if self.published.as_ref() == Some(&seen) {
            self.pending = None;
            return Reloaded::No;
        }
        // The first version is taken at once: there is no earlier table to keep in force.
        if self.published.is_some() && self.pending.as_ref() != Some(&seen) {
            self.pending = Some(seen);
            return Reloaded::No;
        }
        self.pending = None;
        let stamp = match seen {
            Seen::Error(e) => {
                self.publish(Seen::Error(e.clone()), Table::new());
                return Reloaded::Failed(e);
            }
            Seen::File(stamp) => stamp,
        };
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) => {
                // Readable again only after a change of identity (`chmod` moves the ctime).
                let e = format!("{}: {e}", self.path.display());
                self.publish(Seen::File(stamp), Table::new());
                return Reloaded::Failed(e);
            }
        };
        let whole = u64::try_from(bytes.len()).is_ok_and(|n| n == stamp.size);
        if !whole || self.look() != Seen::File(stamp) {
            // A writer got in between: the change is still under way, looked at again next time.
            return Reloaded::No;
        }
        let table = parse(&String::from_utf8_lossy(&bytes));
        let n = table.len();
        self.publish(Seen::File(stamp), table);
        Reloaded::Read(n)
    }

    fn publish(&mut self, seen: Seen, table: Table) {
        self.shared.store(Arc::new(table));
        self.published = Some(seen);
    }

    /// One `stat(2)`.
    fn look(&self) -> Seen {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) => return Seen::Error(format!("{}: {e}", self.path.display())),
        };
        if meta.size() > MAX_BYTES {
            return Seen::Error(format!(
                "{}: larger than {} MiB",
                self.path.display(),
                MAX_BYTES >> 20
            ));
        }
        Seen::File(Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        })
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

    fn ips(h: &HostsFile, name: &str) -> Option<Vec<IpAddr>> {
        h.get(name)
    }

    #[test]
    fn a_change_is_published_once_it_holds_still_and_checked_at_most_once_per_recheck() {
        let path = temp_path("reread");
        std::fs::write(&path, "192.0.2.1 a.example\n").unwrap();
        let mut h = HostsFile::new(path.clone());
        let mut pins = Pins::new(h.shared());
        let t0 = Instant::now();
        // The first version is taken at once.
        assert_eq!(h.refresh(t0), Reloaded::Read(1));
        assert!(pins.get("a.example").is_some());
        // A new version (different size): not looked at before RECHECK has passed, then seen
        // once (kept pending), then taken when the next look finds it unchanged.
        std::fs::write(&path, "192.0.2.2 b.example\n192.0.2.3 c.example\n").unwrap();
        assert_eq!(h.refresh(t0 + RECHECK / 2), Reloaded::No);
        assert_eq!(h.refresh(t0 + RECHECK), Reloaded::No);
        assert!(
            pins.get("a.example").is_some(),
            "pending: the old table stays"
        );
        assert_eq!(h.refresh(t0 + RECHECK * 2), Reloaded::Read(2));
        assert!(pins.get("a.example").is_none());
        assert!(pins.get("c.example").is_some());
        // Unchanged: nothing published.
        assert_eq!(h.refresh(t0 + RECHECK * 3), Reloaded::No);
        // Gone: no entries once that held for a re-check, reported once.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(h.refresh(t0 + RECHECK * 4), Reloaded::No);
        assert!(pins.get("c.example").is_some());
        assert!(matches!(h.refresh(t0 + RECHECK * 5), Reloaded::Failed(_)));
        assert!(pins.get("c.example").is_none());
        assert_eq!(h.refresh(t0 + RECHECK * 6), Reloaded::No);
        assert_eq!(h.refresh(t0 + RECHECK * 7), Reloaded::No);
        // Back: read again.
        std::fs::write(&path, "192.0.2.4 d.example\n").unwrap();
        assert_eq!(h.refresh(t0 + RECHECK * 8), Reloaded::No);
        assert_eq!(h.refresh(t0 + RECHECK * 9), Reloaded::Read(1));
        assert!(pins.get("d.example").is_some());
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_truncated_or_half_written_file_seen_once_never_replaces_the_table() {
        let path = temp_path("partial");
        let full = "192.0.2.1 a.example\n192.0.2.2 b.example\n";
        std::fs::write(&path, full).unwrap();
        let mut h = HostsFile::new(path.clone());
        let t0 = Instant::now();
        assert_eq!(h.refresh(t0), Reloaded::Read(2));
        // An editor truncates, a look falls in between, then it writes the new content.
        std::fs::write(&path, "").unwrap();
        assert_eq!(h.refresh(t0 + RECHECK), Reloaded::No);
        assert!(ips(&h, "a.example").is_some() && ips(&h, "b.example").is_some());
        std::fs::write(&path, "192.0.2.1 a.example\n192.0.2").unwrap();
        assert_eq!(h.refresh(t0 + RECHECK * 2), Reloaded::No);
        assert!(
            ips(&h, "b.example").is_some(),
            "half written: still the old table"
        );
        // (A size of its own: a coarse clock may give every write here the same mtime.)
        std::fs::write(&path, "192.0.2.1 a.example\n192.0.2.99 b.example\n").unwrap();
        assert_eq!(h.refresh(t0 + RECHECK * 3), Reloaded::No);
        assert_eq!(h.refresh(t0 + RECHECK * 4), Reloaded::Read(2));
        assert_eq!(
            ips(&h, "b.example"),
            Some(vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99))])
        );
        // A file emptied on purpose is taken once it held still.
        std::fs::write(&path, "").unwrap();
        assert_eq!(h.refresh(t0 + RECHECK * 5), Reloaded::No);
        assert_eq!(h.refresh(t0 + RECHECK * 6), Reloaded::Read(0));
        assert!(ips(&h, "a.example").is_none());
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_file_renamed_over_the_old_one_is_taken() {
        let path = temp_path("rename");
        let tmp = temp_path("rename-tmp");
        std::fs::write(&path, "192.0.2.1 a.example\n").unwrap();
        let mut h = HostsFile::new(path.clone());
        let t0 = Instant::now();
        assert_eq!(h.refresh(t0), Reloaded::Read(1));
        // Same size, so only the inode tells the versions apart.
        std::fs::write(&tmp, "192.0.2.1 b.example\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(h.refresh(t0 + RECHECK), Reloaded::No);
        assert_eq!(h.refresh(t0 + RECHECK * 2), Reloaded::Read(1));
        assert!(ips(&h, "a.example").is_none());
        assert!(ips(&h, "b.example").is_some());
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn an_absent_or_oversize_file_has_no_entries_from_the_start() {
        let path = temp_path("absent");
        let _ = std::fs::remove_file(&path);
        let mut h = HostsFile::new(path.clone());
        let t0 = Instant::now();
        assert!(matches!(h.refresh(t0), Reloaded::Failed(_)));
        assert_eq!(h.refresh(t0 + RECHECK), Reloaded::No, "reported once");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MAX_BYTES + 1).unwrap();
        assert_eq!(h.refresh(t0 + RECHECK * 2), Reloaded::No);
        let Reloaded::Failed(e) = h.refresh(t0 + RECHECK * 3) else {
            panic!("an oversize file is an error");
        };
        assert!(e.contains("larger than 16 MiB"), "{e}");
        assert_eq!(h.refresh(t0 + RECHECK * 4), Reloaded::No);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn pins_follow_the_published_table_and_normalise_the_name() {
        let path = temp_path("pins");
        std::fs::write(&path, "192.0.2.1 a.example\n").unwrap();
        let mut h = HostsFile::new(path.clone());
        let mut pins = Pins::new(h.shared());
        assert!(pins.get("a.example").is_none(), "nothing published yet");
        let t0 = Instant::now();
        assert_eq!(h.refresh(t0), Reloaded::Read(1));
        let want = [IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))];
        assert_eq!(pins.get("a.example"), Some(&want[..]));
        assert_eq!(pins.get("A.Example."), Some(&want[..]));
        assert_eq!(pins.get("b.example"), None);
        // A worker's clone reads the same table.
        let mut other = pins.clone();
        assert_eq!(other.get("a.example"), Some(&want[..]));
        let _ = std::fs::remove_file(path);
    }
}
