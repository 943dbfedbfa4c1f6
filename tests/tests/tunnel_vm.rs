//! Tunnel services (`lb_kind = "tun"`) with the XDP dataplane, against
//! Linux's own decapsulation: this host's kernel has no `ipip` or
//! `ip6_tunnel`, so the Debian 6.1 kernel boots under qemu. The real
//! servers sit in another subnet behind a router namespace and hold the
//! VIPs on `tunl0` / `ip6tnl0`, as docs/tunnels.md tells operators to set them
//! up; the director (XDP, generic mode) wraps client packets to them.
//! Checked: IPv4 and IPv6 requests through the VIP are served by both real
//! servers; the tunnel servers' MAC is the router's (the next hop); an
//! upload of full-size segments completes and the client learned the
//! smaller path MTU from the director's ICMP; the path check through the
//! tunnel (`dr_check`) takes out a server that lost the VIP and brings it
//! back; a route withdrawn and put back is followed.

use std::time::Duration;

use anyhow::{Result, ensure};
use director_tests::{
    director_bin,
    vm::{self, VmSpec},
};

const CONFIG: &str = r#"[global]
router_id = "vm-tun"
interface = "eth0"
state_dir = "/run/director"
dataplane = "xdp"
xdp_mode = "generic"

[[virtual_server]]
address = "10.0.0.100"
port = 80
lb_kind = "tun"
delay_loop = 1

# The path check through the tunnel: a SYN to the VIP wrapped as clients'
# packets are (a check of the server's own address cannot see a lost VIP).
[[virtual_server.real_server]]
address = "192.168.50.20"
[virtual_server.real_server.dr_check]
connect_timeout = 1

[[virtual_server.real_server]]
address = "192.168.50.21"
[virtual_server.real_server.dr_check]
connect_timeout = 1

[[virtual_server]]
address = "fd00::100"
port = 80
lb_kind = "tun"
delay_loop = 1

[[virtual_server.real_server]]
address = "fd00:50::20"
[virtual_server.real_server.tcp_check]
connect_timeout = 1

[[virtual_server.real_server]]
address = "fd00:50::21"
[virtual_server.real_server.tcp_check]
connect_timeout = 1

# Uploads (full-size segments: path MTU discovery through the tunnel).
[[virtual_server]]
address = "10.0.0.100"
port = 9000
lb_kind = "tun"
scheduler = "sh"

[[virtual_server.real_server]]
address = "192.168.50.20"

[[virtual_server]]
address = "fd00::100"
port = 9001
lb_kind = "tun"
scheduler = "sh"

[[virtual_server.real_server]]
address = "fd00:50::20"
"#;

