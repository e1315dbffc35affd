//! Password hash checking: SHA-crypt `$5$` / `$6$` (Ulrich Drepper's "Unix crypt using SHA-256 and SHA-512").
//!
//! This is the scheme glibc crypt(3) uses for `$5$`/`$6$` and that `openssl passwd -5|-6`
//! prints, so hashes from /etc/shadow or openssl can be pasted into `[users]`.
//! Spec: <https://www.akkadia.org/drepper/SHA-crypt.txt>. Digests come from `ring::digest`.

use std::fmt;

use ring::digest;

/// Rounds used when the hash carries no `rounds=N$` (spec: ROUNDS_DEFAULT).
pub const ROUNDS_DEFAULT: u32 = 5000;
/// Smaller `rounds=` values are raised to this (spec: ROUNDS_MIN).
pub const ROUNDS_MIN: u32 = 1000;
/// Larger `rounds=` values are lowered to this (spec: ROUNDS_MAX).
pub const ROUNDS_MAX: u32 = 999_999_999;
/// Our own cap, below the spec's ROUNDS_MAX: a hash asking for more rounds is refused
/// (never verifies) so that one AUTH attempt cannot pin a worker for minutes.
/// 10 million SHA-512 rounds already take several seconds.
pub const ROUNDS_LIMIT: u32 = 10_000_000;
/// Longest salt; the spec truncates longer salts to this many characters.
pub const SALT_MAX: usize = 16;
/// Longest password we hash. The spec has no limit, but each round hashes the password
/// about three times, so an attacker-chosen length multiplies the CPU cost of a guess.
/// Longer passwords never verify.
pub const PASSWORD_MAX: usize = 1024;

/// What is wrong with a hash (or with a password we refuse to hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CryptError {
    /// Not `$5$` or `$6$`.
    Scheme,
    /// `rounds=` not followed by decimal digits and `$`.
    Rounds,
    /// `rounds=` above [`ROUNDS_LIMIT`].
    TooManyRounds(u64),
    /// Salt empty, longer than [`SALT_MAX`], or with a character outside printable ASCII.
    Salt,
    /// The hash part is missing, has the wrong length or a character outside `./0-9A-Za-z`.
    Hash,
    /// Password longer than [`PASSWORD_MAX`] bytes.
    PasswordTooLong,
}

impl fmt::Display for CryptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CryptError::Scheme => {
                f.write_str("hash must start with $5$ or $6$ (make one with `openssl passwd -6`)")
            }
            CryptError::Rounds => f.write_str("rounds= must be a decimal number followed by $"),
            CryptError::TooManyRounds(n) => write!(
                f,
                "rounds={n} is above the limit of {ROUNDS_LIMIT}: make a hash with fewer rounds"
            ),
            CryptError::Salt => write!(
                f,
                "salt must be 1 to {SALT_MAX} printable ASCII characters other than $"
            ),
            CryptError::Hash => f.write_str(
                "hash part must be 43 ($5$) or 86 ($6$) characters of ./0-9A-Za-z after the salt",
            ),
            CryptError::PasswordTooLong => {
                write!(f, "password is longer than {PASSWORD_MAX} bytes")
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Sha256,
    Sha512,
}

impl Alg {
    #[cfg(test)]
    fn prefix(self) -> &'static str {
        match self {
            Alg::Sha256 => "$5$",
            Alg::Sha512 => "$6$",
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Alg::Sha256 => &digest::SHA256,
            Alg::Sha512 => &digest::SHA512,
        }
    }

    /// Length of the encoded hash part: ceil(bits / 6).
    fn encoded_len(self) -> usize {
        match self {
            Alg::Sha256 => 43,
            Alg::Sha512 => 86,
        }
    }

    /// The spec's final byte shuffle: triples of digest bytes (B2, B1, B0), each
    /// written as 4 characters; the last entry carries the leftover byte(s).
    fn order(self) -> &'static [[usize; 3]] {
        match self {
            Alg::Sha256 => &[
                [0, 10, 20],
                [21, 1, 11],
                [12, 22, 2],
                [3, 13, 23],
                [24, 4, 14],
                [15, 25, 5],
                [6, 16, 26],
                [27, 7, 17],
                [18, 28, 8],
                [9, 19, 29],
            ],
            Alg::Sha512 => &[
                [0, 21, 42],
                [22, 43, 1],
                [44, 2, 23],
                [3, 24, 45],
                [25, 46, 4],
                [47, 5, 26],
                [6, 27, 48],
                [28, 49, 7],
                [50, 8, 29],
                [9, 30, 51],
                [31, 52, 10],
                [53, 11, 32],
                [12, 33, 54],
                [34, 55, 13],
                [56, 14, 35],
                [15, 36, 57],
                [37, 58, 16],
                [59, 17, 38],
                [18, 39, 60],
                [40, 61, 19],
                [62, 20, 41],
            ],
        }
    }
}

