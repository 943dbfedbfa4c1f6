//! What a reload checks before it touches a running instance: everything
//! the start of a new or changed instance needs from this host (its
//! interface, its heartbeat interfaces, a source address it can bind),
//! so that a config that cannot start is refused while every instance
//! still runs as it was (no priority-0 advert, no address removed, no
//! notification).

use super::*;

/// Checks that `inst` could start here: its interfaces exist and its
/// source addresses are this host's. A refusal names the key at fault.
pub(super) async fn preflight(inst: &VrrpInstance, iface: &str) -> Result<(), VrrpError> {
    check(inst, iface)
        .await
        .map_err(|(key, source)| VrrpError::Refused {
            instance: inst.name.clone(),
            key,
            source: Box::new(source),
        })
}

async fn check(inst: &VrrpInstance, iface: &str) -> Result<(), (&'static str, VrrpError)> {
    let name = &inst.name;
    let src_key = if inst.unicast_src_ip.is_some() {
        "unicast_src_ip"
    } else {
        "interface"
    };
    let link_err = |source| VrrpError::Link {
        name: name.clone(),
        source,
    };
    let net_err = |source| VrrpError::Net {
        name: name.clone(),
        source,
    };
    let v6 = inst.is_ipv6();
    let links = Neighbors::open(iface)
        .await
        .map_err(|e| ("interface", link_err(e)))?;
    let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| {
        (
            "interface",
            VrrpError::Net {
                name: name.clone(),
                source: NetError::Io {
                    what: "netlink".into(),
                    source: e,
                },
            },
        )
    })?;
    let connection = tokio::spawn(connection);
    let result = async {
        source_usable(&handle, inst.unicast_src_ip, links.link().index, iface, v6)
            .await
            .map_err(|e| (src_key, net_err(e)))?
            .ok_or_else(|| (src_key, VrrpError::NoSource(name.clone())))?;
        for h in &inst.heartbeat {
            let hb = Neighbors::open(&h.interface)
                .await
                .map_err(|e| ("heartbeat", link_err(e)))?;
            source_usable(&handle, h.unicast_src_ip, hb.link().index, &h.interface, v6)
                .await
                .map_err(|e| ("heartbeat", net_err(e)))?
                .ok_or_else(|| {
                    (
                        "heartbeat",
                        VrrpError::NoSource(format!("{name} (heartbeat {})", h.interface)),
                    )
                })?;
        }
        Ok(())
    }
    .await;
    connection.abort();
    result
}

/// The source address an instance would send from on `ifindex`: the
/// configured one, checked to be bindable here, or the interface's primary
/// address (`None`: it has none).
async fn source_usable(
    handle: &rtnetlink::Handle,
    configured: Option<IpAddr>,
    ifindex: u32,
    iface: &str,
    v6: bool,
) -> Result<Option<IpAddr>, NetError> {
    let Some(src) = configured else {
        return net::primary_address(handle, ifindex, v6).await;
    };
    let addr = match src {
        IpAddr::V6(a) => std::net::SocketAddr::V6(std::net::SocketAddrV6::new(
            a,
            0,
            0,
            if a.is_unicast_link_local() {
                ifindex
            } else {
                0
            },
        )),
        IpAddr::V4(_) => std::net::SocketAddr::new(src, 0),
    };
    // A bind to a port of our choosing, released at once: it fails with
    // EADDRNOTAVAIL unless the address is this host's (a tentative IPv6
    // address still in DAD is waited for by the start itself).
    match std::net::UdpSocket::bind(addr) {
        Ok(_) => Ok(Some(src)),
        Err(e)
            if v6
                && e.raw_os_error() == Some(libc::EADDRNOTAVAIL)
                && net::has_address(handle, ifindex, src).await? =>
        {
            Ok(Some(src))
        }
        Err(source) => Err(NetError::Io {
            what: format!("unicast_src_ip {src} on {iface} (not an address of this host)"),
            source,
        }),
    }
}
