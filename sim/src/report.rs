//! The outputs of `dalp-sim run` and `dalp-sim report`, as pure functions of the results
//! document (`results.json`, schema [`SCHEMA`], documented in `reports/README.md`):
//! `junit.xml` for CI, and the audit report as Markdown (`report.md`) and standalone HTML
//! (`report.html`) with the same content. Only [`write_outputs`] touches the file system.
//!
//! The report is a function of the results alone (no clock, no host name), so the same results
//! give byte-identical reports.

use crate::scenario::CATALOG;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The schema name written into `results.json`. v2 added `outcome`, `covers` and
/// `data_loss_window_ms` to each result (v1 files are still read: see [`normalize`]).
pub const SCHEMA: &str = "dalp-sim/results/v2";

/// `pass`, `fail` (an invariant was violated) or `crash` (the run produced no result).
pub fn outcome(r: &Value) -> &'static str {
    if r.get("crashed").is_some_and(|c| !c.is_null()) {
        "crash"
    } else if r["passed"] == true {
        "pass"
    } else {
        "fail"
    }
}

/// The largest data-loss window (simulated ms) over the run's database failovers; 0 if none.
pub fn data_loss_window_ms(r: &Value) -> u64 {
    r["data_loss"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["window_ms"].as_u64())
        .max()
        .unwrap_or(0)
}

/// Add the v2 fields a result is missing: `outcome`, `data_loss_window_ms`, and `covers` when
/// `covers` is given (otherwise an absent `covers` becomes `[]`).
pub fn normalize(r: &mut Value, covers: Option<&[String]>) {
    if let Some(c) = covers {
        r["covers"] = json!(c);
    } else if r.get("covers").is_none_or(|c| !c.is_array()) {
        r["covers"] = json!([]);
    }
    r["outcome"] = json!(outcome(r));
    r["data_loss_window_ms"] = json!(data_loss_window_ms(r));
}

fn key(r: &Value) -> (String, u64) {
    (
        r["scenario"].as_str().unwrap_or("").to_string(),
        r["seed"].as_u64().unwrap_or(0),
    )
}

/// The results document: results sorted by (scenario, seed), a summary computed from them, and
/// `extra` merged into the summary (e.g. `wall_s`, `shard`, `merged_from`).
pub fn document(mut results: Vec<Value>, extra: Value) -> Value {
    results.sort_by_key(key);
    let count = |o: &str| results.iter().filter(|r| outcome(r) == o).count();
    let (passed, failed, crashed) = (count("pass"), count("fail"), count("crash"));
    let scenarios: BTreeSet<String> = results.iter().map(|r| key(r).0).collect();
    let mut summary = json!({
        "runs": results.len(),
        "passed": passed,
        "failed": failed + crashed,
        "crashed": crashed,
        "scenarios": scenarios.len(),
        "simulated_s": results.iter().filter_map(|r| r["simulated_ms"].as_u64()).sum::<u64>() as f64 / 1000.0,
    });
    if let Value::Object(m) = extra {
        for (k, v) in m {
            summary[k] = v;
        }
    }
    json!({"schema": SCHEMA, "summary": summary, "results": results})
}

/// Merge results documents (e.g. the shards of one run) into one: every result normalised,
/// de-duplicated by (scenario, seed) (the first document that has a run wins), `wall_s` summed,
/// and `merged_from` naming the inputs. Rejects documents that are not dalp-sim results.
pub fn merge(docs: &[(String, Value)]) -> Result<Value, String> {
    let mut seen: BTreeMap<(String, u64), Value> = BTreeMap::new();
    let mut duplicates = 0usize;
    let mut wall_s = 0.0;
    for (name, doc) in docs {
        let schema = doc["schema"].as_str().unwrap_or("");
        if !schema.starts_with("dalp-sim/results/") {
            return Err(format!(
                "{name}: not a dalp-sim results file (schema {:?})",
                doc["schema"]
            ));
        }
        let results = doc["results"]
            .as_array()
            .ok_or_else(|| format!("{name}: field `results`: missing or not an array"))?;
        wall_s += doc["summary"]["wall_s"].as_f64().unwrap_or(0.0);
        for (i, r) in results.iter().enumerate() {
            if !r["scenario"].is_string() || !r["seed"].is_u64() {
                return Err(format!(
                    "{name}: field `results[{i}]`: needs `scenario` and `seed`"
                ));
            }
            let mut r = r.clone();
            normalize(&mut r, None);
            match seen.entry(key(&r)) {
                std::collections::btree_map::Entry::Occupied(_) => duplicates += 1,
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(r);
                }
            }
        }
    }
    Ok(document(
        seen.into_values().collect(),
        json!({
            "wall_s": wall_s,
            "merged_from": docs.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            "duplicates_dropped": duplicates,
        }),
    ))
}

// ---------------------------------------------------------------------------------------------
// One run, as the report reads it.

struct Verdict {
    invariant: String,
    held: bool,
    violations: Vec<String>,
    violation_count: u64,
}

struct Run {
    scenario: String,
    seed: u64,
    outcome: &'static str,
    covers: Vec<String>,
    verdicts: Vec<Verdict>,
    recovery_ms: Option<u64>,
    loss_window_ms: u64,
    lost_commits: u64,
    lost_acknowledged: u64,
    repro: String,
    trace_files: Vec<String>,
    crashed: Option<String>,
    wall_ms: Option<u64>,
    simulated_ms: u64,
    trace_hash: String,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect()
}

