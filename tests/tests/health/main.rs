//! Health checks in the lab: a real server whose HTTP server dies leaves
//! the pool, comes back after `rise` successes; losing quorum switches the
//! service to the sorry server; status reports health.

mod checkers;
mod pool;
mod quorum;

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
