//! `sluice-bench sockets`: time from an EndpointSlice change to the last
//! affected socket destroyed, with AFFECTED sockets (TCP, through the
//! service) spread over NAMESPACES pod namespaces and as many bystanders
//! (TCP, straight to another backend); against iproute2's `ss -K` with a
//! destination filter run in each namespace, in the same run.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;

use crate::bin;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;
use sluice_testbed::cgroup::TestCgroup;
use sluice_testbed::proc::{spawn_ready_timeout, Spawned};
use sluice_testbed::topo::Topology;

#[derive(clap::Args, Debug)]
pub struct SocketArgs {
    /// Client pod namespaces.
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
    /// Sockets through the service per namespace (as many bystanders again).
    #[arg(long, default_value_t = 100)]
    per_namespace: usize,
    /// Write the results as JSON here.
    #[arg(long, default_value = "bench/sockets.json")]
    out: PathBuf,
}

/// `sluice-bench __hold VIA N DIRECT N`: open the connections, print
/// `ready`, and hold them until the process is killed.
pub fn hold_main(args: &[String]) -> anyhow::Result<()> {
    let via: SocketAddr = args[0].parse()?;
    let n_via: usize = args[1].parse()?;
    let direct: SocketAddr = args[2].parse()?;
    let n_direct: usize = args[3].parse()?;
    let mut held = Vec::new();
    for (to, n) in [(via, n_via), (direct, n_direct)] {
        for _ in 0..n {
            held.push(TcpStream::connect_timeout(&to, Duration::from_secs(5)).with_context(|| format!("connect {to}"))?);
        }
    }
    println!("ready");
    std::io::stdout().flush()?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
        let _ = &held;
    }
}

fn service(endpoint: Option<&str>) -> String {
    let eps = endpoint.map(|e| format!("endpoints:\n- addresses: [{e}]\n")).unwrap_or_else(|| "endpoints: []\n".into());
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: bench}}\nspec:\n  clusterIP: 198.19.0.1\n  ports: [{{port: 80, targetPort: 8080}}]\n---\n\
apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: bench\n  labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{{port: 8080}}]\n{eps}"
    )
}

fn holders(topo: &Topology, cg: &TestCgroup, n: usize, per: usize, direct: &str) -> anyhow::Result<Vec<Spawned>> {
    let per_s = per.to_string();
    let me = std::env::current_exe()?;
    let mut v = Vec::new();
    for i in 0..n {
        v.push(spawn_ready_timeout(
            Some(&topo.pods()[i].netns),
            Some(cg),
            &me,
            &["__hold", "198.19.0.1:80", &per_s, direct, &per_s],
            Duration::from_secs(60),
        )?);
    }
    Ok(v)
}

pub fn run(args: SocketArgs) -> anyhow::Result<()> {
    let n = args.namespaces;
    let per = args.per_namespace;
    eprintln!("sluice-bench sockets: {n} namespaces x {per} sockets through the service, and as many bystanders");
    let topo = Topology::new("sl-sockbench", n + 2)?;
    let cg = TestCgroup::new("sl-sockbench")?;
    let dir = std::env::temp_dir().join(format!("sluice-sockbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = Cleanup { dir: dir.clone() };
    let (a, b) = (&topo.pods()[n], &topo.pods()[n + 1]);
    let (a_addr, b_addr) = (format!("{}:8080", a.ip4), format!("{}:8080", b.ip4));
    let probe = bin("sluice-probe");
    let _servers = [
        spawn_ready_timeout(Some(&a.netns), None, &probe, &["serve", "--name", "a", "--tcp", &a_addr], Duration::from_secs(10))?,
        spawn_ready_timeout(Some(&b.netns), None, &probe, &["serve", "--name", "b", "--tcp", &b_addr], Duration::from_secs(10))?,
    ];
    let agent = crate::Agent::start(&topo, &cg, &dir, "sockets")?;
    let sluice = |args: &[&str]| agent.cli(args);
    let with_a = dir.join("with-a.yaml");
    let without_a = dir.join("without-a.yaml");
    std::fs::write(&with_a, service(Some(&a.ip4.to_string())))?;
    std::fs::write(&without_a, service(None))?;
    sluice(&["apply", "-f", with_a.to_str().unwrap()])?;

    // Sluice: the backend leaves the service; wait for the last socket.
    let hs = holders(&topo, &cg, n, per, &b_addr)?;
    eprintln!("   {} sockets open ({} through the service)", 2 * n * per, n * per);
    let t0 = Instant::now();
    sluice(&["apply", "-f", without_a.to_str().unwrap()])?;
    let (destroyed, failed) = loop {
        let v: Value = serde_json::from_str(&sluice(&["socket", "events", "-o", "json"])?)?;
        let d = v["destroyed_total"].as_u64().unwrap_or(0);
        let f = v["failed_total"].as_u64().unwrap_or(0);
        if d + f >= (n * per) as u64 {
            break (d, f);
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let log = std::fs::read_to_string(dir.join("agent-sockets.log")).unwrap_or_default();
            bail!("only {d} of {} sockets destroyed after 120 s; agent log:\n{log}", n * per);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let sluice_ms = t0.elapsed().as_secs_f64() * 1000.0;
    eprintln!("   sluice     {destroyed} destroyed ({failed} failed) in {sluice_ms:.0} ms, from the apply to the last socket");
    drop(hs);

    // ss -K: the same sockets, ended by destination, one namespace at a time.
    sluice(&["apply", "-f", with_a.to_str().unwrap()])?;
    let hs = holders(&topo, &cg, n, per, &b_addr)?;
    let t0 = Instant::now();
    for i in 0..n {
        let net = format!("--net={}", topo.pods()[i].netns.path().display());
        let o = Command::new("nsenter")
            .args([net.as_str(), "ss", "-K", "-t", "dst", &a.ip4.to_string(), "dport", "=", ":8080"])
            .output()?;
        if !o.status.success() {
            bail!("ss -K: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
    let ss_ms = t0.elapsed().as_secs_f64() * 1000.0;
    eprintln!("   ss -K      {n} namespaces in {ss_ms:.0} ms");
    drop(hs);

    println!("\n### Socket termination: {} sockets to end in {n} namespaces, {} bystanders\n", n * per, n * per);
    println!("| | time to the last socket destroyed (ms) | sockets destroyed |");
    println!("|---|---:|---:|");
    println!("| Sluice (EndpointSlice change -> BPF iterators + bpf_sock_destroy, every namespace) | {sluice_ms:.0} | {destroyed} |");
    println!("| `ss -K dst ADDR dport = :PORT` run in each namespace | {ss_ms:.0} | {} |", n * per);
    println!("\nss -K / Sluice: {:.2}x", ss_ms / sluice_ms);
    if let Some(d) = args.out.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(
        &args.out,
        serde_json::to_string_pretty(&serde_json::json!({
            "namespaces": n,
            "affected": n * per,
            "bystanders": n * per,
            "sluice_ms": sluice_ms,
            "sluice_destroyed": destroyed,
            "sluice_failed": failed,
            "ss_k_ms": ss_ms,
        }))?,
    )?;
    Ok(())
}

struct Cleanup {
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
