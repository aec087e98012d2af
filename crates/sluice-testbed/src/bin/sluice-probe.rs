//! `sluice-probe`: the test server and client of Sluice's tests, demo and
//! benchmarks. See `sluice_testbed::probe` for the protocol.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sluice_testbed::probe::{self, Mode};

#[derive(Parser)]
#[command(name = "sluice-probe", about = "Test server and client for Sluice")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Answer every request (a TCP line, a UDP datagram) with `NAME\n`.
    /// Prints `ready` once every listener is bound; runs until killed.
    Serve {
        #[arg(long)]
        name: String,
        /// TCP address to listen on (repeatable; `[::]:P` is dual-stack).
        #[arg(long, value_name = "ADDR:PORT")]
        tcp: Vec<SocketAddr>,
        /// UDP address to answer on (repeatable).
        #[arg(long, value_name = "ADDR:PORT")]
        udp: Vec<SocketAddr>,
        /// Event-loop threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Make COUNT requests, each on a new connection (or socket), and print
    /// one JSON object: {"results":[{"backend","peer","local","latency_ns",
    /// "error"}...],"errors":{ERRNO:N},"backends":{NAME:N}}. Failures are
    /// recorded by errno name; the exit status is 0 regardless.
    Connect {
        #[arg(long, value_name = "ADDR:PORT")]
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Unconnected UDP: sendto, recvfrom (peer = the answer's source).
        #[arg(long)]
        udp: bool,
        /// Connected UDP: connect, getpeername, send, recv.
        #[arg(long, conflicts_with = "udp")]
        connected_udp: bool,
        /// JSON output (the default; accepted for clarity).
        #[arg(long, conflicts_with = "summary")]
        json: bool,
        /// A short summary for people instead of JSON.
        #[arg(long)]
        summary: bool,
        /// Keep one connection (or socket) for SECS seconds instead, sending
        /// a request every --interval-ms; prints one JSON line per answer or
        /// error, stops at the first error (exit status 1).
        #[arg(long, value_name = "SECS")]
        hold: Option<f64>,
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        /// Time allowed for a connect or an answer.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// New-connection latency (connect + one request/answer + close), after
    /// WARMUP unmeasured rounds. Prints {"p50_ns","p90_ns","p99_ns",
    /// "mean_ns","min_ns","max_ns","n","errors"}.
    Latency {
        #[arg(long, value_name = "ADDR:PORT")]
        to: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 100)]
        warmup: usize,
        /// Also print every sample as "samples_ns".
        #[arg(long)]
        raw: bool,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Serve {
            name,
            tcp,
            udp,
            threads,
        } => {
            if tcp.is_empty() && udp.is_empty() {
                anyhow::bail!("nothing to serve: give --tcp and/or --udp");
            }
            probe::serve(&name, &tcp, &udp, threads)
        }
        Cmd::Connect {
            to,
            count,
            udp,
            connected_udp,
            json: _,
            summary,
            hold,
            interval_ms,
            timeout_ms,
        } => {
            let mode = if udp {
                Mode::Udp
            } else if connected_udp {
                Mode::ConnectedUdp
            } else {
                Mode::Tcp
            };
            let timeout = Duration::from_millis(timeout_ms);
            if let Some(secs) = hold {
                let mut out = std::io::stdout().lock();
                let ok = probe::hold(
                    mode,
                    to,
                    Duration::from_secs_f64(secs),
                    Duration::from_millis(interval_ms),
                    timeout,
                    |l| {
                        let _ =
                            writeln!(out, "{}", serde_json::to_string(l).expect("serialisable"));
                        let _ = out.flush();
                    },
                );
                std::process::exit(if ok { 0 } else { 1 });
            }
            let report = probe::connect(mode, to, count, timeout);
            if summary {
                print_summary(&report, count);
            } else {
                println!("{}", serde_json::to_string(&report)?);
            }
            Ok(())
        }
        Cmd::Latency {
            to,
            count,
            warmup,
            raw,
            timeout_ms,
        } => {
            let r = probe::latency(to, count, warmup, Duration::from_millis(timeout_ms), raw);
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
    }
}

fn print_summary(r: &probe::Report, count: usize) {
    let mut lines: BTreeMap<String, usize> = BTreeMap::new();
    for (b, n) in &r.backends {
        lines.insert(b.clone(), *n);
    }
    for (e, n) in &r.errors {
        lines.insert(format!("error {e}"), *n);
    }
    for (k, n) in &lines {
        println!("  {k:<20} {n:>4} {}", "#".repeat(*n));
    }
    let mut peers: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &r.results {
        if let Some(p) = &a.peer {
            *peers.entry(p).or_insert(0) += 1;
        }
    }
    for (p, n) in peers {
        println!("  getpeername() = {p} for {n} of {count}");
    }
}
