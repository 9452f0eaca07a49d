//! Side effects that leave the system: mail today; webhooks and push later.

pub mod mail;
