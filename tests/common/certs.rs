//! Throwaway TLS material for the tests: a test CA and two server certificates
//! for localhost/127.0.0.1 signed by it, made once per test process with the
//! `openssl` CLI (the same commands as /work/scratch/tls/gen-test-certs.sh).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Certs names the generated files; all PEM.
pub struct Certs {
    pub dir: PathBuf,
    /// The test CA certificate: what clients trust.
    pub ca: PathBuf,
    /// Server certificate (CN=localhost, SAN DNS:localhost, IP:127.0.0.1) and its PKCS#8 EC key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A second, different server certificate and key (a "renewed" one for reload tests).
    pub cert2: PathBuf,
    pub key2: PathBuf,
}

/// certs generates the material on first use and returns it to every caller.
pub fn certs() -> &'static Certs {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    CERTS.get_or_init(generate)
}

/// openssl runs the openssl CLI in `dir` and panics with its stderr on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (install the openssl package)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn generate() -> Certs {
    // CARGO_TARGET_TMPDIR is cargo's scratch space for integration tests; one
    // folder per test process so parallel test binaries never share files.
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = root.join(format!("test-certs-{}", std::process::id()));
    // Leftovers of earlier runs: an hour old is stale (nextest runs each test in
    // its own process, so younger folders may be in use).
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 3600);
            if old && e.file_name().to_string_lossy().starts_with("test-certs-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "3650",
            "-subj",
            "/CN=picorelay test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    for (name, cn) in [("server", "localhost"), ("server2", "localhost renewed")] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        openssl(
            &dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &key,
            ],
        );
        openssl(
            &dir,
            &[
                "req",
                "-new",
                "-key",
                &key,
                "-subj",
                &format!("/CN={cn}"),
                "-out",
                &csr,
            ],
        );
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "3650",
                "-extfile",
                "leaf.ext",
                "-out",
                &pem,
            ],
        );
    }
    Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        cert2: dir.join("server2.pem"),
        key2: dir.join("server2.key"),
        dir,
    }
}

/// passwd makes a `[users]` hash exactly as a user would: `openssl passwd -6 PW`
/// (alg "6") or `openssl passwd -5 PW` (alg "5").
pub fn passwd(alg: &str, password: &str) -> String {
    let out = Command::new("openssl")
        .args(["passwd", &format!("-{alg}"), password])
        .output()
        .expect("run openssl passwd");
    assert!(out.status.success(), "openssl passwd -{alg} failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
