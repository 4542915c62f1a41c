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

#[cfg(test)]
mod tests {
    use super::*;

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
