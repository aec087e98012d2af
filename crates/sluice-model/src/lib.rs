//! The Kubernetes-format objects Sluice accepts, parsed and checked.
//!
//! Only the fields the dataplane acts on are modelled; anything else in a
//! manifest is kept in the stored copy but ignored. Every error names the
//! file, the object and the field, so that a person can fix the manifest
//! without guessing.
#![forbid(unsafe_code)]

pub mod endpointslice;
pub mod error;
pub mod manifest;
pub mod meta;
pub mod pod;
pub mod service;

pub use endpointslice::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
pub use error::{ManifestError, Origin};
pub use manifest::{parse_documents, Kind, Manifest, Object, ObjectRef};
pub use meta::ObjectMeta;
pub use pod::Pod;
pub use service::{ExternalTrafficPolicy, IntOrString, LbAlgorithm, LbMode, Protocol, Service, ServicePort, ServiceType};
