//! Canopy's core: the pure domain (`domain`), the event store and keys on
//! JetStream (`store`), and the actors that run commands for each tenant (`tree`).

pub mod command;
pub mod contract;
pub mod domain;
pub mod hasher;
pub mod memory;
pub mod store;
pub mod tree;
