/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * net.bpf.c: outbound connections. The cgroup socket hooks see every connect(2) on TCP and
 * UDP sockets of every cgroup (attached at the cgroup2 root) with the address the kernel will
 * use; the socket cookie then ties the attempt to its outcome:
 *   - connect(2)'s return value (syscalls/sys_exit_connect);
 *   - for TCP, the end of the handshake (tp_btf/inet_sock_set_state leaving SYN_SENT), which
 *     is the only outcome a non-blocking connect has, and carries the final destination
 *     (after any other program rewrote it);
 *   - for UDP, the first datagram the socket sends (cgroup_skb/egress): a UDP connect that
 *     never sends is a resolver sorting addresses, not traffic.
 * Included by podtrail.bpf.c.
 */
#include "common.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_CLOSE 7

/* thread -> cookie of the socket its connect(2) is working on */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} connect_inflight SEC(".maps");

/* cookies of connects whose outcome (TCP) or first datagram (UDP) is still awaited */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u8);
} tcp_pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u8);
} udp_pending SEC(".maps");

static __always_inline int on_connect(struct bpf_sock_addr *ctx, __u8 family)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	if (tgid == self_tgid)
		return 1;
	__u8 proto = ctx->protocol;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;

	struct pt_connect c = {};
	c.h.kind = PT_KIND_CONNECT;
	c.h.len = sizeof(c);
	c.h.ts_ns = bpf_ktime_get_boot_ns();
	c.h.pid = tgid;
	c.h.tid = (__u32)id;
	c.h.start_ns = 0; /* no task access here: user space resolves the live process */
	c.h.cgroup_id = bpf_get_current_cgroup_id();
	c.cookie = bpf_get_socket_cookie(ctx);
	c.family = family;
	c.protocol = proto;
	c.sock_type = ctx->type;
	c.dport = bpf_ntohs(ctx->user_port);
	if (family == AF_INET) {
		__u32 a = ctx->user_ip4;
		__builtin_memcpy(c.daddr, &a, 4);
	} else {
		__u32 a[4];
		a[0] = ctx->user_ip6[0];
		a[1] = ctx->user_ip6[1];
		a[2] = ctx->user_ip6[2];
		a[3] = ctx->user_ip6[3];
		__builtin_memcpy(c.daddr, a, 16);
	}
	if (emit(&c, sizeof(c)) != 0)
		return 1;

	__u32 tid = (__u32)id;
	__u8 one = 1;
	if (bpf_map_update_elem(&connect_inflight, &tid, &c.cookie, BPF_ANY) == 0)
		inflight_count(PT_INFLIGHT_CONNECT_STARTED);
	if (proto == IPPROTO_TCP)
		bpf_map_update_elem(&tcp_pending, &c.cookie, &one, BPF_ANY);
	else
		bpf_map_update_elem(&udp_pending, &c.cookie, &one, BPF_ANY);
	return 1;
}

SEC("cgroup/connect4")
int pt_connect4(struct bpf_sock_addr *ctx)
{
	return on_connect(ctx, AF_INET);
}

SEC("cgroup/connect6")
int pt_connect6(struct bpf_sock_addr *ctx)
{
	return on_connect(ctx, AF_INET6);
}

SEC("tracepoint/syscalls/sys_exit_connect")
int pt_sys_exit_connect(struct trace_event_raw_sys_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	__u64 *cookie = bpf_map_lookup_elem(&connect_inflight, &tid);
	if (!cookie)
		return 0;
	struct pt_connect_result r = {};
	r.cookie = *cookie;
	bpf_map_delete_elem(&connect_inflight, &tid);
	inflight_count(PT_INFLIGHT_CONNECT_FINISHED);

	struct task_struct *t = (struct task_struct *)bpf_get_current_task_btf();
	fill_header(&r.h, PT_KIND_CONNECT_RESULT, sizeof(r), t, bpf_get_current_cgroup_id());
	r.error = (__s32)ctx->ret;
	r.phase = PT_RESULT_SYSCALL;
	emit(&r, sizeof(r));
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(pt_inet_sock_set_state, const struct sock *sk, const int oldstate, const int newstate)
{
	if (oldstate != TCP_SYN_SENT || (newstate != TCP_ESTABLISHED && newstate != TCP_CLOSE))
		return 0;
	__u64 cookie = bpf_get_socket_cookie((void *)sk);
	if (!bpf_map_lookup_elem(&tcp_pending, &cookie))
		return 0;
	bpf_map_delete_elem(&tcp_pending, &cookie);

	struct pt_connect_result r = {};
	r.h.kind = PT_KIND_CONNECT_RESULT;
	r.h.len = sizeof(r);
	r.h.ts_ns = bpf_ktime_get_boot_ns();
	r.cookie = cookie;
	r.phase = PT_RESULT_TCP_STATE;
	r.error = newstate == TCP_ESTABLISHED ? 0 : -BPF_CORE_READ(sk, sk_err);
	r.family = BPF_CORE_READ(sk, __sk_common.skc_family);
	r.dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (r.family == AF_INET) {
		__u32 a = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__builtin_memcpy(r.daddr, &a, 4);
	} else {
		BPF_CORE_READ_INTO(&r.daddr, sk, __sk_common.skc_v6_daddr);
	}
	emit(&r, sizeof(r));
	return 0;
}

/* The datagram's real destination, from its IP and UDP headers (the skb starts at the
 * network header here). IPv6 extension headers are not walked: family stays 0. */
static __always_inline void egress_destination(struct pt_udp_send *u, struct __sk_buff *skb)
{
	__u8 vihl = 0;
	if (bpf_skb_load_bytes(skb, 0, &vihl, 1) != 0)
		return;
	if ((vihl >> 4) == 4) {
		__u8 proto = 0;
		__u16 port = 0;
		__u32 ihl = (vihl & 0xf) * 4;
		if (bpf_skb_load_bytes(skb, 9, &proto, 1) != 0 || proto != IPPROTO_UDP)
			return;
		if (bpf_skb_load_bytes(skb, 16, u->daddr, 4) != 0 || bpf_skb_load_bytes(skb, ihl + 2, &port, 2) != 0)
			return;
		u->dport = bpf_ntohs(port);
		u->family = AF_INET;
	} else if ((vihl >> 4) == 6) {
		__u8 next = 0;
		__u16 port = 0;
		if (bpf_skb_load_bytes(skb, 6, &next, 1) != 0 || next != IPPROTO_UDP)
			return;
		if (bpf_skb_load_bytes(skb, 24, u->daddr, 16) != 0 || bpf_skb_load_bytes(skb, 42, &port, 2) != 0)
			return;
		u->dport = bpf_ntohs(port);
		u->family = AF_INET6;
	}
}

SEC("cgroup_skb/egress")
int pt_egress(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	if (!bpf_map_lookup_elem(&udp_pending, &cookie))
		return 1;
	bpf_map_delete_elem(&udp_pending, &cookie);

	struct pt_udp_send u = {};
	u.h.kind = PT_KIND_UDP_SEND;
	u.h.len = sizeof(u);
	u.h.ts_ns = bpf_ktime_get_boot_ns();
	u.h.cgroup_id = bpf_skb_cgroup_id(skb);
	u.cookie = cookie;
	u.bytes = skb->len;
	egress_destination(&u, skb);
	emit(&u, sizeof(u));
	return 1;
}
