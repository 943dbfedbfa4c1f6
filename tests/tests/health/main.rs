//! Health checks in the lab: a real server whose HTTP server dies leaves
//! the pool, comes back after `rise` successes; losing quorum switches the
//! service to the sorry server; status reports health.

mod checkers;
mod pool;
mod quorum;
mod ramp;

use self::checkers::*;

use std::{net::SocketAddr, time::Duration};

use anyhow::{Result, ensure};
use director_tests::{Lab, http, lab::VIP};

fn served_by(lab: &Lab, n: usize) -> Result<std::collections::BTreeMap<String, usize>> {
    let vip = SocketAddr::from((VIP, 80));
    let t = lab
        .client
        .run(move || http::hammer(vip, n, Duration::from_secs(2)))?;
    ensure!(t.failed == 0, "requests failed: {t:?}");
    Ok(t.by_body)
}

fn rs_healthy(s: &serde_json::Value, i: usize) -> Option<bool> {
    s["virtual_servers"][0]["real_servers"][i]["healthy"].as_bool()
}

/// Director `director`'s checks are dropped on their way out (a firewall
/// rule on the director: `delete table inet lab` lifts it); the clients'
/// traffic, forwarded by XDP, is not.
pub(crate) fn cut_the_checkers_path(lab: &Lab, director: usize) -> Result<()> {
    for args in [
        "add table inet lab",
        "add chain inet lab out { type filter hook output priority 0 ; }",
        "add rule inet lab out tcp dport 80 drop",
    ] {
        lab.directors[director].ns.exec("nft", &[args])?;
    }
    Ok(())
}
