//! Service load balancing as pure data.
//!
//! [`resolve`] turns a Service and its EndpointSlices into frontends, each
//! with its active backends, as Kubernetes defines them. [`LbState`] keeps
//! what the datapath's maps hold, assigns stable ids, and for a changed
//! service computes the few map writes that bring the maps to the new state
//! ([`MapOp`]), in an order that never lets the datapath see a half-written
//! service. [`MemMaps`] applies those writes to an in-memory copy of the maps,
//! for tests without privileges; the datapath crate applies them to the
//! kernel's. [`LbDump`] is what either side reads back.
#![forbid(unsafe_code)]

pub mod catalog;
pub mod dump;
pub mod maglev;
pub mod mem;
pub mod resolve;
pub mod simulate;
pub mod state;
pub mod types;

pub use catalog::Catalog;
pub use dump::LbDump;
pub use mem::MemMaps;
pub use resolve::{resolve_service, resolve_service_in, resolve_service_with, ResolveContext, ResolveError};
pub use sluice_model::{ExternalTrafficPolicy, LbAlgorithm, LbMode};
pub use state::{Conflict, LbState};
pub use types::*;

/// Where map writes go: the kernel's maps, or an in-memory copy in tests.
pub trait LbMaps {
    type Error: std::error::Error + Send + Sync + 'static;
    fn apply(&mut self, ops: &[MapOp]) -> Result<(), Self::Error>;
    fn dump(&self) -> Result<LbDump, Self::Error>;
}
