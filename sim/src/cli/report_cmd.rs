//! `dalp-sim report`: merge results files (the shards of one run, or runs of different
//! scenarios) and write results.json, junit.xml, report.md and report.html.

use crate::report::{self, ResultsDoc, SCHEMA_V1};
use crate::scenario::Scenario;
use clap::Args;
use std::path::{Path, PathBuf};

/// Merge results files and write the four reports
///
/// Merges results (e.g. of shards; one run per scenario and seed is kept) and writes
/// results.json, junit.xml, report.md and report.html; exit 1 when a run failed.
#[derive(Debug, Args)]
pub(super) struct ReportArgs {
    /// results.json files
    #[arg(required = true, value_name = "RESULTS.JSON")]
    files: Vec<String>,
    /// Where the merged files are written [default: the first file's folder]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// `Ok(false)` when a merged run failed.
pub(super) fn report_cmd(a: &ReportArgs) -> Result<bool, String> {
    let docs = a
        .files
        .iter()
        .map(|p| Ok((p.clone(), read_results(p)?)))
        .collect::<Result<Vec<_>, String>>()?;
    let files = docs.len();
    let doc = report::merge(docs);
    let out_dir = match &a.out {
        Some(o) => o.clone(),
        None => match Path::new(&a.files[0]).parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        },
    };
    let written = report::write_outputs(&out_dir, &doc)?;
    let s = &doc.summary;
    eprintln!(
        "dalp-sim: merged {files} file(s): {} runs, {} passed, {} failed ({} crashed), {} duplicate(s) dropped; wrote {}",
        s.runs,
        s.passed,
        s.failed,
        s.crashed,
        s.provenance.duplicates_dropped.unwrap_or_default(),
        super::joined(&written)
    );
    Ok(s.failed == 0)
}

/// A results document; v1 results carry no catalog ids: they are read from the scenario file
/// when it is there.
fn read_results(p: &str) -> Result<ResultsDoc, String> {
    let text = std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"))?;
    let mut doc = report::parse(p, &text)?;
    if doc.schema == SCHEMA_V1 {
        for r in &mut doc.results {
            if let Some(s) = r
                .scenario_file
                .as_deref()
                .and_then(|f| Scenario::load(Path::new(f)).ok())
            {
                r.covers = s.covers;
            }
        }
    }
    Ok(doc)
}
