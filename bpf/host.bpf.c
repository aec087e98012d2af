// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The node's external devices: tcx programs for masquerade.
 *
 * sl_host_egress SNATs pod sources leaving the node to the node's
 * masquerade address; sl_host_ingress puts the pod back as the destination
 * of replies and hands them to the stack, which routes them to the pod.
 * The work is in lib/nat.h; the configuration in the sl_cfg_v1 map.
 */
#include "include/common.h"
#include "lib/nat.h"

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
