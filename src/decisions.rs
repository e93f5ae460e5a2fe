//! The routing-decision log: every choice between Claude and the pool, never the prompt.
//!
//! One SQLite file (`decisions.sqlite`) in the state dir, shared by every
//! session (WAL, busy timeout), so concurrent writers queue rather than fail.
//! Each row is a labelled example for a future routing classifier: a short
//! gist of the task, its type, the difficulty score, the route, the gate that
//! fired if any, the model that served it and the outcome Claude saw.
//!
//! Invariant: gists are checked by the credential gate before they reach
//! this module (see `dispatch`), and cut to 200 characters here.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, params};
use serde::Serialize;

/// Longest gist kept.
pub(crate) const MAX_GIST: usize = 200;

/// Errors of the decision log.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The file cannot be opened or written.
    #[error(
        "the decision log at {path} cannot be written ({reason}); set FREEPOOL_STATE_DIR to a writable directory"
    )]
    Unwritable {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No decision with that id.
    #[error("no decision with id {0}")]
    NotFound(i64),
    /// SQLite failed.
    #[error("the decision log")]
    Sql(#[from] rusqlite::Error),
    /// The blocking task running a log call ended abnormally.
    #[error("the decision log task stopped unexpectedly")]
    Task,
}

/// One decision to record.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Decision {
    /// Short task description (never the prompt).
    pub(crate) gist: String,
    /// `pool` or `claude`.
    pub(crate) route: String,
    /// Difficulty 1-10.
    pub(crate) score: Option<u8>,
    /// Free-form task type (`summarize`, `codegen`, ...).
    pub(crate) task_type: Option<String>,
    /// `sensitivity` or `capability` when a veto gate fired.
    pub(crate) gate: Option<String>,
    /// `provider/model` that served it.
    pub(crate) model: Option<String>,
    /// `accepted`, `redone`, `failed` (or `refused` by the gate).
    pub(crate) outcome: Option<String>,
    /// Who logged it: `claude` (log_route_decision), `delegate`, `fanout`.
    pub(crate) via: String,
    /// The budget mode at the time.
    pub(crate) budget_mode: Option<String>,
    /// Claude tokens of the files sent with the task (never their content).
    pub(crate) files_tokens: Option<i64>,
    /// Claude tokens of the prompt itself (without the files).
    pub(crate) prompt_tokens: Option<i64>,
    /// Tokens of the answer (as the provider counted).
    pub(crate) answer_tokens: Option<i64>,
    /// Tokens the pool processed (prompt and answer, as the provider counted).
    pub(crate) pool_tokens: Option<i64>,
    /// Bytes the answer wrote to a file.
    pub(crate) bytes_written: Option<i64>,
    /// Claude tokens the call saved (input-token equivalents).
    pub(crate) saved_tokens: Option<i64>,
}

/// A stored decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Row {
    /// Id.
    pub(crate) id: i64,
    /// Unix milliseconds.
    pub(crate) ts: i64,
    /// Claude Code session id.
    pub(crate) session: Option<String>,
    /// The decision.
    #[serde(flatten)]
    pub(crate) decision: Decision,
}

