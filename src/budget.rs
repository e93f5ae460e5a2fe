//! Claude's own budget: the weekly and 5-hour usage windows, turned into a routing mode.
//!
//! Claude Code hands its live rate-limit figures to one place only: the
//! statusLine command. `freepool-mcp statusline` stores them (`Snapshot`) in
//! the state dir with an atomic rename; `assess` turns the latest snapshot,
//! or a pinned mode for headless runs, into a mode, a delegation threshold
//! and a line of advice. The guard nudges; it never blocks a tool.
//!
//! `assess` is pure: the snapshot and "now" are arguments.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::quota::{iso, relative};

/// File name of the stored snapshot in the state dir.
pub(crate) const SNAPSHOT_FILE: &str = "budget.json";

/// A routing mode, from weekly use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Mode {
    /// Under 60% weekly: use Claude freely.
    Normal,
    /// 60%+: drop the orchestrator's own Opus calls to Sonnet.
    PreferSonnet,
    /// 75%+: push routine work to the pool; threshold 9.
    DelegateMore,
    /// 95%+ weekly (or 5-hour): report the reset and pause.
    Exhausted,
    /// No live signal: behave as normal.
    Unknown,
}

impl Mode {
    /// The name used in config, env and output.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::PreferSonnet => "prefer_sonnet",
            Mode::DelegateMore => "delegate_more",
            Mode::Exhausted => "exhausted",
            Mode::Unknown => "unknown",
        }
    }

    /// Parses a mode name (`delegate-more` and `delegate_more` both work).
    pub(crate) fn parse(s: &str) -> Option<Mode> {
        match s.trim().to_lowercase().replace('-', "_").as_str() {
            "normal" => Some(Mode::Normal),
            "prefer_sonnet" => Some(Mode::PreferSonnet),
            "delegate_more" => Some(Mode::DelegateMore),
            "exhausted" => Some(Mode::Exhausted),
            "unknown" => Some(Mode::Unknown),
            _ => None,
        }
    }

    /// Difficulty at or above which a task stays on Claude.
    pub(crate) fn threshold(self) -> u8 {
        match self {
            Mode::DelegateMore | Mode::Exhausted => 9,
            _ => 7,
        }
    }

    fn from_weekly(pct: f64) -> Mode {
        if pct >= 95.0 {
            Mode::Exhausted
        } else if pct >= 75.0 {
            Mode::DelegateMore
        } else if pct >= 60.0 {
            Mode::PreferSonnet
        } else {
            Mode::Normal
        }
    }
}

/// One usage window as Claude Code reports it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct UsageWindow {
    /// 0..100.
    pub(crate) used_percentage: f64,
    /// Unix seconds.
    pub(crate) resets_at: Option<i64>,
}

/// What the statusline command stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    /// Unix seconds when captured.
    pub(crate) captured_at: i64,
    /// The 5-hour window, when Claude Code sent it.
    pub(crate) five_hour: Option<UsageWindow>,
    /// The 7-day window, when Claude Code sent it.
    pub(crate) seven_day: Option<UsageWindow>,
    /// The session that painted it.
    #[serde(default)]
    pub(crate) session_id: Option<String>,
    /// The model in use then.
    #[serde(default)]
    pub(crate) model: Option<String>,
}

/// Reads the statusLine JSON Claude Code sends on stdin. Anything may arrive:
/// garbage or missing fields give a snapshot with no windows, never an error.
pub(crate) fn parse_statusline(input: &str, now: i64) -> Snapshot {
    let v: serde_json::Value = serde_json::from_str(input).unwrap_or(serde_json::Value::Null);
    let window = |name: &str| -> Option<UsageWindow> {
        let w = v.get("rate_limits")?.get(name)?;
        let used = w.get("used_percentage")?.as_f64()?;
        if !(0.0..=1000.0).contains(&used) {
            return None;
        }
        Some(UsageWindow {
            used_percentage: used,
            resets_at: w
                .get("resets_at")
                .and_then(|r| r.as_i64().or_else(|| r.as_f64().map(|f| f as i64))),
        })
    };
    Snapshot {
        captured_at: now,
        five_hour: window("five_hour"),
        seven_day: window("seven_day"),
        session_id: v
            .get("session_id")
            .and_then(|s| s.as_str())
            .map(str::to_owned),
        model: v
            .pointer("/model/display_name")
            .and_then(|s| s.as_str())
            .map(str::to_owned),
    }
}

/// Stores a snapshot atomically (write a temp file, then rename), so a reader
/// never sees half a file. A snapshot without windows does not replace one with them.
pub(crate) fn store(dir: &Path, snap: &Snapshot) -> std::io::Result<()> {
    if snap.five_hour.is_none() && snap.seven_day.is_none() && load(dir).is_some() {
        return Ok(());
    }
    crate::config::ensure_state_dir(dir)?;
    let tmp = dir.join(format!(".{SNAPSHOT_FILE}.{}", std::process::id()));
    fs_err::write(&tmp, serde_json::to_vec(snap).expect("snapshot serializes"))?;
    fs_err::rename(&tmp, dir.join(SNAPSHOT_FILE))
}

