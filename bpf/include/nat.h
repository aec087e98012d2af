/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Source NAT (masquerade) at the node's external devices, layout version 1.
 *
 * A masqueraded flow has two entries:
 *  - egress (SL_NAT_DIR_OUT), keyed by the tuple as the pod sent it
 *    (pod -> remote); the value is the source to write (node address and
 *    the allocated port);
 *  - ingress (SL_NAT_DIR_IN), keyed by the reply's tuple as it arrives
 *    (remote -> node address:allocated port); the value is the pod's
 *    address and port to put back as the destination.
 * The ingress entry is created first with BPF_NOEXIST: that is what makes
 * an allocated (remote, port) pair belong to one flow only.
 *
 * Expiry as in ct.h: alive while now < last_seen_ns + lifetime_s.
 */
#ifndef SLUICE_NAT_H
#define SLUICE_NAT_H

#include "common.h"

#define SL_SNAT_MAX		(1 << 16)
#define SL_SNAT_TRIES		8	/* random ports tried per new flow */

#define SL_NAT_DIR_OUT		0
#define SL_NAT_DIR_IN		1

/* Same shape as struct sl_ct_key. */
struct sl_nat_key {
	union sl_addr saddr;	/* network order */
	union sl_addr daddr;	/* network order */
	__be16 sport;		/* network order */
	__be16 dport;		/* network order */
	__u8  proto;		/* IPPROTO_TCP or IPPROTO_UDP */
	__u8  dir;		/* SL_NAT_DIR_* */
	__u16 pad;
};

struct sl_nat_val {
	/* OUT: new source; IN: new destination (the pod). */
	union sl_addr addr;	/* network order */
	__be16 port;		/* network order */
	__u16 flags;		/* SL_CT_F_* (ct.h), host order */
	__u32 lifetime_s;	/* host order */
	__u64 last_seen_ns;	/* bpf_ktime_get_ns() */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct sl_nat_key);
	__type(value, struct sl_nat_val);
	__uint(max_entries, SL_SNAT_MAX);
} sl_snat_v1 SEC(".maps");

#endif /* SLUICE_NAT_H */
