//! Sluice's test bed: throwaway network namespaces, cgroups and processes,
//! a small pod/node topology, a probe client/server, and kube-proxy rule
//! generators to compare against.
//!
//! Rules everything here keeps:
//!
//! * Nothing is configured in, and no traffic is sent from, the host's own
//!   network namespace. Veth pairs are created inside the node namespace with
//!   their peer placed straight into a pod namespace, so the host namespace
//!   never holds them even for a moment.
//! * Everything created is removed when its handle is dropped, also while
//!   unwinding from a panic: namespaces ([`netns::Netns`]), cgroups
//!   ([`cgroup::TestCgroup`]) and processes ([`proc::Spawned`]).
//! * Only processes we started are signalled, by their pid, and only while
//!   they are our unreaped children (so the pid cannot have been reused).
//! * Addresses: IPv4 only from 198.18.0.0/15 (RFC 2544), IPv6 only from
//!   fd00:5c::/32 (ULA). See [`topo`] for the layout.
//!
//! Drop order matters where handles depend on each other: drop the
//! [`proc::Spawned`] children before the [`cgroup::TestCgroup`] they were
//! placed in (a cgroup cannot be removed while it holds live processes) and
//! before the namespaces they run in (a namespace lives on while a process is
//! inside it). Rust drops locals in reverse order of declaration, so creating
//! the topology and cgroup first and the processes after does the right thing.
//!
//! Everything needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN); [`is_root`] lets
//! tests skip themselves otherwise. This crate's own tests
//! (`cargo test -p sluice-testbed`, a few seconds) do that: as root they
//! build real namespaces, run `sluice-probe` in them and load the
//! [`kubeproxy`] rules with `iptables-restore` (the nf_tables backend on
//! Debian 12), `iptables-legacy-restore` and `nft`.

pub mod cgroup;
pub mod kubeproxy;
pub mod netns;
pub mod probe;
pub mod proc;
pub mod stats;
pub mod topo;
pub mod topo2;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context};

/// Whether we run as root (effective uid 0); the test bed needs it.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `<prefix>-<pid>-<n>`: unique among everything this process creates, and
/// recognisable as ours (the pid says which process made it).
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), next_id())
}

/// A small number unique within this process (for short device names).
pub fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Run `program args...` to completion; fails with its stderr if it exits
/// non-zero. Returns its stdout.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    run_stdin(program, args, None)
}

/// Like [`run`], feeding `input` on stdin.
pub fn run_stdin(program: &str, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().with_context(|| format!("starting {program}"))?;
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        // Write from another thread: a large input must not deadlock against
        // a child that fills its stdout pipe before reading everything.
        let data = input.as_bytes().to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
        let out = child
            .wait_with_output()
            .with_context(|| format!("waiting for {program}"))?;
        let _ = writer.join();
        return check(program, args, out);
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {program}"))?;
    check(program, args, out)
}

fn check(program: &str, args: &[&str], out: std::process::Output) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
