use super::*;

/// A project with a few files, a secret, a link out, and a .git folder.
fn project() -> (tempfile::TempDir, tempfile::TempDir, Workspace) {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("src/nested")).unwrap();
    std::fs::create_dir_all(p.join(".git")).unwrap();
    std::fs::write(p.join("src/a.rs"), "fn a() {}\n").unwrap();
    std::fs::write(p.join("src/b.rs"), "line 1\nline 2\nline 3\nline 4\n").unwrap();
    std::fs::write(p.join("src/nested/c.rs"), "fn c() {}\n").unwrap();
    std::fs::write(p.join("src/notes.md"), "# notes\n").unwrap();
    std::fs::write(p.join(".env"), "TOKEN=whatever\n").unwrap();
    std::fs::write(p.join(".env.example"), "TOKEN=\n").unwrap();
    std::fs::write(p.join("id_rsa"), "-----BEGIN\n").unwrap();
    std::fs::write(p.join(".git/config"), "[core]\n").unwrap();
    std::fs::write(p.join("image.bin"), [1u8, 0, 2]).unwrap();
    std::fs::write(p.join("latin1.txt"), [0xe9u8, 0x20, 0x61]).unwrap();
    std::fs::write(p.join("big.txt"), "x".repeat(2000)).unwrap();
    std::fs::write(outside.path().join("secret.txt"), "outside\n").unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(outside.path().join("secret.txt"), p.join("escape.txt"))
            .unwrap();
        std::os::unix::fs::symlink(outside.path(), p.join("outdir")).unwrap();
        std::os::unix::fs::symlink(p.join("src/a.rs"), p.join("alias.rs")).unwrap();
        let fifo = std::ffi::CString::new(p.join("pipe").to_string_lossy().as_bytes()).unwrap();
        // SAFETY: mkfifo on a path this test owns.
        unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) };
    }
    let ws = Workspace::new(&[p.to_path_buf()], 1024, &["*.secret".to_owned()]);
    (dir, outside, ws)
}

fn specs(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| (*x).to_owned()).collect()
}

#[test]
fn paths_globs_and_ranges_in_order_each_file_once() {
    let (_d, _o, ws) = project();
    let got = ws
        .read(&specs(&[
            "src/b.rs:2-3",
            "src/**/*.rs",
            "src/a.rs",
            "alias.rs",
        ]))
        .unwrap();
    let labels: Vec<String> = got.iter().map(Chunk::label).collect();
    assert_eq!(
        labels,
        [
            "src/b.rs (lines 2-3)",
            "src/a.rs",
            "src/b.rs",
            "src/nested/c.rs"
        ],
        "order kept, glob sorted, a.rs read once (also through its link)"
    );
    assert_eq!(got[0].text, "line 2\nline 3\n");
    let single = ws.read(&specs(&["src/b.rs:4", "src/b.rs:3-"])).unwrap();
    assert_eq!(single[0].text, "line 4\n");
    assert_eq!(single[1].text, "line 3\nline 4\n");
}

#[test]
fn every_refusal_names_the_path_and_the_reason() {
    let (_d, _o, ws) = project();
    let cases = [
        ("../etc/passwd", "no such file"),
        ("escape.txt", "outside the project's roots"),
        ("outdir/secret.txt", "outside the project's roots"),
        (".git/config", "inside .git"),
        (".env", "deny list"),
        ("id_rsa", "deny list"),
        ("image.bin", "binary"),
        ("latin1.txt", "not UTF-8"),
        ("big.txt", "over max_file_bytes"),
        ("src", "is a directory"),
        ("pipe", "not a regular file"),
        ("src/aa.rs", "no such file (did you mean `a.rs`?)"),
        ("src/**/*.py", "matches no file"),
        ("src/b.rs:3-1", "not a line range"),
        ("src/b.rs:9-12", "the file has 4 lines"),
    ];
    for (spec, want) in cases {
        let err = ws.read(&specs(&[spec])).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with(&format!("`{spec}`")), "{text}");
        assert!(text.contains(want), "{spec}: {text}");
        assert!(
            !text.contains("outside\n") && !text.contains("TOKEN"),
            "content shown: {text}"
        );
    }
    // Templates of secret files are fine; extra deny patterns apply.
    assert!(ws.read(&specs(&[".env.example"])).is_ok());
    std::fs::write(ws.roots()[0].join("db.secret"), "x\n").unwrap();
    assert!(
        ws.read(&specs(&["db.secret"]))
            .unwrap_err()
            .reason
            .contains("deny list")
    );
    // A glob leaves denied files out instead of failing, and `*` stays in its folder.
    let md = ws.read(&specs(&["src/*.md", "*.example"])).unwrap();
    let labels: Vec<String> = md.iter().map(Chunk::label).collect();
    assert_eq!(labels, ["src/notes.md", ".env.example"]);
    let all = ws.read(&specs(&["*"])).unwrap_err();
    assert!(all.to_string().contains("over max_file_bytes"), "{all}");
}

