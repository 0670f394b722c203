//! A Unix socket's file put into place by rename and removed at exit only while it is still
//! ours, shared by the admin socket and the takeover socket: after a hand-over the path belongs
//! to the new process, which has renamed its own socket over it.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The temporary name a socket for `path` is bound under before [`Placed::rename`] moves it
/// into place: beside it (same directory, so the rename is atomic), named by this process.
pub fn temporary(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or(path.as_os_str()));
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// A socket file at `path`, known by its device and inode.
#[derive(Debug)]
pub struct Placed {
    path: PathBuf,
    id: (u64, u64),
}

impl Placed {
    /// Move the socket bound at `tmp` to `path` (replacing what is there) and remember which
    /// file it is. On an error the temporary file is removed.
    pub fn rename(tmp: &Path, path: &Path) -> io::Result<Placed> {
        let placed = std::fs::rename(tmp, path).and_then(|()| std::fs::symlink_metadata(path));
        match placed {
            Ok(m) => Ok(Placed {
                path: path.to_owned(),
                id: (m.dev(), m.ino()),
            }),
            Err(e) => {
                let _ = std::fs::remove_file(tmp);
                Err(e)
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file goes at drop while it is ours, and stays once another one replaced it.
    #[test]
    fn only_our_own_file_is_removed() {
        let dir = std::env::temp_dir().join(format!("sg-placed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("s.sock");
        let bind = |p: &Path| std::os::unix::net::UnixListener::bind(p).expect("bind");
        let _a = bind(&temporary(&path));
        let ours = Placed::rename(&temporary(&path), &path).expect("placed");
        drop(ours);
        assert!(!path.exists(), "our file is removed");
        let _b = bind(&temporary(&path));
        let first = Placed::rename(&temporary(&path), &path).expect("placed");
        let _c = bind(&temporary(&path));
        let second = Placed::rename(&temporary(&path), &path).expect("placed");
        drop(first);
        assert!(path.exists(), "a replaced owner leaves the new file alone");
        drop(second);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
