//! Opening the state dir's SQLite files (the ledger, the decision log) to
//! read only, for the commands that only show what is there.

/// Opens an SQLite file of the state dir to read only. A WAL-mode file
/// needs its `-wal` and `-shm` beside it, or the right to create them; in a
/// read-only dir where they are gone, every write has been checkpointed into
/// the file itself, so it is opened as immutable, which needs neither.
pub(crate) fn open(path: &std::path::Path) -> rusqlite::Result<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let opened = rusqlite::Connection::open_with_flags(path, flags).and_then(|c| {
        c.query_row("SELECT COUNT(*) FROM sqlite_master", [], |_| Ok(()))
            .map(|()| c)
    });
    match opened {
        Ok(c) => Ok(c),
        Err(e) => {
            let wal = std::path::PathBuf::from(format!("{}-wal", path.display()));
            if wal.exists() {
                return Err(e);
            }
            let uri = format!("file:{}?immutable=1", path.display());
            rusqlite::Connection::open_with_flags(uri, flags | OpenFlags::SQLITE_OPEN_URI)
        }
    }
}
