//! Every config example in the documentation is valid: each ```ini fenced block
//! in README.md and docs/*.md is written to a file and `picorelay -c FILE check`
//! must exit 0 on it. Black-box: only the built binary is run.
//!
//! Fences:
//! - ```ini          a whole config file: checked.
//! - ```ini partial  deliberately incomplete or not a picorelay config (e.g. a
//!   systemd drop-in): skipped. Use sparingly.
//!
//! How an example is patched before the check (the examples name real system
//! paths that do not exist on the test machine; everything else is checked
//! exactly as written):
//! - `[queue] dir` is replaced by a fresh temporary folder; an example without
//!   it gets one (in its `[queue]` section, or a `[queue]` section appended), so
//!   that the default /var/spool/picorelay is never touched;
//! - `[server] tls_cert` / `tls_key` become a generated self-signed certificate
//!   and its key (the openssl CLI makes them, as in the other tests);
//! - `[smarthost] ca_file` becomes that certificate;
//! - `[smarthost] password_file` and `[oauth] client_secret_file` become a
//!   temporary file holding a password (mode 0600);
//! - `[oauth] ca_file` becomes the generated certificate, as `[smarthost] ca_file`;
//! - `[oauth] client_certificate` / `client_key` become a second generated self-signed
//!   certificate with its RSA key (the certificate credential takes RSA only; `check` loads
//!   the pair);
//! - `[server] pid_file` and `[log] file` become paths in the temporary folder;
//! - `[server] user` becomes the user running the test (the example's account,
//!   e.g. `picorelay`, need not exist here).
//!
//! Inline comments on a patched line are dropped with its value.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The binary under test (PICORELAY_TEST_BIN as in tests/common).
fn bin() -> String {
    std::env::var("PICORELAY_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_picorelay").into())
}
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// One ```ini block: where it starts and its text.
struct Example {
    file: String,
    line: usize,
    text: String,
}

/// examples collects the ```ini blocks of one Markdown file; ```ini partial is skipped.
fn examples(path: &Path) -> Vec<Example> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let name = path
        .strip_prefix(ROOT)
        .unwrap_or(path)
        .display()
        .to_string();
    let mut out = Vec::new();
    let mut current: Option<(usize, bool, String)> = None;
    let mut in_other_fence = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if let Some((start, skip, body)) = current.as_mut() {
            if t.starts_with("```") {
                if !*skip {
                    out.push(Example {
                        file: name.clone(),
                        line: *start,
                        text: std::mem::take(body),
                    });
                }
                current = None;
            } else {
                body.push_str(line);
                body.push('\n');
            }
            continue;
        }
        if let Some(info) = t.strip_prefix("```") {
            if in_other_fence {
                // Only a bare ``` closes a fence; ```ini inside a ```sh block is text.
                if info.trim().is_empty() {
                    in_other_fence = false;
                }
                continue;
            }
            let words: Vec<&str> = info.split_whitespace().collect();
            match words.as_slice() {
                ["ini"] => current = Some((i + 1, false, String::new())),
                ["ini", "partial"] => current = Some((i + 1, true, String::new())),
                [w, ..] if w.starts_with("ini") => {
                    panic!(
                        "{name}:{}: unknown fence ```{info} (use ```ini or ```ini partial)",
                        i + 1
                    )
                }
                _ => in_other_fence = true,
            }
        }
    }
    assert!(current.is_none(), "{name}: unclosed ```ini block");
    out
}

/// Scratch holds the files the patched examples point to.
struct Scratch {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    password: PathBuf,
    rsa_cert: PathBuf,
    rsa_key: PathBuf,
    user: String,
}

impl Scratch {
    /// new makes the folder `guide-TAG-PID` (one per test: they run in parallel).
    fn new(tag: &str) -> Scratch {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("guide-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args([
                "-nodes",
                "-days",
                "30",
                "-subj",
                "/CN=nas.home.arpa",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl (install the openssl package)");
        assert!(
            out.status.success(),
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The `[oauth]` certificate credential: RSA, as the guide's openssl command makes it.
        let rsa_cert = dir.join("oauth-rsa.crt");
        let rsa_key = dir.join("oauth-rsa.key");
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-sha256", "-nodes"])
            .args(["-days", "30", "-subj", "/CN=picorelay", "-keyout"])
            .arg(&rsa_key)
            .arg("-out")
            .arg(&rsa_cert)
            .output()
            .expect("run openssl (install the openssl package)");
        assert!(
            out.status.success(),
            "openssl req (rsa) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let password = dir.join("password");
        std::fs::write(&password, "not-a-real-password\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&rsa_key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let user = Command::new("id")
            .arg("-un")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "root".to_string());
        Scratch {
            dir,
            cert,
            key,
            password,
            rsa_cert,
            rsa_key,
            user,
        }
    }
}

/// patch applies the rules of the module comment; `n` numbers the example.
fn patch(ex: &Example, s: &Scratch, n: usize) -> String {
    let spool = s.dir.join(format!("spool-{n}"));
    let mut out = String::new();
    let mut section = String::new();
    let mut has_queue = false;
    let mut has_dir = false;
    for line in ex.text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix('[') {
            section = rest
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            out.push_str(line);
            out.push('\n');
            if section == "queue" {
                has_queue = true;
            }
            continue;
        }
        let key = match t.split_once('=') {
            Some((k, _)) if !t.starts_with(';') && !t.starts_with('#') => {
                k.trim().to_ascii_lowercase()
            }
            _ => {
                out.push_str(line);
                out.push('\n');
                continue;
            }
        };
        let replacement: Option<PathBuf> = match (section.as_str(), key.as_str()) {
            ("queue", "dir") => {
                has_dir = true;
                Some(spool.clone())
            }
            ("server", "tls_cert") | ("smarthost", "ca_file") | ("oauth", "ca_file") => {
                Some(s.cert.clone())
            }
            ("server", "tls_key") => Some(s.key.clone()),
            ("smarthost", "password_file") | ("oauth", "client_secret_file") => {
                Some(s.password.clone())
            }
            ("oauth", "client_certificate") => Some(s.rsa_cert.clone()),
            ("oauth", "client_key") => Some(s.rsa_key.clone()),
            ("server", "pid_file") => Some(s.dir.join(format!("pid-{n}"))),
            ("log", "file") => Some(s.dir.join(format!("log-{n}"))),
            ("server", "user") => {
                out.push_str(&format!("user = {}\n", s.user));
                continue;
            }
            _ => None,
        };
        match replacement {
            Some(p) => out.push_str(&format!("{key} = {}\n", p.display())),
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if !has_dir {
        let line = format!("dir = {}\n", spool.display());
        if has_queue {
            // Right after the [queue] header.
            let mut patched = String::new();
            let mut done = false;
            for l in out.lines() {
                patched.push_str(l);
                patched.push('\n');
                if !done && l.trim().eq_ignore_ascii_case("[queue]") {
                    patched.push_str(&line);
                    done = true;
                }
            }
            assert!(done, "{}:{}: [queue] header not found", ex.file, ex.line);
            out = patched;
        } else {
            out.push_str("\n[queue]\n");
            out.push_str(&line);
        }
    }
    out
}

fn doc_files() -> Vec<PathBuf> {
    let root = Path::new(ROOT);
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "md"))
                .collect()
        })
        .unwrap_or_default();
    docs.sort();
    files.extend(docs);
    files
}

