#!/usr/bin/env bash
# Build everything and run every test: unit and golden tests (no privileges
# needed) and the end-to-end tests, which load the datapath into throwaway
# namespaces and a test cgroup and therefore need root.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
if [ "$(id -u)" != 0 ]; then
    echo "test: the end-to-end tests need root (they load BPF programs and create namespaces)" >&2
    exit 1
fi

echo "== build"
cargo build --workspace --all-targets --locked 2>&1 | tail -n 3

echo "== unit, golden and end-to-end tests"
# Two threads: each end-to-end test runs its own agent and namespaces.
cargo test --workspace --locked -- --test-threads=2

echo "== leftovers check"
left=$(ip netns list | grep -E '^(sl|sluice)-' || true)
pins=$(ls /sys/fs/bpf 2>/dev/null | grep -E '^sluice-(e2e|demo|bench)' || true)
if [ -n "$left$pins" ]; then
    echo "test: left behind: $left $pins" >&2
    exit 1
fi
echo "test: all passed"
