//! Swarm testing (TigerBeetle's `options_swarm`): a scenario with a `[swarm]` table is a family
//! of scenarios, one per seed. Each seed draws which fault kinds are on and how often, the
//! topology, the engine's knobs, the workload's mix and size, and whether the engine's fault
//! points are armed. A fixed mix of everything at once spreads every fault thinly; a swarm seed
//! turns most kinds off and the rest up, so combinations nobody scheduled get real weight.
//!
//! The draw is a pure function of (scenario file, seed) and is made where the seed's run starts
//! (the child process, `repro` included), so a seed replays exactly; the drawn options are
//! printed on one line and written to the run's result, so a failing seed explains itself.

use crate::rng::SimRng;
use crate::scenario::{
    EngineKnobs, FaultKind, FaultPoints, Mempool, Mix, RandomFaults, Replication, Scenario,
    Topology,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `[swarm]`: the ranges a seed draws from (inclusive `[low, high]`); defaults span what the
/// simulation models. The scenario's `[topology]`, `[workload]` and `[random]` tables are the
/// base the draw replaces; its `[durations]`, invariants and expectations stay as written.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Swarm {
    /// Fault kinds a seed may turn on (default: every kind a `[random]` table may draw, except
    /// the database failovers and the stale-fork endpoint, which the first swarm did not draw:
    /// adding kinds would redraw every seed, pinned regressions included; `swarm-failover.toml`
    /// names the failovers, and `scenarios/known-failures/rpc-stale-fork.toml` says why no swarm draws
    /// the stale fork yet).
    #[serde(default = "all_drawable")]
    pub kinds: Vec<String>,
    /// Each kind is on for a seed with this probability (at least one always is).
    #[serde(default = "half")]
    pub enable_probability: f64,
    /// Occurrences per simulated minute of a kind that is on.
    #[serde(default = "default_rate")]
    pub rate_per_min: [f64; 2],
    #[serde(default = "default_engines")]
    pub engines: [u32; 2],
    #[serde(default = "default_replicas")]
    pub db_replicas: [u32; 2],
    #[serde(default = "default_endpoints")]
    pub rpc_endpoints: [u32; 2],
    #[serde(default = "default_block_time")]
    pub block_time_ms: [u64; 2],
    #[serde(default = "default_finality")]
    pub finality_depth: [u64; 2],
    #[serde(default = "default_lease")]
    pub lease_ms: [u64; 2],
    #[serde(default = "default_poll")]
    pub poll_ms: [u64; 2],
    #[serde(default = "default_attempts")]
    pub max_attempts: [u32; 2],
    #[serde(default = "default_concurrency")]
    pub concurrency: [u32; 2],
    #[serde(default = "default_clients")]
    pub clients: [u32; 2],
    #[serde(default = "default_tokens")]
    pub tokens: [u32; 2],
    #[serde(default = "default_operations")]
    pub operations: [u32; 2],
    /// The engine's fault points are armed in a seed with this probability.
    #[serde(default = "half")]
    pub fault_points_probability: f64,
}

fn all_drawable() -> Vec<String> {
    FaultKind::drawable_kinds()
        .into_iter()
        .filter(|k| {
            !matches!(
                k,
                FaultKind::DbFailover | FaultKind::DbSwitchover | FaultKind::RpcStaleFork
            )
        })
        .map(|k| k.as_str().to_string())
        .collect()
}
fn half() -> f64 {
    0.5
}
fn default_rate() -> [f64; 2] {
    [0.3, 3.0]
}
fn default_engines() -> [u32; 2] {
    [1, 5]
}
fn default_replicas() -> [u32; 2] {
    [0, 2]
}
fn default_endpoints() -> [u32; 2] {
    [1, 3]
}
fn default_block_time() -> [u64; 2] {
    [500, 3000]
}
fn default_finality() -> [u64; 2] {
    [1, 4]
}
fn default_lease() -> [u64; 2] {
    [3000, 15_000]
}
fn default_poll() -> [u64; 2] {
    [50, 1000]
}
fn default_attempts() -> [u32; 2] {
    [3, 10]
}
fn default_concurrency() -> [u32; 2] {
    [1, 16]
}
fn default_clients() -> [u32; 2] {
    [1, 4]
}
fn default_tokens() -> [u32; 2] {
    [1, 4]
}
fn default_operations() -> [u32; 2] {
    [10, 80]
}

