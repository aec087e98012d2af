//! Install, adopt and remove the datapath.

use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{libbpf_sys, Link, MapCore, OpenObject};
use serde::{Deserialize, Serialize};

use crate::skel::SockSkelBuilder;
use crate::{fsutil, DatapathError, LAYOUT_VERSION};

/// Maps pinned under `<pin_dir>/maps/`: the C names carry the layout version.
/// Programs are pinned under `<pin_dir>/progs/` and their cgroup links under
/// `<pin_dir>/links/`, both with the layout version as a suffix.
pub const MAPS: &[&str] = &[
    "sl_lb_svc_v1",
    "sl_lb_be_v1",
    "sl_lb_rnat_v1",
    "sl_lb_skrn_v1",
    "sl_lb_aff_v1",
    "sl_lb_affm_v1",
    "sl_node_addr_v1",
    "sl_metrics_v2",
    "sl_sock_lb_v1",
    "sl_ep_v1",
    "sl_cfg_v1",
    "sl_ct_v1",
    "sl_snat_v1",
    "sl_lb_maglev_v1",
];

/// Pins of map layouts this build no longer uses: removed by install (once
/// the new programs are in place) and by uninstall.
pub const LEGACY_MAPS: &[&str] = &["sl_metrics_v1"];

/// Programs of pod and node devices, pinned under `<pin_dir>/progs/` and
/// attached per device through [`crate::pod::PodDatapath`].
pub const DEVICE_PROGRAMS: &[&str] = &["sl_from_pod", "sl_to_pod", "sl_host_ingress", "sl_host_egress", "sl_host_xdp"];

/// Programs and the link pin each is attached through.
pub const PROGRAMS: &[&str] = &[
    "sl_connect4",
    "sl_connect6",
    "sl_sendmsg4",
    "sl_sendmsg6",
    "sl_recvmsg4",
    "sl_recvmsg6",
    "sl_getpeername4",
    "sl_getpeername6",
];

#[derive(Debug, Clone)]
pub struct DatapathConfig {
    /// Where maps and links are pinned; on a bpffs (mounted if missing).
    pub pin_dir: PathBuf,
    /// The cgroup v2 directory whose sockets are translated.
    pub cgroup: PathBuf,
    /// Slots of each Maglev table (a prime, checked by the caller): the
    /// programs' `sl_maglev_m` and the size of the inner-map template.
    pub maglev_size: u32,
    /// Entries of the conntrack and NAT tables (`--ct-max`, `--nat-max`).
    pub tables: TableSizes,
}

/// Sizes of the conntrack (`sl_ct_v1`) and NAT (`sl_snat_v1`) tables, set
/// on every object that declares them before loading (libbpf reuses a pin
/// only if the sizes agree). A table pinned with another size keeps it
/// until `sluice datapath uninstall`: the object is given the pinned size,
/// and the difference is reported in [`InstallReport::warnings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSizes {
    pub ct_max: u32,
    pub nat_max: u32,
}

/// `SL_CT_MAX` and `SL_SNAT_MAX` of the C headers.
pub const DEFAULT_CT_MAX: u32 = 1 << 16;
pub const DEFAULT_NAT_MAX: u32 = 1 << 16;
/// Largest accepted table size (16M entries).
pub const MAX_TABLE_ENTRIES: u32 = 16 << 20;

impl Default for TableSizes {
    fn default() -> Self {
        TableSizes { ct_max: DEFAULT_CT_MAX, nat_max: DEFAULT_NAT_MAX }
    }
}

impl TableSizes {
    /// Each size must be above 0 and at most [`MAX_TABLE_ENTRIES`] (a power of two is not required).
    pub fn validate(&self) -> Result<(), String> {
        for (flag, n) in [("--ct-max", self.ct_max), ("--nat-max", self.nat_max)] {
            if n == 0 || n > MAX_TABLE_ENTRIES {
                return Err(format!("{flag} {n}: give a number of entries from 1 to {MAX_TABLE_ENTRIES} (16M)"));
            }
        }
        Ok(())
    }
}

