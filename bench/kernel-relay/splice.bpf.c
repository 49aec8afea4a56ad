// SPDX-License-Identifier: GPL-2.0
// Stream verdict for a TCP proxy: bytes that arrive on one socket of a
// proxied pair are sent out of the other socket by the kernel, without a
// wake-up of the proxy. The map's key is the 4-tuple of the socket the bytes
// arrived on; its value is that socket's peer.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct pair_key {
    __u32 remote_ip4;   // network byte order, as the socket holds it
    __u32 local_ip4;    // network byte order
    __u32 remote_port;  // host byte order
    __u32 local_port;   // host byte order
};

struct {
    __uint(type, BPF_MAP_TYPE_SOCKHASH);
    __uint(max_entries, 65536);
    __type(key, struct pair_key);
    __type(value, __u32);
} PEERS SEC(".maps");

SEC("sk_skb/stream_verdict")
int splice_verdict(struct __sk_buff *skb)
{
    struct pair_key key = {
        .remote_ip4 = skb->remote_ip4,
        .local_ip4 = skb->local_ip4,
        // __sk_buff keeps the remote port in network order in the upper half.
        .remote_port = bpf_ntohl(skb->remote_port),
        .local_port = skb->local_port,
    };
    // On a miss (the pair is not in the map yet) the bytes stay on this
    // socket, where the proxy reads and forwards them itself.
    bpf_sk_redirect_hash(skb, &PEERS, &key, 0);
    return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
