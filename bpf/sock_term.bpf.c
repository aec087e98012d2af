// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Socket termination: TCP and UDP socket iterators that destroy the
 * sockets connected to a destination, with bpf_sock_destroy() (Linux 6.5+).
 * A TCP peer sees ECONNABORTED; a connected UDP socket is disconnected and
 * its next operation fails. An iterator walks the network namespace of the
 * process that reads it: userspace reads it once per namespace.
 *
 * Listening sockets, unconnected UDP sockets, and TCP sockets that are not
 * full sockets (TIME_WAIT, SYN_RECV mini-sockets) are never touched.
 */
#include "include/common.h"
#include "include/sockterm.h"
#include "include/socklb.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

#define TCP_ESTABLISHED_	1
#define TCP_TIME_WAIT_		6
#define TCP_LISTEN_		10
#define TCP_NEW_SYN_RECV_	12

const volatile struct sl_term_filter sl_term_filter = {};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct sl_term_doomed_key);
	__type(value, __u32);
	__uint(max_entries, 65536);
} sl_term_doomed SEC(".maps");

/* Nothing reads this in the kernel: it puts the record layout into the
 * object's BTF, from which the Rust type is generated. */
struct sl_term_record sl_term_layout = {};

static __always_inline void sl_term_read(struct sock_common *skc, union sl_addr *src,
					 union sl_addr *dst)
{
	if (skc->skc_family == AF_INET) {
		src->w[0] = 0;
		src->w[1] = 0;
		src->w[2] = bpf_htonl(0x0000ffff);
		src->w[3] = skc->skc_rcv_saddr;
		dst->w[0] = 0;
		dst->w[1] = 0;
		dst->w[2] = bpf_htonl(0x0000ffff);
		dst->w[3] = skc->skc_daddr;
	} else {
		__builtin_memcpy(src->b, skc->skc_v6_rcv_saddr.in6_u.u6_addr8, 16);
		__builtin_memcpy(dst->b, skc->skc_v6_daddr.in6_u.u6_addr8, 16);
	}
}

static __always_inline bool sl_term_match_dst(const union sl_addr *dst, __be16 dport)
{
	const volatile struct sl_term_filter *f = &sl_term_filter;

	if (f->dport && f->dport != dport)
		return false;
	return dst->w[0] == f->dst.w[0] && dst->w[1] == f->dst.w[1] &&
	       dst->w[2] == f->dst.w[2] && dst->w[3] == f->dst.w[3];
}

static __always_inline int sl_term_one(struct seq_file *seq, struct sock_common *skc,
				       struct sock *sk, __u8 proto)
{
	struct sl_term_record r = {};
	struct sl_sock_lb *st;

	if (skc->skc_family != AF_INET && skc->skc_family != AF_INET6)
		return 0;
	sl_term_read(skc, &r.src, &r.dst);
	r.dport = skc->skc_dport;
	st = bpf_sk_storage_get(&sl_sock_lb_v1, sk, 0, 0);
	if (st)
		r.rev_nat_id = st->rev_nat_id;
	if (sl_term_filter.mode == SL_TERM_BY_SERVICE) {
		struct sl_term_doomed_key k = {
			.rev_nat_id = r.rev_nat_id,
			.port = r.dport,
			.addr = r.dst,
		};

		if (!st || !bpf_map_lookup_elem(&sl_term_doomed, &k))
			return 0;
	} else if (!sl_term_match_dst(&r.dst, r.dport)) {
		return 0;
	}
	r.sport = skc->skc_num;
	r.proto = proto;
	r.state = skc->skc_state;
	if (!sl_term_filter.dry_run) {
		r.err = bpf_sock_destroy(skc);
		r.destroyed = r.err == 0;
	}
	bpf_seq_write(seq, &r, sizeof(r));
	return 0;
}

SEC("iter/tcp")
int sl_term_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct tcp_sock *tp;

	if (!skc)
		return 0;
	if (skc->skc_state == TCP_LISTEN_ || skc->skc_state == TCP_TIME_WAIT_ ||
	    skc->skc_state == TCP_NEW_SYN_RECV_)
		return 0;
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	return sl_term_one(ctx->meta->seq, skc, (struct sock *)tp, IPPROTO_TCP_);
}

SEC("iter/udp")
int sl_term_udp(struct bpf_iter__udp *ctx)
{
	struct udp_sock *udp = ctx->udp_sk;
	struct sock_common *skc;

	if (!udp)
		return 0;
	skc = &udp->inet.sk.__sk_common;
	/* Only connected sockets have a destination to match. */
	if (skc->skc_state != TCP_ESTABLISHED_)
		return 0;
	return sl_term_one(ctx->meta->seq, skc, &udp->inet.sk, IPPROTO_UDP_);
}
