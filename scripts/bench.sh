#!/usr/bin/env bash
# The services benchmark: Sluice against a direct connection and kube-proxy's
# iptables and nftables rules, side by side in one run, in throwaway
# namespaces. Prints Markdown tables with ratios and writes bench/services.json.
# Extra arguments go to sluice-bench (try --help), e.g. --sizes 1,1000.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ "$(id -u)" = 0 ] || { echo "bench: run as root" >&2; exit 1; }
cargo build --release --locked --bins 2>&1 | tail -n 1
exec target/release/sluice-bench "$@"
