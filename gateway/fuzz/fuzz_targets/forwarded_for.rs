//! The client's address from the peer and `X-Forwarded-For` (`geoip::client_ip`).
//!
//! Input: NUL-separated parts: the peer address, the trusted proxies (comma-separated
//! networks; ones that do not parse are left out), then `X-Forwarded-For` header lines (values
//! that are not header values are left out).
//!
//! Properties (the README's rule, read independently):
//! - an untrusted peer is the client, whatever the header says;
//! - behind trusted proxies, walking all hops (all lines, in order) from the right, the client
//!   is the first hop that is not a trusted proxy's address; a hop that is not an address
//!   there makes the client unknown (`None`), never the proxy; with every hop trusted (or no
//!   hop) it is the left-most (or the peer);
//! - in particular garbage where the client should be is never answered with the peer's own
//!   address, and the answer is always canonical (IPv4-mapped IPv6 as IPv4).
#![no_main]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use gateway::geoip::client_ip;
use gateway_fuzz::parts;
use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;

/// A hop as the README describes it: an address, bracketed IPv6, or either with a port.
fn hop_address(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = hop.parse::<SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    let inner = hop.strip_prefix('[')?.strip_suffix(']')?;
    inner
        .parse::<Ipv6Addr>()
        .ok()
        .map(|ip| IpAddr::V6(ip).to_canonical())
}

fuzz_target!(|data: &[u8]| {
    let parts = parts(data);
    let [peer, trusted, lines @ ..] = parts.as_slice() else {
        return;
    };
    let Some(peer) = std::str::from_utf8(peer)
        .ok()
        .and_then(|p| p.trim().parse::<IpAddr>().ok())
    else {
        return;
    };
    let trusted: Vec<IpNet> = String::from_utf8_lossy(trusted)
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let mut headers = HeaderMap::new();
    let mut hops: Vec<Vec<u8>> = Vec::new();
    for line in lines {
        let Ok(value) = HeaderValue::from_bytes(line) else {
            continue;
        };
        for hop in value.as_bytes().split(|&b| b == b',') {
            let hop = hop.trim_ascii();
            if !hop.is_empty() {
                hops.push(hop.to_vec());
            }
        }
        headers.append("x-forwarded-for", value);
    }
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let got = client_ip(peer, &headers, &trusted);

    let peer = peer.to_canonical();
    if let Some(ip) = got {
        assert_eq!(ip, ip.to_canonical(), "not canonical");
    }
    if !is_trusted(&peer) {
        return assert_eq!(got, Some(peer), "an untrusted peer is the client");
    }
    let mut expected = Some(peer);
    for hop in hops.iter().rev() {
        match std::str::from_utf8(hop).ok().and_then(hop_address) {
            None => {
                expected = None;
                break;
            }
            Some(ip) if !is_trusted(&ip) => {
                expected = Some(ip);
                break;
            }
            Some(ip) => expected = Some(ip),
        }
    }
    assert_eq!(
        got,
        expected,
        "peer {peer}, trusted {trusted:?}, hops {:?}",
        hops.iter()
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .collect::<Vec<_>>()
    );
    if got == Some(peer) && !hops.is_empty() {
        assert!(
            hops.iter()
                .any(|h| std::str::from_utf8(h).ok().and_then(hop_address) == Some(peer)),
            "the peer's own address, though the hops never name it"
        );
    }
});