/// The parts of `$id$[rounds=N$]salt` (and what follows the salt's terminating '$').
struct Setting<'a> {
    alg: Alg,
    /// Already clamped to [ROUNDS_MIN, ROUNDS_MAX] and checked against ROUNDS_LIMIT.
    rounds: u32,
    /// Whether `rounds=` was written (then the output repeats it).
    #[cfg_attr(not(test), allow(dead_code))]
    explicit_rounds: bool,
    /// Everything after `rounds=N$` (or after `$id$`): salt, then maybe `$hash`.
    rest: &'a str,
}

fn parse_setting(s: &str) -> Result<Setting<'_>, CryptError> {
    let (alg, after) = if let Some(r) = s.strip_prefix("$5$") {
        (Alg::Sha256, r)
    } else if let Some(r) = s.strip_prefix("$6$") {
        (Alg::Sha512, r)
    } else {
        return Err(CryptError::Scheme);
    };
    let Some(r) = after.strip_prefix("rounds=") else {
        return Ok(Setting {
            alg,
            rounds: ROUNDS_DEFAULT,
            explicit_rounds: false,
            rest: after,
        });
    };
    // Unlike glibc's strtoul, accept digits only: no sign, no spaces.
    let (digits, rest) = r.split_once('$').ok_or(CryptError::Rounds)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CryptError::Rounds);
    }
    let n = digits.bytes().fold(0u64, |acc, b| {
        acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    });
    // Spec: "rounds=N" is clamped into [ROUNDS_MIN, ROUNDS_MAX]; ROUNDS_LIMIT is our CPU bound.
    let clamped = n.clamp(u64::from(ROUNDS_MIN), u64::from(ROUNDS_MAX));
    if clamped > u64::from(ROUNDS_LIMIT) {
        return Err(CryptError::TooManyRounds(n));
    }
    Ok(Setting {
        alg,
        rounds: clamped as u32,
        explicit_rounds: true,
        rest,
    })
}

fn check_salt(salt: &str) -> Result<(), CryptError> {
    // Spec: at most 16 salt characters. Empty salts (accepted by glibc, refused by
    // openssl) and non-printable ones are refused: no tool we document makes them.
    let ok = !salt.is_empty()
        && salt.len() <= SALT_MAX
        && salt.bytes().all(|b| b.is_ascii_graphic() && b != b'$');
    if ok {
        Ok(())
    } else {
        Err(CryptError::Salt)
    }
}

/// A parsed, well-formed stored hash.
struct Parsed<'a> {
    alg: Alg,
    rounds: u32,
    salt: &'a str,
    hash: &'a str,
}

fn parse_hash(hash: &str) -> Result<Parsed<'_>, CryptError> {
    let setting = parse_setting(hash)?;
    let (salt, encoded) = setting.rest.split_once('$').ok_or(CryptError::Hash)?;
    check_salt(salt)?;
    let ok =
        encoded.len() == setting.alg.encoded_len() && encoded.bytes().all(|b| ITOA64.contains(&b));
    if !ok {
        return Err(CryptError::Hash);
    }
    Ok(Parsed {
        alg: setting.alg,
        rounds: setting.rounds,
        salt,
        hash: encoded,
    })
}

