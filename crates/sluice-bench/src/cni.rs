//! `sluice-bench cni`: pod networking. Sluice's CNI plugin, agent and pod
//! datapath against the reference `bridge` + `host-local` plugins (Debian's
//! containernetworking-plugins), side by side in one run, on the same
//! topology: a node network namespace per contender and pod namespaces we
//! create, the plugins invoked exactly as a container runtime does
//! (CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_PATH, CNI_ARGS
//! in the environment, the network configuration on stdin, run inside the
//! node's network namespace; DEL gets the ADD result as `prevResult`, as
//! libcni passes it).
//!
//! Measured, per contender:
//! 1. the wall time of each of N ADDs, one after another (the plugin process
//!    from exec to exit), then of the N DELs;
//! 2. pod-to-pod latency, pod 0 to pod 1: a new TCP connection with one
//!    request/response (the services bench's measure), and requests on one
//!    held connection;
//! 3. TCP throughput pod 0 to pod 1 with iperf3.
//!
//! The contenders run interleaved: ADDs and DELs in blocks of ten pods,
//! latency and throughput in rounds, the order alternating, so that whatever
//! else the machine does hits both alike. Clients and servers are pinned to
//! CPU 1 (see --server-cpu). Sluice's pod processes run in the agent's cgroup (its
//! socket hooks run for them, as on a node where every pod is under the
//! cgroup Sluice attaches to).

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{json, Value};
use sluice_testbed::cgroup::TestCgroup;
use sluice_testbed::netns::Netns;
use sluice_testbed::proc::{command, run_in, spawn_in_logged, spawn_ready, Spawned};
use sluice_testbed::stats::percentile;
use sluice_testbed::topo::Topology;

use crate::{bin, median, Agent};

/// The reference contender's pod range (the testbed uses 198.18.0/24,
/// 198.18.1/24 and 198.18.255/24).
const BRIDGE_RANGE: &str = "198.18.96.0/24";
/// Sluice's pod range (the agent's --pod-cidr).
const SLUICE_POD_CIDR: &str = "198.18.64.0/24";
/// ADDs and DELs alternate between contenders in blocks of this many pods.
const BLOCK: usize = 10;
const PORT: u16 = 8080;
const IPERF_PORT: u16 = 5201;

#[derive(clap::Args, Debug)]
pub struct CniArgs {
    /// Pods to ADD and then DEL, per contender.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Contenders, in this order: `bridge` (bridge + host-local), `sluice`.
    #[arg(long, value_delimiter = ',', default_value = "bridge,sluice")]
    contenders: Vec<String>,
    /// New connections (connect + one request/response + close) per contender, over all rounds.
    #[arg(long, default_value_t = 2000)]
    samples: usize,
    /// Requests on one held connection per contender, over all rounds.
    #[arg(long, default_value_t = 20000)]
    rr_samples: usize,
    /// Latency rounds (each contender once per round, the order alternating).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// iperf3 runs per contender (alternating).
    #[arg(long, default_value_t = 10)]
    iperf_rounds: usize,
    /// Seconds per iperf3 run (after one omitted second of slow start).
    #[arg(long, default_value_t = 3)]
    iperf_secs: u64,
    /// CPU the clients (latency, iperf3 -c) are pinned to.
    #[arg(long, default_value = "1")]
    client_cpu: String,
    /// CPU the servers (sluice-probe, iperf3 -s) are pinned to. The same
    /// as the clients' by default: on a small VM a wake-up on another CPU
    /// costs ~100 us (an IPI through the hypervisor) and its noise swamps
    /// the path; on one CPU, latency and throughput measure the path's cost.
    #[arg(long, default_value = "1")]
    server_cpu: String,
    /// Where the reference plugins are (Debian's containernetworking-plugins).
    #[arg(long, default_value = "/usr/lib/cni")]
    cni_plugin_dir: PathBuf,
    /// Write the results as JSON here.
    #[arg(long, default_value = "bench/cni.json")]
    out: PathBuf,
    /// Copy the Sluice agent's log here at the end (with SLUICE_LOG=sluice_agent=debug
    /// it has each ADD's phase timings).
    #[arg(long)]
    agent_log: Option<PathBuf>,
}

