//! Converts the built-in catalog (`providers.toml`) to JSON at build time.
//!
//! The server answers `initialize` with the catalog loaded; parsing 40 KB of
//! TOML costs about 0.7 ms at every start, the same data as JSON about a fifth
//! of that. The TOML stays the source of truth (and what errors point into).
//!
//! Models kept off as gone upstream (`gone = "..."`, not `enabled = true`)
//! are a third of the rows: `catalog.json` holds only their `gone` line, and
//! `catalog-retired.json` their whole tables, read only when the user's file
//! names one (to turn it back on).

fn main() {
    println!("cargo::rerun-if-changed=providers.toml");
    let text = std::fs::read_to_string("providers.toml").expect("providers.toml is readable");
    let mut value: toml::Value =
        toml::from_str(&text).unwrap_or_else(|e| panic!("providers.toml does not parse: {e}"));
    let mut retired = toml::Table::new();
    if let Some(providers) = value
        .get_mut("providers")
        .and_then(toml::Value::as_table_mut)
    {
        for (pid, provider) in providers.iter_mut() {
            let Some(models) = provider
                .get_mut("models")
                .and_then(toml::Value::as_table_mut)
            else {
                continue;
            };
            for (mid, model) in models.iter_mut() {
                let gone = model.get("gone").cloned();
                let enabled = model.get("enabled").and_then(toml::Value::as_bool);
                if let Some(gone) = gone
                    && enabled != Some(true)
                {
                    let full = std::mem::replace(
                        model,
                        toml::Value::Table(toml::Table::from_iter([("gone".to_owned(), gone)])),
                    );
                    retired
                        .entry(pid.clone())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                        .as_table_mut()
                        .expect("a table")
                        .insert(mid.clone(), full);
                }
            }
        }
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let json = serde_json::to_string(&value).expect("the catalog serializes to JSON");
    std::fs::write(out.join("catalog.json"), json).expect("OUT_DIR is writable");
    let json = serde_json::to_string(&retired).expect("the retired models serialize to JSON");
    std::fs::write(out.join("catalog-retired.json"), json).expect("OUT_DIR is writable");
}
