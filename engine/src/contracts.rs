//! The fixture contract, bound through alloy's `sol!` from the committed, solc-built artifact
//! (`fixtures/contracts/build.sh` rebuilds it with the pinned compiler).

use alloy_primitives::{Bytes, U256};
use alloy_sol_types::{sol, SolConstructor};

sol!(
    #[derive(Debug, PartialEq, Eq)]
    AssetToken,
    "../fixtures/contracts/out/AssetToken.abi.json"
);

const BYTECODE_HEX: &str = include_str!("../../fixtures/contracts/out/AssetToken.bin");

/// Creation code of `AssetToken` followed by its ABI-encoded constructor arguments.
pub fn asset_token_deploy_code(name: &str, symbol: &str, decimals: u8) -> Bytes {
    let mut code =
        alloy_primitives::hex::decode(BYTECODE_HEX.trim()).expect("committed artifact is hex");
    assert!(
        !code.is_empty(),
        "the committed AssetToken artifact is empty"
    );
    let args = AssetToken::constructorCall {
        name_: name.to_string(),
        symbol_: symbol.to_string(),
        decimals_: decimals,
    };
    code.extend(args.abi_encode());
    code.into()
}

/// keccak256("Transfer(address,address,uint256)"): the event the indexer follows.
pub fn transfer_topic() -> alloy_primitives::B256 {
    use alloy_sol_types::SolEvent;
    AssetToken::Transfer::SIGNATURE_HASH
}

/// Parse a decimal or 0x-hex amount from workflow input.
pub fn parse_amount(s: &str) -> Option<U256> {
    let s = s.trim();
    if let Some(hex) = s.strip_prefix("0x") {
        U256::from_str_radix(hex, 16).ok()
    } else {
        U256::from_str_radix(s, 10).ok()
    }
}

/// Strict form of [`parse_amount`] for requests: plain decimal digits, or `0x` and hex digits,
/// nothing else (no sign, spaces, `_` separators or empty digits), at most 2^256 - 1. The error
/// says why. Stored inputs keep being read with the lenient `parse_amount`.
pub fn check_amount(s: &str) -> std::result::Result<U256, String> {
    let (digits, radix) = match s.strip_prefix("0x") {
        Some(hex) => (hex, 16),
        None => (s, 10),
    };
    if digits.is_empty() {
        return Err("no digits".into());
    }
    if digits.len() > 80 {
        return Err("more than 80 digits".into());
    }
    if !digits.chars().all(|c| c.is_digit(radix)) {
        let what = if radix == 16 {
            "hex digits after 0x"
        } else {
            "decimal digits (or 0x and hex digits)"
        };
        return Err(format!("only {what} are allowed"));
    }
    U256::from_str_radix(digits, radix as u64).map_err(|_| "larger than 2^256 - 1".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_amounts_are_digits_only() {
        assert_eq!(check_amount("1000"), Ok(U256::from(1000)));
        assert_eq!(check_amount("0x10"), Ok(U256::from(16)));
        assert_eq!(check_amount("0"), Ok(U256::ZERO));
        for bad in [
            "1_000", " 5 ", "5 ", "", "0x", "-1", "+1", "1e3", "0x_1", "1.5", "0X10",
        ] {
            assert!(check_amount(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(check_amount(&"9".repeat(78)).unwrap_err().contains("2^256"));
        // The lenient reader (stored inputs) accepted some of them: why the strict form exists.
        assert!(parse_amount(" 5 ").is_some());
    }

    #[test]
    fn deploy_code_carries_constructor_args() {
        let code = asset_token_deploy_code("Bond", "BND", 18);
        assert!(code.len() > 1000);
        assert!(code.ends_with(&{
            let mut tail = b"BND".to_vec();
            tail.resize(32, 0);
            tail
        }));
    }

    #[test]
    fn amounts_parse() {
        assert_eq!(parse_amount("1000"), Some(U256::from(1000)));
        assert_eq!(parse_amount("0x10"), Some(U256::from(16)));
        assert_eq!(parse_amount("-1"), None);
    }
}
