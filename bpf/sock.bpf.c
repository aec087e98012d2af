// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Socket-level service translation: cgroup sock_addr hooks.
 *
 * TCP and connected UDP are translated once, at connect(); unconnected UDP
 * at each sendmsg(), with the VIP restored as the source at recvmsg();
 * getpeername() reports the VIP. Entry points are thin: the work is in
 * sl_sock_xlate() and sl_sock_revnat(), shared by both families.
 */
#include "include/common.h"
#include "include/lb.h"
#include "include/metrics.h"
#include "lib/lb.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

static __always_inline bool sl_sock_proto_ok(struct bpf_sock_addr *ctx, __u8 *proto)
{
	if (ctx->protocol == IPPROTO_TCP_ || ctx->protocol == IPPROTO_UDP_) {
		*proto = ctx->protocol;
		return true;
	}
	return false;
}

static __always_inline void sl_sock_read_dst(struct bpf_sock_addr *ctx, bool v6,
					     union sl_addr *a)
{
	if (v6) {
		a->w[0] = ctx->user_ip6[0];
		a->w[1] = ctx->user_ip6[1];
		a->w[2] = ctx->user_ip6[2];
		a->w[3] = ctx->user_ip6[3];
	} else {
		sl_addr_from_v4(a, ctx->user_ip4);
	}
}

static __always_inline void sl_sock_write_dst(struct bpf_sock_addr *ctx, bool v6,
					      const union sl_addr *a, __be16 port)
{
	if (v6) {
		ctx->user_ip6[0] = a->w[0];
		ctx->user_ip6[1] = a->w[1];
		ctx->user_ip6[2] = a->w[2];
		ctx->user_ip6[3] = a->w[3];
	} else {
		ctx->user_ip4 = a->w[3];
	}
	ctx->user_port = (__u32)port;
}

/*
 * Translate the destination of connect() or sendmsg() if it names a service.
 * Returns SYS_PROCEED, or SYS_REJECT with the errno set for the caller.
 */
/*
 * At connect: remember which frontend the socket went through, or forget
 * an earlier one when a UDP socket is connected elsewhere.
 */
static __always_inline void sl_sock_remember(struct bpf_sock_addr *ctx, __u32 rev_nat_id,
					     __u32 backend_id)
{
	struct sl_sock_lb *st;
	struct bpf_sock *sk = ctx->sk;

	if (!sk)
		return;
	if (!rev_nat_id) {
		bpf_sk_storage_delete(&sl_sock_lb_v1, sk);
		return;
	}
	st = bpf_sk_storage_get(&sl_sock_lb_v1, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		sl_count(SL_M_SOCK_STORAGE_FULL);
		return;
	}
	st->rev_nat_id = rev_nat_id;
	st->backend_id = backend_id;
}

static __always_inline int sl_sock_xlate(struct bpf_sock_addr *ctx, bool v6,
					 enum sl_metric done)
{
	struct sl_svc_key key = {};
	struct sl_svc_val *master;
	struct sl_backend be;
	union sl_addr vip;
	__be16 vport;
	__u32 be_id = 0;
	__u64 netns;
	int err;

	if (!sl_sock_proto_ok(ctx, &key.proto))
		return SYS_PROCEED;
	sl_sock_read_dst(ctx, v6, &key.addr);
	vip = key.addr;
	vport = (__be16)ctx->user_port;
	key.dport = vport;

	netns = bpf_get_netns_cookie(ctx);
	master = sl_lb_lookup_frontend(&key, netns);
	if (!master) {
		/* A UDP socket may be re-connected away from a service. */
		if (done == SL_M_TRANSLATED_CONNECT && key.proto == IPPROTO_UDP_)
			sl_sock_remember(ctx, 0, 0);
		return SYS_PROCEED;
	}

	err = sl_lb_select_backend(&key, master, netns, &be, &be_id);
	if (err) {
		bpf_set_retval(err);
		return SYS_REJECT;
	}
	/* An IPv4 socket cannot reach an IPv6 backend. IPv4 backends are
	 * written as IPv4-mapped addresses, which a dual-stack IPv6 socket
	 * accepts. */
	if (!v6 && !sl_addr_is_v4(&be.addr)) {
		sl_count(SL_M_FAMILY_MISMATCH);
		bpf_set_retval(-ECONNREFUSED_);
		return SYS_REJECT;
	}

	sl_lb_record_sock_revnat(bpf_get_socket_cookie(ctx), &be, &vip, vport,
				 master->rev_nat_id);
	if (done == SL_M_TRANSLATED_CONNECT)
		sl_sock_remember(ctx, master->rev_nat_id, be_id);
	sl_sock_write_dst(ctx, v6, &be.addr, be.port);
	sl_count(done);
	return SYS_PROCEED;
}

/* Report the VIP instead of the backend, for recvmsg() and getpeername(). */
static __always_inline int sl_sock_revnat(struct bpf_sock_addr *ctx, bool v6,
					  enum sl_metric done)
{
	struct sl_sock_revnat_val *rv;
	union sl_addr addr;

	sl_sock_read_dst(ctx, v6, &addr);
	rv = sl_lb_lookup_sock_revnat(bpf_get_socket_cookie(ctx), &addr,
				      (__be16)ctx->user_port);
	if (!rv)
		return SYS_PROCEED;
	sl_sock_write_dst(ctx, v6, &rv->addr, rv->port);
	sl_count(done);
	return SYS_PROCEED;
}

SEC("cgroup/connect4")
int sl_connect4(struct bpf_sock_addr *ctx)
{
	return sl_sock_xlate(ctx, false, SL_M_TRANSLATED_CONNECT);
}

SEC("cgroup/connect6")
int sl_connect6(struct bpf_sock_addr *ctx)
{
	return sl_sock_xlate(ctx, true, SL_M_TRANSLATED_CONNECT);
}

SEC("cgroup/sendmsg4")
int sl_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sl_sock_xlate(ctx, false, SL_M_TRANSLATED_SENDMSG);
}

SEC("cgroup/sendmsg6")
int sl_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sl_sock_xlate(ctx, true, SL_M_TRANSLATED_SENDMSG);
}

SEC("cgroup/recvmsg4")
int sl_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sl_sock_revnat(ctx, false, SL_M_REVNAT_RECVMSG);
}

SEC("cgroup/recvmsg6")
int sl_recvmsg6(struct bpf_sock_addr *ctx)
{
	return sl_sock_revnat(ctx, true, SL_M_REVNAT_RECVMSG);
}

SEC("cgroup/getpeername4")
int sl_getpeername4(struct bpf_sock_addr *ctx)
{
	return sl_sock_revnat(ctx, false, SL_M_REVNAT_GETPEERNAME);
}

SEC("cgroup/getpeername6")
int sl_getpeername6(struct bpf_sock_addr *ctx)
{
	return sl_sock_revnat(ctx, true, SL_M_REVNAT_GETPEERNAME);
}
