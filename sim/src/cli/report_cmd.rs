//! `dalp-sim report`: merge results files (the shards of one run, or runs of different
//! scenarios) and write results.json, junit.xml, report.md and report.html; with `--bundle`, as
//! an audit bundle (scenario files, traces, a manifest that can be signed).

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
    #[arg(long, value_name = "DIR", conflicts_with = "bundle")]
    out: Option<PathBuf>,
    /// Write an audit bundle into DIR: the reports, the scenario files and failing runs' traces
    /// they name, and MANIFEST.json with every file's SHA-256 (`dalp-sim verify DIR` checks it)
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
    /// With --bundle: sign the manifest with this ed25519 key (32 bytes, hex or raw) [default:
    /// $DALP_SIM_SIGNING_KEY_FILE, else unsigned]
    #[arg(long, value_name = "FILE", requires = "bundle")]
    signing_key: Option<PathBuf>,
}

/// `Ok(false)` when a merged run failed.
pub(super) fn report_cmd(dir: &Path, a: &ReportArgs) -> Result<bool, String> {
    let key = match &a.bundle {
        Some(_) => crate::bundle::key(a.signing_key.as_deref())?,
        None => None,
    };
    let docs = a
        .files
        .iter()
        .map(|p| Ok((p.clone(), read_results(p)?)))
        .collect::<Result<Vec<_>, String>>()?;
    let files = docs.len();
    let mut doc = report::merge(docs);
    if a.bundle.is_some() && doc.summary.provenance.planted.is_none() {
        // Results from before planted bugs were recorded: the latest recorded ones.
        doc.summary.provenance.planted =
            crate::provenance::Planted::load(&crate::provenance::planted_path(dir))?;
    }
    let out_dir = match a.out.as_ref().or(a.bundle.as_ref()) {
        Some(o) => o.clone(),
        None => match Path::new(&a.files[0]).parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        },
    };
    let mut written = report::write_outputs(&out_dir, &doc)?;
    if a.bundle.is_some() {
        written.push(crate::bundle::seal(&out_dir, &doc, key.as_ref())?);
    }
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
