//! Side effects that leave the system: mail today; webhooks and push later.
//! Reactors turn events into work (`reactor`: account events into mails); the
//! mailer delivers what they queue (`mail`).

pub mod mail;
pub mod reactor;