/// Give the conntrack and NAT maps of an opened object their sizes (before
/// load). With `pin_dir`, a map already pinned with another size keeps that
/// size (so that libbpf can reuse it) and a warning says so.
pub(crate) fn size_tables(obj: &mut OpenObject, pin_dir: Option<&Path>, t: &TableSizes) -> Result<Vec<String>, DatapathError> {
    let mut warnings = Vec::new();
    for mut map in obj.maps_mut() {
        let name = map.name().to_string_lossy().to_string();
        let (want, flag) = match name.as_str() {
            crate::pod::CT_MAP => (t.ct_max, "--ct-max"),
            crate::pod::SNAT_MAP => (t.nat_max, "--nat-max"),
            _ => continue,
        };
        let mut size = want;
        if let Some(dir) = pin_dir {
            let pin = map_pin(dir, &name);
            if pin.exists() {
                if let Ok(h) = libbpf_rs::MapHandle::from_pinned_path(&pin) {
                    let pinned = h.max_entries();
                    if pinned != want {
                        warnings.push(format!(
                            "{name} is pinned with {pinned} entries, not the {want} of {flag}: it keeps {pinned} until `sluice datapath uninstall` (then restart the agent)"
                        ));
                        size = pinned;
                    }
                }
            }
        }
        map.set_max_entries(size).map_err(DatapathError::bpf(format!("sizing {name} to {size} entries")))?;
    }
    Ok(warnings)
}

/// The sizes of the conntrack and NAT tables pinned under `pin_dir` (None: not pinned).
pub fn pinned_table_sizes(pin_dir: &Path) -> (Option<u32>, Option<u32>) {
    let size = |name: &str| libbpf_rs::MapHandle::from_pinned_path(map_pin(pin_dir, name)).ok().map(|h| h.max_entries());
    (size(crate::pod::CT_MAP), size(crate::pod::SNAT_MAP))
}

/// The Maglev table size when none is configured.
pub const DEFAULT_MAGLEV_SIZE: u32 = 16381;

