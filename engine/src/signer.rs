//! Signer keys and transaction signing (alloy's local signer, EIP-1559 envelopes).
//!
//! A key's `Debug`/`Display` print only its address: private keys never reach logs, errors or
//! API responses.

use crate::error::{EngineError, Result};
use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy_eips::eip2718::Encodable2718;
use alloy_primitives::{Address, Bytes, TxKind, B256, U256};
use alloy_signer::SignerSync;
use alloy_signer_local::PrivateKeySigner;
use serde::{Deserialize, Deserializer};
use std::fmt;

#[derive(Clone)]
pub struct SignerKey {
    signer: PrivateKeySigner,
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
        Ok(SignerKey { signer })
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
        let sig = self
            .signer
            .sign_hash_sync(&inner.signature_hash())
            .map_err(|e| EngineError::Internal(format!("signing failed: {e}")))?;
        let envelope: TxEnvelope = inner.into_signed(sig).into();
        let hash = *envelope.tx_hash();
        Ok((Bytes::from(envelope.encoded_2718()), hash))
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
}
