//! The man pages and shell completions, generated from the command line's clap definitions so
//! they cannot drift from it.
//!
//! `splicegate generate DIR` (a hidden subcommand) calls [`write`]; the package build
//! (`scripts/deb.sh`, `tests/package.rs`) runs it into `target/assets/` and `cargo deb` installs
//! what it wrote (the `assets` of `[package.metadata.deb]` in `Cargo.toml`).

use std::io;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// The shells the package installs completions for.
pub const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// What could not be written.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("cannot write the man pages into {dir}: {source}")]
    Man { dir: PathBuf, source: io::Error },
    #[error("cannot write the {shell} completions into {dir}: {source}")]
    Completions {
        shell: Shell,
        dir: PathBuf,
        source: io::Error,
    },
}

/// Write `DIR/man/<name>.1` (one page for the command and one for each visible subcommand) and
/// `DIR/completions/` for every shell of [`SHELLS`]; return the files written, sorted.
///
/// Hidden subcommands get no man page; clap_complete (4.6) completes them all the same.
pub fn write(cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>, GenerateError> {
    let name = cmd.get_name().to_owned();
    let man = dir.join("man");
    std::fs::create_dir_all(&man)
        .and_then(|()| clap_mangen::generate_to(cmd.clone(), &man))
        .map_err(|source| GenerateError::Man {
            dir: man.clone(),
            source,
        })?;
    let mut written: Vec<PathBuf> = std::fs::read_dir(&man)
        .map_err(|source| GenerateError::Man {
            dir: man.clone(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    let completions = dir.join("completions");
    for shell in SHELLS {
        let mut cmd = cmd.clone();
        let path = std::fs::create_dir_all(&completions)
            .and_then(|()| clap_complete::generate_to(shell, &mut cmd, &name, &completions))
            .map_err(|source| GenerateError::Completions {
                shell,
                dir: completions.clone(),
                source,
            })?;
        written.push(path);
    }
    written.sort();
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> clap::Command {
        clap::Command::new("demo")
            .about("A demo command")
            .arg(clap::Arg::new("config").long("config"))
            .subcommand(clap::Command::new("run").about("Serve"))
            .subcommand(clap::Command::new("secret").hide(true))
    }

    #[test]
    fn writes_a_page_per_visible_command_and_every_shell() {
        let dir = std::env::temp_dir().join(format!("splicegate-manual-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = write(demo(), &dir).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.strip_prefix(&dir).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "completions/_demo",
                "completions/demo.bash",
                "completions/demo.fish",
                "man/demo-run.1",
                "man/demo.1",
            ]
        );
        let page = std::fs::read_to_string(dir.join("man/demo.1")).unwrap();
        assert!(page.starts_with(".ie"), "{page}");
        assert!(page.contains("\\-\\-config"), "{page}");
        let bash = std::fs::read_to_string(dir.join("completions/demo.bash")).unwrap();
        assert!(bash.contains("--config") && bash.contains("run"), "{bash}");
        // A hidden subcommand gets no page (above), but clap_complete still completes it.
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_directory_is_an_error() {
        let err = write(demo(), Path::new("/proc/self/splicegate-manual")).unwrap_err();
        assert!(matches!(err, GenerateError::Man { .. }), "{err}");
    }
}
