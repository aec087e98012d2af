/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Local endpoints (pods on this node), layout version 1.
 *
 * One entry per pod address, written by the agent when a pod is wired up.
 * The pod datapath uses it to deliver pod-to-pod traffic on the node
 * straight into the target pod (bpf_redirect_peer), without the host stack.
 */
#ifndef SLUICE_EP_H
#define SLUICE_EP_H

#include "common.h"

#define SL_EP_MAX	(1 << 14)

/* Flags of an endpoint (host order). None defined yet: reserved, zero. */

struct sl_ep_val {
	__u32 id;		/* endpoint id, host order */
	__u32 host_ifindex;	/* host side of the pod's veth, host order */
	__u8  pod_mac[6];	/* MAC inside the pod */
	__u8  host_mac[6];	/* MAC of the host side of the veth */
	__u32 flags;		/* reserved, zero */
};

/* Key: the pod's address (union sl_addr, IPv4 mapped, network order). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, union sl_addr);
	__type(value, struct sl_ep_val);
	__uint(max_entries, SL_EP_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} sl_ep_v1 SEC(".maps");

#endif /* SLUICE_EP_H */
