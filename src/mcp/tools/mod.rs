//! The tools, one file each: its arguments (whose JSON schema is derived from
//! the same struct), its description and annotations, its call, and the text
//! Claude reads back. [`Tool`] names them once and dispatches by name.
//!
//! Arguments are checked against the derived schema before they are read, so
//! every limit a schema states (`maxItems`, `maximum`, unknown properties) is
//! the limit enforced, and an error names the argument, never its content.
//!
//! The schemas are derived from the `Args` structs (schemars) by a test, which
//! keeps `schemas.json` equal to what the structs say; the server embeds that
//! file, so no start pays for deriving what never changes at run time.
//! After changing an `Args` struct: `FREEPOOL_BLESS=1 cargo test schemas`.

mod claude_budget;
mod delegate;
mod fanout;
mod list_models;
mod log_route_decision;

use std::sync::{Arc, OnceLock};

use rmcp::model::{JsonObject, MetaObject, ToolAnnotations};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::Progress;
use crate::dispatch::{Engine, LogFields};

/// Every tool's argument schema, derived from its `Args` (see the module doc).
const SCHEMAS: &str = include_str!("schemas.json");

/// Largest result Claude Code accepts inline when a tool says so (`_meta`).
pub(crate) const MAX_RESULT_CHARS: u64 = 100_000;

/// Every tool, in the order `tools/list` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tool {
    /// One task on the pool.
    Delegate,
    /// Many tasks in parallel.
    Fanout,
    /// What is usable now.
    ListModels,
    /// Claude's own budget.
    ClaudeBudget,
    /// The routing-decision log.
    LogRouteDecision,
}

/// A tool's definition, built once; its argument validator is compiled at
/// the tool's first call (compiling all five cost `tools/list` milliseconds).
struct Built {
    tool: rmcp::model::Tool,
    validator: OnceLock<Option<jsonschema::Validator>>,
}

impl Tool {
    /// All of them.
    pub(crate) const ALL: [Tool; 5] = [
        Tool::Delegate,
        Tool::Fanout,
        Tool::ListModels,
        Tool::ClaudeBudget,
        Tool::LogRouteDecision,
    ];