impl Run {
    fn from(r: &Value) -> Run {
        let (scenario, seed) = key(r);
        let loss = r["data_loss"].as_array().cloned().unwrap_or_default();
        let sum = |f: &str| loss.iter().filter_map(|l| l[f].as_u64()).sum();
        Run {
            repro: r["repro"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("cargo xtask sim repro {scenario} --seed {seed}")),
            scenario,
            seed,
            outcome: outcome(r),
            covers: strings(&r["covers"]),
            verdicts: r["verdicts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| Verdict {
                    invariant: v["invariant"].as_str().unwrap_or("?").to_string(),
                    held: v["held"] == true,
                    violations: strings(&v["violations"]),
                    violation_count: v["violation_count"].as_u64().unwrap_or(0),
                })
                .collect(),
            recovery_ms: r["recovery_ms"].as_u64(),
            loss_window_ms: data_loss_window_ms(r),
            lost_commits: sum("lost_commits"),
            lost_acknowledged: sum("lost_acknowledged"),
            trace_files: strings(&r["trace_files"]),
            crashed: r
                .get("crashed")
                .filter(|c| !c.is_null())
                .map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_string)),
            wall_ms: r["wall_ms"].as_u64(),
            simulated_ms: r["simulated_ms"].as_u64().unwrap_or(0),
            trace_hash: r["trace_hash"].as_str().unwrap_or("").to_string(),
        }
    }

    fn violated(&self) -> Vec<&Verdict> {
        self.verdicts.iter().filter(|v| !v.held).collect()
    }
}

fn runs(doc: &Value) -> Vec<Run> {
    let mut v: Vec<Run> = doc["results"]
        .as_array()
        .into_iter()
        .flatten()
        .map(Run::from)
        .collect();
    v.sort_by(|a, b| (&a.scenario, a.seed).cmp(&(&b.scenario, b.seed)));
    v
}

// ---------------------------------------------------------------------------------------------
// JUnit XML.

/// Escape text for XML content and attribute values; characters XML 1.0 cannot carry (control
/// characters such as the ESC of terminal colours) become U+FFFD.
pub fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            '\n' => o.push_str("&#10;"),
            '\r' => o.push_str("&#13;"),
            '\t' => o.push_str("&#9;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => o.push('\u{FFFD}'),
            c => o.push(c),
        }
    }
    o
}

/// Text content: like [`xml_escape`] but keeps line breaks readable.
fn xml_text(s: &str) -> String {
    xml_escape(s)
        .replace("&#10;", "\n")
        .replace("&#9;", "\t")
        .replace("&#13;", "")
}

fn secs(ms: u64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

/// What a failing run says about itself: each violated invariant with its first violations,
/// the repro command and the trace files.
fn failure_text(r: &Run, max_violations: usize) -> String {
    let mut t = String::new();
    if let Some(c) = &r.crashed {
        let _ = writeln!(t, "the run crashed: {c}");
    }
    for v in r.violated() {
        let _ = writeln!(
            t,
            "{} violated ({} violation{}):",
            v.invariant,
            v.violation_count,
            if v.violation_count == 1 { "" } else { "s" }
        );
        for m in v.violations.iter().take(max_violations) {
            let _ = writeln!(t, "  - {m}");
        }
        if v.violation_count as usize > max_violations.min(v.violations.len()) {
            let shown = max_violations.min(v.violations.len());
            let _ = writeln!(t, "  … and {} more", v.violation_count as usize - shown);
        }
    }
    let _ = writeln!(t, "reproduce: {}", r.repro);
    for f in &r.trace_files {
        let _ = writeln!(t, "trace: {f}");
    }
    t
}

/// `junit.xml`: one `<testsuite>` per scenario, one `<testcase classname="<scenario>"
/// name="seed <n>">` per run; a violated invariant is a `<failure>` (message: the violated
/// invariants; text: their first violations, the repro command, the trace files), a crashed run
/// an `<error>`.
pub fn junit(doc: &Value) -> String {
    let runs = runs(doc);
    let mut by_scenario: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
    for r in &runs {
        by_scenario.entry(&r.scenario).or_default().push(r);
    }
    let count = |rs: &[&Run], o: &str| rs.iter().filter(|r| r.outcome == o).count();
    let time = |rs: &[&Run]| secs(rs.iter().filter_map(|r| r.wall_ms).sum());
    let all: Vec<&Run> = runs.iter().collect();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"dalp-sim\" tests=\"{}\" failures=\"{}\" errors=\"{}\" time=\"{}\">",
        all.len(),
        count(&all, "fail"),
        count(&all, "crash"),
        time(&all)
    );
    for (scenario, rs) in &by_scenario {
        let _ = writeln!(
            x,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"0\" time=\"{}\">",
            xml_escape(scenario),
            rs.len(),
            count(rs, "fail"),
            count(rs, "crash"),
            time(rs)
        );
        if let Some(r) = rs.first() {
            let _ = writeln!(
                x,
                "    <properties><property name=\"covers\" value=\"{}\"/></properties>",
                xml_escape(&r.covers.join(", "))
            );
        }
        for r in rs {
            let _ = write!(
                x,
                "    <testcase classname=\"{}\" name=\"seed {}\" time=\"{}\">",
                xml_escape(&r.scenario),
                r.seed,
                secs(r.wall_ms.unwrap_or(0))
            );
            match r.outcome {
                "pass" => {}
                "crash" => {
                    let _ = write!(
                        x,
                        "\n      <error type=\"crash\" message=\"{}\">{}</error>\n    ",
                        xml_escape(&format!("the run crashed; reproduce: {}", r.repro)),
                        xml_text(&failure_text(r, 5))
                    );
                }
                _ => {
                    let names: Vec<&str> =
                        r.violated().iter().map(|v| v.invariant.as_str()).collect();
                    let _ = write!(
                        x,
                        "\n      <failure type=\"invariant\" message=\"{}\">{}</failure>\n    ",
                        xml_escape(&format!(
                            "violated: {}; reproduce: {}",
                            names.join(", "),
                            r.repro
                        )),
                        xml_text(&failure_text(r, 5))
                    );
                }
            }
            if !r.trace_hash.is_empty() {
                let _ = write!(
                    x,
                    "<system-out>trace-hash: {} simulated: {} s</system-out>",
                    xml_escape(&r.trace_hash),
                    secs(r.simulated_ms)
                );
            }
            x.push_str("</testcase>\n");
        }
        x.push_str("  </testsuite>\n");
    }
    x.push_str("</testsuites>\n");
    x
}

