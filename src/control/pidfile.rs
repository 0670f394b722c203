//! `run --pid-file PATH`: the process id, for `splicegate config set` and friends to signal a
//! gateway that systemd does not manage.
//!
//! The file is written atomically (temporary file + rename) once the listeners are bound, and
//! removed at exit only if it still names this process (a newer instance may have replaced it).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The written pid file; removed on drop.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    pub fn create(path: &Path) -> io::Result<PidFile> {
        let pid = std::process::id();
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::other("the pid file path has no file name"))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{pid}.tmp"));
        let tmp = path.with_file_name(tmp_name);
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{pid}")?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
        Ok(PidFile {
            path: path.to_path_buf(),
            pid,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            == Some(self.pid);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_then_removed_only_if_ours() {
        let dir = std::env::temp_dir().join(format!("splicegate-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("splicegate.pid");
        let pf = PidFile::create(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        drop(pf);
        assert!(!path.exists());

        let pf = PidFile::create(&path).unwrap();
        std::fs::write(&path, "1\n").unwrap(); // replaced by another instance
        drop(pf);
        assert!(path.exists(), "another instance's pid file must stay");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
