//! Which smarthost replies mean "this account is throttled": one table of the providers' known replies, with no I/O.
//!
//! A throttle reply is about the account (or the connection), not about the message: the
//! delivery runner pauses the queue for it and never bounces, whatever the first digit
//! (Microsoft 365 says `554 5.2.0` for its daily quota). So the table errs on the side of
//! "not a throttle": a reply that is about one recipient (`4.2.1`, `4.2.2`, `5.1.1`) or one
//! message (size, content, spam) must keep its ordinary meaning.

/// What kind of limit a throttle reply names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    /// A short-term rate limit (per minute, or a "server busy"): wait a little.
    Rate,
    /// Too many connections at once: fewer connections.
    Concurrency,
    /// The account's daily sending quota is used up: wait for it to refill.
    DailyQuota,
    /// Too many recipients in one transaction: send the rest in another (RFC 5321 4.5.3.1.10).
    TooManyRecipients,
}

impl Throttle {
    /// name is how logs, `status` and `queue list` name the kind.
    pub fn name(self) -> &'static str {
        match self {
            Throttle::Rate => "rate limit",
            Throttle::Concurrency => "concurrency limit",
            Throttle::DailyQuota => "daily quota",
            Throttle::TooManyRecipients => "too many recipients",
        }
    }
}

/// Which enhanced status codes (RFC 3463 `class.subject.detail`) a row matches.
#[derive(Clone, Copy)]
enum Status {
    /// Any code, or none.
    Any,
    /// Exactly this code, e.g. "4.7.0".
    Is(u16, u16, u16),
    /// This subject in any class, any detail: `X.2.*`.
    Subject(u16),
    /// This class and subject with a detail in the range: Microsoft's `4.7.500`-`4.7.699`.
    Details(u16, u16, u16, u16),
}

/// One row of the table: every condition must hold.
struct Row {
    /// The enhanced status code.
    status: Status,
    /// A lowercase substring of the text; "" matches any.
    text: &'static str,
    /// Only for a transient (4xx) reply: the generic wordings could also end a permanent
    /// refusal that is rightly a bounce.
    transient_only: bool,
    /// What the reply means; None: not a throttle, whatever `throttle_replies` says.
    kind: Option<Throttle>,
}

/// row builds a table row (the table reads better without field names).
const fn row(
    status: Status,
    text: &'static str,
    transient_only: bool,
    kind: Option<Throttle>,
) -> Row {
    Row {
        status,
        text,
        transient_only,
        kind,
    }
}

use Status::{Any, Details, Is, Subject};
use Throttle::{Concurrency, DailyQuota, Rate, TooManyRecipients};