// ---------------------------------------------------------------------------------------------
// The audit report: one content model, rendered as Markdown and as HTML.

enum Inline {
    Text(String),
    Code(String),
    Strong(String),
}

enum Block {
    Heading(u8, String),
    Para(Vec<Inline>),
    Table(Vec<String>, Vec<Vec<Vec<Inline>>>),
    List(Vec<Vec<Inline>>),
    Pre(String),
}

use Inline::{Code, Strong, Text};

fn t(s: impl Into<String>) -> Inline {
    Text(s.into())
}

/// One scenario's row: its runs summarised.
struct Row {
    scenario: String,
    seeds: Vec<u64>,
    passed: usize,
    failed: usize,
    crashed: usize,
    held: usize,
    checked: usize,
    violated: Vec<String>,
    recovery_ms: Vec<u64>,
    unrecovered: usize,
    loss_window_ms: u64,
    lost_commits: u64,
    lost_acknowledged: u64,
}

fn row(scenario: &str, rs: &[&Run]) -> Row {
    let mut checked = BTreeSet::new();
    let mut violated = BTreeSet::new();
    for r in rs {
        for v in &r.verdicts {
            checked.insert(v.invariant.clone());
            if !v.held {
                violated.insert(v.invariant.clone());
            }
        }
    }
    let mut recovery_ms: Vec<u64> = rs.iter().filter_map(|r| r.recovery_ms).collect();
    recovery_ms.sort_unstable();
    Row {
        scenario: scenario.to_string(),
        seeds: rs.iter().map(|r| r.seed).collect(),
        passed: rs.iter().filter(|r| r.outcome == "pass").count(),
        failed: rs.iter().filter(|r| r.outcome == "fail").count(),
        crashed: rs.iter().filter(|r| r.outcome == "crash").count(),
        held: checked.len() - violated.len(),
        checked: checked.len(),
        violated: violated.into_iter().collect(),
        unrecovered: rs
            .iter()
            .filter(|r| r.recovery_ms.is_none() && r.crashed.is_none())
            .count(),
        recovery_ms,
        loss_window_ms: rs.iter().map(|r| r.loss_window_ms).max().unwrap_or(0),
        lost_commits: rs.iter().map(|r| r.lost_commits).sum(),
        lost_acknowledged: rs.iter().map(|r| r.lost_acknowledged).sum(),
    }
}

/// (min, median, max) of sorted values; the median of an even count is the mean of the middle
/// two.
fn min_median_max(sorted: &[u64]) -> Option<(u64, f64, u64)> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let median = if n % 2 == 1 {
        sorted[n / 2] as f64
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) as f64 / 2.0
    };
    Some((sorted[0], median, sorted[n - 1]))
}

/// Seeds as ranges: `1–3, 7`.
fn seed_ranges(seeds: &[u64]) -> String {
    let mut s: Vec<u64> = seeds.to_vec();
    s.sort_unstable();
    s.dedup();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let mut j = i;
        while j + 1 < s.len() && s[j + 1] == s[j] + 1 {
            j += 1;
        }
        out.push(if j == i {
            s[i].to_string()
        } else {
            format!("{}–{}", s[i], s[j])
        });
        i = j + 1;
    }
    out.join(", ")
}

const ROW_HEAD: [&str; 7] = [
    "scenario",
    "seeds run",
    "passed / failed",
    "invariants held / checked",
    "recovery min / median / max (sim s)",
    "max data-loss window (sim s)",
    "lost commits (acknowledged)",
];

fn row_cells(r: &Row) -> Vec<Vec<Inline>> {
    let fails = if r.crashed > 0 {
        format!(
            "{} / {} ({} crashed)",
            r.passed,
            r.failed + r.crashed,
            r.crashed
        )
    } else {
        format!("{} / {}", r.passed, r.failed)
    };
    let invariants = if r.violated.is_empty() {
        vec![t(format!("{} / {}", r.held, r.checked))]
    } else {
        vec![
            Strong(format!("{} / {}", r.held, r.checked)),
            t(format!(" (violated: {})", r.violated.join(", "))),
        ]
    };
    let recovery = match min_median_max(&r.recovery_ms) {
        Some((lo, med, hi)) => format!(
            "{:.2} / {:.2} / {:.2}",
            lo as f64 / 1000.0,
            med / 1000.0,
            hi as f64 / 1000.0
        ),
        None => "—".into(),
    };
    let recovery = if r.unrecovered > 0 {
        format!("{recovery} ({} run(s) did not recover)", r.unrecovered)
    } else {
        recovery
    };
    vec![
        vec![Code(r.scenario.clone())],
        vec![t(format!("{} ({})", r.seeds.len(), seed_ranges(&r.seeds)))],
        if r.failed + r.crashed > 0 {
            vec![Strong(fails)]
        } else {
            vec![t(fails)]
        },
        invariants,
        vec![t(recovery)],
        vec![t(format!("{:.2}", r.loss_window_ms as f64 / 1000.0))],
        vec![t(format!("{} ({})", r.lost_commits, r.lost_acknowledged))],
    ]
}

