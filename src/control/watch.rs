//! Watching the configuration file for changes (inotify), so a saved edit reloads without a
//! SIGHUP.
//!
//! The watch is on the file's directory, filtered by the file's name: editors that save by
//! writing a new file and renaming it over the old one (and `splicegate config set`, which does
//! the same atomically) replace the inode, which a watch on the file itself would lose. Events are
//! debounced: [`Watcher::changed`] returns once the directory has been quiet for [`DEBOUNCE`], so
//! an editor's write-then-rename or a multi-step save reloads once, on the final content.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use inotify::{EventMask, Inotify, WatchMask};
use tokio::sync::mpsc;

/// Quiet time after the last event before the file is considered saved.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// An inotify watch on one file's directory. The blocking reads happen on a small thread of
/// their own (`splicegate-watch`), which forwards "the file changed" to the control runtime.
pub struct Watcher {
    rx: mpsc::UnboundedReceiver<io::Result<()>>,
    dir: PathBuf,
    /// When the last relevant event arrived, while a quiet period is running.
    since: Option<tokio::time::Instant>,
}

impl Watcher {
    /// Watch `path`'s directory for writes, renames, creations and deletions of `path`.
    pub fn new(path: &Path) -> io::Result<Watcher> {
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
            since: None,
        })
    }

    /// The watched directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Wait until the file has changed and the directory has then been quiet for [`DEBOUNCE`].
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
                        _ = tokio::time::sleep_until(t + DEBOUNCE) => {
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
            let mut w = Watcher::new(&path).unwrap();
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
}
