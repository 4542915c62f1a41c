//! Probes and fault points cost nothing in production: the plain `dalp-engine` binary carries
//! none of their names, nor the crash message (they compile to a `const` check only).

#[test]
fn the_production_binary_contains_no_probe_or_fault_point() {
    let bin = env!("CARGO_BIN_EXE_dalp-engine");
    let bytes = std::fs::read(bin).expect("the dalp-engine binary");
    // The binary's printable runs (as `strings` finds them), searched as text: fast.
    let text: String = bytes
        .split(|b| !(b.is_ascii_graphic() || *b == b' '))
        .filter(|run| run.len() >= 4)
        .map(|run| std::str::from_utf8(run).expect("ASCII").to_string() + "\n")
        .collect();
    let contains = |needle: &[u8]| text.contains(std::str::from_utf8(needle).expect("ASCII"));
    // The check itself must be able to fail: a string the binary does carry is found.
    assert!(
        contains(b"dalp_rpc_failovers_total"),
        "the search finds nothing at all"
    );
    let mut found = Vec::new();
    for p in dalp_engine::probe::PROBES {
        if contains(p.name.as_bytes()) {
            found.push(p.name);
        }
    }
    assert!(
        !contains(dalp_engine::probe::CRASH_MESSAGE.as_bytes()),
        "the fault points' crash message is in {bin}"
    );
    assert!(found.is_empty(), "{bin} carries probe names: {found:?}");
}