#[test]
fn writes_are_atomic_refuse_to_overwrite_and_never_leave_half_a_file() {
    let (d, _o, ws) = project();
    let w = ws.write("gen/deep/out.rs", "fn out() {}\n", false).unwrap();
    assert_eq!(
        (w.path.as_str(), w.bytes, w.lines),
        ("gen/deep/out.rs", 12, 1)
    );
    assert_eq!(
        std::fs::read_to_string(d.path().join("gen/deep/out.rs")).unwrap(),
        "fn out() {}\n"
    );
    let again = ws.write("gen/deep/out.rs", "other\n", false).unwrap_err();
    assert!(again.reason.contains("pass overwrite: true"), "{again}");
    let w = ws.write("gen/deep/out.rs", "replaced\n", true).unwrap();
    assert_eq!(w.previous.as_deref(), Some(&b"fn out() {}\n"[..]));
    ws.restore(&w).unwrap();
    assert_eq!(
        std::fs::read_to_string(d.path().join("gen/deep/out.rs")).unwrap(),
        "fn out() {}\n"
    );
    for (path, want) in [
        ("../out.rs", "may not climb out"),
        ("escape.txt", "is a link"),
        ("outdir/new.rs", "leads outside the project's roots"),
        (".git/hooks/pre-commit", "inside .git"),
        (".env", "deny list"),
        ("src/a.rs/x", "is a file, not a folder"),
    ] {
        let err = ws.write(path, "x\n", true).unwrap_err();
        assert!(err.reason.contains(want), "{path}: {err}");
    }
    // Nothing half-written and no temporary file left, whatever happened.
    let leftovers: Vec<_> = walk(d.path())
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(
        !_o.path().join("new.rs").exists(),
        "nothing written outside"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn one_surrounding_fence_is_removed_and_nothing_else() {
    let cases = [
        ("```rust\nfn a() {}\n```", "fn a() {}\n"),
        ("  ```\nplain\n```\n", "plain\n"),
        ("````md\n```inner```\n````", "```inner```\n"),
        ("Here it is:\n```\nx\n```", "Here it is:\n```\nx\n```\n"),
        ("```\na\n```\n```\nb\n```", "```\na\n```\n```\nb\n```\n"),
        ("no fence", "no fence\n"),
    ];
    for (answer, want) in cases {
        assert_eq!(unfence(answer), want, "{answer:?}");
    }
}

#[test]
fn the_prompt_carries_each_file_in_a_fence_longer_than_its_backticks() {
    let chunks = vec![
        Chunk {
            path: "a.md".into(),
            lines: Some((2, 3)),
            text: "text with ```` inside\n".into(),
        },
        Chunk {
            path: "b.rs".into(),
            lines: None,
            text: "fn b() {}".into(),
        },
    ];
    let p = prompt_with("Summarize.", &chunks);
    assert!(p.starts_with("Summarize.\n\nThe files follow"), "{p}");
    assert!(
        p.contains("### a.md (lines 2-3)\n`````md\ntext with ```` inside\n`````\n"),
        "{p}"
    );
    assert!(p.contains("### b.rs\n```rs\nfn b() {}\n```\n"), "{p}");
    assert_eq!(prompt_with("Just this.", &[]), "Just this.");
}

#[test]
fn writers_racing_to_create_the_same_folders_all_succeed() {
    let (dir, _out, ws) = project();
    let ws = std::sync::Arc::new(ws);
    for round in 0..5 {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (ws, barrier) = (ws.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    ws.write(&format!("gen{round}/deep/er/{i}.txt"), "x\n", false)
                })
            })
            .collect();
        for h in handles {
            let r = h.join().unwrap();
            assert!(r.is_ok(), "{:?}", r.err().map(|e| e.to_string()));
        }
        assert_eq!(
            std::fs::read_dir(dir.path().join(format!("gen{round}/deep/er")))
                .unwrap()
                .count(),
            8
        );
    }
}