/// Handle to the log; cheap to clone.
#[derive(Clone)]
pub(crate) struct Log {
    conn: Arc<Mutex<Connection>>,
    session: Option<String>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// Creates the table (or adds the columns an older file lacks), in one
/// transaction so processes opening the log together do not race.
fn setup(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // One transaction, so processes opening the log together do not
    // both add a column the first one already added.
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let done = (|| {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS decisions (
                    id INTEGER PRIMARY KEY,
                    ts INTEGER NOT NULL,
                    session TEXT,
                    gist TEXT NOT NULL,
                    route TEXT NOT NULL,
                    score INTEGER,
                    task_type TEXT,
                    gate TEXT,
                    model TEXT,
                    outcome TEXT,
                    via TEXT NOT NULL,
                    budget_mode TEXT
                );",
        )?;
        // Columns added since the first version of the file.
        let mut stmt = conn.prepare("PRAGMA table_info(decisions)")?;
        let have: Vec<String> = stmt
            .query_map([], |r| r.get(1))?
            .collect::<Result<_, _>>()?;
        for column in [
            "files_tokens",
            "prompt_tokens",
            "answer_tokens",
            "pool_tokens",
            "bytes_written",
            "saved_tokens",
        ] {
            if !have.iter().any(|h| h == column) {
                conn.execute_batch(&format!(
                    "ALTER TABLE decisions ADD COLUMN {column} INTEGER"
                ))?;
            }
        }
        Ok(())
    })();
    match done {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

impl Log {
    /// Opens (or creates) `decisions.sqlite` in `dir`.
    pub(crate) fn open(dir: &Path, session: Option<String>) -> Result<Log, Error> {
        let path = dir.join("decisions.sqlite");
        let unwritable = |reason: String| Error::Unwritable {
            path: path.clone(),
            reason,
        };
        crate::config::ensure_state_dir(dir).map_err(|e| unwritable(crate::words::io(e.kind())))?;
        let conn = Connection::open(&path).map_err(|e| unwritable(e.to_string()))?;
        setup(&conn).map_err(|e| unwritable(e.to_string()))?;
        Ok(Log {
            conn: Arc::new(Mutex::new(conn)),
            session,
        })
    }

    /// Opens `decisions.sqlite` in `dir` to read only (`log stats`, `log
    /// export`, `status`): nothing is created or changed, so a read-only
    /// state dir works. No file yet reads as an empty log.
    pub(crate) fn open_read_only(dir: &Path) -> Result<Log, Error> {
        let path = dir.join("decisions.sqlite");
        let unreadable = |reason: String| Error::Unwritable {
            path: path.clone(),
            reason,
        };
        if !path.exists() {
            let conn = Connection::open_in_memory().map_err(|e| unreadable(e.to_string()))?;
            setup(&conn).map_err(|e| unreadable(e.to_string()))?;
            return Ok(Log {
                conn: Arc::new(Mutex::new(conn)),
                session: None,
            });
        }
        let conn = crate::readonly::open(&path).map_err(|e| unreadable(e.to_string()))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(|e| unreadable(e.to_string()))?;
        let has_all: bool = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('decisions') WHERE name = 'saved_tokens'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .unwrap_or(false);
        if !has_all {
            return Err(unreadable(
                "it is of an older format; the next delegate call updates it".into(),
            ));
        }
        Ok(Log {
            conn: Arc::new(Mutex::new(conn)),
            session: None,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, Error> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(f(&conn)?)
    }

    /// Records a decision and returns its id.
    pub(crate) fn record(&self, d: &Decision, ts: i64) -> Result<i64, Error> {
        let gist: String = d.gist.chars().take(MAX_GIST).collect();
        self.with(|c| {
            c.execute(
                "INSERT INTO decisions (ts, session, gist, route, score, task_type, gate, model, outcome, via, budget_mode,
                                        files_tokens, prompt_tokens, answer_tokens, pool_tokens, bytes_written, saved_tokens)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
                params![ts, self.session, gist, d.route, d.score, d.task_type, d.gate, d.model, d.outcome, d.via, d.budget_mode,
                        d.files_tokens, d.prompt_tokens, d.answer_tokens, d.pool_tokens, d.bytes_written, d.saved_tokens],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    /// Sets the outcome of an earlier decision (Claude read the answer later).
    pub(crate) fn set_outcome(&self, id: i64, outcome: &str) -> Result<(), Error> {
        let n = self.with(|c| {
            c.execute(
                "UPDATE decisions SET outcome = ?2 WHERE id = ?1",
                params![id, outcome],
            )
        })?;
        if n == 0 {
            Err(Error::NotFound(id))
        } else {
            Ok(())
        }
    }

    /// The model and task type of a decision, to learn from its outcome.
    pub(crate) fn routed(&self, id: i64) -> Result<(Option<String>, Option<String>), Error> {
        self.with(|c| {
            c.query_row(
                "SELECT model, task_type FROM decisions WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
    }

    /// All decisions, oldest first.
    pub(crate) fn all(&self) -> Result<Vec<Row>, Error> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!("{SELECT} ORDER BY id"))?;
            let rows = stmt.query_map([], row)?;
            rows.collect()
        })
    }
}

const SELECT: &str =
    "SELECT id, ts, session, gist, route, score, task_type, gate, model, outcome, via, budget_mode,
     files_tokens, prompt_tokens, answer_tokens, pool_tokens, bytes_written, saved_tokens FROM decisions";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        id: r.get(0)?,
        ts: r.get(1)?,
        session: r.get(2)?,
        decision: Decision {
            gist: r.get(3)?,
            route: r.get(4)?,
            score: r.get(5)?,
            task_type: r.get(6)?,
            gate: r.get(7)?,
            model: r.get(8)?,
            outcome: r.get(9)?,
            via: r.get(10)?,
            budget_mode: r.get(11)?,
            files_tokens: r.get(12)?,
            prompt_tokens: r.get(13)?,
            answer_tokens: r.get(14)?,
            pool_tokens: r.get(15)?,
            bytes_written: r.get(16)?,
            saved_tokens: r.get(17)?,
        },
    })
}

/// Counts for `freepool-mcp log stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Stats {
    /// Decisions in all.
    pub(crate) total: usize,
    /// By route.
    pub(crate) by_route: Vec<(String, usize)>,
    /// By score band (1-3, 4-6, 7-8, 9-10, none).
    pub(crate) by_band: Vec<(String, usize)>,
    /// By gate.
    pub(crate) by_gate: Vec<(String, usize)>,
    /// By task type.
    pub(crate) by_task_type: Vec<(String, usize)>,
    /// Per model: (model, accepted, judged) where judged = accepted + redone + failed.
    pub(crate) acceptance: Vec<(String, usize, usize)>,
    /// How often the capability gate kept a task on Claude.
    pub(crate) capability_hits: usize,
    /// What delegation did, over everything logged.
    pub(crate) overall: Totals,
    /// The same per day (UTC), oldest first.
    pub(crate) days: Vec<(String, Totals)>,
}

/// What delegation did over some span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Totals {
    /// Tasks the pool answered.
    pub(crate) delegated: usize,
    /// Tasks the pool could not answer.
    pub(crate) failed: usize,
    /// Tokens the pool processed (prompts and answers, as the providers counted).
    pub(crate) pool_tokens: i64,
    /// Claude tokens avoided (input-token equivalents).
    pub(crate) claude_tokens_saved: i64,
    /// Answers Claude reported as accepted.
    pub(crate) accepted: usize,
    /// Answers Claude reported it redid.
    pub(crate) redone: usize,
}

impl Totals {
    fn add(&mut self, d: &Decision) {
        if d.route != "pool" || d.gate.is_some() {
            return;
        }
        match d.outcome.as_deref() {
            Some("failed") if d.model.is_none() => self.failed += 1,
            outcome => {
                self.delegated += 1;
                self.accepted += usize::from(outcome == Some("accepted"));
                self.redone += usize::from(outcome == Some("redone"));
            }
        }
        self.pool_tokens += d.pool_tokens.unwrap_or(0);
        self.claude_tokens_saved += d.saved_tokens.unwrap_or(0);
    }
}

fn band(score: Option<u8>) -> &'static str {
    match score {
        Some(1..=3) => "1-3 trivial",
        Some(4..=6) => "4-6 moderate",
        Some(7..=8) => "7-8 hard",
        Some(9..=10) => "9-10 critical",
        _ => "unscored",
    }
}

