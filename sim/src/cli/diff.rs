//! `dalp-sim diff A B`: where two traces part. The tool for "why does this seed give another
//! hash now" (two builds, one seed) and "what did the fix change" (before and after): the first
//! event that differs, the events both had just before it, and what each side did next.
//!
//! Events are compared as JSON values, so the same event written with another key order is the
//! same event. Exit status as diff(1): 0 identical, 1 they differ, 2 bad input.

use clap::Args;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The first event where two traces diverge, with context
///
/// A and B are JSONL traces (`traces/*.jsonl` of `repro` or `run`), or folders holding exactly
/// one such trace (a `repro --out` folder). Exit 0 when identical, 1 when they differ.
#[derive(Debug, Args)]
pub(super) struct DiffArgs {
    /// The first trace (file, or a folder with one trace)
    #[arg(value_name = "A")]
    a: PathBuf,
    /// The second trace
    #[arg(value_name = "B")]
    b: PathBuf,
    /// Events shown before the divergence, and of each side after it
    #[arg(long, default_value_t = 5, value_name = "N")]
    context: usize,
}

pub(super) fn diff(a: &DiffArgs) -> Result<bool, String> {
    let (pa, pb) = (trace_file(&a.a)?, trace_file(&a.b)?);
    let (ea, eb) = (read_events(&pa)?, read_events(&pb)?);
    let d = divergence(&ea, &eb);
    print!("{}", render(&d, &ea, &eb, &pa, &pb, a.context));
    Ok(d.is_none())
}

/// The trace in `p`: `p` itself, or the one `*.jsonl` in `p` or `p/traces`.
fn trace_file(p: &Path) -> Result<PathBuf, String> {
    if p.is_file() {
        return Ok(p.to_path_buf());
    }
    if !p.is_dir() {
        return Err(format!("{}: no such file or folder", p.display()));
    }
    let mut found = Vec::new();
    for dir in [p.to_path_buf(), p.join("traces")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let f = e.path();
            if f.extension().is_some_and(|x| x == "jsonl") {
                found.push(f);
            }
        }
    }
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!(
            "{}: no .jsonl trace in it or in its traces/",
            p.display()
        )),
        n => Err(format!(
            "{}: {n} traces in it ({}); name one",
            p.display(),
            found
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// One event per non-empty line; a line that is not JSON is bad input, named by file and line.
fn read_events(p: &Path) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| format!("{}:{}: not a JSON trace event: {e}", p.display(), i + 1))
        })
        .collect()
}

/// Where two event lists part: the index of the first event that differs (or that one side
/// lacks). `None` when they are the same.
fn divergence(a: &[Value], b: &[Value]) -> Option<usize> {
    let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    (common < a.len() || common < b.len()).then_some(common)
}

/// The fields of two events that differ, as `path: a → b` (nested objects descended).
fn field_changes(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => field_changes(u, v, &p, out),
                    (u, v) => out.push(format!("{p}: {} → {}", show(u), show(v))),
                }
            }
        }
        _ if a != b => out.push(format!("{path}: {a} → {b}")),
        _ => {}
    }
}

fn show(v: Option<&Value>) -> String {
    v.map_or_else(|| "(absent)".to_string(), Value::to_string)
}

