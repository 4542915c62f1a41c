//! `MANIFEST.json`: the SHA-256 and size of every file of a bundle directory, and
//! `MANIFEST.sig`, an optional ed25519 signature over the manifest's bytes. [`verify`] checks
//! both; a changed, missing or extra file is a mismatch that names the file.

use crate::provenance::sha256_file;
use alloy_primitives::hex;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const MANIFEST: &str = "MANIFEST.json";
pub const SIGNATURE: &str = "MANIFEST.sig";
pub const SCHEMA: &str = "dalp-sim/manifest/v1";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: String,
    /// Every file of the bundle but the manifest and its signature, sorted by path.
    pub files: Vec<Entry>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Relative to the bundle, `/`-separated.
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

/// `MANIFEST.sig`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    pub algorithm: String,
    /// The signer's ed25519 public key, hex (check it against the one you trust:
    /// `dalp-sim verify --public-key`).
    pub public_key: String,
    /// Over the bytes of `MANIFEST.json`, hex.
    pub signature: String,
}

/// What [`verify`] found good.
#[derive(Debug, PartialEq)]
pub struct Verified {
    pub files: usize,
    /// The public key the manifest is signed with, if it is.
    pub signed_by: Option<String>,
}

/// Why a bundle does not verify: the first file that does not match, and how.
#[derive(Debug, PartialEq)]
pub struct Mismatch {
    pub file: String,
    pub reason: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}: {}", self.file, self.reason)
    }
}

fn mismatch(file: &str, reason: impl Into<String>) -> Mismatch {
    Mismatch {
        file: file.into(),
        reason: reason.into(),
    }
}

/// Every regular file under `dir` but the manifest and its signature, as sorted relative
/// `/`-paths. A symbolic link or other special file is an error: a bundle holds plain files.
pub fn files(dir: &Path) -> Result<Vec<String>, String> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<String>) -> Result<(), String> {
        let here = root.join(rel);
        let entries = std::fs::read_dir(&here).map_err(|e| format!("{}: {e}", here.display()))?;
        for e in entries {
            let e = e.map_err(|e| format!("{}: {e}", here.display()))?;
            let ty = e
                .file_type()
                .map_err(|err| format!("{}: {err}", e.path().display()))?;
            let rel = rel.join(e.file_name());
            let name = rel
                .to_str()
                .ok_or_else(|| format!("{}: not a UTF-8 path", rel.display()))?
                .replace(std::path::MAIN_SEPARATOR, "/");
            if ty.is_dir() {
                walk(root, &rel, out)?;
            } else if ty.is_file() {
                if name != MANIFEST && name != SIGNATURE {
                    out.push(name);
                }
            } else {
                return Err(format!("{name}: not a regular file"));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, &PathBuf::new(), &mut out)?;
    out.sort();
    Ok(out)
}

/// Hash every file of `dir` into `MANIFEST.json` and, with a key, sign it into `MANIFEST.sig`
/// (without one, a signature left from before is removed: it would not match).
pub fn write(dir: &Path, key: Option<&SigningKey>) -> Result<Manifest, String> {
    let manifest = Manifest {
        schema: SCHEMA.into(),
        files: files(dir)?
            .into_iter()
            .map(|path| {
                let p = dir.join(&path);
                let bytes = std::fs::metadata(&p)
                    .map_err(|e| format!("{}: {e}", p.display()))?
                    .len();
                let sha256 = sha256_file(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                Ok(Entry {
                    path,
                    sha256,
                    bytes,
                })
            })
            .collect::<Result<_, String>>()?,
    };
    let text = serde_json::to_string_pretty(&manifest).expect("manifest json") + "\n";
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        crate::trace::write_atomic(&p, bytes).map_err(|e| format!("{}: {e}", p.display()))
    };
    write(MANIFEST, text.as_bytes())?;
    match key {
        Some(k) => {
            let sig = SignatureFile {
                algorithm: "ed25519".into(),
                public_key: hex::encode(k.verifying_key().as_bytes()),
                signature: hex::encode(k.sign(text.as_bytes()).to_bytes()),
            };
            let sig = serde_json::to_string_pretty(&sig).expect("signature json") + "\n";
            write(SIGNATURE, sig.as_bytes())?;
        }
        None => match std::fs::remove_file(dir.join(SIGNATURE)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", dir.join(SIGNATURE).display())),
        },
    }
    Ok(manifest)
}

/// Check `dir` against its manifest: the signature first (when there is one, or when `trusted`
/// is given, which it must match), then every listed file's size and hash, then that no file is
/// unlisted. The error is the first mismatch (an unreadable manifest is one).
pub fn verify(dir: &Path, trusted: Option<&VerifyingKey>) -> Result<Verified, Mismatch> {
    let text = std::fs::read(dir.join(MANIFEST))
        .map_err(|e| mismatch(MANIFEST, format!("cannot be read: {e}")))?;
    let signed_by = match std::fs::read(dir.join(SIGNATURE)) {
        Ok(sig) => Some(check_signature(&text, &sig, trusted)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if trusted.is_some() {
                return Err(mismatch(
                    SIGNATURE,
                    "missing, but a public key was given: the bundle is not signed",
                ));
            }
            None
        }
        Err(e) => return Err(mismatch(SIGNATURE, format!("cannot be read: {e}"))),
    };
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| mismatch(MANIFEST, format!("not a manifest: {e}")))?;
    if manifest.schema != SCHEMA {
        return Err(mismatch(
            MANIFEST,
            format!("schema {:?}, expected {SCHEMA:?}", manifest.schema),
        ));
    }
    for e in &manifest.files {
        if e.path.split('/').any(|c| c == ".." || c.is_empty()) || e.path.starts_with('/') {
            return Err(mismatch(&e.path, "not a path inside the bundle"));
        }
        let p = dir.join(&e.path);
        let len = match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => return Err(mismatch(&e.path, "not a regular file")),
            Err(_) => return Err(mismatch(&e.path, "missing")),
        };
        if len != e.bytes {
            return Err(mismatch(
                &e.path,
                format!("{len} bytes, the manifest says {}", e.bytes),
            ));
        }
        let got = sha256_file(&p).map_err(|err| mismatch(&e.path, err.to_string()))?;
        if got != e.sha256 {
            return Err(mismatch(
                &e.path,
                format!("SHA-256 {got}, the manifest says {}", e.sha256),
            ));
        }
    }
    let listed: std::collections::BTreeSet<&str> =
        manifest.files.iter().map(|e| e.path.as_str()).collect();
    let present = files(dir).map_err(|e| mismatch(".", e))?;
    if let Some(extra) = present.iter().find(|p| !listed.contains(p.as_str())) {
        return Err(mismatch(extra, "not in the manifest"));
    }
    Ok(Verified {
        files: manifest.files.len(),
        signed_by,
    })
}

