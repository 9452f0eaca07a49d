//! Side effects that leave the system: mail, push and webhooks. Reactors turn
//! events into work (`reactor`: account events into mails; `push`: published
//! messages and forwarded events into pushes; `webhook`: events into webhook
//! deliveries), each on a durable consumer (`durable`); the mailer and the
//! webhook deliverer carry out what they queue. `ssrf` is the guard for calls
//! to addresses a tenant chooses.

pub mod durable;
pub mod mail;
pub mod push;
pub mod reactor;
pub mod ssrf;
pub mod webhook;
