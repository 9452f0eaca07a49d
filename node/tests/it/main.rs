//! Integration tests: one binary, real nats-server, embedded SurrealDB, real nodes.

mod harness;
mod http;
mod identity_input;
mod invitations;
mod lifecycle;
mod limits;
mod passwords;

mod access_tokens;
mod accounts;
mod actors;
mod audit;
mod backups;
mod bad_input;
mod bench;
mod cluster;
mod commands;
mod contracts;
mod event_store;
mod failover;
mod mail;
mod modules;
mod nats_auth;
mod permission_matrix;
mod process;
mod projection;
mod push;
mod roles;
mod sessions;
mod subscriptions;
mod tenant_lifecycle;
mod verification;
mod webhooks;
