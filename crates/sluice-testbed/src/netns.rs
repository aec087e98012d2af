//! Network namespaces made with `ip netns add`, deleted on drop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context};

/// A named network namespace (`/run/netns/NAME`) with `lo` up.
///
/// Dropping it runs `ip netns del NAME`. The kernel frees the namespace, and
/// with it every device inside (veth pairs included), once no process and no
/// open descriptor still refers to it, so end the processes started in it
/// first (see [`crate::proc::Spawned`]).
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

// `ip netns add` sets up the /run/netns mount the first time; two of them
// racing on that is the one known trouble spot, so we never run two at once.
static CREATE: Mutex<()> = Mutex::new(());

impl Netns {
    /// Create `<prefix>-<pid>-<n>` and set `lo` up in it.
    pub fn new(prefix: &str) -> anyhow::Result<Netns> {
        let name = crate::unique_name(prefix);
        {
            let _g = CREATE.lock().unwrap_or_else(|e| e.into_inner());
            crate::run("ip", &["netns", "add", &name])?;
        }
        let ns = Netns {
            path: PathBuf::from(format!("/run/netns/{name}")),
            name,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, for `setns(2)` or `nsenter --net=`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `ip netns exec NAME args...`; returns stdout, fails with stderr.
    ///
    /// Note that `ip netns exec` also enters a private mount namespace and
    /// remounts /sys for the namespace, which hides the host's bpffs and
    /// cgroup mounts from the program; [`Netns::run`] keeps them visible.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut a = vec!["netns", "exec", self.name.as_str()];
        a.extend_from_slice(args);
        crate::run("ip", &a)
    }

    /// [`Netns::exec`] with `input` on stdin (e.g. `iptables-restore`,
    /// `nft -f -`).
    pub fn exec_stdin(&self, args: &[&str], input: &str) -> anyhow::Result<String> {
        let mut a = vec!["netns", "exec", self.name.as_str()];
        a.extend_from_slice(args);
        crate::run_stdin("ip", &a, Some(input))
    }

    /// Run `program args...` inside the namespace (network namespace only:
    /// unlike [`Netns::exec`] the mount namespace is kept, so /sys/fs/bpf and
    /// the cgroup mounts stay visible). Returns stdout, fails with stderr.
    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = crate::proc::command(Some(self), None, Path::new(program), args)?;
        let out = cmd
            .output()
            .with_context(|| format!("running {program} in {}", self.name))?;
        if !out.status.success() {
            bail!(
                "`{program} {}` in {} failed ({}): {}",
                args.join(" "),
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ip -n NAME args...`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        crate::run("ip", &a)
    }

    /// Several `ip` commands (one per line, without the leading `ip`) in one
    /// `ip -n NAME -batch -` run; stops at the first failure.
    pub fn ip_batch<S: AsRef<str>>(&self, lines: &[S]) -> anyhow::Result<String> {
        let mut input = String::new();
        for l in lines {
            input.push_str(l.as_ref());
            input.push('\n');
        }
        crate::run_stdin("ip", &["-n", &self.name, "-batch", "-"], Some(&input))
    }

    /// Set a `net.*` sysctl inside the namespace (written to /proc/sys from a
    /// thread that entered it; no process is started). Only `net.` keys are
    /// accepted: other sysctls are not per network namespace and would change
    /// the host.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let path = sysctl_path(key)?;
        let value = value.to_string();
        self.try_enter(move || {
            std::fs::write(&path, value.as_bytes())
                .with_context(|| format!("writing {}", path.display()))
        })?
    }

    /// Read a `net.*` sysctl inside the namespace.
    pub fn sysctl_get(&self, key: &str) -> anyhow::Result<String> {
        let path = sysctl_path(key)?;
        let v = self.try_enter(move || {
            std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
        })??;
        Ok(v.trim().to_string())
    }

    /// Run `f` on a fresh thread that has entered this namespace with
    /// `setns(CLONE_NEWNET)`: sockets `f` creates belong to the namespace
    /// (and keep belonging to it wherever they are used afterwards).
    ///
    /// Panics if the namespace cannot be entered (see [`Netns::try_enter`]);
    /// a panic in `f` is passed on to the caller.
    pub fn enter<F: FnOnce() -> R + Send, R: Send>(&self, f: F) -> R {
        match self.try_enter(f) {
            Ok(r) => r,
            Err(e) => panic!("entering network namespace {}: {e:#}", self.name),
        }
    }

    /// [`Netns::enter`], with failure to enter as an error.
    pub fn try_enter<F: FnOnce() -> R + Send, R: Send>(&self, f: F) -> anyhow::Result<R> {
        let file =
            File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))?;
        let joined = std::thread::scope(|s| {
            s.spawn(move || -> anyhow::Result<R> {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .context("setns(CLONE_NEWNET)")?;
                drop(file);
                Ok(f())
            })
            .join()
        });
        match joined {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

fn sysctl_path(key: &str) -> anyhow::Result<PathBuf> {
    if !key.starts_with("net.") || key.contains("..") || key.contains('/') {
        bail!("refusing sysctl {key:?}: only net.* keys are per network namespace");
    }
    Ok(PathBuf::from("/proc/sys").join(key.replace('.', "/")))
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = crate::run("ip", &["netns", "del", &self.name]) {
            eprintln!("sluice-testbed: deleting namespace {}: {e:#}", self.name);
        }
    }
}
