//! `list_models`: the free models usable now, their quota left today, and the context ceiling.

use crate::dispatch::{Engine, texts};
use crate::quota::UsageSnapshot;
use crate::status;

pub(super) const DESCRIPTION: &str = "List the free models usable right now (key present, not cooling down): provider/model id, family, context window, quality tier \
and the free quota left today. Also gives the auto context ceiling: the largest prompt auto-routing can take now. \
Lists providers that are not usable and why (no key, benched).";

pub(super) async fn call(engine: &Engine) -> Result<String, String> {
    let catalog = engine.resolved_catalog().await;
    match engine.snapshot(&catalog).await {
        Ok(snap) => Ok(status::models_text(&catalog, &snap)),
        // The catalog is still worth showing when the ledger is not.
        Err(e) => Ok(format!(
            "{}\n\nnote: quota left is unknown: {}",
            status::models_text(&catalog, &UsageSnapshot::default()),
            texts::full(&e)
        )),
    }
}