/// A CNI plugin and how a runtime would call it. Both contenders are driven
/// by the same code through this.
#[derive(Debug, Clone)]
struct Contender {
    name: String,
    plugin: PathBuf,
    /// CNI_PATH: where the plugin finds its delegates (host-local).
    cni_path: String,
    /// The network configuration (stdin), without `prevResult`.
    config: Value,
}

fn bridge_contender(plugin_dir: &Path, dir: &Path) -> Contender {
    Contender {
        name: "bridge".into(),
        plugin: plugin_dir.join("bridge"),
        cni_path: plugin_dir.display().to_string(),
        config: json!({
            "cniVersion": "1.0.0",
            "name": "bench-bridge",
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": BRIDGE_RANGE }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                // host-local keeps its allocations on disk: ours, never /var/lib/cni.
                "dataDir": dir.join("host-local").display().to_string(),
            },
        }),
    }
}

fn sluice_contender(socket: &Path) -> Contender {
    let plugin = bin("sluice-cni");
    Contender {
        name: "sluice".into(),
        cni_path: plugin.parent().unwrap().display().to_string(),
        plugin,
        config: json!({
            "cniVersion": "1.1.0",
            "name": "sluice",
            "type": "sluice-cni",
            "agentSocket": socket.display().to_string(),
        }),
    }
}

/// A pod: a network namespace of ours and what ADD gave it.
struct Pod {
    netns: Netns,
    container_id: String,
    name: String,
    /// The ADD result (given back to DEL as `prevResult`).
    result: Option<Value>,
    ip: Option<Ipv4Addr>,
}

/// One contender's node, pods and (for Sluice) agent. Fields drop in
/// declaration order: servers, then pods, then the agent, then the node.
struct Side<'a> {
    servers: Vec<Spawned>,
    pods: Vec<Pod>,
    agent: Option<Agent>,
    node: Topology,
    c: Contender,
    /// The cgroup its pod processes run in (Sluice's: the agent's).
    cg: Option<&'a TestCgroup>,
    dir: PathBuf,
    add_ms: Vec<f64>,
    del_ms: Vec<f64>,
}

