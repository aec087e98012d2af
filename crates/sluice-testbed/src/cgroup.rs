//! A cgroup v2 directory of our own (Sluice attaches its socket hooks to one).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Where the cgroup v2 hierarchy is mounted, from /proc/self/mountinfo
/// (`/sys/fs/cgroup` on a pure v2 system, `/sys/fs/cgroup/unified` on a
/// hybrid one like this machine).
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    cgroup2_root_from(&info).context("no cgroup v2 hierarchy in /proc/self/mountinfo")
}

fn cgroup2_root_from(mountinfo: &str) -> Option<PathBuf> {
    for line in mountinfo.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let mut f = left.split_whitespace();
        let root = f.nth(3)?;
        let mount_point = f.next()?;
        // A bind mount of a sub-cgroup would not be the root of the hierarchy.
        if root == "/" {
            return Some(PathBuf::from(unescape_octal(mount_point)));
        }
    }
    None
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `<cgroup2 root>/<prefix>-<pid>-<n>`, removed on drop.
///
/// Drop neither moves nor kills anything: it retries `rmdir` for up to two
/// seconds, which succeeds once the processes placed in the cgroup have
/// exited. End those first: drop their [`crate::proc::Spawned`] handles
/// (which kill and reap them) before the `TestCgroup` — declaring the
/// `TestCgroup` before the processes does that, as locals drop in reverse
/// order. A cgroup still busy after two seconds is left behind with a
/// message on stderr.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    pub fn new(prefix: &str) -> anyhow::Result<TestCgroup> {
        let path = cgroup2_root()?.join(crate::unique_name(prefix));
        std::fs::create_dir(&path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(TestCgroup { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Move process `pid` into this cgroup.
    pub fn add_pid(&self, pid: u32) -> anyhow::Result<()> {
        if pid == 0 {
            bail!("pid 0 would mean the calling process");
        }
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving {pid} into {}", self.path.display()))
    }

    /// The processes now in this cgroup.
    pub fn pids(&self) -> anyhow::Result<Vec<u32>> {
        let s = std::fs::read_to_string(self.path.join("cgroup.procs"))
            .with_context(|| format!("reading {}/cgroup.procs", self.path.display()))?;
        Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let t0 = Instant::now();
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if t0.elapsed() >= Duration::from_secs(2) => {
                    eprintln!(
                        "sluice-testbed: cgroup {} not removed: {e}",
                        self.path.display()
                    );
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_and_unified_layouts() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_root_from(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup2_root_from(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let escaped = "29 23 0:26 / /mnt/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(
            cgroup2_root_from(escaped),
            Some(PathBuf::from("/mnt/my cg"))
        );
        assert_eq!(
            cgroup2_root_from("1 0 0:1 / / rw - ext4 /dev/sda rw\n"),
            None
        );
    }
}
