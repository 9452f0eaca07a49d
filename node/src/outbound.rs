//! Side effects that leave the system: mail and push. Reactors turn events
//! into work (`reactor`: account events into mails; `push`: published messages
//! and forwarded events into pushes), each on a durable consumer (`durable`);
//! the mailer delivers what they queue (`mail`). `ssrf` is the guard for
//! calls to addresses a tenant chooses.

pub mod durable;
pub mod mail;
pub mod push;
pub mod reactor;
pub mod ssrf;