/// What one seed drew: written to the run's result, and `line` printed with it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct SwarmDraw {
    /// Everything below on one line (what a person reads first).
    pub line: String,
    pub topology: Topology,
    pub engine: EngineKnobs,
    pub clients: u32,
    pub tokens: u32,
    pub operations: u32,
    pub submit_window_s: f64,
    pub mix: Mix,
    /// The fault kinds on, with their rates per simulated minute.
    pub rate_per_min: BTreeMap<String, f64>,
    /// `None`: the engine's fault points stay disarmed in this seed.
    pub fault_points: Option<f64>,
    /// The scenario's bound plus the serial work of the drawn workload at the drawn capacity.
    pub liveness_bound_s: f64,
}

impl Swarm {
    /// Field and reason of the first bad range (names relative to `[swarm]`).
    pub fn validate(&self, base: &Scenario) -> Result<(), (String, String)> {
        let bad = |f: &str, r: String| Err((f.to_string(), r));
        if self.kinds.is_empty() {
            return bad("kinds", "at least one fault kind".into());
        }
        for (i, k) in self.kinds.iter().enumerate() {
            if !k.parse::<FaultKind>().is_ok_and(FaultKind::drawable) {
                let known: Vec<&str> = FaultKind::drawable_kinds()
                    .into_iter()
                    .map(FaultKind::as_str)
                    .collect();
                return bad(
                    &format!("kinds[{i}]"),
                    format!(
                        "{k:?} is not a drawable fault kind; known: {}",
                        known.join(", ")
                    ),
                );
            }
        }
        for (f, p) in [
            ("enable_probability", self.enable_probability),
            ("fault_points_probability", self.fault_points_probability),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return bad(f, format!("must be in [0, 1], not {p}"));
            }
        }
        let [lo, hi] = self.rate_per_min;
        if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
            return bad(
                "rate_per_min",
                "must be [low, high] with 0 < low <= high".into(),
            );
        }
        // The fault window needs room inside the fault phase.
        if base.durations.fault_phase_s < 20.0 {
            return Err((
                "(durations.fault_phase_s)".into(),
                "a swarm scenario's fault phase must be at least 20 s".into(),
            ));
        }
        let ranges: [(&str, [u64; 2], [u64; 2]); 12] = [
            ("engines", widen(self.engines), [1, 8]),
            ("db_replicas", widen(self.db_replicas), [0, 3]),
            ("rpc_endpoints", widen(self.rpc_endpoints), [1, 4]),
            ("block_time_ms", self.block_time_ms, [100, 60_000]),
            ("finality_depth", self.finality_depth, [1, 32]),
            ("lease_ms", self.lease_ms, [1000, 600_000]),
            ("poll_ms", self.poll_ms, [10, 60_000]),
            ("max_attempts", widen(self.max_attempts), [1, 100]),
            ("concurrency", widen(self.concurrency), [1, 256]),
            ("clients", widen(self.clients), [1, 16]),
            ("tokens", widen(self.tokens), [1, 100]),
            ("operations", widen(self.operations), [0, 10_000]),
        ];
        for (f, [lo, hi], [min, max]) in ranges {
            if lo > hi || lo < min || hi > max {
                return bad(
                    f,
                    format!("must be [low, high] with {min} <= low <= high <= {max}"),
                );
            }
        }
        Ok(())
    }

    /// The concrete scenario of `seed`: `base` with the drawn topology, engine knobs, workload
    /// and random faults (its `[swarm]` table removed), and what was drawn.
    pub fn draw(&self, base: &Scenario, seed: u64) -> (Scenario, SwarmDraw) {
        let mut rng = SimRng::new(seed).fork("swarm");
        let r = |rng: &mut SimRng, [lo, hi]: [u64; 2]| rng.range(lo, hi);
        let r32 =
            |rng: &mut SimRng, range: [u32; 2]| rng.range(range[0] as u64, range[1] as u64) as u32;

        let replication = if rng.unit() < 0.5 {
            Replication::Sync
        } else {
            Replication::Async
        };
        let finality_depth = r(&mut rng, self.finality_depth);
        let topology = Topology {
            engines: r32(&mut rng, self.engines),
            db_replicas: r32(&mut rng, self.db_replicas),
            replication,
            replication_lag_ms: rng.range(20, 1000),
            rpc_endpoints: r32(&mut rng, self.rpc_endpoints),
            block_time_ms: r(&mut rng, self.block_time_ms),
            finality_depth,
            net_latency_ms: base.topology.net_latency_ms,
            indexers: vec!["engine-0".into()],
            standby_engines: Vec::new(),
            // Its own stream: drawn after the rest existed, it leaves their draws as they were.
            mempool: if SimRng::new(seed).fork("swarm-mempool").unit() < 0.5 {
                Mempool::Anvil
            } else {
                Mempool::Geth
            },
        };
        let engine = EngineKnobs {
            lease_ms: Some(r(&mut rng, self.lease_ms)),
            poll_ms: Some(r(&mut rng, self.poll_ms)),
            max_attempts: Some(r32(&mut rng, self.max_attempts)),
            concurrency: Some(r32(&mut rng, self.concurrency)),
            confirmations: Some(rng.range(1, finality_depth)),
        };

        let fault_phase = base.durations.fault_phase_s;
        let clients = r32(&mut rng, self.clients);
        let tokens = r32(&mut rng, self.tokens);
        let operations = r32(&mut rng, self.operations);
        // Submissions end before the faults do, so every fault meets work in flight.
        let submit_window_s = round_s(10.0 + rng.unit() * (fault_phase - 20.0));
        let weight = |rng: &mut SimRng| round_s(rng.unit() * 3.0);
        let mut mix = Mix {
            mint: weight(&mut rng),
            transfer: weight(&mut rng),
            register_identity: weight(&mut rng),
            blocked_transfer: weight(&mut rng),
            unverified_mint: 0.0,
        };
        if mix.mint + mix.transfer + mix.register_identity + mix.blocked_transfer <= 0.0 {
            mix.mint = 1.0;
        }

        let mut rate_per_min = BTreeMap::new();
        for k in &self.kinds {
            let on = rng.unit() < self.enable_probability;
            let rate =
                self.rate_per_min[0] + rng.unit() * (self.rate_per_min[1] - self.rate_per_min[0]);
            if on {
                rate_per_min.insert(k.clone(), round_s(rate));
            }
        }
        if rate_per_min.is_empty() {
            let k = &self.kinds[rng.range(0, self.kinds.len() as u64 - 1) as usize];
            rate_per_min.insert(k.clone(), self.rate_per_min[1]);
        }
        let fault_points =
            (rng.unit() < self.fault_points_probability).then(|| round_s(0.1 + rng.unit() * 0.4));

        // The liveness bound grows with the work one engine must do serially: every transaction
        // waits for its confirmations, `concurrency` at a time, and crashes may leave one engine.
        // An issuance is about five transactions, every other operation one.
        let confirmations = engine.confirmations.expect("drawn");
        let serial_s = f64::from(operations + 5 * tokens)
            * (confirmations + 1) as f64
            * (topology.block_time_ms as f64 / 1000.0)
            * 1.5
            / f64::from(engine.concurrency.expect("drawn"));
        let liveness_bound_s = (base.durations.liveness_bound_s + serial_s).ceil();

        let mut s = base.clone();
        s.swarm = None;
        s.durations.liveness_bound_s = liveness_bound_s;
        s.topology = topology.clone();
        s.engine = Some(engine.clone());
        s.workload.clients = clients;
        s.workload.tokens = tokens;
        s.workload.operations = operations;
        s.workload.submit_window_s = submit_window_s;
        s.workload.mix = mix.clone();
        s.random = Some(RandomFaults {
            rate_per_min: rate_per_min.clone(),
            window_s: [5.0, fault_phase - 5.0],
            duration_s: base.random.as_ref().map_or([1.0, 8.0], |r| r.duration_s),
        });
        s.fault_points = fault_points.map(|p| FaultPoints {
            enable_probability: p,
            always: Vec::new(),
        });
        let mut draw = SwarmDraw {
            line: String::new(),
            topology,
            engine,
            clients,
            tokens,
            operations,
            submit_window_s,
            mix,
            rate_per_min,
            fault_points,
            liveness_bound_s,
        };
        draw.line = draw.describe();
        (s, draw)
    }
}

