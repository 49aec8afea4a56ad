//! VRRP adverts as a raw IPv4 socket delivers them (IP header included)
//! and as an IPv6 socket does (message only, addresses from ancillary
//! data): decoding any bytes returns a value or an error, never panics.
//! The input is also wrapped in a valid IPv4 header with its VRRP checksum
//! fixed, so the fuzzer reaches the fields behind the checksum.
#![no_main]

use std::net::Ipv6Addr;

use libfuzzer_sys::fuzz_target;
use shoal_vip::packet::{decode_ipv4, decode_ipv6};

/// RFC 1071 one's-complement sum, written here independently of the code
/// under test.
fn ones_complement(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fuzz_target!(|data: &[u8]| {
    let _ = decode_ipv4(data);
    let source = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
    let group = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
    let _ = decode_ipv6(data, source, group, 255);

    if data.len() >= 8 {
        let mut datagram = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 255, 112, 0, 0, 10, 0, 0, 1, 224, 0, 0, 18];
        let total = (20 + data.len()).min(usize::from(u16::MAX)) as u16;
        datagram[2..4].copy_from_slice(&total.to_be_bytes());
        let mut msg = data.to_vec();
        msg[6..8].copy_from_slice(&[0, 0]);
        let sum = ones_complement(&msg);
        msg[6..8].copy_from_slice(&sum.to_be_bytes());
        datagram.extend_from_slice(&msg);
        let _ = decode_ipv4(&datagram);
    }
});
