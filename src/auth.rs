//! Client proxy authentication: the users file, `Proxy-Authorization: Basic` credentials, and
//! the verifier that checks password hashes off the workers.
//!
//! A bcrypt or argon2 check costs tens of milliseconds of CPU on purpose, so a worker never runs
//! one: it sends the request to the [`Verifier`] thread and keeps serving; the answer comes back
//! on the worker's channel with an eventfd wake-up, like a DNS answer. Workers cache accepted
//! credentials (keyed by the exact header value, tied to the [generation](Users::generation) of
//! the users table they were checked against), so agents that reconnect all day pay for one
//! check, and count failures per client ([`client_key`]: the IPv4 address or the IPv6 /64) to
//! refuse password guessing without checking at all. The failure counts ([`Failures`]) outlive
//! a reload; the cached credentials do not.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::mailbox::Mailbox;
use crate::policy::HostEntry;

/// One user's password hash.
#[derive(Clone, PartialEq, Eq)]
enum Hash {
    Bcrypt(String),
    Argon2(String),
}

impl std::fmt::Debug for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hash::Bcrypt(_) => "Bcrypt(***)",
            Hash::Argon2(_) => "Argon2(***)",
        })
    }
}

/// The users file: `name:hash` per line; blank lines and `#` comments are ignored.
#[derive(Debug, Clone)]
pub struct Users {
    hashes: HashMap<String, Hash>,
    /// Which table this is: unique in the process and increasing with each table made, so an
    /// answer checked against one table is never taken for an answer from another (a memory
    /// address is not: a later table can be allocated where a freed one was).
    generation: u64,
}

/// The generation the next users table gets.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

fn next_generation() -> u64 {
    NEXT_GENERATION.fetch_add(1, Ordering::Relaxed)
}

/// An empty table (nobody logs in), with a generation of its own.
impl Default for Users {
    fn default() -> Users {
        Users {
            hashes: HashMap::new(),
            generation: next_generation(),
        }
    }
}

/// Equal when they hold the same users and hashes, whatever their generations.
impl PartialEq for Users {
    fn eq(&self, other: &Users) -> bool {
        self.hashes == other.hashes
    }
}

impl Eq for Users {}

/// Why a users file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UsersError {
    #[error("cannot read {0}: {1}")]
    Read(String, String),
    #[error("{file} line {line}: {problem}")]
    Line {
        file: String,
        line: usize,
        problem: LineProblem,
    },
}

/// A users file's text was refused at `line` (1-based).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {problem}")]
pub struct ParseError {
    pub line: usize,
    pub problem: LineProblem,
}

/// What is wrong with one line of a users file.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LineProblem {
    #[error("expected `name:hash`")]
    NotNameHash,
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("user {0}: malformed argon2 hash")]
    BadArgon2(String),
    #[error(
        "user {0}: expected a bcrypt ($2b$...) or argon2 ($argon2id$...) hash, never a plain password"
    )]
    NotAHash(String),
    #[error("user {0} appears twice")]
    Twice(String),
}

/// A user name that is empty, too long, or not visible ASCII without ':'.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("user name {0:?}: expected 1 to 64 visible ASCII characters without ':'")]
pub struct NameError(pub String);

/// A password could not be hashed (`splicegate user add`).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct HashError(#[from] argon2::password_hash::Error);

