//! Signer keys and transaction signing (EIP-1559 envelopes, alloy's types and encoding).
//!
//! The signature itself is made with libsecp256k1 (the `secp256k1` crate, as reth and Bitcoin
//! Core sign), not with alloy's local signer (k256): the same RFC 6979 signature, at a fraction
//! of the cost (k256's fixed-base multiplication and constant-time inversion were ~650 k
//! instructions per signature, 6.6% of a simulated `steady-state` seed: issue 13's note). The
//! tests check every signature against alloy's signer. alloy's signer still parses the key and
//! derives the address.
//!
//! A key's `Debug`/`Display` print only its address: private keys never reach logs, errors or
//! API responses.

use crate::error::{EngineError, Result};
use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy_eips::eip2718::Encodable2718;
use alloy_primitives::Signature;
use alloy_primitives::{Address, Bytes, TxKind, B256, U256};
use alloy_signer_local::PrivateKeySigner;
use secp256k1::{Message, Secp256k1, SecretKey, SignOnly};
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::sync::LazyLock;

/// A signing context, built once. Never randomized: blinding would not change an RFC 6979
/// signature, and the simulation allows no randomness but its own.
static CONTEXT: LazyLock<Secp256k1<SignOnly>> = LazyLock::new(Secp256k1::signing_only);

#[derive(Clone)]
pub struct SignerKey {
    signer: PrivateKeySigner,
    secret: SecretKey,
}

impl SignerKey {
    pub fn from_hex(hex: &str) -> Result<Self> {
        let signer: PrivateKeySigner = hex
            .trim()
            .parse()
            // The parse error may echo the input: do not include it.
            .map_err(|_| {
                EngineError::Invalid("signer key is not a 32-byte hex private key".into())
            })?;
        let secret = SecretKey::from_byte_array(signer.to_bytes().0)
            .map_err(|_| EngineError::Invalid("signer key is not a valid secp256k1 key".into()))?;
        Ok(SignerKey { signer, secret })
    }

    pub fn address(&self) -> Address {
        self.signer.address()
    }

    /// Sign an EIP-1559 transaction; returns the raw EIP-2718 bytes and the transaction hash.
    pub fn sign(&self, tx: &UnsignedTx) -> Result<(Bytes, B256)> {
        let inner = TxEip1559 {
            chain_id: tx.chain_id,
            nonce: tx.nonce,
            gas_limit: tx.gas_limit,
            max_fee_per_gas: tx.max_fee_per_gas,
            max_priority_fee_per_gas: tx.max_priority_fee_per_gas,
            to: match tx.to {
                Some(a) => TxKind::Call(a),
                None => TxKind::Create,
            },
            value: tx.value,
            access_list: Default::default(),
            input: tx.input.clone(),
        };
        let sig = self.sign_hash(&inner.signature_hash());
        let envelope: TxEnvelope = inner.into_signed(sig).into();
        let hash = *envelope.tx_hash();
        Ok((Bytes::from(envelope.encoded_2718()), hash))
    }
}

/// The second copy of the secret (libsecp256k1's) is overwritten when the key is dropped, as
/// k256's own copy is (a best effort: the compiler may have copied it elsewhere).
impl Drop for SignerKey {
    fn drop(&mut self) {
        self.secret.non_secure_erase();
    }
}

impl SignerKey {
    /// RFC 6979 over `hash`, `s` in the lower half (EIP-2), `v` the parity of `R`'s y: what
    /// alloy's signer returns for the same key and hash.
    fn sign_hash(&self, hash: &B256) -> Signature {
        let (id, compact) = CONTEXT
            .sign_ecdsa_recoverable(Message::from_digest(hash.0), &self.secret)
            .serialize_compact();
        let id = i32::from(id);
        assert!(
            id == 0 || id == 1,
            "an x coordinate above the group order: {id}"
        );
        Signature::new(
            U256::from_be_slice(&compact[..32]),
            U256::from_be_slice(&compact[32..]),
            id == 1,
        )
    }
}

/// Everything that goes into a signature; persisted before signing so a retry signs the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsignedTx {
    pub chain_id: u64,
    pub nonce: u64,
    pub gas_limit: u64,
    pub max_fee_per_gas: u128,
    pub max_priority_fee_per_gas: u128,
    pub to: Option<Address>,
    pub value: U256,
    pub input: Bytes,
}

impl fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignerKey({}, <redacted>)", self.address())
    }
}

impl<'de> Deserialize<'de> for SignerKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SignerKey::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Anvil's first default account: a well-known test key.
    const KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

    #[test]
    fn address_and_redaction() {
        let k = SignerKey::from_hex(KEY).unwrap();
        assert_eq!(
            k.address(),
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
                .parse::<Address>()
                .unwrap()
        );
        assert!(!format!("{k:?}").contains(KEY));
        let err = SignerKey::from_hex("0xzz").unwrap_err().to_string();
        assert!(!err.contains("zz"));
    }

    #[test]
    fn signing_is_deterministic_and_hash_matches_bytes() {
        let k = SignerKey::from_hex(KEY).unwrap();
        let tx = UnsignedTx {
            chain_id: 31337,
            nonce: 7,
            gas_limit: 21_000,
            max_fee_per_gas: 2_000_000_000,
            max_priority_fee_per_gas: 1_000_000_000,
            to: Some(Address::ZERO),
            value: U256::from(1),
            input: Bytes::new(),
        };
        let (raw1, h1) = k.sign(&tx).unwrap();
        let (raw2, h2) = k.sign(&tx).unwrap();
        assert_eq!(
            (raw1.clone(), h1),
            (raw2, h2),
            "RFC 6979 signing must be deterministic"
        );
        assert_eq!(alloy_primitives::keccak256(&raw1), h1);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// The signature alloy's signer (k256) makes for the same key and hash, bit for bit, and
        /// the signed envelope recovers to the key's address.
        #[test]
        fn signs_what_alloys_signer_signs(
            key in proptest::prelude::any::<[u8; 32]>(),
            hash in proptest::prelude::any::<[u8; 32]>(),
            nonce in 0u64..1_000_000,
        ) {
            use alloy_consensus::transaction::SignerRecoverable;
            use alloy_signer::SignerSync;
            let Ok(reference) = PrivateKeySigner::from_bytes(&key.into()) else {
                return Ok(()); // zero or above the group order: not a key
            };
            let k = SignerKey::from_hex(&alloy_primitives::hex::encode(key)).expect("a valid key");
            let hash = B256::from(hash);
            proptest::prop_assert_eq!(k.sign_hash(&hash), reference.sign_hash_sync(&hash).unwrap());
            let tx = UnsignedTx {
                chain_id: 31337,
                nonce,
                gas_limit: 21_000,
                max_fee_per_gas: 2_000_000_000,
                max_priority_fee_per_gas: 1_000_000_000,
                to: Some(Address::repeat_byte(7)),
                value: U256::from(nonce),
                input: Bytes::from(hash.to_vec()),
            };
            let (raw, tx_hash) = k.sign(&tx).unwrap();
            let envelope = <TxEnvelope as alloy_eips::eip2718::Decodable2718>::decode_2718(&mut raw.as_ref()).unwrap();
            proptest::prop_assert_eq!(*envelope.tx_hash(), tx_hash);
            proptest::prop_assert_eq!(envelope.recover_signer().unwrap(), reference.address());
        }
    }
}
