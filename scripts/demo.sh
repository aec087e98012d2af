#!/usr/bin/env bash
# Sluice in two minutes, on this machine, touching nothing of the host's
# network: a client pod and three backend pods in throwaway namespaces, given
# their network by the CNI plugin, the agent in a "node" namespace with the
# socket hooks on a cgroup of its own.
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
CNI=$PWD/target/release/sluice-cni

ID=sluice-demo-$$
TMP=$(mktemp -d /tmp/$ID.XXXX)
PINS=/sys/fs/bpf/$ID
CG=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)/$ID
SOCK=$TMP/agent.sock
NS=(node client be1 be2 be3 outside)
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

step "topology: a node namespace, four empty pod namespaces (client, be1-3), and a host outside the node"
for n in "${NS[@]}"; do ip netns add "$ID-$n"; ip -n "$ID-$n" link set lo up; done
ip netns exec "$ID-node" sysctl -qw net.ipv4.ip_forward=1
ip -n "$ID-node" addr add 198.18.255.1/32 dev lo
# The node's external device ext0 (192.0.2.1) and the outside host (192.0.2.2) on it.
ip -n "$ID-node" link add ext0 type veth peer name eth0 netns "$ID-outside"
ip -n "$ID-node" addr add 192.0.2.1/24 dev ext0
ip -n "$ID-node" link set ext0 up
ip -n "$ID-outside" addr add 192.0.2.2/24 dev eth0
ip -n "$ID-outside" link set eth0 up
ip -n "$ID-outside" route add default via 192.0.2.1
mkdir "$CG"

step "sluice agent (in the node namespace; pods from 198.18.64.0/24; hooks on cgroup $CG; external device ext0)"
nsenter --net="/run/netns/$ID-node" "$S" agent --state-dir "$TMP/state" --cgroup "$CG" --bpffs "$PINS" --api-socket "$SOCK" \
    --pod-cidr 198.18.64.0/24 --pod-cidr fd00:5c:64::/112 --external-dev ext0 --node-name demo-node 2> "$TMP/agent.log" &
PIDS+=($!)
for _ in $(seq 100); do sl status >/dev/null 2>&1 && break; sleep 0.1; done
sl status | head -n 4

step "give each pod its network with the CNI plugin, as a container runtime does"
CONF='{"cniVersion":"1.1.0","name":"sluice","type":"sluice-cni","agentSocket":"'"$SOCK"'"}'
cni() { # cni COMMAND POD
    echo "$CONF" | nsenter --net="/run/netns/$ID-node" env -i CNI_COMMAND="$1" CNI_CONTAINERID="$2-$$" \
        CNI_NETNS="/run/netns/$ID-$2" CNI_IFNAME=eth0 CNI_PATH="$PWD/target/release" \
        CNI_ARGS="K8S_POD_NAMESPACE=demo;K8S_POD_NAME=$2" "$CNI"
}
echo "\$ echo '$CONF' | CNI_COMMAND=ADD CNI_CONTAINERID=... CNI_NETNS=/run/netns/... CNI_IFNAME=eth0 sluice-cni"
cni ADD client | sed -n '/"ips"/,/^  \]/p' | sed 's/^/  /'
for n in be1 be2 be3; do cni ADD "$n" > /dev/null; done
declare -A IP
for n in client be1 be2 be3; do
    IP[$n]=$(ip -n "$ID-$n" -4 -o addr show dev eth0 | awk '{ split($4, a, "/"); print a[1] }')
done
cat > "$TMP/pods.yaml" <<YAML
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo, labels: {app: shell}}
---
apiVersion: v1
kind: Pod
metadata: {name: be1, namespace: demo, labels: {app: web}}
---
apiVersion: v1
kind: Pod
metadata: {name: be2, namespace: demo, labels: {app: web}}
---
apiVersion: v1
kind: Pod
metadata: {name: be3, namespace: demo, labels: {app: web}}
YAML
sl apply -f "$TMP/pods.yaml" > /dev/null
echo "\$ sluice endpoint list        # labels come from the applied v1 Pods"
sl endpoint list

step "backends: each answers with its own name on :8080"
for n in be1 be2 be3; do
    # nsenter execs the program: $! is the server's own pid.
    nsenter --net="/run/netns/$ID-$n" "$PROBE" serve --name "$n" --tcp "${IP[$n]}:8080" > "$TMP/$n.out" &
    PIDS+=($!)
done
sleep 0.3

step "pod to pod: the client reaches be1 directly (delivered with bpf_redirect_peer)"
in_pod client "$PROBE" connect --to "${IP[be1]}:8080" --count 5 --summary

step "apply a Service and its EndpointSlice"
cat > "$TMP/web.yaml" <<YAML
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  type: NodePort
  clusterIP: 198.19.0.1
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
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
- {addresses: [${IP[be1]}], nodeName: demo-node}
- {addresses: [${IP[be2]}], nodeName: demo-node}
- {addresses: [${IP[be3]}], nodeName: demo-node}
YAML
sed 's/^/  /' "$TMP/web.yaml"
echo "\$ sluice apply -f web.yaml"
sl apply -f "$TMP/web.yaml"
echo "\$ sluice service list        # backends that are local pods are named"
sl service list

step "30 new connections from the client pod to 198.19.0.1:80 (socket hooks: translated once, at connect)"
in_pod client "$PROBE" connect --to 198.19.0.1:80 --count 30 --summary

step "the same from a process outside the hooks' cgroup (translated per packet at the pod's device)"
nsenter --net="/run/netns/$ID-client" "$PROBE" connect --to 198.19.0.1:80 --count 30 --summary
echo "\$ sluice bpf ct list --port 80 | tail -n 3"
sl bpf ct list --bpffs "$PINS" --port 80 | tail -n 3

step "from the host outside the node to the node port 192.0.2.1:30080 (balanced per packet at ext0)"
echo "\$ sluice lb simulate --src 192.0.2.2:40000 --dst 192.0.2.1:30080 --proto tcp"
sl lb simulate --bpffs "$PINS" --src 192.0.2.2:40000 --dst 192.0.2.1:30080 --proto tcp | sed 's/^/  /'
nsenter --net="/run/netns/$ID-outside" "$PROBE" connect --to 192.0.2.1:30080 --count 30 --summary

step "remove be3 from the EndpointSlice"
sed -i "/${IP[be3]}]/d" "$TMP/web.yaml"
sl apply -f "$TMP/web.yaml"
sl service list
in_pod client "$PROBE" connect --to 198.19.0.1:80 --count 30 --summary

step "a bad manifest is refused, and nothing changes"
printf 'apiVersion: v1\nkind: Service\nmetadata: {name: oops, namespace: demo}\nspec: {clusterIP: 198.19.0.1, ports: [{port: 80}]}\n' > "$TMP/oops.yaml"
echo "\$ sluice apply -f oops.yaml"
sl apply -f "$TMP/oops.yaml" || true

step "datapath counters"
sl bpf metrics --bpffs "$PINS" | awk 'NR == 1 || $2 != 0'

step "remove the pods with CNI DEL"
for n in client be1 be2 be3; do cni DEL "$n" && echo "  DEL $n: ok"; done
sl endpoint list
echo
echo "demo: done"