impl SwarmDraw {
    fn describe(&self) -> String {
        let t = &self.topology;
        let e = &self.engine;
        let m = &self.mix;
        let replication = match t.replication {
            Replication::Sync => "sync".to_string(),
            Replication::Async => format!("async {} ms", t.replication_lag_ms),
        };
        let faults: Vec<String> = self
            .rate_per_min
            .iter()
            .map(|(k, r)| format!("{k} {r}/min"))
            .collect();
        format!(
            "engines {} · db replicas {} ({replication}) · rpc endpoints {} · block {} ms · finality {} · {:?} mempool · \
             lease {} ms, poll {} ms, confirmations {}, attempts {}, concurrency {} · \
             {} clients, {} tokens, {} operations over {} s (mint {}, transfer {}, identity {}, blocked {}) · \
             faults: {} · fault points: {} · liveness bound {} s",
            t.engines,
            t.db_replicas,
            t.rpc_endpoints,
            t.block_time_ms,
            t.finality_depth,
            t.mempool,
            e.lease_ms.unwrap_or_default(),
            e.poll_ms.unwrap_or_default(),
            e.confirmations.unwrap_or_default(),
            e.max_attempts.unwrap_or_default(),
            e.concurrency.unwrap_or_default(),
            self.clients,
            self.tokens,
            self.operations,
            self.submit_window_s,
            m.mint,
            m.transfer,
            m.register_identity,
            m.blocked_transfer,
            faults.join(", "),
            self.fault_points
                .map_or("off".to_string(), |p| format!("each enabled with p={p}")),
            self.liveness_bound_s,
        )
    }
}

