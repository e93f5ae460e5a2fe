//! The project's files: what the worker may read, and where its answer may be written.
//!
//! Claude names files (paths, globs, line ranges) instead of pasting them,
//! and names a destination instead of re-emitting the answer; this module
//! does the reading and the writing, and refuses, naming the path and the
//! reason (never the content), whatever the user would not want:
//!
//! - a path that resolves, after following links, outside every project root;
//! - anything inside `.git/`; devices, sockets, fifos, directories;
//! - binary files (NUL bytes, invalid UTF-8), files over `max_file_bytes`;
//! - secret-bearing names on the deny list (`.env`, `*.pem`, `id_rsa`, ...),
//!   even when their content looks clean;
//! - writing over an existing file unless asked, or through a link.
//!
//! A write is atomic: a temporary file in the same directory, then a rename
//! (or a hard link when the target must not exist yet), so a crash or a
//! refusal never leaves half a file.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::path::{Component, Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};

/// Files a glob may match before the call is refused as too broad.
const MAX_GLOB_MATCHES: usize = 500;

/// Names never read or written, whatever their content says: they exist to
/// hold secrets. Templates (`.env.example`) are allowed; see `is_template`.
pub(crate) const DENY_FILES: &[&str] = &[
    ".env",
    ".env.*",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    ".netrc",
    "_netrc",
    ".pgpass",
    "credentials",
    "credentials.*",
    ".npmrc",
    ".pypirc",
    ".git-credentials",
    ".dockercfg",
    ".docker/config.json",
    "kubeconfig",
    ".kube/config",
    ".aws/credentials",
    ".azure/accessTokens.json",
    "gcloud/credentials.db",
    "secrets.yml",
    "secrets.yaml",
    "*.tfvars",
    "*.tfstate",
];

/// A refusal: the path as Claude gave it, and why, in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{path}`: {reason}")]
pub(crate) struct Refusal {
    /// As given.
    pub(crate) path: String,
    /// Why.
    pub(crate) reason: String,
}

