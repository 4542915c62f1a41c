//! Bearer-token authorization, run as a route layer: before any path or body extractor, so an
//! unauthenticated caller gets 401 whatever it sent, and its body is never read.

use super::ApiError;
use crate::engine::Engine;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::json;
use std::sync::Arc;

/// Who made an operator request: the name of the credential that authenticated it. Handlers read
/// it from the request's extensions; the request body cannot change it.
#[derive(Clone, Debug)]
pub struct Operator(pub String);

/// The token of an `Authorization: Bearer <token>` header; the scheme is case-insensitive
/// (RFC 9110 §11.1).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn unauthorized() -> ApiError {
    ApiError(
        StatusCode::UNAUTHORIZED,
        json!({"error": "missing or invalid bearer token"}),
    )
}

/// Client routes: the api token or any operator credential.
pub async fn client(
    State(engine): State<Arc<Engine>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = bearer(req.headers()).unwrap_or("");
    let operator = engine.config.operator_for(token).is_some();
    if !(engine.config.api_token.matches(token) || operator) {
        return Err(unauthorized());
    }
    Ok(next.run(req).await)
}

/// Operator routes: an operator credential; its name goes into the request as [`Operator`].
pub async fn operator(
    State(engine): State<Arc<Engine>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = bearer(req.headers()).unwrap_or("");
    let name = engine.config.operator_for(token).map(str::to_string);
    match name {
        Some(name) => {
            req.extensions_mut().insert(Operator(name));
            Ok(next.run(req).await)
        }
        None if engine.config.api_token.matches(token) => Err(ApiError(
            StatusCode::FORBIDDEN,
            json!({"error": "operator token required"}),
        )),
        None => Err(unauthorized()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert("authorization", v.parse().unwrap());
        m
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer(&h("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&h("bearer abc")), Some("abc"));
        assert_eq!(bearer(&h("BEARER  abc ")), Some("abc"));
        assert_eq!(bearer(&h("Basic abc")), None);
        assert_eq!(bearer(&h("Bearer ")), None);
        assert_eq!(bearer(&h("Bearerabc")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