/// Reads the stored snapshot, if any and readable.
pub(crate) fn load(dir: &Path) -> Option<Snapshot> {
    let text = fs_err::read_to_string(snapshot_path(dir)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Where the snapshot lives.
pub(crate) fn snapshot_path(dir: &Path) -> PathBuf {
    dir.join(SNAPSHOT_FILE)
}

/// Where the figures came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub(crate) enum Source {
    /// Captured by the statusline, this many seconds ago.
    Statusline {
        /// Age in seconds.
        age_secs: i64,
    },
    /// Pinned by `FREEPOOL_BUDGET_MODE` or `settings.budget_mode`.
    Pinned {
        /// Which of the two.
        by: String,
    },
    /// Nothing known.
    None,
}

/// A window as reported: use (0 after its reset has passed) and when it resets.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct WindowState {
    /// Percent used now.
    pub(crate) used_percentage: f64,
    /// Unix seconds of the reset, when known.
    pub(crate) resets_at: Option<i64>,
}

/// The budget, assessed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Assessment {
    /// The mode.
    pub(crate) mode: Mode,
    /// Tasks scoring this or more stay on Claude.
    pub(crate) threshold: u8,
    /// Weekly window.
    pub(crate) weekly: Option<WindowState>,
    /// 5-hour window.
    pub(crate) five_hour: Option<WindowState>,
    /// Where the figures came from.
    pub(crate) source: Source,
    /// One line of advice.
    pub(crate) advice: String,
}

fn current(w: Option<UsageWindow>, now: i64) -> Option<WindowState> {
    let w = w?;
    // A window whose reset has passed starts again from zero.
    let used = match w.resets_at {
        Some(r) if r <= now => 0.0,
        _ => w.used_percentage.clamp(0.0, 100.0),
    };
    Some(WindowState {
        used_percentage: used,
        resets_at: w.resets_at.filter(|r| *r > now),
    })
}

/// A percentage as shown: whole, but with one decimal within a point of a
/// mode boundary, so "75%" never sits beside the mode below it.
pub(crate) fn percent(p: f64) -> String {
    if [60.0, 75.0, 95.0].iter().any(|b: &f64| (p - b).abs() < 1.0) {
        format!("{:.1}%", (p * 10.0).floor() / 10.0)
    } else {
        format!("{:.0}%", p.floor())
    }
}

/// Turns a snapshot and an optional pin into a mode. `pinned` is `(mode, who pinned it)`.
pub(crate) fn assess(
    snapshot: Option<&Snapshot>,
    pinned: Option<(Mode, String)>,
    now: i64,
) -> Assessment {
    let weekly = snapshot.and_then(|s| current(s.seven_day, now));
    let five_hour = snapshot.and_then(|s| current(s.five_hour, now));
    let (mode, source) = if let Some((mode, by)) = pinned {
        (mode, Source::Pinned { by })
    } else {
        let mut mode = weekly.map_or(Mode::Unknown, |w| Mode::from_weekly(w.used_percentage));
        if five_hour.is_some_and(|w| w.used_percentage >= 95.0) {
            mode = Mode::Exhausted;
        }
        let source = match snapshot {
            Some(s) if weekly.is_some() || five_hour.is_some() => Source::Statusline {
                age_secs: (now - s.captured_at).max(0),
            },
            _ => Source::None,
        };
        (mode, source)
    };
    let reset_of = |w: Option<WindowState>| {
        w.and_then(|w| w.resets_at)
            .map(|r| format!("{} ({})", iso(r), relative(r - now)))
    };
    // What to do, then why: the figure that decided the mode, or who pinned it.
    let what = match mode {
        Mode::Normal => {
            "use Claude freely, delegate bulk mechanical work when convenient.".to_owned()
        }
        Mode::PreferSonnet => {
            "drop the orchestrator's own Opus calls to Sonnet; keep delegating routine work."
                .to_owned()
        }
        Mode::DelegateMore => {
            "delegate every routine sub-task (difficulty up to 8) to the pool.".to_owned()
        }
        Mode::Exhausted => {
            let five_exhausted = five_hour.is_some_and(|w| w.used_percentage >= 95.0);
            let weekly_exhausted = weekly.is_some_and(|w| w.used_percentage >= 95.0);
            let when = if weekly_exhausted {
                reset_of(weekly)
            } else if five_exhausted {
                reset_of(five_hour)
            } else {
                None
            };
            match when {
                Some(w) => {
                    format!("pause non-essential work; it resets {w}. Delegate what must go on.")
                }
                None => "pause non-essential work and delegate what must go on.".to_owned(),
            }
        }
        Mode::Unknown => {
            "behave as normal. Pin a mode with FREEPOOL_BUDGET_MODE for headless runs.".to_owned()
        }
    };
    let why = match (&source, mode) {
        (Source::Pinned { by }, _) => format!("Mode {} pinned by {by}", mode.as_str()),
        (_, Mode::Unknown) => {
            "No live usage signal (headless, API key, or no message yet)".to_owned()
        }
        (_, Mode::Exhausted) if five_hour.is_some_and(|w| w.used_percentage >= 95.0) => format!(
            "5-hour window {} used",
            percent(five_hour.map_or(0.0, |w| w.used_percentage))
        ),
        (_, m) => {
            let used = weekly.map_or(0.0, |w| w.used_percentage);
            let bound = match m {
                Mode::Normal => "under 60%",
                Mode::PreferSonnet => "over 60%",
                Mode::DelegateMore => "over 75%",
                _ => "over 95%",
            };
            format!("Weekly budget {} used ({bound})", percent(used))
        }
    };
    let advice = format!("{why}: {what}");
    Assessment {
        mode,
        threshold: mode.threshold(),
        weekly,
        five_hour,
        source,
        advice,
    }
}

