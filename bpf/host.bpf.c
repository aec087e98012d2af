// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The node's external devices: tcx programs for masquerade.
 *
 * sl_host_ingress balances traffic from outside to NodePort, ExternalIP and
 * LoadBalancer-IP frontends and translates what comes back (lib/nodeport.h),
 * puts the pod back as the destination of masqueraded flows' replies, and
 * delivers routed traffic for local pods with bpf_redirect_peer.
 * sl_host_egress SNATs pod sources leaving the node to the node's
 * masquerade address and translates replies of backends in the node's own
 * namespace (lib/nat.h). The configuration is in the sl_cfg_v1 map.
 */
#include "include/common.h"
#include "lib/nat.h"
#include "lib/nodeport.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("tcx/egress")
int sl_host_egress(struct __sk_buff *skb)
{
	return sl_host_out(skb);
}

SEC("tcx/ingress")
int sl_host_ingress(struct __sk_buff *skb)
{
	return sl_host_in(skb);
}
