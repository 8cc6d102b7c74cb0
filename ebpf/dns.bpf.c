/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * dns.bpf.c: DNS answers as they reach a socket, so a connect can carry the name its process
 * looked up (the "unknown IP" an analyst cannot read becomes `api.stripe.com`).
 *
 * One cgroup_skb/ingress program on the cgroup2 root sees every packet delivered to a socket
 * of any cgroup, already past the IP layer: the skb starts at the network header. It must be
 * cheap for everything that is not a DNS answer (one bounded header read, a few compares) and
 * it never drops anything: it returns 1 (allow) on every path. A UDP datagram from port 53
 * has its first PT_DNS_PAYLOAD_MAX bytes copied into a pt_dns record with the receiving
 * socket's cgroup; user space parses it (never here: a parser in BPF would be a verifier
 * fight and a bug surface in the kernel). DNS over TCP, DoT and DoH are not seen.
 * Included by podtrail.bpf.c after net.bpf.c, whose protocol constants it uses.
 */
#include "common.h"

/* Built here: the record (64 + 512 bytes) does not fit the BPF stack. Its own map, not the
 * exec scratch: this runs in softirq context and may interrupt a program using that one.
 * Twice the payload's room: the length is masked with 2 * PT_DNS_PAYLOAD_MAX - 1 where it is
 * used, which the verifier can bound whatever register the compiler keeps it in. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u8[sizeof(struct pt_dns) + 2 * PT_DNS_PAYLOAD_MAX]);
} dns_scratch SEC(".maps");

SEC("cgroup_skb/ingress")
int pt_dns_ingress(struct __sk_buff *skb)
{
	/* the IP header (and for IPv4 as much of it as a UDP port check needs) in one read */
	__u8 ip[40];
	__u32 l4;
	__u8 family;
	if (bpf_skb_load_bytes(skb, 0, ip, 20) != 0)
		return 1;
	if ((ip[0] >> 4) == 4) {
		if (ip[9] != IPPROTO_UDP)
			return 1;
		/* a fragment's later pieces have no UDP header */
		if (((ip[6] & 0x1f) | ip[7]) != 0)
			return 1;
		l4 = (ip[0] & 0xf) * 4;
		family = AF_INET;
	} else if ((ip[0] >> 4) == 6) {
		/* extension headers are not walked: a DNS answer does not carry them */
		if (ip[6] != IPPROTO_UDP)
			return 1;
		if (bpf_skb_load_bytes(skb, 20, ip + 20, 20) != 0)
			return 1;
		l4 = 40;
		family = AF_INET6;
	} else {
		return 1;
	}
	__u16 udp[4];
	if (bpf_skb_load_bytes(skb, l4, udp, 8) != 0 || udp[0] != bpf_htons(53))
		return 1;

	__u32 zero = 0;
	struct pt_dns *r = bpf_map_lookup_elem(&dns_scratch, &zero);
	if (!r)
		return 1;
	__u32 off = l4 + 8;
	__u32 msg = bpf_ntohs(udp[2]);
	msg = msg > 8 ? msg - 8 : 0;
	/* the datagram as delivered may be shorter than its header says (a lie): trust the skb */
	if (skb->len < off)
		return 1;
	if (msg > skb->len - off)
		msg = skb->len - off;
	__u32 n = msg;
	r->flags = 0;
	if (n > PT_DNS_PAYLOAD_MAX) {
		n = PT_DNS_PAYLOAD_MAX;
		r->flags = PT_DNS_F_TRUNCATED;
	}
	/* no change (n <= 512), but bounds the verifier sees: the barrier stops the compiler
	 * from dropping a mask and a check it can prove useless */
	barrier_var(n);
	n &= 2 * PT_DNS_PAYLOAD_MAX - 1;
	/* a DNS header is 12 bytes: anything shorter is not an answer (still allowed through) */
	if (n < 12)
		return 1;
	if (bpf_skb_load_bytes(skb, off, (__u8 *)r + sizeof(struct pt_dns), n) != 0)
		return 1;
	r->h.kind = PT_KIND_DNS;
	r->h.len = sizeof(struct pt_dns) + n;
	r->h.ts_ns = bpf_ktime_get_boot_ns();
	r->h.pid = 0;
	r->h.tid = 0;
	r->h.start_ns = 0;
	r->h.cgroup_id = bpf_skb_cgroup_id(skb);
	r->payload_len = n;
	r->msg_len = msg;
	r->family = family;
	r->sport = 53;
	__builtin_memset(r->saddr, 0, sizeof(r->saddr));
	if (family == AF_INET)
		__builtin_memcpy(r->saddr, ip + 12, 4);
	else
		__builtin_memcpy(r->saddr, ip + 8, 16);
	barrier_var(n);
	emit(r, sizeof(struct pt_dns) + (n & (2 * PT_DNS_PAYLOAD_MAX - 1)));
	return 1;
}
