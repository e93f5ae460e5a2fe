//! Reading a TOML table into a typed form one key at a time, so that one bad
//! key costs only itself, and saying what is wrong in the user's terms.
//!
//! serde stops at the first bad field and speaks Rust ("invalid type: string
//! \"x\", expected u64"). `lenient` reads the whole table in one go when it
//! can; when it cannot, it tries each key alone, sets aside every key that
//! does not fit, and reads the rest. `plain` turns serde's words into ones a
//! user of the file knows ("expected a whole number, found the text \"x\"").

use serde::de::DeserializeOwned;

/// A key set aside, and what is wrong with it in plain words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BadKey {
    /// The key as written.
    pub(super) key: String,
    /// What is wrong, ready to follow `path.key: `.
    pub(super) why: String,
}

/// `table` as a `T`, with every key that does not fit left out (so `T`
/// keeps its default there) and returned with the reason.
pub(super) fn lenient<T: DeserializeOwned + Default>(table: toml::Table) -> (T, Vec<BadKey>) {
    if let Ok(t) = toml::Value::Table(table.clone()).try_into::<T>() {
        return (t, Vec::new());
    }
    let mut bad = Vec::new();
    let mut good = toml::Table::new();
    for (key, value) in table {
        let alone = toml::Table::from_iter([(key.clone(), value.clone())]);
        match toml::Value::Table(alone).try_into::<T>() {
            Ok(_) => {
                good.insert(key, value);
            }
            Err(e) => bad.push(BadKey {
                why: plain(e.message(), &key),
                key,
            }),
        }
    }
    // Each key fits alone; together they still could not (none of our
    // forms has such a rule), so fall back to the defaults rather than fail.
    let t = toml::Value::Table(good).try_into::<T>().unwrap_or_default();
    (t, bad)
}

/// serde's message about `key`, in the words of the file's reader.
pub(super) fn plain(message: &str, key: &str) -> String {
    let message = message.trim();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (asked, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        return format!(
            "unknown key{}",
            super::close_matches(asked, known.iter().copied())
        );
    }
    for kind in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(kind)
            && let Some((found, expected)) = rest.rsplit_once(", expected ")
        {
            return format!(
                "expected {}, found {}",
                expected_words(expected),
                found_words(found)
            );
        }
    }
    if message.is_empty() {
        return format!("`{key}` cannot be read");
    }
    message.to_owned()
}

/// "u64" as "a whole number (0 or more)", and so on.
fn expected_words(e: &str) -> String {
    let e = e.trim();
    let words = match e {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number (0 or more)",
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a string" => "text in quotes",
        "a sequence" => "a list like [\"a\", \"b\"]",
        "a map" => "a table",
        _ if e.starts_with("struct ") => "a table",
        _ if e.starts_with("a sequence") => "a list",
        _ => return e.to_owned(),
    };
    words.to_owned()
}

/// `string "x"` as `the text "x"`, `integer \`1\`` as `1`.
fn found_words(f: &str) -> String {
    let f = f.trim();
    let unquote = |s: &str| s.trim_matches('`').to_owned();
    if let Some(s) = f.strip_prefix("string ") {
        return format!("the text {s}");
    }
    for p in ["integer ", "floating point ", "boolean "] {
        if let Some(v) = f.strip_prefix(p) {
            return unquote(v);
        }
    }
    match f {
        "sequence" => "a list".into(),
        "map" => "a table".into(),
        _ => f.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "read only to be rejected")]
    struct Form {
        count: Option<u64>,
        name: Option<String>,
        on: Option<bool>,
    }

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_bad_key_costs_only_itself_and_is_said_plainly() {
        let (form, bad): (Form, _) =
            lenient(table("count = \"x\"\nname = \"kept\"\nnmae = 1\non = 3"));
        assert_eq!(form.name.as_deref(), Some("kept"));
        assert_eq!(form.count, None);
        let said: Vec<(String, String)> = bad.into_iter().map(|b| (b.key, b.why)).collect();
        assert_eq!(
            said,
            [
                (
                    "count".into(),
                    "expected a whole number (0 or more), found the text \"x\"".into()
                ),
                ("nmae".into(), "unknown key (did you mean `name`?)".into()),
                ("on".into(), "expected true or false, found 3".into()),
            ]
        );
        let (form, bad): (Form, _) = lenient(table("count = 3"));
        assert_eq!((form.count, bad.len()), (Some(3), 0));
        let (_, bad): (Form, _) = lenient(table("count = -1"));
        assert_eq!(bad[0].why, "expected a whole number (0 or more), found -1");
    }
}
