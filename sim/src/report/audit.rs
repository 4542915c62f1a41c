//! The auditor's sections of the report: provenance, promises against measurements, checker
//! sensitivity (planted bugs), and the pictures. Like the rest of the report, a function of the
//! results document (whose summary carries the provenance the run recorded).

use super::svg::{self, RecoveryPoint};
use super::{t, Block, Inline, ResultsDoc, Run, Strong};
use crate::outcome::RunOutput;
use crate::promise::{self, Targets};
use crate::provenance::UNKNOWN;
use std::collections::BTreeMap;

use Inline::Code;

/// At most this many failing runs get a timeline (the rest are listed without one).
const MAX_TIMELINES: usize = 12;

fn yes_no(x: Option<bool>, yes: &str, no: &str) -> String {
    match x {
        Some(true) => yes.into(),
        Some(false) => no.into(),
        None => UNKNOWN.into(),
    }
}

/// "Provenance": what ran, where and when.
pub(super) fn provenance(doc: &ResultsDoc, b: &mut Vec<Block>) {
    let p = &doc.summary.provenance;
    b.push(Block::Heading(2, "Provenance".into()));
    let mut rows: Vec<Vec<Vec<Inline>>> = Vec::new();
    let mut row = |k: &str, v: Vec<Inline>| rows.push(vec![vec![t(k)], v]);
    match &p.build {
        Some(bd) => {
            row(
                "commit",
                vec![
                    Code(bd.commit.clone()),
                    t(format!(
                        " ({})",
                        yes_no(bd.dirty, "dirty: uncommitted changes", "clean")
                    )),
                ],
            );
            row(
                "engine tree (engine/)",
                vec![
                    Code(bd.engine_tree.clone()),
                    t(format!(" ({})", yes_no(bd.engine_dirty, "dirty", "clean"))),
                ],
            );
            row(
                "harness tree (sim/, scenarios/)",
                vec![
                    Code(bd.harness_tree.clone()),
                    t(format!(" ({})", yes_no(bd.harness_dirty, "dirty", "clean"))),
                ],
            );
            row(
                "binary SHA-256",
                vec![Code(
                    bd.binary_sha256.clone().unwrap_or_else(|| UNKNOWN.into()),
                )],
            );
            row("build", vec![t(format!("{}; {}", bd.rustc, bd.flavour))]);
            row(
                "crate versions",
                vec![t(bd
                    .crates
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", "))],
            );
        }
        None => row("build", vec![t("not recorded in these results")]),
    }
    row(
        "suite / targets",
        vec![t(if p.targets.is_empty() {
            "not recorded".into()
        } else {
            p.targets.join(", ")
        })],
    );
    row(
        "seeds",
        vec![t(p.seeds.clone().unwrap_or_else(|| {
            "each suite's own (see the tables)".into()
        }))],
    );
    let finished = || doc.results.iter().filter_map(|r| r.output.finished());
    let providers: std::collections::BTreeSet<String> = finished()
        .filter_map(|f| f.result.provider.clone())
        .collect();
    // Results from before the provenance was recorded still name their backend per run.
    let backend = p.backend.clone().unwrap_or_else(|| {
        finished()
            .find_map(|f| f.result.backend.clone())
            .unwrap_or_else(|| "sim".into())
    });
    row(
        "backend / provider",
        vec![t(format!(
            "{} / {}",
            backend,
            if providers.is_empty() {
                p.provider.clone().unwrap_or_else(|| "-".into())
            } else {
                providers.into_iter().collect::<Vec<_>>().join(", ")
            }
        ))],
    );
    if let Some(m) = &p.machine {
        row(
            "machine",
            vec![t(format!(
                "{} cores, {} MiB, {} (kernel {}, {})",
                m.cores,
                m.memory_mib
                    .map_or_else(|| UNKNOWN.into(), |x| x.to_string()),
                m.os,
                m.kernel,
                m.arch
            ))],
        );
    }
    row(
        "started / ended (UTC)",
        vec![t(format!(
            "{} / {}",
            p.started.as_deref().unwrap_or(UNKNOWN),
            p.ended.as_deref().unwrap_or(UNKNOWN)
        ))],
    );
    row(
        "scenario files",
        vec![t(if p.scenario_files.is_empty() {
            "not recorded".to_string()
        } else {
            format!(
                "{} (with their SHA-256 and targets at the end of this report)",
                p.scenario_files.len()
            )
        })],
    );
    b.push(Block::Table(
        vec!["what".into(), "value".into()],
        std::mem::take(&mut rows),
    ));
}

/// "Scenario files": each file that ran, its SHA-256, catalog ids and targets.
pub(super) fn scenario_files(doc: &ResultsDoc, b: &mut Vec<Block>) {
    let p = &doc.summary.provenance;
    b.push(Block::Heading(2, "Scenario files".into()));
    if p.scenario_files.is_empty() {
        b.push(Block::Para(vec![t("Not recorded in these results.")]));
    } else {
        b.push(Block::Table(
            [
                "scenario file",
                "SHA-256",
                "covers",
                "targets: recovery / data loss",
            ]
            .map(String::from)
            .to_vec(),
            p.scenario_files
                .iter()
                .map(|f| {
                    vec![
                        vec![Code(f.path.clone())],
                        vec![Code(f.sha256.clone())],
                        vec![t(f.covers.join(", "))],
                        vec![t(target_text(&f.targets))],
                    ]
                })
                .collect(),
        ));
    }
}