fn widen([lo, hi]: [u32; 2]) -> [u64; 2] {
    [lo as u64, hi as u64]
}

/// Millisecond resolution: drawn figures stay readable and exact through JSON.
fn round_s(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use crate::scenario::Scenario;

    const SWARM: &str = r#"
name = "swarm-test"
description = "t"
[topology]
engines = 2
rpc_endpoints = 1
[workload]
tokens = 1
operations = 5
submit_window_s = 10
[durations]
fault_phase_s = 60
liveness_bound_s = 100
[swarm]
"#;

    #[test]
    fn a_seed_draws_a_valid_scenario_and_the_same_one_every_time() {
        let base = Scenario::parse(SWARM, "swarm.toml").unwrap();
        let mut kinds = std::collections::BTreeSet::new();
        let mut engines = std::collections::BTreeSet::new();
        for seed in 1..200 {
            let (s, d) = base.for_seed(seed);
            let d = d.expect("a swarm scenario draws");
            assert_eq!(
                base.for_seed(seed).0,
                s,
                "seed {seed} draws the same scenario"
            );
            assert!(s.swarm.is_none());
            s.validate("drawn")
                .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{}", d.line));
            assert!(!d.rate_per_min.is_empty());
            kinds.extend(d.rate_per_min.keys().cloned());
            engines.insert(s.topology.engines);
            assert!(d.line.contains("faults:"));
        }
        // Over many seeds every default kind (all drawable ones but three) and every
        // engine count comes up.
        assert_eq!(kinds.len(), super::all_drawable().len());
        assert_eq!(
            super::all_drawable().len(),
            crate::scenario::FaultKind::drawable_kinds().len() - 3
        );
        assert_eq!(engines.len(), 5);
        assert_ne!(base.for_seed(1).0, base.for_seed(2).0);
    }

    #[test]
    fn a_scenario_without_swarm_is_its_own_draw() {
        let plain = SWARM.replace("[swarm]\n", "");
        let s = Scenario::parse(&plain, "plain.toml").unwrap();
        let (same, d) = s.for_seed(7);
        assert_eq!((same, d), (s, None));
    }

    #[test]
    fn bad_swarm_ranges_name_the_field() {
        for (extra, field) in [
            ("engines = [3, 1]", "swarm.engines"),
            ("engines = [0, 3]", "swarm.engines"),
            ("kinds = [\"operator_requeue\"]", "swarm.kinds[0]"),
            ("kinds = []", "swarm.kinds"),
            ("enable_probability = 1.5", "swarm.enable_probability"),
            ("rate_per_min = [0, 1]", "swarm.rate_per_min"),
        ] {
            let text = format!("{SWARM}{extra}\n");
            let e = Scenario::parse(&text, "swarm.toml").unwrap_err();
            assert_eq!(e.field, field, "{extra}: {e}");
        }
    }
}
