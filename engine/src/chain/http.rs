//! Production transport: JSON-RPC over HTTP (reqwest). Not compiled in the simulation flavour.

use super::gateway::{Transport, TransportError};

pub struct HttpTransport {
    client: reqwest::Client,
}

impl HttpTransport {
    /// `connect_timeout` bounds connection set-up; the gateway bounds each whole call.
    pub fn new(connect_timeout: std::time::Duration) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .pool_max_idle_per_host(8)
            .build()
            .expect("reqwest client with static options");
        HttpTransport { client }
    }
}

#[async_trait::async_trait]
impl Transport for HttpTransport {
    async fn post(&self, endpoint: &str, body: String) -> Result<String, TransportError> {
        let resp = self
            .client
            .post(endpoint)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    TransportError::Unreachable(describe(e))
                } else {
                    TransportError::Io(describe(e))
                }
            })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(TransportError::Status(status.as_u16()));
        }
        resp.text()
            .await
            .map_err(|e| TransportError::Io(describe(e)))
    }
}

/// A reqwest error with its causes, without the URL it embeds (a provider key may be in it).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