/// The one budget assessment every face uses: the stored statusline snapshot
/// in `dir`, or a mode pinned by the environment or the config, at `now`
/// (Unix seconds). A pin that does not parse is named in the advice.
pub(crate) fn assess_now(
    dir: &Path,
    env_value: Option<&str>,
    config_value: Option<&str>,
    now: i64,
) -> Assessment {
    assess_with(load(dir).as_ref(), env_value, config_value, now)
}

/// `assess_now` over a snapshot already read.
pub(crate) fn assess_with(
    snap: Option<&Snapshot>,
    env_value: Option<&str>,
    config_value: Option<&str>,
    now: i64,
) -> Assessment {
    let pinned = pinned_mode(env_value, config_value);
    let mut a = assess(snap, pinned.clone().unwrap_or(None), now);
    if let Err(problem) = pinned {
        a.advice = format!("{problem}; ignoring it. {}", a.advice);
    }
    a
}

/// The pinned mode, if any: `$FREEPOOL_BUDGET_MODE` wins over `settings.budget_mode`.
/// An invalid value is reported, not silently ignored.
pub(crate) fn pinned_mode(
    env_value: Option<&str>,
    config_value: Option<&str>,
) -> Result<Option<(Mode, String)>, String> {
    for (value, by) in [
        (env_value, crate::config::env::BUDGET_MODE),
        (config_value, "settings.budget_mode"),
    ] {
        if let Some(v) = value.filter(|v| !v.trim().is_empty()) {
            return match Mode::parse(v) {
                Some(m) => Ok(Some((m, by.to_owned()))),
                None => Err(format!(
                    "{by} = `{v}` is not a mode (normal, prefer_sonnet, delegate_more, exhausted, unknown)"
                )),
            };
        }
    }
    Ok(None)
}

