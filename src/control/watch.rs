//! Watching the configuration file for changes (inotify), so a saved edit reloads without a
//! SIGHUP.
//!
//! The watch is on the file's directory, filtered by the file's name: editors that save by
//! writing a new file and renaming it over the old one (and `splicegate config set`, which does
//! the same atomically) replace the inode, which a watch on the file itself would lose. Events are
//! debounced: [`Watcher::changed`] returns once the directory has been quiet for the debounce
//! (`limits.reload_debounce`), so an editor's write-then-rename or a multi-step save reloads
//! once, on the final content. [`read_settled`] then reads the file and checks that it held still
//! while it was read, so a write still in progress is read again rather than applied half-done.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use inotify::{EventMask, Inotify, WatchMask};
use tokio::sync::mpsc;

/// An inotify watch on one file's directory. The blocking reads happen on a small thread of
/// their own (`splicegate-watch`), which forwards "the file changed" to the control runtime.
pub struct Watcher {
    rx: mpsc::UnboundedReceiver<io::Result<()>>,
    dir: PathBuf,
    /// Quiet time after the last event before the file is considered saved; set from
    /// `limits.reload_debounce` at start and after each reload.
    debounce: Duration,
    /// When the last relevant event arrived, while a quiet period is running.
    since: Option<tokio::time::Instant>,
}

impl Watcher {
    /// Watch `path`'s directory for writes, renames, creations and deletions of `path`; report a
    /// change once the directory has been quiet for `debounce`.
    pub fn new(path: &Path, debounce: Duration) -> io::Result<Watcher> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::other("the configuration path has no file name"))?
            .to_os_string();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut inotify = Inotify::init()?;
        inotify.watches().add(
            &dir,
            WatchMask::CLOSE_WRITE
                | WatchMask::MOVED_TO
                | WatchMask::CREATE
                | WatchMask::DELETE
                | WatchMask::ATTRIB,
        )?;
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("splicegate-watch".into())
            .spawn(move || read_loop(&mut inotify, &name, &tx))?;
        Ok(Watcher {
            rx,
            dir,
            debounce,
            since: None,
        })
    }

    /// A reload changed `limits.reload_debounce`.
    pub fn set_debounce(&mut self, debounce: Duration) {
        self.debounce = debounce;
    }

    /// The watched directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Wait until the file has changed and the directory has then been quiet for the debounce.
    ///
    /// Cancel-safe (the control loop `select!`s on it among other events): an event already
    /// received is remembered in `since` and the quiet period resumes on the next call.
    pub async fn changed(&mut self) -> io::Result<()> {
        loop {
            match self.since {
                None => {
                    self.next().await?;
                    self.since = Some(tokio::time::Instant::now());
                }
                Some(t) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(t + self.debounce) => {
                            self.since = None;
                            return Ok(());
                        }
                        r = self.next() => {
                            r?;
                            self.since = Some(tokio::time::Instant::now());
                        }
                    }
                }
            }
        }
    }

    async fn next(&mut self) -> io::Result<()> {
        match self.rx.recv().await {
            Some(r) => r,
            None => Err(io::Error::other("the watch thread has stopped")),
        }
    }
}

/// Why [`read_settled`] returned no content.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Size, modification time or inode differed before and after every read, or the file was
    /// always modified less than the debounce ago.
    #[error(
        "{} kept changing while it was read ({reads} reads, {debounce:?} apart); \
         is something still writing it?",
        path.display()
    )]
    Unsettled {
        path: PathBuf,
        reads: usize,
        debounce: Duration,
    },
}

impl ReadError {
    /// The file is not there (removed for a moment, as by an editor's save).
    pub fn not_found(&self) -> bool {
        matches!(self, ReadError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// What identifies one state of the file: a write or a replacement changes at least one.
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    /// How long ago it was modified; `None` for a modification time in the future.
    age: Option<Duration>,
}

impl Stamp {
    /// Same file, same content as far as the metadata tells.
    fn same(&self, other: &Stamp) -> bool {
        (self.dev, self.ino, self.len, self.mtime) == (other.dev, other.ino, other.len, other.mtime)
    }
}

fn stamp(path: &Path) -> io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    let age = m
        .modified()
        .ok()
        .and_then(|t| std::time::SystemTime::now().duration_since(t).ok());
    Ok(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        age,
    })
}

