//! Where an instance meets the host, behind one small trait: its sockets
//! (adverts out and in, on its interface and each heartbeat path), the
//! announcer (gratuitous ARP, unsolicited NA), netlink (virtual addresses,
//! routes and rules, the virtual-MAC interface) and the interfaces it
//! follows or tracks. [`Net`] is the real one; the replay tests
//! (`replay.rs`) put a recorder in its place and drive whole instances -
//! receive checks, tracking, the takeover and its order - without root.
//!
//! Only the host's side is behind it: every decision (what to send, when,
//! in which order, what a tracked item is worth) stays in the runner.

use std::net::{Ipv4Addr, Ipv6Addr};

use futures::future::BoxFuture;

use crate::config::VirtualAddress;

use super::*;

/// What an instance asks of the host. Paths: `None` is the instance's own
/// socket, `Some(i)` its `i`th heartbeat path.
pub(super) trait Host: Send + Sync {
    /// The instance's interface, by name.
    fn iface(&self) -> &str;
    /// Its index (as it follows a re-created interface).
    fn ifindex(&self) -> u32;
    /// Where the virtual addresses go: the virtual-MAC interface, or ours.
    fn address_ifindex(&self) -> u32;
    /// The address adverts leave from on the instance's own socket.
    fn source(&self) -> IpAddr;
    /// The address adverts leave from on heartbeat path `i` (`None`: no
    /// such path).
    fn path_source(&self, i: usize) -> Option<IpAddr>;
    /// The number of heartbeat paths.
    fn paths(&self) -> usize;
    fn send(&self, path: Option<usize>, dst: IpAddr, message: &[u8]) -> Result<(), NetError>;
    /// The next advert from any of the instance's sockets.
    fn recv(&self) -> BoxFuture<'_, (Option<usize>, Result<Received, NetError>)>;
    /// An advert already queued on `path`, without waiting.
    fn try_recv(&self, path: Option<usize>) -> Result<Option<Received>, NetError>;
    /// One gratuitous ARP per address.
    fn garps(&self, vips: &[Ipv4Addr]) -> Result<(), NetError>;
    /// One unsolicited neighbour advertisement per address.
    fn nas(&self, vips: &[Ipv6Addr]) -> Result<(), NetError>;
    fn add_address(&self, a: VirtualAddress) -> BoxFuture<'_, Result<(), NetError>>;
    fn remove_address(&self, a: VirtualAddress) -> BoxFuture<'_, Result<(), NetError>>;
    fn add_route<'a>(
        &'a self,
        r: &'a routes::VirtualRoute,
        ifindex: Option<u32>,
    ) -> BoxFuture<'a, Result<(), rtnetlink::Error>>;
    fn delete_route<'a>(
        &'a self,
        r: &'a routes::VirtualRoute,
        ifindex: Option<u32>,
    ) -> BoxFuture<'a, Result<(), rtnetlink::Error>>;
    fn add_rule<'a>(
        &'a self,
        r: &'a routes::VirtualRule,
    ) -> BoxFuture<'a, Result<(), rtnetlink::Error>>;
    fn delete_rule<'a>(
        &'a self,
        r: &'a routes::VirtualRule,
    ) -> BoxFuture<'a, Result<(), rtnetlink::Error>>;
    /// An interface's index by name (a route's `dev`).
    fn ifindex_of(&self, name: &str) -> Option<u32>;
    /// An interface's operational state as `/sys/class/net/*/operstate`
    /// gives it (`track_interface`); empty when it does not exist.
    fn operstate(&self, name: &str) -> String;
    /// The virtual-MAC interface up or down (nothing without one).
    fn vmac_link(&self, up: bool) -> BoxFuture<'_, Result<(), NetError>>;
    /// The virtual-MAC interface removed (nothing without one).
    fn remove_vmac(&self) -> BoxFuture<'_, Result<(), NetError>>;
    /// Looks the instance's interface up and follows it when it was
    /// re-created or its MAC changed (the sockets and the announcer are
    /// opened again).
    fn follow<'a>(&'a mut self, cfg: &'a VrrpInstance) -> BoxFuture<'a, Followed>;
}

