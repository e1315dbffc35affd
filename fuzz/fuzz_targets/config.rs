//! Fuzzes the config parser (ini text → validated Config or error lines); the password never
//! shows in the Debug output.
#![no_main]

use libfuzzer_sys::fuzz_target;
use picorelay_fuzz::config::Config;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(Path::new("fuzz.ini"), text) {
        Ok(cfg) => {
            assert!(cfg.server.workers > 0);
            if let Some(pw) = cfg.smarthost.password.clone() {
                let shown = format!("{cfg:?}");
                let mut masked = cfg.clone();
                masked.smarthost.password = None;
                let without = format!("{masked:?}");
                if pw.len() >= 6 && !without.contains(&pw) {
                    assert!(!shown.contains(&pw), "password in Debug output");
                }
            }
        }
        Err(errors) => {
            // One line per problem, each naming the file.
            for line in errors.0.iter() {
                assert!(line.starts_with("fuzz.ini: "), "{line:?}");
                assert!(!line.contains('\n'), "{line:?}");
            }
        }
    }
});
