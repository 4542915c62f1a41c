//! The sender of a signed transaction, as a node recovers it.
//!
//! With libsecp256k1 (the `secp256k1` crate), as geth and reth recover senders: on
//! `steady-state` the RustCrypto recovery (k256's `lincomb`, ~1.2 M instructions per sender)
//! was a tenth of the simulation's instructions, libsecp256k1's a small fraction of that
//! (issue 13's note). Only the key is recovered: `alloy`'s `recover_signer` also verifies the
//! signature against it, which cannot fail for a key recovered from that same signature. Same
//! rules as a node: `r` and `s` in range and non-zero, `s` in the lower half (EIP-2), `v` the
//! parity of `R`'s y. The tests check it against alloy's recovery.

use alloy_primitives::{Address, Signature, B256, U256};
use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use secp256k1::{Message, Secp256k1, VerifyOnly};
use std::sync::LazyLock;

/// The order of secp256k1's group.
const N: U256 = U256::from_be_bytes(alloy_primitives::hex!(
    "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141"
));

/// A verification context: built once (it holds no secret and no randomness).
static CONTEXT: LazyLock<Secp256k1<VerifyOnly>> = LazyLock::new(Secp256k1::verification_only);

/// The address whose key made `sig` over `prehash`; `None` where a node rejects the signature.
pub(crate) fn recover_sender(sig: &Signature, prehash: &B256) -> Option<Address> {
    let (r, s) = (sig.r(), sig.s());
    if r.is_zero() || r >= N || s.is_zero() || s > N >> 1 {
        return None;
    }
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(&r.to_be_bytes::<32>());
    compact[32..].copy_from_slice(&s.to_be_bytes::<32>());
    let id = RecoveryId::from_u8_masked(u8::from(sig.v()));
    let sig = RecoverableSignature::from_compact(&compact, id).ok()?;
    let key = CONTEXT
        .recover_ecdsa(Message::from_digest(prehash.0), &sig)
        .ok()?;
    Some(Address::from_raw_public_key(
        &key.serialize_uncompressed()[1..],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::{keccak256, U256};
    use alloy_signer::SignerSync;
    use alloy_signer_local::PrivateKeySigner;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The same sender as alloy's recovery for any key and message, and a tampered signature
        /// gives another sender or none, never the signer.
        #[test]
        fn recovers_what_alloy_recovers(key in 1u64..u64::MAX, msg in any::<[u8; 32]>(), bit in 0usize..256) {
            let mut secret = [0u8; 32];
            secret[24..].copy_from_slice(&key.to_be_bytes());
            secret[0] = 0x42;
            let signer = PrivateKeySigner::from_bytes(&secret.into()).expect("a valid key");
            let hash = keccak256(msg);
            let sig = signer.sign_hash_sync(&hash).expect("signs");
            prop_assert_eq!(recover_sender(&sig, &hash), Some(signer.address()));
            prop_assert_eq!(sig.recover_address_from_prehash(&hash).ok(), Some(signer.address()));
            let flipped = sig.s() ^ (U256::from(1) << bit);
            let tampered = Signature::new(sig.r(), flipped, sig.v());
            let ours = recover_sender(&tampered, &hash);
            prop_assert_ne!(ours, Some(signer.address()));
            if let Ok(theirs) = tampered.recover_address_from_prehash(&hash) {
                // alloy does not apply EIP-2 here; where it recovers at all, ours agrees or
                // refuses a high `s`.
                prop_assert!(ours.is_none_or(|a| a == theirs));
            }
        }
    }

    /// A node's refusals: high `s` (EIP-2), zero `r` or `s`, an `r` that is no curve point's x.
    #[test]
    fn refuses_what_a_node_refuses() {
        let signer = PrivateKeySigner::from_bytes(&[7u8; 32].into()).expect("a valid key");
        let hash = keccak256(b"x");
        let sig = signer.sign_hash_sync(&hash).expect("signs");
        let n = U256::from_be_bytes(alloy_primitives::hex!(
            "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141"
        ));
        let high = Signature::new(sig.r(), n - sig.s(), !sig.v());
        assert_eq!(recover_sender(&high, &hash), None);
        assert_eq!(
            recover_sender(&Signature::new(U256::ZERO, sig.s(), sig.v()), &hash),
            None
        );
        assert_eq!(
            recover_sender(&Signature::new(sig.r(), U256::ZERO, sig.v()), &hash),
            None
        );
        // x = 5 is not on secp256k1 (5^3 + 7 = 132 is not a square mod p).
        assert_eq!(
            recover_sender(&Signature::new(U256::from(5), sig.s(), sig.v()), &hash),
            None
        );
    }
}