/// The built-in table, first match wins: the providers' distinctive wordings first, then the
/// per-recipient codes that are never about the account, then generic wordings and codes.
const TABLE: &[Row] = &[
    // Microsoft 365: the recipient rate limit (10000 a day) and the message rate limit:
    // "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; ...";
    // its NDR reference calls 5.2.2 "Submission quota exceeded".
    row(Any, "submissionquotaexceeded", false, Some(DailyQuota)),
    row(Any, "submission quota exceeded", false, Some(DailyQuota)),
    // Outlook.com "550 5.1.90 ... you've reached your daily limit for message recipients";
    // Microsoft 365 "550 5.7.233 ... your tenant exceeded its daily limit ...".
    row(Any, "daily limit", false, Some(DailyQuota)),
    // Gmail: "550 5.4.5 Daily user sending limit exceeded", "Daily sending quota exceeded",
    // SMTP relay "550 5.4.5 Daily SMTP relay limit exceeded for customer" and
    // "550 5.7.1 Daily SMTP relay limit exceeded for user".
    row(Any, "daily user sending", false, Some(DailyQuota)),
    row(Any, "daily sending quota", false, Some(DailyQuota)),
    row(Any, "daily smtp relay limit", false, Some(DailyQuota)),
    // Amazon SES: "454 Throttling failure: Daily message quota exceeded."
    row(Any, "daily message quota", false, Some(DailyQuota)),
    // Gmail SMTP relay: "450 4.2.1 Peak SMTP relay limit exceeded for customer" (before the
    // 4.2.1 rule below: this one is about the account).
    row(Any, "peak smtp relay limit", false, Some(Rate)),
    // Exchange: "421 4.4.2 Message submission rate for this client has exceeded the
    // configured limit"; Microsoft 365 words the 30-a-minute limit the same way.
    row(Any, "submission rate", false, Some(Rate)),
    // Microsoft 365: "432 4.3.2 Concurrent connections limit exceeded", "421 4.3.2 The
    // maximum number of concurrent server connections has exceeded a limit",
    // "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded",
    // "451 4.7.652 The mail server [IP] has exceeded the maximum number of connections".
    row(Any, "concurrent connections", false, Some(Concurrency)),
    row(
        Any,
        "concurrent server connections",
        false,
        Some(Concurrency),
    ),
    row(Any, "sender thread limit", false, Some(Concurrency)),
    row(
        Any,
        "maximum number of connections",
        false,
        Some(Concurrency),
    ),
    // Gmail: "454 4.7.0 Too many login attempts, please try again later."
    row(Any, "too many login attempts", false, Some(Rate)),
    // Gmail: "421 4.7.28 ... an unusual rate of unsolicited mail ... temporarily rate
    // limited". The 5xx form says the address is blocked: that needs a person.
    row(Is(4, 7, 28), "", false, Some(Rate)),
    row(Any, "unusual rate", true, Some(Rate)),
    // Gmail: "421 4.7.0 Try again later, closing connection." (also after AUTH and MAIL).
    row(Is(4, 7, 0), "try again later", false, Some(Rate)),
    // Per recipient, never the account: Gmail "450 4.2.1 The user you are trying to contact
    // is receiving mail at a rate that prevents additional messages from being delivered",
    // "452 4.2.2 The email account that you tried to reach is over quota"; unknown users.
    row(Subject(1), "", false, None),
    row(Subject(2), "", false, None),
    // Postfix anvil: "450 4.7.1 Error: too many recipients from 192.0.2.7" is a rate, not
    // the transaction's size.
    row(Any, "too many recipients from", true, Some(Rate)),
    // RFC 5321 4.5.3.1.10: "452 too many recipients"; a 552 for it is to be treated as
    // temporary. RFC 3463 X.5.3 "Too many recipients" (Gmail "452 4.5.3 Your message has too
    // many recipients", Postfix "452 4.5.3 Error: too many recipients").
    row(Details(0, 5, 3, 3), "", false, Some(TooManyRecipients)),
    row(Any, "too many recipients", false, Some(TooManyRecipients)),
    // Generic wordings (Postfix anvil, Amazon SES, Yahoo, hosted relays), transient only.
    row(Any, "too many connections", true, Some(Concurrency)),
    row(Any, "too many concurrent", true, Some(Concurrency)),
    row(Any, "too much mail", true, Some(Rate)),
    row(Any, "maximum sending rate", true, Some(Rate)),
    row(Any, "throttling failure", true, Some(Rate)),
    row(Any, "rate limit", true, Some(Rate)),
    row(Any, "server busy", true, Some(Rate)),
    row(Any, "unexpected volume", true, Some(Rate)),
    // Microsoft 365: "451 4.7.500 Server busy. Please try again later from [IP]" and the
    // 4.7.500-4.7.699 family ("4.7.650 ... temporarily rate limited due to IP reputation").
    // The 5.7.5xx-7xx ones are bans and bounce as usual.
    row(Details(4, 7, 500, 699), "", false, Some(Rate)),
];