impl Users {
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| UsersError::Read(shown.clone(), e.to_string()))?;
        Users::parse(&text).map_err(|e| UsersError::Line {
            file: shown,
            line: e.line,
            problem: e.problem,
        })
    }

    /// Parse the file's text; errors carry the 1-based line.
    pub fn parse(text: &str) -> Result<Users, ParseError> {
        let mut hashes = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let at = |problem: LineProblem| ParseError {
                line: i + 1,
                problem,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, hash)) = line.split_once(':') else {
                return Err(at(LineProblem::NotNameHash));
            };
            check_name(name).map_err(|e| at(e.into()))?;
            let hash =
                if hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$")
                {
                    Hash::Bcrypt(hash.to_owned())
                } else if hash.starts_with("$argon2") {
                    if argon2::PasswordHash::new(hash).is_err() {
                        return Err(at(LineProblem::BadArgon2(name.to_owned())));
                    }
                    Hash::Argon2(hash.to_owned())
                } else {
                    return Err(at(LineProblem::NotAHash(name.to_owned())));
                };
            if hashes.insert(name.to_owned(), hash).is_some() {
                return Err(at(LineProblem::Twice(name.to_owned())));
            }
        }
        Ok(Users {
            hashes,
            generation: next_generation(),
        })
    }

    /// This table's generation: unique in the process, and larger for a table made later.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.hashes.keys().map(String::as_str)
    }

    /// Check a password. Slow by design (tens of ms): never call it on a worker.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        match self.hashes.get(user) {
            // bcrypt reads only the first 72 bytes of a password, so a longer one would match
            // any password sharing those 72 bytes: it never matches. The check still runs (on
            // the first 72 bytes), so a long password costs what any other does.
            Some(Hash::Bcrypt(h)) if password.len() > BCRYPT_MAX_PASSWORD => {
                let _ = bcrypt::verify(&password.as_bytes()[..BCRYPT_MAX_PASSWORD], h);
                false
            }
            Some(Hash::Bcrypt(h)) => bcrypt::verify(password, h).unwrap_or(false),
            Some(Hash::Argon2(h)) => {
                use argon2::PasswordVerifier;
                argon2::PasswordHash::new(h)
                    .map(|parsed| {
                        argon2::Argon2::default()
                            .verify_password(password.as_bytes(), &parsed)
                            .is_ok()
                    })
                    .unwrap_or(false)
            }
            None => {
                // Same cost for unknown users, so timing does not tell which names exist.
                let _ = bcrypt::verify(password, &DUMMY_BCRYPT);
                false
            }
        }
    }
}

/// The longest password bcrypt reads in full; longer ones never match a bcrypt hash.
pub const BCRYPT_MAX_PASSWORD: usize = 72;

/// A bcrypt hash (cost 10) checked for unknown users.
static DUMMY_BCRYPT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| bcrypt::hash("splicegate", 10).unwrap_or_default());

/// User names: 1 to 64 printable ASCII characters, no ':' or whitespace.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty()
        || name.len() > 64
        || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
    {
        return Err(NameError(name.to_owned()));
    }
    Ok(())
}

/// Hash a new password with argon2id (for `splicegate user add`).
pub fn hash_password(password: &str) -> Result<String, HashError> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    Ok(argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// `Proxy-Authorization: Basic <base64(user:password)>` -> `(user, password)`.
pub fn parse_basic(value: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, b64) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (user, password) = raw.split_once(':')?;
    check_name(user).ok()?;
    Some((user.to_owned(), password.to_owned()))
}

