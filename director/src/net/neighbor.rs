//! Real-server MAC addresses from the kernel's neighbour table, over
//! rtnetlink. Direct routing only needs the next-hop MAC of each real
//! server, and the kernel already knows how to find it (ARP / ND): we read
//! its table, and ask it to resolve what is missing.

use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

use futures::TryStreamExt as _;
use netlink_packet_route::{
    link::LinkAttribute,
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState},
};

/// Errors talking to the kernel about links and neighbours.
#[derive(Debug, thiserror::Error)]
pub enum NeighborError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("interface {0} not found")]
    NoInterface(String),
    #[error("interface {0} has no Ethernet address")]
    NoMac(String),
    #[error("netlink request failed: {0}")]
    Netlink(#[from] rtnetlink::Error),
}

/// An Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What the kernel knows about one neighbour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Neighbor {
    /// Resolved (reachable, stale, being re-probed, or static).
    Resolved(Mac),
    /// Resolution is under way.
    Incomplete,
    /// Resolution failed: the host did not answer.
    Failed,
}

/// Link facts needed by the dataplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub mac: Mac,
    /// The interface's MTU (what a tunnelled packet must fit in).
    pub mtu: u32,
}

/// A handle on the kernel's neighbour table for one interface.
pub struct Neighbors {
    handle: rtnetlink::Handle,
    link: LinkInfo,
    /// The interface index the event stream filters on (it follows
    /// [`Neighbors::set_link`]).
    index: Arc<AtomicU32>,
    _connection: tokio::task::JoinHandle<()>,
}

impl Drop for Neighbors {
    fn drop(&mut self) {
        self._connection.abort();
    }
}