fn render(
    d: &Option<usize>,
    a: &[Value],
    b: &[Value],
    pa: &Path,
    pb: &Path,
    context: usize,
) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let (na, nb) = (pa.display(), pb.display());
    let Some(i) = *d else {
        let _ = writeln!(s, "identical: {} events in both", a.len());
        return s;
    };
    let _ = writeln!(
        s,
        "traces diverge at event {} (line {}): A {na} has {} events, B {nb} has {}",
        i,
        i + 1,
        a.len(),
        b.len()
    );
    let t = |e: Option<&Value>| e.and_then(|e| e["t_ms"].as_u64());
    if let (Some(x), Some(y)) = (t(a.get(i)), t(b.get(i))) {
        let _ = writeln!(s, "at simulated time A {x} ms, B {y} ms");
    }
    let _ = writeln!(s, "-- both, before:");
    for e in &a[i.saturating_sub(context)..i] {
        let _ = writeln!(s, "   {e}");
    }
    for (tag, events) in [("A", a), ("B", b)] {
        let _ = writeln!(s, "-- {tag} then:");
        let after = &events[i.min(events.len())..(i + context.max(1)).min(events.len())];
        if after.is_empty() {
            let _ = writeln!(s, "   (the trace ends)");
        }
        for e in after {
            let _ = writeln!(s, "{tag}  {e}");
        }
    }
    if let (Some(x), Some(y)) = (a.get(i), b.get(i)) {
        let mut changes = Vec::new();
        field_changes(x, y, "", &mut changes);
        let _ = writeln!(s, "-- fields that differ in the first differing event:");
        for c in changes {
            let _ = writeln!(s, "   {c}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(t: u64, name: &str, lsn: u64) -> Value {
        json!({"t_ms": t, "node": "db-0", "cat": "db", "name": name, "args": {"lsn": lsn}})
    }

    #[test]
    fn identical_traces_do_not_diverge() {
        let a = vec![ev(0, "submit", 1), ev(5, "claim", 2)];
        assert_eq!(divergence(&a, &a.clone()), None);
        assert_eq!(divergence(&[], &[]), None);
    }

    #[test]
    fn the_first_differing_event_is_named_with_its_fields() {
        let a = vec![
            ev(0, "submit", 1),
            ev(5, "claim", 2),
            ev(9, "complete_step", 3),
        ];
        let mut b = a.clone();
        b[1] = ev(6, "claim", 2);
        b.push(ev(12, "release", 4));
        let d = divergence(&a, &b);
        assert_eq!(d, Some(1));
        let out = render(&d, &a, &b, Path::new("a.jsonl"), Path::new("b.jsonl"), 3);
        assert!(out.contains("diverge at event 1"), "{out}");
        assert!(out.contains("A 5 ms, B 6 ms"), "{out}");
        assert!(out.contains("t_ms: 5 → 6"), "{out}");
        assert!(
            !out.contains("args.lsn"),
            "equal fields are not listed: {out}"
        );
        assert!(
            out.contains("A a.jsonl has 3 events, B b.jsonl has 4"),
            "{out}"
        );
    }

    #[test]
    fn a_trace_that_is_a_prefix_of_the_other_diverges_where_it_ends() {
        let a = vec![ev(0, "submit", 1)];
        let b = vec![ev(0, "submit", 1), ev(5, "claim", 2)];
        let d = divergence(&a, &b);
        assert_eq!(d, Some(1));
        let out = render(&d, &a, &b, Path::new("a"), Path::new("b"), 2);
        assert!(out.contains("(the trace ends)"), "{out}");
        assert!(out.contains("\"claim\""), "{out}");
    }

    #[test]
    fn key_order_does_not_make_a_difference() {
        let a: Vec<Value> = vec![serde_json::from_str(r#"{"t_ms":1,"name":"x"}"#).unwrap()];
        let b: Vec<Value> = vec![serde_json::from_str(r#"{"name":"x","t_ms":1}"#).unwrap()];
        assert_eq!(divergence(&a, &b), None);
    }

    #[test]
    fn bad_input_names_the_file_and_line() {
        let dir = std::env::temp_dir().join(format!("dalp-diff-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("t.jsonl");
        std::fs::write(&f, "{\"t_ms\":0}\nnot json\n").unwrap();
        let e = read_events(&f).unwrap_err();
        assert!(e.contains("t.jsonl:2"), "{e}");
        let e = trace_file(&dir.join("missing")).unwrap_err();
        assert!(e.contains("no such file"), "{e}");
        std::fs::write(dir.join("u.jsonl"), "").unwrap();
        let e = trace_file(&dir).unwrap_err();
        assert!(e.contains("2 traces"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