/// Give the Maglev outer map of an opened object an inner-map template of
/// `m` entries (before load). libbpf cannot resize the template it builds
/// from the BTF, so the template is made here (an array of `m` backend ids,
/// BPF_F_INNER_MAP so that tables of other sizes can be stored too, see
/// `bpf/include/maglev.h`) and handed over by descriptor. Keep the returned
/// handle until the object is loaded. The template only matters when the
/// outer map is created; a pinned outer map keeps its own.
pub(crate) fn size_maglev_template(obj: &mut OpenObject, m: u32) -> Result<Option<libbpf_rs::MapHandle>, DatapathError> {
    let mut template = None;
    for mut map in obj.maps_mut() {
        if map.name().to_string_lossy() != crate::lbmaps::MAGLEV_MAP {
            continue;
        }
        let opts = libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
            map_flags: libbpf_sys::BPF_F_INNER_MAP,
            ..Default::default()
        };
        let t = libbpf_rs::MapHandle::create(libbpf_rs::MapType::Array, Some("sl_lb_mgl_tmpl"), 4, 4, m, &opts)
            .map_err(DatapathError::bpf(format!("creating the Maglev table template ({m} slots)")))?;
        map.set_inner_map_fd(t.as_fd()).map_err(DatapathError::bpf("setting the Maglev table template"))?;
        template = Some(t);
    }
    Ok(template)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkStatus {
    pub program: String,
    pub pin: String,
    /// `attached` (new link), `adopted` (pinned link, program replaced), or
    /// what went wrong.
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstallReport {
    pub pin_dir: String,
    pub cgroup: String,
    pub mounted_bpffs: bool,
    /// Maps that existed before and were reused.
    pub adopted_maps: Vec<String>,
    pub links: Vec<LinkStatus>,
    /// Things the operator should know (a table pinned with another size).
    #[serde(default)]
    pub warnings: Vec<String>,
}

pub fn map_pin(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join("maps").join(name)
}

pub fn prog_pin(pin_dir: &Path, prog: &str) -> PathBuf {
    pin_dir.join("progs").join(format!("{prog}_v{LAYOUT_VERSION}"))
}

pub fn link_pin(pin_dir: &Path, prog: &str) -> PathBuf {
    pin_dir.join("links").join(format!("{prog}_v{LAYOUT_VERSION}"))
}

/// Load the programs, reuse or create and pin the maps, and attach: a link
/// pinned by an earlier agent gets the new program swapped in atomically,
/// otherwise a new link is made and pinned. The pod and host device
/// programs are loaded too (same maps, programs pinned under `progs/`) and
/// swapped into every device link pinned under `links/pod/` and
/// `links/host/`; attaching to new devices is [`crate::pod::PodDatapath`]'s.
pub fn install(cfg: &DatapathConfig) -> Result<InstallReport, DatapathError> {
    let mounted_bpffs = fsutil::ensure_bpffs(&cfg.pin_dir)?;
    let host_cookie = fsutil::netns_cookie()?;

    let mut storage = Box::new(MaybeUninit::<OpenObject>::uninit());
    let mut open = SockSkelBuilder::default()
        .open(&mut storage)
        .map_err(DatapathError::bpf("opening the BPF object"))?;
    // Without it, NodePorts at 127.0.0.1 would silently stop working.
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or_else(|| DatapathError::Other("the BPF object has no .rodata section for its load-time settings".into()))?;
    rodata.sl_host_netns_cookie = host_cookie;
    rodata.sl_maglev_m = cfg.maglev_size;
    let _template = size_maglev_template(open.open_object_mut(), cfg.maglev_size)?;
    let mut warnings = size_tables(open.open_object_mut(), Some(&cfg.pin_dir), &cfg.tables)?;

    let mut adopted_maps = Vec::new();
    for mut m in open.open_object_mut().maps_mut() {
        let name = m.name().to_string_lossy().to_string();
        if !MAPS.contains(&name.as_str()) {
            continue; // .rodata and friends are per-load
        }
        let path = map_pin(&cfg.pin_dir, &name);
        if path.exists() {
            adopted_maps.push(name.clone());
        }
        m.set_pin_path(&path).map_err(DatapathError::bpf(format!("pin path for {name}")))?;
    }
    let skel = open.load().map_err(|e| DatapathError::Bpf {
        what: "loading the datapath (a map pinned with another layout is refused: remove it with `sluice datapath uninstall`)".into(),
        source: e,
    })?;

    let cg = std::fs::File::open(&cfg.cgroup).map_err(DatapathError::io(format!("opening cgroup {}", cfg.cgroup.display())))?;
    let mut links = Vec::new();
    for prog in skel.object().progs_mut() {
        let name = prog.name().to_string_lossy().to_string();
        if !PROGRAMS.contains(&name.as_str()) {
            continue;
        }
        let pin = link_pin(&cfg.pin_dir, &name);
        let state = if pin.exists() {
            let mut link = Link::open(&pin).map_err(DatapathError::bpf(format!("opening link {}", pin.display())))?;
            link.update_prog(&prog).map_err(DatapathError::bpf(format!("replacing the program of {}", pin.display())))?;
            "adopted"
        } else {
            let mut link = prog
                .attach_cgroup(cg.as_fd().as_raw_fd_compat())
                .map_err(DatapathError::bpf(format!("attaching {name} to {}", cfg.cgroup.display())))?;
            link.pin(&pin).map_err(DatapathError::bpf(format!("pinning {}", pin.display())))?;
            "attached"
        };
        // The program itself is pinned too, so that tools such as bpftool
        // find it by name; the previous agent's program pin is replaced.
        let prog_pin = prog_pin(&cfg.pin_dir, &name);
        if prog_pin.exists() {
            std::fs::remove_file(&prog_pin).map_err(DatapathError::io(format!("removing {}", prog_pin.display())))?;
        }
        let mut prog = prog;
        prog.pin(&prog_pin).map_err(DatapathError::bpf(format!("pinning {}", prog_pin.display())))?;
        links.push(LinkStatus { program: name, pin: pin.display().to_string(), state: state.into() });
    }
    drop(skel);

    let (dev_adopted, dev_links, dev_warnings) = crate::pod::install_devices_with(&cfg.pin_dir, host_cookie, cfg.maglev_size, &cfg.tables)?;
    for w in dev_warnings {
        if !warnings.contains(&w) {
            warnings.push(w);
        }
    }
    for m in dev_adopted {
        if !adopted_maps.contains(&m) {
            adopted_maps.push(m);
        }
    }
    links.extend(dev_links);
    remove_legacy_maps(&cfg.pin_dir)?;
    Ok(InstallReport {
        pin_dir: cfg.pin_dir.display().to_string(),
        cgroup: cfg.cgroup.display().to_string(),
        mounted_bpffs,
        adopted_maps,
        links,
        warnings,
    })
}

trait RawFdCompat {
    fn as_raw_fd_compat(&self) -> i32;
}
impl RawFdCompat for std::os::fd::BorrowedFd<'_> {
    fn as_raw_fd_compat(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.as_raw_fd()
    }
}

