//! The IPVS dataplane against a real IPVS kernel: the host kernel has none,
//! so the Debian 6.1 kernel boots under qemu with a DR topology in network
//! namespaces (client, director, two real servers on a bridge; busybox
//! httpd answering its name). Checked: clients are served through the VIP
//! by both real servers, `ipvsadm -Ln` (Debian's, copied in) lists exactly
//! what the config says, a health change updates it, a daemon restart
//! keeps forwarding (and reconciles without duplicates), `director flush`
//! removes it; status numbers come from IPVS's statistics. The same run
//! tries the XDP dataplane on that 6.1 kernel and records the outcome, and
//! `dataplane = "auto"` where XDP cannot run (the daemon without the
//! capabilities it needs) falls back to IPVS and serves.

use std::time::Duration;

use anyhow::{Result, ensure};
use director_tests::{
    director_bin,
    vm::{self, VmSpec},
};

const CONFIG: &str = r#"[global]
router_id = "vm"
interface = "eth0"
state_dir = "/run/director"
dataplane = "ipvs"
udp_timeout = 120

[[virtual_server]]
address = "10.0.0.100"
port = 80
scheduler = "wrr"
delay_loop = 1

[[virtual_server.real_server]]
address = "10.0.0.20"
[virtual_server.real_server.tcp_check]
connect_timeout = 1
retry = 0
warmup = 0.1

[[virtual_server.real_server]]
address = "10.0.0.21"
weight = 2
[virtual_server.real_server.tcp_check]
connect_timeout = 1
retry = 0
warmup = 0.1

[[virtual_server]]
address = "fd00::100"
port = 80
delay_loop = 1

[[virtual_server.real_server]]
address = "fd00::20"
[virtual_server.real_server.tcp_check]
connect_timeout = 1
retry = 0
warmup = 0.1

[[virtual_server.real_server]]
address = "fd00::21"
[virtual_server.real_server.tcp_check]
connect_timeout = 1
retry = 0
warmup = 0.1
"#;

const XDP_CONFIG: &str = r#"[global]
router_id = "vm-xdp"
interface = "eth0"
state_dir = "/run/director-xdp"
dataplane = "xdp"
xdp_mode = "generic"

[[virtual_server]]
address = "10.0.0.100"
port = 80

[[virtual_server.real_server]]
address = "10.0.0.20"

[[virtual_server.real_server]]
address = "10.0.0.21"
"#;

