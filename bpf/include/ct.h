/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Connection tracking for per-packet service translation, layout version 1.
 *
 * A translated flow has two entries, tied together by their keys:
 *  - forward (SL_CT_DIR_FWD), keyed by the tuple as the client sent it
 *    (client -> frontend); the value names the backend it was sent to;
 *  - reverse (SL_CT_DIR_REV), keyed by the reply's tuple as the backend
 *    sends it (backend -> client); the value names the frontend to put
 *    back as the reply's source.
 * The reverse key is the forward key with the destination replaced by the
 * forward value's backend and source and destination swapped, so one entry
 * always finds the other. Both families use the 16-byte address form.
 *
 * Expiry: an entry is alive while now < last_seen_ns + lifetime_s. TCP FIN
 * or RST shortens the lifetime to SL_CT_LIFETIME_CLOSE_S. The datapath
 * ignores (and replaces) expired entries; the map is LRU (sized by
 * --ct-max), so entries no flow uses are evicted when it fills, and the
 * agent sweeps expired pairs (crates/sluice-datapath/src/ctgc.rs).
 *
 * Written by the pod devices (per-packet service translation) and the
 * external devices (traffic from outside the node, lib/nodeport.h).
 */
#ifndef SLUICE_CT_H
#define SLUICE_CT_H

#include "common.h"

#define SL_CT_MAX		(1 << 16)

#define SL_CT_DIR_FWD		0
#define SL_CT_DIR_REV		1

#define SL_CT_LIFETIME_TCP_S	21600	/* established TCP: 6 hours */
#define SL_CT_LIFETIME_OTHER_S	60	/* UDP and the like */
#define SL_CT_LIFETIME_CLOSE_S	10	/* after a FIN or RST */

/* Flags (host order). */
#define SL_CT_F_CLOSING		(1 << 0)	/* FIN or RST seen */
#define SL_CT_F_NODEPORT	(1 << 1)	/* from outside the node, at an external device */
#define SL_CT_F_SNAT		(1 << 2)	/* remote backend: source NATed to the node (nat.h) */
#define SL_CT_F_DSR		(1 << 3)	/* remote backend answers directly (DSR) */
#define SL_CT_F_DSR_BACKEND	(1 << 4)	/* REV entry made on the backend's node from a DSR option */

struct sl_ct_key {
	union sl_addr saddr;	/* network order */
	union sl_addr daddr;	/* network order */
	__be16 sport;		/* network order */
	__be16 dport;		/* network order */
	__u8  proto;		/* IPPROTO_TCP or IPPROTO_UDP */
	__u8  dir;		/* SL_CT_DIR_* */
	__u16 pad;
};

struct sl_ct_val {
	/* FWD: the backend (new destination); REV: the frontend (new source). */
	union sl_addr nat_addr;	/* network order */
	__be16 nat_port;	/* network order */
	__u16 flags;		/* SL_CT_F_*, host order */
	__u32 rev_nat_id;	/* the frontend's id, host order */
	__u32 backend_id;	/* host order */
	__u32 lifetime_s;	/* host order */
	__u64 last_seen_ns;	/* bpf_ktime_get_ns() */
	__u64 created_ns;	/* bpf_ktime_get_ns() */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct sl_ct_key);
	__type(value, struct sl_ct_val);
	__uint(max_entries, SL_CT_MAX);
} sl_ct_v1 SEC(".maps");

#endif /* SLUICE_CT_H */
