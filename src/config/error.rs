//! Configuration errors: every problem names the key path, the line and what was expected.

use std::fmt;
use std::path::PathBuf;

/// One problem found in a configuration document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key path, e.g. `limits.header_timeout`, `listen[1]`, `hosts.example.com[0]`.
    /// Empty when the problem is not tied to a key (e.g. a YAML syntax error at the top).
    pub key: String,
    /// The 1-based line in the document, when known.
    pub line: Option<usize>,
    /// What was found and what was expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The document was read but is invalid; one or more problems, in document order.
    #[error("{}", ProblemList { path: path.as_ref(), problems })]
    Invalid {
        /// The file the document came from, if any.
        path: Option<PathBuf>,
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The problems found in the document (empty for an I/O error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Io { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

/// Displays problems one per line, each prefixed with the file name when there is one.
struct ProblemList<'a> {
    path: Option<&'a PathBuf>,
    problems: &'a [Problem],
}

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            if let Some(path) = self.path {
                write!(f, "{}: ", path.display())?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(key: &str, line: Option<usize>, message: &str) -> Problem {
        Problem {
            key: key.into(),
            line,
            message: message.into(),
        }
    }

    #[test]
    fn display_formats() {
        assert_eq!(
            problem("listen", Some(2), "expected a list").to_string(),
            "line 2: listen: expected a list"
        );
        assert_eq!(problem("workers", None, "m").to_string(), "workers: m");
        assert_eq!(problem("", Some(3), "m").to_string(), "line 3: m");
        let err = ConfigError::Invalid {
            path: Some(PathBuf::from("/etc/splicegate.yaml")),
            problems: vec![problem("a", Some(1), "x"), problem("b", Some(2), "y")],
        };
        assert_eq!(
            err.to_string(),
            "/etc/splicegate.yaml: line 1: a: x\n/etc/splicegate.yaml: line 2: b: y"
        );
        assert_eq!(err.problems().len(), 2);
        let io = ConfigError::Io {
            path: PathBuf::from("/nope"),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert!(io
            .to_string()
            .starts_with("cannot read configuration file /nope: "));
        assert!(io.problems().is_empty());
    }
}
