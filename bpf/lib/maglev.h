/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Maglev backend selection for the per-packet paths: hash the flow's
 * 5-tuple and read the frontend's table (include/maglev.h).
 *
 * The hash is part of the contract between nodes: every node must map a
 * flow to the same slot. It is defined on the 5-tuple's bytes in network
 * order, read as big-endian 32-bit words (so the host's byte order does not
 * matter), and mirrored in Rust (crates/sluice-lb/src/maglev.rs,
 * flow_hash); the packet tests check that both agree.
 */
#ifndef SLUICE_LIB_MAGLEV_H
#define SLUICE_LIB_MAGLEV_H

#include "../include/common.h"
#include "../include/maglev.h"

/* Set by the loader from --maglev-table-size (a prime). */
const volatile __u32 sl_maglev_m = SL_MAGLEV_DEFAULT_SIZE;

#define SL_MAGLEV_FLOW_SEED	0x5c1ce5edU

static __always_inline __u32 sl_rotl32(__u32 x, int r)
{
	return (x << r) | (x >> (32 - r));
}

/* One 32-bit word into the state: multiply, rotate, multiply, fold in. */
static __always_inline __u32 sl_hash_mix(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51U;
	k = sl_rotl32(k, 15);
	k *= 0x1b873593U;
	h ^= k;
	h = sl_rotl32(h, 13);
	return h * 5 + 0xe6546b64U;
}

/* Avalanche: every input bit affects every output bit. */
static __always_inline __u32 sl_hash_finish(__u32 h, __u32 len)
{
	h ^= len;
	h ^= h >> 16;
	h *= 0x85ebca6bU;
	h ^= h >> 13;
	h *= 0xc2b2ae35U;
	h ^= h >> 16;
	return h;
}

/*
 * The flow hash: saddr (4 words), daddr (4 words), sport << 16 | dport,
 * proto; 40 bytes. Addresses in the 16-byte form (IPv4 as ::ffff:a.b.c.d),
 * addresses and ports in network order as they are on the wire.
 *
 * A BPF subprogram, not inlined: computed inline where the pod path picks
 * a backend, its temporaries spill 72 bytes onto a stack that has no room
 * left; as a call it costs no stack at all.
 */
static __noinline __attribute__((unused)) __u32
sl_maglev_flow_hash(const union sl_addr *saddr, const union sl_addr *daddr,
		    __be16 sport, __be16 dport, __u8 proto)
{
	__u32 h = SL_MAGLEV_FLOW_SEED;

	h = sl_hash_mix(h, bpf_ntohl(saddr->w[0]));
	h = sl_hash_mix(h, bpf_ntohl(saddr->w[1]));
	h = sl_hash_mix(h, bpf_ntohl(saddr->w[2]));
	h = sl_hash_mix(h, bpf_ntohl(saddr->w[3]));
	h = sl_hash_mix(h, bpf_ntohl(daddr->w[0]));
	h = sl_hash_mix(h, bpf_ntohl(daddr->w[1]));
	h = sl_hash_mix(h, bpf_ntohl(daddr->w[2]));
	h = sl_hash_mix(h, bpf_ntohl(daddr->w[3]));
	h = sl_hash_mix(h, ((__u32)bpf_ntohs(sport) << 16) | bpf_ntohs(dport));
	h = sl_hash_mix(h, proto);
	return sl_hash_finish(h, 40);
}

/*
 * The slot of the table of frontend @rev_nat_id (a pointer into a map
 * value, so that no stack is needed for the key) that the flow whose hash
 * is @hash lands on: a pointer to its backend id, or NULL when the frontend
 * has no table or the slot is past its end (a table of another size,
 * between an agent restart with a new M and its rewrite). The result can
 * be used as the key of a backend lookup directly: the pod path's stack is
 * nearly full.
 */
static __always_inline __u32 *sl_maglev_slot(const __u32 *rev_nat_id, __u32 hash)
{
	__u32 m = sl_maglev_m;
	__u32 slot;
	void *table;

	if (m == 0)
		return NULL;
	table = bpf_map_lookup_elem(&sl_lb_maglev_v1, rev_nat_id);
	if (!table)
		return NULL;
	slot = hash % m;
	return bpf_map_lookup_elem(table, &slot);
}

#endif /* SLUICE_LIB_MAGLEV_H */
