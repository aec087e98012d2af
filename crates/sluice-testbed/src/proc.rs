//! Processes started inside a network namespace and a cgroup, killed and
//! reaped on drop.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cgroup::TestCgroup;
use crate::netns::Netns;

/// How long [`spawn_ready`] waits for `ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A child process we started.
///
/// Drop sends SIGKILL to it and reaps it, unless it has already been reaped.
/// Signals only ever go to this child while it is unreaped (or through a
/// pidfd), so a recycled pid can never be hit.
pub struct Spawned {
    child: Option<Child>,
    pid: u32,
    program: String,
    pidfd: Option<OwnedFd>,
    /// stdout after the `ready` line, for [`spawn_ready`] children.
    drained: Option<Drained>,
}

/// A buffer a reader thread keeps appending a child's stdout to.
type Drained = (Arc<Mutex<Vec<u8>>>, JoinHandle<()>);

impl std::fmt::Debug for Spawned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spawned")
            .field("pid", &self.pid)
            .field("program", &self.program)
            .finish()
    }
}

/// A `Command` for `program args...` whose child, between fork and exec,
/// first writes its pid into `cgroup`'s `cgroup.procs` and then enters
/// `netns` with `setns(CLONE_NEWNET)`. So the program is in both from its
/// very first instruction. Only the network namespace changes: the mount
/// namespace is kept (bpffs and cgroupfs stay visible). stdin is /dev/null;
/// set stdout/stderr as needed, then start it with [`Spawned::spawn`].
pub fn command(
    netns: Option<&Netns>,
    cgroup: Option<&TestCgroup>,
    program: &Path,
    args: &[&str],
) -> anyhow::Result<Command> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    // Everything is opened before the fork (with O_CLOEXEC, so it is closed
    // again by exec); the child only makes system calls.
    let ns_file = match netns {
        Some(n) => {
            Some(File::open(n.path()).with_context(|| format!("opening {}", n.path().display()))?)
        }
        None => None,
    };
    let procs_file = match cgroup {
        Some(c) => {
            let p = c.path().join("cgroup.procs");
            Some(
                OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .with_context(|| format!("opening {}", p.display()))?,
            )
        }
        None => None,
    };
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe functions may be called: it uses getpid, write and
    // setns on descriptors opened before the fork, and formats the pid into
    // a stack buffer without allocating.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(f) = &procs_file {
                let mut buf = [0u8; 16];
                let n = format_u32(libc::getpid() as u32, &mut buf);
                if libc::write(f.as_raw_fd(), buf.as_ptr().cast(), n) != n as isize {
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

/// Decimal digits of `v` into `buf`, without allocating; returns the length.
fn format_u32(mut v: u32, buf: &mut [u8; 16]) -> usize {
    let mut tmp = [0u8; 10];
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

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // (or -1), which we then own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl Spawned {
    /// Start a prepared command (see [`command`]).
    pub fn spawn(mut cmd: Command) -> anyhow::Result<Spawned> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd.spawn().with_context(|| format!("starting {program}"))?;
        let pid = child.id();
        // Taken while the child is certainly unreaped: it names this process
        // and no other, even after the pid is recycled.
        let pidfd = pidfd_open(pid);
        Ok(Spawned {
            child: Some(child),
            pid,
            program,
            pidfd,
            drained: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("child present until consumed")
    }

    /// The child's stdout pipe, if it was piped and not taken yet.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child().stdout.take()
    }

    /// Has it exited? (Reaps it if so.)
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child().try_wait()?)
    }

    /// Wait up to `timeout` for it to exit by itself; `None` if it is still
    /// running then (it is left running).
    pub fn wait_timeout(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        let mut nap = Duration::from_millis(1);
        loop {
            if let Some(st) = self.child().try_wait()? {
                return Ok(Some(st));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let left = deadline - now;
            match &self.pidfd {
                Some(fd) => {
                    // A pidfd turns readable when the process exits.
                    let mut p = libc::pollfd {
                        fd: fd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
                    // SAFETY: one valid pollfd for the duration of the call.
                    unsafe { libc::poll(&mut p, 1, ms) };
                }
                None => {
                    std::thread::sleep(nap.min(left));
                    nap = (nap * 2).min(Duration::from_millis(10));
                }
            }
        }
    }

    /// Send `signal` to the child, unless it has already been reaped.
    pub fn signal(&mut self, signal: i32) -> anyhow::Result<()> {
        if self.child().try_wait()?.is_some() {
            return Ok(());
        }
        match &self.pidfd {
            // SAFETY: a pidfd we own; null siginfo and no flags.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    signal,
                    std::ptr::null::<libc::siginfo_t>(),
                    0u32,
                );
            },
            // SAFETY: our own child, not reaped (checked just above, and only
            // this handle can reap it).
            None => unsafe {
                libc::kill(self.pid as libc::pid_t, signal);
            },
        }
        Ok(())
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`; reaps it.
    pub fn terminate(mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        if let Some(st) = self.wait_timeout(grace)? {
            return Ok(st);
        }
        let c = self.child();
        let _ = c.kill();
        Ok(c.wait()?)
    }

    /// Wait up to `timeout` for the child to exit by itself and return its
    /// exit status and what it printed (what was piped: see
    /// [`spawn_in_capture`]; for a [`spawn_ready`] child, stdout after the
    /// `ready` line). If it is still running after `timeout` it is killed
    /// and an error carrying its output so far is returned.
    pub fn wait_output(mut self, timeout: Duration) -> anyhow::Result<Output> {
        let stdout = self.child().stdout.take().map(reader);
        let stderr = self.child().stderr.take().map(reader);
        let status = self.wait_timeout(timeout)?;
        let status = match status {
            Some(st) => st,
            None => {
                self.kill();
                let out = collect(stdout, stderr, None);
                bail!(
                    "{} (pid {}) did not finish within {timeout:?}; stdout: {:?}; stderr: {:?}",
                    self.program,
                    self.pid,
                    String::from_utf8_lossy(&out.0),
                    String::from_utf8_lossy(&out.1)
                );
            }
        };
        let (out, err) = collect(stdout, stderr, self.drained.take());
        Ok(Output {
            status,
            stdout: out,
            stderr: err,
        })
    }

    /// For a [`spawn_ready`] child: what it printed on stdout after `ready`.
    pub fn stdout_so_far(&self) -> String {
        match &self.drained {
            Some((buf, _)) => {
                String::from_utf8_lossy(&buf.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
            }
            None => String::new(),
        }
    }
}

type Reader = mpsc::Receiver<Vec<u8>>;

fn reader<R: Read + Send + 'static>(mut r: R) -> Reader {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        let _ = tx.send(v);
    });
    rx
}

/// Gather piped output after the child has exited. A grandchild that kept
/// the pipe open could hold it forever, so each gets a short grace period.
fn collect(
    stdout: Option<Reader>,
    stderr: Option<Reader>,
    drained: Option<Drained>,
) -> (Vec<u8>, Vec<u8>) {
    let grace = Duration::from_secs(2);
    let get = |r: Option<Reader>| {
        r.and_then(|r| r.recv_timeout(grace).ok())
            .unwrap_or_default()
    };
    let mut out = get(stdout);
    let err = get(stderr);
    if let Some((buf, handle)) = drained {
        let t0 = Instant::now();
        while !handle.is_finished() && t0.elapsed() < grace {
            std::thread::sleep(Duration::from_millis(2));
        }
        out.extend_from_slice(&buf.lock().unwrap_or_else(|e| e.into_inner()));
    }
    (out, err)
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // Child::kill does nothing for a child already reaped; wait reaps.
        self.kill();
    }
}

/// Start `program` with stdout and stderr inherited from us.
pub fn spawn_in(
    netns: Option<&Netns>,
    cgroup: Option<&TestCgroup>,
    program: &Path,
    args: &[&str],
) -> anyhow::Result<Spawned> {
    Spawned::spawn(command(netns, cgroup, program, args)?)
}

/// Start `program` with stdout and stderr piped, to be collected by
/// [`Spawned::wait_output`].
pub fn spawn_in_capture(
    netns: Option<&Netns>,
    cgroup: Option<&TestCgroup>,
    program: &Path,
    args: &[&str],
) -> anyhow::Result<Spawned> {
    let mut cmd = command(netns, cgroup, program, args)?;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    Spawned::spawn(cmd)
}

/// Start `program` with stdout and stderr written to `log`.
pub fn spawn_in_logged(
    netns: Option<&Netns>,
    cgroup: Option<&TestCgroup>,
    program: &Path,
    args: &[&str],
    log: File,
) -> anyhow::Result<Spawned> {
    let mut cmd = command(netns, cgroup, program, args)?;
    cmd.stdout(log.try_clone()?).stderr(log);
    Spawned::spawn(cmd)
}

/// Start a server and wait (up to [`READY_TIMEOUT`]) for it to print a line
/// `ready` on stdout, as `sluice-probe serve` does once it listens. Its
/// stderr is inherited; its later stdout is kept (see
/// [`Spawned::stdout_so_far`]).
pub fn spawn_ready(
    netns: Option<&Netns>,
    cgroup: Option<&TestCgroup>,
    program: &Path,
    args: &[&str],
) -> anyhow::Result<Spawned> {
    spawn_ready_timeout(netns, cgroup, program, args, READY_TIMEOUT)
}

/// [`spawn_ready`] with a chosen timeout.
pub fn spawn_ready_timeout(
    netns: Option<&Netns>,
    cgroup: Option<&TestCgroup>,
    program: &Path,
    args: &[&str],
    timeout: Duration,
) -> anyhow::Result<Spawned> {
    let mut cmd = command(netns, cgroup, program, args)?;
    cmd.stdout(Stdio::piped());
    let mut s = Spawned::spawn(cmd)?;
    let out = s.take_stdout().expect("piped stdout");
    let buf = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let b = buf.clone();
    let handle = std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut first = String::new();
        let n = r.read_line(&mut first).unwrap_or(0);
        let _ = tx.send(if n == 0 { None } else { Some(first) });
        // Keep draining so the child never blocks on (or dies of) a full or
        // closed pipe.
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&chunk[..n]);
        }
    });
    s.drained = Some((buf, handle));
    match rx.recv_timeout(timeout) {
        Ok(Some(line)) if line.trim() == "ready" => Ok(s),
        Ok(Some(line)) => bail!(
            "{} {args:?}: expected `ready`, got {line:?}",
            program.display()
        ),
        Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => {
            let st = s.wait_timeout(Duration::from_millis(500))?;
            bail!(
                "{} {args:?} exited before it was ready ({st:?})",
                program.display()
            )
        }
        Err(mpsc::RecvTimeoutError::Timeout) => bail!(
            "{} {args:?} not ready within {timeout:?}",
            program.display()
        ),
    }
}

/// Run `program` to completion (killed after `timeout`) and return its
/// output, whatever its exit status: check `status` yourself. Errors only
/// if it could not be started or did not finish in time.
pub fn run_in(
    netns: Option<&Netns>,
    cgroup: Option<&TestCgroup>,
    program: &Path,
    args: &[&str],
    timeout: Duration,
) -> anyhow::Result<Output> {
    spawn_in_capture(netns, cgroup, program, args)?.wait_output(timeout)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_pids() {
        let mut b = [0u8; 16];
        for v in [0u32, 7, 10, 4194304, u32::MAX] {
            let n = super::format_u32(v, &mut b);
            assert_eq!(std::str::from_utf8(&b[..n]).unwrap(), v.to_string());
        }
    }
}