fn refuse(path: &str, reason: impl Into<String>) -> Refusal {
    Refusal {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// One file (or a range of it) read for a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chunk {
    /// The path relative to its root, as the worker and the user see it.
    pub(crate) path: String,
    /// Lines `(first, last)`, 1-based, when a range was asked.
    pub(crate) lines: Option<(usize, usize)>,
    /// The text.
    pub(crate) text: String,
}

impl Chunk {
    /// `src/a.rs` or `src/a.rs (lines 10-20)`.
    pub(crate) fn label(&self) -> String {
        match self.lines {
            Some((a, b)) => format!("{} (lines {a}-{b})", self.path),
            None => self.path.clone(),
        }
    }
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Written {
    /// The path relative to its root.
    pub(crate) path: String,
    /// Where it is.
    pub(crate) absolute: PathBuf,
    /// Bytes written.
    pub(crate) bytes: usize,
    /// Lines written.
    pub(crate) lines: usize,
    /// What the file held before, when it existed (to restore it).
    pub(crate) previous: Option<Vec<u8>>,
}

/// The project's roots and the rules for their files.
#[derive(Debug, Clone)]
pub(crate) struct Workspace {
    /// Canonical roots; the first is where relative paths start.
    roots: Vec<PathBuf>,
    max_file_bytes: u64,
    deny: GlobSet,
}

impl Workspace {
    /// A workspace over `roots` (the first one is the project directory).
    /// Roots that do not exist are left out; extra deny patterns extend the defaults.
    pub(crate) fn new(roots: &[PathBuf], max_file_bytes: u64, extra_deny: &[String]) -> Workspace {
        let mut canonical: Vec<PathBuf> = Vec::new();
        for r in roots {
            if let Ok(c) = std::fs::canonicalize(r)
                && !canonical.contains(&c)
            {
                canonical.push(c);
            }
        }
        let mut builder = GlobSetBuilder::new();
        for p in DENY_FILES
            .iter()
            .copied()
            .chain(extra_deny.iter().map(String::as_str))
        {
            // A pattern matches the name anywhere in the tree, or the path.
            for pattern in [p.to_owned(), format!("**/{p}")] {
                if let Ok(g) = Glob::new(&pattern) {
                    builder.add(g);
                }
            }
        }
        Workspace {
            roots: canonical,
            max_file_bytes,
            deny: builder.build().unwrap_or_else(|_| GlobSet::empty()),
        }
    }

    /// The roots, canonical.
    #[cfg(test)]
    pub(crate) fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    fn primary(&self, given: &str) -> Result<&Path, Refusal> {
        self.roots
            .first()
            .map(PathBuf::as_path)
            .ok_or_else(|| refuse(given, "no project root is known (start the server in the project, or set CLAUDE_PROJECT_DIR or settings.project_roots)"))
    }

    /// The root holding `p` (canonical) and `p` relative to it.
    fn inside(&self, p: &Path) -> Option<(PathBuf, String)> {
        self.roots.iter().find_map(|r| {
            p.strip_prefix(r)
                .ok()
                .map(|rel| (r.clone(), rel.to_string_lossy().replace('\\', "/")))
        })
    }

    fn denied(&self, rel: &str) -> bool {
        let name = rel.rsplit('/').next().unwrap_or(rel);
        !is_template(name) && self.deny.is_match(rel)
    }

    /// Reads every spec (a path, a glob, or `path:first-last`), in order, each
    /// file once; a glob's matches come sorted.
    pub(crate) fn read(&self, specs: &[String]) -> Result<Vec<Chunk>, Refusal> {
        let mut chunks = Vec::new();
        let mut seen = HashSet::new();
        for spec in specs {
            let (path, range) = split_range(spec).map_err(|why| refuse(spec, why))?;
            let files = if is_glob(path) {
                self.glob(spec, path)?
            } else {
                vec![self.resolve_existing(spec, path)?]
            };
            for (abs, rel) in files {
                if !seen.insert((abs.clone(), range)) {
                    continue;
                }
                let text = self.read_text(spec, &abs, &rel)?;
                let (text, lines) = match range {
                    None => (text, None),
                    Some((a, b)) => {
                        let total = text.lines().count();
                        if a > total {
                            return Err(refuse(
                                spec,
                                format!(
                                    "the range starts at line {a} but the file has {total} lines"
                                ),
                            ));
                        }
                        let b = b.min(total);
                        let kept: Vec<&str> = text.lines().skip(a - 1).take(b + 1 - a).collect();
                        (kept.join("\n") + "\n", Some((a, b)))
                    }
                };
                chunks.push(Chunk {
                    path: rel,
                    lines,
                    text,
                });
            }
        }
        Ok(chunks)
    }

    /// A path that must exist: canonical, inside a root, not in `.git`.
    fn resolve_existing(&self, spec: &str, path: &str) -> Result<(PathBuf, String), Refusal> {
        let joined = self.primary(spec)?.join(path);
        let abs = match std::fs::canonicalize(&joined) {
            Ok(a) => a,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(refuse(spec, format!("no such file{}", self.near(&joined))));
            }
            Err(e) => {
                return Err(refuse(
                    spec,
                    format!("cannot be read ({})", crate::words::io(e.kind())),
                ));
            }
        };
        let Some((_, rel)) = self.inside(&abs) else {
            return Err(refuse(
                spec,
                "resolves (after following links) outside the project's roots",
            ));
        };
        check_rel(spec, &rel)?;
        Ok((abs, rel))
    }

    /// " (did you mean `x`?)" for a close name in the same directory.
    fn near(&self, missing: &Path) -> String {
        let (Some(dir), Some(name)) = (missing.parent(), missing.file_name()) else {
            return String::new();
        };
        let name = name.to_string_lossy();
        let best = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .map(|n| (strsim::jaro_winkler(&name, &n), n))
            .filter(|(s, _)| *s > 0.85)
            .max_by(|a, b| a.0.total_cmp(&b.0));
        best.map(|(_, n)| format!(" (did you mean `{n}`?)"))
            .unwrap_or_default()
    }

    fn glob(&self, spec: &str, pattern: &str) -> Result<Vec<(PathBuf, String)>, Refusal> {
        let root = self.primary(spec)?.to_path_buf();
        // `*` stays within a folder, `**` crosses them, as in a shell or .gitignore.
        let matcher = globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| refuse(spec, format!("is not a valid glob ({})", e.kind())))?
            .compile_matcher();
        // Walk from the pattern's literal prefix, honouring .gitignore.
        let base: PathBuf = Path::new(pattern)
            .components()
            .take_while(|c| !is_glob(&c.as_os_str().to_string_lossy()))
            .collect();
        let start = root.join(&base);
        let mut found = Vec::new();
        let walk = ignore::WalkBuilder::new(&start)
            .hidden(false)
            .filter_entry(|e| e.file_name() != ".git")
            .build();
        for entry in walk.flatten() {
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                continue;
            }
            let Ok(rel) = entry.path().strip_prefix(&root) else {
                continue;
            };
            let rel_s = rel.to_string_lossy().replace('\\', "/");
            if !matcher.is_match(&rel_s) || self.denied(&rel_s) {
                continue;
            }
            found.push(self.resolve_existing(spec, &rel_s)?);
            if found.len() > MAX_GLOB_MATCHES {
                return Err(refuse(
                    spec,
                    format!("matches more than {MAX_GLOB_MATCHES} files; narrow it"),
                ));
            }
        }
        if found.is_empty() {
            return Err(refuse(spec, "matches no file"));
        }
        found.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(found)
    }

    fn read_text(&self, spec: &str, abs: &Path, rel: &str) -> Result<String, Refusal> {
        if self.denied(rel) {
            return Err(refuse(
                spec,
                "is on the deny list of secret-bearing files (settings.deny_files); it is never sent",
            ));
        }
        let meta = std::fs::metadata(abs).map_err(|e| {
            refuse(
                spec,
                format!("cannot be read ({})", crate::words::io(e.kind())),
            )
        })?;
        if meta.is_dir() {
            return Err(refuse(
                spec,
                "is a directory; name its files or use a glob like dir/**/*.rs",
            ));
        }
        if !meta.is_file() {
            return Err(refuse(
                spec,
                "is not a regular file (a device, socket or fifo)",
            ));
        }
        if meta.len() > self.max_file_bytes {
            return Err(refuse(
                spec,
                format!(
                    "is {} bytes, over max_file_bytes ({}); name a line range instead",
                    meta.len(),
                    self.max_file_bytes
                ),
            ));
        }
        let bytes = std::fs::read(abs).map_err(|e| {
            refuse(
                spec,
                format!("cannot be read ({})", crate::words::io(e.kind())),
            )
        })?;
        if bytes.contains(&0) {
            return Err(refuse(spec, "is binary (it holds NUL bytes)"));
        }
        String::from_utf8(bytes).map_err(|_| refuse(spec, "is not UTF-8 text"))
    }

    /// Whether `write` would accept `path` now, changing nothing: checked
    /// before the pool is asked, so a refused destination costs no quota.
    pub(crate) fn check_target(&self, path: &str, overwrite: bool) -> Result<(), Refusal> {
        let (dir, name, _) = self.target(path, false)?;
        match std::fs::symlink_metadata(dir.join(&name)) {
            Ok(m) if m.file_type().is_symlink() => {
                Err(refuse(path, "is a link; links are never written through"))
            }
            Ok(m) if !m.is_file() => Err(refuse(path, "exists and is not a regular file")),
            Ok(_) if !overwrite => Err(refuse(
                path,
                "exists; pass overwrite: true to replace it, or write elsewhere",
            )),
            _ => Ok(()),
        }
    }

    /// Writes `text` to `path` atomically. An existing file is replaced only
    /// with `overwrite`; missing parent folders are created inside the root;
    /// a link is never written through.
    pub(crate) fn write(
        &self,
        path: &str,
        text: &str,
        overwrite: bool,
    ) -> Result<Written, Refusal> {
        let (dir, name, rel) = self.target(path, true)?;
        let target = dir.join(&name);
        let previous = match std::fs::symlink_metadata(&target) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(refuse(path, "is a link; links are never written through"));
            }
            Ok(m) if !m.is_file() => return Err(refuse(path, "exists and is not a regular file")),
            Ok(_) if !overwrite => {
                return Err(refuse(
                    path,
                    "exists; pass overwrite: true to replace it, or write elsewhere",
                ));
            }
            Ok(_) => Some(std::fs::read(&target).map_err(|e| {
                refuse(
                    path,
                    format!("cannot be read ({})", crate::words::io(e.kind())),
                )
            })?),
            Err(_) => None,
        };
        let tmp = dir.join(format!(".{name}.freepool-{}.tmp", std::process::id()));
        let done = (|| -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            if let Ok(old) = std::fs::metadata(&target) {
                let _ = std::fs::set_permissions(&tmp, old.permissions());
            }
            if previous.is_some() {
                std::fs::rename(&tmp, &target)
            } else {
                // A hard link fails if the name exists: nothing created
                // meanwhile is ever replaced.
                std::fs::hard_link(&tmp, &target)?;
                std::fs::remove_file(&tmp)
            }
        })();
        if let Err(e) = done {
            let _ = std::fs::remove_file(&tmp);
            let why = if e.kind() == std::io::ErrorKind::AlreadyExists {
                "was created meanwhile; pass overwrite: true to replace it".to_owned()
            } else {
                format!("could not be written ({})", crate::words::io(e.kind()))
            };
            return Err(refuse(path, why));
        }
        Ok(Written {
            path: rel,
            absolute: target,
            bytes: text.len(),
            lines: text.lines().count(),
            previous,
        })
    }

    /// Runs a check command from the user's config on a written file, in the
    /// project root, `{file}` replaced by its path (shell-quoted). `Err`
    /// says briefly why it failed: the exit and the last lines of output.
    pub(crate) fn run_check(
        &self,
        line: &str,
        file: &str,
        limit: std::time::Duration,
    ) -> Result<(), String> {
        let root = self.primary(file).map_err(|r| r.reason)?.to_path_buf();
        let quoted = format!("'{}'", file.replace('\'', "'\\''"));
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(line.replace("{file}", &quoted))
            .current_dir(&root)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("the check could not start ({})", crate::words::io(e.kind())))?;
        // Output is read on threads so a chatty command cannot block on a full pipe.
        fn drain(
            pipe: Option<impl std::io::Read + Send + 'static>,
        ) -> std::thread::JoinHandle<String> {
            std::thread::spawn(move || {
                let mut text = Vec::new();
                if let Some(p) = pipe {
                    let _ = p.take(1 << 20).read_to_end(&mut text);
                }
                String::from_utf8_lossy(&text).into_owned()
            })
        }
        let out = drain(child.stdout.take());
        let err = drain(child.stderr.take());
        let started = std::time::Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() > limit => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "the check ran past {} s and was stopped",
                        limit.as_secs()
                    ));
                }
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(20)),
                Err(e) => {
                    return Err(format!(
                        "the check could not be waited for ({})",
                        crate::words::io(e.kind())
                    ));
                }
            }
        };
        if status.success() {
            return Ok(());
        }
        let text = format!(
            "{}{}",
            err.join().unwrap_or_default(),
            out.join().unwrap_or_default()
        );
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(4)..].join(" | ");
        let tail: String = tail.chars().take(300).collect();
        Err(format!(
            "the check failed ({}): {tail}",
            crate::words::exit(status)
        ))
    }

    /// Puts back what a write replaced (or removes what it created).
    pub(crate) fn restore(&self, w: &Written) -> std::io::Result<()> {
        match &w.previous {
            Some(old) => {
                let tmp = w.absolute.with_extension("freepool-restore.tmp");
                std::fs::write(&tmp, old)?;
                std::fs::rename(&tmp, &w.absolute)
            }
            None => std::fs::remove_file(&w.absolute),
        }
    }

    /// The directory (created as needed when `create`, inside a root) and
    /// file name a write goes to, and its path relative to the root.
    fn target(&self, path: &str, create: bool) -> Result<(PathBuf, String, String), Refusal> {
        let root = self.primary(path)?.to_path_buf();
        let rel = Path::new(path);
        let rel = if rel.is_absolute() {
            self.inside(rel)
                .map(|(_, r)| PathBuf::from(r))
                .ok_or_else(|| refuse(path, "is outside the project's roots"))?
        } else {
            rel.to_path_buf()
        };
        let mut parts = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
                Component::CurDir => {}
                _ => {
                    return Err(refuse(
                        path,
                        "may not climb out with `..`; give a path inside the project",
                    ));
                }
            }
        }
        let Some(name) = parts.pop() else {
            return Err(refuse(path, "names no file"));
        };
        let rel_s = parts
            .iter()
            .chain(std::iter::once(&name))
            .cloned()
            .collect::<Vec<_>>()
            .join("/");
        check_rel(path, &rel_s)?;
        if self.denied(&rel_s) {
            return Err(refuse(path, "is on the deny list of secret-bearing files"));
        }
        // Walk down from the root: each step must be a real directory inside
        // it (a link to elsewhere is refused); missing ones are created.
        let mut dir = root.clone();
        for part in &parts {
            let next = dir.join(part);
            match std::fs::symlink_metadata(&next) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    let real = std::fs::canonicalize(&next)
                        .map_err(|_| refuse(path, "goes through a broken link"))?;
                    if self.inside(&real).is_none() || !real.is_dir() {
                        return Err(refuse(
                            path,
                            "goes through a link that leads outside the project's roots",
                        ));
                    }
                }
                Ok(_) => return Err(refuse(path, format!("`{part}` is a file, not a folder"))),
                // Not there yet: a dry check stops here (what follows would be created).
                Err(_) if !create => return Ok((dir, name, rel_s)),
                Err(_) => match std::fs::create_dir(&next) {
                    Ok(()) => {}
                    // Another task of the same fanout made it a moment ago:
                    // fine if it is a plain folder.
                    Err(e)
                        if e.kind() == std::io::ErrorKind::AlreadyExists
                            && std::fs::symlink_metadata(&next).is_ok_and(|m| m.is_dir()) => {}
                    Err(e) => {
                        return Err(refuse(
                            path,
                            format!(
                                "its folder could not be created ({})",
                                crate::words::io(e.kind())
                            ),
                        ));
                    }
                },
            }
            dir = next;
        }
        let real_dir = std::fs::canonicalize(&dir).map_err(|e| {
            refuse(
                path,
                format!("its folder cannot be used ({})", crate::words::io(e.kind())),
            )
        })?;
        if self.inside(&real_dir).is_none() {
            return Err(refuse(path, "resolves outside the project's roots"));
        }
        Ok((real_dir, name, rel_s))
    }
}