/// The `407` answer with the configured realm.
pub fn challenge(realm: &str) -> Vec<u8> {
    let body = "proxy authentication required\n";
    format!(
        "HTTP/1.1 407 Proxy Authentication Required\r\nServer: splicegate\r\nConnection: close\r\nProxy-Authenticate: Basic realm=\"{realm}\"\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `client_auth:`, parsed: Basic proxy authentication of clients. The users file is read and
/// parsed once, with the rest of the configuration; the run-time [`Auth`] is made from this
/// table and never reads the file again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientAuthSettings {
    /// Where the users table was read from (one `name:hash` per line, bcrypt `$2a$`/`$2b$`/`$2y$`
    /// or argon2 PHC strings).
    pub users_file: PathBuf,
    /// The users table as parsed from `users_file`, with its [generation](Users::generation).
    pub users: Users,
    /// The `Proxy-Authenticate: Basic realm="..."` value: no `"`, `\` or control characters.
    pub realm: String,
    /// Failed logins per client address within `failure_window` before the address is refused
    /// without checking; at least 1.
    pub max_failures: u32,
    /// The window over which failures are counted.
    pub failure_window: Duration,
    /// Per-user extra allowlist entries, parsed (same syntax as `allowed_hosts`): `(user,
    /// entries)` in file order.
    pub user_hosts: Vec<(String, Vec<HostEntry>)>,
}

impl ClientAuthSettings {
    /// The default realm.
    pub const DEFAULT_REALM: &'static str = "splicegate";
    /// The default `max_failures`.
    pub const DEFAULT_MAX_FAILURES: u32 = 5;
    /// The default `failure_window`.
    pub const DEFAULT_FAILURE_WINDOW: Duration = Duration::from_secs(60);
}

/// The users and settings in force, shared by the workers through the settings snapshot.
#[derive(Debug)]
pub struct Auth {
    pub users: Users,
    pub realm: String,
    pub max_failures: u32,
    pub failure_window: Duration,
    /// Failed logins per client, shared by the workers and handed from each snapshot to the
    /// next, so a reload resets nobody's count.
    pub failures: Arc<Failures>,
}

impl Auth {
    /// The run-time side of `settings`: the parsed table is shared, never read again.
    /// `failures` is the previous snapshot's table on a reload, a new one at start.
    pub fn from_settings(settings: &ClientAuthSettings, failures: Arc<Failures>) -> Auth {
        Auth::new(
            settings.users.clone(),
            settings.realm.clone(),
            settings.max_failures,
            settings.failure_window,
            failures,
        )
    }

    /// `failures` is the previous snapshot's table on a reload, a new one at start.
    pub fn new(
        users: Users,
        realm: String,
        max_failures: u32,
        failure_window: Duration,
        failures: Arc<Failures>,
    ) -> Auth {
        Auth {
            users,
            realm,
            max_failures,
            failure_window,
            failures,
        }
    }

    /// The generation of the users table: see [`Users::generation`].
    pub fn generation(&self) -> u64 {
        self.users.generation()
    }

    /// Whether `ip` has used up its failed logins in the current window.
    pub fn locked_out(&self, ip: IpAddr, now: Instant) -> bool {
        self.failures
            .locked_out(ip, now, self.max_failures, self.failure_window)
    }

    /// Count a failed login from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        self.failures.failed(ip, now, self.failure_window);
    }

    /// A successful login clears the failures of `ip`'s [`client_key`].
    pub fn succeeded(&self, ip: IpAddr) {
        self.failures.succeeded(ip);
    }
}

/// The key failed logins are counted under: an IPv4 address (also when it arrives as an
/// IPv4-mapped IPv6 address), or an IPv6 address's /64 — one host is usually given a whole /64,
/// so counting per IPv6 address would give a guesser 2^64 fresh starts.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::from(u64::MAX)))),
        },
    }
}

/// Clients tracked for failed logins by default; at the limit the oldest entry is dropped.
pub const FAILURE_TABLE: usize = 64 * 1024;

/// Failed logins per [`client_key`]: the count and the start of its window. Locked only for
/// logins that are not in a worker's cache, which cost a hash check anyway.
#[derive(Debug)]
pub struct Failures {
    table: Mutex<FailureTable>,
}

#[derive(Debug)]
struct FailureTable {
    capacity: usize,
    by_client: HashMap<IpAddr, Failure>,
    /// The same entries by (window start, insertion number): the first is the oldest.
    by_age: BTreeMap<(Instant, u64), IpAddr>,
    /// Numbers entries, so two that start in the same instant both have a place in `by_age`.
    next: u64,
}

#[derive(Debug, Clone, Copy)]
struct Failure {
    count: u32,
    since: Instant,
    order: u64,
}

impl Default for Failures {
    fn default() -> Failures {
        Failures::with_capacity(FAILURE_TABLE)
    }
}