fn tally<'a>(items: impl Iterator<Item = &'a str>) -> Vec<(String, usize)> {
    let mut map = std::collections::BTreeMap::<String, usize>::new();
    for i in items {
        *map.entry(i.to_owned()).or_default() += 1;
    }
    let mut v: Vec<_> = map.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

/// Computes the stats over rows.
pub(crate) fn stats(rows: &[Row]) -> Stats {
    let d = |r: &Row| r.decision.clone();
    let mut acc = std::collections::BTreeMap::<String, (usize, usize)>::new();
    for r in rows.iter().filter(|r| r.decision.route == "pool") {
        let (Some(model), Some(outcome)) = (&r.decision.model, &r.decision.outcome) else {
            continue;
        };
        let e = acc.entry(model.clone()).or_default();
        match outcome.as_str() {
            "accepted" => {
                e.0 += 1;
                e.1 += 1;
            }
            "redone" | "failed" => e.1 += 1,
            _ => {}
        }
    }
    Stats {
        total: rows.len(),
        by_route: tally(rows.iter().map(|r| r.decision.route.as_str())),
        by_band: tally(rows.iter().map(|r| band(r.decision.score))),
        by_gate: tally(
            rows.iter()
                .map(|r| r.decision.gate.as_deref().unwrap_or("none")),
        ),
        by_task_type: tally(
            rows.iter()
                .map(|r| r.decision.task_type.as_deref().unwrap_or("unspecified")),
        ),
        acceptance: acc.into_iter().map(|(m, (a, j))| (m, a, j)).collect(),
        capability_hits: rows
            .iter()
            .filter(|r| d(r).gate.as_deref() == Some("capability"))
            .count(),
        overall: rows.iter().fold(Totals::default(), |mut t, r| {
            t.add(&r.decision);
            t
        }),
        days: {
            let mut days = std::collections::BTreeMap::<String, Totals>::new();
            for r in rows {
                let day = crate::quota::iso(r.ts / 1000).chars().take(10).collect();
                days.entry(day).or_default().add(&r.decision);
            }
            days.into_iter()
                .filter(|(_, t)| *t != Totals::default())
                .collect()
        },
    }
}

/// One exported example (the labelled dataset).
#[derive(Debug, Serialize)]
pub(crate) struct Example<'a> {
    /// Id.
    pub(crate) id: i64,
    /// ISO time.
    pub(crate) time: String,
    /// The task gist.
    pub(crate) task: &'a str,
    /// Task type.
    pub(crate) task_type: Option<&'a str>,
    /// Score.
    pub(crate) score: Option<u8>,
    /// Route.
    pub(crate) route: &'a str,
    /// Gate.
    pub(crate) gate: Option<&'a str>,
    /// Model.
    pub(crate) model: Option<&'a str>,
    /// Outcome.
    pub(crate) outcome: Option<&'a str>,
    /// Budget mode.
    pub(crate) budget_mode: Option<&'a str>,
}