/// `.env.example`, `.env.sample`, `.env.template`, `.env.dist`: templates, not secrets.
fn is_template(name: &str) -> bool {
    [".example", ".sample", ".template", ".dist", ".defaults"]
        .iter()
        .any(|t| name.ends_with(t))
}

/// Refuses paths inside `.git`.
fn check_rel(spec: &str, rel: &str) -> Result<(), Refusal> {
    if rel.split('/').any(|c| c == ".git") {
        return Err(refuse(
            spec,
            "is inside .git, which is never read or written",
        ));
    }
    Ok(())
}

/// Whether a path is a glob.
fn is_glob(p: &str) -> bool {
    p.contains(['*', '?', '[', '{'])
}

/// Lines `(first, last)`, 1-based and inclusive.
type Lines = (usize, usize);

/// `path:first-last`, `path:line` or `path:first-` into the path and its range.
fn split_range(spec: &str) -> Result<(&str, Option<Lines>), String> {
    let Some((path, range)) = spec.rsplit_once(':') else {
        return Ok((spec, None));
    };
    if range.is_empty() || !range.chars().all(|c| c.is_ascii_digit() || c == '-') {
        return Ok((spec, None));
    }
    let (a, b) = match range.split_once('-') {
        Some((a, "")) => (a, None),
        Some((a, b)) => (a, Some(b)),
        None => (range, Some(range)),
    };
    let first: usize = a
        .parse()
        .map_err(|_| format!("`{range}` is not a line range like 120-260"))?;
    let last: usize = match b {
        Some(b) => b
            .parse()
            .map_err(|_| format!("`{range}` is not a line range like 120-260"))?,
        None => usize::MAX,
    };
    if first == 0 || last < first {
        return Err(format!(
            "`{range}` is not a line range: lines count from 1 and the end comes after the start"
        ));
    }
    Ok((path, Some((first, last))))
}