/// Checks that `hash` is a complete `$5$` or `$6$` hash we would verify against,
/// saying what is wrong otherwise (for `picorelay check` messages).
pub fn check_hash(hash: &str) -> Result<(), CryptError> {
    parse_hash(hash).map(|_| ())
}

/// True when `hash` is a well formed "$5$[rounds=N$]salt$hash" or "$6$..." that
/// [`verify`] can check (salt 1..=16 printable characters, rounds within [`ROUNDS_LIMIT`]).
#[cfg(test)]
pub fn is_supported_hash(hash: &str) -> bool {
    check_hash(hash).is_ok()
}

/// True when `password` matches the stored `hash`. Compares in constant time.
///
/// `rounds=` is clamped to [1000, 999_999_999] as the spec says, but hashes asking
/// for more than [`ROUNDS_LIMIT`] rounds, malformed hashes and passwords longer than
/// [`PASSWORD_MAX`] bytes all give false: this runs on attacker-triggered AUTH.
pub fn verify(password: &[u8], hash: &str) -> bool {
    let Ok(p) = parse_hash(hash) else {
        return false;
    };
    let Ok(computed) = sha_crypt(p.alg, password, p.salt.as_bytes(), p.rounds) else {
        return false;
    };
    constant_time_eq(computed.as_bytes(), p.hash.as_bytes())
}

/// crypt(3) for `$5$`/`$6$`: hashes `password` with `setting` ("$6$[rounds=N$]salt",
/// anything after the salt's '$' ignored) and returns the full hash string. Salts
/// longer than 16 characters are truncated as the spec says. Tests make their
/// hashes with it; the relay only verifies.
#[cfg(test)]
pub fn crypt(password: &[u8], setting: &str) -> Result<String, CryptError> {
    let s = parse_setting(setting)?;
    let salt = s.rest.split('$').next().unwrap_or("");
    // Spec: only the first 16 salt characters count. check_salt below rejects
    // non-ASCII, so cutting at a byte count never splits a character that is kept.
    let salt = salt.get(..SALT_MAX.min(salt.len())).unwrap_or(salt);
    check_salt(salt)?;
    let encoded = sha_crypt(s.alg, password, salt.as_bytes(), s.rounds)?;
    let mut out = String::from(s.alg.prefix());
    if s.explicit_rounds {
        out.push_str(&format!("rounds={}$", s.rounds));
    }
    out.push_str(salt);
    out.push('$');
    out.push_str(&encoded);
    Ok(out)
}

/// Appends `src` repeated to fill exactly `len` bytes (spec steps 9/10, 16 and 20).
fn add_repeated(ctx: &mut digest::Context, src: &[u8], len: usize) {
    let mut left = len;
    while left >= src.len() {
        ctx.update(src);
        left -= src.len();
    }
    ctx.update(&src[..left]);
}

/// `src` repeated to exactly `len` bytes.
fn repeated(src: &[u8], len: usize) -> Vec<u8> {
    src.iter().copied().cycle().take(len).collect()
}

