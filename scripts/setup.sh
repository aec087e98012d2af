#!/usr/bin/env bash
# Install what building and testing Sluice needs on a fresh Debian machine
# (clang-19 for the BPF C, bpftool for vmlinux.h, iproute2/iptables/nftables
# for the test beds and benchmarks; containernetworking-plugins and iperf3
# for the pod networking benchmark's reference plugins and throughput;
# ethtool for the NodePort test bed's offload settings).
# Idempotent; needs root for apt-get.
set -euo pipefail

need=(clang-19 llvm-19 libelf-dev zlib1g-dev pkg-config bpftool iproute2 iptables nftables util-linux
      containernetworking-plugins iperf3 ethtool)
missing=()
for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
fi

if ! command -v cargo >/dev/null; then
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust 1.85 or newer (rustup.rs)" >&2; exit 1; }

if ! grep -q " cgroup2 " /proc/self/mountinfo; then
    echo "setup: no cgroup v2 hierarchy is mounted; Sluice's socket hooks need one" >&2
    exit 1
fi