impl Side<'_> {
    /// Run the plugin for `cmd` on pod `i` as a runtime does; its wall time
    /// (exec to exit) in ms and its stdout.
    fn invoke(&self, cmd: &str, i: usize) -> anyhow::Result<(f64, String)> {
        let pod = &self.pods[i];
        let mut config = self.c.config.clone();
        if cmd == "DEL" {
            if let Some(r) = &pod.result {
                config["prevResult"] = r.clone();
            }
        }
        let input = self.dir.join(format!("{}-{cmd}-{i}.json", self.c.name));
        std::fs::write(&input, serde_json::to_vec(&config)?)?;
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
            pod.name, pod.container_id
        );
        let mut c = command(Some(self.node.node()), None, &self.c.plugin, &[])?;
        c.env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", &pod.container_id)
            .env("CNI_NETNS", pod.netns.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.c.cni_path)
            .env("CNI_ARGS", &args)
            .stdin(std::fs::File::open(&input)?)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let t0 = Instant::now();
        let out = Spawned::spawn(c)?.wait_output(Duration::from_secs(60))?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "{} {cmd} of {} failed ({}): {} {}",
                self.c.name,
                pod.name,
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok((ms, stdout))
    }

    fn add(&mut self, i: usize) -> anyhow::Result<()> {
        let (ms, out) = self.invoke("ADD", i)?;
        let r: Value = serde_json::from_str(&out).with_context(|| format!("{} ADD result: {out}", self.c.name))?;
        let ip = r["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["address"].as_str()?.split('/').next()?.parse::<Ipv4Addr>().ok())
            .next()
            .with_context(|| format!("{} ADD result has no IPv4 address: {out}", self.c.name))?;
        self.pods[i].ip = Some(ip);
        self.pods[i].result = Some(r);
        self.add_ms.push(ms);
        Ok(())
    }

    fn del(&mut self, i: usize) -> anyhow::Result<()> {
        let (ms, _) = self.invoke("DEL", i)?;
        self.pods[i].ip = None;
        self.del_ms.push(ms);
        Ok(())
    }

    fn addr(&self, i: usize, port: u16) -> String {
        format!("{}:{port}", self.pods[i].ip.expect("pod added"))
    }

    /// Veth devices left in the node namespace (the node's own sink pair aside).
    fn veths(&self) -> anyhow::Result<usize> {
        let out = self.node.node().ip(&["-o", "link", "show", "type", "veth"])?;
        Ok(out.lines().filter(|l| !l.contains(" uplink0")).count())
    }

    /// Run `program args` in pod `i` (in the side's cgroup) pinned to `cpu`; stdout.
    fn run_pod(&self, i: usize, cpu: &str, program: &str, args: &[&str], timeout: Duration) -> anyhow::Result<String> {
        let mut a = vec!["-c", cpu, program];
        a.extend_from_slice(args);
        let o = run_in(Some(&self.pods[i].netns), self.cg, Path::new("taskset"), &a, timeout)?;
        if !o.status.success() {
            bail!(
                "{} in {}'s pod {i}: {} {}",
                program,
                self.c.name,
                String::from_utf8_lossy(&o.stdout).trim(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Latency samples (ns) from the bench's own clients: `__client` (new
    /// connection each) or `__rr` (one held connection), pod 0 to pod 1.
    fn samples(&self, cpu: &str, mode: &str, count: usize, warmup: usize) -> anyhow::Result<Vec<u64>> {
        let me = std::env::current_exe()?;
        let (c, w, to) = (count.to_string(), warmup.to_string(), self.addr(1, PORT));
        let out = self.run_pod(0, cpu, me.to_str().unwrap(), &[mode, &c, &w, &to], Duration::from_secs(600))?;
        let v: Value = serde_json::from_str(&out)?;
        Ok(v["samples_ns"][0].as_array().context("samples")?.iter().filter_map(Value::as_u64).collect())
    }

    /// One iperf3 run, pod 0 to pod 1: (Gbit/s received, retransmits).
    fn iperf(&self, cpu: &str, secs: u64) -> anyhow::Result<(f64, u64)> {
        let (ip, s) = (self.pods[1].ip.unwrap().to_string(), secs.to_string());
        let port = IPERF_PORT.to_string();
        let args = ["-c", ip.as_str(), "-p", port.as_str(), "-t", s.as_str(), "-O", "1", "-J"];
        let mut last = None;
        // The server may still be starting: a few tries, a fifth of a second apart.
        for _ in 0..25 {
            match self.run_pod(0, cpu, "iperf3", &args, Duration::from_secs(secs + 30)) {
                Ok(out) => {
                    let v: Value = serde_json::from_str(&out)?;
                    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3: no end.sum_received")?;
                    return Ok((bps / 1e9, v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0)));
                }
                Err(e) if format!("{e:#}").contains("refused") => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap())
    }
}

/// `sluice-bench __rr COUNT WARMUP ADDR`: one TCP connection, COUNT
/// requests/responses on it after WARMUP unmeasured ones; prints the samples
/// as `{"samples_ns":[[...]]}`.
pub fn rr_main(args: &[String]) -> anyhow::Result<()> {
    let count: usize = args[0].parse()?;
    let warmup: usize = args[1].parse()?;
    let to: SocketAddr = args[2].parse()?;
    let s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).with_context(|| format!("connect {to}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let mut out = Vec::with_capacity(count);
    for i in 0..warmup + count {
        line.clear();
        let t0 = Instant::now();
        w.write_all(b"hi\n")?;
        r.read_line(&mut line).with_context(|| format!("read from {to}"))?;
        let ns = t0.elapsed().as_nanos() as u64;
        if line.is_empty() {
            bail!("{to} closed the connection");
        }
        if i >= warmup {
            out.push(ns);
        }
    }
    println!("{}", json!({ "samples_ns": [out] }));
    Ok(())
}

#[derive(Debug, Clone, Serialize, Default)]
struct Ops {
    n: usize,
    p50_ms: f64,
    p99_ms: f64,
    total_ms: f64,
}

fn ops(v: &[f64]) -> Ops {
    let mut us: Vec<u64> = v.iter().map(|ms| (ms * 1000.0) as u64).collect();
    Ops {
        n: v.len(),
        p50_ms: percentile(&mut us, 50.0) as f64 / 1000.0,
        p99_ms: percentile(&mut us, 99.0) as f64 / 1000.0,
        total_ms: v.iter().sum(),
    }
}

#[derive(Debug, Clone, Serialize, Default)]
struct Lat {
    n: usize,
    p50_us: f64,
    p99_us: f64,
}

fn lat(v: &[u64]) -> Lat {
    let mut v = v.to_vec();
    Lat { n: v.len(), p50_us: percentile(&mut v, 50.0) as f64 / 1000.0, p99_us: percentile(&mut v, 99.0) as f64 / 1000.0 }
}

#[derive(Debug, Clone, Serialize, Default)]
struct SideResult {
    name: String,
    plugin: String,
    cni_version: String,
    add: Ops,
    del: Ops,
    /// New connection + one request/response + close, pod 0 to pod 1.
    connect_rr: Lat,
    /// One request/response on a held connection.
    held_rr: Lat,
    /// Per iperf3 run, Gbit/s.
    gbps: Vec<f64>,
    gbps_median: f64,
    retransmits: Vec<u64>,
    /// Veths left in the node namespace after every DEL (should be 0).
    veths_after_del: usize,
    /// Sluice's datapath counters after the traffic (non-zero ones), to
    /// show which path the packets took (pod_redirect_peer).
    #[serde(skip_serializing_if = "Option::is_none")]
    counters: Option<Value>,
    /// Per round p50s (µs), for the paired ratios.
    round_connect_p50: Vec<f64>,
    round_held_p50: Vec<f64>,
}

pub fn run(args: CniArgs) -> anyhow::Result<()> {
    if args.contenders.is_empty() || args.contenders.iter().any(|c| c != "bridge" && c != "sluice") {
        bail!("--contenders: bridge and/or sluice");
    }
    if args.rounds == 0 || args.iperf_rounds == 0 || args.pods < 2 {
        bail!("--rounds, --iperf-rounds must be at least 1 and --pods at least 2");
    }
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let first_line = |p: &str, a: &[&str]| {
        std::process::Command::new(p)
            .args(a)
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string())
            .unwrap_or_default()
    };
    let iperf_version = first_line("iperf3", &["--version"]);
    let plugins_version = first_line("dpkg-query", &["-W", "-f", "${Version}", "containernetworking-plugins"]);
    // Locals drop in reverse order: the sides (servers, pods, agent, node)
    // go first, then the cgroup, then the directory.
    let dir = std::env::temp_dir().join(format!("sluice-cnibench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = crate::Cleanup(dir.clone());
    let cg = TestCgroup::new("sl-cnibench")?;
    let mut sides: Vec<Side> = Vec::new();
    for name in &args.contenders {
        let node = Topology::new(if name == "bridge" { "sl-cnib" } else { "sl-cnis" }, 0)?;
        let (c, agent, cg) = if name == "bridge" {
            let c = bridge_contender(&args.cni_plugin_dir, &dir);
            if !c.plugin.exists() || !args.cni_plugin_dir.join("host-local").exists() {
                bail!("{} or host-local missing: install Debian's containernetworking-plugins (scripts/setup.sh)", c.plugin.display());
            }
            (c, None, None)
        } else {
            let agent = Agent::start_in(node.node(), &cg, &dir, "cni", &["--pod-cidr", SLUICE_POD_CIDR])?;
            (sluice_contender(&agent.socket), Some(agent), Some(&cg))
        };
        sides.push(Side {
            servers: Vec::new(),
            pods: Vec::new(),
            agent,
            node,
            c,
            cg,
            dir: dir.clone(),
            add_ms: Vec::new(),
            del_ms: Vec::new(),
        });
    }
    for s in &mut sides {
        for i in 0..args.pods {
            s.pods.push(Pod {
                netns: Netns::new(&format!("{}-pod", s.node.name()))?,
                container_id: format!("{:016x}{:048x}", std::process::id(), (s.c.name.len() << 16) + i),
                name: format!("{}-{i}", s.c.name),
                result: None,
                ip: None,
            });
        }
    }
    let names: Vec<&str> = sides.iter().map(|s| s.c.name.as_str()).collect();
    eprintln!(
        "sluice-cnibench: {} pods each for {names:?}; containernetworking-plugins {plugins_version}; {iperf_version}",
        args.pods
    );

    // The order of the sides in round r: alternating.
    let order = |r: usize, n: usize| -> Vec<usize> { if r % 2 == 0 { (0..n).collect() } else { (0..n).rev().collect() } };

    // 1. ADD every pod, blocks of BLOCK pods per contender, alternating.
    for (b, start) in (0..args.pods).step_by(BLOCK).enumerate() {
        for k in order(b, sides.len()) {
            for i in start..(start + BLOCK).min(args.pods) {
                sides[k].add(i)?;
            }
        }
    }
    for s in &sides {
        let o = ops(&s.add_ms);
        eprintln!("   {:<7} ADD  p50 {:>7.2} ms  p99 {:>7.2} ms  total {:>8.1} ms", s.c.name, o.p50_ms, o.p99_ms, o.total_ms);
    }

    // 2. Latency, pod 0 -> pod 1, with all the pods in place.
    let probe = bin("sluice-probe");
    for s in &mut sides {
        let a = s.addr(1, PORT);
        let srv = spawn_ready(
            Some(&s.pods[1].netns),
            s.cg,
            Path::new("taskset"),
            &["-c", &args.server_cpu, probe.to_str().unwrap(), "serve", "--name", "pod1", "--tcp", &a],
        )?;
        s.servers.push(srv);
        let log = std::fs::File::create(dir.join(format!("iperf3-{}.log", s.c.name)))?;
        let (ip, port) = (s.pods[1].ip.unwrap().to_string(), IPERF_PORT.to_string());
        let srv = spawn_in_logged(
            Some(&s.pods[1].netns),
            s.cg,
            Path::new("taskset"),
            &["-c", &args.server_cpu, "iperf3", "-s", "-B", &ip, "-p", &port],
            log,
        )?;
        s.servers.push(srv);
    }
    let mut res: Vec<SideResult> = sides
        .iter()
        .map(|s| SideResult {
            name: s.c.name.clone(),
            plugin: s.c.plugin.display().to_string(),
            cni_version: s.c.config["cniVersion"].as_str().unwrap_or("").into(),
            ..Default::default()
        })
        .collect();
    let mut conn: Vec<Vec<u64>> = vec![Vec::new(); sides.len()];
    let mut held: Vec<Vec<u64>> = vec![Vec::new(); sides.len()];
    let per = (args.samples / args.rounds).max(1);
    let per_rr = (args.rr_samples / args.rounds).max(1);
    for r in 0..args.rounds {
        for k in order(r, sides.len()) {
            let c = sides[k].samples(&args.client_cpu, "__client", per, (per / 5).max(5))?;
            res[k].round_connect_p50.push(lat(&c).p50_us);
            conn[k].extend(c);
            let h = sides[k].samples(&args.client_cpu, "__rr", per_rr, (per_rr / 10).max(10))?;
            res[k].round_held_p50.push(lat(&h).p50_us);
            held[k].extend(h);
        }
    }
    for (k, s) in sides.iter().enumerate() {
        res[k].connect_rr = lat(&conn[k]);
        res[k].held_rr = lat(&held[k]);
        let (c, h) = (&res[k].connect_rr, &res[k].held_rr);
        eprintln!(
            "   {:<7} new connection p50 {:>7.1} us p99 {:>8.1} us; held connection p50 {:>6.1} us p99 {:>7.1} us",
            s.c.name, c.p50_us, c.p99_us, h.p50_us, h.p99_us
        );
    }

    // 3. Throughput, pod 0 -> pod 1.
    for r in 0..args.iperf_rounds {
        for k in order(r, sides.len()) {
            let (g, re) = sides[k].iperf(&args.client_cpu, args.iperf_secs)?;
            eprintln!("   {:<7} iperf3 run {}: {g:.2} Gbit/s, {re} retransmits", sides[k].c.name, r + 1);
            res[k].gbps.push(g);
            res[k].retransmits.push(re);
        }
    }
    for s in &mut sides {
        s.servers.clear();
    }
    for (k, s) in sides.iter().enumerate() {
        if let Some(a) = &s.agent {
            let v: Value = serde_json::from_str(&a.cli(&["status", "-o", "json"])?)?;
            let c = nonzero_counters(&v);
            eprintln!("   {:<7} datapath counters: {c}", s.c.name);
            res[k].counters = Some(c);
        }
    }

    // 4. DEL every pod, the same way as ADD.
    for (b, start) in (0..args.pods).step_by(BLOCK).enumerate() {
        for k in order(b, sides.len()) {
            for i in start..(start + BLOCK).min(args.pods) {
                sides[k].del(i)?;
            }
        }
    }
    for (k, s) in sides.iter().enumerate() {
        res[k].add = ops(&s.add_ms);
        res[k].del = ops(&s.del_ms);
        res[k].gbps_median = median(&mut res[k].gbps.clone());
        res[k].veths_after_del = s.veths()?;
        let o = &res[k].del;
        eprintln!(
            "   {:<7} DEL  p50 {:>7.2} ms  p99 {:>7.2} ms  total {:>8.1} ms; {} veths left",
            s.c.name, o.p50_ms, o.p99_ms, o.total_ms, res[k].veths_after_del
        );
    }
    let agent_log = sides.iter().find_map(|s| s.agent.as_ref()).map(|_| dir.join("agent-cni.log"));
    if let Some(l) = agent_log.as_ref().filter(|_| res.iter().any(|r| r.veths_after_del > 0)) {
        eprintln!("agent log:\n{}", std::fs::read_to_string(l).unwrap_or_default());
    }
    drop(sides);
    if let (Some(from), Some(to)) = (&agent_log, &args.agent_log) {
        std::fs::copy(from, to).with_context(|| format!("copying the agent log to {}", to.display()))?;
    }

    let ratios = ratios(&res);
    report(&res, &ratios, &args);
    if let Some(d) = args.out.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(
        &args.out,
        serde_json::to_string_pretty(&json!({
            "machine": crate::machine(),
            "commit": first_line("git", &["rev-parse", "--short", "HEAD"]),
            "loadavg_before": load_before.trim(),
            "loadavg_after": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
            "iperf3": iperf_version,
            "containernetworking_plugins": plugins_version,
            "pods": args.pods,
            "samples": args.samples,
            "rr_samples": args.rr_samples,
            "rounds": args.rounds,
            "iperf_rounds": args.iperf_rounds,
            "iperf_secs": args.iperf_secs,
            "client_cpu": args.client_cpu,
            "server_cpu": args.server_cpu,
            "contenders": res,
            "sluice_vs_bridge": ratios,
        }))?,
    )
    .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("results written to {}", args.out.display());
    Ok(())
}

/// The non-zero counters of `sluice status -o json`, as {name: n}.
fn nonzero_counters(status: &Value) -> Value {
    let c = status.get("counters").or_else(|| status.pointer("/status/counters"));
    let mut m = serde_json::Map::new();
    for pair in c.and_then(Value::as_array).into_iter().flatten() {
        if let (Some(name), Some(n)) = (pair[0].as_str(), pair[1].as_u64()) {
            if n > 0 {
                m.insert(name.to_string(), n.into());
            }
        }
    }
    Value::Object(m)
}

/// Sluice / bridge for every figure (lower is better for times, higher for
/// throughput); the p50 latency and throughput ratios also paired per round.
#[derive(Debug, Clone, Serialize, Default)]
struct Ratios {
    add_p50: f64,
    add_p99: f64,
    add_total: f64,
    del_p50: f64,
    del_p99: f64,
    del_total: f64,
    connect_rr_p50: f64,
    connect_rr_p99: f64,
    /// Median over rounds of the round's p50 ratio.
    connect_rr_p50_paired: f64,
    held_rr_p50: f64,
    held_rr_p99: f64,
    held_rr_p50_paired: f64,
    gbps_median: f64,
    /// Median over iperf3 rounds of the round's ratio.
    gbps_paired: f64,
}

fn ratios(res: &[SideResult]) -> Option<Ratios> {
    let b = res.iter().find(|r| r.name == "bridge")?;
    let s = res.iter().find(|r| r.name == "sluice")?;
    let paired = |x: &[f64], y: &[f64]| median(&mut x.iter().zip(y).map(|(a, b)| a / b).collect::<Vec<_>>());
    Some(Ratios {
        add_p50: s.add.p50_ms / b.add.p50_ms,
        add_p99: s.add.p99_ms / b.add.p99_ms,
        add_total: s.add.total_ms / b.add.total_ms,
        del_p50: s.del.p50_ms / b.del.p50_ms,
        del_p99: s.del.p99_ms / b.del.p99_ms,
        del_total: s.del.total_ms / b.del.total_ms,
        connect_rr_p50: s.connect_rr.p50_us / b.connect_rr.p50_us,
        connect_rr_p99: s.connect_rr.p99_us / b.connect_rr.p99_us,
        connect_rr_p50_paired: paired(&s.round_connect_p50, &b.round_connect_p50),
        held_rr_p50: s.held_rr.p50_us / b.held_rr.p50_us,
        held_rr_p99: s.held_rr.p99_us / b.held_rr.p99_us,
        held_rr_p50_paired: paired(&s.round_held_p50, &b.round_held_p50),
        gbps_median: s.gbps_median / b.gbps_median,
        gbps_paired: paired(&s.gbps, &b.gbps),
    })
}

/// The table (Markdown, ready for the README).
fn report(res: &[SideResult], r: &Option<Ratios>, args: &CniArgs) {
    let get = |name: &str| res.iter().find(|x| x.name == name);
    let (b, s) = (get("bridge"), get("sluice"));
    let cell = |x: Option<&SideResult>, f: &dyn Fn(&SideResult) -> f64, prec: usize| {
        x.map(|x| format!("{:.*}", prec, f(x))).unwrap_or_else(|| "-".into())
    };
    let rat = |f: &dyn Fn(&Ratios) -> f64| r.as_ref().map(|r| format!("{:.2}", f(r))).unwrap_or_else(|| "-".into());
    println!("\n### Pod networking: Sluice vs bridge + host-local, {} pods each\n", args.pods);
    println!("| | bridge + host-local | Sluice | Sluice / bridge (p50 latency and throughput: median of per-round ratios) |");
    println!("|---|---:|---:|---:|");
    type Row<'a> = (&'a str, &'a dyn Fn(&SideResult) -> f64, usize, &'a dyn Fn(&Ratios) -> f64);
    let rows: Vec<Row> = vec![
        ("ADD, p50 (ms)", &|x| x.add.p50_ms, 2, &|r| r.add_p50),
        ("ADD, p99 (ms)", &|x| x.add.p99_ms, 2, &|r| r.add_p99),
        ("ADD, all pods one after another (ms)", &|x| x.add.total_ms, 0, &|r| r.add_total),
        ("DEL, p50 (ms)", &|x| x.del.p50_ms, 2, &|r| r.del_p50),
        ("DEL, p99 (ms)", &|x| x.del.p99_ms, 2, &|r| r.del_p99),
        ("DEL, all pods one after another (ms)", &|x| x.del.total_ms, 0, &|r| r.del_total),
        ("pod to pod, new connection + request/response, p50 (us)", &|x| x.connect_rr.p50_us, 1, &|r| r.connect_rr_p50_paired),
        ("pod to pod, new connection + request/response, p99 (us)", &|x| x.connect_rr.p99_us, 1, &|r| r.connect_rr_p99),
        ("pod to pod, request/response on a held connection, p50 (us)", &|x| x.held_rr.p50_us, 1, &|r| r.held_rr_p50_paired),
        ("pod to pod, request/response on a held connection, p99 (us)", &|x| x.held_rr.p99_us, 1, &|r| r.held_rr_p99),
        ("pod to pod TCP throughput, iperf3, median (Gbit/s)", &|x| x.gbps_median, 2, &|r| r.gbps_paired),
    ];
    for (label, f, prec, rf) in rows {
        println!("| {label} | {} | {} | {} |", cell(b, f, prec), cell(s, f, prec), rat(rf));
    }
    println!(
        "\nRatios below 1 mean Sluice takes less time, except throughput (above 1: Sluice moves more). The p50 latency and throughput ratios are medians of per-round ratios ({} latency rounds, {} iperf3 runs of {} s each, alternating).",
        args.rounds, args.iperf_rounds, args.iperf_secs
    );
    for x in res {
        let g: Vec<String> = x.gbps.iter().map(|g| format!("{g:.2}")).collect();
        println!("{} iperf3 runs (Gbit/s): {}; retransmits {:?}; veths left after DEL: {}", x.name, g.join(", "), x.retransmits, x.veths_after_del);
    }
}
