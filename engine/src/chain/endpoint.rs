//! RPC endpoints: a URL, which often carries a provider's key (`user:password@`, `?apikey=`, a
//! key in the path), and a name, which is all that leaves the transport.
//!
//! The name is configured (`{ name = "alchemy", url = "…" }`) or derived from the URL without
//! its secret parts (`scheme://host:port`). Logs, metrics labels, `/health` and every error
//! message name an endpoint by it; only the [`Transport`](super::Transport) sees the URL.

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::fmt;

/// One configured endpoint. `Debug` prints the name only.
#[derive(Clone, PartialEq, Eq)]
pub struct RpcEndpoint {
    name: String,
    url: String,
    /// Whether the name was configured (checked for uniqueness as given) or derived.
    named: bool,
}

impl RpcEndpoint {
    /// An endpoint named by its URL's public part (`scheme://host:port`).
    pub fn from_url(url: impl Into<String>) -> Self {
        let url = url.into();
        let name = UrlParts::parse(&url)
            .map(|p| p.public())
            .unwrap_or_else(|_| "<invalid url>".into());
        RpcEndpoint {
            name,
            url,
            named: false,
        }
    }

    pub fn named(name: impl Into<String>, url: impl Into<String>) -> Self {
        RpcEndpoint {
            name: name.into(),
            url: url.into(),
            named: true,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL with its secrets: for the transport only.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Why this endpoint's configuration is unusable (`None`: it is fine).
    pub fn problem(&self) -> Option<String> {
        if let Err(why) = UrlParts::parse(&self.url) {
            return Some(format!("url: {why}"));
        }
        if self.named {
            let ok = |c: char| c.is_ascii_alphanumeric() || "-_.:/".contains(c);
            if self.name.is_empty() || self.name.len() > 64 || !self.name.chars().all(ok) {
                return Some("name: 1 to 64 characters among letters, digits and - _ . : /".into());
            }
        }
        None
    }

    /// `text` with this endpoint's URL and each of its secret parts (user, password, path,
    /// query) replaced: for messages that came from below the gateway (a transport's error, a
    /// node's answer), which may echo what they were given.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.replace(&self.url, &self.name);
        if let Ok(p) = UrlParts::parse(&self.url) {
            for secret in [p.userinfo, p.rest] {
                // A bare "/" (or a one-letter user) is no secret, and replacing it would
                // mangle the message.
                if secret.len() > 1 {
                    out = out.replace(secret, "<redacted>");
                }
            }
            if let Some((user, password)) = p.userinfo.split_once(':') {
                for secret in [user, password] {
                    if secret.len() > 1 {
                        out = out.replace(secret, "<redacted>");
                    }
                }
            }
        }
        out
    }
}

impl fmt::Debug for RpcEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RpcEndpoint({})", self.name)
    }
}

/// The parts of an `http(s)://[userinfo@]host[:port][path][?query]` URL that matter here.
#[derive(Debug, PartialEq, Eq)]
struct UrlParts<'a> {
    scheme: String,
    userinfo: &'a str,
    host: &'a str,
    port: u16,
    /// Path, query and fragment: where providers put keys.
    rest: &'a str,
}

impl<'a> UrlParts<'a> {
    fn parse(url: &'a str) -> Result<Self, &'static str> {
        let (scheme, after) = url
            .split_once("://")
            .ok_or("not a URL (expected http://host or https://host)")?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            "ws" | "wss" => {
                return Err("the engine speaks JSON-RPC over HTTP only: use http or https")
            }
            _ => return Err("scheme must be http or https"),
        };
        let end = after.find(['/', '?', '#']).unwrap_or(after.len());
        let (authority, rest) = after.split_at(end);
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (u, h),
            None => ("", authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let close = v6.find(']').ok_or("unclosed [ in the host")?;
            (&hostport[..close + 2], &v6[close + 1..])
        } else {
            match hostport.rsplit_once(':') {
                Some((h, _)) => (h, &hostport[h.len()..]),
                None => (hostport, ""),
            }
        };
        let port = match port.strip_prefix(':') {
            None if port.is_empty() => default_port,
            None => return Err("unexpected characters after the host"),
            Some(p) => p.parse().map_err(|_| "port must be a number 1 to 65535")?,
        };
        if port == 0 {
            return Err("port must be a number 1 to 65535");
        }
        let host_ok = |c: char| c.is_ascii_alphanumeric() || "-._[]:%".contains(c);
        if host.is_empty() || host == "[]" {
            return Err("the host is missing");
        }
        if !host.chars().all(host_ok) {
            return Err("the host has characters a host name cannot have");
        }
        Ok(UrlParts {
            scheme,
            userinfo,
            host,
            port,
            rest,
        })
    }