/// The topology both tests share: a LAN (br0) with the client, the
/// directors `$DIRECTORS` (name:last-byte) and a router, which forwards to
/// a second subnet (br1, 192.168.50.0/24, fd00:50::/64) with two real
/// servers holding the VIPs on their tunnel devices (docs/tunnels.md's recipe),
/// each serving its name and a 6 MB file `big` over HTTP.
const TOPOLOGY: &str = r#"
wait_for() { i=0; while [ $i -lt $2 ]; do if eval "$1"; then return 0; fi; sleep 1; i=$((i+1)); done; return 1; }
get() { r=$(ip netns exec client sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 $1 80" 2>/dev/null | tail -n 1); case "$r" in rs*) echo "$r";; *) echo FAILED;; esac; }
lan() { # name v4 v6 (on br0)
  ip netns add $1
  ip link add p-$1 type veth peer name eth0 netns $1
  ip link set p-$1 master br0 up
  ip -n $1 link set lo up; ip -n $1 link set eth0 up
  ip -n $1 addr add $2/24 dev eth0; ip -n $1 addr add $3/64 dev eth0 nodad
}
ip link add br0 type bridge; ip link set br0 up
ip link add br1 type bridge; ip link set br1 up
lan client 10.0.0.2 fd00::2
lan router 10.0.0.1 fd00::1
for d in $DIRECTORS; do
  name=${d%%:*}; n=${d##*:}
  lan $name 10.0.0.$n fd00::$n
  # The servers' subnet via the router.
  ip -n $name route add 192.168.50.0/24 via 10.0.0.1
  ip -n $name -6 route add fd00:50::/64 via fd00::1
done
ip netns exec client sh -c 'ip route add default via 10.0.0.1; ip -6 route add default via fd00::1'
# A veth hands its peer whole TSO super-packets and partial checksums; a
# wire delivers frames of the MTU (the lab's clients do the same).
ip netns exec client ethtool -K eth0 tx off tso off gso off >/dev/null
# The router: forwards between the clients' LAN and the servers' subnet.
ip link add q-router type veth peer name eth1 netns router
ip link set q-router master br1 up
ip -n router link set eth1 up
ip -n router addr add 192.168.50.1/24 dev eth1
ip -n router addr add fd00:50::1/64 dev eth1 nodad
ip netns exec router sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward; echo 1 > /proc/sys/net/ipv6/conf/all/forwarding; for i in all default eth0 eth1; do echo 0 > /proc/sys/net/ipv4/conf/$i/rp_filter; done'
# Real servers in the other subnet: the VIPs on the tunnel devices, which
# decapsulate what the director sends (docs/tunnels.md's recipe).
for r in rs1:20 rs2:21; do
  name=${r%%:*}; n=${r##*:}
  ip netns add $name
  ip link add q-$name type veth peer name eth0 netns $name
  ip link set q-$name master br1 up
  ip -n $name link set lo up; ip -n $name link set eth0 up
  ip -n $name addr add 192.168.50.$n/24 dev eth0
  ip -n $name addr add fd00:50::$n/64 dev eth0 nodad
  ip -n $name route add default via 192.168.50.1
  ip -n $name -6 route add default via fd00:50::1
  ip -n $name link set tunl0 up
  ip -n $name addr add 10.0.0.100/32 dev tunl0
  ip -n $name link set ip6tnl0 up
  ip -n $name addr add fd00::100/128 dev ip6tnl0 nodad
  ip netns exec $name sh -c 'for i in all default tunl0 eth0; do echo 0 > /proc/sys/net/ipv4/conf/$i/rp_filter; done'
  mkdir -p /www/$name; echo $name > /www/$name/index.html
  dd if=/dev/zero of=/www/$name/big bs=1024 count=6144 2>/dev/null
  /sbin/ip netns exec $name httpd -f -p 80 -h /www/$name &
done
"#;

/// The modules both tests boot with.
const MODULES: [&str; 8] = [
    "veth",
    "bridge",
    "crc32c_generic",
    "tunnel4",
    "tunnel6",
    "ip_tunnel",
    "ipip",
    "ip6_tunnel",
];

/// Boots the VM with `directors` on the LAN, `files`, and `body` after the
/// shared topology; returns the console.
fn boot(directors: &str, files: &[(&str, String)], body: &str) -> Result<String> {
    let director = director_bin()?;
    vm::run(
        &VmSpec {
            director: &director,
            available: &MODULES,
            boot_modules: &MODULES,
            script: &format!("DIRECTORS='{directors}'\n{TOPOLOGY}\n{body}"),
            files,
            programs: &["/usr/sbin/ethtool"],
        },
        Duration::from_secs(300),
    )
}

const SCRIPT: &str = r#"
st() { /director status --json --state-dir /run/director; }
# The VIPs on the director's LAN interface (the IPv6 one deprecated, as
# VRRP adds it: never the source of the director's own connections, such
# as its health checks).
ip -n director addr add 10.0.0.100/32 dev eth0
ip -n director addr add fd00::100/128 dev eth0 nodad preferred_lft 0
for f in 4 6; do printf '#!/bin/sh\ncat > /tmp/up%s\n' $f > /bin/sink$f; chmod +x /bin/sink$f; done
/sbin/ip netns exec rs1 nc -ll -p 9000 -e /bin/sink4 &
/sbin/ip netns exec rs1 nc -ll -p 9001 -e /bin/sink6 &
/sbin/ip netns exec director /director run --config /etc/director.toml > /tmp/d.log 2>&1 &
wait_for '[ "$(get 10.0.0.100)" != FAILED ] && [ "$(get fd00::100)" != FAILED ]' 60 || echo "RESULT start=timeout"
echo BEGIN req4; for i in 1 2 3 4 5 6 7 8 9 10 11 12; do get 10.0.0.100; done; echo END req4
echo BEGIN req6; for i in 1 2 3 4 5 6 7 8 9 10 11 12; do get fd00::100; done; echo END req6
echo BEGIN status; st; echo; echo END status
echo BEGIN routermac; ip -n router -j link show eth0; echo END routermac
echo BEGIN doctor; /sbin/ip netns exec director /director doctor --config /etc/director.toml; echo "RESULT doctor=$?"; echo END doctor
# Path MTU: 300 kB of full-size segments; the client must learn 1480 / 1460.
# (cut at 30 s: without path MTU discovery the upload stalls)
timeout 30 /sbin/ip netns exec client sh -c 'dd if=/dev/zero bs=1000 count=300 2>/dev/null | nc -w 3 10.0.0.100 9000'
timeout 30 /sbin/ip netns exec client sh -c 'dd if=/dev/zero bs=1000 count=300 2>/dev/null | nc -w 3 fd00::100 9001'
sleep 1
echo "RESULT up4=$(wc -c < /tmp/up4)"
echo "RESULT up6=$(wc -c < /tmp/up6)"
echo BEGIN debug; ip netns exec client ethtool -k eth0 | grep -E "segmentation|checksumming"; ip netns exec client cat /proc/net/snmp | grep -E "^Icmp|^Tcp"; ip netns exec client cat /proc/net/snmp6 | grep -i "icmp6InPktTooBigs\|Icmp6InMsgs"; ip -n director -s link show eth0; ip -n router -s link show eth0; ip netns exec rs1 cat /proc/net/snmp | grep -E "^Ip:|^Tcp"; echo END debug
echo BEGIN pmtu4; ip -n client route get 10.0.0.100; echo END pmtu4
echo BEGIN pmtu6; ip -n client -6 route get fd00::100; echo END pmtu6
# A server that lost the VIP leaves the pool (its httpd still answers on
# its own address), and comes back with it.
rs2() { st | tr -d ' \n' | grep -q "\"address\":\"192.168.50.21\"[^}]*\"healthy\":$1"; }
ip -n rs2 addr del 10.0.0.100/32 dev tunl0
wait_for "rs2 false" 20 || echo "RESULT health=timeout"
echo BEGIN doctordown; /sbin/ip netns exec director /director doctor --config /etc/director.toml --vip 10.0.0.100; echo "RESULT doctordown=$?"; echo END doctordown
echo BEGIN req4down; for i in 1 2 3 4 5 6; do get 10.0.0.100; done; echo END req4down
echo BEGIN down; st; echo; echo END down
ip -n rs2 addr add 10.0.0.100/32 dev tunl0
wait_for "rs2 true" 20 || echo "RESULT healthback=timeout"
# The route to the servers withdrawn: nothing to forward to; put back: served.
ip -n director route del 192.168.50.0/24 via 10.0.0.1
wait_for "[ \$(st | grep -o '\"mac\": null' | wc -l) -ge 2 ]" 20 || echo "RESULT unrouted=timeout"
echo BEGIN unrouted; st; echo; echo END unrouted
ip -n director route add 192.168.50.0/24 via 10.0.0.1
wait_for '[ "$(get 10.0.0.100)" != FAILED ]' 20 || echo "RESULT rerouted=timeout"
echo BEGIN req4back; for i in 1 2 3 4 5 6 7 8 9 10 11 12; do get 10.0.0.100; done; echo END req4back
echo BEGIN dlog; tail -n 80 /tmp/d.log; echo END dlog
"#;

#[test]
fn xdp_tunnel_services_reach_real_servers_in_another_subnet() -> Result<()> {
    let out = boot(
        "director:10",
        &[("/etc/director.toml", CONFIG.to_string())],
        SCRIPT,
    )?;
    let dlog = vm::section(&out, "dlog");
    let results = vm::results(&out);
    let result = |k: &str| {
        results
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    ensure!(
        !results.iter().any(|(k, _)| k == "modprobe_failed"
            || k == "start"
            || k == "health"
            || k == "healthback"
            || k == "unrouted"
            || k == "rerouted"),
        "{results:?}\n{dlog}"
    );
    for s in ["req4", "req6"] {
        let r = vm::section(&out, s);
        ensure!(
            !r.contains("FAILED") && r.contains("rs1") && r.contains("rs2"),
            "{s}: {r}\n{dlog}"
        );
    }
    // The tunnel servers' frames go to the router (their next hop).
    let status: serde_json::Value = serde_json::from_str(vm::section(&out, "status").trim())?;
    let links: serde_json::Value = serde_json::from_str(vm::section(&out, "routermac").trim())?;
    let router_mac = links[0]["address"].as_str().unwrap_or_default().to_string();
    for vs in status["virtual_servers"].as_array().into_iter().flatten() {
        ensure!(vs["lb_kind"] == "tun", "{vs}");
        for rs in vs["real_servers"].as_array().into_iter().flatten() {
            ensure!(
                rs["mac"].as_str() == Some(router_mac.as_str()),
                "{rs} (router {router_mac})"
            );
        }
    }
    // doctor: both servers decapsulate and answer the VIPs through the
    // tunnel; the one that lost its VIP is named, with the fix.
    let doctor = vm::section(&out, "doctor");
    ensure!(result("doctor").as_deref() == Some("0"), "{doctor}");
    for (rs, vip) in [
        ("192.168.50.20", "10.0.0.100"),
        ("192.168.50.21", "10.0.0.100"),
        ("fd00:50::20", "fd00::100"),
        ("fd00:50::21", "fd00::100"),
    ] {
        ensure!(
            doctor.lines().any(|l| l.starts_with("ok")
                && l.split_whitespace().nth(1) == Some(rs)
                && l.contains(&format!(
                    "decapsulates the tunnel and answers {vip} port 80"
                ))),
            "{rs} {vip}: {doctor}"
        );
    }
    ensure!(
        doctor.contains("fragmentation needed") && doctor.contains("packet too big"),
        "{doctor}"
    );
    ensure!(
        doctor.contains("generic (SKB) mode, as configured"),
        "{doctor}"
    );
    let down = vm::section(&out, "doctordown");
    ensure!(result("doctordown").as_deref() == Some("1"), "{down}");
    ensure!(
        down.lines().any(|l| l.starts_with("FAIL")
            && l.split_whitespace().nth(1) == Some("192.168.50.21")
            && l.contains("does not decapsulate")),
        "{down}"
    );
    ensure!(!down.contains("FAIL  192.168.50.20"), "{down}");
    // Path MTU discovery through the tunnel.
    let pmtu = format!(
        "{}\n{}",
        vm::section(&out, "pmtu4"),
        vm::section(&out, "pmtu6")
    );
    ensure!(
        result("up4").as_deref() == Some("300000") && result("up6").as_deref() == Some("300000"),
        "uploads: {:?} {:?}\n{pmtu}\n{}",
        result("up4"),
        result("up6"),
        vm::section(&out, "debug")
    );
    let pmtu4 = vm::section(&out, "pmtu4");
    ensure!(pmtu4.contains("mtu 1480"), "{pmtu4}");
    let pmtu6 = vm::section(&out, "pmtu6");
    ensure!(pmtu6.contains("mtu 1460"), "{pmtu6}");
    // The path check through the tunnel takes out a server without the VIP.
    let down = vm::section(&out, "down");
    ensure!(down.contains("through the VIP"), "{down}");
    let r = vm::section(&out, "req4down");
    ensure!(
        !r.contains("FAILED") && r.contains("rs1") && !r.contains("rs2"),
        "{r}\n{dlog}"
    );
    // Routes followed.
    let unrouted = vm::section(&out, "unrouted");
    ensure!(unrouted.contains("\"mac\": null"), "{unrouted}");
    let r = vm::section(&out, "req4back");
    ensure!(
        !r.contains("FAILED") && r.contains("rs1") && r.contains("rs2"),
        "{r}\n{dlog}"
    );
    Ok(())
}

/// A VRRP pair of directors for a tunnel service (`PRIORITY` and `NAME`
/// filled in per director).
const PAIR_CONFIG: &str = r#"[global]
router_id = "NAME"
interface = "eth0"
state_dir = "/run/NAME"
dataplane = "xdp"
xdp_mode = "generic"

[[vrrp_instance]]
name = "VI_1"
virtual_router_id = 51
priority = PRIORITY
version = 3
advert_int = 0.1
virtual_ipaddress = ["10.0.0.100/32"]

[[virtual_server]]
address = "10.0.0.100"
port = 80
lb_kind = "tun"

[[virtual_server.real_server]]
address = "192.168.50.20"

[[virtual_server.real_server]]
address = "192.168.50.21"
"#;

const FAILOVER: &str = r#"
st() { /director status --json --state-dir /run/$1; }
mac() { ip -n $1 -j link show eth0 | sed 's/.*"address":"\([^"]*\)".*/\1/'; }
# A client that reads slowly (about 1 MB/s): downloads last a few seconds.
slow() { while :; do n=$(dd bs=65536 count=1 2>/dev/null | tee -a $1 | wc -c); [ "$n" -eq 0 ] && break; sleep 0.05; done; }
/sbin/ip netns exec d1 /director run --config /etc/d1.toml > /tmp/d1.log 2>&1 &
sleep 1
/sbin/ip netns exec d2 /director run --config /etc/d2.toml > /tmp/d2.log 2>&1 &
wait_for "ip -n d1 addr show eth0 | grep -q 10.0.0.100 && [ \"\$(get 10.0.0.100)\" != FAILED ]" 60 || echo "RESULT start=timeout"
wait_for "st d2 | grep -q '\"state\": \"backup\"'" 30 || echo "RESULT backup=timeout"
echo BEGIN before; for i in 1 2 3 4 5 6 7 8 9 10 11 12; do get 10.0.0.100; done; echo END before
# Long downloads through d1, then d1's link goes down under them.
pids=
for i in 1 2 3 4; do
  ip netns exec client sh -c "printf 'GET /big HTTP/1.0\r\n\r\n' | nc 10.0.0.100 80" | slow /tmp/dl$i &
  pids="$pids $!"
done
sleep 2
echo "RESULT during=$(for i in 1 2 3 4; do wc -c < /tmp/dl$i; done | tr '\n' ' ')"
ip -n d1 link set eth0 down
wait_for "st d2 | grep -q '\"state\": \"master\"'" 10 || echo "RESULT takeover=timeout"
# (cut at 60 s: a failover that breaks them leaves them hanging)
( sleep 60; kill $pids 2>/dev/null ) &
wait $pids
echo "RESULT sizes=$(for i in 1 2 3 4; do wc -c < /tmp/dl$i; done | tr '\n' ' ')"
echo "RESULT vip_mac=$(ip -n client neigh show 10.0.0.100 | sed 's/.*lladdr \([^ ]*\).*/\1/')"
echo "RESULT d2_mac=$(mac d2)"
echo BEGIN after; for i in 1 2 3 4 5 6 7 8 9 10 11 12; do get 10.0.0.100; done; echo END after
echo BEGIN d2status; st d2; echo; echo END d2status
echo BEGIN dlog; tail -n 30 /tmp/d2.log; echo END dlog
"#;

/// Failover with a tunnel service: the master's link goes down under four
/// long downloads; the backup takes the VIP (the client's neighbour entry
/// moves to it), places the established flows on the same real servers
/// (both directors build the same Maglev table) and wraps them on: every
/// download completes whole, and the new master's counters carry them.
#[test]
fn tunnel_flows_survive_a_failover() -> Result<()> {
    let config = |name: &str, priority: &str| {
        PAIR_CONFIG
            .replace("NAME", name)
            .replace("PRIORITY", priority)
    };
    let out = boot(
        "d1:11 d2:12",
        &[
            ("/etc/d1.toml", config("d1", "150")),
            ("/etc/d2.toml", config("d2", "100")),
        ],
        FAILOVER,
    )?;
    let dlog = vm::section(&out, "dlog");
    let results = vm::results(&out);
    let result = |k: &str| {
        results
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    ensure!(
        !results.iter().any(|(k, _)| k == "modprobe_failed"
            || k == "start"
            || k == "backup"
            || k == "takeover"),
        "{results:?}\n{dlog}"
    );
    for s in ["before", "after"] {
        let r = vm::section(&out, s);
        ensure!(
            !r.contains("FAILED") && r.contains("rs1") && r.contains("rs2"),
            "{s}: {r}\n{dlog}"
        );
    }
    // The downloads were under way at the failover, and all completed.
    let during: Vec<u64> = result("during")
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let body = 6 * 1024 * 1024;
    ensure!(
        during.len() == 4 && during.iter().all(|&n| n > 0 && n < body),
        "not under way at the failover: {during:?}"
    );
    let sizes: Vec<u64> = result("sizes")
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    ensure!(
        sizes.len() == 4 && sizes.iter().all(|&n| n > body),
        "downloads broken by the failover: {sizes:?} (body {body})\n{dlog}"
    );
    // The takeover is real: the client sends to d2, d2 forwards.
    ensure!(
        !result("d2_mac").is_empty() && result("vip_mac") == result("d2_mac"),
        "the client's entry for the VIP: {} (d2 {})",
        result("vip_mac"),
        result("d2_mac")
    );
    let status: serde_json::Value = serde_json::from_str(vm::section(&out, "d2status").trim())?;
    let packets = status["virtual_servers"][0]["packets"]
        .as_u64()
        .unwrap_or(0);
    ensure!(packets > 100, "d2 forwarded {packets} packets\n{status}");
    Ok(())
}