impl Neighbors {
    /// Opens a netlink connection and looks up `interface`.
    pub async fn open(interface: &str) -> Result<Neighbors, NeighborError> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        let connection = tokio::spawn(connection);
        let (link, _) = lookup(&handle, interface)
            .await?
            .ok_or_else(|| NeighborError::NoInterface(interface.to_string()))?;
        Ok(Neighbors {
            handle,
            index: Arc::new(AtomicU32::new(link.index)),
            link,
            _connection: connection,
        })
    }

    /// The interface named `interface` now (`None` when there is none).
    pub async fn lookup(&self, interface: &str) -> Result<Option<LinkInfo>, NeighborError> {
        Ok(lookup(&self.handle, interface).await?.map(|(l, _)| l))
    }

    /// [`Neighbors::lookup`], and whether the link is up and running
    /// (administratively up, with carrier).
    pub async fn lookup_state(
        &self,
        interface: &str,
    ) -> Result<Option<(LinkInfo, bool)>, NeighborError> {
        lookup(&self.handle, interface).await
    }

    /// Follows the interface to a new index or MAC (re-created, renamed,
    /// address changed).
    pub fn set_link(&mut self, link: LinkInfo) {
        self.link = link;
        self.index.store(link.index, Ordering::Relaxed);
    }

    /// A stream that yields whenever any link is added, changed or deleted
    /// (RTNLGRP_LINK events): the caller looks its interface up again.
    pub fn link_events(
        &self,
    ) -> Result<impl futures::Stream<Item = ()> + Unpin + use<>, NeighborError> {
        use futures::StreamExt as _;
        use netlink_packet_core::NetlinkPayload;
        use netlink_packet_route::RouteNetlinkMessage;
        let (connection, _handle, messages) =
            rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Link])?;
        tokio::spawn(connection);
        Ok(Box::pin(messages.filter_map(|(msg, _)| async move {
            match msg.payload {
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_),
                ) => Some(()),
                _ => None,
            }
        })))
    }

    /// The interface's index and MAC.
    pub fn link(&self) -> LinkInfo {
        self.link
    }

    /// Every neighbour the kernel has on our interface.
    pub async fn dump(&self) -> Result<HashMap<IpAddr, Neighbor>, NeighborError> {
        let mut out = HashMap::new();
        let mut stream = self.handle.neighbours().get().execute();
        while let Some(msg) = stream.try_next().await? {
            if msg.header.ifindex != self.link.index {
                continue;
            }
            if let Some((addr, n)) = entry(&msg) {
                out.insert(addr, n);
            }
        }
        Ok(out)
    }

    /// A stream that yields whenever the kernel's neighbour table changes
    /// for our interface (RTNLGRP_NEIGH events), or a route changes.
    pub fn events(&self) -> Result<impl futures::Stream<Item = ()> + Unpin + use<>, NeighborError> {
        use futures::StreamExt as _;
        use netlink_packet_core::NetlinkPayload;
        use netlink_packet_route::RouteNetlinkMessage;
        let (connection, _handle, messages) = rtnetlink::new_multicast_connection(&[
            rtnetlink::MulticastGroup::Neigh,
            rtnetlink::MulticastGroup::Ipv4Route,
            rtnetlink::MulticastGroup::Ipv6Route,
        ])?;
        tokio::spawn(connection);
        let index = self.index.clone();
        Ok(Box::pin(messages.filter_map(move |(msg, _)| {
            let index = index.load(Ordering::Relaxed);
            async move {
                match msg.payload {
                    NetlinkPayload::InnerMessage(
                        RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n),
                    ) if n.header.ifindex == index => Some(()),
                    // Routes decide tunnel real servers' next hops.
                    NetlinkPayload::InnerMessage(
                        RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_),
                    ) => Some(()),
                    _ => None,
                }
            }
        })))
    }

    /// Where the kernel sends packets for `addr` (`ip route get`): the
    /// output interface and the gateway (`None`: on link). `None` when
    /// there is no route.
    pub async fn route_to(
        &self,
        addr: IpAddr,
    ) -> Result<Option<(u32, Option<IpAddr>)>, NeighborError> {
        use netlink_packet_route::route::{RouteAddress, RouteAttribute};
        let len = if addr.is_ipv4() { 32 } else { 128 };
        let Ok(b) = rtnetlink::RouteMessageBuilder::<IpAddr>::new().destination_prefix(addr, len)
        else {
            return Ok(None);
        };
        let mut routes = self.handle.route().get(b.build()).execute();
        let route = match routes.try_next().await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            // ENETUNREACH and the like: no route.
            Err(rtnetlink::Error::NetlinkError(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut oif = None;
        let mut gateway = None;
        for a in &route.attributes {
            match a {
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(IpAddr::V4(*g)),
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => gateway = Some(IpAddr::V6(*g)),
                _ => {}
            }
        }
        Ok(oif.map(|i| (i, gateway)))
    }

    /// Asks the kernel to resolve `addr` on our interface (an `NTF_USE`
    /// request: the kernel sends an ARP request or neighbour solicitation
    /// as if it had a packet to send). The answer lands in the table.
    pub async fn solicit(&self, addr: IpAddr) -> Result<(), NeighborError> {
        self.handle
            .neighbours()
            .add(self.link.index, addr)
            .state(NeighbourState::None)
            .flags(NeighbourFlags::Use)
            .replace()
            .execute()
            .await?;
        Ok(())
    }
}

/// Looks `interface` up by name: its index and MAC, and whether it is up
/// and running.
async fn lookup(
    handle: &rtnetlink::Handle,
    interface: &str,
) -> Result<Option<(LinkInfo, bool)>, NeighborError> {
    let mut links = handle
        .link()
        .get()
        .match_name(interface.to_string())
        .execute();
    let link = match links.try_next().await {
        Ok(Some(link)) => link,
        Ok(None) => return Ok(None),
        // The kernel answers ENODEV for an unknown name.
        Err(rtnetlink::Error::NetlinkError(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mac = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(bytes) if bytes.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(bytes);
                Some(Mac(m))
            }
            _ => None,
        })
        .ok_or_else(|| NeighborError::NoMac(interface.to_string()))?;
    let mtu = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(1500);
    use netlink_packet_route::link::LinkFlags;
    let running = link
        .header
        .flags
        .contains(LinkFlags::Up | LinkFlags::Running);
    Ok(Some((
        LinkInfo {
            index: link.header.index,
            mac,
            mtu,
        },
        running,
    )))
}

/// The address and state of one neighbour message (kernel bytes: a
/// missing or odd-sized attribute makes no entry, never a panic).
pub fn entry(
    msg: &netlink_packet_route::neighbour::NeighbourMessage,
) -> Option<(IpAddr, Neighbor)> {
    let mut addr = None;
    let mut mac = None;
    for a in &msg.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                addr = Some(IpAddr::V4(*v4));
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                addr = Some(IpAddr::V6(*v6));
            }
            NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(b);
                mac = Some(Mac(m));
            }
            _ => {}
        }
    }
    Some((addr?, classify(msg.header.state, mac)))
}

/// Maps a kernel neighbour state to what the dataplane may use.
fn classify(state: NeighbourState, mac: Option<Mac>) -> Neighbor {
    match (state, mac) {
        (NeighbourState::Failed, _) => Neighbor::Failed,
        (NeighbourState::Incomplete | NeighbourState::None, _) => Neighbor::Incomplete,
        (
            NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp,
            Some(mac),
        ) if mac != Mac::default() => Neighbor::Resolved(mac),
        _ => Neighbor::Incomplete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_states() {
        let m = Mac([2, 0, 0, 0, 0, 1]);
        assert_eq!(
            classify(NeighbourState::Reachable, Some(m)),
            Neighbor::Resolved(m)
        );
        assert_eq!(
            classify(NeighbourState::Stale, Some(m)),
            Neighbor::Resolved(m)
        );
        assert_eq!(classify(NeighbourState::Failed, Some(m)), Neighbor::Failed);
        assert_eq!(
            classify(NeighbourState::Incomplete, None),
            Neighbor::Incomplete
        );
        assert_eq!(
            classify(NeighbourState::Reachable, None),
            Neighbor::Incomplete
        );
        assert_eq!(
            classify(NeighbourState::Reachable, Some(Mac::default())),
            Neighbor::Incomplete
        );
    }

    #[test]
    fn mac_display() {
        assert_eq!(
            Mac([0x02, 0xab, 0, 1, 0x10, 0xff]).to_string(),
            "02:ab:00:01:10:ff"
        );
    }
}
