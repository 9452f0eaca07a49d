//! Integration tests: one binary, real nats-server, embedded SurrealDB, real nodes.

mod harness;

mod accounts;
mod actors;
mod bad_input;
mod contracts;
mod process;
mod event_store;
