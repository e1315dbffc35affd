//! The SMTP protocol vocabulary: commands, replies (and which of them mean throttling), paths and the DATA stream, with no I/O.

pub mod address;
pub mod command;
pub mod data;
pub mod reply;
pub mod sasl;
pub mod throttle;