/// The signer's public key (hex) when `sig` is a valid signature of `manifest` (by `trusted`
/// when given).
fn check_signature(
    manifest: &[u8],
    sig: &[u8],
    trusted: Option<&VerifyingKey>,
) -> Result<String, Mismatch> {
    let s: SignatureFile = serde_json::from_slice(sig)
        .map_err(|e| mismatch(SIGNATURE, format!("not a signature file: {e}")))?;
    if s.algorithm != "ed25519" {
        return Err(mismatch(
            SIGNATURE,
            format!("algorithm {:?}, expected \"ed25519\"", s.algorithm),
        ));
    }
    let key = parse_public_key(&s.public_key).map_err(|e| mismatch(SIGNATURE, e))?;
    if let Some(t) = trusted {
        if t != &key {
            return Err(mismatch(
                SIGNATURE,
                format!(
                    "signed by key {}, not by the given public key {}",
                    s.public_key,
                    hex::encode(t.as_bytes())
                ),
            ));
        }
    }
    let bytes: [u8; 64] = hex::decode(s.signature.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| mismatch(SIGNATURE, "signature: not 64 bytes of hex"))?;
    key.verify(manifest, &Signature::from_bytes(&bytes))
        .map_err(|_| {
            mismatch(
                MANIFEST,
                "does not match its signature (MANIFEST.sig): the manifest or the signature was changed",
            )
        })?;
    Ok(s.public_key)
}

/// 32 bytes as 64 hex digits (optionally `0x`), or the 32 raw bytes of a key file.
fn key_bytes(raw: &[u8], what: &str) -> Result<[u8; 32], String> {
    if let Ok(text) = std::str::from_utf8(raw) {
        let t = text.trim();
        let t = t.strip_prefix("0x").unwrap_or(t);
        if t.len() == 64 {
            if let Ok(b) = hex::decode(t) {
                return Ok(b.try_into().expect("32 bytes"));
            }
        }
    }
    raw.try_into()
        .map_err(|_| format!("{what}: not an ed25519 key (expected 64 hex digits or 32 raw bytes)"))
}

