//! `sluice-bench services`: new-connection latency through Sluice, a direct
//! connection, and kube-proxy's iptables- and nftables-mode rules for the
//! same N services; the time to program N services each way; and the time
//! to apply one endpoint change. One run, one topology, ratios printed.
//!
//! Topology (throwaway namespaces): pod0 is the client, pod1 and pod2 serve
//! TCP :8080. The measured service is the most recently added one, whose
//! two endpoints are pod1 and pod2; every other service has two endpoints
//! of its own (addresses nobody answers, which nothing ever connects to).
//! Sluice's client runs in the test cgroup (socket hooks); the direct and
//! kube-proxy clients run outside it, their packets DNATed in the node
//! namespace by kube-proxy's rules.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use serde::Serialize;
use serde_json::Value;
use sluice_testbed::cgroup::TestCgroup;
use sluice_testbed::kubeproxy::{self, KpService, Proto};
use sluice_testbed::netns::Netns;
use sluice_testbed::proc::{run_in, spawn_in_logged, spawn_ready, Spawned};
use sluice_testbed::stats::percentile;
use sluice_testbed::topo::Topology;

mod cni;
mod nodeport;
mod sockets;

#[derive(Parser, Debug)]
#[command(about = "Sluice benchmarks, each side by side with the alternative in one run")]
enum Bench {
    /// Service latency and programming time: Sluice vs a direct connection vs kube-proxy iptables/nftables.
    Services(Args),
    /// Socket termination: Sluice vs `ss -K` in each namespace.
    Sockets(sockets::SocketArgs),
    /// Pod networking: Sluice's CNI plugin and pod datapath vs the reference bridge + host-local plugins.
    Cni(cni::CniArgs),
    /// NodePort to a backend on another node: packets per second forwarded and new-connection latency
    /// through node1, kube-proxy iptables/nftables vs Sluice tc/XDP.
    Nodeport(nodeport::NodePortArgs),
}

#[derive(clap::Args, Debug)]
struct Args {
    /// Numbers of services to measure at.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000,100000")]
    sizes: Vec<usize>,
    /// Largest N for kube-proxy iptables mode.
    #[arg(long, default_value_t = 10000)]
    iptables_max: usize,
    /// Largest N for kube-proxy nftables mode. `nft -f` of kube-proxy's
    /// structure grows quadratically with the number of chains (nft 1.0.6:
    /// 65 s at 10,000 services), so 100,000 would take most of an hour.
    #[arg(long, default_value_t = 10000)]
    nft_max: usize,
    /// Connections per latency measurement (after 10% warm-up).
    #[arg(long, default_value_t = 2000)]
    samples: usize,
    /// Endpoint changes to time at the largest N.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Write the results as JSON here.
    #[arg(long, default_value = "bench/services.json")]
    out: PathBuf,
}

#[derive(Debug, Clone, Serialize, Default)]
struct Latency {
    p50_us: f64,
    p99_us: f64,
}

#[derive(Debug, Clone, Serialize, Default)]
struct Row {
    n: usize,
    direct: Latency,
    sluice: Latency,
    /// Direct to the backends from the same client process as Sluice's
    /// connections, interleaved connection by connection.
    direct_same_client: Latency,
    /// Median over rounds of Sluice's p50 / direct p50, both from the same
    /// client process, interleaved connection by connection.
    sluice_vs_direct_p50: f64,
    iptables: Option<Latency>,
    nft: Option<Latency>,
    /// Time for the agent to write N services into the maps (diff + map writes).
    sluice_program_ms: f64,
    /// Whole `sluice apply` of the YAML: parse, validate, store, maps.
    sluice_apply_ms: f64,
    iptables_restore_ms: Option<f64>,
    nft_load_ms: Option<f64>,
    /// One endpoint change: agent reconcile (median) and whole CLI call (median).
    change_reconcile_us: Option<f64>,
    change_cli_ms: Option<f64>,
}

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().join(name)
}

