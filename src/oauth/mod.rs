//! OAuth 2.0 for the smarthost login: the pieces that fetch and refresh bearer tokens (RFC 6749, RFC 7628).

// Not called yet: token.rs and login.rs (next) use them; drop the allows then.
#[allow(dead_code)]
pub mod http;
#[allow(dead_code)]
pub mod json;
