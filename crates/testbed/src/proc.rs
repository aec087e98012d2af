//! Processes started inside a namespace and a cgroup, ended on drop.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::cgroup::TestCgroup;
use crate::netns::Netns;

/// A child process we started. Drop sends SIGKILL to its pid and reaps it.
pub struct Spawned {
    child: Option<Child>,
}

impl Spawned {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Wait for the process to end by itself (at most `timeout`, then it is
    /// killed) and return what it printed.
    pub fn wait_output(mut self, timeout: Duration) -> anyhow::Result<Output> {
        let child = self.child.take().expect("child");
        let pid = child.id() as i32;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(timeout) {
            Ok(r) => Ok(r?),
            Err(_) => {
                // SAFETY: kill on the pid of our own child, not yet reaped
                // (the waiting thread reaps it after this signal).
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = rx.recv();
                bail!("process {pid} did not finish within {timeout:?}")
            }
        }
    }

    /// Send SIGTERM (a clean stop) and wait for the process.
    pub fn terminate(mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signal to our own, unreaped child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn command(netns: Option<&Netns>, cgroup: Option<&TestCgroup>, program: &Path, args: &[&str]) -> anyhow::Result<Command> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    // Open everything before the fork: the child only writes and calls setns.
    let ns_file = match netns {
        Some(n) => Some(File::open(n.path()).with_context(|| format!("opening {}", n.path().display()))?),
        None => None,
    };
    let cg_file = match cgroup {
        Some(c) => Some(
            std::fs::OpenOptions::new()
                .write(true)
                .open(c.path().join("cgroup.procs"))
                .with_context(|| format!("opening {}/cgroup.procs", c.path().display()))?,
        ),
        None => None,
    };
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls (getpid, write, setns) on descriptors
    // opened before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(f) = &cg_file {
                let mut buf = [0u8; 16];
                let pid = libc::getpid();
                let n = fmt_u32(pid as u32, &mut buf);
                if libc::write(f.as_raw_fd(), buf.as_ptr() as *const _, n) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(f) = &ns_file {
                if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Decimal digits of `v` into `buf` without allocating; returns the length.
fn fmt_u32(mut v: u32, buf: &mut [u8; 16]) -> usize {
    let mut tmp = [0u8; 16];
    let mut n = 0;
    loop {
        tmp[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for i in 0..n {
        buf[i] = tmp[n - 1 - i];
    }
    n
}

fn start(mut cmd: Command, program: &Path) -> anyhow::Result<Spawned> {
    let child = cmd.spawn().with_context(|| format!("starting {}", program.display()))?;
    Ok(Spawned { child: Some(child) })
}

/// Start with stdout and stderr inherited.
pub fn spawn_in(netns: Option<&Netns>, cgroup: Option<&TestCgroup>, program: &Path, args: &[&str]) -> anyhow::Result<Spawned> {
    let cmd = command(netns, cgroup, program, args)?;
    start(cmd, program)
}

/// Start with stdout and stderr appended to `log`.
pub fn spawn_in_logged(
    netns: Option<&Netns>,
    cgroup: Option<&TestCgroup>,
    program: &Path,
    args: &[&str],
    log: File,
) -> anyhow::Result<Spawned> {
    let mut cmd = command(netns, cgroup, program, args)?;
    cmd.stdout(log.try_clone()?).stderr(log).stdin(Stdio::null());
    start(cmd, program)
}

/// Start with stdout and stderr captured, for [`Spawned::wait_output`].
pub fn spawn_in_capture(netns: Option<&Netns>, cgroup: Option<&TestCgroup>, program: &Path, args: &[&str]) -> anyhow::Result<Spawned> {
    let mut cmd = command(netns, cgroup, program, args)?;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
    start(cmd, program)
}

/// Start a server and wait until it prints `ready` on stdout.
pub fn spawn_ready(netns: Option<&Netns>, cgroup: Option<&TestCgroup>, program: &Path, args: &[&str]) -> anyhow::Result<Spawned> {
    let mut cmd = command(netns, cgroup, program, args)?;
    cmd.stdout(Stdio::piped()).stdin(Stdio::null());
    let mut s = start(cmd, program)?;
    let out = s.child.as_mut().unwrap().stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("{} {args:?} did not start: {line:?}", program.display());
    }
    Ok(s)
}

/// Run to completion (killed after `timeout`) and return its output.
pub fn run_in(
    netns: Option<&Netns>,
    cgroup: Option<&TestCgroup>,
    program: &Path,
    args: &[&str],
    timeout: Duration,
) -> anyhow::Result<Output> {
    spawn_in_capture(netns, cgroup, program, args)?.wait_output(timeout)
}