fn blocks(doc: &Value) -> Vec<Block> {
    let runs = runs(doc);
    let mut by_scenario: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
    for r in &runs {
        by_scenario.entry(&r.scenario).or_default().push(r);
    }
    // Catalog ids in DESIGN.md §4 order, then any id the catalog does not know.
    let mut ids: Vec<String> = CATALOG.iter().map(|s| s.to_string()).collect();
    let mut by_id: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (s, rs) in &by_scenario {
        let covers: BTreeSet<&String> = rs.iter().flat_map(|r| &r.covers).collect();
        for id in covers {
            if !ids.contains(id) {
                ids.push(id.clone());
            }
            by_id.entry(id.clone()).or_default().push(s);
        }
    }
    let count = |o: &str| runs.iter().filter(|r| r.outcome == o).count();
    let (passed, failed, crashed) = (count("pass"), count("fail"), count("crash"));
    let covered = ids.iter().filter(|id| by_id.contains_key(*id)).count();
    let simulated: u64 = runs.iter().map(|r| r.simulated_ms).sum();

    let mut b = vec![Block::Heading(1, "dalp-sim audit report".into())];
    b.push(Block::Para(vec![
        Strong(if failed + crashed == 0 && !runs.is_empty() {
            "PASS".into()
        } else if runs.is_empty() {
            "NO RUNS".into()
        } else {
            "FAIL".into()
        }),
        t(format!(
            ": {} runs of {} scenarios — {passed} passed, {failed} failed, {crashed} crashed; \
             {covered} of {} catalog ids covered; {:.1} simulated s.",
            runs.len(),
            by_scenario.len(),
            ids.len(),
            simulated as f64 / 1000.0
        )),
    ]));
    let mut provenance = vec![t("Results schema "), Code(SCHEMA.into())];
    let merged = strings(&doc["summary"]["merged_from"]);
    if !merged.is_empty() {
        provenance.push(t(format!("; merged from {} file(s): ", merged.len())));
        for (i, m) in merged.iter().enumerate() {
            if i > 0 {
                provenance.push(t(", "));
            }
            provenance.push(Code(m.clone()));
        }
    }
    if let Some(s) = doc["summary"]["shard"].as_str() {
        provenance.push(t(format!("; shard {s}")));
    }
    provenance.push(t(
        ". Times are simulated: recovery is, over every fault, the time from the fault being \
         lifted to the completion of the last request in flight across it (and at least from the \
         heal instant to the last completion); the data-loss window is the span of commits lost \
         by a database failover.",
    ));
    b.push(Block::Para(provenance));

    b.push(Block::Heading(2, "Catalog coverage".into()));
    let overview: Vec<Vec<Vec<Inline>>> = ids
        .iter()
        .map(|id| {
            let scen = by_id.get(id).cloned().unwrap_or_default();
            let rs: Vec<&Run> = scen.iter().flat_map(|s| by_scenario[s].clone()).collect();
            let bad = rs.iter().filter(|r| r.outcome != "pass").count();
            vec![
                vec![Code(id.clone())],
                vec![t(scen.len().to_string())],
                vec![t(rs.len().to_string())],
                vec![t(bad.to_string())],
                vec![if scen.is_empty() {
                    Strong("not covered".into())
                } else if bad > 0 {
                    Strong("FAIL".into())
                } else {
                    t("pass")
                }],
            ]
        })
        .collect();
    b.push(Block::Table(
        ["catalog id", "scenarios", "runs", "failed", "status"]
            .map(String::from)
            .to_vec(),
        overview,
    ));

    for id in &ids {
        b.push(Block::Heading(2, id.clone()));
        match by_id.get(id) {
            None => b.push(Block::Para(vec![
                Strong("Not covered".into()),
                t(": no scenario in these results lists this catalog id."),
            ])),
            Some(scen) => b.push(Block::Table(
                ROW_HEAD.map(String::from).to_vec(),
                scen.iter()
                    .map(|s| row_cells(&row(s, &by_scenario[s])))
                    .collect(),
            )),
        }
    }

    b.push(Block::Heading(2, "Failures by cause".into()));
    let mut causes: BTreeMap<String, Vec<&Run>> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.outcome != "pass") {
        causes.entry(cause_signature(r)).or_default().push(r);
    }
    if causes.is_empty() {
        b.push(Block::Para(vec![t("None.")]));
    } else {
        b.push(Block::Para(vec![t(
            "Failing runs grouped by the shape of their first violation (numbers, hashes and \
             addresses blanked), so that many seeds of one bug read as one finding.",
        )]));
        let mut rows: Vec<(usize, Vec<Vec<Inline>>)> = causes
            .iter()
            .map(|(sig, rs)| {
                let scenarios: BTreeSet<&str> = rs.iter().map(|r| r.scenario.as_str()).collect();
                let seeds = scenarios
                    .iter()
                    .map(|s| {
                        let seeds: Vec<u64> = rs
                            .iter()
                            .filter(|r| r.scenario == *s)
                            .map(|r| r.seed)
                            .collect();
                        format!("{s} {}", seed_ranges(&seeds))
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                (
                    rs.len(),
                    vec![
                        vec![t(sig.clone())],
                        vec![t(rs.len().to_string())],
                        vec![t(seeds)],
                        vec![Code(rs[0].repro.clone())],
                    ],
                )
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.0));
        b.push(Block::Table(
            ["cause", "runs", "scenarios and seeds", "reproduce one"]
                .map(String::from)
                .to_vec(),
            rows.into_iter().map(|(_, r)| r).collect(),
        ));
    }

    b.push(Block::Heading(2, "Failing seeds".into()));
    let failing: Vec<&Run> = runs.iter().filter(|r| r.outcome != "pass").collect();
    if failing.is_empty() {
        b.push(Block::Para(vec![t(
            "None: every invariant held in every run.",
        )]));
    }
    for r in failing {
        b.push(Block::Heading(
            3,
            format!(
                "{} seed {} — {}",
                r.scenario,
                r.seed,
                r.outcome.to_uppercase()
            ),
        ));
        let mut items: Vec<Vec<Inline>> = Vec::new();
        if let Some(c) = &r.crashed {
            items.push(vec![
                Strong("crashed".into()),
                t(": the run produced no result"),
            ]);
            b.push(Block::List(std::mem::take(&mut items)));
            b.push(Block::Pre(c.clone()));
        }
        for v in r.violated() {
            let mut item = vec![
                Code(v.invariant.clone()),
                t(format!(
                    " violated ({} violation{})",
                    v.violation_count,
                    if v.violation_count == 1 { "" } else { "s" }
                )),
            ];
            for (i, m) in v.violations.iter().take(5).enumerate() {
                item.push(t(if i == 0 { ": " } else { "; " }));
                item.push(t(m.clone()));
            }
            if v.violation_count > v.violations.len().min(5) as u64 {
                item.push(t(format!(
                    "; … and {} more",
                    v.violation_count - v.violations.len().min(5) as u64
                )));
            }
            items.push(item);
        }
        items.push(vec![t("reproduce: "), Code(r.repro.clone())]);
        for f in &r.trace_files {
            items.push(vec![t("trace: "), Code(f.clone())]);
        }
        b.push(Block::List(items));
    }

    b.push(Block::Heading(
        2,
        "Reference scenarios (no catalog id)".into(),
    ));
    let reference: Vec<Vec<Vec<Inline>>> = by_scenario
        .iter()
        .filter(|(_, rs)| rs.iter().all(|r| r.covers.is_empty()))
        .map(|(s, rs)| row_cells(&row(s, rs)))
        .collect();
    if reference.is_empty() {
        b.push(Block::Para(vec![t("None in these results.")]));
    } else {
        b.push(Block::Table(ROW_HEAD.map(String::from).to_vec(), reference));
    }
    b
}

/// What a failing run's cause looks like with its particulars blanked: the crash's panic, or
/// each violated invariant with the shape of its first violation. Runs of one bug share it.
fn cause_signature(r: &Run) -> String {
    let blank = |s: &str| {
        let mut out = String::with_capacity(s.len());
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '0' && chars.peek() == Some(&'x') {
                chars.next();
                while chars.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                    chars.next();
                }
                out.push_str("0x…");
            } else if c.is_ascii_digit() {
                while chars
                    .peek()
                    .is_some_and(|c| c.is_ascii_digit() || *c == '.')
                {
                    chars.next();
                }
                out.push('N');
            } else {
                out.push(c);
            }
        }
        let mut short: String = out.chars().take(160).collect();
        if out.chars().count() > 160 {
            short.push('…');
        }
        short
    };
    if let Some(c) = &r.crashed {
        let first = c
            .lines()
            .find(|l| l.contains("panicked at") || l.contains("crashed"))
            .unwrap_or_else(|| c.lines().next().unwrap_or(""));
        return format!("crash: {}", blank(first));
    }
    let parts: Vec<String> = r
        .violated()
        .iter()
        .map(|v| {
            format!(
                "{}: {}",
                v.invariant,
                blank(v.violations.first().map_or("", String::as_str))
            )
        })
        .collect();
    if parts.is_empty() {
        format!("{} with no violated invariant", r.outcome)
    } else {
        parts.join(" + ")
    }
}

