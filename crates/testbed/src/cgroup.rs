//! A cgroup v2 directory of our own, for attaching socket hooks to.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The cgroup v2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        if right.split_whitespace().next() == Some("cgroup2") {
            if let Some(mp) = left.split_whitespace().nth(4) {
                return Ok(PathBuf::from(mp));
            }
        }
    }
    bail!("no cgroup v2 hierarchy mounted")
}

/// Removed on drop. Processes placed in it must be ended first (their
/// `Spawned` handles do that); drop retries `rmdir` for up to two seconds.
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    pub fn new(prefix: &str) -> anyhow::Result<TestCgroup> {
        let path = cgroup2_root()?.join(crate::netns::unique_name(prefix));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TestCgroup { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn add_pid(&self, pid: u32) -> anyhow::Result<()> {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving {pid} into {}", self.path.display()))
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let t0 = Instant::now();
        while std::fs::remove_dir(&self.path).is_err() && t0.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