const SCRIPT: &str = r#"
wait_for() { i=0; while [ $i -lt $2 ]; do if eval "$1"; then return 0; fi; sleep 1; i=$((i+1)); done; return 1; }
ipvs() { ip netns exec director ipvsadm -Ln; }
# (busybox-static's wget crashes in glibc's static resolver: nc instead)
get() { r=$(ip netns exec client sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 ${1:-10.0.0.100} 80" 2>/dev/null | tail -n 1); case "$r" in rs*) echo "$r";; *) echo FAILED;; esac; }
ip link add br0 type bridge
ip link set br0 up
for h in client:10.0.0.2 director:10.0.0.10 rs1:10.0.0.20 rs2:10.0.0.21; do
  name=${h%%:*}; addr=${h##*:}
  ip netns add $name
  ip link add p-$name type veth peer name eth0 netns $name
  ip link set p-$name master br0 up
  ip -n $name link set lo up
  ip -n $name link set eth0 up
  ip -n $name addr add $addr/24 dev eth0
  ip -n $name addr add fd00::${addr##*.}/64 dev eth0 nodad
done
ip -n director addr add 10.0.0.100/32 dev eth0
ip -n director addr add fd00::100/128 dev eth0 nodad preferred_lft 0
for r in rs1 rs2; do
  ip -n $r addr add 10.0.0.100/32 dev lo
  ip -n $r addr add fd00::100/128 dev lo nodad
  ip netns exec $r sh -c 'for i in all eth0; do echo 1 > /proc/sys/net/ipv4/conf/$i/arp_ignore; echo 2 > /proc/sys/net/ipv4/conf/$i/arp_announce; done'
  mkdir -p /www/$r
  echo $r > /www/$r/index.html
  /sbin/ip netns exec $r httpd -f -p 80 -h /www/$r &
  echo $! > /tmp/$r.pid
done

[ -e /proc/net/ip_vs ] && echo "RESULT ipvs_before_daemon=present" || echo "RESULT ipvs_before_daemon=absent"
/sbin/ip netns exec director /director run --config /etc/director.toml > /tmp/d.log 2>&1 &
echo $! > /tmp/d.pid
wait_for "ipvs | grep -q 10.0.0.21 && ipvs | grep -q fd00::21" 90 || echo "RESULT start=timeout"
echo "RESULT quiescent=$(ip netns exec director cat /proc/sys/net/ipv4/vs/expire_quiescent_template)"
echo BEGIN ipvsadm1; ipvs; echo END ipvsadm1
echo BEGIN timeouts; ip netns exec director ipvsadm -L --timeout; echo END timeouts
echo BEGIN requests1; for i in 1 2 3 4 5 6 7 8 9; do get; done; echo END requests1
echo BEGIN requests6; for i in 1 2 3 4 5 6 7 8 9 10; do get fd00::100; done; echo END requests6
echo BEGIN debug
ip -n client neigh
ip netns exec director ipvsadm -Lnc
echo END debug
# IPVS folds its per-CPU counters into what netlink reports every 2 s.
sleep 3
echo BEGIN status1; ip netns exec director /director status --json --config /etc/director.toml; echo; echo END status1

# A reload the kernel refuses (this machine has no ip_vs_lc): refused as a
# whole, the old services stay, the daemon runs on.
cp /etc/director.toml /tmp/good.toml
sed 's/scheduler = "wrr"/scheduler = "lc"/' /tmp/good.toml > /etc/director.toml
echo BEGIN reload_lc; ip netns exec director /director reload --config /etc/director.toml; echo "RESULT reload_lc_exit=$?"; echo END reload_lc
cp /tmp/good.toml /etc/director.toml
sleep 3
kill -0 $(cat /tmp/d.pid) && echo "RESULT alive_after_refused_reload=yes"
echo BEGIN ipvsadm_lc; ipvs; echo END ipvsadm_lc

kill $(cat /tmp/rs2.pid)
wait_for "! ipvs | grep -q 10.0.0.21" 60 && echo "RESULT health=removed" || echo "RESULT health=timeout"
echo BEGIN ipvsadm2; ipvs; echo END ipvsadm2

kill $(cat /tmp/d.pid)
wait_for "! kill -0 $(cat /tmp/d.pid) 2>/dev/null" 30 && echo "RESULT stopped=yes"
echo BEGIN requests2; for i in 1 2 3; do get; done; echo END requests2
/sbin/ip netns exec rs2 httpd -f -p 80 -h /www/rs2 &
echo $! > /tmp/rs2.pid
/sbin/ip netns exec director /director run --config /etc/director.toml > /tmp/d2.log 2>&1 &
echo $! > /tmp/d.pid
wait_for "ipvs | grep -q 10.0.0.21" 90 || echo "RESULT restart=timeout"
echo BEGIN ipvsadm3; ipvs; echo END ipvsadm3
kill $(cat /tmp/d.pid)
wait_for "! kill -0 $(cat /tmp/d.pid) 2>/dev/null" 30
echo BEGIN flush; ip netns exec director /director flush --config /etc/director.toml; echo END flush
echo BEGIN ipvsadm4; ipvs; echo END ipvsadm4
echo BEGIN dlog; tail -n 40 /tmp/d.log; echo END dlog

/sbin/ip netns exec director /director run --config /etc/director-xdp.toml > /tmp/x.log 2>&1 &
echo $! > /tmp/x.pid
wait_for "grep -q 'real_servers=2' /tmp/x.log || ! kill -0 $(cat /tmp/x.pid) 2>/dev/null" 60
ip -n director -d link show eth0 | grep -q xdp && echo "RESULT xdp_attached=yes" || echo "RESULT xdp_attached=no"
ok=0; for i in 1 2 3 4 5 6; do case "$(get)" in rs*) ok=$((ok+1));; esac; done
echo "RESULT xdp_requests_ok=$ok"
echo BEGIN xlog; tail -n 30 /tmp/x.log; echo END xlog
kill $(cat /tmp/x.pid) 2>/dev/null
wait_for "! kill -0 $(cat /tmp/x.pid) 2>/dev/null" 30
ip netns exec director /director flush --config /etc/director-xdp.toml > /dev/null

# dataplane = "auto" where XDP cannot run (no CAP_SYS_ADMIN, CAP_BPF, CAP_PERFMON
# for the daemon): it falls back to IPVS, says why, and serves.
sed -e '/^scheduler = "wrr"/d' -e 's/^dataplane = "ipvs"/dataplane = "auto"/' -e 's|^state_dir = "/run/director"|state_dir = "/run/director-auto"|' /etc/director.toml > /tmp/auto.toml
/sbin/ip netns exec director /usr/bin/setpriv --bounding-set -bpf,-sys_admin,-perfmon /director run --config /tmp/auto.toml > /tmp/a.log 2>&1 &
echo $! > /tmp/a.pid
wait_for "ipvs | grep -q 10.0.0.21" 60 || echo "RESULT auto=timeout"
ok=0; for i in 1 2 3 4 5 6; do case "$(get)" in rs*) ok=$((ok+1));; esac; done
echo "RESULT auto_requests_ok=$ok"
echo "RESULT auto_dataplane=$(ip netns exec director /director status --json --config /tmp/auto.toml | grep -o '"dataplane": "[a-z]*"' | head -1 | sed 's/.*: //; s/"//g')"
echo "RESULT auto_said=$(grep -c 'falling back to the kernel.s IPVS' /tmp/a.log)"
echo BEGIN alog; tail -n 30 /tmp/a.log; echo END alog
kill $(cat /tmp/a.pid)
"#;

#[test]
fn ipvs_dataplane_in_a_vm_with_a_real_ipvs_kernel() -> Result<()> {
    let director = director_bin()?;
    let out = vm::run(
        &VmSpec {
            director: &director,
            // What the machine has; the daemon loads IPVS and its
            // schedulers itself ("loaded when missing").
            available: &[
                "veth",
                "bridge",
                "crc32c_generic",
                "ip_vs",
                "ip_vs_wrr",
                "ip_vs_mh",
                "ip_vs_sh",
                "ip_vs_rr",
            ],
            // What an operator's boot loads. (crc32c_generic: TCG's CPU
            // model lacks what crc32c-intel needs, which a real machine
            // would load instead when ip_vs asks for crc32c.)
            boot_modules: &["veth", "bridge", "crc32c_generic"],
            script: SCRIPT,
            files: &[
                ("/etc/director.toml", CONFIG.to_string()),
                ("/etc/director-xdp.toml", XDP_CONFIG.to_string()),
            ],
            programs: &["/usr/bin/setpriv"],
        },
        Duration::from_secs(420),
    )?;
    let results = vm::results(&out);
    let result = |k: &str| {
        results
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    eprintln!("{results:?}");
    ensure!(
        result("kernel").is_some_and(|k| k.starts_with("6.1")),
        "not the 6.1 kernel: {out}"
    );
    ensure!(
        !results
            .iter()
            .any(|(k, _)| k == "modprobe_failed" || k == "start" || k == "nft"),
        "{out}"
    );
    // Drained servers' persistence templates expire (as XDP never sends
    // a new connection to a draining server).
    ensure!(result("quiescent").as_deref() == Some("1"), "{out}");
    // IPVS was not loaded by the boot: the daemon loaded it.
    ensure!(
        result("ipvs_before_daemon").as_deref() == Some("absent"),
        "{out}"
    );

    // ipvsadm lists exactly the config: one DR service, both servers with
    // their weights.
    let table = vm::section(&out, "ipvsadm1");
    ensure!(table.contains("TCP  10.0.0.100:80 wrr"), "{table}");
    ensure!(
        table.contains("-> 10.0.0.20:80") && table.contains("-> 10.0.0.21:80"),
        "{table}"
    );
    let line = |addr: &str| {
        table
            .lines()
            .find(|l| l.contains(addr))
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    ensure!(line("10.0.0.20:80")[2..4] == ["Route", "1"], "{table}");
    ensure!(line("10.0.0.21:80")[2..4] == ["Route", "2"], "{table}");
    ensure!(table.matches("TCP ").count() == 2, "{table}");
    // IPv6: the second service, IPVS's mh scheduler.
    ensure!(table.contains("TCP  [fd00::100]:80 mh"), "{table}");
    ensure!(
        table.contains("-> [fd00::20]:80") && table.contains("-> [fd00::21]:80"),
        "{table}"
    );
    // global.udp_timeout reached IPVS (SET_CONFIG).
    let timeouts = vm::section(&out, "timeouts");
    ensure!(timeouts.trim().ends_with(" 120"), "{timeouts}");

    // Clients are served by both real servers through the VIP.
    let requests = vm::section(&out, "requests1");
    ensure!(
        !requests.contains("FAILED") && requests.contains("rs1") && requests.contains("rs2"),
        "{requests}\n{out}"
    );

    let requests = vm::section(&out, "requests6");
    ensure!(
        !requests.contains("FAILED") && requests.contains("rs1") && requests.contains("rs2"),
        "IPv6: {requests}\n{out}"
    );

    // Status comes from IPVS's statistics.
    let status: serde_json::Value = serde_json::from_str(vm::section(&out, "status1").trim())?;
    ensure!(
        status["dataplane"] == "ipvs" && status["xdp_mode"].is_null(),
        "{status}"
    );
    let vs = &status["virtual_servers"][0];
    ensure!(
        vs["packets"].as_u64() > Some(0) && vs["new_flows"].as_u64() >= Some(9),
        "{status}"
    );
    // Per real server too (both served requests).
    for rs in 0..2 {
        ensure!(
            vs["real_servers"][rs]["packets"].as_u64() > Some(0),
            "{status}"
        );
    }

    // A reload the kernel refuses changes nothing and kills nothing.
    ensure!(
        result("reload_lc_exit").as_deref() == Some("1"),
        "{}",
        vm::section(&out, "reload_lc")
    );
    ensure!(
        result("alive_after_refused_reload").as_deref() == Some("yes"),
        "the daemon died on a refused reload:\n{}",
        vm::section(&out, "dlog")
    );
    let table = vm::section(&out, "ipvsadm_lc");
    ensure!(
        table.contains("TCP  10.0.0.100:80 wrr")
            && table.contains("10.0.0.20:80")
            && table.contains("10.0.0.21:80"),
        "{table}"
    );
    // A failed check takes the server out of IPVS.
    ensure!(result("health").as_deref() == Some("removed"), "{out}");
    let table = vm::section(&out, "ipvsadm2");
    ensure!(
        table.contains("10.0.0.20:80") && !table.contains("10.0.0.21"),
        "{table}"
    );

    // Stopped, the daemon's services keep forwarding.
    ensure!(result("stopped").as_deref() == Some("yes"), "{out}");
    let requests = vm::section(&out, "requests2");
    ensure!(
        !requests.contains("FAILED") && requests.contains("rs1"),
        "{requests}"
    );

    // Restarted: adopted, reconciled (both servers back), no duplicates.
    let table = vm::section(&out, "ipvsadm3");
    ensure!(
        table.matches("TCP ").count() == 2 && table.contains("10.0.0.21:80"),
        "{table}"
    );

    // flush removes it.
    let flushed = vm::section(&out, "flush");
    ensure!(
        flushed.contains("IPVS service 10.0.0.100:80/tcp")
            && flushed.contains("IPVS service [fd00::100]:80/tcp"),
        "{flushed}"
    );
    let table = vm::section(&out, "ipvsadm4");
    ensure!(!table.contains("TCP "), "{table}");

    // XDP on the 6.1 kernel (generic mode): attached and serving.
    let xlog = vm::section(&out, "xlog");
    ensure!(
        result("xdp_attached").as_deref() == Some("yes"),
        "XDP not attached on 6.1:\n{xlog}"
    );
    ensure!(
        result("xdp_requests_ok").as_deref() == Some("6"),
        "XDP on 6.1 served {:?} of 6:\n{xlog}",
        result("xdp_requests_ok")
    );

    // dataplane = "auto" where XDP cannot run: IPVS, said once, serving.
    let alog = vm::section(&out, "alog");
    ensure!(
        result("auto").is_none()
            && result("auto_dataplane").as_deref() == Some("ipvs")
            && result("auto_said").as_deref() == Some("1"),
        "auto did not fall back to IPVS: {:?} {:?}\n{alog}",
        result("auto_dataplane"),
        result("auto_said")
    );
    ensure!(
        result("auto_requests_ok").as_deref() == Some("6"),
        "auto's IPVS served {:?} of 6:\n{alog}",
        result("auto_requests_ok")
    );
    Ok(())
}

const GROUP_CONFIG: &str = r#"[global]
router_id = "vm"
interface = "eth0"
state_dir = "/run/director"
dataplane = "ipvs"

[[virtual_server_group]]
name = "WEB"
members = ["10.0.0.100 80", "10.0.0.101-102 80"]

[[virtual_server]]
group = "WEB"
scheduler = "rr"
delay_loop = 1

[[virtual_server.real_server]]
address = "10.0.0.20"
port = 80
[virtual_server.real_server.tcp_check]
connect_timeout = 1

[[virtual_server.real_server]]
address = "10.0.0.21"
port = 80
[virtual_server.real_server.tcp_check]
connect_timeout = 1

[[virtual_server]]
address = "10.0.0.110"
port = 80
scheduler = "rr"
lb_kind = "tun"
delay_loop = 1

[[virtual_server.real_server]]
address = "10.0.0.20"

[[virtual_server.real_server]]
address = "10.0.0.21"

# IPVS's wlc; a failed 10.0.0.21 stays at weight 0 (inhibit_on_failure).
[[virtual_server]]
address = "10.0.0.130"
port = 80
scheduler = "wlc"
delay_loop = 1

[[virtual_server.real_server]]
address = "10.0.0.20"
[virtual_server.real_server.tcp_check]
connect_timeout = 1

[[virtual_server.real_server]]
address = "10.0.0.21"
inhibit_on_failure = true
[virtual_server.real_server.tcp_check]
connect_timeout = 1

# What the firewall marks 5 (tcp/80 to 10.0.0.120 and .121).
[[virtual_server]]
fwmark = 5
scheduler = "rr"
delay_loop = 1

[[virtual_server.real_server]]
address = "10.0.0.20"
[virtual_server.real_server.tcp_check]
connect_port = 80
connect_timeout = 1

[[virtual_server.real_server]]
address = "10.0.0.21"
[virtual_server.real_server.tcp_check]
connect_port = 80
connect_timeout = 1
"#;

const GROUP_SCRIPT: &str = r#"
wait_for() { i=0; while [ $i -lt $2 ]; do if eval "$1"; then return 0; fi; sleep 1; i=$((i+1)); done; return 1; }
ipvs() { ip netns exec director ipvsadm -Ln; }
get() { r=$(ip netns exec client sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 $1 80" 2>/dev/null | tail -n 1); case "$r" in rs*) echo "$r";; *) echo FAILED;; esac; }
ip link add br0 type bridge
ip link set br0 up
for h in client:10.0.0.2 director:10.0.0.10 rs1:10.0.0.20 rs2:10.0.0.21; do
  name=${h%%:*}; addr=${h##*:}
  ip netns add $name
  ip link add p-$name type veth peer name eth0 netns $name
  ip link set p-$name master br0 up
  ip -n $name link set lo up
  ip -n $name link set eth0 up
  ip -n $name addr add $addr/24 dev eth0
done
for a in 100 101 102 110 120 121 130; do ip -n director addr add 10.0.0.$a/32 dev eth0; done
# The operator's firewall marks what the fwmark service serves.
ip netns exec director nft add table ip mangle
ip netns exec director nft add chain ip mangle pre '{ type filter hook prerouting priority -150; }'
ip netns exec director nft add rule ip mangle pre ip daddr '{ 10.0.0.120, 10.0.0.121 }' tcp dport 80 meta mark set 5 || echo "RESULT nft=failed"
for r in rs1 rs2; do
  # DR: the group's addresses on lo. Tunnelling: the VIP on the IP-in-IP
  # device, which decapsulates what the director sends.
  for a in 100 101 102 120 121 130; do ip -n $r addr add 10.0.0.$a/32 dev lo; done
  ip netns exec $r sh -c 'for i in all eth0; do echo 1 > /proc/sys/net/ipv4/conf/$i/arp_ignore; echo 2 > /proc/sys/net/ipv4/conf/$i/arp_announce; done'
  ip -n $r link set tunl0 up
  ip -n $r addr add 10.0.0.110/32 dev tunl0
  ip netns exec $r sh -c 'for i in all tunl0; do echo 0 > /proc/sys/net/ipv4/conf/$i/rp_filter; done'
  mkdir -p /www/$r
  echo $r > /www/$r/index.html
  /sbin/ip netns exec $r httpd -f -p 80 -h /www/$r &
  echo $! > /tmp/$r.pid
done
# The migration guide's "keep dataplane = ipvs": keepalived's service for
# a VIP of the config is still in IPVS (another scheduler, a real server
# the config does not have, another weight): the director takes it over.
ip netns exec director ipvsadm -A -t 10.0.0.100:80 -s wlc
ip netns exec director ipvsadm -a -t 10.0.0.100:80 -r 10.0.0.20 -g -w 5
ip netns exec director ipvsadm -a -t 10.0.0.100:80 -r 10.0.0.99 -g -w 1
/sbin/ip netns exec director /director run --config /etc/director.toml > /tmp/d.log 2>&1 &
echo $! > /tmp/d.pid
wait_for "[ \$(ipvs | grep -c 'Route') -ge 10 ] && [ \$(ipvs | grep -c 'Tunnel') -ge 2 ]" 90 || echo "RESULT start=timeout"
echo BEGIN ipvsadm; ipvs; echo END ipvsadm
for a in 100 101 102 110 120 121 130; do
  echo BEGIN req$a; for i in 1 2 3 4; do get 10.0.0.$a; done; echo END req$a
done
# A service the daemon did not make (the operator's, or keepalived's while
# migrating): a reload, a health change, a stop and a flush leave it be.
ip netns exec director ipvsadm -A -t 10.0.0.200:80 -s rr
ip netns exec director ipvsadm -a -t 10.0.0.200:80 -r 10.0.0.20 -g
ip netns exec director /director reload --config /etc/director.toml > /dev/null
kill $(cat /tmp/rs2.pid)
# rs2 fails its checks: it leaves every service but the wlc one, where it
# stays at weight 0.
wait_for "! ipvs | grep -A2 '10.0.0.100:80' | grep -q 10.0.0.21" 60 || echo "RESULT health=timeout"
inhibited() { ipvs | awk '/^(TCP|UDP|FWM)/ { s = $2 } s == "10.0.0.130:80" && /10.0.0.21:80/ { print $3 "/" $4 }'; }
wait_for "[ \"\$(inhibited)\" = Route/0 ]" 30
echo "RESULT inhibited=$(inhibited)"
echo BEGIN ipvsadm_failed; ipvs; echo END ipvsadm_failed
echo BEGIN req130b; for i in 1 2 3 4; do get 10.0.0.130; done; echo END req130b
kill $(cat /tmp/d.pid)
wait_for "! kill -0 $(cat /tmp/d.pid) 2>/dev/null" 30
ip netns exec director /director flush --config /etc/director.toml > /dev/null
echo BEGIN ipvsadm_flushed; ipvs; echo END ipvsadm_flushed
echo BEGIN dlog; tail -n 30 /tmp/d.log; echo END dlog
"#;

/// With IPVS, a group's members are one IPVS service each (rr across the
/// same real servers), and `lb_kind = "tun"` makes IP-in-IP destinations
/// that real servers decapsulate; a `fwmark` service serves what the
/// firewall marks: requests to every member, to the tunnelled service and
/// to both marked addresses are served by both real servers. A `wlc`
/// service keeps a failed `inhibit_on_failure` server at weight 0; an IPVS
/// service the daemon did not make survives its reload, health changes and
/// `director flush`, unless the config has its address (keepalived's
/// leftover, as the migration guide's `dataplane = "ipvs"` step leaves it):
/// that one is taken over and made what the config says.
#[test]
fn ipvs_groups_and_tunnelling_in_a_vm() -> Result<()> {
    let director = director_bin()?;
    let out = vm::run(
        &VmSpec {
            director: &director,
            available: &[
                "veth",
                "bridge",
                "crc32c_generic",
                "ip_vs",
                "ip_vs_rr",
                "ip_vs_wlc",
                "tunnel4",
                "ip_tunnel",
                "ipip",
                "nf_tables",
            ],
            boot_modules: &[
                "veth",
                "bridge",
                "crc32c_generic",
                "tunnel4",
                "ip_tunnel",
                "ipip",
                "nf_tables",
            ],
            script: GROUP_SCRIPT,
            files: &[("/etc/director.toml", GROUP_CONFIG.to_string())],
            programs: &["/usr/sbin/nft"],
        },
        Duration::from_secs(300),
    )?;
    let results = vm::results(&out);
    ensure!(
        !results
            .iter()
            .any(|(k, _)| k == "modprobe_failed" || k == "start" || k == "nft"),
        "{out}"
    );
    let table = vm::section(&out, "ipvsadm");
    for svc in [
        "10.0.0.100:80 rr",
        "10.0.0.101:80 rr",
        "10.0.0.102:80 rr",
        "10.0.0.110:80 rr",
        "10.0.0.130:80 wlc",
    ] {
        ensure!(table.contains(&format!("TCP  {svc}")), "{svc}: {table}");
    }
    ensure!(table.contains("FWM  5 rr"), "{table}");
    ensure!(table.matches("Route").count() == 10, "{table}");
    // keepalived's leftover service for 10.0.0.100:80 was taken over: the
    // config's scheduler, servers and weights, nothing of the old.
    let taken: Vec<&str> = table
        .lines()
        .skip_while(|l| !l.starts_with("TCP  10.0.0.100:80 "))
        .skip(1)
        .take_while(|l| l.trim_start().starts_with("->"))
        .collect();
    ensure!(
        taken.len() == 2
            && taken
                .iter()
                .all(|l| l.split_whitespace().nth(3) == Some("1"))
            && !table.contains("10.0.0.99"),
        "keepalived's service was not taken over: {taken:?}\n{table}"
    );
    ensure!(table.matches("Tunnel").count() == 2, "{table}");
    for a in [100, 101, 102, 110, 120, 121, 130] {
        let r = vm::section(&out, &format!("req{a}"));
        ensure!(
            !r.contains("FAILED") && r.contains("rs1") && r.contains("rs2"),
            "10.0.0.{a}: {r}\n{}",
            vm::section(&out, "dlog")
        );
    }
    // inhibit_on_failure: the failed server stays in the wlc service at
    // weight 0 (and left the others); the service serves from rs1 alone.
    let failed = vm::section(&out, "ipvsadm_failed");
    ensure!(
        results.iter().all(|(k, _)| k != "health"),
        "rs2 never left the pool:\n{failed}"
    );
    ensure!(
        results
            .iter()
            .any(|(k, v)| k == "inhibited" && v == "Route/0"),
        "the inhibited server: {results:?}\n{failed}"
    );
    let r = vm::section(&out, "req130b");
    ensure!(!r.contains("FAILED") && !r.contains("rs2"), "{r}");
    // The foreign service lived through the reload, the health change and
    // the flush, untouched.
    for t in [&failed, &vm::section(&out, "ipvsadm_flushed")] {
        ensure!(
            t.contains("TCP  10.0.0.200:80 rr") && t.contains("-> 10.0.0.20:80"),
            "the foreign service was touched:\n{t}"
        );
    }
    let flushed = vm::section(&out, "ipvsadm_flushed");
    ensure!(
        flushed.matches("TCP ").count() == 1,
        "flush left the daemon's services:\n{flushed}"
    );
    Ok(())
}
