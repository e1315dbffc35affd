//! The SMTP protocol vocabulary: commands, replies, paths and the DATA stream, with no I/O.

pub mod address;
pub mod command;
pub mod data;
pub mod reply;
pub mod sasl;
