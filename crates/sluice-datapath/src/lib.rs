//! The Sluice datapath: loading, pinning and adopting the BPF programs and
//! maps, and reading and writing the maps. The only crate that talks to the
//! kernel's BPF interfaces.
//!
//! Kernel requirements: cgroup v2 sock_addr hooks with bpf_link (5.7+),
//! `getpeername`/`recvmsg` hooks (5.8+), `bpf_set_retval` from sock_addr
//! programs (5.18+). Checked here on 6.18.
//!
//! Layout of the pin directory (default `/sys/fs/bpf/sluice`):
//! `maps/<name>_v<layout>` for every map, `progs/<program>_v<layout>` for
//! every program, `links/<program>_v<layout>` for every cgroup link, and
//! `links/pod/<ifname>_{ingress,egress}_v1` / `links/host/<ifname>_..._v1`
//! for the tcx links of pod and node devices (see [`pod`]). A restarted agent loads the programs again,
//! reuses the pinned maps (libbpf refuses a map whose layout differs) and
//! swaps the new programs into the pinned links atomically, so neither
//! established nor new connections notice the restart.

pub mod ctgc;
pub mod encode;
pub mod fsutil;
pub mod lbmaps;
pub mod loader;
pub mod pod;
pub mod simulate;
pub mod sockterm;

#[allow(clippy::all, dead_code, non_camel_case_types, non_snake_case, unused_imports)]
pub mod skel {
    include!(concat!(env!("OUT_DIR"), "/sock.skel.rs"));
}

#[allow(clippy::all, dead_code, non_camel_case_types, non_snake_case, unused_imports)]
pub mod skel_term {
    include!(concat!(env!("OUT_DIR"), "/sock_term.skel.rs"));
}

#[allow(clippy::all, dead_code, non_camel_case_types, non_snake_case, unused_imports)]
pub mod skel_lxc {
    include!(concat!(env!("OUT_DIR"), "/lxc.skel.rs"));
}

#[allow(clippy::all, dead_code, non_camel_case_types, non_snake_case, unused_imports)]
pub mod skel_host {
    include!(concat!(env!("OUT_DIR"), "/host.skel.rs"));
}

#[allow(clippy::all, dead_code, non_camel_case_types, non_snake_case, unused_imports)]
pub mod skel_xdp {
    include!(concat!(env!("OUT_DIR"), "/xdp.skel.rs"));
}

pub use lbmaps::{KernelMaps, Metric};
pub use loader::{install, uninstall, DatapathConfig, InstallReport, LinkStatus, TableSizes};

/// Errors of the datapath. Load failures carry libbpf's message, which
/// includes the verifier log.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("{what}: {source}")]
    Bpf {
        what: String,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("map {map}: {message}")]
    Layout { map: String, message: String },
    #[error("{0}")]
    Other(String),
}

impl DatapathError {
    pub(crate) fn bpf(what: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> DatapathError {
        let what = what.into();
        move |source| DatapathError::Bpf { what, source }
    }
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DatapathError {
        let what = what.into();
        move |source| DatapathError::Io { what, source }
    }
}

/// Layout version, the suffix of every pinned name (`SL_LB_LAYOUT_VERSION`).
pub const LAYOUT_VERSION: u32 = 1;
