//! Harness for the end-to-end tests: a topology, a test cgroup, and an
//! agent of our own with its own pins, store and socket. Everything is
//! removed on drop, in order: agent, datapath pins, cgroup, namespaces.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;
use sluice_testbed::cgroup::TestCgroup;
use sluice_testbed::netns::Netns;
use sluice_testbed::proc::{run_in, Spawned};
use sluice_testbed::topo::Topology;

/// A built binary of the workspace, next to the test executable's directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(p.exists(), "{} not built: run `cargo build --workspace` first", p.display());
    // `cargo test -p sluice-e2e` does not rebuild other packages' binaries:
    // refuse to test a binary older than the sources it is built from.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let sources: Vec<PathBuf> = match name {
        "sluice" => vec![root.join("bpf"), root.join("crates")],
        // Cargo relinks a binary only when its own dependencies change.
        "sluice-cni" => ["sluice-cni", "sluice-api", "sluice-model", "sluice-lb"]
            .iter()
            .map(|c| root.join("crates").join(c))
            .collect(),
        _ => vec![],
    };
    if !sources.is_empty() {
        let built = std::fs::metadata(&p).and_then(|m| m.modified()).expect("binary mtime");
        let newest = sources.iter().map(|d| newest_mtime(d)).max().unwrap();
        assert!(
            newest <= built,
            "{} is older than its sources: run `cargo build --workspace` (or scripts/test.sh) first",
            p.display()
        );
    }
    p
}

fn newest_mtime(dir: &Path) -> std::time::SystemTime {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    let Ok(entries) = std::fs::read_dir(dir) else { return newest };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            // The test-only crates do not go into the binary.
            if !matches!(name.as_ref(), "sluice-e2e" | "sluice-bench" | "testbed" | "tests" | "target") {
                newest = newest.max(newest_mtime(&path));
            }
        } else if name.ends_with(".rs") || name.ends_with(".c") || name.ends_with(".h") {
            if let Ok(m) = e.metadata().and_then(|m| m.modified()) {
                newest = newest.max(m);
            }
        }
    }
    newest
}

/// Fails loudly without root: these tests must not pass by skipping.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("the end-to-end tests load BPF programs and create namespaces: run them as root (scripts/test.sh does)");
    }
}

pub struct Env {
    pub agent: Option<Spawned>,
    pub topo: Topology,
    pub cgroup: TestCgroup,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// Flags added to every `sluice agent` start (e.g. `--pod-cidr`); change
    /// them between [`Env::kill_agent`] and [`Env::start_agent`].
    pub agent_args: Vec<String>,
    /// `sluice`, checked fresh once at start: sources edited while a test
    /// runs must not fail it half-way (or panic in drop and leak).
    sluice: PathBuf,
    tmp: PathBuf,
    servers: Vec<Spawned>,
}

impl Env {
    pub fn new(name: &str, pods: usize) -> anyhow::Result<Env> {
        Env::with_agent_args(name, pods, &[])
    }

    /// [`Env::new`] with extra `sluice agent` flags.
    pub fn with_agent_args(name: &str, pods: usize, agent_args: &[&str]) -> anyhow::Result<Env> {
        require_root();
        let sluice = bin("sluice");
        // `sl-` names: scripts/test.sh checks that none is left behind.
        let topo = Topology::new(&format!("sl-{name}"), pods)?;
        let cgroup = TestCgroup::new(&format!("sl-{name}"))?;
        let id = format!("{name}-{}-{}", std::process::id(), unique());
        let tmp = std::env::temp_dir().join(format!("sluice-e2e-{id}"));
        std::fs::create_dir_all(&tmp)?;
        let mut env = Env {
            agent: None,
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/sluice-e2e-{id}")),
            state_dir: tmp.join("state"),
            socket: tmp.join("agent.sock"),
            log: tmp.join("agent.log"),
            agent_args: agent_args.iter().map(|a| a.to_string()).collect(),
            sluice,
            tmp,
            topo,
            cgroup,
            servers: Vec::new(),
        };
        env.start_agent()?;
        Ok(env)
    }

    /// Start the agent in the node's namespace, attached to the test cgroup.
    pub fn start_agent(&mut self) -> anyhow::Result<()> {
        let spec = AgentSpec { state_dir: &self.state_dir, cgroup: &self.cgroup, pin_dir: &self.pin_dir, socket: &self.socket, log: &self.log };
        self.agent = None;
        self.agent = Some(spec.start(&self.sluice, self.topo.node(), &self.agent_args, "agent")?);
        Ok(())
    }