/// State of each link pin, without changing anything.
pub fn link_status(pin_dir: &Path) -> Vec<LinkStatus> {
    PROGRAMS
        .iter()
        .map(|p| {
            let pin = link_pin(pin_dir, p);
            let state = if !pin.exists() {
                "missing".to_string()
            } else {
                match Link::open(&pin) {
                    Ok(_) => "attached".to_string(),
                    Err(e) => format!("unreadable: {e}"),
                }
            };
            LinkStatus { program: p.to_string(), pin: pin.display().to_string(), state }
        })
        .collect()
}

fn remove_legacy_maps(pin_dir: &Path) -> Result<Vec<String>, DatapathError> {
    let mut removed = Vec::new();
    for m in LEGACY_MAPS {
        let pin = map_pin(pin_dir, m);
        if pin.exists() {
            std::fs::remove_file(&pin).map_err(DatapathError::io(format!("removing {}", pin.display())))?;
            removed.push(pin.display().to_string());
        }
    }
    Ok(removed)
}

/// Detach every program and remove every pin: the datapath is gone and
/// sockets are no longer translated; pod and node devices lose their
/// programs too.
pub fn uninstall(pin_dir: &Path) -> Result<Vec<String>, DatapathError> {
    let mut removed = crate::pod::remove_device_links(pin_dir)?;
    for p in PROGRAMS {
        let pin = link_pin(pin_dir, p);
        if !pin.exists() {
            continue;
        }
        if let Ok(mut link) = Link::open(&pin) {
            let _ = link.detach();
            let _ = link.unpin();
            removed.push(pin.display().to_string());
        } else {
            std::fs::remove_file(&pin).map_err(DatapathError::io(format!("removing {}", pin.display())))?;
            removed.push(pin.display().to_string());
        }
    }
    for p in PROGRAMS.iter().chain(DEVICE_PROGRAMS) {
        let pin = prog_pin(pin_dir, p);
        if pin.exists() {
            std::fs::remove_file(&pin).map_err(DatapathError::io(format!("removing {}", pin.display())))?;
            removed.push(pin.display().to_string());
        }
    }
    for m in MAPS.iter().chain(LEGACY_MAPS) {
        let pin = map_pin(pin_dir, m);
        if pin.exists() {
            std::fs::remove_file(&pin).map_err(DatapathError::io(format!("removing {}", pin.display())))?;
            removed.push(pin.display().to_string());
        }
    }
    for sub in ["links", "progs", "maps", ""] {
        let _ = std::fs::remove_dir(pin_dir.join(sub));
    }
    Ok(removed)
}

/// Used by `KernelMaps` to check the pinned map matches this build.
pub(crate) fn open_pinned(pin_dir: &Path, name: &str) -> Result<libbpf_rs::MapHandle, DatapathError> {
    let path = map_pin(pin_dir, name);
    libbpf_rs::MapHandle::from_pinned_path(&path).map_err(|e| DatapathError::Bpf {
        what: format!("opening {} (is the agent running, or was the datapath installed?)", path.display()),
        source: e,
    })
}

pub(crate) fn check_sizes(h: &libbpf_rs::MapHandle, name: &str, key: usize, value: usize) -> Result<(), DatapathError> {
    if h.key_size() as usize != key || h.value_size() as usize != value {
        return Err(DatapathError::Layout {
            map: name.into(),
            message: format!(
                "pinned map has key/value sizes {}/{}, this build expects {key}/{value}",
                h.key_size(),
                h.value_size()
            ),
        });
    }
    Ok(())
}
