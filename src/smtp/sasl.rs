//! The SASL messages the smarthost client sends (PLAIN, XOAUTH2, OAUTHBEARER) and what the
//! providers' login refusals mean, with no I/O.
//!
//! Every message here carries a secret: callers send it and show `********` instead.

use crate::base64;

/// Which bearer-token mechanism a login uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerMechanism {
    /// Google's and Microsoft's XOAUTH2 (no RFC; documented by both providers).
    Xoauth2,
    /// RFC 7628.
    OauthBearer,
}

impl BearerMechanism {
    /// name is the mechanism name on the AUTH line.
    pub fn name(self) -> &'static str {
        match self {
            BearerMechanism::Xoauth2 => "XOAUTH2",
            BearerMechanism::OauthBearer => "OAUTHBEARER",
        }
    }

    /// initial_response is the base64 client response carrying `token` for `user`.
    pub fn initial_response(self, user: &str, token: &str) -> String {
        match self {
            BearerMechanism::Xoauth2 => xoauth2(user, token),
            BearerMechanism::OauthBearer => oauthbearer(user, token),
        }
    }

    /// error_ack is the client's answer to a server's error challenge, after which the server
    /// sends its final failure reply: RFC 7628 3.2.3 asks for a single %x01 (base64 "AQ==");
    /// XOAUTH2 servers (Gmail) expect an empty response.
    pub fn error_ack(self) -> &'static str {
        match self {
            BearerMechanism::Xoauth2 => "",
            BearerMechanism::OauthBearer => "AQ==",
        }
    }
}

/// plain is the RFC 4616 response: [authzid] NUL authcid NUL passwd, with no authzid.
pub fn plain(user: &str, password: &str) -> String {
    let mut raw = Vec::with_capacity(user.len() + password.len() + 2);
    raw.push(0);
    raw.extend_from_slice(user.as_bytes());
    raw.push(0);
    raw.extend_from_slice(password.as_bytes());
    base64::encode(&raw)
}

/// xoauth2 is `base64("user=" USER ^A "auth=Bearer " TOKEN ^A ^A)`.
pub fn xoauth2(user: &str, token: &str) -> String {
    base64::encode(format!("user={user}\x01auth=Bearer {token}\x01\x01").as_bytes())
}

/// oauthbearer is the RFC 7628 3.1 client response: a GS2 header naming the user
/// (`n,a=USER,`; RFC 5801 escapes `,` and `=` in the name), then `auth=Bearer TOKEN`.
pub fn oauthbearer(user: &str, token: &str) -> String {
    let name = user.replace('=', "=3D").replace(',', "=2C");
    base64::encode(format!("n,a={name},\x01auth=Bearer {token}\x01\x01").as_bytes())
}

/// challenge_text shows a server's 334 error challenge (Gmail sends base64 JSON such as
/// `{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}`): decoded,
/// control characters replaced, at most 200 characters. It names no secret.
pub fn challenge_text(b64: &str) -> String {
    let raw = base64::decode(b64.trim()).unwrap_or_else(|| b64.as_bytes().to_vec());
    String::from_utf8_lossy(&raw)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect()
}

/// token_refused tells whether a failed login reply means "this token is not good" (worth
/// one fresh token and one more try), rather than a setting no token can fix.
pub fn token_refused(code: u16, text: &str) -> bool {
    match login_hint(text, true) {
        Some(h) => h.token_may_help && matches!(code, 501 | 535),
        None => code == 535,
    }
}

/// What a provider's login refusal means and what the user does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hint {
    /// True when a fresh token may succeed.
    pub token_may_help: bool,
    /// The fix, in words.
    pub fix: &'static str,
}

