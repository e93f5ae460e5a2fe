//! A real PostgreSQL server for the tests: `initdb` and `pg_ctl` into a
//! temporary directory, on a free loopback port, started once per test
//! binary and stopped when it exits. Each test gets a database of its own.
//! As root (CI), the server runs as the `postgres` user, as PostgreSQL requires.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Pg {
    pub bin: PathBuf,
    pub data: PathBuf,
    pub port: u16,
}

static SERVER: OnceLock<Pg> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(1);

/// Where the server binaries are: `$PG_BIN`, else the newest Debian install.
fn bin_dir() -> PathBuf {
    if let Ok(b) = std::env::var("PG_BIN") {
        return PathBuf::from(b);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .filter(|b| b.join("initdb").exists())
        .expect("PostgreSQL server binaries not found: install Debian's `postgresql` package (.ci/run does) or set PG_BIN")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a server binary, as `postgres` when we are root.
fn run(bin: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(args)
        .env_remove("PGDATA")
        .output()
        .expect("run a PostgreSQL binary")
}

extern "C" fn stop_at_exit() {
    if let Some(pg) = SERVER.get() {
        pg.remove();
    }
}

/// A server that is stopped and removed when dropped.
pub struct PrivatePg(pub Pg);

impl Drop for PrivatePg {
    fn drop(&mut self) {
        self.0.remove();
    }
}

impl std::ops::Deref for PrivatePg {
    type Target = Pg;
    fn deref(&self) -> &Pg {
        &self.0
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Pg {
    /// The shared server, started on first use and stopped when the test binary exits.
    pub fn get() -> &'static Pg {
        SERVER.get_or_init(|| {
            let pg = Pg::start("shared");
            // SAFETY: registers a plain extern "C" function with no captured state.
            unsafe { libc::atexit(stop_at_exit) };
            pg
        })
    }

    /// A server of the caller's own (for tests that stop it); stopped on drop.
    pub fn private() -> PrivatePg {
        PrivatePg(Pg::start("private"))
    }

    fn start(tag: &str) -> Pg {
        let bin = bin_dir();
        // The server's user must reach its directory: as root, /var/tmp
        // (the temp dir may be private to root).
        let base = if is_root() {
            PathBuf::from("/var/tmp")
        } else {
            std::env::temp_dir()
        };
        let root = base.join(format!(
            "freepool-pg-{}-{tag}-{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let data = root.join("data");
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&root)
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown the PostgreSQL dir");
        }
        let out = run(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "freepool",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = Pg {
            bin,
            data,
            port: free_port(),
        };
        pg.restart();
        pg
    }

    /// A fresh, empty database on the shared server; its URL.
    pub fn database() -> String {
        Pg::get().new_database()
    }

    /// A fresh, empty database on this server; its URL.
    pub fn new_database(&self) -> String {
        let name = format!("t{}", NEXT_DB.fetch_add(1, Ordering::Relaxed));
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        format!("postgres://freepool@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs one SQL statement.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "freepool",
                "-d",
                db,
                "-At",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn remove(&self) {
        let _ = run(
            &self.bin.join("pg_ctl"),
            &["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"],
        );
        let _ = std::fs::remove_dir_all(self.data.parent().unwrap());
    }

    /// Stops the server (to test a database that goes away).
    pub fn stop(&self) {
        let out = run(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts it again on the same port.
    pub fn restart(&self) {
        let root = self.data.parent().unwrap();
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=200",
            self.port,
            root.display()
        );
        let out = run(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                root.join("log").to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