    /// `scheme://host:port`: what may be shown anywhere.
    fn public(&self) -> String {
        format!(
            "{}://{}:{}",
            self.scheme,
            self.host.to_ascii_lowercase(),
            self.port
        )
    }
}

/// `rpc_endpoints` entries: a URL string, or `{ name = "…", url = "…" }`.
impl<'de> Deserialize<'de> for RpcEndpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RpcEndpoint;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a URL string or a table { name = \"…\", url = \"…\" }")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RpcEndpoint, E> {
                Ok(RpcEndpoint::from_url(s))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<RpcEndpoint, A::Error> {
                let (mut name, mut url) = (None::<String>, None::<String>);
                while let Some(key) = m.next_key::<String>()? {
                    match key.as_str() {
                        "name" => name = Some(m.next_value()?),
                        "url" => url = Some(m.next_value()?),
                        other => return Err(de::Error::unknown_field(other, &["name", "url"])),
                    }
                }
                let url = url.ok_or_else(|| de::Error::missing_field("url"))?;
                Ok(match name {
                    Some(n) => RpcEndpoint::named(n, url),
                    None => RpcEndpoint::from_url(url),
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYED: &str = "https://alice:s3cr3tpw@eth.example.com/v3/pathkey123?apikey=qkey456";

    #[test]
    fn a_derived_name_keeps_no_secret() {
        let e = RpcEndpoint::from_url(KEYED);
        assert_eq!(e.name(), "https://eth.example.com:443");
        assert_eq!(
            RpcEndpoint::from_url("http://rpc-0:8545").name(),
            "http://rpc-0:8545",
            "the simulation's names are its URLs"
        );
        assert_eq!(
            RpcEndpoint::from_url("http://[::1]:9/x").name(),
            "http://[::1]:9"
        );
        let printed = format!("{e:?}");
        for secret in ["alice", "s3cr3tpw", "pathkey123", "qkey456"] {
            assert!(!printed.contains(secret), "{printed}");
        }
    }

    #[test]
    fn scrub_removes_the_url_and_each_secret_part() {
        let e = RpcEndpoint::named("alchemy", KEYED);
        let msg = format!(
            "error sending request for url ({KEYED}): user alice, key /v3/pathkey123?apikey=qkey456, pw s3cr3tpw"
        );
        let out = e.scrub(&msg);
        for secret in ["alice", "s3cr3tpw", "pathkey123", "qkey456"] {
            assert!(!out.contains(secret), "{out}");
        }
        assert!(out.contains("alchemy"), "{out}");
        // Nothing to scrub in a plain URL's messages.
        let plain = RpcEndpoint::from_url("http://127.0.0.1:8545/");
        assert_eq!(
            plain.scrub("tcp connect error: refused"),
            "tcp connect error: refused"
        );
    }

    #[test]
    fn malformed_urls_and_names_are_problems() {
        for (url, why) in [
            ("localhost:8545", "not a URL"),
            ("ftp://h", "scheme must be http or https"),
            ("ws://h:8546", "over HTTP only"),
            ("http://", "host is missing"),
            ("http://user@/x", "host is missing"),
            ("http://h:99999", "port"),
            ("http://h:0", "port"),
            ("http://h:x", "port"),
            ("http://h h", "characters"),
        ] {
            let p = RpcEndpoint::from_url(url).problem().unwrap_or_default();
            assert!(p.contains(why), "{url}: {p:?}");
        }
        assert_eq!(RpcEndpoint::from_url(KEYED).problem(), None);
        assert_eq!(RpcEndpoint::from_url("HTTP://H:1").problem(), None);
        let bad_name = RpcEndpoint::named("a b", "http://h").problem().unwrap();
        assert!(bad_name.starts_with("name:"), "{bad_name}");
    }

    #[test]
    fn both_forms_deserialize() {
        #[derive(Deserialize)]
        struct Doc {
            eps: Vec<RpcEndpoint>,
        }
        let d: Doc =
            toml::from_str("eps = ['http://a:1', { name = 'b', url = 'http://b/k' }]").unwrap();
        assert_eq!(d.eps[0].name(), "http://a:1");
        assert_eq!((d.eps[1].name(), d.eps[1].url()), ("b", "http://b/k"));
        let e = toml::from_str::<Doc>("eps = [{ name = 'b', uri = 'x' }]")
            .err()
            .unwrap();
        assert!(e.to_string().contains("uri"), "{e}");
    }
}