/// What [`Host::follow`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Followed {
    /// The interface is there, up or not; `moved`: it was re-created or
    /// its MAC changed, and the instance now follows it (a master puts its
    /// addresses back and announces the new MAC).
    Present { up: bool, moved: bool },
    /// Deleted: down until it is back.
    Gone,
    /// It could not be looked up (tried again at the next tick).
    Unknown,
}

/// One extra heartbeat path's socket.
pub(super) struct HbPath {
    pub(super) socket: VrrpSocket,
    pub(super) _link: Neighbors,
}

/// The real host: raw sockets, a packet socket, netlink.
pub(super) struct Net {
    /// The instance's interface, followed when it is re-created or its MAC
    /// changes.
    pub(super) iface: String,
    pub(super) ifindex: u32,
    pub(super) handle: rtnetlink::Handle,
    pub(super) links: Neighbors,
    pub(super) socket: VrrpSocket,
    pub(super) announcer: net::Announcer,
    /// The virtual-MAC interface (`use_vmac`): name and index.
    pub(super) vmac: Option<(String, u32)>,
    /// The virtual-MAC interface follows the link state (IPv6 only, see
    /// [`net::create_vmac`]).
    pub(super) vmac_follows_state: bool,
    /// Extra heartbeat paths (`heartbeat`), in the config's order.
    pub(super) paths: Vec<HbPath>,
}

impl Net {
    fn socket(&self, path: Option<usize>) -> Option<&VrrpSocket> {
        match path {
            None => Some(&self.socket),
            Some(i) => self.paths.get(i).map(|p| &p.socket),
        }
    }
}

impl Host for Net {
    fn iface(&self) -> &str {
        &self.iface
    }

    fn ifindex(&self) -> u32 {
        self.ifindex
    }

    fn address_ifindex(&self) -> u32 {
        self.vmac.as_ref().map_or(self.ifindex, |(_, i)| *i)
    }

    fn source(&self) -> IpAddr {
        self.socket.source()
    }

    fn path_source(&self, i: usize) -> Option<IpAddr> {
        self.paths.get(i).map(|p| p.socket.source())
    }

    fn paths(&self) -> usize {
        self.paths.len()
    }

    fn send(&self, path: Option<usize>, dst: IpAddr, message: &[u8]) -> Result<(), NetError> {
        match self.socket(path) {
            Some(s) => s.send(dst, message),
            None => Ok(()),
        }
    }

    fn recv(&self) -> BoxFuture<'_, (Option<usize>, Result<Received, NetError>)> {
        Box::pin(async move {
            tokio::select! {
                biased;
                r = self.socket.recv() => (None, r),
                (i, r) = recv_paths(&self.paths) => (Some(i), r),
            }
        })
    }

    fn try_recv(&self, path: Option<usize>) -> Result<Option<Received>, NetError> {
        match self.socket(path) {
            Some(s) => s.try_recv(),
            None => Ok(None),
        }
    }

    fn garps(&self, vips: &[Ipv4Addr]) -> Result<(), NetError> {
        self.announcer.garps(vips)
    }

    fn nas(&self, vips: &[Ipv6Addr]) -> Result<(), NetError> {
        self.announcer.nas(vips)
    }

    fn add_address(&self, a: VirtualAddress) -> BoxFuture<'_, Result<(), NetError>> {
        Box::pin(net::add_address(&self.handle, self.address_ifindex(), a))
    }

    fn remove_address(&self, a: VirtualAddress) -> BoxFuture<'_, Result<(), NetError>> {
        Box::pin(net::remove_address(&self.handle, self.address_ifindex(), a))
    }

    fn add_route<'a>(
        &'a self,
        r: &'a routes::VirtualRoute,
        ifindex: Option<u32>,
    ) -> BoxFuture<'a, Result<(), rtnetlink::Error>> {
        Box::pin(routes::add_route(&self.handle, r, ifindex))
    }

    fn delete_route<'a>(
        &'a self,
        r: &'a routes::VirtualRoute,
        ifindex: Option<u32>,
    ) -> BoxFuture<'a, Result<(), rtnetlink::Error>> {
        Box::pin(routes::delete_route(&self.handle, r, ifindex))
    }

    fn add_rule<'a>(
        &'a self,
        r: &'a routes::VirtualRule,
    ) -> BoxFuture<'a, Result<(), rtnetlink::Error>> {
        Box::pin(routes::add_rule(&self.handle, r))
    }

    fn delete_rule<'a>(
        &'a self,
        r: &'a routes::VirtualRule,
    ) -> BoxFuture<'a, Result<(), rtnetlink::Error>> {
        Box::pin(routes::delete_rule(&self.handle, r))
    }

    fn ifindex_of(&self, name: &str) -> Option<u32> {
        std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    fn operstate(&self, name: &str) -> String {
        std::fs::read_to_string(format!("/sys/class/net/{name}/operstate")).unwrap_or_default()
    }

    fn vmac_link(&self, up: bool) -> BoxFuture<'_, Result<(), NetError>> {
        Box::pin(async move {
            match &self.vmac {
                Some((_, index)) if self.vmac_follows_state => {
                    net::set_link(&self.handle, *index, up).await
                }
                _ => Ok(()),
            }
        })
    }

    fn remove_vmac(&self) -> BoxFuture<'_, Result<(), NetError>> {
        Box::pin(async move {
            match &self.vmac {
                Some((name, _)) => net::delete_vmac(&self.handle, name).await,
                None => Ok(()),
            }
        })
    }

    fn follow<'a>(&'a mut self, cfg: &'a VrrpInstance) -> BoxFuture<'a, Followed> {
        Box::pin(self.follow_link(cfg))
    }
}

