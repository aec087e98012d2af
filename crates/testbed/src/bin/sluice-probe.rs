//! `sluice-probe`: a test server and client for Sluice's tests, demo and
//! benchmarks.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use sluice_testbed::probe::{self, Mode};
use sluice_testbed::stats::percentile;

#[derive(Parser)]
#[command(about = "Test server and client for Sluice")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Answer every request (a TCP line or a UDP datagram) with NAME; prints `ready` once listening.
    Serve {
        #[arg(long)]
        name: String,
        #[arg(long)]
        tcp: Vec<SocketAddr>,
        #[arg(long)]
        udp: Vec<SocketAddr>,
    },
    /// Make COUNT new connections (or exchanges) and report each as JSON.
    Connect {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Unconnected UDP: sendto/recvfrom.
        #[arg(long)]
        udp: bool,
        /// Connected UDP: connect/send/recv.
        #[arg(long, conflicts_with = "udp")]
        connected_udp: bool,
        /// One TCP connection kept for SECS seconds, a request every 100 ms (JSON lines).
        #[arg(long)]
        hold: Option<f64>,
        /// Print a summary for people instead of JSON.
        #[arg(long)]
        summary: bool,
    },
    /// New-connection latency: connect, one request/response, close; JSON percentiles.
    Latency {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 2000)]
        count: usize,
        #[arg(long, default_value_t = 200)]
        warmup: usize,
        /// Also print every sample (nanoseconds) as `samples_ns`.
        #[arg(long)]
        raw: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Serve { name, tcp, udp } => probe::serve(&name, &tcp, &udp),
        Cmd::Connect { to, count, udp, connected_udp, hold, summary } => {
            if let Some(secs) = hold {
                std::process::exit(if probe::hold(to, secs) { 0 } else { 1 });
            }
            let mode = if udp {
                Mode::Udp
            } else if connected_udp {
                Mode::ConnectedUdp
            } else {
                Mode::Tcp
            };
            let results: Vec<probe::Attempt> = (0..count).map(|_| probe::attempt(mode, to)).collect();
            if summary {
                let mut by: BTreeMap<String, usize> = BTreeMap::new();
                let mut peers: BTreeMap<String, usize> = BTreeMap::new();
                for r in &results {
                    let k = match (&r.backend, &r.error) {
                        (Some(b), _) => b.clone(),
                        (None, Some(e)) => format!("error {e}"),
                        _ => "?".into(),
                    };
                    *by.entry(k).or_default() += 1;
                    if let Some(p) = &r.peer {
                        *peers.entry(p.clone()).or_default() += 1;
                    }
                }
                for (k, n) in &by {
                    println!("  {k:<20} {n:>4} {}", "#".repeat(*n));
                }
                for (p, n) in &peers {
                    println!("  getpeername() = {p} for {n} of {count}");
                }
            } else {
                println!("{}", serde_json::json!({ "results": results }));
            }
            Ok(())
        }
        Cmd::Latency { to, count, warmup, raw } => {
            let mut v = Vec::with_capacity(count);
            let mut errors = 0usize;
            for i in 0..count + warmup {
                let a = probe::tcp_once(to);
                if a.error.is_some() {
                    errors += 1;
                }
                if i >= warmup {
                    v.push(a.latency_ns);
                }
            }
            let mean = v.iter().sum::<u64>() / v.len().max(1) as u64;
            let samples = if raw { Some(v.clone()) } else { None };
            println!(
                "{}",
                serde_json::json!({
                    "samples_ns": samples,
                    "p50_ns": percentile(&mut v, 50.0),
                    "p99_ns": percentile(&mut v, 99.0),
                    "mean_ns": mean,
                    "n": count,
                    "errors": errors,
                })
            );
            Ok(())
        }
    }
}
