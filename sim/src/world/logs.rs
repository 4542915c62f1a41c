//! The engines' `tracing` events as trace events (`cat` `log`, `name` the level), on the track of
//! the node that logged them, at the simulated time, with the fields of the engine's spans in
//! scope (workflow_id, kind, step, attempt, node) and the event's own.
//!
//! Off unless asked (`--log LEVEL`): a run without it installs no layer, so its trace and hash are
//! exactly those of a build without this module. Deterministic: events arrive in the order the
//! runtime runs them, fields go into a `serde_json::Map` (sorted keys), times are madsim's.

use crate::trace::Trace;
use serde_json::{Map, Value};
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::DefaultGuard;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{filter_fn, LevelFilter};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// Install, on this thread (the simulation's, before its runtime exists, so that madsim's node
/// spans are seen), a subscriber with the layers asked for: the trace's at `trace_level`, and the
/// stderr printer at `DALP_SIM_LOG=<level>` (error … trace; another value means debug). `None`
/// when neither is asked: then no subscriber exists at all.
pub fn install(trace: &Trace, trace_level: Option<Level>) -> Option<DefaultGuard> {
    let stderr = std::env::var("DALP_SIM_LOG")
        .ok()
        .map(|l| l.parse::<Level>().unwrap_or(Level::DEBUG));
    if trace_level.is_none() && stderr.is_none() {
        return None;
    }
    let printer = stderr.map(|l| {
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .with_filter(LevelFilter::from_level(l))
    });
    let logs = trace_level.map(|l| layer(trace.clone(), l));
    let sub = tracing_subscriber::registry().with(printer).with(logs);
    Some(tracing::subscriber::set_default(sub))
}

/// Events and spans of this target prefix are the engine's.
const ENGINE: &str = "dalp_engine";

/// Records engine events at `level` or above into `trace`.
pub struct TraceLogs {
    trace: Trace,
}

/// A span's recorded fields (kept in the registry's extensions).
struct Fields(Map<String, Value>);

/// The logs layer at `level`, filtered per layer: it sees every span (madsim's node spans name the
/// node; the engine's carry the workflow) and the engine's events at `level` or above, whatever
/// other layers (the `DALP_SIM_LOG` printer) see.
pub fn layer<S>(trace: Trace, level: Level) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let max = LevelFilter::from_level(level);
    TraceLogs { trace }.with_filter(filter_fn(move |m| {
        m.is_span() || (m.target().starts_with(ENGINE) && *m.level() <= max)
    }))
}

impl<S> Layer<S> for TraceLogs
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut f = Fields(Map::new());
        attrs.record(&mut f);
        span.extensions_mut().insert(f);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(f) = ext.get_mut::<Fields>() {
            values.record(f);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut args = Map::new();
        let mut node = None;
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                let ext = span.extensions();
                let Some(Fields(f)) = ext.get::<Fields>() else {
                    continue;
                };
                if span.metadata().target().starts_with(ENGINE) {
                    args.extend(f.iter().map(|(k, v)| (k.clone(), v.clone())));
                } else if span.name() == "node" {
                    // madsim's span of the node the task runs on: `name` is the host's name.
                    node = f.get("name").and_then(Value::as_str).map(str::to_string);
                }
            }
        }
        let mut own = Fields(Map::new());
        event.record(&mut own);
        args.extend(own.0);
        args.insert("target".into(), event.metadata().target().into());
        let node = node
            .or_else(|| args.get("node").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| "sim".into());
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        self.trace
            .record(now_ms(), &node, "log", &level, Value::Object(args));
    }
}

/// The trace's clock (0 outside a runtime).
fn now_ms() -> u64 {
    madsim::time::TimeHandle::try_current().map_or(0, |t| t.elapsed().as_millis() as u64)
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use madsim::runtime::Runtime;
    use std::time::Duration;

    /// Installed before the runtime exists, as `run_seed` does, so madsim's node spans are seen.
    #[test]
    fn an_engine_event_in_a_step_span_lands_with_its_fields_node_and_time() {
        let trace = Trace::new();
        let sub = tracing_subscriber::registry().with(layer(trace.clone(), Level::INFO));
        let _guard = tracing::subscriber::set_default(sub);
        let rt = Runtime::with_seed_and_config(1, madsim::Config::default());
        rt.block_on(async {
            let node = madsim::runtime::Handle::current()
                .create_node()
                .name("engine-3")
                .build();
            node.spawn(async {
                madsim::time::sleep(Duration::from_millis(1500)).await;
                let span = tracing::info_span!(target: "dalp_engine::engine", "step",
                    workflow_id = 42i64, kind = "mint", step = "mint", attempt = 2u32);
                span.in_scope(|| {
                    tracing::warn!(target: "dalp_engine::engine", error = %"boom", "step failed");
                    // Below the level, and not the engine's: neither is recorded.
                    tracing::debug!(target: "dalp_engine::engine", "detail");
                    tracing::warn!(target: "madsim::net", "not the engine");
                });
            })
            .await
            .unwrap();
        });
        let logs = trace.of_cat("log");
        assert_eq!(logs.len(), 1, "{logs:?}");
        let e = &logs[0];
        assert_eq!((e.node.as_str(), e.name.as_str()), ("engine-3", "warn"));
        assert!((1500..1600).contains(&e.t_ms), "simulated time: {}", e.t_ms);
        assert_eq!(e.args["workflow_id"], 42);
        assert_eq!(e.args["kind"], "mint");
        assert_eq!(e.args["step"], "mint");
        assert_eq!(e.args["attempt"], 2);
        assert_eq!(e.args["error"], "boom");
        assert_eq!(e.args["message"], "step failed");
        assert_eq!(e.args["target"], "dalp_engine::engine");
    }
}