fn vip(i: usize) -> (Ipv4Addr, u16) {
    // 198.19.0.0/16, 65,024 addresses, then the next port.
    let a = i % (254 * 256);
    (Ipv4Addr::new(198, 19, (a / 254) as u8, (a % 254 + 1) as u8), 80 + (i / (254 * 256)) as u16)
}

fn fake_endpoint(j: usize) -> (IpAddr, u16) {
    // 198.18.2.0 - 198.18.255.255, then the next port: never answered.
    let a = j % (254 * 254);
    (IpAddr::V4(Ipv4Addr::new(198, 18, (a / 254 + 2) as u8, (a % 254 + 1) as u8)), 8080 + (j / (254 * 254)) as u16)
}

fn services(n: usize, real: [(IpAddr, u16); 2]) -> Vec<KpService> {
    (0..n)
        .map(|i| {
            let (ip, port) = vip(i);
            let endpoints = if i + 1 == n { real.to_vec() } else { vec![fake_endpoint(2 * i), fake_endpoint(2 * i + 1)] };
            KpService {
                namespace: "bench".into(),
                name: format!("svc-{i}"),
                port_name: "http".into(),
                vip: IpAddr::V4(ip),
                port,
                protocol: Proto::Tcp,
                endpoints,
                node_port: None,
            }
        })
        .collect()
}

fn slice_yaml(s: &KpService) -> String {
    let eps: Vec<String> = s.endpoints.iter().map(|e| format!("- addresses: [{}]", e.0)).collect();
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {n}-1\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: {n}}}\naddressType: IPv4\nports: [{{name: http, port: {p}}}]\nendpoints:\n{}\n",
        eps.join("\n"),
        n = s.name,
        ns = s.namespace,
        p = s.endpoints[0].1,
    )
}

/// Standard Kubernetes YAML for the services and their slices.
fn yaml(svcs: &[KpService]) -> String {
    let mut o = String::with_capacity(svcs.len() * 600);
    for s in svcs {
        let _ = write!(
            o,
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {}\n  namespace: {}\nspec:\n  clusterIP: {}\n  ports:\n  - name: http\n    port: {}\n    targetPort: {}\n",
            s.name, s.namespace, s.vip, s.port, s.endpoints[0].1
        );
        o.push_str(&slice_yaml(s));
    }
    o
}

/// The measuring client, run as `sluice-bench __client COUNT WARMUP ADDR...`
/// inside a pod's namespace: it opens connections to the targets in turn
/// (A, B, C, A, B, C...), so that whatever disturbs the machine disturbs
/// every target alike, and prints the samples of each target as JSON.
fn client_main(args: &[String]) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader};
    use std::net::{SocketAddr, TcpStream};
    let count: usize = args[0].parse()?;
    let warmup: usize = args[1].parse()?;
    let targets: Vec<SocketAddr> = args[2..].iter().map(|a| a.parse()).collect::<Result<_, _>>()?;
    let mut out: Vec<Vec<u64>> = vec![Vec::with_capacity(count); targets.len()];
    for i in 0..warmup + count {
        for (t, to) in targets.iter().enumerate() {
            let t0 = Instant::now();
            let mut s = TcpStream::connect_timeout(to, Duration::from_secs(3)).with_context(|| format!("connect {to}"))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(b"hi\n")?;
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).with_context(|| format!("read from {to}"))?;
            if line.is_empty() {
                bail!("{to} closed the connection");
            }
            sluice_testbed::probe::set_linger_zero(&s);
            drop(s);
            if i >= warmup {
                out[t].push(t0.elapsed().as_nanos() as u64);
            }
        }
    }
    println!("{}", serde_json::json!({ "samples_ns": out }));
    Ok(())
}

/// Run the client in pod0 (in `cg` if given) against `targets`; the
/// samples of each target.
fn client(topo: &Topology, cg: Option<&TestCgroup>, targets: &[&str], count: usize, warmup: usize) -> anyhow::Result<Vec<Vec<u64>>> {
    client_in(&topo.pods()[0].netns, cg, targets, count, warmup)
}