    /// The name Claude calls it by.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Tool::Delegate => "delegate",
            Tool::Fanout => "fanout",
            Tool::ListModels => "list_models",
            Tool::ClaudeBudget => "claude_budget",
            Tool::LogRouteDecision => "log_route_decision",
        }
    }

    /// The tool with this name.
    pub(crate) fn from_name(name: &str) -> Option<Tool> {
        Tool::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The schema derived from the tool's argument type (tests keep
    /// `schemas.json` equal to it).
    #[cfg(test)]
    fn derived_schema(self) -> JsonObject {
        match self {
            Tool::Delegate => schema_of::<delegate::Args>(),
            Tool::Fanout => schema_of::<fanout::Args>(),
            Tool::ListModels | Tool::ClaudeBudget => schema_of::<NoArgs>(),
            Tool::LogRouteDecision => schema_of::<log_route_decision::Args>(),
        }
    }

    /// The schema as embedded from `schemas.json`.
    fn embedded_schema(self) -> JsonObject {
        static ALL: OnceLock<JsonObject> = OnceLock::new();
        let all = ALL.get_or_init(|| serde_json::from_str(SCHEMAS).unwrap_or_default());
        all.get(self.name())
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_else(|| {
                // Only a broken build gets here; the tests rule it out.
                let mut closed = JsonObject::new();
                closed.insert("type".into(), json!("object"));
                closed
            })
    }

    fn build(self) -> Built {
        let (description, annotations, meta) = match self {
            Tool::Delegate => (
                delegate::DESCRIPTION,
                pool_call("Delegate to the free pool"),
                Some(size_meta()),
            ),
            Tool::Fanout => (
                fanout::DESCRIPTION,
                pool_call("Fan out to the free pool"),
                Some(size_meta()),
            ),
            Tool::ListModels => (
                list_models::DESCRIPTION,
                read_only("List free models"),
                None,
            ),
            Tool::ClaudeBudget => (claude_budget::DESCRIPTION, read_only("Claude budget"), None),
            Tool::LogRouteDecision => (
                log_route_decision::DESCRIPTION,
                ToolAnnotations::with_title("Log a routing decision")
                    .read_only(false)
                    .destructive(false)
                    .idempotent(false)
                    .open_world(false),
                None,
            ),
        };
        let schema = self.embedded_schema();
        let mut tool = rmcp::model::Tool::new(self.name(), description, Arc::new(schema))
            .with_annotations(annotations);
        if let Some(meta) = meta {
            tool = tool.with_meta(meta);
        }
        Built {
            tool,
            validator: OnceLock::new(),
        }
    }

    fn validator(self) -> Option<&'static jsonschema::Validator> {
        let built = self.built();
        built
            .validator
            .get_or_init(|| {
                let schema = Value::Object((*built.tool.input_schema).clone());
                jsonschema::validator_for(&schema)
                    .map_err(|e| {
                        tracing::error!(tool = self.name(), "schema does not compile: {e}")
                    })
                    .ok()
            })
            .as_ref()
    }

    fn built(self) -> &'static Built {
        static BUILT: OnceLock<Vec<Built>> = OnceLock::new();
        let all = BUILT.get_or_init(|| Tool::ALL.iter().map(|t| t.build()).collect());
        let i = Tool::ALL.iter().position(|t| *t == self).unwrap_or(0);
        &all[i]
    }

    /// Its `tools/list` entry.
    pub(crate) fn definition(self) -> rmcp::model::Tool {
        self.built().tool.clone()
    }

    /// Runs it: `Ok` is a result Claude reads, `Err` a tool error it reads.
    pub(crate) async fn call(
        self,
        engine: &Engine,
        args: Value,
        progress: Option<Progress>,
    ) -> Result<String, String> {
        let args = if args.is_null() { json!({}) } else { args };
        if let Some(v) = self.validator()
            && let Some(first) = v.iter_errors(&args).next()
        {
            return Err(format!(
                "invalid arguments: {}",
                describe(&first, &self.built().tool)
            ));
        }
        match self {
            Tool::Delegate => delegate::call(engine, parse(args)?, progress).await,
            Tool::Fanout => fanout::call(engine, parse(args)?, progress).await,
            Tool::ListModels => list_models::call(engine).await,
            Tool::ClaudeBudget => Ok(claude_budget::call(engine).await),
            Tool::LogRouteDecision => log_route_decision::call(engine, parse(args)?).await,
        }
    }
}

/// Tools that take no arguments.
#[cfg(test)]
#[derive(Deserialize, JsonSchema)]
struct NoArgs {}

/// The decision-log fields `delegate` and each `fanout` task share.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub(crate) struct LogArgs {
    /// Optional: a short description of the task for the decision log (never the prompt itself).
    #[schemars(length(max = 200))]
    gist: Option<String>,
    /// Optional: the difficulty score you gave the task.
    #[schemars(range(min = 1, max = 10))]
    score: Option<u8>,
    /// Optional: summarize, extract, convert, codegen, draft, refactor, ...
    task_type: Option<String>,
}

impl LogArgs {
    /// The fields to log, when any was given.
    pub(crate) fn fields(&self) -> Option<LogFields> {
        (self.gist.is_some() || self.score.is_some() || self.task_type.is_some()).then(|| {
            LogFields {
                gist: self.gist.clone(),
                score: self.score,
                task_type: self.task_type.clone(),
            }
        })
    }
}

fn parse<T: DeserializeOwned>(args: Value) -> Result<T, String> {
    serde_json::from_value(args).map_err(|e| format!("invalid arguments: {e}"))
}

/// The JSON schema of `T`, inlined and without what Claude need not read
/// (every tool definition costs it input tokens at each session start).
#[cfg(test)]
fn schema_of<T: JsonSchema>() -> JsonObject {
    let settings = schemars::generate::SchemaSettings::draft2020_12().with(|s| {
        s.inline_subschemas = true;
    });
    let schema = settings.into_generator().into_root_schema_for::<T>();
    let mut value = schema.to_value();
    tidy(&mut value);
    let mut root = match value {
        Value::Object(m) => m,
        _ => JsonObject::new(),
    };
    // Claude Code drops tools whose schema is not a plain object.
    root.insert("type".into(), json!("object"));
    root.entry("properties").or_insert_with(|| json!({}));
    root.insert("additionalProperties".into(), Value::Bool(false));
    root
}

