#!/usr/bin/env bash
# Sluice in two minutes, on this machine, touching nothing of the host's
# network: a client pod and three backend pods in throwaway namespaces, the
# agent in a "node" namespace with the socket hooks on a cgroup of its own.
# Everything is removed at the end, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
[ "$(id -u)" = 0 ] || { echo "demo: run as root (it loads BPF programs and creates namespaces)" >&2; exit 1; }

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "building (cargo build --release)"
cargo build --release --locked --bins 2>&1 | tail -n 2
S=$PWD/target/release/sluice
PROBE=$PWD/target/release/sluice-probe

ID=sluice-demo-$$
TMP=$(mktemp -d /tmp/$ID.XXXX)
PINS=/sys/fs/bpf/$ID
CG=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)/$ID
SOCK=$TMP/agent.sock
NS=(node client be1 be2 be3)
PIDS=()

cleanup() {
    set +e
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    [ -x "$S" ] && "$S" datapath uninstall --bpffs "$PINS" >/dev/null 2>&1
    for n in "${NS[@]}"; do ip netns del "$ID-$n" 2>/dev/null; done
    rmdir "$CG" 2>/dev/null
    rm -rf "$TMP"
    echo "demo: cleaned up (namespaces, cgroup, pins, agent)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Run in a pod namespace *and* the demo cgroup, where the socket hooks are.
in_pod() { local n=$1; shift; sh -c 'echo $$ > "$0/cgroup.procs"; shift; exec "$@"' "$CG" x nsenter --net="/run/netns/$ID-$n" "$@"; }
sl() { "$S" --api-socket "$SOCK" "$@"; }

step "topology: client + 3 backend pods, routed through a node namespace"
for n in "${NS[@]}"; do ip netns add "$ID-$n"; ip -n "$ID-$n" link set lo up; done
ip netns exec "$ID-node" sysctl -qw net.ipv4.ip_forward=1
ip -n "$ID-node" addr add 198.18.255.1/32 dev lo
i=10
for n in client be1 be2 be3; do
    ip -n "$ID-node" link add "v-$n" type veth peer name eth0 netns "$ID-$n"
    ip -n "$ID-node" addr add 198.18.0.1/32 dev "v-$n"
    ip -n "$ID-node" link set "v-$n" up
    ip -n "$ID-$n" addr add "198.18.1.$i/32" dev eth0
    ip -n "$ID-$n" link set eth0 up
    ip -n "$ID-$n" route add 198.18.0.1 dev eth0
    ip -n "$ID-$n" route add default via 198.18.0.1
    ip -n "$ID-node" route add "198.18.1.$i/32" dev "v-$n"
    printf '  %-7s 198.18.1.%s\n' "$n" "$i"
    i=$((i + 1))
done
mkdir "$CG"

step "backends: each answers with its own name on :8080"
i=11
for n in be1 be2 be3; do
    # nsenter execs the program: $! is the server's own pid.
    nsenter --net="/run/netns/$ID-$n" "$PROBE" serve --name "$n" --tcp "198.18.1.$i:8080" > "$TMP/$n.out" &
    PIDS+=($!)
    i=$((i + 1))
done
sleep 0.3

step "sluice agent (in the node namespace; hooks on cgroup $CG)"
nsenter --net="/run/netns/$ID-node" "$S" agent --state-dir "$TMP/state" --cgroup "$CG" --bpffs "$PINS" --api-socket "$SOCK" \
    2> "$TMP/agent.log" &
PIDS+=($!)
for _ in $(seq 100); do sl status >/dev/null 2>&1 && break; sleep 0.1; done
sl status | head -n 4

step "apply a Service and its EndpointSlice"
cat > "$TMP/web.yaml" <<'YAML'
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 198.19.0.1
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: demo
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [198.18.1.11]
- addresses: [198.18.1.12]
- addresses: [198.18.1.13]
YAML
sed 's/^/  /' "$TMP/web.yaml"
echo "\$ sluice apply -f web.yaml"
sl apply -f "$TMP/web.yaml"
echo "\$ sluice service list"
sl service list

step "30 new connections from the client pod to 198.19.0.1:80"
in_pod client "$PROBE" connect --to 198.19.0.1:80 --count 30 --summary

step "remove be3 from the EndpointSlice"
sed -i '/198.18.1.13/d' "$TMP/web.yaml"
sl apply -f "$TMP/web.yaml"
sl service list
in_pod client "$PROBE" connect --to 198.19.0.1:80 --count 30 --summary

step "a bad manifest is refused, and nothing changes"
printf 'apiVersion: v1\nkind: Service\nmetadata: {name: oops, namespace: demo}\nspec: {clusterIP: 198.19.0.1, ports: [{port: 80}]}\n' > "$TMP/oops.yaml"
echo "\$ sluice apply -f oops.yaml"
sl apply -f "$TMP/oops.yaml" || true

step "datapath counters"
sl bpf metrics --bpffs "$PINS"
echo
echo "demo: done"
