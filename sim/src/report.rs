//! The outputs of `dalp-sim run` and `dalp-sim report`, as pure functions of the results
//! document ([`ResultsDoc`]: `results.json`, schema [`SCHEMA`], documented in
//! `reports/README.md`): `junit.xml` for CI, and the audit report as Markdown (`report.md`) and
//! standalone HTML (`report.html`) with the same content. Only [`write_outputs`] touches the
//! file system.
//!
//! The report is a function of the results alone (no clock, no host name), so the same results
//! give byte-identical reports.

use crate::outcome::{Outcome, RunRecord};
use crate::provenance;

mod audit;
mod svg;
use crate::scenario::CATALOG;
use crate::verdict::Verdict;
use serde::de::{Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The schema name written into `results.json`. v2 added `outcome`, `covers` and
/// `data_loss_window_ms` to each result (v1 files are still read: see [`parse`]).
pub const SCHEMA: &str = "dalp-sim/results/v2";

/// The first schema, whose results carry no catalog ids.
pub const SCHEMA_V1: &str = "dalp-sim/results/v1";

/// `results.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ResultsDoc {
    pub schema: String,
    #[serde(default)]
    pub summary: Summary,
    /// Sorted by (scenario, seed).
    #[serde(deserialize_with = "indexed")]
    pub results: Vec<RunRecord>,
}

/// `summary`: counts computed from the results ([`document`]), and where they came from.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    #[serde(default)]
    pub runs: usize,
    #[serde(default)]
    pub passed: usize,
    /// Including the crashed.
    #[serde(default)]
    pub failed: usize,
    #[serde(default)]
    pub crashed: usize,
    /// Distinct scenarios.
    #[serde(default)]
    pub scenarios: usize,
    #[serde(default)]
    pub simulated_s: f64,
    #[serde(flatten)]
    pub provenance: Provenance,
}

/// What the summary says of the run that produced the results, beside the counts.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Provenance {
    /// Wall seconds of the run; summed when merged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_s: Option<f64>,
    /// `I/N`, a sharded run only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// The input files (`dalp-sim report` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_from: Option<Vec<String>>,
    /// `dalp-sim report` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicates_dropped: Option<usize>,
    /// The tree and build that ran (`provenance::Build`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<provenance::Build>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<provenance::Machine>,
    /// Wall-clock start and end of the run (UTC, RFC 3339); merged: the earliest and latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// The suites, scenarios or files `run` was given, and its `--seeds` (absent: the suites').
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeds: Option<String>,
    /// `sim` or `real`, and the requested provider (each result names the one used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Every scenario file run, with its SHA-256 and its recovery and data-loss targets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scenario_files: Vec<provenance::ScenarioFile>,
    /// Checker sensitivity: the latest recorded planted-bug results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planted: Option<provenance::Planted>,
}

/// `results`, each element's error naming its index.
fn indexed<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RunRecord>, D::Error> {
    struct Records;
    impl<'de> Visitor<'de> for Records {
        type Value = Vec<RunRecord>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an array of results")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(r) = seq
                .next_element()
                .map_err(|e| A::Error::custom(format!("results[{}]: {e}", out.len())))?
            {
                out.push(r);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Records)
}

/// The results document: results sorted by (scenario, seed), a summary computed from them, and
/// its `provenance`.
pub fn document(mut results: Vec<RunRecord>, provenance: Provenance) -> ResultsDoc {
    results.sort_by_key(RunRecord::key);
    let count = |o: Outcome| results.iter().filter(|r| r.outcome == o).count();
    let (passed, failed, crashed) = (
        count(Outcome::Pass),
        count(Outcome::Fail),
        count(Outcome::Crash),
    );
    let scenarios: BTreeSet<&str> = results.iter().map(|r| r.output.scenario()).collect();
    let summary = Summary {
        runs: results.len(),
        passed,
        failed: failed + crashed,
        crashed,
        scenarios: scenarios.len(),
        simulated_s: results
            .iter()
            .filter_map(|r| r.output.finished())
            .map(|f| f.result.simulated_ms)
            .sum::<u64>() as f64
            / 1000.0,
        provenance,
    };
    ResultsDoc {
        schema: SCHEMA.into(),
        summary,
        results,
    }
}

/// A results document read from `text` (`name` for the messages). Rejects documents that are
/// not dalp-sim results; a v1 document's results get their derived fields (`outcome`,
/// `data_loss_window_ms`; `covers` are the caller's to fill from the scenario files).
pub fn parse(name: &str, text: &str) -> Result<ResultsDoc, String> {
    #[derive(Deserialize)]
    struct Head {
        schema: Option<String>,
    }
    let schema = match serde_json::from_str::<Head>(text) {
        Ok(h) => h.schema,
        Err(e) if e.is_syntax() || e.is_eof() => return Err(format!("{name}: not JSON: {e}")),
        Err(_) => None,
    };
    if !schema
        .as_deref()
        .is_some_and(|s| s.starts_with("dalp-sim/results/"))
    {
        let schema = schema.map_or_else(|| "none".into(), |s| format!("{s:?}"));
        return Err(format!(
            "{name}: not a dalp-sim results file (schema {schema})"
        ));
    }
    let mut doc: ResultsDoc = serde_json::from_str(text).map_err(|e| format!("{name}: {e}"))?;
    doc.results.iter_mut().for_each(RunRecord::derive);
    Ok(doc)
}

/// Merge results documents (e.g. the shards of one run) into one: de-duplicated by (scenario,
/// seed) (the first document that has a run wins), `wall_s` summed, and `merged_from` naming
/// the inputs.
pub fn merge(docs: Vec<(String, ResultsDoc)>) -> ResultsDoc {
    let mut seen: BTreeMap<(String, u64), RunRecord> = BTreeMap::new();
    let mut duplicates = 0usize;
    let mut wall_s = 0.0;
    let mut names = Vec::new();
    let mut prov = Provenance::default();
    for (name, doc) in docs {
        names.push(name);
        wall_s += doc.summary.provenance.wall_s.unwrap_or(0.0);
        prov.absorb(doc.summary.provenance.clone());
        for r in doc.results {
            match seen.entry(r.key()) {
                std::collections::btree_map::Entry::Occupied(_) => duplicates += 1,
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(r);
                }
            }
        }
    }
    document(
        seen.into_values().collect(),
        Provenance {
            wall_s: Some(wall_s),
            shard: None,
            merged_from: Some(names),
            duplicates_dropped: Some(duplicates),
            ..prov
        },
    )
}