/// Drops `$schema`, titles and integer formats, and closes every object to
/// unknown properties (Claude Code passes unlisted arguments through).
#[cfg(test)]
fn tidy(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("$schema");
            m.remove("title");
            if m.get("format").and_then(Value::as_str).is_some_and(|f| {
                matches!(
                    f,
                    "uint" | "uint8" | "uint32" | "uint64" | "int64" | "float" | "double"
                )
            }) {
                m.remove("format");
            }
            if m.contains_key("properties") {
                m.insert("additionalProperties".into(), Value::Bool(false));
                // A struct's own doc comment: the fields' descriptions say it all.
                m.remove("description");
            }
            for (_, child) in m.iter_mut() {
                tidy(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(tidy),
        _ => {}
    }
}

/// One schema violation in words: where, and what the schema says, never the value.
fn describe(e: &jsonschema::ValidationError<'_>, tool: &rmcp::model::Tool) -> String {
    use jsonschema::error::ValidationErrorKind as K;
    let path = e.instance_path().to_string();
    let at = if path.is_empty() {
        "the arguments".to_owned()
    } else {
        format!("`{}`", path.trim_start_matches('/').replace('/', "."))
    };
    match e.kind() {
        K::MaxItems { limit } => format!("{at} has more than {limit} items"),
        K::MinItems { limit } => format!("{at} needs at least {limit} item(s)"),
        K::Maximum { limit } => format!("{at} must be at most {limit}"),
        K::Minimum { limit } => format!("{at} must be at least {limit}"),
        K::MaxLength { limit } => format!("{at} is longer than {limit} characters"),
        K::MinLength { .. } => format!("{at} must not be empty"),
        K::Required { property } => {
            format!("{at}: `{}` is required", property.as_str().unwrap_or("?"))
        }
        K::AdditionalProperties { unexpected } => {
            let known = known_properties(&tool.input_schema, &path);
            format!(
                "{at}: unknown argument {}; the arguments are {}",
                unexpected
                    .iter()
                    .map(|u| format!("`{u}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                known.join(", ")
            )
        }
        K::Type { kind } => format!("{at} must be {}", type_name(kind)),
        K::Enum { options } => {
            let names: Vec<String> = options
                .as_array()
                .into_iter()
                .flatten()
                .filter(|o| !o.is_null())
                .map(|o| o.as_str().map_or_else(|| o.to_string(), str::to_owned))
                .collect();
            format!("{at} must be one of {}", names.join(", "))
        }
        _ => format!("{at} does not match the tool's schema"),
    }
}

fn type_name(kind: &jsonschema::error::TypeKind) -> String {
    use jsonschema::error::TypeKind;
    match kind {
        TypeKind::Single(t) => format!("{t}"),
        TypeKind::Multiple(ts) => ts
            .iter()
            .map(|t| t.to_string())
            .filter(|t| t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
    }
}

/// The properties the schema allows at a JSON pointer of the instance.
fn known_properties(schema: &JsonObject, pointer: &str) -> Vec<String> {
    let mut node = Value::Object(schema.clone());
    for part in pointer.split('/').filter(|p| !p.is_empty()) {
        node = if part.chars().all(|c| c.is_ascii_digit()) {
            node.get("items").cloned().unwrap_or(Value::Null)
        } else {
            node.get("properties")
                .and_then(|p| p.get(part))
                .cloned()
                .unwrap_or(Value::Null)
        };
    }
    node.get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

fn read_only(title: &str) -> ToolAnnotations {
    ToolAnnotations::with_title(title)
        .read_only(true)
        .destructive(false)
        .idempotent(true)
        .open_world(false)
}

/// A pool call sends text out (open world) and, with write_to and
/// overwrite, may replace a project file (destructive).
fn pool_call(title: &str) -> ToolAnnotations {
    ToolAnnotations::with_title(title)
        .read_only(false)
        .destructive(true)
        .idempotent(false)
        .open_world(true)
}

fn size_meta() -> MetaObject {
    let mut meta = MetaObject::new();
    meta.insert(
        "anthropic/maxResultSizeChars".into(),
        json!(MAX_RESULT_CHARS),
    );
    meta
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `schemas.json` says what the `Args` structs say; with
    /// `FREEPOOL_BLESS=1` the test rewrites it instead of failing.
    #[test]
    fn schemas_json_matches_the_argument_types() {
        let mut derived = JsonObject::new();
        for t in Tool::ALL {
            derived.insert(t.name().into(), Value::Object(t.derived_schema()));
        }
        let text = serde_json::to_string_pretty(&derived).unwrap() + "\n";
        if text != SCHEMAS {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/mcp/tools/schemas.json");
            if std::env::var_os("FREEPOOL_BLESS").is_some() {
                std::fs::write(path, &text).unwrap();
            } else {
                panic!(
                    "{path} is out of date with the Args structs; run FREEPOOL_BLESS=1 cargo test schemas"
                );
            }
        }
    }

    #[test]
    fn schemas_are_closed_objects_and_descriptions_fit() {
        let names: Vec<&str> = Tool::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(
            names,
            [
                "delegate",
                "fanout",
                "list_models",
                "claude_budget",
                "log_route_decision"
            ]
        );
        for t in Tool::ALL {
            let d = t.definition();
            assert_eq!(
                d.input_schema.get("type"),
                Some(&json!("object")),
                "{}",
                d.name
            );
            assert_eq!(
                d.input_schema.get("additionalProperties"),
                Some(&json!(false))
            );
            assert!(!d.input_schema.contains_key("anyOf"), "{}", d.name);
            assert!(d.description.as_ref().unwrap().len() < 2048, "{}", d.name);
            assert!(d.annotations.is_some(), "{}", d.name);
            assert!(t.validator().is_some(), "{}", d.name);
        }
        let fanout = Tool::Fanout.definition();
        let tasks = &fanout.input_schema["properties"]["tasks"];
        assert_eq!(
            (&tasks["minItems"], &tasks["maxItems"]),
            (&json!(1), &json!(200))
        );
        assert_eq!(tasks["items"]["additionalProperties"], json!(false));
        assert_eq!(tasks["items"]["properties"]["score"]["maximum"], json!(10));
        assert!(tasks["items"]["properties"]["prompt"]["description"].is_string());
    }

    fn check(tool: Tool, args: &Value) -> Result<(), String> {
        match tool.validator().unwrap().iter_errors(args).next() {
            None => Ok(()),
            Some(e) => Err(describe(&e, &tool.built().tool)),
        }
    }

    /// Every limit a schema states is the limit enforced, and the error names
    /// the argument without echoing its value.
    #[test]
    fn stated_limits_are_enforced_with_clear_errors() {
        let task = json!({"prompt": "p"});
        let many: Vec<Value> = vec![task.clone(); 201];
        let cases = [
            (
                Tool::Fanout,
                json!({"tasks": many}),
                "`tasks` has more than 200 items",
            ),
            (
                Tool::Fanout,
                json!({"tasks": []}),
                "`tasks` needs at least 1 item(s)",
            ),
            (
                Tool::Delegate,
                json!({"prompt": "p", "score": 11}),
                "`score` must be at most 10",
            ),
            (
                Tool::Delegate,
                json!({"prompt": "p", "temperature": 3}),
                "`temperature` must be at most 2",
            ),
            (
                Tool::Delegate,
                json!({"prompt": 5}),
                "`prompt` must be string",
            ),
            (
                Tool::Delegate,
                json!({}),
                "the arguments: `prompt` is required",
            ),
            (
                Tool::Delegate,
                json!({"prompt": "p", "promt": "q"}),
                "unknown argument `promt`; the arguments are",
            ),
            (
                Tool::Fanout,
                json!({"tasks": [{"prompt": "p", "gist": "x".repeat(201)}]}),
                "`tasks.0.gist` is longer than 200 characters",
            ),
            (
                Tool::LogRouteDecision,
                json!({"gist": "g", "route": "elsewhere"}),
                "`route` must be one of",
            ),
        ];
        for (tool, args, want) in cases {
            let err = check(tool, &args).unwrap_err();
            assert!(err.contains(want), "{}: {err}", tool.name());
            assert!(err.len() < 300, "{err}");
        }
        assert!(check(Tool::Fanout, &json!({"tasks": vec![task; 200]})).is_ok());
        assert!(check(Tool::ListModels, &json!({})).is_ok());
    }
}