#[test]
fn every_ini_example_in_the_docs_passes_check() {
    let scratch = Scratch::new("examples");
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in doc_files() {
        for ex in examples(&file) {
            checked += 1;
            let text = patch(&ex, &scratch, checked);
            let path = scratch.dir.join(format!("example-{checked}.ini"));
            std::fs::write(&path, &text).unwrap();
            let out = Command::new(bin())
                .arg("-c")
                .arg(&path)
                .arg("check")
                .env_remove("PICORELAY_CONFIG")
                .output()
                .expect("run picorelay");
            if !out.status.success() {
                failures.push(format!(
                    "{}:{}: picorelay check exited {:?}\n--- example as checked ({}) ---\n{text}--- stdout ---\n{}--- stderr ---\n{}",
                    ex.file,
                    ex.line,
                    out.status.code(),
                    path.display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The guide alone has about ten; a parser that found none would pass vacuously.
    assert!(checked >= 5, "only {checked} ```ini examples found");
    eprintln!("{checked} ini examples checked");
    let _ = std::fs::remove_dir_all(&scratch.dir);
}

#[test]
fn the_patch_rules_do_what_the_module_comment_says() {
    let scratch = Scratch::new("rules");
    let ex = Example {
        file: "inline".to_string(),
        line: 1,
        text: "[server]\ntls_cert = /etc/ssl/x.pem ; comment\ntls_key = /etc/ssl/x.key\nuser = picorelay\n\
               [smarthost]\npassword_file = /etc/p\nca_file = /etc/ca.pem\n\
               [oauth]\nclient_secret_file = /etc/picorelay/app.secret\nca_file = /etc/idp-ca.pem\n\
               [queue]\nmax_size = 4M\n"
            .to_string(),
    };
    let text = patch(&ex, &scratch, 0);
    assert!(
        text.contains(&format!("tls_cert = {}\n", scratch.cert.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("tls_key = {}\n", scratch.key.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("ca_file = {}\n", scratch.cert.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("password_file = {}\n", scratch.password.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "[oauth]\nclient_secret_file = {}\nca_file = {}\n",
            scratch.password.display(),
            scratch.cert.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("user = {}\n", scratch.user)),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "[queue]\ndir = {}\n",
            scratch.dir.join("spool-0").display()
        )),
        "{text}"
    );
    assert!(!text.contains("/etc/"), "{text}");
    let ex = Example {
        file: "inline".to_string(),
        line: 1,
        text: "[oauth]\nclient_certificate = /etc/picorelay/m365.crt\nclient_key = /etc/picorelay/m365.key\n"
            .to_string(),
    };
    assert!(
        patch(&ex, &scratch, 2).starts_with(&format!(
            "[oauth]\nclient_certificate = {}\nclient_key = {}\n",
            scratch.rsa_cert.display(),
            scratch.rsa_key.display()
        )),
        "{}",
        patch(&ex, &scratch, 2)
    );
    // No [queue] at all: one is appended.
    let ex = Example {
        file: "inline".to_string(),
        line: 1,
        text: "[smarthost]\nhost = smtp.example.com\n".to_string(),
    };
    assert!(patch(&ex, &scratch, 1).ends_with(&format!(
        "\n[queue]\ndir = {}\n",
        scratch.dir.join("spool-1").display()
    )));
    // Fences: ```ini partial is skipped, other languages are ignored.
    let md = scratch.dir.join("fences.md");
    std::fs::write(
        &md,
        "```sh\n```ini\n```\n```ini\n[log]\n```\n```ini partial\n[x]\n```\n",
    )
    .unwrap();
    let found = examples(&md);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].text, "[log]\n");
    assert_eq!(found[0].line, 4);
    let _ = std::fs::remove_dir_all(&scratch.dir);
}