/// The whole answer when it is one fenced code block: its inside. Anything
/// else (prose, several blocks) is kept as it is.
pub(crate) fn unfence(answer: &str) -> String {
    let t = answer.trim();
    let body = (|| {
        let fence_len = t.chars().take_while(|c| *c == '`').count();
        if fence_len < 3 {
            return None;
        }
        let fence = &t[..fence_len];
        let rest = t.strip_suffix(fence)?;
        let (_info, inner) = rest.get(fence_len..)?.split_once('\n')?;
        // Exactly one block: no other fence line of that length inside.
        if inner.lines().any(|l| l.trim_start().starts_with(fence)) {
            return None;
        }
        Some(inner.to_owned())
    })();
    let mut out = body.unwrap_or_else(|| answer.to_owned());
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// The worker's prompt: the task, then each file as a fenced block headed by
/// its path (and range). The fence is longer than any backtick run inside.
pub(crate) fn prompt_with(task: &str, chunks: &[Chunk]) -> String {
    if chunks.is_empty() {
        return task.to_owned();
    }
    let mut out = task.trim_end().to_owned();
    out.push_str("\n\nThe files follow, each in a fenced block headed by its path.\n");
    for c in chunks {
        let longest = c
            .text
            .split(|ch| ch != '`')
            .map(str::len)
            .max()
            .unwrap_or(0);
        let fence = "`".repeat(longest.max(2) + 1);
        let lang = Path::new(&c.path)
            .extension()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default();
        let _ = write!(out, "\n### {}\n{fence}{lang}\n{}", c.label(), c.text);
        if !c.text.ends_with('\n') {
            out.push('\n');
        }
        let _ = writeln!(out, "{fence}");
    }
    out
}

#[cfg(test)]
mod tests;
