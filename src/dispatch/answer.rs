//! The check an answer must pass before it is served: `checks` for its
//! shape, and for a named command, the write it needs, the run, and the
//! restore of the file when the command fails (the next model starts from
//! the file as it was).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use super::Wrote;
use super::failover::{Verified, Verify};
use crate::checks::Check;
use crate::workspace::{self, Workspace};

/// A call's check.
pub(super) struct AnswerCheck {
    pub(super) check: Check,
    pub(super) workspace: Arc<Workspace>,
    /// `write_to` and `overwrite`, for a command check.
    pub(super) write: Option<(String, bool)>,
    pub(super) timeout: Duration,
}

impl Verify for AnswerCheck {
    fn verify<'a>(&'a self, answer: &'a str) -> BoxFuture<'a, Result<Verified, String>> {
        Box::pin(async move {
            let text = self.check.verify(answer)?;
            let (Some((name, line)), Some((path, overwrite))) =
                (self.check.command(), self.write.clone())
            else {
                return Ok(Verified { text, wrote: None });
            };
            let (ws, line, name, timeout) = (
                self.workspace.clone(),
                line.to_owned(),
                name.to_owned(),
                self.timeout,
            );
            let content = workspace::unfence(&text);
            tokio::task::spawn_blocking(move || {
                let w = ws
                    .write(&path, &content, overwrite)
                    .map_err(|r| r.to_string())?;
                match ws.run_check(&line, &w.path, timeout) {
                    Ok(()) => Ok(Verified {
                        text,
                        wrote: Some(Wrote {
                            path: w.path.clone(),
                            bytes: w.bytes,
                            lines: w.lines,
                            replaced: w.previous.is_some(),
                        }),
                    }),
                    Err(why) => {
                        if let Err(e) = ws.restore(&w) {
                            tracing::warn!(
                                "could not restore {} after a failed check: {e}",
                                w.path
                            );
                        }
                        Err(format!("{name}: {why}"))
                    }
                }
            })
            .await
            .map_err(|_| "the check stopped unexpectedly".to_owned())?
        })
    }
}