impl Failures {
    /// A table that tracks at most `capacity` clients (at least one).
    pub fn with_capacity(capacity: usize) -> Failures {
        Failures {
            table: Mutex::new(FailureTable {
                capacity: capacity.max(1),
                by_client: HashMap::new(),
                by_age: BTreeMap::new(),
                next: 0,
            }),
        }
    }

    /// The table, also after a panic while it was held: a poisoned lock must not switch the
    /// lockout off.
    fn lock(&self) -> std::sync::MutexGuard<'_, FailureTable> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `ip`'s client has `max` or more failures in the window that is still running.
    pub fn locked_out(&self, ip: IpAddr, now: Instant, max: u32, window: Duration) -> bool {
        let t = self.lock();
        t.by_client
            .get(&client_key(ip))
            .is_some_and(|f| now.duration_since(f.since) < window && f.count >= max)
    }

    /// Count a failed login from `ip`'s client. A window that has run out starts again; a new
    /// client in a full table takes the place of the entry whose window started first.
    pub fn failed(&self, ip: IpAddr, now: Instant, window: Duration) {
        let mut guard = self.lock();
        let t = &mut *guard;
        let key = client_key(ip);
        if let Some(f) = t.by_client.get_mut(&key) {
            if now.duration_since(f.since) >= window {
                t.by_age.remove(&(f.since, f.order));
                f.count = 0;
                f.since = now;
                f.order = t.next;
                t.next += 1;
                t.by_age.insert((f.since, f.order), key);
            }
            f.count = f.count.saturating_add(1);
            return;
        }
        // The oldest windows run out first, so entries that have run out go before any other.
        while t.by_client.len() >= t.capacity {
            let Some((_, oldest)) = t.by_age.pop_first() else {
                break;
            };
            t.by_client.remove(&oldest);
        }
        let order = t.next;
        t.next += 1;
        t.by_client.insert(
            key,
            Failure {
                count: 1,
                since: now,
                order,
            },
        );
        t.by_age.insert((now, order), key);
    }

    /// A successful login clears `ip`'s client.
    pub fn succeeded(&self, ip: IpAddr) {
        let mut guard = self.lock();
        let t = &mut *guard;
        if let Some(f) = t.by_client.remove(&client_key(ip)) {
            t.by_age.remove(&(f.since, f.order));
        }
    }

