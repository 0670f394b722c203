//! Client proxy authentication: the users file, `Proxy-Authorization: Basic` credentials, and
//! the verifier that checks password hashes off the workers.
//!
//! A bcrypt or argon2 check costs tens of milliseconds of CPU on purpose, so a worker never runs
//! one: it sends the request to the [`Verifier`] thread and keeps serving; the answer comes back
//! on the worker's channel with an eventfd wake-up, like a DNS answer. Workers cache accepted
//! credentials (keyed by the exact header value, tied to the users file they were checked
//! against), so agents that reconnect all day pay for one check, and count failures per client
//! address to refuse password guessing without checking at all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use base64::Engine as _;

use crate::engine::sys;
use crate::resolve::ReplyTo;

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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Users {
    hashes: HashMap<String, Hash>,
}

/// Why a users file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UsersError {
    #[error("cannot read {0}: {1}")]
    Read(String, String),
    #[error("{file} line {line}: {what}")]
    Line {
        file: String,
        line: usize,
        what: String,
    },
}

impl Users {
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| UsersError::Read(shown.clone(), e.to_string()))?;
        Users::parse(&text).map_err(|(line, what)| UsersError::Line {
            file: shown,
            line,
            what,
        })
    }

    /// Parse the file's text; errors carry the 1-based line.
    pub fn parse(text: &str) -> Result<Users, (usize, String)> {
        let mut hashes = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, hash)) = line.split_once(':') else {
                return Err((i + 1, "expected `name:hash`".into()));
            };
            if let Err(e) = check_name(name) {
                return Err((i + 1, e));
            }
            let hash = if hash.starts_with("$2a$")
                || hash.starts_with("$2b$")
                || hash.starts_with("$2y$")
            {
                Hash::Bcrypt(hash.to_owned())
            } else if hash.starts_with("$argon2") {
                if argon2::PasswordHash::new(hash).is_err() {
                    return Err((i + 1, format!("user {name}: malformed argon2 hash")));
                }
                Hash::Argon2(hash.to_owned())
            } else {
                return Err((
                    i + 1,
                    format!("user {name}: expected a bcrypt ($2b$...) or argon2 ($argon2id$...) hash, never a plain password"),
                ));
            };
            if hashes.insert(name.to_owned(), hash).is_some() {
                return Err((i + 1, format!("user {name} appears twice")));
            }
        }
        Ok(Users { hashes })
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

/// A bcrypt hash (cost 10) checked for unknown users.
static DUMMY_BCRYPT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| bcrypt::hash("splicegate", 10).unwrap_or_default());

/// User names: 1 to 64 printable ASCII characters, no ':' or whitespace.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
    {
        return Err(format!(
            "user name {name:?}: expected 1 to 64 visible ASCII characters without ':'"
        ));
    }
    Ok(())
}

/// Hash a new password with argon2id (for `splicegate user add`).
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
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

/// The users and settings in force, shared by the workers through the settings snapshot.
#[derive(Debug)]
pub struct Auth {
    pub users: Users,
    pub realm: String,
    pub max_failures: u32,
    pub failure_window: std::time::Duration,
    /// Failed logins per client address: (count, start of the window). Shared by the workers,
    /// and locked only for logins that are not in a worker's cache, which cost a hash check
    /// anyway.
    pub failures: std::sync::Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// Client addresses tracked for failed logins before old entries are dropped.
const FAILURE_TABLE: usize = 64 * 1024;

impl Auth {
    pub fn new(
        users: Users,
        realm: String,
        max_failures: u32,
        failure_window: std::time::Duration,
    ) -> Auth {
        Auth {
            users,
            realm,
            max_failures,
            failure_window,
            failures: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` has used up its failed logins in the current window.
    pub fn locked_out(&self, ip: IpAddr, now: Instant) -> bool {
        let Ok(map) = self.failures.lock() else {
            return false;
        };
        map.get(&ip).is_some_and(|(n, since)| {
            now.duration_since(*since) < self.failure_window && *n >= self.max_failures
        })
    }

    /// Count a failed login from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let Ok(mut map) = self.failures.lock() else {
            return;
        };
        if map.len() >= FAILURE_TABLE {
            let window = self.failure_window;
            map.retain(|_, (_, since)| now.duration_since(*since) < window);
            if map.len() >= FAILURE_TABLE {
                map.clear();
            }
        }
        let e = map.entry(ip).or_insert((0, now));
        if now.duration_since(e.1) >= self.failure_window {
            *e = (0, now);
        }
        e.0 += 1;
    }

    /// A successful login clears the address's failures.
    pub fn succeeded(&self, ip: IpAddr) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(&ip);
        }
    }
}

/// A check's outcome for the worker's connection `(slot, gen)`.
#[derive(Debug)]
pub struct Checked {
    pub slot: u32,
    pub gen: u32,
    pub user: String,
    pub ok: bool,
}

struct Job {
    auth: Arc<Auth>,
    user: String,
    password: String,
    slot: u32,
    gen: u32,
    tx: mpsc::Sender<Checked>,
    wake: ReplyTo,
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
                    };
                    if job.tx.send(checked).is_ok() {
                        sys::eventfd_signal(job.wake.wake.as_fd());
                    }
                })?;
        }
        Ok(Verifier { tx })
    }

    /// Queue a check; false if the queue is full or the verifier is gone.
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        &self,
        auth: Arc<Auth>,
        user: String,
        password: String,
        slot: u32,
        gen: u32,
        tx: &mpsc::Sender<Checked>,
        wake: &ReplyTo,
    ) -> bool {
        self.tx
            .try_send(Job {
                auth,
                user,
                password,
                slot,
                gen,
                tx: tx.clone(),
                wake: wake.clone(),
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
        assert_eq!(Users::parse("alice\n").unwrap_err().0, 1);
        assert!(Users::parse("alice:plaintext\n")
            .unwrap_err()
            .1
            .contains("never a plain password"));
        assert_eq!(Users::parse("\n\nbad name:$2b$04$x\n").unwrap_err().0, 3);
        let h = bcrypt::hash("x", 4).unwrap();
        assert!(Users::parse(&format!("a:{h}\na:{h}\n"))
            .unwrap_err()
            .1
            .contains("twice"));
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
}