/// Rows as dataset examples: the decisions that describe their task (a
/// pool call logged without a gist counts in the totals, not in the dataset).
pub(crate) fn examples(rows: &[Row]) -> Vec<Example<'_>> {
    rows.iter()
        .filter(|r| !r.decision.gist.is_empty())
        .map(|r| Example {
            id: r.id,
            time: crate::quota::iso(r.ts / 1000),
            task: &r.decision.gist,
            task_type: r.decision.task_type.as_deref(),
            score: r.decision.score,
            route: &r.decision.route,
            gate: r.decision.gate.as_deref(),
            model: r.decision.model.as_deref(),
            outcome: r.decision.outcome.as_deref(),
            budget_mode: r.decision.budget_mode.as_deref(),
        })
        .collect()
}

/// CSV with RFC 4180 quoting.
pub(crate) fn to_csv(rows: &[Row]) -> String {
    fn q(s: Option<&str>) -> String {
        match s {
            None => String::new(),
            Some(s) if s.contains([',', '"', '\n', '\r']) => {
                format!("\"{}\"", s.replace('"', "\"\""))
            }
            Some(s) => s.to_owned(),
        }
    }
    let mut out =
        String::from("id,time,task,task_type,score,route,gate,model,outcome,budget_mode\n");
    for e in examples(rows) {
        let score = e.score.map(|s| s.to_string());
        let fields = [
            Some(e.id.to_string()).as_deref().map(str::to_owned),
            Some(e.time.clone()),
            Some(q(Some(e.task))),
            Some(q(e.task_type)),
            score,
            Some(q(Some(e.route))),
            Some(q(e.gate)),
            Some(q(e.model)),
            Some(q(e.outcome)),
            Some(q(e.budget_mode)),
        ];
        out.push_str(&fields.map(std::option::Option::unwrap_or_default).join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(route: &str, score: u8, model: Option<&str>, outcome: Option<&str>) -> Decision {
        Decision {
            gist: "summarize a module".into(),
            route: route.into(),
            score: Some(score),
            model: model.map(str::to_owned),
            outcome: outcome.map(str::to_owned),
            via: "claude".into(),
            ..Default::default()
        }
    }

    #[test]
    fn record_update_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), Some("sess-1".into())).unwrap();
        let id = log
            .record(
                &Decision {
                    gist: "x".repeat(500),
                    ..decision("pool", 2, Some("groq/m"), None)
                },
                1000,
            )
            .unwrap();
        log.set_outcome(id, "accepted").unwrap();
        let row = log.all().unwrap().into_iter().find(|r| r.id == id).unwrap();
        assert_eq!(row.decision.gist.len(), MAX_GIST);
        assert_eq!(row.decision.outcome.as_deref(), Some("accepted"));
        assert_eq!(row.session.as_deref(), Some("sess-1"));
        assert!(matches!(
            log.set_outcome(9999, "redone"),
            Err(Error::NotFound(9999))
        ));
    }

    #[test]
    fn stats_by_route_band_gate_and_acceptance() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), None).unwrap();
        log.record(&decision("pool", 2, Some("a/m"), Some("accepted")), 1)
            .unwrap();
        log.record(&decision("pool", 5, Some("a/m"), Some("redone")), 2)
            .unwrap();
        log.record(&decision("pool", 3, Some("b/m"), Some("accepted")), 3)
            .unwrap();
        log.record(
            &Decision {
                gate: Some("capability".into()),
                ..decision("claude", 4, None, None)
            },
            4,
        )
        .unwrap();
        log.record(&decision("claude", 9, None, None), 5).unwrap();
        let s = stats(&log.all().unwrap());
        assert_eq!(s.total, 5);
        assert_eq!(s.by_route, vec![("pool".into(), 3), ("claude".into(), 2)]);
        assert!(s.by_band.contains(&("9-10 critical".into(), 1)));
        assert_eq!(
            s.acceptance,
            vec![("a/m".into(), 1, 2), ("b/m".into(), 1, 1)]
        );
        assert_eq!(s.capability_hits, 1);
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let path = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    // Separate connections, as separate processes would have.
                    let log = Log::open(&path, Some(format!("s{t}"))).unwrap();
                    for i in 0..50 {
                        log.record(&decision("pool", 1 + (i % 10) as u8, None, None), i)
                            .unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let log = Log::open(dir.path(), None).unwrap();
        assert_eq!(log.all().unwrap().len(), 400);
    }

    #[test]
    fn csv_quotes_fields() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), None).unwrap();
        log.record(
            &Decision {
                gist: "convert \"a, b\" to c".into(),
                ..decision("pool", 2, None, None)
            },
            0,
        )
        .unwrap();
        let csv = to_csv(&log.all().unwrap());
        assert!(
            csv.lines()
                .nth(1)
                .unwrap()
                .contains("\"convert \"\"a, b\"\" to c\""),
            "{csv}"
        );
    }
}
