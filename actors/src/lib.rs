//! Canopy's core: the pure domain (`account`, `tenant`), the event store on
//! JetStream, and the actors that run commands for each tenant.

pub mod account;
pub mod aggregate;
pub mod command;
pub mod contract;
pub mod event_store;
pub mod executor;
pub mod hasher;
pub mod ids;
pub mod memory;
pub mod seal;
pub mod tenant;
pub mod tree;