fn target_text(t: &Targets) -> String {
    let loss = t
        .data_loss_s
        .map_or("none stated".into(), |d| format!("≤ {d} s"));
    if t.data_loss_s.is_none() || t.recovery_from == t.data_loss_from {
        format!("≤ {} s / {loss} ({})", t.recovery_s, t.recovery_from)
    } else {
        format!(
            "≤ {} s ({}) / {loss} ({})",
            t.recovery_s, t.recovery_from, t.data_loss_from
        )
    }
}

/// The targets of each scenario (by name): recorded in the results, else the defaults.
fn targets_by_scenario(doc: &ResultsDoc) -> BTreeMap<String, Targets> {
    doc.summary
        .provenance
        .scenario_files
        .iter()
        .map(|f| (f.name.clone(), f.targets.clone()))
        .collect()
}

/// "Promises against measurements": per catalog id, its promised behaviour (every invariant
/// held in every run), recovery within the strictest target of its scenarios, and data-loss
/// windows within theirs; then the recovery and data-loss pictures.
pub(super) fn promises(
    doc: &ResultsDoc,
    ids: &[String],
    by_id: &BTreeMap<String, Vec<&str>>,
    by_scenario: &BTreeMap<&str, Vec<&Run>>,
    b: &mut Vec<Block>,
) {
    b.push(Block::Heading(2, "Promises against measurements".into()));
    b.push(Block::Para(vec![t(
        "Each catalog id's promise (DESIGN.md §4) beside what its runs measured. Targets are the \
         scenarios' [expect] max_recovery_s / max_data_loss_s, else their deployment pattern's \
         RTO/RPO (upper end of the documented range); with several scenarios the strictest applies.",
    )]));
    let targets = targets_by_scenario(doc);
    let default = Targets::of(&Default::default());
    let mut rows = Vec::new();
    let mut pictures = Vec::new();
    for id in ids {
        let Some(scen) = by_id.get(id) else { continue };
        let runs: Vec<&Run> = scen.iter().flat_map(|s| by_scenario[s].clone()).collect();
        let tg: Vec<&Targets> = scen
            .iter()
            .map(|s| targets.get(*s).unwrap_or(&default))
            .collect();
        let rto = tg
            .iter()
            .map(|t| t.recovery_s)
            .fold(f64::INFINITY, f64::min);
        let rpo = tg
            .iter()
            .filter_map(|t| t.data_loss_s)
            .fold(f64::INFINITY, f64::min);
        let bad = runs.iter().filter(|r| r.outcome != "pass").count();
        // Each measure with its own verdict, then the id's: one row per catalog id.
        let judged = |text: String, ok: Option<bool>| match ok {
            Some(true) => vec![t(format!("{text}: pass"))],
            Some(false) => vec![t(format!("{text}: ")), Strong("FAIL".into())],
            None => vec![t(format!("{text}: not judged"))],
        };
        let unrecovered = runs
            .iter()
            .filter(|r| r.recovery_ms.is_none() && r.crashed.is_none())
            .count();
        let worst = runs.iter().filter_map(|r| r.recovery_ms).max();
        let recovery_ok = unrecovered == 0 && worst.is_none_or(|w| w as f64 / 1000.0 <= rto);
        let window = runs.iter().map(|r| r.loss_window_ms).max().unwrap_or(0);
        let lost: u64 = runs.iter().map(|r| r.lost_commits).sum();
        let acked: u64 = runs.iter().map(|r| r.lost_acknowledged).sum();
        let loss_ok = rpo.is_finite().then(|| window as f64 / 1000.0 <= rpo);
        let all = bad == 0 && recovery_ok && loss_ok != Some(false);
        rows.push(vec![
            vec![Code(id.clone())],
            vec![t(promise::behaviour(id))],
            judged(
                format!("{} of {} runs", runs.len() - bad, runs.len()),
                Some(bad == 0),
            ),
            judged(
                format!(
                    "≤ {rto} s; {}",
                    match (worst, unrecovered) {
                        (_, n) if n > 0 => format!("{n} run(s) did not recover"),
                        (Some(w), _) => format!("max {:.2} s", w as f64 / 1000.0),
                        (None, _) => "not measured".into(),
                    }
                ),
                Some(recovery_ok),
            ),
            judged(
                format!(
                    "{}; max {:.2} s, {lost} commit(s) lost ({acked} acknowledged)",
                    if rpo.is_finite() {
                        format!("≤ {rpo} s")
                    } else {
                        "none stated".into()
                    },
                    window as f64 / 1000.0
                ),
                loss_ok,
            ),
            if all {
                vec![t("pass")]
            } else {
                vec![Strong("FAIL".into())]
            },
        ]);
        pictures.push((
            id.clone(),
            runs.iter()
                .map(|r| RecoveryPoint {
                    label: format!("{} seed {}", r.scenario, r.seed),
                    ms: r.recovery_ms,
                    passed: r.outcome == "pass",
                })
                .collect::<Vec<_>>(),
            Some(rto),
        ));
    }
    if rows.is_empty() {
        b.push(Block::Para(vec![t(
            "No catalog id is covered by these results.",
        )]));
        return;
    }
    b.push(Block::Table(
        [
            "catalog id",
            "promised behaviour",
            "every invariant held",
            "recovery: target; measured",
            "data-loss window: target; measured",
            "verdict",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    ));
    b.push(Block::Svg(
        "recovery time per catalog id across seeds".into(),
        svg::recovery(&pictures),
    ));
    let losses: Vec<(String, u64, u64, Option<f64>)> = by_scenario
        .values()
        .flatten()
        .filter(|r| r.loss_window_ms > 0 || r.lost_commits > 0)
        .map(|r| {
            (
                format!("{} seed {}", r.scenario, r.seed),
                r.loss_window_ms,
                r.lost_commits,
                targets.get(&r.scenario).unwrap_or(&default).data_loss_s,
            )
        })
        .collect();
    if losses.is_empty() {
        b.push(Block::Para(vec![t(
            "Data-loss windows: no run lost a commit.",
        )]));
    } else {
        b.push(Block::Svg(
            "data-loss windows".into(),
            svg::data_loss(&losses),
        ));
    }
}

/// "Checker sensitivity": which planted bug each checker caught, with the date and commit of
/// those results.
pub(super) fn sensitivity(doc: &ResultsDoc, b: &mut Vec<Block>) {
    b.push(Block::Heading(
        2,
        "Checker sensitivity (planted bugs)".into(),
    ));
    let Some(p) = &doc.summary.provenance.planted else {
        b.push(Block::Para(vec![t(
            "No planted-bug results were recorded (cargo xtask planted writes \
             reports/planted/latest.json).",
        )]));
        return;
    };
    let caught = p.bugs.iter().filter(|x| x.caught).count();
    let this = doc
        .summary
        .provenance
        .build
        .as_ref()
        .is_some_and(|bd| bd.commit == p.commit);
    b.push(Block::Para(vec![
        Strong(format!("{caught} of {} planted bugs caught", p.bugs.len())),
        t(format!(
            " ({}) on {} at commit ",
            if p.bugs.iter().any(|x| x.name.contains('/')) {
                "by the ci suite; the `store/` and `api/` ones, in production code the \
                 simulation does not run, by the store conformance and API tests"
            } else {
                "by the ci suite"
            },
            p.date
        )),
        Code(p.commit.clone()),
        t(format!(
            "{} ({}; from {}).",
            if p.dirty == Some(true) {
                " with uncommitted changes"
            } else {
                ""
            },
            if this {
                "this run's commit"
            } else {
                "an earlier commit than this run's"
            },
            p.source
        )),
    ]));
    let mut per_checker: BTreeMap<&str, usize> = BTreeMap::new();
    for bug in p.bugs.iter().filter(|x| x.caught) {
        for i in &bug.invariants {
            *per_checker.entry(i.as_str()).or_default() += 1;
        }
    }
    b.push(Block::Table(
        [
            "planted bug",
            "caught",
            "by (first failing run)",
            "checkers",
        ]
        .map(String::from)
        .to_vec(),
        p.bugs
            .iter()
            .map(|x| {
                vec![
                    vec![Code(x.name.clone())],
                    vec![if x.caught {
                        t("yes")
                    } else {
                        Strong("NO".into())
                    }],
                    vec![t(match (&x.scenario, x.seed) {
                        (Some(s), Some(n)) => format!("{s} seed {n}"),
                        _ => "-".into(),
                    })],
                    vec![t(x.invariants.join(", "))],
                ]
            })
            .collect(),
    ));
    if !per_checker.is_empty() {
        b.push(Block::Para(vec![t(format!(
            "Bugs caught per checker: {}.",
            per_checker
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))]));
    }
}

/// A timeline picture per failing run (the first [`MAX_TIMELINES`]).
pub(super) fn timelines(doc: &ResultsDoc, b: &mut Vec<Block>) {
    let failing: Vec<_> = doc
        .results
        .iter()
        .filter_map(|r| match &r.output {
            RunOutput::Finished(f) if !f.result.passed => Some(f),
            _ => None,
        })
        .collect();
    for f in failing.iter().take(MAX_TIMELINES) {
        let title = format!("{} seed {}: timeline", f.result.scenario, f.result.seed);
        b.push(Block::Svg(title.clone(), svg::timeline(&title, f)));
    }
    if failing.len() > MAX_TIMELINES {
        b.push(Block::Para(vec![t(format!(
            "Timelines of {} more failing runs are left out.",
            failing.len() - MAX_TIMELINES
        ))]));
    }
}
