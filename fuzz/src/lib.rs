//! The product's pure modules, compiled from ../src with #[path] so the fuzz targets can reach them.
//!
//! picorelay is a binary crate; including the files keeps `crate::…` paths inside them working
//! (they resolve to this crate) without a product-side lib.rs. Only modules with no I/O on the
//! hot path are fuzzed, but their dependencies (tls for client) must be here to compile.
#![allow(dead_code, unused_imports)]

#[path = "../../src/base64.rs"]
pub mod base64;
#[path = "../../src/client.rs"]
pub mod client;
#[path = "../../src/config.rs"]
pub mod config;
#[path = "../../src/crypt.rs"]
pub mod crypt;
/// Only the pure OAuth parsers; the token store and login flows are not fuzzed (and not
/// included, so this list does not have to follow them).
#[path = "../../src/oauth"]
pub mod oauth {
    pub mod http;
    pub mod json;
}
#[path = "../../src/passwd.rs"]
pub mod passwd;
#[path = "../../src/session.rs"]
pub mod session;
#[path = "../../src/smtp/mod.rs"]
pub mod smtp;
#[path = "../../src/spool/mod.rs"]
pub mod spool;
#[path = "../../src/sys.rs"]
pub mod sys;
#[path = "../../src/tls.rs"]
pub mod tls;
