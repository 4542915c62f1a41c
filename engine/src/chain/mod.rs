//! The chain boundary: JSON-RPC gateway over a pluggable transport, and the wire types.

pub mod answer;
pub mod endpoint;
pub mod gateway;
#[cfg(not(madsim))]
pub mod http;
pub mod types;

pub use endpoint::RpcEndpoint;
pub use gateway::{Gateway, Transport, TransportError};
pub use types::{BlockHeader, ChainTx, Log, Receipt};
