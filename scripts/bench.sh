#!/usr/bin/env bash
# Benchmarks, each side by side with the alternative in one run, in
# throwaway namespaces; Markdown tables with ratios on stdout, JSON in bench/.
#   scripts/bench.sh [services] [ARGS]   Sluice vs direct vs kube-proxy iptables/nftables
#   scripts/bench.sh sockets [ARGS]      socket termination: Sluice vs ss -K per namespace
#   scripts/bench.sh cni [ARGS]          pod networking: Sluice's CNI plugin and pod datapath
#                                        vs the bridge + host-local plugins (ADD/DEL, latency, iperf3)
#   scripts/bench.sh nodeport [ARGS]     NodePort to a backend on another node (two-node topology):
#                                        pps and latency, kube-proxy iptables/nftables vs Sluice tc/XDP
# ARGS go to sluice-bench (try: scripts/bench.sh services --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ "$(id -u)" = 0 ] || { echo "bench: run as root" >&2; exit 1; }
cargo build --release --locked --bins 2>&1 | tail -n 1
case "${1:-}" in
    services|sockets|cni|nodeport) exec target/release/sluice-bench "$@" ;;
    *) exec target/release/sluice-bench services "$@" ;;
esac
