//! OAuth 2.0 for the smarthost login: access tokens from the identity provider (RFC 6749),
//! sent with SASL XOAUTH2 or OAUTHBEARER (RFC 7628) by the SMTP client.
//!
//! `json` and `http` are pure parsers plus one small HTTPS POST; `store` keeps the refresh
//! token file; `token` turns endpoint answers into access tokens and caches them; `assertion`
//! signs the JWT of a certificate credential; `login` holds the interactive sign-in flows and
//! the `oauth` commands.

pub mod assertion;
pub mod http;
pub mod json;
pub mod login;
pub mod store;
pub mod token;

pub use token::Tokens;

use crate::client::{BearerSource, ClientError, Stage};

/// The SMTP client asks for tokens through this; a failure is an Auth-stage error, transient
/// when the identity provider may answer later, permanent when a person must act (both pause
/// delivery of the whole queue; nothing is bounced for it).
impl BearerSource for Tokens {
    fn bearer(&self, refused: Option<&str>) -> Result<String, ClientError> {
        match self.get(refused) {
            Ok(g) => {
                if g.new {
                    log::debug!(
                        "oauth: new access token from {}, valid for {}s",
                        self.settings().token_url,
                        g.valid_for.as_secs()
                    );
                }
                Ok(g.access_token)
            }
            Err(e) => Err(ClientError {
                stage: Stage::Auth,
                permanent: !e.is_transient(),
                message: e.explain(self.settings().grant),
                kind: e.kind(),
                throttle: None,
            }),
        }
    }
}