impl Net {
    /// [`Host::follow`]: a new index re-creates the virtual-MAC interface
    /// and reopens the socket; a new index or MAC reopens the announcer.
    /// Any step that fails leaves the old link recorded, so the next tick
    /// tries again.
    async fn follow_link(&mut self, cfg: &VrrpInstance) -> Followed {
        let old = self.links.link();
        let (now, up) = match self.links.lookup_state(&self.iface).await {
            Ok(Some(found)) => found,
            Ok(None) => return Followed::Gone,
            Err(_) => return Followed::Unknown,
        };
        let stay = Followed::Present { up, moved: false };
        if now == old {
            return stay;
        }
        let name = &cfg.name;
        if now.index != old.index {
            // A virtual-MAC interface went with the old one.
            if let Some((vname, _)) = self.vmac.clone() {
                let mac = crate::net::neighbor::Mac(cfg.vmac());
                match net::create_vmac(&self.handle, &vname, now.index, mac, cfg.is_ipv6()).await {
                    Ok(i) => self.vmac = Some((vname, i)),
                    Err(e) => {
                        debug!(instance = %name, error = %e, "virtual MAC interface not re-created yet");
                        return stay;
                    }
                }
            }
            let multicast = cfg.unicast_peer.is_empty();
            let socket = match &self.vmac {
                Some((n, i)) if cfg.adverts_from_vmac() => {
                    VrrpSocket::open_on_device(n, *i, self.socket.source(), multicast)
                }
                _ => VrrpSocket::open(&self.iface, now.index, self.socket.source(), multicast),
            };
            match socket {
                Ok(s) => self.socket = s,
                Err(e) => {
                    // For example our address is not on the new interface
                    // yet: the next tick tries again.
                    debug!(instance = %name, error = %e, "VRRP socket not reopened yet");
                    return stay;
                }
            }
        }
        let announcer = match &self.vmac {
            Some((vname, index)) => net::Announcer::open(
                vname,
                *index,
                crate::net::neighbor::Mac(cfg.vmac()),
                cfg.is_ipv6(),
            ),
            None => net::Announcer::open(&self.iface, now.index, now.mac, cfg.is_ipv6()),
        };
        match announcer {
            Ok(a) => self.announcer = a,
            Err(e) => {
                debug!(instance = %name, error = %e, "announcer not reopened yet");
                return stay;
            }
        }
        info!(
            instance = %name,
            interface = %self.iface,
            old_ifindex = old.index,
            ifindex = now.index,
            old_mac = %old.mac,
            mac = %now.mac,
            "VRRP interface changed: following it"
        );
        self.links.set_link(now);
        self.ifindex = now.index;
        Followed::Present { up, moved: true }
    }
}

/// The next advert from any extra path (never, without any).
async fn recv_paths(paths: &[HbPath]) -> (usize, Result<Received, NetError>) {
    if paths.is_empty() {
        return std::future::pending().await;
    }
    let futures = paths
        .iter()
        .enumerate()
        .map(|(i, p)| Box::pin(async move { (i, p.socket.recv().await) }));
    futures::future::select_all(futures).await.0
}
