//! Replacing the configuration file atomically: a temporary file in the same directory, written
//! and fsynced, given the old file's mode and owner, renamed over the old one, and the directory
//! fsynced. A reader (the gateway's reload, an editor) sees the old file or the new one, never a
//! half-written one; a crash leaves at worst a stray `.splicegate-*.tmp` file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of a configuration file created from scratch (`init`): it may name a password file.
pub const NEW_FILE_MODE: u32 = 0o640;

/// The path a write should go to: a symlinked config is written through to its target, so the
/// link stays a link.
pub fn target(path: &Path) -> PathBuf {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    }
}

/// Write `text` to `path` atomically, keeping an existing file's mode and owner.
pub fn write_atomic(path: &Path, text: &str) -> io::Result<()> {
    let path = target(path);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("the path has no file name"))?
        .to_string_lossy()
        .into_owned();
    let old = fs::metadata(&path).ok();
    let mode = old
        .as_ref()
        .map_or(NEW_FILE_MODE, |m| m.permissions().mode() & 0o7777);
    let tmp = dir.join(format!(".{name}.splicegate-{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        // The umask may have narrowed the mode given at creation.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some(m) = &old {
            let here = f.metadata()?;
            if here.uid() != m.uid() || here.gid() != m.gid() {
                std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()))?;
            }
        }
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &path)?;
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_mode_and_replaces_content() {
        let dir = std::env::temp_dir().join(format!("splicegate-atomic-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.yaml");
        fs::write(&p, "a: 1\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&p, "a: 2\n").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "a: 2\n");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Through a symlink: the target changes, the link stays.
        let link = dir.join("link.yaml");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&p, &link).unwrap();
        write_atomic(&link, "a: 3\n").unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_to_string(&p).unwrap(), "a: 3\n");
        let leftovers = fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp")
            })
            .count();
        assert_eq!(leftovers, 0);
        let _ = fs::remove_dir_all(&dir);
    }
}
