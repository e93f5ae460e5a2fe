//! The credential gate against its labelled corpus (`tests/gate/corpus.txt`):
//! every rule has at least five true and three false cases; every true case
//! is found by its own rule and no false case by any rule. The per-kind
//! figures are the table in docs/security.md, which this test keeps true
//! (`FREEPOOL_BLESS=1 cargo test gate_corpus` rewrites it).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use freepool_mcp::gate;

const CORPUS: &str = include_str!("../gate/corpus.txt");
const DOCS: &str = "docs/security.md";
const START: &str = "<!-- gate-corpus:start -->";
const END: &str = "<!-- gate-corpus:end -->";

/// Five common places a value sits, for `+ *`.
const PLACES: &[&str] = &[
    "export SERVICE_CREDENTIAL={v}",
    "{\"name\": \"ci\", \"value\": \"{v}\"}",
    "client = Client(auth=\"{v}\")",
    "This one still works: {v} - why does CI say 401?",
    "upstream:\n  credential: '{v}'",
];

/// A seeded generator, so the corpus and its figures are the same on every run.
struct Rng(u64);

impl Rng {
    fn new(seed: &str) -> Rng {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in seed.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Rng(h)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn pick(&mut self, alphabet: &[u8], n: usize) -> String {
        // Never a run that reads as a placeholder by chance.
        loop {
            let s: String = (0..n)
                .map(|_| alphabet[(self.next() % alphabet.len() as u64) as usize] as char)
                .collect();
            let l = s.to_lowercase();
            if ![
                "xxxx", "0000", "todo", "fake", "your", "dummy", "1234", "abcd", "example", "test",
                "here", "sample",
            ]
            .iter()
            .any(|m| l.contains(m))
            {
                return s;
            }
        }
    }
}

const WORDS: &[&str] = &[
    "abandon", "ability", "absorb", "acid", "acoustic", "adapt", "advice", "afraid", "agent",
    "alarm", "alley", "amateur", "anchor", "antique", "armor", "arrow", "aunt", "autumn", "bacon",
    "badge", "bamboo", "banner", "barrel", "beach", "beyond", "bicycle", "blanket", "bonus",
    "bracket", "brisk", "cabin", "cactus", "canal", "carbon", "casino", "cereal", "chimney",
    "cinnamon", "clever", "coconut", "comic", "copper", "cradle", "crystal", "dolphin", "eagle",
    "fossil", "garlic", "glacier", "harbor", "island", "jungle", "kitten", "lantern", "marble",
];

fn alphabet(c: char) -> &'static [u8] {
    match c {
        'a' => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
        'A' => b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
        'l' => b"abcdefghijklmnopqrstuvwxyz0123456789",
        'h' => b"0123456789abcdef",
        'H' => b"0123456789ABCDEF",
        'd' => b"0123456789",
        'b' => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
        'u' => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-",
        'z' => b"abcdefghijklmnopqrstuvwxyz234567",
        'Z' => b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567",
        'm' => b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz",
        'p' => b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789!#%*+=?^_~",
        'L' => b"abcdefghijklmnopqrstuvwxyz",
        'B' => b"QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L",
        _ => panic!("unknown generator {c}"),
    }
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.len();
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let x = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= n {
                out.push(T[((x >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Fills `{a36}`-style marks; `{v}` with `v` (itself filled first).
fn fill(template: &str, v: Option<&str>, rng: &mut Rng) -> String {
    static MARK: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = MARK.get_or_init(|| {
        regex::Regex::new(r"\{(?:([aAlhHdbuzZmpLBw])(\d+)|(uuid|up|v))\}").unwrap()
    });
    let mut out = String::new();
    let mut last = 0;
    for c in re.captures_iter(template) {
        let m = c.get(0).unwrap();
        out.push_str(&template[last..m.start()]);
        last = m.end();
        if let Some(kind) = c.get(1) {
            let n: usize = c[2].parse().unwrap();
            let k = kind.as_str().chars().next().unwrap();
            if k == 'w' {
                // Seed words are drawn from 2048 and rarely repeat: draw without replacement.
                let mut pool: Vec<&str> = WORDS.to_vec();
                let words: Vec<&str> = (0..n)
                    .map(|_| pool.swap_remove((rng.next() % pool.len() as u64) as usize))
                    .collect();
                out.push_str(&words.join(" "));
            } else {
                out.push_str(&rng.pick(alphabet(k), n));
            }
        } else {
            match &c[3] {
                "uuid" => {
                    let h = rng.pick(b"0123456789abcdef", 32);
                    let _ = write!(
                        out,
                        "{}-{}-4{}-a{}-{}",
                        &h[..8],
                        &h[8..12],
                        &h[13..16],
                        &h[17..20],
                        &h[20..]
                    );
                }
                "up" => {
                    let pass = rng.pick(alphabet('p'), 16);
                    out.push_str(&base64(format!("svc-deploy:{pass}").as_bytes()));
                }
                _ => out.push_str(v.expect("{v} needs a `v` line")),
            }
        }
    }
    out.push_str(&template[last..]);
    out.replace("\\n", "\n")
}

struct Section {
    id: String,
    value: Option<String>,
    trues: Vec<String>,
    falses: Vec<String>,
}

fn sections() -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    for (n, line) in CORPUS.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(id) = line.strip_prefix("== ") {
            out.push(Section {
                id: id.trim().to_owned(),
                value: None,
                trues: vec![],
                falses: vec![],
            });
            continue;
        }
        let s = out
            .last_mut()
            .unwrap_or_else(|| panic!("corpus line {} before any section", n + 1));
        if let Some(v) = line.strip_prefix("v ") {
            s.value = Some(v.to_owned());
        } else if line == "+ *" {
            s.trues.extend(PLACES.iter().map(|p| (*p).to_owned()));
        } else if let Some(c) = line.strip_prefix("+ ") {
            s.trues.push(c.to_owned());
        } else if let Some(c) = line.strip_prefix("- ") {
            s.falses.push(c.to_owned());
        } else {
            panic!("corpus line {}: {line:?} is not a case", n + 1);
        }
    }
    out
}

/// Near misses derived from a section's first case that holds `{v}`.
fn derived(s: &Section, rng: &mut Rng) -> Vec<String> {
    let Some(vt) = &s.value else { return vec![] };
    let prefix = &vt[..vt.find('{').unwrap_or(vt.len())];
    let mut out = Vec::new();
    if let Some(first) = s.trues.iter().find(|c| c.contains("{v}")) {
        let len = fill(vt, None, rng).len();
        let run = format!(
            "{prefix}{}",
            "x".repeat(len.saturating_sub(prefix.len()).max(8))
        );
        for v in [run.as_str(), "${SERVICE_SECRET}", "<your-value-here>"] {
            out.push(fill(&first.replace("{v}", v), None, rng));
        }
    }
    if vt.contains('{') && prefix.len() >= 3 {
        out.push(format!(
            "Values of this kind start with \"{prefix}\"; keep them out of the repository."
        ));
    }
    out
}

#[derive(Default)]
struct Figures {
    trues: usize,
    named: usize,
    caught: usize,
    falses: usize,
    flagged: usize,
}

#[test]
fn gate_corpus() {
    let kinds: BTreeMap<&str, &str> = gate::kinds().collect();
    let mut figures: Vec<(String, Figures)> = Vec::new();
    let mut failures = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for s in sections() {
        assert!(
            s.id == "none" || kinds.contains_key(s.id.as_str()),
            "corpus section {} names no rule",
            s.id
        );
        assert!(seen.insert(s.id.clone()), "section {} twice", s.id);
        let mut f = Figures::default();
        for (i, case) in s.trues.iter().enumerate() {
            let mut rng = Rng::new(&format!("{}+{i}", s.id));
            let v = s.value.as_deref().map(|t| fill(t, None, &mut rng));
            let text = fill(case, v.as_deref(), &mut rng);
            let found = gate::scan(&text);
            f.trues += 1;
            if !found.is_empty() {
                f.caught += 1;
            }
            if found.iter().any(|x| x.rule == s.id) {
                f.named += 1;
            } else {
                failures.push(format!("{}: missed {text:?}: {found:?}", s.id));
            }
        }
        let mut rng = Rng::new(&format!("{}-derived", s.id));
        let mut falses: Vec<String> = s
            .falses
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut rng = Rng::new(&format!("{}-{i}", s.id));
                let v = s.value.as_deref().map(|t| fill(t, None, &mut rng));
                fill(c, v.as_deref(), &mut rng)
            })
            .collect();
        falses.extend(derived(&s, &mut rng));
        for text in falses {
            let found = gate::scan(&text);
            f.falses += 1;
            if !found.is_empty() {
                f.flagged += 1;
                failures.push(format!("{}: flagged {text:?}: {found:?}", s.id));
            }
        }
        figures.push((s.id, f));
    }
    for id in kinds.keys() {
        assert!(seen.contains(*id), "rule {id} has no corpus section");
    }
    let mut short = vec![];
    for (id, f) in &figures {
        if id != "none" && (f.trues < 5 || f.falses < 3) {
            short.push(format!("{id}: {} true, {} false", f.trues, f.falses));
        }
    }
    assert!(
        short.is_empty(),
        "kinds short of cases:\n{}",
        short.join("\n")
    );

    let table = table(&figures, &kinds);
    let (t, n, c, fl, ff) = figures.iter().fold((0, 0, 0, 0, 0), |a, (_, f)| {
        (
            a.0 + f.trues,
            a.1 + f.named,
            a.2 + f.caught,
            a.3 + f.falses,
            a.4 + f.flagged,
        )
    });
    eprintln!(
        "gate corpus: {} kinds; {c} of {t} true cases caught ({n} by their own rule); {ff} of {fl} false cases flagged",
        figures.len() - 1
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );

    let docs = std::fs::read_to_string(DOCS).unwrap();
    let (Some(a), Some(b)) = (docs.find(START), docs.find(END)) else {
        panic!("{DOCS} lacks the {START} … {END} block");
    };
    let current = &docs[a + START.len()..b];
    if current.trim() != table.trim() {
        if std::env::var_os("FREEPOOL_BLESS").is_some() {
            let new = format!("{}{START}\n{}\n{}", &docs[..a], table.trim(), &docs[b..]);
            std::fs::write(DOCS, new).unwrap();
        } else {
            panic!(
                "{DOCS}'s corpus table is out of date; rerun with FREEPOOL_BLESS=1. New table:\n{table}"
            );
        }
    }
}

fn table(figures: &[(String, Figures)], kinds: &BTreeMap<&str, &str>) -> String {
    let mut out = String::from(
        "| rule | kind | true cases found by the rule | false cases flagged |\n|---|---|---|---|\n",
    );
    let mut total = Figures::default();
    for (id, f) in figures {
        let kind = kinds
            .get(id.as_str())
            .copied()
            .unwrap_or("technical text, no secret");
        let _ = writeln!(
            out,
            "| `{id}` | {kind} | {} | {} of {} |",
            if f.trues == 0 {
                "-".to_owned()
            } else {
                format!("{} of {}", f.named, f.trues)
            },
            f.flagged,
            f.falses
        );
        total.trues += f.trues;
        total.named += f.named;
        total.falses += f.falses;
        total.flagged += f.flagged;
    }
    let _ = writeln!(
        out,
        "| **all** | {} kinds | {} of {} | {} of {} |",
        figures.len() - 1,
        total.named,
        total.trues,
        total.flagged,
        total.falses
    );
    out
}

const HELDOUT: &str = include_str!("../gate/heldout.txt");

/// The held-out sets: prompts written after the rules (batch 2 after
/// batch 1's fixes). Reported per batch, with floors.
#[test]
fn gate_heldout() {
    // batch -> (caught, secrets, flagged, clean)
    let mut figures: BTreeMap<&str, (usize, usize, usize, usize)> = BTreeMap::new();
    let mut section = "";
    let mut misses = vec![];
    for (i, line) in HELDOUT.lines().enumerate() {
        if let Some(s) = line.strip_prefix("== ") {
            section = s;
            continue;
        }
        let Some(case) = line.strip_prefix("+ ").or_else(|| line.strip_prefix("- ")) else {
            continue;
        };
        let batch = if section.ends_with(" 2") { "2" } else { "1" };
        let f = figures.entry(batch).or_default();
        let mut rng = Rng::new(&format!("heldout{i}"));
        let text = fill(case, None, &mut rng);
        let found = gate::scan(&text);
        if section.starts_with("secret") {
            f.1 += 1;
            f.0 += usize::from(!found.is_empty());
            if found.is_empty() {
                misses.push(format!("missed line {}: {text:?}", i + 1));
            }
        } else {
            f.3 += 1;
            f.2 += usize::from(!found.is_empty());
            if !found.is_empty() {
                misses.push(format!("flagged line {}: {text:?}: {found:?}", i + 1));
            }
        }
    }
    for (batch, (hits, trues, flags, falses)) in &figures {
        let recall = *hits as f64 / *trues as f64;
        let false_rate = *flags as f64 / *falses as f64;
        eprintln!(
            "gate held out, batch {batch}: {hits} of {trues} secrets caught ({recall:.3}), {flags} of {falses} clean prompts flagged ({false_rate:.3})"
        );
        assert!(
            recall >= 0.80 && false_rate <= 0.10,
            "held-out batch {batch} fell below its floors:\n{}",
            misses.join("\n")
        );
    }
    eprintln!("{}", misses.join("\n"));
}