impl Provenance {
    /// Fold another input's provenance into a merge's: the first build, machine, seeds and
    /// backend; the earliest start and latest end; every target and scenario file once (the
    /// first input's entry for a path wins); the most recent planted-bug results.
    fn absorb(&mut self, o: Provenance) {
        self.build = self.build.take().or(o.build);
        self.machine = self.machine.take().or(o.machine);
        self.seeds = self.seeds.take().or(o.seeds);
        self.backend = self.backend.take().or(o.backend);
        self.provider = self.provider.take().or(o.provider);
        self.started = [self.started.take(), o.started].into_iter().flatten().min();
        self.ended = [self.ended.take(), o.ended].into_iter().flatten().max();
        for t in o.targets {
            if !self.targets.contains(&t) {
                self.targets.push(t);
            }
        }
        for f in o.scenario_files {
            if !self.scenario_files.iter().any(|g| g.path == f.path) {
                self.scenario_files.push(f);
            }
        }
        self.planted = match (self.planted.take(), o.planted) {
            (Some(a), Some(b)) if b.date > a.date => Some(b),
            (a, b) => a.or(b),
        };
    }
}

// ---------------------------------------------------------------------------------------------
// One run, as the report reads it.

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

impl Run {
    fn from(r: &RunRecord) -> Run {
        let (scenario, seed) = r.key();
        let f = r.output.finished();
        Run {
            repro: r
                .repro
                .clone()
                .unwrap_or_else(|| format!("cargo xtask sim repro {scenario} --seed {seed}")),
            scenario,
            seed,
            outcome: r.output.outcome().as_str(),
            covers: r.covers.clone(),
            verdicts: f.map(|f| f.result.verdicts.clone()).unwrap_or_default(),
            recovery_ms: f.and_then(|f| f.result.recovery_ms),
            loss_window_ms: r.output.data_loss_window_ms(),
            lost_commits: r.output.losses().filter_map(|l| l.lost_commits).sum(),
            lost_acknowledged: r.output.losses().filter_map(|l| l.lost_acknowledged).sum(),
            trace_files: f.map(|f| f.trace_files.clone()).unwrap_or_default(),
            crashed: r.output.crashed().map(str::to_string),
            wall_ms: f.and_then(|f| f.wall_ms),
            simulated_ms: f.map_or(0, |f| f.result.simulated_ms),
            trace_hash: f.map(|f| f.result.trace_hash.clone()).unwrap_or_default(),
        }
    }

    fn violated(&self) -> Vec<&Verdict> {
        self.verdicts.iter().filter(|v| !v.held).collect()
    }
}

