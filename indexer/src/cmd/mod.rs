//! The admin commands, one file each: `replay` rebuilds the index, `dlq` lists and
//! redrives dead letters.

pub mod dlq;
pub mod replay;
