//! Finding cgroup v2 and bpffs, and the namespace cookie.

use std::path::{Path, PathBuf};

use crate::DatapathError;

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// The cgroup v2 mount point, read from /proc/self/mountinfo (it may be
/// `/sys/fs/cgroup` or, on hybrid hosts, `/sys/fs/cgroup/unified`).
pub fn cgroup2_root() -> Result<PathBuf, DatapathError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(DatapathError::io("reading /proc/self/mountinfo"))?;
    for line in info.lines() {
        // id parent major:minor root mountpoint options ... - fstype source opts
        let Some((left, right)) = line.split_once(" - ") else { continue };
        if right.split_whitespace().next() == Some("cgroup2") {
            if let Some(mp) = left.split_whitespace().nth(4) {
                return Ok(PathBuf::from(mp));
            }
        }
    }
    Err(DatapathError::Other("no cgroup v2 hierarchy is mounted (mount -t cgroup2 none /sys/fs/cgroup)".into()))
}

pub fn is_bpffs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).map(|s| s.filesystem_type().0 == BPF_FS_MAGIC).unwrap_or(false)
}

/// Make sure `pin_dir` lives on a bpffs: mount one at its nearest existing
/// ancestor that is not one already (normally `/sys/fs/bpf`), then create it.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<bool, DatapathError> {
    let mut mounted = false;
    let mut anc = pin_dir;
    while !anc.exists() {
        anc = anc.parent().unwrap_or(Path::new("/"));
    }
    if !is_bpffs(anc) {
        // Mount on /sys/fs/bpf (the convention) if the pin dir is under it,
        // else on the nearest existing ancestor.
        let target = if pin_dir.starts_with("/sys/fs/bpf") { Path::new("/sys/fs/bpf") } else { anc };
        if !is_bpffs(target) {
            std::fs::create_dir_all(target).map_err(DatapathError::io(format!("creating {}", target.display())))?;
            nix::mount::mount(Some("bpf"), target, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
                .map_err(|e| DatapathError::Other(format!("mounting bpffs on {}: {e}", target.display())))?;
            mounted = true;
        }
    }
    for sub in ["maps", "links", "progs"] {
        let d = pin_dir.join(sub);
        std::fs::create_dir_all(&d).map_err(DatapathError::io(format!("creating {}", d.display())))?;
    }
    if !is_bpffs(pin_dir) {
        return Err(DatapathError::Other(format!("{} is not on a bpffs", pin_dir.display())));
    }
    Ok(mounted)
}

/// The cookie of the calling thread's network namespace (SO_NETNS_COOKIE,
/// Linux 5.14+): what `bpf_get_netns_cookie()` returns for its sockets.
pub fn netns_cookie() -> Result<u64, DatapathError> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: plain socket syscalls on a descriptor we own and close.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return Err(DatapathError::io("socket")(std::io::Error::last_os_error()));
        }
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let r = libc::getsockopt(fd, libc::SOL_SOCKET, SO_NETNS_COOKIE, &mut cookie as *mut u64 as *mut _, &mut len);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if r != 0 {
            return Err(DatapathError::io("getsockopt(SO_NETNS_COOKIE)")(err));
        }
        Ok(cookie)
    }
}