/// Read `path` and check it held still: its inode, size and modification time are the same
/// before and after the read, the size matches the bytes read, and it was last modified at
/// least `debounce` ago (a modification time in the future, from a skewed clock or `touch -d`,
/// does not count as recent). If not, wait `debounce` and read again, at most `retries` more
/// times; then give up with [`ReadError::Unsettled`]. `waiting` runs before each wait (the
/// control loop pings the systemd watchdog there, as its own tick is not polled meanwhile).
pub async fn read_settled(
    path: &Path,
    debounce: Duration,
    retries: usize,
    mut waiting: impl FnMut(),
) -> Result<Vec<u8>, ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    for attempt in 0..=retries {
        if attempt > 0 {
            waiting();
            tokio::time::sleep(debounce).await;
        }
        let before = stamp(path).map_err(io)?;
        let bytes = std::fs::read(path).map_err(io)?;
        let after = stamp(path).map_err(io)?;
        let whole = u64::try_from(bytes.len()).is_ok_and(|n| n == after.len);
        let quiet = after.age.is_none_or(|age| age >= debounce);
        if before.same(&after) && whole && quiet {
            return Ok(bytes);
        }
    }
    Err(ReadError::Unsettled {
        path: path.to_path_buf(),
        reads: retries + 1,
        debounce,
    })
}

/// Block on inotify; send `Ok(())` for each batch that concerns `name` (or overflowed, in which
/// case it may have). Ends when the receiver is gone or a read fails.
fn read_loop(inotify: &mut Inotify, name: &OsString, tx: &mpsc::UnboundedSender<io::Result<()>>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let relevant = match inotify.read_events_blocking(&mut buf) {
            Ok(events) => events.fold(false, |acc, ev| {
                acc || ev.mask.contains(EventMask::Q_OVERFLOW)
                    || ev.name.is_some_and(|n| n == name.as_os_str())
            }),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        if relevant && tx.send(Ok(())).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("splicegate-watch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn sees_rename_over_the_file_and_ignores_other_names() {
        let dir = scratch("rename");
        let path = dir.join("splicegate.yaml");
        std::fs::write(&path, "workers: 1\n").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut w = Watcher::new(&path, Duration::from_millis(200)).unwrap();
            // Another file in the same directory: no change reported.
            std::fs::write(dir.join("other.yaml"), "x").unwrap();
            let quiet = tokio::time::timeout(Duration::from_millis(400), w.changed()).await;
            assert!(quiet.is_err(), "a change to another file was reported");
            // Atomic replace: write a temporary file, rename it over the config.
            let tmp = dir.join(".splicegate.yaml.tmp");
            std::fs::write(&tmp, "workers: 2\n").unwrap();
            std::fs::rename(&tmp, &path).unwrap();
            tokio::time::timeout(Duration::from_secs(5), w.changed())
                .await
                .expect("rename over the file not seen")
                .unwrap();
            // In-place write.
            std::fs::write(&path, "workers: 3\n").unwrap();
            tokio::time::timeout(Duration::from_secs(5), w.changed())
                .await
                .expect("in-place write not seen")
                .unwrap();
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn read_settled_waits_out_a_writer_and_gives_up_on_one_that_never_stops() {
        let dir = scratch("settled");
        let path = dir.join("splicegate.yaml");
        std::fs::write(&path, "workers: 1\n").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let debounce = Duration::from_millis(30);
        rt.block_on(async {
            // Just written: too fresh to trust without a retry.
            assert!(matches!(
                read_settled(&path, debounce, 0, || {}).await,
                Err(ReadError::Unsettled { reads: 1, .. })
            ));
            assert_eq!(
                read_settled(&path, debounce, 1, || {}).await.unwrap(),
                b"workers: 1\n"
            );
            // A writer appending every few milliseconds, for about 1.2 s.
            let writer = {
                let path = path.clone();
                std::thread::spawn(move || {
                    use std::io::Write;
                    let mut f = std::fs::OpenOptions::new()
                        .append(true)
                        .open(&path)
                        .unwrap();
                    for i in 0..400 {
                        writeln!(f, "# line {i}").unwrap();
                        std::thread::sleep(Duration::from_millis(3));
                    }
                })
            };
            std::thread::sleep(Duration::from_millis(20));
            let mut waits = 0;
            let err = read_settled(&path, debounce, 3, || waits += 1)
                .await
                .unwrap_err();
            assert_eq!(waits, 3);
            assert!(
                matches!(err, ReadError::Unsettled { reads: 4, .. }),
                "{err}"
            );
            assert!(err.to_string().contains("kept changing"), "{err}");
            writer.join().unwrap();
            // Once it stops, the whole content is read.
            let all = read_settled(&path, debounce, 3, || {}).await.unwrap();
            assert!(String::from_utf8(all).unwrap().ends_with("# line 399\n"));
            std::fs::remove_file(&path).unwrap();
            assert!(read_settled(&path, debounce, 3, || {})
                .await
                .unwrap_err()
                .not_found());
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
