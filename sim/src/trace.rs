//! The run trace: ordered events with simulated timestamps, and its hash.
//!
//! Every event is folded into a running keccak-256 as one canonical JSON line (object keys in
//! sorted order: `serde_json::Map` is a BTreeMap here), so the hash is a pure function of the
//! events. Two runs of one seed must give the same hash (DESIGN.md §2); the trace is also written
//! as JSON lines and as a Chrome trace-event timeline that Perfetto opens.

use alloy_primitives::{keccak256, B256};
use serde::Serialize;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// One trace event.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Event {
    /// Simulated milliseconds since the start of the run.
    pub t_ms: u64,
    /// The node the event belongs to (`engine-0`, `db-1`, `chain`, `client-0`, `sim`).
    pub node: String,
    /// `fault`, `heal`, `op`, `db`, `chain`, `engine`, `phase`, `check`.
    pub cat: String,
    pub name: String,
    /// Event details; a span when `dur_ms` is set.
    #[serde(skip_serializing_if = "Value::is_null")]
    pub args: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dur_ms: Option<u64>,
}

#[derive(Default)]
struct Inner {
    events: Vec<Event>,
    /// keccak(previous state ‖ line) per event: order-sensitive.
    state: B256,
}

/// A shared, append-only trace (cheap to clone; every node of the run holds one).
#[derive(Clone, Default)]
pub struct Trace {
    inner: Arc<Mutex<Inner>>,
}

impl Trace {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record(&self, t_ms: u64, node: &str, cat: &str, name: &str, args: Value) {
        self.push(Event {
            t_ms,
            node: node.into(),
            cat: cat.into(),
            name: name.into(),
            args,
            dur_ms: None,
        });
    }

    pub fn push(&self, ev: Event) {
        let line = serde_json::to_string(&ev).expect("event json");
        let mut g = self.inner.lock().expect("trace lock");
        let mut buf = Vec::with_capacity(32 + line.len());
        buf.extend_from_slice(g.state.as_slice());
        buf.extend_from_slice(line.as_bytes());
        g.state = keccak256(&buf);
        g.events.push(ev);
    }

    pub fn hash(&self) -> B256 {
        self.inner.lock().expect("trace lock").state
    }

    pub fn hash_hex(&self) -> String {
        hex_of(self.hash())
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("trace lock").events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn events(&self) -> Vec<Event> {
        self.inner.lock().expect("trace lock").events.clone()
    }

    /// Events of one category, for the checkers and tests.
    pub fn of_cat(&self, cat: &str) -> Vec<Event> {
        self.inner
            .lock()
            .expect("trace lock")
            .events
            .iter()
            .filter(|e| e.cat == cat)
            .cloned()
            .collect()
    }

    /// Write `<stem>.jsonl` and `<stem>.chrome.json`; returns their paths. Files are written to a
    /// temporary name and renamed, so a reader never sees half a trace.
    pub fn write(&self, dir: &Path, stem: &str) -> std::io::Result<(String, String)> {
        std::fs::create_dir_all(dir)?;
        let events = self.events();
        let jsonl = dir.join(format!("{stem}.jsonl"));
        let mut text = String::new();
        for e in &events {
            text.push_str(&serde_json::to_string(e).expect("event json"));
            text.push('\n');
        }
        write_atomic(&jsonl, text.as_bytes())?;
        let chrome = dir.join(format!("{stem}.chrome.json"));
        write_atomic(&chrome, chrome_trace(&events).to_string().as_bytes())?;
        Ok((jsonl.display().to_string(), chrome.display().to_string()))
    }
}

pub fn hex_of(h: B256) -> String {
    format!("{h:x}")
}

/// Write a file via a temporary sibling and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// The Chrome trace event format: one process, one thread (track) per node, instant events, and
/// complete events for spans (faults with a duration).
pub fn chrome_trace(events: &[Event]) -> Value {
    let mut nodes: Vec<&str> = events.iter().map(|e| e.node.as_str()).collect();
    nodes.sort_unstable();
    nodes.dedup();
    let tid = |n: &str| nodes.binary_search(&n).unwrap_or(0) as u64 + 1;
    let mut out: Vec<Value> = nodes
        .iter()
        .map(|n| json!({"name": "thread_name", "ph": "M", "pid": 1, "tid": tid(n), "args": {"name": n}}))
        .collect();
    out.push(json!({"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": "dalp-sim"}}));
    for e in events {
        let mut v = json!({
            "name": e.name, "cat": e.cat, "pid": 1, "tid": tid(&e.node),
            "ts": e.t_ms * 1000, "args": e.args,
        });
        match e.dur_ms {
            Some(d) => {
                v["ph"] = json!("X");
                v["dur"] = json!(d * 1000);
            }
            None => {
                v["ph"] = json!("i");
                v["s"] = json!("t");
            }
        }
        out.push(v);
    }
    json!({ "traceEvents": out, "displayTimeUnit": "ms" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_content_and_order() {
        let a = Trace::new();
        a.record(1, "n", "c", "x", json!({"k": 1}));
        a.record(2, "n", "c", "y", Value::Null);
        let b = Trace::new();
        b.record(1, "n", "c", "x", json!({"k": 1}));
        b.record(2, "n", "c", "y", Value::Null);
        assert_eq!(a.hash(), b.hash());
        let c = Trace::new();
        c.record(2, "n", "c", "y", Value::Null);
        c.record(1, "n", "c", "x", json!({"k": 1}));
        assert_ne!(a.hash(), c.hash());
        let d = Trace::new();
        d.record(1, "n", "c", "x", json!({"k": 2}));
        d.record(2, "n", "c", "y", Value::Null);
        assert_ne!(a.hash(), d.hash());
    }

    #[test]
    fn writes_jsonl_and_a_chrome_timeline() {
        let t = Trace::new();
        t.record(
            5,
            "engine-0",
            "fault",
            "engine_crash",
            json!({"node": "engine-0"}),
        );
        t.push(Event {
            t_ms: 10,
            node: "sim".into(),
            cat: "fault".into(),
            name: "partition".into(),
            args: Value::Null,
            dur_ms: Some(3000),
        });
        let dir = std::env::temp_dir().join(format!("dalp-trace-test-{}", std::process::id()));
        let (jl, ch) = t.write(&dir, "x").unwrap();
        let lines = std::fs::read_to_string(jl).unwrap();
        assert_eq!(lines.lines().count(), 2);
        let chrome: Value = serde_json::from_str(&std::fs::read_to_string(ch).unwrap()).unwrap();
        let evs = chrome["traceEvents"].as_array().unwrap();
        assert!(evs.iter().any(|e| e["ph"] == "X" && e["dur"] == 3_000_000));
        assert!(evs.iter().any(|e| e["ph"] == "i" && e["ts"] == 5000));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