/// The SHA-crypt core (spec steps 1-22); returns the encoded hash part.
fn sha_crypt(alg: Alg, password: &[u8], salt: &[u8], rounds: u32) -> Result<String, CryptError> {
    if password.len() > PASSWORD_MAX {
        return Err(CryptError::PasswordTooLong);
    }
    let d = alg.digest();

    // Steps 4-8: digest B = H(password, salt, password).
    let mut ctx = digest::Context::new(d);
    ctx.update(password);
    ctx.update(salt);
    ctx.update(password);
    let b = ctx.finish();
    let b = b.as_ref();

    // Steps 1-3 and 9-12: digest A.
    let mut ctx = digest::Context::new(d);
    ctx.update(password);
    ctx.update(salt);
    add_repeated(&mut ctx, b, password.len());
    let mut n = password.len();
    while n > 0 {
        if n & 1 == 1 {
            ctx.update(b);
        } else {
            ctx.update(password);
        }
        n >>= 1;
    }
    let a = ctx.finish();
    let a = a.as_ref();

    // Steps 13-16: byte sequence P from DP = H(password repeated len(password) times).
    let mut ctx = digest::Context::new(d);
    for _ in 0..password.len() {
        ctx.update(password);
    }
    let p = repeated(ctx.finish().as_ref(), password.len());

    // Steps 17-20: byte sequence S from DS = H(salt repeated 16 + A[0] times).
    let mut ctx = digest::Context::new(d);
    for _ in 0..16 + usize::from(a[0]) {
        ctx.update(salt);
    }
    let s = repeated(ctx.finish().as_ref(), salt.len());

    // Step 21: the rounds.
    let mut c = a.to_vec();
    for i in 0..rounds {
        let mut ctx = digest::Context::new(d);
        if i % 2 == 1 {
            ctx.update(&p);
        } else {
            ctx.update(&c);
        }
        if i % 3 != 0 {
            ctx.update(&s);
        }
        if i % 7 != 0 {
            ctx.update(&p);
        }
        if i % 2 == 1 {
            ctx.update(&c);
        } else {
            ctx.update(&p);
        }
        c = ctx.finish().as_ref().to_vec();
    }

    // Step 22: shuffled little-endian base64 of the final digest.
    let mut out = String::with_capacity(alg.encoded_len());
    for &[b2, b1, b0] in alg.order() {
        push_b64(&mut out, c[b2], c[b1], c[b0], 4);
    }
    match alg {
        Alg::Sha256 => push_b64(&mut out, 0, c[31], c[30], 3),
        Alg::Sha512 => push_b64(&mut out, 0, 0, c[63], 2),
    }
    Ok(out)
}

/// crypt's own base64 alphabet (not RFC 4648's).
const ITOA64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Writes the 24-bit group B2:B1:B0 as `n` characters, least significant 6 bits first.
fn push_b64(out: &mut String, b2: u8, b1: u8, b0: u8, n: usize) {
    let mut w = (u32::from(b2) << 16) | (u32::from(b1) << 8) | u32::from(b0);
    for _ in 0..n {
        out.push(char::from(ITOA64[(w & 0x3f) as usize]));
        w >>= 6;
    }
}

