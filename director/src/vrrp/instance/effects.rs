//! What the state machine's actions do on the host, in the order the
//! runner performs them: a pure function of the actions and of whether the
//! XDP dataplane serves every virtual address without it, so the takeover
//! order is tested here, without root and without a network.
//!
//! Becoming master (RFC 5798 6.4.1 asks only that the announcement follow
//! the first advert): the advert first; then the virtual MAC is ours (the
//! dataplane takes its frames) and its macvlan up, before anyone is told the
//! addresses moved; when XDP serves every address (each is a
//! `virtual_server` address, forwarded without being local) the
//! announcement comes next and the addresses after it, so clients move a
//! netlink round trip per address sooner; otherwise the kernel must own the
//! addresses first, and the announcement follows them. Giving them up: the
//! announcements stop, the routes go, the virtual MAC is released and its
//! link down before the addresses are removed (they go without a word from
//! the shared MAC).

use super::*;

/// One thing the runner does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Effect {
    SendAdvert(u8),
    /// Frames to the virtual MAC are ours (or no longer).
    OwnVmac(bool),
    /// The virtual-MAC interface up (or down).
    VmacLink(bool),
    /// Gratuitous ARPs / unsolicited NAs now, and the delayed burst and
    /// the refresh timers armed.
    StartAnnouncing,
    /// The delayed burst and the refresh disarmed.
    StopAnnouncing,
    AddAddresses,
    AddRoutes,
    RemoveRoutes,
    RemoveAddresses,
    /// Logs, counters and notifications: a transition, a split brain.
    Report(Action),
}

/// The effects of `actions`, in order; `served_without_addresses`: the XDP
/// dataplane serves every virtual address without it being local.
pub(super) fn effects(actions: &[Action], served_without_addresses: bool) -> Vec<Effect> {
    let announce_early = served_without_addresses
        && actions.contains(&Action::AddAddresses)
        && actions.contains(&Action::Announce);
    let mut announced = false;
    let mut out = Vec::new();
    for action in actions {
        match action {
            Action::SendAdvert(priority) => out.push(Effect::SendAdvert(*priority)),
            Action::AddAddresses => {
                out.extend([Effect::OwnVmac(true), Effect::VmacLink(true)]);
                if announce_early && !announced {
                    out.push(Effect::StartAnnouncing);
                    announced = true;
                }
                out.extend([Effect::AddAddresses, Effect::AddRoutes]);
            }
            Action::Announce if announced => {}
            Action::Announce => {
                out.push(Effect::StartAnnouncing);
                announced = true;
            }
            Action::RemoveAddresses => out.extend([
                Effect::StopAnnouncing,
                Effect::RemoveRoutes,
                Effect::OwnVmac(false),
                Effect::VmacLink(false),
                Effect::RemoveAddresses,
            ]),
            report @ (Action::Transition { .. } | Action::SplitBrain { .. }) => {
                out.push(Effect::Report(report.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::vrrp::fsm::{Event, Params};

    fn backup() -> (Machine, Instant) {
        let mut m = Machine::new(Params {
            version: crate::config::Version::try_from(3).expect("v3"),
            priority: 100,
            advert_interval_cs: 100,
            preempt: true,
            preempt_delay: Duration::ZERO,
            start_as_master: false,
            primary: "10.0.0.10".parse().expect("ip"),
        });
        let t0 = Instant::now();
        m.step(Event::Startup, t0);
        (m, t0)
    }

    fn position(effects: &[Effect], e: &Effect) -> usize {
        effects
            .iter()
            .position(|x| x == e)
            .unwrap_or_else(|| panic!("{e:?} missing from {effects:?}"))
    }

    /// A backup whose master went silent takes over: the advert first,
    /// the virtual MAC ours before any announcement, and with XDP serving
    /// every address the announcement before the addresses; without, after
    /// them. Driven by the real state machine's actions.
    #[test]
    fn a_takeover_advertises_then_owns_the_mac_then_announces_as_the_dataplane_allows() {
        for served in [true, false] {
            let (mut m, t0) = backup();
            let deadline = m.deadline().expect("master-down timer");
            assert!(deadline > t0);
            let actions = m.step(Event::Timer, deadline);
            assert_eq!(m.state(), State::Master);
            let e = effects(&actions, served);
            assert_eq!(e[0], Effect::SendAdvert(100), "{e:?}");
            let own = position(&e, &Effect::OwnVmac(true));
            let link = position(&e, &Effect::VmacLink(true));
            let announce = position(&e, &Effect::StartAnnouncing);
            let add = position(&e, &Effect::AddAddresses);
            assert!(own < link && link < announce, "{e:?}");
            if served {
                assert!(announce < add, "XDP serves them: announce first: {e:?}");
            } else {
                assert!(add < announce, "the kernel must own them first: {e:?}");
            }
            assert_eq!(
                e.iter().filter(|x| **x == Effect::StartAnnouncing).count(),
                1,
                "announced once: {e:?}"
            );
            assert!(e.contains(&Effect::Report(Action::Transition {
                from: State::Backup,
                to: State::Master
            })));
        }
    }

    /// A master that yields to a higher priority gives the addresses up in
    /// order: announcements stop, routes go, the virtual MAC is released
    /// and its link down, then the addresses go; nothing is announced.
    #[test]
    fn yielding_releases_the_mac_before_the_addresses_and_announces_nothing() {
        let (mut m, _) = backup();
        let deadline = m.deadline().expect("timer");
        m.step(Event::Timer, deadline);
        let actions = m.step(
            Event::Advert {
                src: "10.0.0.11".parse().expect("ip"),
                priority: 200,
                interval_cs: 100,
            },
            deadline + Duration::from_millis(10),
        );
        assert_eq!(m.state(), State::Backup);
        let e = effects(&actions, true);
        let order: Vec<usize> = [
            Effect::StopAnnouncing,
            Effect::RemoveRoutes,
            Effect::OwnVmac(false),
            Effect::VmacLink(false),
            Effect::RemoveAddresses,
        ]
        .iter()
        .map(|x| position(&e, x))
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{e:?}");
        assert!(!e.contains(&Effect::StartAnnouncing), "{e:?}");
        assert!(
            !e.iter().any(|x| matches!(x, Effect::SendAdvert(_))),
            "{e:?}"
        );
    }
}