/// [`client`] in any namespace.
fn client_in(ns: &Netns, cg: Option<&TestCgroup>, targets: &[&str], count: usize, warmup: usize) -> anyhow::Result<Vec<Vec<u64>>> {
    let me = std::env::current_exe()?;
    let (count, warm) = (count.to_string(), warmup.to_string());
    let mut a = vec!["-c", "1", me.to_str().unwrap(), "__client", count.as_str(), warm.as_str()];
    a.extend_from_slice(targets);
    // The client on CPU 1, the servers on CPU 0: less scheduling noise.
    let o = run_in(Some(ns), cg, Path::new("taskset"), &a, Duration::from_secs(600))?;
    if !o.status.success() {
        bail!("latency client {targets:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let v: Value = serde_json::from_slice(&o.stdout)?;
    Ok(v["samples_ns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_array().unwrap().iter().filter_map(|x| x.as_u64()).collect())
        .collect())
}

fn summarize(mut v: Vec<u64>) -> Latency {
    Latency {
        p50_us: percentile(&mut v, 50.0) as f64 / 1000.0,
        p99_us: percentile(&mut v, 99.0) as f64 / 1000.0,
    }
}

/// Samples of one client run's targets, gathered over rounds.
struct Measured {
    /// All samples per target.
    all: Vec<Vec<u64>>,
    /// Per round, per target, the round's samples.
    rounds: Vec<Vec<Vec<u64>>>,
}

/// Several client runs (each: a cgroup or none, and its targets), repeated
/// in interleaved rounds with the order of the runs alternating.
fn measure(topo: &Topology, runs: &[(Option<&TestCgroup>, Vec<&str>)], total: usize) -> anyhow::Result<Vec<Measured>> {
    const ROUNDS: usize = 10;
    let per = (total / ROUNDS).max(1);
    let mut out: Vec<Measured> = runs
        .iter()
        .map(|(_, t)| Measured { all: vec![Vec::new(); t.len()], rounds: Vec::new() })
        .collect();
    for r in 0..ROUNDS {
        let order: Vec<usize> = if r % 2 == 0 { (0..runs.len()).collect() } else { (0..runs.len()).rev().collect() };
        for i in order {
            let (cg, targets) = &runs[i];
            let got = client(topo, *cg, targets, per, (per / 5).max(5))?;
            for (t, v) in got.iter().enumerate() {
                out[i].all[t].extend(v);
            }
            out[i].rounds.push(got);
        }
    }
    Ok(out)
}

fn median_u64(mut v: Vec<u64>) -> f64 {
    percentile(&mut v, 50.0) as f64
}

/// Run `program` inside the node namespace with `input` on stdin; time it.
fn timed_stdin(topo: &Topology, program: &str, args: &[&str], input: &str) -> anyhow::Result<f64> {
    timed_stdin_in(topo.node(), program, args, input)
}

/// [`timed_stdin`] in any namespace.
fn timed_stdin_in(ns: &Netns, program: &str, args: &[&str], input: &str) -> anyhow::Result<f64> {
    let net = format!("--net={}", ns.path().display());
    let mut a = vec![net.as_str(), program];
    a.extend_from_slice(args);
    let t0 = Instant::now();
    let mut child = Command::new("nsenter").args(&a).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    child.stdin.take().unwrap().write_all(input.as_bytes())?;
    let o = child.wait_with_output()?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    if !o.status.success() {
        bail!("{program} {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(ms)
}

struct Agent {
    _proc: Spawned,
    socket: PathBuf,
    pins: PathBuf,
}

impl Agent {
    fn start(topo: &Topology, cg: &TestCgroup, dir: &Path, tag: &str) -> anyhow::Result<Agent> {
        Agent::start_in(topo.node(), cg, dir, tag, &[])
    }

    /// Start an agent in `node` (a node's network namespace) with `extra`
    /// arguments after the usual ones.
    fn start_in(node: &Netns, cg: &TestCgroup, dir: &Path, tag: &str, extra: &[&str]) -> anyhow::Result<Agent> {
        let pins = PathBuf::from(format!("/sys/fs/bpf/sluice-bench-{}-{tag}", std::process::id()));
        Agent::start_pinned(node, cg, dir, tag, pins, extra)
    }

    /// [`Agent::start_in`] with its pins in `pins` (a new directory on the
    /// bpffs; removed with the datapath when the agent is dropped).
    fn start_pinned(node: &Netns, cg: &TestCgroup, dir: &Path, tag: &str, pins: PathBuf, extra: &[&str]) -> anyhow::Result<Agent> {
        let state = dir.join(format!("state-{tag}"));
        let socket = dir.join(format!("agent-{tag}.sock"));
        let log_path = dir.join(format!("agent-{tag}.log"));
        let log = std::fs::File::create(&log_path)?;
        let mut args = vec![
            "agent",
            "--state-dir",
            state.to_str().unwrap(),
            "--cgroup",
            cg.path().to_str().unwrap(),
            "--bpffs",
            pins.to_str().unwrap(),
            "--api-socket",
            socket.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let p = spawn_in_logged(Some(node), None, &bin("sluice"), &args, log)?;
        let mut a = Agent { _proc: p, socket, pins };
        let t0 = Instant::now();
        while a.cli(&["status"]).is_err() {
            let exited = a._proc.try_wait()?;
            if exited.is_some() || t0.elapsed() > Duration::from_secs(30) {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("agent did not start ({exited:?}); its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(a)
    }

    fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut a = vec!["--api-socket", self.socket.to_str().unwrap()];
        a.extend_from_slice(args);
        let o = Command::new(bin("sluice")).args(&a).output()?;
        if !o.status.success() {
            bail!("sluice {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(String::from_utf8_lossy(&o.stdout).to_string())
    }

    /// Apply a file; returns (CLI wall ms, agent reconcile µs).
    fn apply(&self, file: &Path) -> anyhow::Result<(f64, f64)> {
        let t0 = Instant::now();
        let out = self.cli(&["apply", "-o", "json", "-f", file.to_str().unwrap()])?;
        let wall = t0.elapsed().as_secs_f64() * 1000.0;
        let v: Value = serde_json::from_str(&out)?;
        Ok((wall, v["reconcile_us"].as_f64().unwrap_or(0.0)))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = Command::new(bin("sluice")).args(["datapath", "uninstall", "--bpffs", self.pins.to_str().unwrap()]).output();
    }
}

/// Let the machine finish what the last step left behind (dirty pages of
/// the store written back, rules freed) before measuring latency.
fn settle() {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    std::thread::sleep(Duration::from_secs(3));
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    match argv.get(1).map(String::as_str) {
        Some("__client") => return client_main(&argv[2..]),
        Some("__hold") => return sockets::hold_main(&argv[2..]),
        Some("__rr") => return cni::rr_main(&argv[2..]),
        Some("__flood") => return nodeport::flood_main(&argv[2..]),
        Some("__sink") => return nodeport::sink_main(&argv[2..]),
        _ => {}
    }
    let args = match Bench::parse() {
        Bench::Services(a) => a,
        Bench::Sockets(a) => return sockets::run(a),
        Bench::Cni(a) => return cni::run(a),
        Bench::Nodeport(a) => return nodeport::run(a),
    };
    let topo = Topology::new("sl-bench", 3)?;
    let cg = TestCgroup::new("sl-bench")?;
    let dir = std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = Cleanup(dir.clone());
    let mut servers = Vec::new();
    let real: [(IpAddr, u16); 2] = [(IpAddr::V4(topo.pods()[1].ip4), 8080), (IpAddr::V4(topo.pods()[2].ip4), 8080)];
    for i in 1..=2 {
        let p = &topo.pods()[i];
        let a = format!("{}:8080", p.ip4);
        let probe = std::env::var_os("SLUICE_BENCH_SERVER").map(PathBuf::from).unwrap_or_else(|| bin("sluice-probe"));
        servers.push(spawn_ready(
            Some(&p.netns),
            None,
            Path::new("taskset"),
            &["-c", "0", probe.to_str().unwrap(), "serve", "--name", &p.name, "--tcp", &a],
        )?);
    }
    let ipt_version = Command::new("iptables-restore").arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    eprintln!("sluice-bench: {} samples per latency; iptables: {ipt_version}", args.samples);

    let mut rows = Vec::new();
    let largest = *args.sizes.iter().max().unwrap_or(&0);
    for &n in &args.sizes {
        eprintln!("== N = {n}");
        let svcs = services(n, real);
        let (tip, tport) = vip(n - 1);
        let target = format!("{tip}:{tport}");
        let mut row = Row { n, ..Default::default() };

        let direct_to = format!("{}:8080", real[0].0);

        // Sluice
        {
            let agent = Agent::start(&topo, &cg, &dir, &n.to_string())?;
            let file = dir.join(format!("services-{n}.yaml"));
            std::fs::write(&file, yaml(&svcs))?;
            let (wall, rec) = agent.apply(&file)?;
            row.sluice_apply_ms = wall;
            row.sluice_program_ms = rec / 1000.0;
            settle();
            eprintln!("   sluice     programmed in {:.1} ms (maps), apply {:.0} ms (CLI, parse + store + maps)", row.sluice_program_ms, wall);
            // One client alternates, connection by connection, between the
            // two backends directly and the VIP (inside the test cgroup, so
            // the hooks run for all three and find a service only for the
            // VIP); a second client outside the cgroup measures the backends
            // with no hook at all.
            let d2 = format!("{}:8080", real[1].0);
            let m = measure(
                &topo,
                &[
                    (Some(&cg), vec![direct_to.as_str(), d2.as_str(), target.as_str()]),
                    (None, vec![direct_to.as_str(), d2.as_str()]),
                ],
                args.samples,
            )?;
            let union = |m: &Measured| summarize(m.all[0].iter().chain(&m.all[1]).copied().collect());
            row.direct_same_client = union(&m[0]);
            row.direct = union(&m[1]);
            row.sluice = summarize(m[0].all[2].clone());
            let mut ratios: Vec<f64> = m[0]
                .rounds
                .iter()
                .map(|r| median_u64(r[2].clone()) / median_u64(r[0].iter().chain(&r[1]).copied().collect()))
                .collect();
            row.sluice_vs_direct_p50 = median(&mut ratios);
            eprintln!("   direct     p50 {:>8.1} us  p99 {:>8.1} us  (no hooks)", row.direct.p50_us, row.direct.p99_us);
            eprintln!(
                "   direct     p50 {:>8.1} us  p99 {:>8.1} us  (same client as Sluice, hooks run)",
                row.direct_same_client.p50_us, row.direct_same_client.p99_us
            );
            eprintln!(
                "   sluice     p50 {:>8.1} us  p99 {:>8.1} us  (paired per-round p50 ratio to direct: {:.3})",
                row.sluice.p50_us, row.sluice.p99_us, row.sluice_vs_direct_p50
            );
            if n == largest && args.changes > 0 {
                // One endpoint of a service in the middle changes back and forth.
                let mut s = svcs[n / 2].clone();
                let mut recs = Vec::new();
                let mut walls = Vec::new();
                for k in 0..args.changes {
                    s.endpoints[1] = if k % 2 == 0 { fake_endpoint(4 * n + k) } else { fake_endpoint(2 * (n / 2) + 1) };
                    let f = dir.join("change.yaml");
                    std::fs::write(&f, slice_yaml(&s))?;
                    let (w, r) = agent.apply(&f)?;
                    walls.push(w);
                    recs.push(r);
                }
                row.change_reconcile_us = Some(median(&mut recs));
                row.change_cli_ms = Some(median(&mut walls));
                eprintln!("   sluice     one endpoint change: {:.0} us in the agent, {:.1} ms whole CLI call", row.change_reconcile_us.unwrap(), row.change_cli_ms.unwrap());
            }
        }

        if n <= args.iptables_max {
            let rules = kubeproxy::iptables_restore(&svcs);
            let ms = timed_stdin(&topo, "iptables-restore", &[], &rules)?;
            row.iptables_restore_ms = Some(ms);
            settle();
            let l = summarize(measure(&topo, &[(None, vec![target.as_str()])], args.samples)?.remove(0).all.remove(0));
            eprintln!("   iptables   loaded in {ms:.0} ms; p50 {:>8.1} us  p99 {:>8.1} us", l.p50_us, l.p99_us);
            row.iptables = Some(l);
            timed_stdin(&topo, "iptables-restore", &[], kubeproxy::IPTABLES_FLUSH)?;
            timed_stdin(&topo, "iptables", &["-t", "nat", "-X"], "")?;
        }
        if n <= args.nft_max {
            let rules = kubeproxy::nft(&svcs);
            let ms = timed_stdin(&topo, "nft", &["-f", "-"], &rules)?;
            row.nft_load_ms = Some(ms);
            settle();
            let l = summarize(measure(&topo, &[(None, vec![target.as_str()])], args.samples)?.remove(0).all.remove(0));
            eprintln!("   nftables   loaded in {ms:.0} ms; p50 {:>8.1} us  p99 {:>8.1} us", l.p50_us, l.p99_us);
            row.nft = Some(l);
            timed_stdin(&topo, "nft", &["-f", "-"], kubeproxy::NFT_FLUSH)?;
            settle();
        }
        rows.push(row);
    }
    drop(servers);
    report(&rows);
    if let Some(d) = args.out.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&serde_json::json!({
        "machine": machine(),
        "iptables": ipt_version,
        "samples": args.samples,
        "rows": rows,
    }))?)
    .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("results written to {}", args.out.display());
    Ok(())
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} cpus, Linux {}", kernel.trim())
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map(|x| format!("{x:.1}{unit}")).unwrap_or_else(|| "-".into())
}

fn ratio(a: Option<f64>, b: f64) -> String {
    a.map(|a| format!("{:.2}x", a / b)).unwrap_or_else(|| "-".into())
}

/// Print the tables (Markdown, so they can go into the README as they are).
fn report(rows: &[Row]) {
    println!("\n### New-connection latency (connect + one request/response + close), microseconds\n");
    println!("| services | direct p50 (no hooks) | direct p50 (same client) | Sluice p50 | iptables p50 | nftables p50 | direct p99 | Sluice p99 | iptables p99 | nftables p99 | Sluice / direct p50 (same client, per round) | iptables / Sluice p50 | nftables / Sluice p50 |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {} | {} | {:.1} | {:.1} | {} | {} | {:.3} | {} | {} |",
            r.n,
            r.direct.p50_us,
            r.direct_same_client.p50_us,
            r.sluice.p50_us,
            opt(r.iptables.as_ref().map(|l| l.p50_us), ""),
            opt(r.nft.as_ref().map(|l| l.p50_us), ""),
            r.direct.p99_us,
            r.sluice.p99_us,
            opt(r.iptables.as_ref().map(|l| l.p99_us), ""),
            opt(r.nft.as_ref().map(|l| l.p99_us), ""),
            r.sluice_vs_direct_p50,
            ratio(r.iptables.as_ref().map(|l| l.p50_us), r.sluice.p50_us),
            ratio(r.nft.as_ref().map(|l| l.p50_us), r.sluice.p50_us),
        );
    }
    println!("\n### Time to program N services, milliseconds\n");
    println!("| services | Sluice map writes | Sluice whole apply (parse, validate, store, maps) | iptables-restore | nft -f | iptables-restore / Sluice maps | nft / Sluice maps |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.1} | {:.0} | {} | {} | {} | {} |",
            r.n,
            r.sluice_program_ms,
            r.sluice_apply_ms,
            opt(r.iptables_restore_ms, ""),
            opt(r.nft_load_ms, ""),
            ratio(r.iptables_restore_ms, r.sluice_program_ms),
            ratio(r.nft_load_ms, r.sluice_program_ms),
        );
    }
    for r in rows.iter().filter(|r| r.change_reconcile_us.is_some()) {
        println!(
            "\nOne endpoint change at N = {}: {:.0} us in the agent (diff + map writes), {:.1} ms for the whole `sluice apply` call (median).",
            r.n,
            r.change_reconcile_us.unwrap(),
            r.change_cli_ms.unwrap()
        );
    }
}

struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
