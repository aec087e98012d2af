//! Network namespaces made with `ip netns add`, removed on drop.

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process: `<prefix>-<pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Run a command, failing with its stderr.
pub fn run(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let o = Command::new(cmd).args(args).output().with_context(|| format!("running {cmd}"))?;
    if !o.status.success() {
        bail!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&o.stdout).to_string())
}

pub struct Netns {
    name: String,
}

impl Netns {
    /// Create `sl-<prefix>-<pid>-<n>` with `lo` up.
    pub fn new(prefix: &str) -> anyhow::Result<Netns> {
        let name = unique_name(&format!("sl-{prefix}"));
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// `ip -n NAME args...`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// Run a program inside the namespace (network only: the mount
    /// namespace is kept, unlike `ip netns exec`, so bpffs and cgroupfs stay
    /// visible).
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        let net = format!("--net={}", self.path().display());
        let mut a = vec![net.as_str()];
        a.extend_from_slice(args);
        run("nsenter", &a)
    }

    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")]).map(|_| ())
    }

    /// Run `f` on a fresh thread that has entered the namespace: sockets it
    /// creates belong to the namespace.
    pub fn enter<F: FnOnce() -> R + Send, R: Send>(&self, f: F) -> anyhow::Result<R> {
        let file = File::open(self.path()).with_context(|| format!("opening {}", self.path().display()))?;
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
                Ok(f())
            })
            .join()
            .expect("namespace thread panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}
