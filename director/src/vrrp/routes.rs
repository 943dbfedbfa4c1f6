//! `virtual_routes` and `virtual_rules`: routes and policy rules that go
//! with the virtual addresses (added on becoming MASTER, removed on leaving
//! it). Parsed at load (`crate::config::routes`); here they become netlink
//! messages.

use std::net::IpAddr;

use netlink_packet_route::{
    AddressFamily,
    route::{RouteMessage, RouteProtocol, RouteScope, RouteType},
    rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage},
};
use rtnetlink::RouteMessageBuilder;

pub use crate::config::routes::*;

impl VirtualRoute {
    /// The route message to add (with NLM_F_REPLACE) and delete it with;
    /// `ifindex` is the `dev`'s index (or the instance's interface).
    pub fn message(&self, ifindex: Option<u32>) -> RouteMessage {
        let mut b = RouteMessageBuilder::<IpAddr>::new();
        // (The builder's errors are family mismatches, excluded at parse.)
        if let Ok(n) = b.clone().destination_prefix(self.to.address, self.to.len) {
            b = n;
        }
        if let Some(v) = self.via
            && let Ok(n) = b.clone().gateway(v)
        {
            b = n;
        }
        if let Some(s) = self.src
            && let Ok(n) = b.clone().pref_source(s)
        {
            b = n;
        }
        if self.kind == RouteKind::Unicast
            && let Some(i) = ifindex
        {
            b = b.output_interface(i);
        }
        if let Some(t) = self.table {
            b = b.table_id(t);
        }
        if let Some(m) = self.metric {
            b = b.priority(m);
        }
        if let Some(p) = self.protocol {
            b = b.protocol(RouteProtocol::from(p));
        }
        let scope = match (self.scope, self.kind, self.via) {
            (Some(s), _, _) => RouteScope::from(s),
            // As `ip route`: a unicast route without a gateway is on-link.
            (None, RouteKind::Unicast, None) => RouteScope::Link,
            _ => RouteScope::Universe,
        };
        b = b.scope(scope);
        b = b.kind(match self.kind {
            RouteKind::Unicast => RouteType::Unicast,
            RouteKind::Blackhole => RouteType::BlackHole,
            RouteKind::Unreachable => RouteType::Unreachable,
            RouteKind::Prohibit => RouteType::Prohibit,
            RouteKind::Throw => RouteType::Throw,
        });
        if self.onlink {
            b = b.onlink();
        }
        b.build()
    }
}

impl VirtualRule {
    /// The rule message to add and delete it with.
    pub fn message(&self) -> RuleMessage {
        let mut m = RuleMessage::default();
        m.header.family = if self.v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        if let Some(p) = self.from {
            m.header.src_len = p.len;
            m.attributes.push(RuleAttribute::Source(p.address));
        }
        if let Some(p) = self.to {
            m.header.dst_len = p.len;
            m.attributes.push(RuleAttribute::Destination(p.address));
        }
        if let Some(i) = &self.iif {
            m.attributes.push(RuleAttribute::Iifname(i.clone()));
        }
        if let Some(i) = &self.oif {
            m.attributes.push(RuleAttribute::Oifname(i.clone()));
        }
        if let Some((mark, mask)) = self.fwmark {
            m.attributes.push(RuleAttribute::FwMark(mark));
            if let Some(k) = mask {
                m.attributes.push(RuleAttribute::FwMask(k));
            }
        }
        if let Some(t) = self.tos {
            m.header.tos = t;
        }
        if let Some(p) = self.priority {
            m.attributes.push(RuleAttribute::Priority(p));
        }
        if self.invert {
            m.header.flags = RuleFlags::Invert;
        }
        m.header.action = match self.action {
            RuleKind::Table(t) => {
                if t < 256 {
                    m.header.table = t as u8;
                } else {
                    m.attributes.push(RuleAttribute::Table(t));
                }
                RuleAction::ToTable
            }
            RuleKind::Goto(p) => {
                m.attributes.push(RuleAttribute::Goto(p));
                RuleAction::Goto
            }
            RuleKind::Blackhole => RuleAction::Blackhole,
            RuleKind::Unreachable => RuleAction::Unreachable,
            RuleKind::Prohibit => RuleAction::Prohibit,
        };
        m
    }
}

/// Adds a route (replacing one with the same key).
pub async fn add_route(
    handle: &rtnetlink::Handle,
    route: &VirtualRoute,
    ifindex: Option<u32>,
) -> Result<(), rtnetlink::Error> {
    handle
        .route()
        .add(route.message(ifindex))
        .replace()
        .execute()
        .await
}

/// Deletes a route; one already gone is fine.
pub async fn delete_route(
    handle: &rtnetlink::Handle,
    route: &VirtualRoute,
    ifindex: Option<u32>,
) -> Result<(), rtnetlink::Error> {
    match handle.route().del(route.message(ifindex)).execute().await {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
        r => r,
    }
}

/// Adds a rule; one already there is fine.
pub async fn add_rule(
    handle: &rtnetlink::Handle,
    rule: &VirtualRule,
) -> Result<(), rtnetlink::Error> {
    let mut req = handle.rule().add();
    *req.message_mut() = rule.message();
    match req.execute().await {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
        r => r,
    }
}

/// Deletes a rule; one already gone is fine.
pub async fn delete_rule(
    handle: &rtnetlink::Handle,
    rule: &VirtualRule,
) -> Result<(), rtnetlink::Error> {
    match handle.rule().del(rule.message()).execute().await {
        Err(rtnetlink::Error::NetlinkError(e))
            if e.raw_code() == -libc::ENOENT || e.raw_code() == -libc::ESRCH =>
        {
            Ok(())
        }
        r => r,
    }
}
