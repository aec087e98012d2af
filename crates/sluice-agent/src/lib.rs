//! The Sluice agent.
//!
//! [`core::Core`] holds the desired objects, the store and what the maps
//! hold; it validates a batch of changes as a whole, commits it to the
//! store in one transaction and writes the difference to the maps. It is
//! generic over where map writes go, so its behaviour is tested without
//! privileges against in-memory maps. [`run`] wires it to the kernel's
//! maps, the API socket and the node-address refresher.

pub mod core;
pub mod health;
pub mod ipam;
pub mod podnet;
pub mod pods;
pub mod nodeaddr;
pub mod server;

pub use crate::core::Core;
pub use server::{run, AgentConfig};