fn md_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\r' => o.push(' '),
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '#' => {
                o.push('\\');
                o.push(c);
            }
            c => o.push(c),
        }
    }
    o
}

/// Inline Markdown; in a table cell a `|` inside a code span must be escaped too.
fn md_inline(parts: &[Inline], in_table: bool) -> String {
    parts
        .iter()
        .map(|p| match p {
            Text(s) => md_escape(s),
            Strong(s) => format!("**{}**", md_escape(s)),
            Code(s) => {
                let s = s.replace(['\n', '\r'], " ");
                let s = if in_table { s.replace('|', "\\|") } else { s };
                if s.contains('`') {
                    format!("`` {s} ``")
                } else {
                    format!("`{s}`")
                }
            }
        })
        .collect()
}

/// `report.md`: the summary, catalog coverage, one section per catalog id (DESIGN.md §4 order)
/// with its scenarios' table or "not covered", every failing seed with its violations and repro
/// command, and the reference scenarios without catalog id.
pub fn markdown(doc: &Value) -> String {
    let mut o = String::new();
    for b in blocks(doc) {
        match b {
            Block::Heading(l, s) => {
                let _ = writeln!(o, "{} {}\n", "#".repeat(l as usize), md_escape(&s));
            }
            Block::Para(p) => {
                let _ = writeln!(o, "{}\n", md_inline(&p, false));
            }
            Block::Table(head, rows) => {
                let _ = writeln!(
                    o,
                    "| {} |",
                    head.iter()
                        .map(|h| md_escape(h))
                        .collect::<Vec<_>>()
                        .join(" | ")
                );
                let _ = writeln!(o, "|{}", "---|".repeat(head.len()));
                for r in rows {
                    let cells: Vec<String> = r.iter().map(|c| md_inline(c, true)).collect();
                    let _ = writeln!(o, "| {} |", cells.join(" | "));
                }
                o.push('\n');
            }
            Block::List(items) => {
                for i in items {
                    let _ = writeln!(o, "- {}", md_inline(&i, false));
                }
                o.push('\n');
            }
            Block::Pre(s) => {
                let fence = if s.contains("```") { "~~~~" } else { "```" };
                // Terminal colours and other control characters do not belong in a report.
                let s: String = s
                    .trim_end()
                    .chars()
                    .map(|c| {
                        if c.is_control() && !matches!(c, '\n' | '\t') {
                            '\u{FFFD}'
                        } else {
                            c
                        }
                    })
                    .collect();
                let _ = writeln!(o, "{fence}text\n{s}\n{fence}\n");
            }
        }
    }
    o.truncate(o.trim_end().len());
    o.push('\n');
    o
}

