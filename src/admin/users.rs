//! `splicegate user add|remove|list`: the users file for client proxy authentication.
//!
//! Passwords are read from the terminal without echo (asked twice), or from the first line of
//! standard input when it is not a terminal — never from the command line, where `ps` and shell
//! history would keep them. Only argon2id hashes are written; edits are atomic and keep the
//! file's other lines (comments included), and a running gateway is told to reload.

use std::io::{BufRead, IsTerminal};
use std::path::Path;

use clap::Subcommand;

use super::file::write_atomic;
use super::output;
use super::service;
use crate::auth::{self, Users};

/// Default location of the users file.
pub const DEFAULT_USERS_FILE: &str = "/etc/splicegate/users";

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user, or set a new password for an existing one.
    Add { name: String },
    /// Remove a user.
    Remove { name: String },
    /// List the user names (never the hashes).
    List,
}

/// Run a `user` subcommand; returns the exit code (0 ok, 1 refused, 2 invalid file, 3 I/O).
pub fn run(cmd: UserCommand, users_file: &Path, pid_file: &Path, json: bool) -> u8 {
    let text = match std::fs::read_to_string(users_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !matches!(cmd, UserCommand::List) => {
            String::new()
        }
        Err(e) => {
            eprintln!("splicegate: cannot read {}: {e}", users_file.display());
            return 3;
        }
    };
    let users = match Users::parse(&text) {
        Ok(u) => u,
        Err(e) => {
            eprintln!(
                "splicegate: {} line {}: {}",
                users_file.display(),
                e.line,
                e.problem
            );
            return 2;
        }
    };
    match cmd {
        UserCommand::List => {
            let mut names: Vec<&str> = users.names().collect();
            names.sort_unstable();
            if json {
                println!("{}", output::obj([("users", output::texts(&names))]));
            } else {
                for n in names {
                    println!("{n}");
                }
            }
            0
        }
        UserCommand::Add { name } => {
            if let Err(e) = auth::check_name(&name) {
                eprintln!("splicegate: {e}");
                return 1;
            }
            let password = match read_password(&name) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("splicegate: {e}");
                    return 1;
                }
            };
            let hash = match auth::hash_password(&password) {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("splicegate: cannot hash the password: {e}");
                    return 3;
                }
            };
            let existed = users.names().any(|n| n == name);
            let new = set_line(&text, &name, Some(&format!("{name}:{hash}")));
            finish(
                users_file,
                &new,
                pid_file,
                json,
                if existed { "updated" } else { "added" },
                &name,
            )
        }
        UserCommand::Remove { name } => {
            if !users.names().any(|n| n == name) {
                eprintln!("splicegate: no user {name:?} in {}", users_file.display());
                return 1;
            }
            let new = set_line(&text, &name, None);
            finish(users_file, &new, pid_file, json, "removed", &name)
        }
    }
}

fn finish(
    users_file: &Path,
    text: &str,
    pid_file: &Path,
    json: bool,
    what: &str,
    name: &str,
) -> u8 {
    // Never write a file the gateway would refuse.
    if let Err(e) = Users::parse(text) {
        eprintln!("splicegate: the result would be invalid ({e}); nothing written");
        return 2;
    }
    if let Err(e) = write_atomic(users_file, text) {
        eprintln!("splicegate: cannot write {}: {e}", users_file.display());
        return 3;
    }
    let reload = service::reload(pid_file);
    if json {
        println!(
            "{}",
            output::obj([
                ("user", output::text(name)),
                ("result", output::text(what)),
                ("reload", output::text(reload.kind())),
            ])
        );
    } else {
        println!("user {name} {what} in {}", users_file.display());
        println!("{}", reload.describe(pid_file));
    }
    0
}

/// The file's text with `name`'s line replaced by `line` (or removed); a new user is appended.
fn set_line(text: &str, name: &str, line: Option<&str>) -> String {
    let prefix = format!("{name}:");
    let mut out = String::with_capacity(text.len() + 128);
    let mut done = false;
    for l in text.lines() {
        if l.trim_start().starts_with(&prefix) {
            if let (Some(new), false) = (line, done) {
                out.push_str(new);
                out.push('\n');
            }
            done = true;
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    if let (Some(new), false) = (line, done) {
        out.push_str(new);
        out.push('\n');
    }
    out
}

/// Why no password was read for `user add`.
#[derive(Debug, thiserror::Error)]
enum PasswordInputError {
    #[error("cannot read the password: {0}")]
    Terminal(#[source] std::io::Error),
    #[error("the passwords differ")]
    Differ,
    #[error("cannot read the password from stdin: {0}")]
    Stdin(#[source] std::io::Error),
    #[error("empty password")]
    Empty,
}

/// From the terminal without echo (twice), or the first line of a non-terminal stdin.
fn read_password(name: &str) -> Result<String, PasswordInputError> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("Password for {name}: "))
            .map_err(PasswordInputError::Terminal)?;
        let again = rpassword::prompt_password("Again: ").map_err(PasswordInputError::Terminal)?;
        if first != again {
            return Err(PasswordInputError::Differ);
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(PasswordInputError::Stdin)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    if password.is_empty() {
        return Err(PasswordInputError::Empty);
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_replaced_appended_and_removed_in_place() {
        let text = "# agents\nalice:$argon2id$a\nbob:$argon2id$b\n";
        assert_eq!(
            set_line(text, "alice", Some("alice:$argon2id$new")),
            "# agents\nalice:$argon2id$new\nbob:$argon2id$b\n"
        );
        assert_eq!(
            set_line(text, "carol", Some("carol:$argon2id$c")),
            "# agents\nalice:$argon2id$a\nbob:$argon2id$b\ncarol:$argon2id$c\n"
        );
        assert_eq!(set_line(text, "alice", None), "# agents\nbob:$argon2id$b\n");
        assert_eq!(
            set_line("al:x\nalice:y\n", "al", None),
            "alice:y\n",
            "a name that prefixes another is matched whole"
        );
    }
}
