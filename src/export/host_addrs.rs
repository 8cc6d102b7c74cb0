//! The node's addresses for the resource: `host.ip` and `host.mac`, beside `host.name`.
//!
//! From the node's own network namespace, seen through pid 1 (the agent runs with hostPID
//! but not hostNetwork, so its own /sys/class/net is the pod's): the interfaces of
//! `/proc/1/root/sys/class/net` (the node's sysfs, whose net entries are those of the
//! namespace that mounted it; reading it needs what `/proc/1/root` needs, CAP_SYS_PTRACE,
//! which the DaemonSet grants), else the agent's own `/sys/class/net` (`podtrail run` on a
//! host). Kept: interfaces that are up, not loopback, and backed by a device (not under
//! `/sys/devices/virtual`: bridges, veths, vxlan, CNI and Docker interfaces are left out,
//! since every node has the same `cni0` or `docker0` address). Their MACs (IEEE form,
//! `AC-DE-48-23-45-67`), their IPv6 addresses (`/proc/1/net/if_inet6`) and their IPv4 addresses
//! (the local addresses of `/proc/1/net/fib_trie`, placed on an interface by the prefix
//! route `/proc/1/net/route` has for it: an address without one is left out).
//! Read once at start; what cannot be read leaves the attribute out (logged at debug).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// The node's addresses, in a stable order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostAddrs {
    pub ips: Vec<String>,
    pub macs: Vec<String>,
}

const IFF_UP: u32 = 0x1;
const IFF_LOOPBACK: u32 = 0x8;

/// The device-backed, up, non-loopback interfaces under `net` (a sysfs `class/net`), with
/// their MAC in IEEE form (None when all zero).
fn interfaces(net: &Path) -> Vec<(String, Option<String>)> {
    let Ok(dir) = std::fs::read_dir(net) else { return vec![] };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        let virtual_ =
            std::fs::read_link(&p).map(|l| l.to_string_lossy().contains("/devices/virtual/")).unwrap_or(true);
        let flags = std::fs::read_to_string(p.join("flags"))
            .ok()
            .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
            .unwrap_or(0);
        if virtual_ || flags & IFF_UP == 0 || flags & IFF_LOOPBACK != 0 {
            continue;
        }
        let mac = std::fs::read_to_string(p.join("address"))
            .ok()
            .map(|a| a.trim().to_ascii_uppercase().replace(':', "-"))
            .filter(|a| !a.is_empty() && a.chars().any(|c| c != '0' && c != '-'));
        out.push((name, mac));
    }
    out.sort();
    out
}

/// `/proc/net/if_inet6`: (address, interface) per line.
pub fn parse_if_inet6(text: &str) -> Vec<(Ipv6Addr, String)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (hex, name) = (f.first()?, f.get(5)?);
            let bits = u128::from_str_radix(hex, 16).ok().filter(|_| hex.len() == 32)?;
            Some((Ipv6Addr::from(bits), (*name).to_owned()))
        })
        .collect()
}

/// The local addresses of `/proc/net/fib_trie`'s `Local:` table (`/32 host LOCAL` entries).
pub fn parse_fib_trie_local(text: &str) -> Vec<Ipv4Addr> {
    let mut out = BTreeSet::new();
    let mut in_local = false;
    let mut last: Option<Ipv4Addr> = None;
    for line in text.lines() {
        if !line.starts_with(' ') {
            in_local = line.trim_end() == "Local:";
            continue;
        }
        let t = line.trim();
        if let Some(a) = t.strip_prefix("|-- ") {
            last = a.parse().ok();
        } else if in_local && t.starts_with("/32 host LOCAL") {
            out.extend(last);
        }
    }
    out.into_iter().collect()
}

/// `/proc/net/route`: (interface, destination, mask) of the routes without a gateway.
pub fn parse_route(text: &str) -> Vec<(String, Ipv4Addr, Ipv4Addr)> {
    let hex = |s: &str| u32::from_str_radix(s, 16).ok().map(|v| Ipv4Addr::from(v.to_le_bytes()));
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dst, gw, mask) = (hex(f.get(1)?)?, hex(f.get(2)?)?, hex(f.get(7)?)?);
            (gw.is_unspecified() && !mask.is_unspecified()).then(|| (f[0].to_owned(), dst, mask))
        })
        .collect()
}