/// Escape text for HTML content and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t') => o.push('\u{FFFD}'),
            c => o.push(c),
        }
    }
    o
}

fn html_inline(parts: &[Inline]) -> String {
    parts
        .iter()
        .map(|p| match p {
            Text(s) => html_escape(s),
            Strong(s) => format!("<strong>{}</strong>", html_escape(s)),
            Code(s) => format!("<code>{}</code>", html_escape(s)),
        })
        .collect()
}

const CSS: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:72em;padding:0 1em;color:#1b1b1b}\
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}\
th{background:#f3f3f3}code,pre{font-family:ui-monospace,monospace;font-size:.92em}pre{background:#f6f6f6;padding:.6em;overflow:auto}\
strong{color:#a00}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}";

/// `report.html`: the content of [`markdown`] as one standalone page (inline CSS, no external
/// assets, everything escaped).
pub fn html(doc: &Value) -> String {
    let mut o = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>dalp-sim audit report</title>\n",
    );
    let _ = writeln!(o, "<style>{CSS}</style>\n</head>\n<body>");
    for b in blocks(doc) {
        match b {
            Block::Heading(l, s) => {
                let _ = writeln!(o, "<h{l}>{}</h{l}>", html_escape(&s));
            }
            Block::Para(p) => {
                let _ = writeln!(o, "<p>{}</p>", html_inline(&p));
            }
            Block::Table(head, rows) => {
                o.push_str("<table>\n<thead><tr>");
                for h in head {
                    let _ = write!(o, "<th>{}</th>", html_escape(&h));
                }
                o.push_str("</tr></thead>\n<tbody>\n");
                for r in rows {
                    o.push_str("<tr>");
                    for c in r {
                        let _ = write!(o, "<td>{}</td>", html_inline(&c));
                    }
                    o.push_str("</tr>\n");
                }
                o.push_str("</tbody>\n</table>\n");
            }
            Block::List(items) => {
                o.push_str("<ul>\n");
                for i in items {
                    let _ = writeln!(o, "<li>{}</li>", html_inline(&i));
                }
                o.push_str("</ul>\n");
            }
            Block::Pre(s) => {
                let _ = writeln!(o, "<pre>{}</pre>", html_escape(s.trim_end()));
            }
        }
    }
    o.push_str("</body>\n</html>\n");
    o
}

/// Write `results.json`, `junit.xml`, `report.md` and `report.html` into `dir`, each atomically
/// (`write_atomic`: a reader sees the old file or the new one, never half of one).
pub fn write_outputs(dir: &Path, doc: &Value) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let files = [
        (
            "results.json",
            serde_json::to_string_pretty(doc).expect("json"),
        ),
        ("junit.xml", junit(doc)),
        ("report.md", markdown(doc)),
        ("report.html", html(doc)),
    ];
    let mut out = Vec::new();
    for (name, text) in files {
        let p = dir.join(name);
        crate::trace::write_atomic(&p, text.as_bytes())
            .map_err(|e| format!("{}: {e}", p.display()))?;
        out.push(p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(inv: &str, violations: &[&str]) -> Value {
        json!({
            "invariant": inv, "held": violations.is_empty(), "checked": "n things",
            "violations": violations, "violation_count": violations.len(),
        })
    }

    fn run(scenario: &str, seed: u64, covers: &[&str], recovery_ms: Option<u64>) -> Value {
        let mut r = json!({
            "scenario": scenario, "seed": seed, "passed": true,
            "verdicts": [verdict("durability", &[]), verdict("exactly_once", &[])],
            "trace_hash": format!("{seed:064x}"), "recovery_ms": recovery_ms,
            "data_loss": [], "simulated_ms": 100_000, "wall_ms": 1500,
            "repro": format!("cargo xtask sim repro scenarios/{scenario}.toml --seed {seed}"),
        });
        normalize(
            &mut r,
            Some(&covers.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        );
        r
    }

    fn failing(scenario: &str, seed: u64, covers: &[&str]) -> Value {
        let mut r = run(scenario, seed, covers, None);
        r["passed"] = json!(false);
        r["verdicts"][0] = verdict(
            "durability",
            &["wf <7> & \"key\" never finished", "another"],
        );
        normalize(&mut r, None);
        r
    }

    #[test]
    fn xml_escaping_covers_markup_quotes_and_control_characters() {
        assert_eq!(
            xml_escape("a<b>&\"c\"'d'"),
            "a&lt;b&gt;&amp;&quot;c&quot;&apos;d&apos;"
        );
        assert_eq!(xml_escape("x\u{1b}[31my\n"), "x\u{FFFD}[31my&#10;");
        assert_eq!(
            html_escape("<script>&'\""),
            "&lt;script&gt;&amp;&#39;&quot;"
        );
        // A hostile scenario name cannot break the document.
        let doc = document(vec![run("a\"<b>", 1, &[], Some(1))], json!({}));
        let x = junit(&doc);
        assert!(x.contains("classname=\"a&quot;&lt;b&gt;\""), "{x}");
        assert!(!html(&doc).contains("<b>"));
    }

    #[test]
    fn outcome_and_loss_window_are_derived() {
        let mut r = run("s", 1, &[], Some(5));
        assert_eq!(r["outcome"], "pass");
        assert_eq!(r["data_loss_window_ms"], 0);
        r["data_loss"] = json!([{"window_ms": 300}, {"window_ms": 1200}, {"window_ms": 40}]);
        r["passed"] = json!(false);
        normalize(&mut r, None);
        assert_eq!(r["outcome"], "fail");
        assert_eq!(r["data_loss_window_ms"], 1200);
        assert_eq!(r["covers"], json!([]));
        let crashed = json!({"scenario": "s", "seed": 2, "passed": false, "crashed": "boom"});
        assert_eq!(outcome(&crashed), "crash");
    }

    #[test]
    fn a_failing_run_carries_its_violations_and_repro_command_in_junit() {
        let doc = document(
            vec![
                run("engine-crash", 1, &["FM-ENGINE-CRASH"], Some(2000)),
                failing("engine-crash", 2, &["FM-ENGINE-CRASH"]),
                json!({"scenario": "engine-crash", "seed": 3, "passed": false,
                       "crashed": "child exited\n\u{1b}[31mpanic\u{1b}[0m",
                       "repro": "cargo xtask sim repro scenarios/engine-crash.toml --seed 3"}),
            ],
            json!({}),
        );
        let x = junit(&doc);
        assert!(x.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"dalp-sim\" tests=\"3\" failures=\"1\" errors=\"1\""), "{x}");
        assert!(
            x.contains("<testsuite name=\"engine-crash\" tests=\"3\" failures=\"1\" errors=\"1\"")
        );
        assert_eq!(x.matches("<testcase ").count(), 3);
        assert!(x.contains("<testcase classname=\"engine-crash\" name=\"seed 2\""));
        let failure = x
            .split("name=\"seed 2\"")
            .nth(1)
            .unwrap()
            .split("</testcase>")
            .next()
            .unwrap();
        assert!(failure.contains("<failure type=\"invariant\" message=\"violated: durability; reproduce: cargo xtask sim repro scenarios/engine-crash.toml --seed 2\""), "{failure}");
        assert!(failure.contains("wf &lt;7&gt; &amp; &quot;key&quot; never finished"));
        assert!(failure
            .contains("reproduce: cargo xtask sim repro scenarios/engine-crash.toml --seed 2\n"));
        assert!(x.contains("<error type=\"crash\""));
        assert!(!x.contains('\u{1b}'), "control characters are not XML");
        let md = markdown(&doc);
        assert!(md.contains("### engine-crash seed 3 — CRASH"), "{md}");
        assert!(
            md.contains("```text\nchild exited\n\u{FFFD}[31mpanic"),
            "{md}"
        );
        assert!(md
            .contains("- reproduce: `cargo xtask sim repro scenarios/engine-crash.toml --seed 3`"));
    }

    #[test]
    fn the_catalog_table_computes_min_median_max_and_lists_uncovered_ids() {
        let doc = document(
            vec![
                run("engine-crash", 1, &["FM-ENGINE-CRASH"], Some(4000)),
                run("engine-crash", 2, &["FM-ENGINE-CRASH"], Some(1000)),
                run("engine-crash", 3, &["FM-ENGINE-CRASH"], Some(2500)),
                run("engine-crash", 4, &["FM-ENGINE-CRASH"], Some(3000)),
                failing("rpc-node-down", 9, &["FM-RPC-NODE-DOWN"]),
                run("steady-state", 1, &[], Some(10)),
            ],
            json!({}),
        );
        let md = markdown(&doc);
        let section = md
            .split("## FM-ENGINE-CRASH\n")
            .nth(1)
            .unwrap()
            .split("\n## ")
            .next()
            .unwrap();
        assert!(
            section.contains(
                "| `engine-crash` | 4 (1–4) | 4 / 0 | 2 / 2 | 1.00 / 2.75 / 4.00 | 0.00 | 0 (0) |"
            ),
            "{section}"
        );
        assert_eq!(min_median_max(&[5]), Some((5, 5.0, 5)));
        assert_eq!(min_median_max(&[1, 2, 9]), Some((1, 2.0, 9)));
        assert_eq!(min_median_max(&[]), None);
        // Every catalog id has a section, in DESIGN.md order; the uncovered say so.
        let mut last = 0;
        for id in CATALOG {
            let at = md
                .find(&format!("## {id}\n"))
                .unwrap_or_else(|| panic!("{id}"));
            assert!(at > last, "{id} out of order");
            last = at;
        }
        let transient = md.split("## FM-STEP-TRANSIENT\n").nth(1).unwrap();
        assert!(transient.trim_start().starts_with("**Not covered**"));
        assert!(md.contains("| `FM-STEP-TRANSIENT` | 0 | 0 | 0 | **not covered** |"));
        // The failing seed, with its violations and repro command.
        assert!(md.contains("### rpc-node-down seed 9 — FAIL"));
        assert!(md.contains(
            "- reproduce: `cargo xtask sim repro scenarios/rpc-node-down.toml --seed 9`"
        ));
        assert!(
            md.contains("wf <7> & \"key\" never finished")
                || md.contains("wf \\<7\\> & \"key\" never finished")
        );
        assert!(md.contains("**FAIL**: 6 runs of 3 scenarios — 5 passed, 1 failed, 0 crashed; 2 of 19 catalog ids covered"), "{md}");
        // The reference scenario.
        let reference = md
            .split("## Reference scenarios (no catalog id)")
            .nth(1)
            .unwrap();
        assert!(reference.contains("`steady-state`"));
        assert!(!reference.contains("`engine-crash`"));
        // The HTML page has the same sections, standalone.
        let h = html(&doc);
        assert!(h.contains("<h2>FM-STEP-TRANSIENT</h2>"));
        assert!(h.contains("<td>1.00 / 2.75 / 4.00</td>"));
        assert!(
            h.contains("<code>cargo xtask sim repro scenarios/rpc-node-down.toml --seed 9</code>")
        );
        assert!(!h.contains("http://") && !h.contains("https://") && !h.contains("<script"));
    }

    #[test]
    fn seeds_print_as_ranges() {
        assert_eq!(seed_ranges(&[3, 1, 2, 7, 9, 10]), "1–3, 7, 9–10");
        assert_eq!(seed_ranges(&[4]), "4");
    }

    #[test]
    fn merging_shards_deduplicates_by_scenario_and_seed() {
        let a = document(
            vec![
                run("engine-crash", 1, &["FM-ENGINE-CRASH"], Some(1)),
                run("rpc-node-down", 1, &["FM-RPC-NODE-DOWN"], Some(1)),
            ],
            json!({"wall_s": 2.0, "shard": "0/2"}),
        );
        let b = document(
            vec![
                failing("engine-crash", 2, &["FM-ENGINE-CRASH"]),
                run("engine-crash", 1, &["FM-ENGINE-CRASH"], Some(1)),
            ],
            json!({"wall_s": 3.0, "shard": "1/2"}),
        );
        // A v1 file (no outcome, covers, loss window) is upgraded.
        let v1 = json!({"schema": "dalp-sim/results/v1", "summary": {"wall_s": 1.0},
            "results": [{"scenario": "steady-state", "seed": 5, "passed": true, "verdicts": []}]});
        let m = merge(&[("a".into(), a), ("b".into(), b), ("c".into(), v1)]).unwrap();
        assert_eq!(m["schema"], SCHEMA);
        assert_eq!(m["summary"]["runs"], 4);
        assert_eq!(m["summary"]["passed"], 3);
        assert_eq!(m["summary"]["failed"], 1);
        assert_eq!(m["summary"]["duplicates_dropped"], 1);
        assert_eq!(m["summary"]["wall_s"], 6.0);
        assert_eq!(m["summary"]["merged_from"], json!(["a", "b", "c"]));
        let keys: Vec<(String, u64)> = m["results"].as_array().unwrap().iter().map(key).collect();
        assert_eq!(
            keys,
            vec![
                ("engine-crash".into(), 1),
                ("engine-crash".into(), 2),
                ("rpc-node-down".into(), 1),
                ("steady-state".into(), 5)
            ]
        );
        assert_eq!(m["results"][3]["outcome"], "pass");
        assert_eq!(m["results"][3]["covers"], json!([]));
        assert!(merge(&[("x".into(), json!({"schema": "other"}))]).is_err());
        assert!(merge(&[(
            "y".into(),
            json!({"schema": SCHEMA, "results": [{"seed": 1}]})
        )])
        .unwrap_err()
        .contains("results[0]"));
    }

    #[test]
    fn failures_are_grouped_by_the_shape_of_their_cause() {
        let mut a = failing("engine-crash", 4, &["FM-ENGINE-CRASH"]);
        a["verdicts"][0] = verdict(
            "durability",
            &["op 12 (mint key mint-4-12) accepted at 9.120 s is still `running`"],
        );
        let mut b = failing("engine-crash", 6, &["FM-ENGINE-CRASH"]);
        b["verdicts"][0] = verdict(
            "durability",
            &["op 7 (mint key mint-6-7) accepted at 3.002 s is still `running`"],
        );
        let mut c = failing("db-read-only", 11, &["FM-DB-READ-ONLY"]);
        c["crashed"] = json!("the simulator crashed (exit status: 101): panicked at sim/src/world/db_node.rs:435:13: replica diverged applying lsn 152");
        normalize(&mut c, None);
        let md = markdown(&document(vec![a, b, c], json!({})));
        let section = md
            .split("## Failures by cause\n")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("the section");
        // The two durability seeds are one finding; the crash another.
        assert!(
            section.contains("durability: op N (mint key mint-N-N) accepted at N s is still")
                && section.contains("| 2 | engine-crash 4, 6 |"),
            "{section}"
        );
        assert!(
            section.contains("crash: the simulator crashed (exit status: N): panicked at")
                && section.contains("replica diverged applying lsn N | 1 | db-read-only 11 |"),
            "{section}"
        );
    }
}