fn runs(doc: &ResultsDoc) -> Vec<Run> {
    let mut v: Vec<Run> = doc.results.iter().map(Run::from).collect();
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
        if v.violation_count > max_violations.min(v.violations.len()) {
            let shown = max_violations.min(v.violations.len());
            let _ = writeln!(t, "  … and {} more", v.violation_count - shown);
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
pub fn junit(doc: &ResultsDoc) -> String {
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
    /// A picture (caption, SVG text): inline in the HTML, named in the Markdown.
    Svg(String, String),
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

fn blocks(doc: &ResultsDoc) -> Vec<Block> {
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
    let merged = doc
        .summary
        .provenance
        .merged_from
        .as_deref()
        .unwrap_or_default();
    if !merged.is_empty() {
        provenance.push(t(format!("; merged from {} file(s): ", merged.len())));
        for (i, m) in merged.iter().enumerate() {
            if i > 0 {
                provenance.push(t(", "));
            }
            provenance.push(Code(m.clone()));
        }
    }
    if let Some(s) = &doc.summary.provenance.shard {
        provenance.push(t(format!("; shard {s}")));
    }
    provenance.push(t(
        ". Times are simulated: recovery is, over every fault, the time from the fault being \
         lifted to the completion of the last request in flight across it (and at least from the \
         heal instant to the last completion); the data-loss window is the span of commits lost \
         by a database failover.",
    ));
    b.push(Block::Para(provenance));
    audit::provenance(doc, &mut b);
    audit::promises(doc, &ids, &by_id, &by_scenario, &mut b);
    audit::sensitivity(doc, &mut b);

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
    audit::timelines(doc, &mut b);
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
            if v.violation_count > v.violations.len().min(5) {
                item.push(t(format!(
                    "; … and {} more",
                    v.violation_count - v.violations.len().min(5)
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
    coverage_blocks(doc, &mut b);
    audit::scenario_files(doc, &mut b);
    b
}

/// The probe coverage matrix: each declared probe and fault point of the engine, the catalog
/// ids (and scenarios) whose runs reached it, and the ones no run reached.
fn coverage_blocks(doc: &ResultsDoc, b: &mut Vec<Block>) {
    b.push(Block::Heading(2, "Engine probe coverage".into()));
    let Some(m) = crate::coverage::Matrix::of(&doc.results) else {
        b.push(Block::Para(vec![t(
            "No run in these results carries coverage (probes exist in the simulation only).",
        )]));
        return;
    };
    let unreached: Vec<&str> = m.unreached().map(|p| p.name).collect();
    let missed = m.must_missed();
    b.push(Block::Para(vec![t(format!(
        "{} runs carry coverage; {} of {} declared probes and fault points were reached; {} must probes missed.",
        m.runs,
        m.probes.len() - unreached.len(),
        m.probes.len(),
        missed.len()
    ))]));
    if !missed.is_empty() {
        b.push(Block::List(
            missed
                .iter()
                .map(|(n, why)| {
                    vec![
                        Strong("must, not reached: ".into()),
                        Code(n.to_string()),
                        t(format!(" — {why}")),
                    ]
                })
                .collect(),
        ));
    }
    let rows = m
        .probes
        .iter()
        .map(|p| {
            let ids = p
                .by_id
                .iter()
                .map(|(id, scenarios)| {
                    format!(
                        "{id} ({})",
                        scenarios.iter().cloned().collect::<Vec<_>>().join(", ")
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            let kind = if p.fault_point {
                format!(
                    "fault point (armed in {} runs, fired {})",
                    p.armed_runs, p.fired
                )
            } else if p.must.is_some() {
                "must".into()
            } else {
                "probe".into()
            };
            vec![
                vec![Code(p.name.to_string())],
                vec![t(kind)],
                vec![t(p.runs.to_string())],
                vec![t(p.hits.to_string())],
                vec![if p.runs == 0 {
                    Strong("not reached".into())
                } else {
                    t(ids)
                }],
            ]
        })
        .collect();
    b.push(Block::Table(
        [
            "probe",
            "kind",
            "runs",
            "hits",
            "catalog ids (scenarios) reaching it",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    ));
    let mut ids: Vec<String> = CATALOG.iter().map(|s| s.to_string()).collect();
    for p in &m.probes {
        for id in p.by_id.keys() {
            if !ids.contains(id) {
                ids.push(id.clone());
            }
        }
    }
    b.push(Block::Svg(
        "engine probe coverage matrix".into(),
        svg::coverage(&m, &ids),
    ));
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
pub fn markdown(doc: &ResultsDoc) -> String {
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
            Block::Svg(caption, _) => {
                let _ = writeln!(o, "*Picture in report.html: {}.*\n", md_escape(&caption));
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
strong{color:#a00}td:first-child code{white-space:nowrap}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}\
figure{margin:.5em 0 1.5em;overflow-x:auto}figcaption{color:#555;font-size:.9em}svg{max-width:none}";

/// `report.html`: the content of [`markdown`] as one standalone page (inline CSS, no external
/// assets, everything escaped).
pub fn html(doc: &ResultsDoc) -> String {
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
            Block::Svg(caption, svg) => {
                let _ = writeln!(
                    o,
                    "<figure>{svg}<figcaption>{}</figcaption></figure>",
                    html_escape(&caption)
                );
            }
        }
    }
    o.push_str("</body>\n</html>\n");
    o
}

/// `results.json`'s text: pretty, every object's keys in sorted order (as a
/// `serde_json::Value` prints them), whatever the order of the types' fields.
pub fn results_json(doc: &ResultsDoc) -> String {
    let canonical = serde_json::to_value(doc).expect("results json");
    serde_json::to_string_pretty(&canonical).expect("json")
}

/// Write `results.json`, `junit.xml`, `report.md` and `report.html` into `dir`, each atomically
/// (`write_atomic`: a reader sees the old file or the new one, never half of one).
pub fn write_outputs(dir: &Path, doc: &ResultsDoc) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let files = [
        ("results.json", results_json(doc)),
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
    use crate::outcome::{Crash, FinishedRun, RunOutput, RunResult};
    use serde_json::{json, Value};

    fn verdict(inv: &str, violations: &[&str]) -> Verdict {
        Verdict::new(
            inv,
            "n things".into(),
            violations.iter().map(|s| s.to_string()).collect(),
        )
    }

    fn repro(scenario: &str, seed: u64) -> Option<String> {
        Some(format!(
            "cargo xtask sim repro scenarios/{scenario}.toml --seed {seed}"
        ))
    }

    fn strings(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    fn run(scenario: &str, seed: u64, covers: &[&str], recovery_ms: Option<u64>) -> RunRecord {
        let mut f = FinishedRun::new(RunResult {
            scenario: scenario.into(),
            seed,
            passed: true,
            verdicts: vec![verdict("durability", &[]), verdict("exactly_once", &[])],
            trace_hash: format!("{seed:064x}"),
            trace_events: 10,
            schedule: Vec::new(),
            recovery_ms,
            data_loss: Vec::new(),
            simulated_ms: 100_000,
            stats: BTreeMap::new(),
            ops: Vec::new(),
            fault_windows: Vec::new(),
            backend: None,
            provider: None,
            not_applicable: Vec::new(),
            engine_logs: BTreeMap::new(),
            coverage: None,
            swarm: None,
        });
        f.wall_ms = Some(1500);
        RunRecord::new(
            RunOutput::Finished(Box::new(f)),
            None,
            repro(scenario, seed),
            strings(covers),
        )
    }

    /// The result of a finished record, to change it (then [`RunRecord::derive`]).
    fn result(r: &mut RunRecord) -> &mut RunResult {
        match &mut r.output {
            RunOutput::Finished(f) => &mut f.result,
            RunOutput::Crashed(_) => panic!("a crash"),
        }
    }

    fn failing(scenario: &str, seed: u64, covers: &[&str]) -> RunRecord {
        let mut r = run(scenario, seed, covers, None);
        result(&mut r).passed = false;
        result(&mut r).verdicts[0] = verdict(
            "durability",
            &["wf <7> & \"key\" never finished", "another"],
        );
        r.derive();
        r
    }

    fn crash(scenario: &str, seed: u64, covers: &[&str], why: &str) -> RunRecord {
        RunRecord::new(
            RunOutput::Crashed(Crash {
                scenario: scenario.into(),
                seed,
                passed: false,
                crashed: why.into(),
            }),
            None,
            repro(scenario, seed),
            strings(covers),
        )
    }

    /// `results.json` of a real run (`dalp-sim run ci --seeds 1..2`): three of its results
    /// (an isolation scenario with its baseline, a data loss, many fault kinds), their lists cut
    /// short.
    const REAL_RESULTS: &str = r##"{"schema":"dalp-sim/results/v2","summary":{"crashed":0,"failed":0,"passed":29,"runs":29,"scenarios":29,"simulated_s":2144.5,"wall_s":150.479494893},"results":[
{"covers":["FM-DB-FAILOVER"],"data_loss":[{"lost_acknowledged":1,"lost_commits":1,"ops":["index_block"],"replication":"async","window_ms":3479}],"data_loss_window_ms":3479,"fault_windows":[{"end_ms":33000,"fault":0,"kind":"db_failover","start_ms":18000,"target":"-"}],"ops":[{"accepted_ms":3524,"claimed_by":[[4262,"engine-1"]],"done_ms":12734,"kind":"issuance","op":0,"planned_ms":3502,"status":"completed","token":1},{"accepted_ms":3629,"claimed_by":[[4262,"engine-1"]],"done_ms":12820,"kind":"issuance","op":1,"planned_ms":3611,"status":"completed","token":0}],"outcome":"pass","passed":true,"peak_rss_kib":24332,"recovery_ms":2944,"repro":"cargo xtask sim repro scenarios/db-failover-async.toml --seed 1","scenario":"db-failover-async","scenario_file":"scenarios/db-failover-async.toml","schedule":[{"at_s":18.0,"kind":"db_failover","promote_after_s":3.0,"rejoin_after_s":15.0}],"seed":1,"simulated_ms":60000,"stats":{"chain_head":59,"completed":35},"trace_events":661,"trace_hash":"75d3a4a7bad4599bc6c42c8fdb8eddb503858a6918a272f629c5d74267fb6c06","verdicts":[{"checked":"42 accepted requests","held":true,"invariant":"durability","violation_count":0,"violations":[]}],"wall_ms":6095},
{"baseline":{"passed":true,"recovery_ms":0,"simulated_ms":60000,"trace_events":683,"trace_hash":"9fc1c5d77dbc699afeceef0ad6392807acae7a1fce644d932252a8f5bee8048d","violated":[],"wall_ms":7182},"covers":["FM-ENGINE-CRASH"],"data_loss":[],"data_loss_window_ms":0,"fault_windows":[{"end_ms":13000,"fault":0,"kind":"engine_crash","start_ms":8000,"target":"engine-0"}],"isolation":{"thresholds":{"max_slowdown":3.0,"min_ops":3,"min_ratio":0.5,"settle_s":10.0,"slack_s":10.0},"windows":[{"baseline_finished":0,"baseline_median_latency_ms":5106,"counted_from_ms":18000,"end_ms":13000,"fault":0,"finished":0,"held":true,"kind":"engine_crash","median_latency_ms":6113,"start_ms":8000,"submitted":5,"target":"engine-0"}]},"ops":[{"accepted_ms":3540,"claimed_by":[[4260,"engine-1"]],"done_ms":13687,"kind":"issuance","op":0,"planned_ms":3502,"status":"completed","token":1},{"accepted_ms":3646,"claimed_by":[[4260,"engine-1"]],"done_ms":12758,"kind":"issuance","op":1,"planned_ms":3611,"status":"completed","token":0}],"outcome":"pass","passed":true,"peak_rss_kib":24416,"recovery_ms":10056,"repro":"cargo xtask sim repro scenarios/engine-crash.toml --seed 1","scenario":"engine-crash","scenario_file":"scenarios/engine-crash.toml","schedule":[{"at_s":8.0,"kind":"engine_crash","node":"engine-0","restart_after_s":5.0}],"seed":1,"simulated_ms":60000,"stats":{"chain_head":59,"completed":35},"trace_events":726,"trace_hash":"9d31e3edb7b143cb79c44adfb4e7f58c97024021d0e47dea49359a82bbd65bef","verdicts":[{"checked":"42 accepted requests","held":true,"invariant":"durability","violation_count":0,"violations":[]},{"checked":"3 fault windows against the fault-free baseline (this run/baseline): engine_crash engine-0 8.000 s–13.000 s: shorter than settle_s, median latency 6.113 s/5.106 s; engine_crash engine-1 20.000 s–32.000 s: throughput not judged: 1/0 finished in a span of 2.000 s (too few operations to tell from the clients' 1 s polling; at least 4.000 s), median latency 5.067 s/3.099 s; engine_crash engine-0 33.500 s–35.500 s: shorter than settle_s, median latency 2.080 s/3.103 s; 0 exempt (non-redundant component or overlap)","held":true,"invariant":"isolation","violation_count":0,"violations":[]}],"wall_ms":8195},
{"covers":["FM-ENGINE-CRASH","FM-PARTITION","FM-RPC-NODE-DOWN","FM-RPC-TIMEOUT","FM-REORG","FM-MEMPOOL-DROP","FM-GAS-SPIKE","FM-NONCE-CONFLICT","FM-DB-CONN-LOST","FM-CLOCK-SKEW"],"data_loss":[],"data_loss_window_ms":0,"fault_windows":[{"end_ms":7382,"fault":0,"kind":"reorg","start_ms":7382,"target":"-"}],"ops":[{"accepted_ms":544,"claimed_by":[[1229,"engine-1"]],"done_ms":12803,"kind":"issuance","op":0,"planned_ms":510,"status":"completed","token":2},{"accepted_ms":4538,"claimed_by":[[4695,"engine-1"]],"done_ms":17809,"kind":"issuance","op":1,"planned_ms":4502,"status":"completed","token":1}],"outcome":"pass","passed":true,"peak_rss_kib":27772,"recovery_ms":16781,"repro":"cargo xtask sim repro scenarios/random-chaos.toml --seed 1","scenario":"random-chaos","scenario_file":"scenarios/random-chaos.toml","schedule":[{"at_s":7.382,"depth":3,"drop_txs":true,"kind":"reorg"},{"at_s":9.509,"direction":"both","for_s":1.116,"from":["clients"],"kind":"partition","node":"engine-2"},{"at_s":12.016,"endpoint":"rpc-0","for_s":5.456,"kind":"rpc_down"},{"at_s":46.48,"kind":"engine_crash","node":"engine-0","restart_after_s":7.077},{"at_s":55.969,"for_s":5.328,"kind":"clock_skew","node":"engine-2","skew_ms":5457},{"at_s":56.969,"for_s":4.867,"kind":"db_lost_ack","rate":0.5},{"at_s":68.959,"blocks":14,"endpoint":"rpc-1","for_s":3.328,"kind":"rpc_lag"},{"at_s":72.494,"endpoint":"rpc-1","for_s":2.416,"kind":"rpc_timeout","method":null}],"seed":1,"simulated_ms":90000,"stats":{"chain_head":93,"completed":52},"trace_events":1079,"trace_hash":"a2ebb2bb81cd41abf904a8f9c8f52179c6f4dd69d86d53d7b7b639e10d12317c","verdicts":[{"checked":"63 accepted requests","held":true,"invariant":"durability","violation_count":0,"violations":[]}],"wall_ms":9684}
]}"##;

    #[test]
    fn a_real_results_file_round_trips_through_the_types() {
        let want: Value = serde_json::from_str(REAL_RESULTS).unwrap();
        let doc = parse("real", REAL_RESULTS).unwrap();
        assert_eq!(serde_json::to_value(&doc).unwrap(), want);
        assert_eq!(
            results_json(&doc),
            serde_json::to_string_pretty(&want).unwrap()
        );
        let f = doc.results[1].output.finished().unwrap();
        assert!(f.baseline.as_ref().is_some_and(|b| b.passed()));
        assert!(f.isolation.is_some() && f.result.ops.len() == 2);
        assert_eq!(doc.results[0].output.data_loss_window_ms(), 3479);
        assert!(
            doc.results[2]
                .output
                .finished()
                .unwrap()
                .result
                .schedule
                .len()
                > 5
        );
        // The shapes that run did not produce: a crashed run, a crashed baseline, trace files,
        // an unfinished recovery.
        let mut want = want;
        want["results"][1]["baseline"] = json!({"passed": false, "crashed": "baseline: boom"});
        want["results"][2]["trace_files"] = json!(["t/r-1.jsonl", "t/r-1.trace.json"]);
        want["results"][2]["recovery_ms"] = Value::Null;
        want["results"].as_array_mut().unwrap().push(json!({
            "scenario": "zz", "seed": 4, "passed": false, "crashed": "child exited",
            "covers": [], "outcome": "crash", "data_loss_window_ms": 0,
            "repro": "cargo xtask sim repro scenarios/zz.toml --seed 4",
            "scenario_file": "scenarios/zz.toml",
        }));
        let doc: ResultsDoc = serde_json::from_value(want.clone()).unwrap();
        assert_eq!(doc.results[3].output.crashed(), Some("child exited"));
        assert_eq!(serde_json::to_value(&doc).unwrap(), want);
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
        let doc = document(vec![run("a\"<b>", 1, &[], Some(1))], Provenance::default());
        let x = junit(&doc);
        assert!(x.contains("classname=\"a&quot;&lt;b&gt;\""), "{x}");
        assert!(!html(&doc).contains("<b>"));
    }

    #[test]
    fn outcome_and_loss_window_are_derived() {
        let mut r = run("s", 1, &[], Some(5));
        assert_eq!(r.outcome, Outcome::Pass);
        assert_eq!(r.data_loss_window_ms, 0);
        result(&mut r).data_loss = serde_json::from_value(
            json!([{"replication": "async", "window_ms": 300}, {"replication": "sync", "window_ms": 1200},
                   {"replication": "async", "window_ms": 40}]),
        )
        .unwrap();
        result(&mut r).passed = false;
        r.derive();
        assert_eq!(r.outcome, Outcome::Fail);
        assert_eq!(r.data_loss_window_ms, 1200);
        assert_eq!(crash("s", 2, &[], "boom").outcome, Outcome::Crash);
    }

    #[test]
    fn a_failing_run_carries_its_violations_and_repro_command_in_junit() {
        let doc = document(
            vec![
                run("engine-crash", 1, &["FM-ENGINE-CRASH"], Some(2000)),
                failing("engine-crash", 2, &["FM-ENGINE-CRASH"]),
                crash(
                    "engine-crash",
                    3,
                    &[],
                    "child exited\n\u{1b}[31mpanic\u{1b}[0m",
                ),
            ],
            Provenance::default(),
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

    fn scenario_file(name: &str, covers: &[&str], expect: &str) -> provenance::ScenarioFile {
        let e: crate::scenario::Expect = toml::from_str(expect).unwrap();
        provenance::ScenarioFile {
            path: format!("scenarios/{name}.toml"),
            sha256: "ab".repeat(32),
            name: name.into(),
            covers: strings(covers),
            targets: crate::promise::Targets::of(&e),
        }
    }

    /// The promises table: per id the strictest target of its scenarios against the worst run;
    /// no recorded targets mean the cloud-native RTO/RPO.
    #[test]
    fn promises_are_judged_against_the_scenarios_targets() {
        let mut lossy = run("db-failover-async", 1, &["FM-DB-FAILOVER"], Some(500));
        if let RunOutput::Finished(f) = &mut lossy.output {
            f.result.data_loss = serde_json::from_value(json!([
                {"replication": "async", "window_ms": 90_000, "lost_commits": 2, "lost_acknowledged": 2}
            ]))
            .unwrap();
        }
        lossy.derive();
        let doc = document(
            vec![
                run("engine-crash", 1, &["FM-ENGINE-CRASH"], Some(4000)),
                run("engine-crash-all", 1, &["FM-ENGINE-CRASH"], Some(1000)),
                run("clock-skew", 1, &["FM-CLOCK-SKEW"], Some(2000)),
                lossy,
            ],
            Provenance {
                scenario_files: vec![
                    scenario_file("engine-crash", &["FM-ENGINE-CRASH"], "max_recovery_s = 3"),
                    scenario_file("engine-crash-all", &["FM-ENGINE-CRASH"], ""),
                ],
                ..Provenance::default()
            },
        );
        let md = markdown(&doc);
        let promises = md
            .split("## Promises against measurements\n")
            .nth(1)
            .unwrap()
            .split("\n## ")
            .next()
            .unwrap();
        let row = |id: &str| {
            promises
                .lines()
                .find(|l| l.starts_with(&format!("| `{id}` |")))
                .unwrap_or_else(|| panic!("{id}: {promises}"))
                .to_string()
        };
        let r = row("FM-ENGINE-CRASH");
        assert!(
            r.contains("| 2 of 2 runs: pass | ≤ 3 s; max 4.00 s: **FAIL** |")
                && r.ends_with("| **FAIL** |"),
            "{r}"
        );
        let r = row("FM-CLOCK-SKEW");
        assert!(
            r.contains("| ≤ 900 s; max 2.00 s: pass | ≤ 60 s; max 0.00 s")
                && r.ends_with("| pass |"),
            "{r}"
        );
        let r = row("FM-DB-FAILOVER");
        assert!(
            r.contains("| ≤ 60 s; max 90.00 s, 2 commit(s) lost (2 acknowledged): **FAIL** |")
                && r.ends_with("| **FAIL** |"),
            "{r}"
        );
        assert!(
            !promises.contains("FM-REORG"),
            "uncovered ids promise nothing here"
        );
        let html = html(&doc);
        assert!(html.contains("<figure><svg ") && html.contains("data-loss windows"));
        assert!(md.contains("No planted-bug results were recorded"), "{md}");
        // Without a recorded backend, the runs' own names it (results from before provenance).
        let mut real = run("engine-crash", 1, &["FM-ENGINE-CRASH"], Some(1));
        if let RunOutput::Finished(f) = &mut real.output {
            f.result.backend = Some("real".into());
            f.result.provider = Some("docker".into());
        }
        let md = markdown(&document(vec![real], Provenance::default()));
        assert!(
            md.contains("| backend / provider | real / docker |"),
            "{md}"
        );
    }

    #[test]
    fn sensitivity_names_each_planted_bug_its_checkers_and_the_commit() {
        let planted = provenance::Planted {
            source: "reports/planted/latest.json".into(),
            date: "2026-12-02T09:00:00Z".into(),
            commit: "c0ffee".into(),
            dirty: Some(false),
            bugs: vec![
                provenance::PlantedBug {
                    name: "lease-taken-over-without-fencing".into(),
                    caught: true,
                    scenario: Some("partition-lease-holder".into()),
                    seed: Some(1),
                    invariants: strings(&["fencing", "exactly_once"]),
                },
                provenance::PlantedBug {
                    name: "quiet-one".into(),
                    caught: false,
                    ..Default::default()
                },
            ],
        };
        let doc = document(
            vec![run("engine-crash", 1, &["FM-ENGINE-CRASH"], Some(4000))],
            Provenance {
                planted: Some(planted.clone()),
                ..Provenance::default()
            },
        );
        let md = markdown(&doc);
        assert!(md.contains("**1 of 2 planted bugs caught**"), "{md}");
        assert!(
            md.contains("`c0ffee`") && md.contains("an earlier commit than this run"),
            "{md}"
        );
        assert!(
            md.contains("| `lease-taken-over-without-fencing` | yes | partition-lease-holder seed 1 | fencing, exactly\\_once |"),
            "{md}"
        );
        assert!(md.contains("| `quiet-one` | **NO** |"), "{md}");
        // A merge keeps the newest planted results and the earliest start.
        let older = provenance::Planted {
            date: "2026-01-01T00:00:00Z".into(),
            ..planted.clone()
        };
        let a = document(
            Vec::new(),
            Provenance {
                planted: Some(older),
                started: Some("2026-12-02T10:00:00Z".into()),
                ..Provenance::default()
            },
        );
        let b = document(
            Vec::new(),
            Provenance {
                planted: Some(planted.clone()),
                started: Some("2026-12-02T09:00:00Z".into()),
                ..Provenance::default()
            },
        );
        let m = merge(vec![("a".into(), a), ("b".into(), b)]);
        assert_eq!(m.summary.provenance.planted, Some(planted));
        assert_eq!(
            m.summary.provenance.started.as_deref(),
            Some("2026-12-02T09:00:00Z")
        );
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
            Provenance::default(),
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
            Provenance {
                wall_s: Some(2.0),
                shard: Some("0/2".into()),
                ..Provenance::default()
            },
        );
        let b = document(
            vec![
                failing("engine-crash", 2, &["FM-ENGINE-CRASH"]),
                run("engine-crash", 1, &["FM-ENGINE-CRASH"], Some(1)),
            ],
            Provenance {
                wall_s: Some(3.0),
                shard: Some("1/2".into()),
                ..Provenance::default()
            },
        );
        // A v1 file (no outcome, covers, loss window, ops, fault windows) is upgraded.
        let v1 = r#"{"schema": "dalp-sim/results/v1", "summary": {"wall_s": 1.0},
            "results": [{"scenario": "steady-state", "seed": 5, "passed": true, "verdicts": [],
                "trace_hash": "ab", "trace_events": 3, "schedule": [], "recovery_ms": null,
                "data_loss": [], "simulated_ms": 1000, "stats": {}}]}"#;
        let v1 = parse("c", v1).unwrap();
        let m = merge(vec![("a".into(), a), ("b".into(), b), ("c".into(), v1)]);
        assert_eq!(m.schema, SCHEMA);
        assert_eq!(m.summary.runs, 4);
        assert_eq!(m.summary.passed, 3);
        assert_eq!(m.summary.failed, 1);
        assert_eq!(m.summary.provenance.duplicates_dropped, Some(1));
        assert_eq!(m.summary.provenance.wall_s, Some(6.0));
        assert_eq!(
            m.summary.provenance.merged_from,
            Some(strings(&["a", "b", "c"]))
        );
        let keys: Vec<(String, u64)> = m.results.iter().map(RunRecord::key).collect();
        assert_eq!(
            keys,
            vec![
                ("engine-crash".into(), 1),
                ("engine-crash".into(), 2),
                ("rpc-node-down".into(), 1),
                ("steady-state".into(), 5)
            ]
        );
        assert_eq!(m.results[3].outcome, Outcome::Pass);
        assert!(m.results[3].covers.is_empty());
        let e = parse("x", r#"{"schema": "other"}"#).unwrap_err();
        assert!(e.contains("not a dalp-sim results file"), "{e}");
        let e = parse("x", "{").unwrap_err();
        assert!(e.contains("not JSON"), "{e}");
        let e = parse(
            "y",
            &json!({"schema": SCHEMA, "results": [{"seed": 1}]}).to_string(),
        )
        .unwrap_err();
        assert!(e.contains("results[0]") && e.contains("scenario"), "{e}");
    }

    #[test]
    fn failures_are_grouped_by_the_shape_of_their_cause() {
        let mut a = failing("engine-crash", 4, &["FM-ENGINE-CRASH"]);
        result(&mut a).verdicts[0] = verdict(
            "durability",
            &["op 12 (mint key mint-4-12) accepted at 9.120 s is still `running`"],
        );
        let mut b = failing("engine-crash", 6, &["FM-ENGINE-CRASH"]);
        result(&mut b).verdicts[0] = verdict(
            "durability",
            &["op 7 (mint key mint-6-7) accepted at 3.002 s is still `running`"],
        );
        let c = crash("db-read-only", 11, &["FM-DB-READ-ONLY"], "the simulator crashed (exit status: 101): panicked at sim/src/world/db_node.rs:435:13: replica diverged applying lsn 152");
        let md = markdown(&document(vec![a, b, c], Provenance::default()));
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