/// The addresses of the node whose processes' `/proc/PID` is `proc_pid` (`/proc/1`).
pub fn read(proc_pid: &Path) -> HostAddrs {
    let node_sys = proc_pid.join("root/sys/class/net");
    let mut ifs = interfaces(&node_sys);
    if ifs.is_empty() && std::fs::read_dir(&node_sys).is_err() {
        tracing::debug!(path = %node_sys.display(), "the node's interfaces are not readable: using this namespace's");
        ifs = interfaces(&PathBuf::from("/sys/class/net"));
    }
    let kept: BTreeSet<&str> = ifs.iter().map(|(n, _)| n.as_str()).collect();
    let read = |f: &str| std::fs::read_to_string(proc_pid.join("net").join(f)).unwrap_or_default();
    let routes = parse_route(&read("route"));
    let mut ips: Vec<String> = Vec::new();
    for a in parse_fib_trie_local(&read("fib_trie")) {
        let on = routes
            .iter()
            .filter(|(_, dst, mask)| u32::from(a) & u32::from(*mask) == u32::from(*dst))
            .max_by_key(|(_, _, mask)| u32::from(*mask).count_ones());
        if on.is_some_and(|(i, _, _)| kept.contains(i.as_str())) {
            ips.push(a.to_string());
        }
    }
    ips.extend(
        parse_if_inet6(&read("if_inet6"))
            .into_iter()
            .filter(|(_, i)| kept.contains(i.as_str()))
            .map(|(a, _)| a.to_string()),
    );
    let mut macs: Vec<String> = ifs.into_iter().filter_map(|(_, m)| m).collect();
    macs.dedup();
    HostAddrs { ips, macs }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse_as_the_kernel_writes_them() {
        // as read on this project's test machine (eth0 192.0.2.2/24, lo)
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     +-- 127.0.0.0/8 2 0 2\n        +-- 127.0.0.0/31 1 0 0\n           |-- 127.0.0.0\n              /8 host LOCAL\n           |-- 127.0.0.1\n              /32 host LOCAL\n     |-- 10.9.9.9\n        /32 host LOCAL\nLocal:\n  +-- 0.0.0.0/0 3 0 5\n     +-- 127.0.0.0/8 2 0 2\n        +-- 127.0.0.0/31 1 0 0\n           |-- 127.0.0.0\n              /8 host LOCAL\n           |-- 127.0.0.1\n              /32 host LOCAL\n        |-- 127.255.255.255\n           /32 link BROADCAST\n     +-- 192.0.2.0/24 2 0 2\n        +-- 192.0.2.0/30 2 0 2\n           |-- 192.0.2.0\n              /24 link UNICAST\n           |-- 192.0.2.2\n              /32 host LOCAL\n        |-- 192.0.2.255\n           /32 link BROADCAST\n";
        let local: Vec<String> = parse_fib_trie_local(trie).iter().map(|a| a.to_string()).collect();
        assert_eq!(local, ["127.0.0.1", "192.0.2.2"], "the Local table's /32 host entries only");
        let route = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\neth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\neth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            parse_route(route),
            [("eth0".to_owned(), Ipv4Addr::new(192, 0, 2, 0), Ipv4Addr::new(255, 255, 255, 0))]
        );
        let inet6 = "00000000000000000000000000000001 01 80 10 80       lo\nfd000000000000000000000000000002 04 40 00 82     eth0\n";
        assert_eq!(
            parse_if_inet6(inet6),
            [("::1".parse().unwrap(), "lo".to_owned()), ("fd00::2".parse().unwrap(), "eth0".to_owned())]
        );
    }

    /// `ip -d -j link` / `ip -j addr` (iproute2, not podtrail) name the same addresses: the
    /// interfaces with a parent bus (a device), up, not loopback.
    #[test]
    fn this_hosts_addresses_agree_with_iproute2() {
        let ip = |args: &[&str]| -> serde_json::Value {
            let out = std::process::Command::new("ip").args(args).output().expect("iproute2's `ip` is needed");
            assert!(out.status.success(), "ip {args:?}");
            serde_json::from_slice(&out.stdout).unwrap()
        };
        let links = ip(&["-d", "-j", "link"]);
        let addrs = ip(&["-j", "addr"]);
        let mut want = HostAddrs::default();
        let mut names = BTreeSet::new();
        for l in links.as_array().unwrap() {
            let flags: Vec<&str> = l["flags"].as_array().unwrap().iter().filter_map(|f| f.as_str()).collect();
            if l.get("parentbus").is_none() || !flags.contains(&"UP") || flags.contains(&"LOOPBACK") {
                continue;
            }
            names.insert(l["ifname"].as_str().unwrap().to_owned());
            want.macs.push(l["address"].as_str().unwrap().to_ascii_uppercase().replace(':', "-"));
        }
        let (mut v4, mut v6) = (vec![], vec![]);
        for a in addrs.as_array().unwrap().iter().filter(|a| names.contains(a["ifname"].as_str().unwrap())) {
            for i in a["addr_info"].as_array().unwrap() {
                let s = i["local"].as_str().unwrap().to_owned();
                if i["family"] == "inet" {
                    v4.push(s)
                } else {
                    v6.push(s)
                }
            }
        }
        assert!(!names.is_empty(), "this test needs a device-backed interface that is up");
        v4.sort_by_key(|a| a.parse::<Ipv4Addr>().unwrap());
        want.ips = v4.into_iter().chain(v6).collect();
        want.macs.sort();
        let mut got = read(Path::new("/proc/1"));
        got.macs.sort();
        let got_v6: Vec<String> = got.ips.split_off(got.ips.iter().take_while(|a| !a.contains(':')).count());
        let mut want_v6 = want.ips.split_off(want.ips.iter().take_while(|a| !a.contains(':')).count());
        let mut got_v6s = got_v6.clone();
        got_v6s.sort();
        want_v6.sort();
        assert_eq!((got.ips, got_v6s, got.macs), (want.ips, want_v6, want.macs));
    }
}