/// login_hint explains the refusals the big providers send (oauth-providers.md), matched on
/// the enhanced status code and a distinctive part of the text. `bearer` says the login used
/// an OAuth token: the token hints would mislead after a password login (Postfix also says
/// `535 5.7.8` for a wrong password).
pub fn login_hint(text: &str, bearer: bool) -> Option<Hint> {
    let t = text.to_ascii_lowercase();
    let hint = |token_may_help, fix| {
        Some(Hint {
            token_may_help,
            fix,
        })
    };
    if t.contains("5.7.139") && t.contains("basic authentication is disabled") {
        return hint(
            false,
            "Microsoft 365 no longer takes passwords over SMTP AUTH: set up [oauth] (docs/guide.md)",
        );
    }
    if t.contains("5.7.139") {
        return hint(
            false,
            "SMTP AUTH is disabled for this mailbox or tenant: Set-CASMailbox -Identity MAILBOX -SmtpClientAuthenticationDisabled $false",
        );
    }
    if !bearer {
        return None;
    }
    if t.contains("4.2.0") && (t.contains("storedrv") || t.contains("logon failure")) {
        return hint(
            false,
            "the app may not use this mailbox: Add-MailboxPermission -Identity MAILBOX -User SERVICE_PRINCIPAL_ID -AccessRights FullAccess",
        );
    }
    if t.contains("5.5.127") || t.contains("token will expire soon") {
        return hint(
            true,
            "the token was too close to its expiry; a fresh one is used",
        );
    }
    if t.contains("5.7.3") {
        return hint(
            true,
            "check that [smarthost] username is the mailbox the token is for and that the app has the SMTP.Send (or SMTP.SendAsApp) permission",
        );
    }
    if t.contains("5.7.8") || t.contains("5.7.9") {
        return hint(
            true,
            "check that [smarthost] username is the Google account that signed in (picorelay oauth login)",
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(b64: &str) -> Vec<u8> {
        base64::decode(b64).expect("valid base64")
    }

    #[test]
    fn initial_responses() {
        // The example of Google's XOAUTH2 documentation.
        assert_eq!(
            xoauth2("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"),
            "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
        );
        let cases: &[(BearerMechanism, &str, &str, &[u8])] = &[
            (
                BearerMechanism::Xoauth2,
                "a@b.example",
                "T0k",
                b"user=a@b.example\x01auth=Bearer T0k\x01\x01",
            ),
            // RFC 7628 3.1 / 4.1 shape, without host and port.
            (
                BearerMechanism::OauthBearer,
                "user@example.com",
                "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==",
                b"n,a=user@example.com,\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01",
            ),
            // RFC 5801 saslname escaping.
            (
                BearerMechanism::OauthBearer,
                "a,b=c",
                "t",
                b"n,a=a=2Cb=3Dc,\x01auth=Bearer t\x01\x01",
            ),
        ];
        for (mech, user, token, want) in cases {
            assert_eq!(
                decoded(&mech.initial_response(user, token)),
                *want,
                "{mech:?} {user}"
            );
        }
        assert_eq!(decoded(&plain("u", "p")), b"\0u\0p");
        assert_eq!(decoded(BearerMechanism::OauthBearer.error_ack()), b"\x01");
        assert_eq!(BearerMechanism::Xoauth2.error_ack(), "");
    }

    #[test]
    fn challenges_are_shown_decoded_and_clipped() {
        let json = r#"{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}"#;
        assert_eq!(challenge_text(&base64::encode(json.as_bytes())), json);
        assert_eq!(challenge_text("not base64!"), "not base64!");
        assert_eq!(challenge_text(&base64::encode(b"a\nb")), "a b");
        assert_eq!(challenge_text(&"A".repeat(1000)).chars().count(), 200);
    }

    #[test]
    fn password_logins_get_only_the_hints_about_passwords() {
        assert!(login_hint("5.7.8 Error: authentication failed", false).is_none());
        assert!(login_hint("5.7.3 Authentication unsuccessful", false).is_none());
        let h = login_hint(
            "5.7.139 Authentication unsuccessful, basic authentication is disabled.",
            false,
        );
        assert!(h.unwrap().fix.contains("[oauth]"));
    }

    #[test]
    fn refusals_are_explained_and_classified() {
        // (reply code, text, worth a fresh token, hint contains)
        let cases: &[(u16, &str, bool, Option<&str>)] = &[
            (535, "5.7.3 Authentication unsuccessful [SN4PR0201CA0045]", true, Some("SMTP.Send")),
            (
                535,
                "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
                false,
                Some("Set-CASMailbox"),
            ),
            (
                535,
                "5.7.139 Authentication unsuccessful, basic authentication is disabled.",
                false,
                Some("[oauth]"),
            ),
            (430, "4.2.0 STOREDRV; mailbox logon failure", false, Some("Add-MailboxPermission")),
            (501, "5.5.127 token will expire soon", true, Some("fresh")),
            (535, "5.7.8 Username and Password not accepted", true, Some("Google")),
            (535, "authentication failed", true, None),
            (454, "4.7.0 Temporary authentication failure", false, None),
        ];
        for (code, text, fresh, hint) in cases {
            assert_eq!(token_refused(*code, text), *fresh, "{code} {text}");
            match hint {
                Some(h) => assert!(login_hint(text, true).unwrap().fix.contains(h), "{text}"),
                None => assert!(login_hint(text, true).is_none(), "{text}"),
            }
        }
    }
}
