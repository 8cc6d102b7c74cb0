/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * sock.bpf.c: the ways out of a container that are not a connect(2) (issue 18):
 *   - datagrams that name their destination: sendto/sendmsg on a UDP socket, connected or
 *     not (cgroup/sendmsg4|6 fire for every such call, before routing; send() on a connected
 *     socket names none and is the connect's, seen by net.bpf.c);
 *   - a socket that starts listening (tp_btf/inet_sock_set_state entering TCP_LISTEN runs in
 *     the listen(2) caller's context) and each connection it accepts, with its peer
 *     (sys_exit_accept|accept4: the new descriptor's socket): a bind shell;
 *   - the creation of a raw or ICMP socket (cgroup/sock_create: inet sockets only; packet
 *     sockets are not inet and do not pass here).
 * One record kind (pt_sock) for all four. Kept apart from net.bpf.c so the connect path is
 * unchanged. Included by podtrail.bpf.c.
 */
#include "common.h"

#ifndef AF_INET
#define AF_INET 2
#define AF_INET6 10
#endif
#define PT_SOCK_RAW 3
#define PT_IPPROTO_ICMP 1
#define PT_IPPROTO_ICMPV6 58
#define PT_TCP_LISTEN 10

static __always_inline void sock_addr_record(struct pt_sock *s, struct bpf_sock_addr *ctx, __u8 family)
{
	__u64 id = bpf_get_current_pid_tgid();
	s->h.kind = PT_KIND_SOCK;
	s->h.len = sizeof(*s);
	s->h.ts_ns = bpf_ktime_get_boot_ns();
	s->h.pid = id >> 32;
	s->h.tid = (__u32)id;
	s->h.start_ns = 0; /* no task access here: user space resolves the live process */
	s->h.cgroup_id = bpf_get_current_cgroup_id();
	s->cookie = bpf_get_socket_cookie(ctx);
	s->family = family;
	s->protocol = ctx->protocol;
	s->sock_type = ctx->type;
	s->peer_port = bpf_ntohs(ctx->user_port);
	if (family == AF_INET) {
		__u32 a = ctx->user_ip4;
		__builtin_memcpy(s->peer_addr, &a, 4);
	} else {
		__u32 a[4];
		a[0] = ctx->user_ip6[0];
		a[1] = ctx->user_ip6[1];
		a[2] = ctx->user_ip6[2];
		a[3] = ctx->user_ip6[3];
		__builtin_memcpy(s->peer_addr, a, 16);
	}
}

static __always_inline int on_sendmsg(struct bpf_sock_addr *ctx, __u8 family)
{
	if ((bpf_get_current_pid_tgid() >> 32) == self_tgid)
		return 1;
	struct pt_sock s = {};
	s.op = PT_SOCK_SENDTO;
	sock_addr_record(&s, ctx, family);
	emit(&s, sizeof(s));
	return 1;
}

SEC("cgroup/sendmsg4")
int pt_sendmsg4(struct bpf_sock_addr *ctx)
{
	return on_sendmsg(ctx, AF_INET);
}

SEC("cgroup/sendmsg6")
int pt_sendmsg6(struct bpf_sock_addr *ctx)
{
	return on_sendmsg(ctx, AF_INET6);
}

/* Local and remote address of a socket, from its sock_common. */
static __always_inline void sock_ends(struct pt_sock *s, struct sock *sk)
{
	s->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	s->protocol = BPF_CORE_READ(sk, sk_protocol);
	s->sock_type = BPF_CORE_READ(sk, sk_type);
	s->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	s->peer_port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (s->family == AF_INET) {
		__u32 a = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__builtin_memcpy(s->local_addr, &a, 4);
		a = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__builtin_memcpy(s->peer_addr, &a, 4);
	} else {
		BPF_CORE_READ_INTO(&s->local_addr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&s->peer_addr, sk, __sk_common.skc_v6_daddr);
	}
}

static __always_inline bool sock_traced(struct task_struct *t, __u64 cgid)
{
	return traced(t, BPF_CORE_READ(t, tgid), task_pidns_ino(t), cgid);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(pt_sock_listen, const struct sock *sk, const int oldstate, const int newstate)
{
	if (newstate != PT_TCP_LISTEN)
		return 0;
	/* inet_csk_listen_start runs in listen(2): the current task is the listener */
	struct task_struct *t = (struct task_struct *)bpf_get_current_task_btf();
	__u64 cgid = bpf_get_current_cgroup_id();
	if (!sock_traced(t, cgid))
		return 0;
	struct pt_sock s = {};
	fill_header(&s.h, PT_KIND_SOCK, sizeof(s), t, cgid);
	s.op = PT_SOCK_LISTEN;
	sock_ends(&s, (struct sock *)sk);
	emit(&s, sizeof(s));
	return 0;
}

/* accept(2)/accept4(2) returned a descriptor: its socket's peer is who connected. */
static __always_inline int on_accept_exit(long ret)
{
	if (ret < 0)
		return 0;
	struct task_struct *t = (struct task_struct *)bpf_get_current_task_btf();
	__u64 cgid = bpf_get_current_cgroup_id();
	if (!sock_traced(t, cgid))
		return 0;
	struct file **fds = BPF_CORE_READ(t, files, fdt, fd);
	unsigned int max = BPF_CORE_READ(t, files, fdt, max_fds);
	if ((unsigned long)ret >= max)
		return 0;
	struct file *f = NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[ret]);
	if (!f)
		return 0;
	struct socket *so = BPF_CORE_READ(f, private_data);
	struct sock *sk = BPF_CORE_READ(so, sk);
	if (!sk)
		return 0;
	struct pt_sock s = {};
	fill_header(&s.h, PT_KIND_SOCK, sizeof(s), t, cgid);
	s.op = PT_SOCK_ACCEPT;
	s.result = ret;
	sock_ends(&s, sk);
	if (s.family != AF_INET && s.family != AF_INET6)
		return 0; /* a unix socket's accept: not a way out */
	s.cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	emit(&s, sizeof(s));
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept")
int pt_sys_exit_accept(struct trace_event_raw_sys_exit *ctx)
{
	return on_accept_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int pt_sys_exit_accept4(struct trace_event_raw_sys_exit *ctx)
{
	return on_accept_exit(ctx->ret);
}

SEC("cgroup/sock_create")
int pt_sock_create(struct bpf_sock *sk)
{
	if (sk->type != PT_SOCK_RAW && sk->protocol != PT_IPPROTO_ICMP && sk->protocol != PT_IPPROTO_ICMPV6)
		return 1;
	__u64 id = bpf_get_current_pid_tgid();
	if ((id >> 32) == self_tgid)
		return 1;
	/* no task access in cgroup socket programs: user space resolves the live process */
	struct pt_sock s = {};
	s.h.kind = PT_KIND_SOCK;
	s.h.len = sizeof(s);
	s.h.ts_ns = bpf_ktime_get_boot_ns();
	s.h.pid = id >> 32;
	s.h.tid = (__u32)id;
	s.h.cgroup_id = bpf_get_current_cgroup_id();
	s.op = PT_SOCK_CREATE;
	s.family = sk->family;
	s.protocol = sk->protocol;
	s.sock_type = sk->type;
	s.cookie = bpf_get_socket_cookie(sk);
	emit(&s, sizeof(s));
	return 1;
}
