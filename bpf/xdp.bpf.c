// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The node's external devices at XDP (`sluice agent --xdp`): the fast path
 * of the NodePort datapath, in front of the tcx programs of host.bpf.c and
 * sharing their maps. What it does and what it leaves to tc: lib/xdp.h.
 */
#include "include/common.h"
#include "lib/xdp.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("xdp")
int sl_host_xdp(struct xdp_md *ctx)
{
	return sl_xdp_nodeport(ctx);
}
