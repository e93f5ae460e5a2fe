//! The HTTP endpoint's bearer token: `$FREEPOOL_HTTP_TOKEN`, else a file
//! `http-token` beside the user's config (created on first use: 32 random
//! bytes as hex, mode 0600, written whole or not at all).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The token file for a config file path: `http-token` in its directory.
pub(crate) fn path_for(config_file: &Path) -> PathBuf {
    config_file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("http-token")
}

/// The token: the file's, or a new one written there.
///
/// # Errors
///
/// The file cannot be read or created, or the OS has no randomness.
pub(crate) fn load_or_create(path: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let written = write_private(&tmp, &token).and_then(|()| {
        // A link, not a rename: if another process made one meanwhile, theirs wins.
        match std::fs::hard_link(&tmp, path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            other => other.map(|()| true),
        }
    });
    let _ = std::fs::remove_file(&tmp);
    if written? {
        Ok(token)
    } else {
        load_or_create(path)
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    std::io::Write::write_all(&mut f, b"\n")?;
    f.sync_all()
}

/// Whether `given` is the token, in time that does not depend on where they
/// differ (both are hashed first, so neither length nor content leaks).
pub(crate) fn matches(given: &str, want: &str) -> bool {
    let (a, b) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(want.as_bytes()),
    );
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_made_once_private_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("providers.toml"));
        let t = load_or_create(&path).unwrap();
        assert_eq!(t.len(), 64);
        assert!(t.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(load_or_create(&path).unwrap(), t);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file left");
    }

    #[test]
    fn only_the_exact_token_matches() {
        assert!(matches("abc", "abc"));
        assert!(!matches("abd", "abc"));
        assert!(!matches("", "abc"));
        assert!(!matches("abcd", "abc"));
    }
}
