/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Service load-balancing maps, layout version 1.
 *
 * A service frontend (VIP, port, protocol) owns a run of entries in the
 * service map: slot 0 is the master entry (how many backend slots are
 * active, flags, the frontend id); slots 1..count each name one backend id.
 * A lookup is two hash lookups whatever the number of services, and a
 * backend change rewrites only the slots it touches.
 */
#ifndef SLUICE_LB_H
#define SLUICE_LB_H

#include "common.h"

/* Bumped with any change of the structs below; part of every pinned name. */
#define SL_LB_LAYOUT_VERSION 1

#define SL_LB_SERVICES_MAX	(1 << 20)
#define SL_LB_BACKENDS_MAX	(1 << 20)
#define SL_LB_REVNAT_MAX	(1 << 18)
#define SL_LB_SOCK_REVNAT_MAX	(1 << 18)
#define SL_LB_AFFINITY_MAX	(1 << 16)
#define SL_NODE_ADDRS_MAX	256

/* Scope of a service key. */
#define SL_SCOPE_VIP		0	/* ClusterIP, ExternalIP, LoadBalancer IP */
#define SL_SCOPE_NODEPORT	1	/* addr is zero: any node address */
/*
 * The "local" twin of an external frontend (bit 1 added to its scope):
 * written only for services with externalTrafficPolicy: Local, holding
 * only this node's backends. The node's external devices look it up when
 * the ordinary master entry has SL_SVC_F_ETP_LOCAL; the socket hooks and
 * pod devices never do (traffic from inside the cluster uses every backend).
 */
#define SL_SCOPE_LOCAL		2
#define SL_SCOPE_VIP_LOCAL	(SL_SCOPE_VIP | SL_SCOPE_LOCAL)
#define SL_SCOPE_NODEPORT_LOCAL	(SL_SCOPE_NODEPORT | SL_SCOPE_LOCAL)

/* Flags of the master entry (host order). */
#define SL_SVC_F_AFFINITY	(1 << 0)	/* sessionAffinity: ClientIP */
#define SL_SVC_F_NODEPORT	(1 << 1)
#define SL_SVC_F_EXTERNAL_IP	(1 << 2)
#define SL_SVC_F_LOADBALANCER	(1 << 3)
#define SL_SVC_F_MAGLEV		(1 << 4)	/* per-packet paths: Maglev table */
#define SL_SVC_F_ETP_LOCAL	(1 << 5)	/* externalTrafficPolicy: Local: see SL_SCOPE_LOCAL */
#define SL_SVC_F_DSR		(1 << 6)	/* remote backends answer the client directly */

struct sl_svc_key {
	union sl_addr addr;	/* network order; zero for SL_SCOPE_NODEPORT */
	__be16 dport;		/* network order */
	__u8  proto;		/* IPPROTO_TCP or IPPROTO_UDP */
	__u8  scope;		/* SL_SCOPE_* */
	__u16 slot;		/* host order; 0 = master entry */
	__u16 pad;
};

struct sl_svc_val {
	__u32 backend_id;	/* host order; slot > 0 only */
	__u32 count;		/* host order; slot 0: active backend slots */
	__u32 rev_nat_id;	/* host order; the frontend's id */
	__u32 affinity_timeout;	/* seconds, host order; slot 0 only */
	__u16 flags;		/* SL_SVC_F_*, host order; slot 0 only */
	__u16 pad;
	__u32 pad2;
};

struct sl_backend {
	union sl_addr addr;	/* network order */
	__be16 port;		/* network order */
	__u8  proto;
	__u8  flags;		/* reserved, zero */
	__u32 pad;
};

/* The frontend a rev_nat_id stands for: what replies are translated back to. */
struct sl_revnat {
	union sl_addr addr;	/* network order */
	__be16 port;		/* network order */
	__u8  proto;
	__u8  scope;		/* SL_SCOPE_* */
	__u32 pad;
};

/*
 * Per-socket reverse translation: which VIP a socket meant when it talked to
 * a backend. Written at connect and sendmsg, read at recvmsg and getpeername.
 */
struct sl_sock_revnat_key {
	__u64 cookie;		/* socket cookie */
	union sl_addr addr;	/* backend address, network order */
	__be16 port;		/* backend port, network order */
	__u16 pad;
	__u32 pad2;
};

struct sl_sock_revnat_val {
	union sl_addr addr;	/* VIP, network order */
	__be16 port;		/* VIP port, network order */
	__u16 pad;
	__u32 rev_nat_id;	/* host order */
};

/*
 * Session affinity. The socket layer has no client address yet at connect,
 * so the client is identified by its network namespace cookie: one pod, one
 * namespace, one address.
 */
struct sl_affinity_key {
	__u64 client;		/* netns cookie */
	__u32 rev_nat_id;	/* host order */
	__u32 pad;
};

struct sl_affinity_val {
	__u64 last_used_ns;	/* bpf_ktime_get_ns() at last use */
	__u32 backend_id;	/* host order */
	__u32 pad;
};

/* (backend, frontend) pairs that are currently active: affinity may reuse. */
struct sl_affinity_match_key {
	__u32 backend_id;
	__u32 rev_nat_id;
};

struct sl_node_addr_val {
	__u32 flags;		/* reserved, zero */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct sl_svc_key);
	__type(value, struct sl_svc_val);
	__uint(max_entries, SL_LB_SERVICES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} sl_lb_svc_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct sl_backend);
	__uint(max_entries, SL_LB_BACKENDS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} sl_lb_be_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct sl_revnat);
	__uint(max_entries, SL_LB_REVNAT_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} sl_lb_rnat_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct sl_sock_revnat_key);
	__type(value, struct sl_sock_revnat_val);
	__uint(max_entries, SL_LB_SOCK_REVNAT_MAX);
} sl_lb_skrn_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct sl_affinity_key);
	__type(value, struct sl_affinity_val);
	__uint(max_entries, SL_LB_AFFINITY_MAX);
} sl_lb_aff_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct sl_affinity_match_key);
	__type(value, __u32);
	__uint(max_entries, SL_LB_BACKENDS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} sl_lb_affm_v1 SEC(".maps");

#include "socklb.h"

/* Addresses of this node: a NodePort is reachable at each of them. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, union sl_addr);
	__type(value, struct sl_node_addr_val);
	__uint(max_entries, SL_NODE_ADDRS_MAX);
} sl_node_addr_v1 SEC(".maps");

#endif /* SLUICE_LB_H */