    /// Clients tracked.
    pub fn len(&self) -> usize {
        self.lock().by_client.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A check's outcome for the worker's connection `(slot, gen)`.
#[derive(Debug)]
pub struct Checked {
    pub slot: u32,
    pub gen: u32,
    pub user: String,
    pub ok: bool,
    /// The [generation](Users::generation) of the users table the password was checked
    /// against: the answer holds for that table only.
    pub table: u64,
}

struct Job {
    auth: Arc<Auth>,
    user: String,
    password: String,
    slot: u32,
    gen: u32,
    reply: Mailbox<Checked>,
}

/// Threads that check password hashes for the workers.
#[derive(Clone)]
pub struct Verifier {
    tx: mpsc::SyncSender<Job>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier")
    }
}

/// Checks waiting beyond this are refused at once (a login storm must not queue without bound).
const QUEUE: usize = 4096;

impl Verifier {
    /// Start `threads` checker threads.
    pub fn start(threads: usize) -> std::io::Result<Verifier> {
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE);
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("splicegate-auth{i}"))
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    let ok = job.auth.users.verify(&job.user, &job.password);
                    let checked = Checked {
                        slot: job.slot,
                        gen: job.gen,
                        user: job.user,
                        ok,
                        table: job.auth.generation(),
                    };
                    job.reply.post(checked);
                })?;
        }
        Ok(Verifier { tx })
    }

    /// Queue a check; false if the queue is full or the verifier is gone. The answer goes on
    /// `tx`, and wakes the worker that `wakes` (any of that worker's mailboxes) belongs to.
    #[allow(clippy::too_many_arguments)]
    pub fn check<W>(
        &self,
        auth: Arc<Auth>,
        user: String,
        password: String,
        slot: u32,
        gen: u32,
        tx: &mpsc::Sender<Checked>,
        wakes: &Mailbox<W>,
    ) -> bool {
        self.tx
            .try_send(Job {
                auth,
                user,
                password,
                slot,
                gen,
                reply: wakes.with_channel(tx.clone()),
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_file_parses_and_verifies_both_hash_kinds() {
        let argon = hash_password("s3cret").unwrap();
        let bcrypt = bcrypt::hash("hunter2", 4).unwrap();
        let text = format!("# agents\n\nalice:{argon}\nbob:{bcrypt}\n");
        let users = Users::parse(&text).unwrap();
        assert_eq!(users.len(), 2);
        assert!(users.verify("alice", "s3cret"));
        assert!(!users.verify("alice", "S3cret"));
        assert!(users.verify("bob", "hunter2"));
        assert!(!users.verify("bob", ""));
        assert!(!users.verify("mallory", "s3cret"));
        assert!(
            !format!("{users:?}").contains(&bcrypt),
            "Debug hides hashes"
        );
    }

    #[test]
    fn users_file_errors_name_the_line() {
        assert_eq!(
            Users::parse("alice\n").unwrap_err(),
            ParseError {
                line: 1,
                problem: LineProblem::NotNameHash
            }
        );
        assert!(Users::parse("alice:plaintext\n")
            .unwrap_err()
            .to_string()
            .contains("never a plain password"));
        let bad_name = Users::parse("\n\nbad name:$2b$04$x\n").unwrap_err();
        assert_eq!(bad_name.line, 3);
        assert!(matches!(bad_name.problem, LineProblem::Name(_)));
        let h = bcrypt::hash("x", 4).unwrap();
        let twice = Users::parse(&format!("a:{h}\na:{h}\n")).unwrap_err();
        assert_eq!(twice.problem, LineProblem::Twice("a".to_owned()));
        assert_eq!(twice.to_string(), "line 2: user a appears twice");
        assert!(Users::parse("a:$argon2id$v=19$m=19456,t=2,p=1$!!!$###\n").is_err());
    }

    #[test]
    fn basic_credentials_parse() {
        assert_eq!(
            parse_basic(b"Basic YWxpY2U6czNjcmV0"),
            Some(("alice".into(), "s3cret".into()))
        );
        assert_eq!(
            parse_basic(b"basic  YWxpY2U6czM6Y3JldA== "),
            Some(("alice".into(), "s3:cret".into())),
            "the password may hold ':'"
        );
        assert_eq!(parse_basic(b"Bearer abc"), None);
        assert_eq!(parse_basic(b"Basic !!!"), None);
        assert_eq!(parse_basic(b"Basic OnB3"), None, "empty user");
    }

    #[test]
    fn challenge_carries_the_realm() {
        let c = String::from_utf8(challenge("gw-east")).unwrap();
        assert!(c.starts_with("HTTP/1.1 407 "));
        assert!(c.contains("Proxy-Authenticate: Basic realm=\"gw-east\"\r\n"));
        let (head, body) = c.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }
    #[test]
    fn a_bcrypt_hash_never_matches_a_password_beyond_72_bytes() {
        let base = "a".repeat(BCRYPT_MAX_PASSWORD);
        let long = format!("{base}-first");
        let other = format!("{base}-second");
        let h = bcrypt::hash(&long, 4).unwrap();
        // bcrypt itself reads only the first 72 bytes: both match its hash.
        assert!(bcrypt::verify(&other, &h).unwrap());
        let users = Users::parse(&format!("alice:{h}\n")).unwrap();
        assert!(
            !users.verify("alice", &long),
            "the password the hash was made from"
        );
        assert!(
            !users.verify("alice", &other),
            "another sharing its first 72 bytes"
        );
        // 72 bytes exactly is read in full and still works.
        let h72 = bcrypt::hash(&base, 4).unwrap();
        let users = Users::parse(&format!("bob:{h72}\n")).unwrap();
        assert!(users.verify("bob", &base));
        assert!(!users.verify("bob", &base[1..]));
        // argon2id has no such limit.
        let argon = hash_password(&long).unwrap();
        let users = Users::parse(&format!("carol:{argon}\n")).unwrap();
        assert!(users.verify("carol", &long));
        assert!(!users.verify("carol", &other));
    }

    #[test]
    fn every_table_has_a_generation_of_its_own() {
        let text = format!("alice:{}\n", bcrypt::hash("x", 4).unwrap());
        let first = Users::parse(&text).unwrap();
        let first_generation = first.generation();
        drop(first);
        // Made where the first one may have been: same contents, another generation.
        let second = Users::parse(&text).unwrap();
        assert!(second.generation() > first_generation);
        let empty = Users::default();
        assert!(empty.generation() > second.generation());
        assert_eq!(
            second,
            Users::parse(&text).unwrap(),
            "equal contents compare equal"
        );
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(client_key(ip("2001:db8:1:2::1")), ip("2001:db8:1:2::"));
        assert_ne!(client_key(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        assert_eq!(client_key(ip("192.0.2.7")), ip("192.0.2.7"));
        // IPv4 clients of a dual-stack listener stay one address each, not one shared /64.
        assert_eq!(client_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_ne!(
            client_key(ip("::ffff:192.0.2.7")),
            client_key(ip("::ffff:192.0.2.8"))
        );

        let failures = Failures::default();
        let now = Instant::now();
        let window = Duration::from_secs(60);
        for host in 1..=3 {
            failures.failed(ip(&format!("2001:db8:1:2::{host}")), now, window);
        }
        assert!(
            failures.locked_out(ip("2001:db8:1:2:ffff::9"), now, 3, window),
            "another address in the same /64 is locked out too"
        );
        assert!(!failures.locked_out(ip("2001:db8:1:3::1"), now, 3, window));
        assert_eq!(failures.len(), 1);
        failures.succeeded(ip("2001:db8:1:2::77"));
        assert!(!failures.locked_out(ip("2001:db8:1:2::1"), now, 3, window));
        assert!(failures.is_empty());
    }

    #[test]
    fn a_full_failure_table_drops_its_oldest_entry_only() {
        let window = Duration::from_secs(60);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let ip = |n: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
        let failures = Failures::with_capacity(3);
        // Client 1 is locked out (3 failures); clients 2 and 3 fill the table after it.
        for _ in 0..3 {
            failures.failed(ip(1), at(0), window);
        }
        failures.failed(ip(2), at(1), window);
        failures.failed(ip(3), at(2), window);
        failures.failed(ip(2), at(3), window);
        failures.failed(ip(2), at(3), window);
        assert!(failures.locked_out(ip(1), at(3), 3, window));
        assert!(failures.locked_out(ip(2), at(3), 3, window));
        // A fourth client: only the oldest (client 1) makes room; client 2's lockout stands.
        failures.failed(ip(4), at(4), window);
        assert_eq!(failures.len(), 3);
        assert!(!failures.locked_out(ip(1), at(4), 3, window));
        assert!(failures.locked_out(ip(2), at(4), 3, window));
        failures.failed(ip(4), at(4), window);
        failures.failed(ip(4), at(4), window);
        assert!(failures.locked_out(ip(4), at(4), 3, window));
        // A window that has run out starts again (and moves the entry to the young end).
        failures.failed(ip(2), at(70), window);
        assert!(!failures.locked_out(ip(2), at(70), 1 + 1, window));
        failures.failed(ip(5), at(71), window);
        assert!(
            failures.locked_out(ip(2), at(71), 1, window),
            "client 2's fresh window is not the oldest"
        );
        assert!(
            !failures.locked_out(ip(3), at(71), 1, window),
            "client 3 was the oldest"
        );
        assert_eq!(failures.len(), 3);
    }
}