    /// Kill the agent (SIGKILL: a crash, not a clean stop).
    pub fn kill_agent(&mut self) {
        self.agent = None; // Spawned's drop kills and reaps it
    }

    /// Run the CLI against this agent.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        cli_at(&self.sluice, &self.socket, args)
    }

    /// Run the CLI and require success.
    pub fn ok(&self, args: &[&str]) -> String {
        ok_at(&self.sluice, &self.socket, args, "the agent")
    }

    /// Apply manifest text (written to a file of ours).
    pub fn apply(&self, name: &str, text: &str) -> String {
        let p = self.tmp.join(name);
        std::fs::write(&p, text).unwrap();
        self.ok(&["apply", "-f", p.to_str().unwrap()])
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.tmp.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// `sluice-probe serve` in pod `i` under its own name.
    pub fn serve(&mut self, pod: usize, args: &[&str]) -> anyhow::Result<()> {
        let p = &self.topo.pods()[pod];
        let mut a = vec!["serve", "--name", p.name.as_str()];
        a.extend_from_slice(args);
        let s = sluice_testbed::proc::spawn_ready(Some(&p.netns), None, &bin("sluice-probe"), &a)?;
        self.servers.push(s);
        Ok(())
    }

    /// Run `sluice-probe` in a namespace, inside the test cgroup (so the
    /// socket hooks apply), and parse its JSON output.
    pub fn probe(&self, ns: &Netns, args: &[&str]) -> anyhow::Result<Value> {
        let o = run_in(Some(ns), Some(&self.cgroup), &bin("sluice-probe"), args, Duration::from_secs(30))?;
        if !o.status.success() {
            bail!("probe {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        serde_json::from_slice(&o.stdout).with_context(|| format!("probe output: {}", String::from_utf8_lossy(&o.stdout)))
    }

    pub fn pod_ns(&self, i: usize) -> &Netns {
        &self.topo.pods()[i].netns
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.servers.clear();
        self.agent = None;
        let _ = std::process::Command::new(&self.sluice)
            .args(["datapath", "uninstall", "--bpffs", self.pin_dir.to_str().unwrap()])
            .output();
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

fn unique() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Backend names and peers from a probe's results.
pub fn backends(v: &Value) -> Vec<String> {
    v["results"].as_array().unwrap().iter().filter_map(|r| r["backend"].as_str().map(String::from)).collect()
}

pub fn peers(v: &Value) -> Vec<String> {
    v["results"].as_array().unwrap().iter().filter_map(|r| r["peer"].as_str().map(String::from)).collect()
}

pub fn errors(v: &Value) -> Vec<String> {
    v["results"].as_array().unwrap().iter().filter_map(|r| r["error"].as_str().map(String::from)).collect()
}

/// `sluice --api-socket SOCKET ARGS...`.
fn cli_at(sluice: &Path, socket: &Path, args: &[&str]) -> anyhow::Result<Output> {
    let mut a = vec!["--api-socket", socket.to_str().unwrap()];
    a.extend_from_slice(args);
    Ok(std::process::Command::new(sluice).args(&a).output()?)
}

/// [`cli_at`], requiring success; its stdout. `who` names the agent.
fn ok_at(sluice: &Path, socket: &Path, args: &[&str], who: &str) -> String {
    let o = cli_at(sluice, socket, args).expect("running sluice");
    assert!(
        o.status.success(),
        "sluice {args:?} on {who} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Where a test agent keeps its state, and how it is started: the one
/// place both harnesses start `sluice agent` from.
struct AgentSpec<'a> {
    state_dir: &'a Path,
    cgroup: &'a TestCgroup,
    pin_dir: &'a Path,
    socket: &'a Path,
    log: &'a Path,
}

impl AgentSpec<'_> {
    /// Start the agent in `ns` (log appended to `log`) and wait until it
    /// answers `status`; fails with its log if it exits or stays silent.
    fn start(&self, sluice: &Path, ns: &Netns, extra: &[String], name: &str) -> anyhow::Result<Spawned> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log)?;
        let mut args: Vec<&str> = vec![
            "agent",
            "--state-dir",
            self.state_dir.to_str().unwrap(),
            "--cgroup",
            self.cgroup.path().to_str().unwrap(),
            "--bpffs",
            self.pin_dir.to_str().unwrap(),
            "--api-socket",
            self.socket.to_str().unwrap(),
            "--node-addr-refresh",
            "0.2",
            // Allocated cluster IPs stay in the test range too.
            "--service-cidr",
            "198.19.128.0/17",
        ];
        args.extend(extra.iter().map(String::as_str));
        let mut child = sluice_testbed::proc::spawn_in_logged(Some(ns), None, sluice, &args, log)?;
        let log_text = || std::fs::read_to_string(self.log).unwrap_or_default();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            let up = cli_at(sluice, self.socket, &["status"]).map(|o| o.status.success()).unwrap_or(false);
            if up {
                // Node addresses are written right after start; wait for them.
                std::thread::sleep(Duration::from_millis(300));
                return Ok(child);
            }
            if let Ok(Some(st)) = child.try_wait() {
                bail!("{name} exited ({st}); log:\n{}", log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{name} did not come up; log:\n{}", log_text())
    }
}

/// An agent running in a network namespace the caller owns (a node of a
/// multi-node topology), with its own state, pins, API socket and test
/// cgroup. Dropping it kills the agent and removes the datapath and files.
pub struct NodeAgent {
    pub name: String,
    pub cgroup: TestCgroup,
    pub pin_dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    state_dir: PathBuf,
    netns: PathBuf,
    args: Vec<String>,
    sluice: PathBuf,
    tmp: PathBuf,
    agent: Option<Spawned>,
}

impl NodeAgent {
    /// Start `sluice agent` in `ns` with `args` added to the test defaults.
    pub fn start(ns: &Netns, name: &str, args: &[&str]) -> anyhow::Result<NodeAgent> {
        require_root();
        let id = format!("{name}-{}-{}", std::process::id(), unique());
        let tmp = std::env::temp_dir().join(format!("sluice-e2e-{id}"));
        std::fs::create_dir_all(&tmp)?;
        let mut a = NodeAgent {
            name: name.to_string(),
            cgroup: TestCgroup::new(&format!("sl-{name}"))?,
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/sluice-e2e-{id}")),
            socket: tmp.join("agent.sock"),
            log: tmp.join("agent.log"),
            state_dir: tmp.join("state"),
            netns: ns.path().to_path_buf(),
            args: args.iter().map(|s| s.to_string()).collect(),
            sluice: bin("sluice"),
            tmp,
            agent: None,
        };
        a.restart(ns)?;
        Ok(a)
    }

    /// (Re)start the agent process in `ns` (the namespace it was made for).
    pub fn restart(&mut self, ns: &Netns) -> anyhow::Result<()> {
        anyhow::ensure!(ns.path() == self.netns, "an agent stays in its own namespace");
        self.agent = None;
        let spec = AgentSpec { state_dir: &self.state_dir, cgroup: &self.cgroup, pin_dir: &self.pin_dir, socket: &self.socket, log: &self.log };
        self.agent = Some(spec.start(&self.sluice, ns, &self.args, &self.name)?);
        Ok(())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        cli_at(&self.sluice, &self.socket, args)
    }

    /// Run the CLI and require success; stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        ok_at(&self.sluice, &self.socket, args, &self.name)
    }

    pub fn apply(&self, file: &str, text: &str) -> String {
        let p = self.tmp.join(file);
        std::fs::write(&p, text).unwrap();
        self.ok(&["apply", "-f", p.to_str().unwrap()])
    }

    /// A counter of `sluice bpf metrics`.
    pub fn metric(&self, name: &str) -> u64 {
        let v: Value = serde_json::from_str(&self.ok(&["bpf", "metrics", "-o", "json", "--bpffs", self.pin_dir.to_str().unwrap()])).unwrap();
        v.as_array()
            .and_then(|a| a.iter().find(|m| m["name"] == name))
            .and_then(|m| m["value"].as_u64())
            .unwrap_or_else(|| panic!("no counter {name} in {v}"))
    }

    /// Kill the agent (SIGKILL: a crash); the datapath stays.
    pub fn kill(&mut self) {
        self.agent = None;
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        self.agent = None;
        let _ = std::process::Command::new(&self.sluice)
            .args(["datapath", "uninstall", "--bpffs", self.pin_dir.to_str().unwrap()])
            .output();
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}