/// Equality whose time does not depend on where the inputs differ. The lengths are
/// fixed by the scheme, so returning early on a length mismatch leaks nothing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early-exit compare.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every test vector from the spec: (setting, password, expected crypt output).
    const SPEC: &[(&str, &str, &str)] = &[
        (
            "$5$saltstring",
            "Hello world!",
            "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5",
        ),
        (
            "$5$rounds=10000$saltstringsaltstring",
            "Hello world!",
            "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA",
        ),
        (
            "$5$rounds=5000$toolongsaltstring",
            "This is just a test",
            "$5$rounds=5000$toolongsaltstrin$Un/5jzAHMgOGZ5.mWJpuVolil07guHPvOW8mGRcvxa5",
        ),
        (
            "$5$rounds=1400$anotherlongsaltstring",
            "a very much longer text to encrypt.  This one even stretches over morethan one line.",
            "$5$rounds=1400$anotherlongsalts$Rx.j8H.h8HjEDGomFU8bDkXm3XIUnzyxf12oP84Bnq1",
        ),
        (
            "$5$rounds=77777$short",
            "we have a short salt string but not a short password",
            "$5$rounds=77777$short$JiO1O3ZpDAxGJeaDIuqCoEFysAe1mZNJRs3pw0KQRd/",
        ),
        (
            "$5$rounds=123456$asaltof16chars..",
            "a short string",
            "$5$rounds=123456$asaltof16chars..$gP3VQ/6X7UUEW3HkBn2w1/Ptq2jxPyzV/cZKmF/wJvD",
        ),
        (
            "$5$rounds=10$roundstoolow",
            "the minimum number is still observed",
            "$5$rounds=1000$roundstoolow$yfvwcWrQ8l/K0DAWyuPMDNHpIVlTQebY9l/gL972bIC",
        ),
        (
            "$6$saltstring",
            "Hello world!",
            "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1",
        ),
        (
            "$6$rounds=10000$saltstringsaltstring",
            "Hello world!",
            "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.",
        ),
        (
            "$6$rounds=5000$toolongsaltstring",
            "This is just a test",
            "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0",
        ),
        (
            "$6$rounds=1400$anotherlongsaltstring",
            "a very much longer text to encrypt.  This one even stretches over morethan one line.",
            "$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoYN3CmLs66x9t0oSwbtEW7o7UmJEiDwGqd8p4ur1",
        ),
        (
            "$6$rounds=77777$short",
            "we have a short salt string but not a short password",
            "$6$rounds=77777$short$WuQyW2YR.hBNpjjRhpYD/ifIw05xdfeEyQoMxIXbkvr0gge1a1x3yRULJ5CCaUeOxFmtlcGZelFl5CxtgfiAc0",
        ),
        (
            "$6$rounds=123456$asaltof16chars..",
            "a short string",
            "$6$rounds=123456$asaltof16chars..$BtCwjqMJGx5hrJhZywWvt0RLE8uZ4oPwcelCjmw2kSYu.Ec6ycULevoBK25fs2xXgMNrCzIMVcgEJAstJeonj1",
        ),
        (
            "$6$rounds=10$roundstoolow",
            "the minimum number is still observed",
            "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4ZEQpyUNGc0dqbpBYYBaHHrsX.",
        ),
    ];

    /// Made with OpenSSL 3.0: `openssl passwd -6 -salt saltsalt 'pa:ss wörd'`,
    /// `openssl passwd -5 -salt abc 'secret'`, and for passwords of n 'x' characters
    /// (around the 32- and 64-byte digest sizes) `openssl passwd -5|-6 -salt x.Y/9`.
    const OPENSSL: &[(&str, &str)] = &[
        (
            "pa:ss wörd",
            "$6$saltsalt$C4RIzsZQIZD5.VEF3opYL3gpxyszQ5ZhzXA6QVzJgu5AFkGPMkRyVj.ao7MicoMK9iVtJ6ezaZhxMP8Sj1Ymr0",
        ),
        (
            "pass:wörd",
            "$6$saltsalt$4ME//p1HhMu5nePr6s5aZNqE.DY.AaQX89xLOQMcX.jgMaMFd5ktoqzU9PsNQBg50nbg5mt/Kr7kKr6TTob2F/",
        ),
        ("secret", "$5$abc$qsg6EHbUzHQzF1POlD7zUwBINSELQxypPaeDcZe6vH0"),
        (
            "x",
            "$6$rounds=1000$ab$PjG1Vkf5LHNL84dByLtuSYjVz6Hy575FC7tz8wX4DtJ2WMsZQu0/miZCNEiAa8uwa8QG5xPQJgcyUioQ0Ac/G/",
        ),
    ];

    const OPENSSL_LENGTHS: &[(usize, &str)] = &[
        (31, "$5$x.Y/9$DDGVxH1OKHT8T/qPj5Zu0GO6qNvhS/YeYJIjsx0u8C6"),
        (32, "$5$x.Y/9$XEQi0z45xwO.WXRIq4a.OTEtTKsdzmgugmOQDI70Wg."),
        (33, "$5$x.Y/9$X3.WQMQDaqPN10P5BtuiMOQeX7XgAXmWRAcGrAvRny/"),
        (64, "$5$x.Y/9$5BSJ2G55syNeZkdAJgwuMH9AA2V2H0h3O.vB03uuvCA"),
        (200, "$5$x.Y/9$FnvQke5BNcXfx3kHarjQZcJ2G3KOtZZ3VYIXD7GePs9"),
        (33, "$6$x.Y/9$S7zP04Yc3KmVJx0QgLmUqzMbxtm8e9eTcrjoJAv.uWyud7A/Kt.vygy6G4VwLOoarH91DW1jFYly4o6xWb7YY/"),
        (63, "$6$x.Y/9$HymuvjnzPnw0HQlrpr2ervWjVWxzVBD3ZjpTpZprLtnvaF3f2yHUhIkb9jmxnOxtb2K6/Owm.iQcHXyeGlmCq/"),
        (64, "$6$x.Y/9$KcXD.kDHqm6pSCyxiMkTIm7//5m5OolKbvz.x38tvMWLKHhgBsrrIJDOrU.e6Kk3Kqc6T/Xe7FKSBfR.TM4PD0"),
        (65, "$6$x.Y/9$rKh8drjz4nWQxBVTiuEYpRkpG9x1T/vfgafKt/4sXZ.AfgHvx8PVYfjgGOz36/eIleYmehhDvnQWaKFhPjQdt0"),
        (128, "$6$x.Y/9$VNItzhT2.0n6ite/OKI28nME/lkNKKmJnzqbj.rKmpYfUM6/vcQqo1g1tPDRNvNgghO83FRdaP9jQMQNI7DNi1"),
        (200, "$6$x.Y/9$0wrYvIuW2.tqXo9ZjMbOoT.azbUMPFuF99OFCCJKRBWLUmCrQQj1wGJk0mh/Js3Fpynm7ve./lTU4bZpJMGlA0"),
    ];

    #[test]
    fn spec_vectors_crypt() {
        for (setting, password, want) in SPEC {
            assert_eq!(
                crypt(password.as_bytes(), setting).as_deref(),
                Ok(*want),
                "{setting}"
            );
        }
    }

    #[test]
    fn spec_vectors_verify() {
        for (_, password, hash) in SPEC {
            assert!(is_supported_hash(hash), "{hash}");
            assert!(verify(password.as_bytes(), hash), "{hash}");
            let mut wrong = password.as_bytes().to_vec();
            wrong.push(b'!');
            assert!(!verify(&wrong, hash), "{hash}");
        }
    }

    #[test]
    fn rounds_below_minimum_are_clamped_when_verifying() {
        // Spec: rounds=10 means 1000, also in a stored hash.
        let cases = [
            (
                "$5$rounds=10$roundstoolow$yfvwcWrQ8l/K0DAWyuPMDNHpIVlTQebY9l/gL972bIC",
                "the minimum number is still observed",
            ),
            (
                "$6$rounds=0$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4ZEQpyUNGc0dqbpBYYBaHHrsX.",
                "the minimum number is still observed",
            ),
            (
                "$5$rounds=005000$abc$qsg6EHbUzHQzF1POlD7zUwBINSELQxypPaeDcZe6vH0",
                "secret",
            ),
        ];
        for (hash, password) in cases {
            assert!(verify(password.as_bytes(), hash), "{hash}");
        }
    }

    #[test]
    fn openssl_vectors() {
        for (password, hash) in OPENSSL {
            assert!(verify(password.as_bytes(), hash), "{hash}");
            for wrong in ["", "secret ", "Secret", "pa:ss word", "pass:wörd!", "X"] {
                assert!(!verify(wrong.as_bytes(), hash), "{wrong:?} {hash}");
            }
        }
        for (n, hash) in OPENSSL_LENGTHS {
            let password = vec![b'x'; *n];
            assert!(verify(&password, hash), "{n} {hash}");
            assert!(!verify(&password[1..], hash), "{n} {hash}");
            assert_eq!(crypt(&password, hash).as_deref(), Ok(*hash));
        }
    }

    #[test]
    fn malformed_hashes_never_verify() {
        let sha512 = "C4RIzsZQIZD5.VEF3opYL3gpxyszQ5ZhzXA6QVzJgu5AFkGPMkRyVj.ao7MicoMK9iVtJ6ezaZhxMP8Sj1Ymr0";
        let sha256 = "qsg6EHbUzHQzF1POlD7zUwBINSELQxypPaeDcZe6vH0";
        let cases: Vec<(String, CryptError)> = vec![
            (String::new(), CryptError::Scheme),
            ("$".into(), CryptError::Scheme),
            ("$6".into(), CryptError::Scheme),
            ("$6$".into(), CryptError::Hash),
            ("$5$abc".into(), CryptError::Hash),
            ("$5$abc$".into(), CryptError::Hash),
            ("$1$abc$xyz".into(), CryptError::Scheme),
            ("$2b$10$abc".into(), CryptError::Scheme),
            ("$7$abc$xyz".into(), CryptError::Scheme),
            ("6$saltsalt$x".into(), CryptError::Scheme),
            ("$6$rounds=x$saltsalt$x".into(), CryptError::Rounds),
            (format!("$6$rounds=$saltsalt${sha512}"), CryptError::Rounds),
            (
                format!("$6$rounds=+5000$saltsalt${sha512}"),
                CryptError::Rounds,
            ),
            (
                format!("$6$rounds= 5000$saltsalt${sha512}"),
                CryptError::Rounds,
            ),
            (
                format!("$6$rounds=-1$saltsalt${sha512}"),
                CryptError::Rounds,
            ),
            ("$6$rounds=5000".into(), CryptError::Rounds),
            (
                format!("$6$rounds=10000001$saltsalt${sha512}"),
                CryptError::TooManyRounds(10_000_001),
            ),
            (
                format!("$6$rounds=99999999999999999999999$saltsalt${sha512}"),
                CryptError::TooManyRounds(u64::MAX),
            ),
            (format!("$6$${sha512}"), CryptError::Salt),
            (format!("$6$saltsaltsaltsalts${sha512}"), CryptError::Salt),
            (format!("$6$sält${sha512}"), CryptError::Salt),
            (format!("$6$sa lt${sha512}"), CryptError::Salt),
            (format!("$6$saltsalt${sha256}"), CryptError::Hash),
            (format!("$5$abc${sha512}"), CryptError::Hash),
            (format!("$5$abc${sha256}$"), CryptError::Hash),
            (format!("$5$abc${sha256}x"), CryptError::Hash),
            (format!("$5$abc$ {sha256}"), CryptError::Hash),
            (format!("$5$abc${}é", &sha256[..41]), CryptError::Hash),
            (format!("$5$abc${}+", &sha256[..42]), CryptError::Hash),
            ("€€€".into(), CryptError::Scheme),
            ("$6$€$€".into(), CryptError::Salt),
        ];
        for (hash, err) in &cases {
            assert_eq!(check_hash(hash), Err(err.clone()), "{hash:?}");
            assert!(!is_supported_hash(hash), "{hash:?}");
            assert!(!verify(b"secret", hash), "{hash:?}");
            assert!(!verify(b"", hash), "{hash:?}");
            assert!(!verify("pa:ss wörd".as_bytes(), hash), "{hash:?}");
        }
    }

    #[test]
    fn rounds_at_the_limit_are_supported() {
        let sha512 = "C4RIzsZQIZD5.VEF3opYL3gpxyszQ5ZhzXA6QVzJgu5AFkGPMkRyVj.ao7MicoMK9iVtJ6ezaZhxMP8Sj1Ymr0";
        assert!(is_supported_hash(&format!(
            "$6$rounds=10000000$saltsalt${sha512}"
        )));
    }

    #[test]
    fn long_passwords_are_refused() {
        let long = vec![b'x'; PASSWORD_MAX + 1];
        assert_eq!(
            crypt(&long, "$5$abc"),
            Err(CryptError::PasswordTooLong),
            "over the limit"
        );
        assert!(crypt(&long[1..], "$5$abc").is_ok(), "at the limit");
    }

    #[test]
    fn constant_time_eq_table() {
        let cases: &[(&[u8], &[u8], bool)] = &[
            (b"", b"", true),
            (b"abc", b"abc", true),
            (b"abc", b"abd", false),
            (b"abc", b"ab", false),
            (b"xbc", b"abc", false),
        ];
        for (a, b, want) in cases {
            assert_eq!(constant_time_eq(a, b), *want, "{a:?} {b:?}");
        }
    }

    #[test]
    fn errors_display_short_lowercase() {
        let all = [
            CryptError::Scheme,
            CryptError::Rounds,
            CryptError::TooManyRounds(20_000_000),
            CryptError::Salt,
            CryptError::Hash,
            CryptError::PasswordTooLong,
        ];
        for e in all {
            let s = e.to_string();
            assert!(s.starts_with(|c: char| !c.is_ascii_uppercase()), "{s}");
            assert!(!s.ends_with('.'), "{s}");
        }
    }
}