/// classify tells whether a smarthost reply means the account is throttled, and how.
/// `code` is the reply code; `text` the reply text as one string (the lines of a multi-line
/// reply joined with spaces), with or without the code in front; `extra` the
/// `[smarthost] throttle_replies` substrings, which make a reply a `Rate` throttle unless the
/// built-in table says otherwise (a per-recipient `4.2.1` stays per-recipient).
/// Matching ignores case.
pub fn classify(code: u16, text: &str, extra: &[String]) -> Option<Throttle> {
    // A success or an intermediate reply (334 during AUTH) never throttles, whatever it says.
    if code < 400 {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    let status = enhanced_status(&lower);
    let transient = (400..500).contains(&code);
    for r in TABLE {
        if r.transient_only && !transient {
            continue;
        }
        if !r.text.is_empty() && !lower.contains(r.text) {
            continue;
        }
        if status_matches(r.status, status) {
            return r.kind;
        }
    }
    extra
        .iter()
        .map(|e| e.trim().to_ascii_lowercase())
        .any(|e| !e.is_empty() && lower.contains(&e))
        .then_some(Throttle::Rate)
}

/// status_matches compares a row's pattern with the reply's code (None when it has none).
/// A class of 0 in `Details` stands for any class.
fn status_matches(pattern: Status, status: Option<(u16, u16, u16)>) -> bool {
    match (pattern, status) {
        (Any, _) => true,
        (_, None) => false,
        (Is(c, s, d), Some(got)) => got == (c, s, d),
        (Subject(s), Some((_, subject, _))) => subject == s,
        (Details(c, s, lo, hi), Some((class, subject, detail))) => {
            (c == 0 || c == class) && s == subject && (lo..=hi).contains(&detail)
        }
    }
}

/// enhanced_status reads the RFC 3463 code at the start of the text, after the reply code
/// when the text carries it ("421 4.7.0 ...", "421-4.7.0 ...", "4.7.0 ...").
fn enhanced_status(text: &str) -> Option<(u16, u16, u16)> {
    let t = text.trim_start();
    let b = t.as_bytes();
    let t = if b.len() >= 3
        && b[..3].iter().all(u8::is_ascii_digit)
        && matches!(b.get(3), None | Some(b' ') | Some(b'-'))
    {
        t.get(3..)
            .unwrap_or("")
            .trim_start_matches('-')
            .trim_start()
    } else {
        t
    };
    let word = t.split_ascii_whitespace().next()?;
    // "4.7.0," or "5.4.5." at the end of a sentence.
    let word = word.trim_end_matches([',', '.', ';', ':']);
    let mut parts = word.split('.');
    let mut next = |max_len: usize| {
        let p = parts.next()?;
        if p.is_empty() || p.len() > max_len || !p.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        p.parse::<u16>().ok()
    };
    // RFC 3463 2: class "2" / "4" / "5", subject and detail of 1 to 3 digits.
    let class = next(1).filter(|c| matches!(c, 2 | 4 | 5))?;
    let subject = next(3)?;
    let detail = next(3)?;
    if parts.next().is_some() {
        return None;
    }
    Some((class, subject, detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_replies_are_classified() {
        // (code, text as the client joins it, kind); the texts are the providers' own.
        let table: &[(u16, &str, Option<Throttle>)] = &[
            // Microsoft 365 / Exchange Online
            (432, "4.3.2 Concurrent connections limit exceeded. Visit https://aka.ms/concurrent_sending for more information. [Hostname=AM0PR01MB1234.eurprd01.prod.exchangelabs.com]", Some(Concurrency)),
            (421, "4.3.2 The maximum number of concurrent server connections has exceeded a limit, closing transmission channel", Some(Concurrency)),
            (432, "4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded [Hostname=DB8PR01MB1234]", Some(Concurrency)),
            (451, "4.7.652 The mail server [192.0.2.7] has exceeded the maximum number of connections.", Some(Concurrency)),
            (554, "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception with message Cannot submit message. 0.35250:0A000000", Some(DailyQuota)),
            (550, "5.2.2 Submission quota exceeded", Some(DailyQuota)),
            (550, "5.1.90 Your message can't be sent because you've reached your daily limit for message recipients.", Some(DailyQuota)),
            (550, "5.7.233 Your message can't be sent because your tenant exceeded its daily limit for sending email to external recipients (tenant external recipient rate limit).", Some(DailyQuota)),
            (451, "4.7.500 Server busy. Please try again later from [192.0.2.7]. (S77719) [Hostname=VE1EUR01FT012]", Some(Rate)),
            (451, "4.7.650 The mail server [192.0.2.7] has been temporarily rate limited due to IP reputation.", Some(Rate)),
            (421, "4.4.2 Message submission rate for this client has exceeded the configured limit", Some(Rate)),
            (554, "5.2.0 Message submission rate for this client has exceeded the configured limit", Some(Rate)),
            // Gmail and Google Workspace
            (550, "5.4.5 Daily user sending limit exceeded. For more information on Gmail sending limits go to https://support.google.com/a/answer/166852 - gsmtp", Some(DailyQuota)),
            (550, "5.4.5 Daily sending quota exceeded. https://support.google.com/mail/?p=SendingQuotaExceeded - gsmtp", Some(DailyQuota)),
            (550, "5.4.5 Daily SMTP relay limit exceeded for customer. For more information on SMTP relay sending limits please contact your administrator", Some(DailyQuota)),
            (550, "5.7.1 Daily SMTP relay limit exceeded for user. For more information on SMTP relay sending limits please contact your administrator", Some(DailyQuota)),
            (421, "4.7.0 Try again later, closing connection. (EHLO) d9443c01a7336-1f6a3bc1234sm1234567plb.12 - gsmtp", Some(Rate)),
            (421, "4.7.0 Temporary System Problem.  Try again later (10). a640c23a62f3a-a6f0ee12345si123456.12 - gsmtp", Some(Rate)),
            (421, "4.7.28 [192.0.2.7      15] Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited. - gsmtp", Some(Rate)),
            (454, "4.7.0 Too many login attempts, please try again later. For more information, go to https://support.google.com/mail/answer/7126229 - gsmtp", Some(Rate)),
            (421, "4.4.5 Server busy, try again later.", Some(Rate)),
            (450, "4.2.1 Peak SMTP relay limit exceeded for customer. This is a temporary error. For more information on SMTP relay limits, please contact your administrator", Some(Rate)),
            (452, "4.5.3 Your message has too many recipients. For more information regarding Google's sending limits, visit https://support.google.com/mail/answer/6592 - gsmtp", Some(TooManyRecipients)),
            // Others: Amazon SES, Postfix anvil, Yahoo, RFC 5321 wording
            (454, "Throttling failure: Maximum sending rate exceeded.", Some(Rate)),
            (454, "Throttling failure: Daily message quota exceeded.", Some(DailyQuota)),
            (421, "Too many concurrent SMTP connections; please try again later.", Some(Concurrency)),
            (421, "4.7.0 mail.example.net Error: too many connections from 192.0.2.7", Some(Concurrency)),
            (450, "4.7.1 Error: too much mail from 192.0.2.7", Some(Rate)),
            (450, "4.7.1 Error: too many recipients from 192.0.2.7", Some(Rate)),
            (452, "4.5.3 Error: too many recipients", Some(TooManyRecipients)),
            (452, "Too many recipients", Some(TooManyRecipients)),
            (552, "5.5.3 Too many recipients", Some(TooManyRecipients)),
            (421, "4.7.0 [TSS04] Messages from 192.0.2.7 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes", Some(Rate)),
            // Near misses: per recipient, per message, or a real refusal
            (450, "4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered. Please resend your message at a later time. If the user is able to receive mail at that time, your message will be delivered. For more information, go to https://support.google.com/mail/?p=ReceivingRate - gsmtp", None),
            (450, "4.2.1 The user you are trying to contact is receiving mail too quickly. Please resend your message at a later time.", None),
            (452, "4.2.2 The email account that you tried to reach is over quota. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaTemp - gsmtp", None),
            (554, "5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded", None),
            (550, "5.1.1 <nobody@example.com>: Recipient address rejected: User unknown in virtual mailbox table", None),
            (550, "5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces. - gsmtp", None),
            (554, "5.7.1 <a@example.org>: Relay access denied", None),
            (552, "5.3.4 Message size exceeds fixed maximum message size", None),
            (550, "5.7.1 Message rejected as spam by Content Filtering.", None),
            (550, "5.7.1 [192.0.2.7] Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been blocked.", None),
            (550, "5.7.708 Service unavailable. Access denied, traffic not accepted from this IP.", None),
            (550, "5.7.501 Access denied, spam abuse detected. The sending account has been banned due to detected spam activity.", None),
            (535, "5.7.3 Authentication unsuccessful [SN4PR0201CA0045.namprd02.prod.outlook.com]", None),
            (454, "4.7.0 Temporary authentication failure", None),
            (451, "4.3.0 Temporary failure, please try again later", None),
            (421, "4.3.2 Service shutting down", None),
            (452, "4.3.1 Insufficient system storage", None),
            (554, "5.2.0 STOREDRV.Submission.Exception:OutboundSpamException; Failed to process message due to a permanent exception with message WASCL UserAction verdict is not None. Actual verdict is Suspend, ShowTierUpgrade.", None),
            (550, "5.7.60 SMTP; Client does not have permissions to send as this sender", None),
            (550, "5.7.750 Service unavailable. Client blocked from sending from unregistered domains.", None),
            (550, "5.7.520 Message blocked because it contains content identified as spam. AS(4810)", None),
            (250, "2.0.0 OK  1718000000 d9443c01a7336-1f6a3bc1234sm1234567plb.12 - gsmtp", None),
        ];
        assert!(table.len() >= 25);
        for (code, text, want) in table {
            assert_eq!(classify(*code, text, &[]), *want, "{code} {text}");
            // With the code in front, as one line or as the first line of a multi-line reply.
            let line = format!("{code} {text}");
            assert_eq!(classify(*code, &line, &[]), *want, "{line}");
            let dash = format!("{code}-{}", text.to_ascii_uppercase());
            assert_eq!(classify(*code, &dash, &[]), *want, "{dash}");
        }
    }

    #[test]
    fn extra_replies_are_rate_unless_the_table_knows_better() {
        let extra = vec![
            "Slow Down".to_string(),
            " 4.7.99 ".to_string(),
            "  ".to_string(),
        ];
        let table: &[(u16, &str, Option<Throttle>)] = &[
            (
                451,
                "4.7.99 slow down, you are sending too fast",
                Some(Rate),
            ),
            (550, "5.7.99 Please SLOW DOWN", Some(Rate)),
            (451, "4.3.0 Temporary failure", None),
            // The built-in table wins: its kind, and its "per recipient" rows.
            (
                432,
                "4.3.2 Concurrent connections limit exceeded; slow down",
                Some(Concurrency),
            ),
            (
                550,
                "5.4.5 Daily user sending limit exceeded. Slow down.",
                Some(DailyQuota),
            ),
            (
                450,
                "4.2.1 The user is receiving mail too quickly, slow down",
                None,
            ),
            (550, "5.1.1 slow down: no such user", None),
            // A blank item matches nothing.
            (250, "2.0.0 Ok", None),
        ];
        for (code, text, want) in table {
            assert_eq!(classify(*code, text, &extra), *want, "{code} {text}");
        }
    }

    #[test]
    fn enhanced_status_is_read_with_or_without_the_code() {
        type Code = (u16, u16, u16);
        let table: &[(&str, Option<Code>)] = &[
            ("4.7.0 Try again later", Some((4, 7, 0))),
            ("421 4.7.0 Try again later", Some((4, 7, 0))),
            ("421-4.7.0 Try again later", Some((4, 7, 0))),
            ("  451 4.7.500 Server busy", Some((4, 7, 500))),
            ("5.4.5, daily", Some((5, 4, 5))),
            ("421", None),
            ("421 Try again later", None),
            ("4.7 x", None),
            ("4.7.0.1 x", None),
            ("3.1.1 x", None),
            ("4.7.1000 x", None),
            ("4..0 x", None),
            ("", None),
            ("12345 4.7.0", None),
        ];
        for (text, want) in table {
            assert_eq!(enhanced_status(text), *want, "{text:?}");
        }
    }

    #[test]
    fn names() {
        let table = [
            (Rate, "rate limit"),
            (Concurrency, "concurrency limit"),
            (DailyQuota, "daily quota"),
            (TooManyRecipients, "too many recipients"),
        ];
        for (kind, name) in table {
            assert_eq!(kind.name(), name);
        }
    }
}
