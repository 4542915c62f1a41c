//! The audit bundle end to end, through the `dalp-sim` binary: a small run (one passing
//! scenario, one made to fail) leaves a signed bundle that `dalp-sim verify` accepts; one flipped
//! byte in any file, a changed manifest, a tampered signature, a wrong key, a missing or an
//! extra file each make it fail naming the file; `report --bundle` re-assembles one from the
//! results; and the HTML report renders in headless Chromium with its pictures and no console
//! message. Chromium missing is a failure (`cargo xtask setup` installs it), never a skip.

use ed25519_dalek::SigningKey;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

mod common;
use common::{dalp_sim, root, tempdir};

const SECRET: [u8; 32] = [7; 32];

struct Made {
    bundle: PathBuf,
    key: PathBuf,
    public: PathBuf,
    wrong_public: PathBuf,
}

/// One run for every test: engine-crash seed 1 (passes) and a copy of step-exhausted without
/// its operator requeues (its dead letters stay: `durability` fails, so there is a failing run
/// with a timeline and traces).
fn made() -> &'static Made {
    static MADE: OnceLock<Made> = OnceLock::new();
    MADE.get_or_init(|| {
        let d = tempdir("made");
        let text = std::fs::read_to_string(root().join("scenarios/step-exhausted.toml")).unwrap();
        let cut = text.find("[[faults]]").expect("step-exhausted has faults");
        let failing = d.join("exhausted-unrequeued.toml");
        std::fs::write(
            &failing,
            text[..cut].replace(
                "name = \"step-exhausted\"",
                "name = \"exhausted-unrequeued\"",
            ) + "\n[expect]\nmax_dead_letters = 0\n",
        )
        .unwrap();
        let key = d.join("signing.key");
        std::fs::write(&key, hex(&SECRET)).unwrap();
        let public = d.join("signing.pub");
        std::fs::write(
            &public,
            hex(SigningKey::from_bytes(&SECRET).verifying_key().as_bytes()),
        )
        .unwrap();
        let wrong_public = d.join("other.pub");
        std::fs::write(
            &wrong_public,
            hex(SigningKey::from_bytes(&[9; 32]).verifying_key().as_bytes()),
        )
        .unwrap();
        let bundle = d.join("bundle");
        let o = dalp_sim(&[
            "run",
            "engine-crash",
            failing.to_str().unwrap(),
            "--seeds",
            "1",
            "--out",
            bundle.to_str().unwrap(),
            "--signing-key",
            key.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "one run fails by design: {err}");
        assert!(err.contains("exhausted-unrequeued seed 1"), "{err}");
        assert!(
            err.contains("MANIFEST.json") && err.contains("signed"),
            "{err}"
        );
        Made {
            bundle,
            key,
            public,
            wrong_public,
        }
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn verify(dir: &Path, public: Option<&Path>) -> (Option<i32>, String) {
    let mut args = vec!["verify", dir.to_str().unwrap()];
    if let Some(p) = public {
        args.extend(["--public-key", p.to_str().unwrap()]);
    }
    let o = dalp_sim(&args);
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

fn manifest_paths(dir: &Path) -> Vec<String> {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("MANIFEST.json")).unwrap()).unwrap();
    m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn a_fresh_bundle_verifies_and_any_flipped_byte_names_its_file() {
    let m = made();
    let dir = tempdir("flip");
    copy_dir(&m.bundle, &dir);
    let (code, err) = verify(&dir, Some(&m.public));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("signed by the given key"), "{err}");
    let paths = manifest_paths(&dir);
    for must in [
        "results.json",
        "report.html",
        "report.md",
        "junit.xml",
        "scenarios/engine-crash.toml",
        "scenarios/exhausted-unrequeued.toml",
    ] {
        assert!(paths.iter().any(|p| p == must), "{must} in {paths:?}");
    }
    assert!(
        paths.iter().any(|p| p.starts_with("traces/")),
        "the failing run's traces: {paths:?}"
    );
    for p in paths.iter().map(String::as_str).chain(["MANIFEST.json"]) {
        let file = dir.join(p);
        let original = std::fs::read(&file).unwrap();
        let mut b = original.clone();
        let i = b.len() / 2;
        b[i] ^= 0x01;
        std::fs::write(&file, &b).unwrap();
        let (code, err) = verify(&dir, None);
        assert_eq!(code, Some(1), "{p} flipped: {err}");
        assert!(
            err.contains(&format!("MISMATCH {p}: ")),
            "{p} flipped: {err}"
        );
        std::fs::write(&file, &original).unwrap();
    }
    assert_eq!(verify(&dir, Some(&m.public)).0, Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn signature_tampering_a_wrong_key_and_missing_or_extra_files_fail() {
    let m = made();
    let dir = tempdir("tamper");
    copy_dir(&m.bundle, &dir);
    let (code, err) = verify(&dir, Some(&m.wrong_public));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("MISMATCH MANIFEST.sig: signed by key"),
        "{err}"
    );
    // Another signature (of other bytes) under the right key.
    let sig_path = dir.join("MANIFEST.sig");
    let sig = std::fs::read_to_string(&sig_path).unwrap();
    let v: serde_json::Value = serde_json::from_str(&sig).unwrap();
    let s = v["signature"].as_str().unwrap();
    let flipped = format!("{}{}", if s.starts_with('0') { "1" } else { "0" }, &s[1..]);
    std::fs::write(&sig_path, sig.replace(s, &flipped)).unwrap();
    let (code, err) = verify(&dir, Some(&m.public));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("MISMATCH MANIFEST.json: does not match its signature"),
        "{err}"
    );
    std::fs::write(&sig_path, &sig).unwrap();
    // Unsigned but a key required.
    std::fs::remove_file(&sig_path).unwrap();
    let (code, err) = verify(&dir, Some(&m.public));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("MISMATCH MANIFEST.sig: missing"), "{err}");
    std::fs::write(&sig_path, &sig).unwrap();
    std::fs::write(dir.join("scenarios/extra.toml"), "x").unwrap();
    let (code, err) = verify(&dir, None);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("MISMATCH scenarios/extra.toml: not in the manifest"),
        "{err}"
    );
    std::fs::remove_file(dir.join("scenarios/extra.toml")).unwrap();
    std::fs::remove_file(dir.join("junit.xml")).unwrap();
    let (code, err) = verify(&dir, None);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("MISMATCH junit.xml: missing"), "{err}");
    // Bad input is exit 2, naming what is wrong.
    let (code, err) = verify(&dir.join("nowhere"), None);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not a directory"), "{err}");
    let _ = &m.key;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn report_bundle_reassembles_a_verifiable_bundle_from_results() {
    let m = made();
    let out = tempdir("report").join("b");
    let o = dalp_sim(&[
        "report",
        m.bundle.join("results.json").to_str().unwrap(),
        "--bundle",
        out.to_str().unwrap(),
        "--signing-key",
        m.key.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "a merged run failed: {err}");
    let (code, err) = verify(&out, Some(&m.public));
    assert_eq!(code, Some(0), "{err}");
    let paths = manifest_paths(&out);
    assert!(
        paths.iter().any(|p| p == "scenarios/engine-crash.toml")
            && paths.iter().any(|p| p.starts_with("traces/")),
        "{paths:?}"
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for section in [
        "## Provenance",
        "## Promises against measurements",
        "## Checker sensitivity (planted bugs)",
        "## Scenario files",
    ] {
        assert!(md.contains(section), "{section}");
    }
    std::fs::remove_dir_all(out.parent().unwrap()).unwrap();
}

/// `chromium`, or a failure saying how to get it.
fn chromium() -> &'static str {
    let found = Command::new("sh")
        .args(["-c", "command -v chromium"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "chromium is not installed: `cargo xtask setup` installs Debian's chromium (the report's browser test needs it)"
    );
    "chromium"
}

fn headless(args: &[&str]) -> Output {
    Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .args(args)
        .output()
        .expect("run chromium")
}

#[test]
fn the_html_report_renders_in_headless_chromium_with_its_pictures() {
    let m = made();
    let url = format!("file://{}", m.bundle.join("report.html").display());
    let o = headless(&["--dump-dom", &url]);
    let dom = String::from_utf8_lossy(&o.stdout);
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "chromium failed: {log}");
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    // The whole page was parsed, with each picture as an SVG element with content.
    assert!(dom.contains("dalp-sim audit report") && dom.contains("Scenario files"));
    let svgs = dom.matches("<svg ").count();
    assert!(
        svgs >= 3,
        "recovery, timeline and coverage pictures: {svgs}"
    );
    for caption in [
        "recovery time per catalog id across seeds",
        "exhausted-unrequeued seed 1: timeline",
        "engine probe coverage matrix",
    ] {
        assert!(dom.contains(caption), "{caption}");
    }
    assert!(dom.contains("<circle"), "the recovery picture's points");
    let shot = tempdir("shot").join("report.png");
    let o = headless(&[
        "--hide-scrollbars",
        "--window-size=1280,2400",
        &format!("--screenshot={}", shot.display()),
        &url,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    std::fs::remove_dir_all(shot.parent().unwrap()).unwrap();
}