#[cfg(test)]
#[allow(
    clippy::float_cmp,
    reason = "the figures are read from JSON as written, so equality is exact"
)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_000_000;

    fn snap(weekly: Option<f64>, five: Option<f64>) -> Snapshot {
        Snapshot {
            captured_at: NOW - 30,
            five_hour: five.map(|p| UsageWindow {
                used_percentage: p,
                resets_at: Some(NOW + 3600),
            }),
            seven_day: weekly.map(|p| UsageWindow {
                used_percentage: p,
                resets_at: Some(NOW + 86_400),
            }),
            session_id: None,
            model: None,
        }
    }

    #[test]
    fn figures_near_a_boundary_keep_a_decimal_and_advice_names_its_source() {
        assert_eq!(percent(74.96), "74.9%");
        assert_eq!(percent(75.0), "75.0%");
        assert_eq!(percent(62.8), "62%");
        assert_eq!(percent(59.5), "59.5%");
        let a = assess(Some(&snap(Some(74.96), None)), None, NOW);
        assert_eq!(a.mode, Mode::PreferSonnet);
        assert!(
            a.advice
                .starts_with("Weekly budget 74.9% used (over 60%): drop"),
            "{}",
            a.advice
        );
        // A pin speaks of the pin, never of figures it did not read.
        let a = assess(
            None,
            Some((Mode::DelegateMore, "FREEPOOL_BUDGET_MODE".into())),
            NOW,
        );
        assert_eq!(
            a.advice,
            "Mode delegate_more pinned by FREEPOOL_BUDGET_MODE: delegate every routine sub-task (difficulty up to 8) to the pool."
        );
        assert!(!a.advice.contains('%'));
    }

    #[test]
    fn modes_at_their_boundaries() {
        let cases = [
            (0.0, Mode::Normal, 7),
            (59.99, Mode::Normal, 7),
            (60.0, Mode::PreferSonnet, 7),
            (74.9, Mode::PreferSonnet, 7),
            (75.0, Mode::DelegateMore, 9),
            (94.9, Mode::DelegateMore, 9),
            (95.0, Mode::Exhausted, 9),
            (100.0, Mode::Exhausted, 9),
        ];
        for (pct, mode, threshold) in cases {
            let a = assess(Some(&snap(Some(pct), Some(1.0))), None, NOW);
            assert_eq!((a.mode, a.threshold), (mode, threshold), "{pct}%");
        }
    }

    #[test]
    fn five_hour_exhaustion_until_its_reset() {
        let a = assess(Some(&snap(Some(10.0), Some(96.0))), None, NOW);
        assert_eq!(a.mode, Mode::Exhausted);
        assert!(a.advice.contains("resets 2"), "{}", a.advice);
        // After the 5-hour reset the window counts as 0%.
        let a = assess(Some(&snap(Some(10.0), Some(96.0))), None, NOW + 3601);
        assert_eq!(a.mode, Mode::Normal);
        assert_eq!(a.five_hour.unwrap().used_percentage, 0.0);
    }

    #[test]
    fn passed_weekly_reset_counts_as_zero() {
        let a = assess(Some(&snap(Some(97.0), None)), None, NOW + 86_401);
        assert_eq!(a.mode, Mode::Normal);
    }

    #[test]
    fn no_signal_is_unknown_not_zero() {
        let a = assess(None, None, NOW);
        assert_eq!((a.mode, a.threshold), (Mode::Unknown, 7));
        assert_eq!(a.source, Source::None);
        let a = assess(Some(&snap(None, None)), None, NOW);
        assert_eq!(a.mode, Mode::Unknown);
    }

    #[test]
    fn pinned_mode_wins_and_says_so() {
        let pin = pinned_mode(Some("delegate-more"), Some("normal")).unwrap();
        let a = assess(Some(&snap(Some(10.0), None)), pin, NOW);
        assert_eq!(a.mode, Mode::DelegateMore);
        assert_eq!(
            a.source,
            Source::Pinned {
                by: "FREEPOOL_BUDGET_MODE".into()
            }
        );
        let pin = pinned_mode(None, Some("exhausted")).unwrap().unwrap();
        assert_eq!(pin.1, "settings.budget_mode");
        assert!(
            pinned_mode(Some("turbo"), None)
                .unwrap_err()
                .contains("turbo")
        );
    }

    #[test]
    fn statusline_payloads_real_and_garbage() {
        let real = r#"{"session_id":"abc","transcript_path":"/t","cwd":"/w","model":{"id":"claude-opus-4","display_name":"Opus"},
            "workspace":{"current_dir":"/w","project_dir":"/w","added_dirs":[]},"version":"2.1.3","cost":{},"context_window":{},
            "rate_limits":{"five_hour":{"used_percentage":42,"resets_at":1795492916},"seven_day":{"used_percentage":17.299999999999997,"resets_at":1795921316}}}"#;
        let s = parse_statusline(real, NOW);
        assert_eq!(s.five_hour.unwrap().used_percentage, 42.0);
        assert_eq!(s.seven_day.unwrap().resets_at, Some(1_795_921_316));
        assert_eq!(s.session_id.as_deref(), Some("abc"));
        let no_limits = r#"{"session_id":"abc","model":{"display_name":"Sonnet"}}"#;
        assert_eq!(parse_statusline(no_limits, NOW).seven_day, None);
        for garbage in [
            "",
            "not json",
            "[1,2]",
            r#"{"rate_limits":null}"#,
            r#"{"rate_limits":{"seven_day":{"used_percentage":"x"}}}"#,
        ] {
            let s = parse_statusline(garbage, NOW);
            assert!(s.seven_day.is_none() && s.five_hour.is_none(), "{garbage}");
        }
    }

    #[test]
    fn store_is_atomic_and_keeps_known_figures() {
        let dir = tempfile::tempdir().unwrap();
        let s = snap(Some(50.0), Some(5.0));
        store(dir.path(), &s).unwrap();
        assert_eq!(load(dir.path()), Some(s.clone()));
        // A later payload without rate_limits does not erase what we know.
        store(dir.path(), &snap(None, None)).unwrap();
        assert_eq!(load(dir.path()), Some(s));
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temp files left");
    }

    #[test]
    fn relative_times() {
        assert_eq!(relative(125), "in 2m");
        assert_eq!(relative(-7300), "2h 1m ago");
        assert_eq!(relative(90_000), "in 1d 1h");
    }
}
