//! `dalp-sim verify`: check an audit bundle against its manifest and signature.

use crate::bundle::manifest;
use clap::Args;
use std::path::PathBuf;

/// Check an audit bundle: every file's SHA-256, no file missing or extra, and the signature
///
/// Exit 0 when everything matches, 1 naming the first file that does not, 2 on bad input.
#[derive(Debug, Args)]
pub(super) struct VerifyArgs {
    /// The bundle (a `run --out` or `report --bundle` directory)
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// The ed25519 public key (hex or raw) the manifest must be signed with
    #[arg(long, value_name = "FILE")]
    public_key: Option<PathBuf>,
}

/// `Ok(false)` on the first mismatch (said on stderr).
pub(super) fn verify(a: &VerifyArgs) -> Result<bool, String> {
    if !a.dir.is_dir() {
        return Err(format!("{}: not a directory", a.dir.display()));
    }
    let trusted = a
        .public_key
        .as_deref()
        .map(manifest::public_key)
        .transpose()?;
    match manifest::verify(&a.dir, trusted.as_ref()) {
        Ok(v) => {
            eprintln!(
                "dalp-sim: verify: {}: {} files match MANIFEST.json; {}",
                a.dir.display(),
                v.files,
                match (&v.signed_by, &trusted) {
                    (Some(k), Some(_)) => format!("signed by the given key {k}"),
                    (Some(k), None) => format!(
                        "signed by key {k} (pass --public-key to require the one you trust)"
                    ),
                    (None, _) => "not signed".into(),
                }
            );
            Ok(true)
        }
        Err(m) => {
            eprintln!("dalp-sim: verify: MISMATCH {m}");
            Ok(false)
        }
    }
}
