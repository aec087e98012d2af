// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Pod devices: tcx programs on the host side of each pod's veth.
 *
 * sl_from_pod (tcx ingress) sees what the pod sends: service translation
 * with conntrack, replies of local backends, and delivery to pods on this
 * node with bpf_redirect_peer. sl_to_pod (tcx egress) sees what the stack
 * sends into the pod: replies of backends elsewhere. The work is in
 * lib/pod.h.
 */
#include "include/common.h"
#include "lib/pod.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("tcx/ingress")
int sl_from_pod(struct __sk_buff *skb)
{
	return sl_pod_from(skb);
}

SEC("tcx/egress")
int sl_to_pod(struct __sk_buff *skb)
{
	return sl_pod_to(skb);
}
