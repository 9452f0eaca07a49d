//! Where state lives: the event log on JetStream (the only code that knows
//! subjects and headers), snapshots, and the sealed keys in KV.

pub mod event_store;
pub mod seal;