fn parse_public_key(hex_text: &str) -> Result<VerifyingKey, String> {
    let b = key_bytes(hex_text.as_bytes(), "public_key")?;
    VerifyingKey::from_bytes(&b).map_err(|e| format!("public_key: not a valid ed25519 key: {e}"))
}

/// The signing key in `path` (its 32-byte secret as hex or raw).
pub fn signing_key(path: &Path) -> Result<SigningKey, String> {
    let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(SigningKey::from_bytes(&key_bytes(
        &raw,
        &path.display().to_string(),
    )?))
}

/// The public key in `path` (hex or raw).
pub fn public_key(path: &Path) -> Result<VerifyingKey, String> {
    let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let b = key_bytes(&raw, &path.display().to_string())?;
    VerifyingKey::from_bytes(&b)
        .map_err(|e| format!("{}: not a valid ed25519 public key: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dalp-manifest-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("traces")).unwrap();
        std::fs::write(d.join("a.txt"), "alpha").unwrap();
        std::fs::write(d.join("traces/t.jsonl"), "{}\n").unwrap();
        d
    }

    fn flip(p: &Path) {
        let mut b = std::fs::read(p).unwrap();
        let i = b.len() / 2;
        b[i] ^= 1;
        std::fs::write(p, b).unwrap();
    }

    #[test]
    fn a_written_bundle_verifies_and_any_change_names_the_file() {
        let d = scratch("plain");
        let m = write(&d, None).unwrap();
        assert_eq!(
            m.files.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
            ["a.txt", "traces/t.jsonl"]
        );
        assert_eq!(verify(&d, None).unwrap().files, 2);
        flip(&d.join("traces/t.jsonl"));
        assert_eq!(verify(&d, None).unwrap_err().file, "traces/t.jsonl");
        write(&d, None).unwrap();
        std::fs::write(d.join("extra"), "x").unwrap();
        let e = verify(&d, None).unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.reason.as_str()),
            ("extra", "not in the manifest")
        );
        std::fs::remove_file(d.join("extra")).unwrap();
        std::fs::remove_file(d.join("a.txt")).unwrap();
        assert_eq!(verify(&d, None).unwrap_err().file, "a.txt");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn signatures_bind_the_manifest_to_the_key() {
        let d = scratch("signed");
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        write(&d, Some(&key)).unwrap();
        let pk = key.verifying_key();
        let v = verify(&d, Some(&pk)).unwrap();
        assert_eq!(v.signed_by, Some(hex::encode(pk.as_bytes())));
        let e = verify(&d, Some(&other.verifying_key())).unwrap_err();
        assert_eq!(e.file, SIGNATURE);
        assert!(e.reason.contains("not by the given public key"), "{e}");
        // The manifest changed (say, a hash made to fit a changed file): the signature fails.
        let text = std::fs::read_to_string(d.join(MANIFEST)).unwrap();
        std::fs::write(
            d.join(MANIFEST),
            text.replace("\"bytes\": 5", "\"bytes\": 6"),
        )
        .unwrap();
        assert_eq!(verify(&d, None).unwrap_err().file, MANIFEST);
        // Unsigned, with a trusted key asked for: a mismatch.
        write(&d, None).unwrap();
        assert!(!d.join(SIGNATURE).exists());
        assert_eq!(verify(&d, Some(&pk)).unwrap_err().file, SIGNATURE);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn keys_read_as_hex_or_raw_and_bad_ones_are_named() {
        let d = scratch("keys");
        let p = d.join("k");
        std::fs::write(&p, format!("0x{}\n", "11".repeat(32))).unwrap();
        let hex_key = signing_key(&p).unwrap();
        std::fs::write(&p, [0x11u8; 32]).unwrap();
        assert_eq!(signing_key(&p).unwrap().to_bytes(), hex_key.to_bytes());
        std::fs::write(&p, "short").unwrap();
        let e = signing_key(&p).unwrap_err();
        assert!(e.contains("not an ed25519 key") && e.contains('k'), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
