//! Test beds in throwaway network namespaces.
//!
//! Rules kept by everything here: nothing is configured in the host's own
//! network namespace (veth pairs are created inside the node namespace and
//! their peers moved straight into the pods); every namespace, cgroup and
//! process created is removed on drop, also on panic; only processes we
//! started are killed, by pid. Addresses come from 198.18.0.0/15 (RFC 2544)
//! and fd00:5c::/32.

pub mod cgroup;
pub mod kubeproxy;
pub mod netns;
pub mod probe;
pub mod proc;
pub mod stats;
pub mod topo;
