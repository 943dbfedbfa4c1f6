//! `global.flow_table_size`: the XDP flow table the kernel holds has the
//! configured size (read back with bpftool from the pinned map), the
//! status reports it and its memory, and a daemon restarted with another
//! size re-creates the table at that size (saying so) and keeps serving.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use director_tests::{Lab, http, lab::VIP, scenario};
use nix::sys::signal::Signal;

/// `max_entries` of the pinned flow table, from bpftool.
fn pinned_flows(pin_dir: &str) -> Result<u64> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(format!("{pin_dir}/FLOWS"))
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stderr).to_string())?;
    v["max_entries"].as_u64().context("max_entries")
}

/// A lab of one director and two real servers: the lab, the director's
/// state directory, the servers' addresses.
fn one_director() -> Result<(Lab, std::path::PathBuf, Vec<String>)> {
    let lab = Lab::one_director(2)?;
    let state = lab.state_dir("director1")?;
    let servers = lab.real_servers.iter().map(|r| r.ip.to_string()).collect();
    Ok((lab, state, servers))
}

#[test]
fn the_flow_table_has_the_configured_size_and_follows_a_change() -> Result<()> {
    let (lab, state, servers) = one_director()?;
    let base = scenario::http_config(&lab, "director1", &servers)?;
    let sized = |n: u32| {
        base.replacen(
            "[global]\n",
            &format!("[global]\nflow_table_size = {n}\n"),
            1,
        )
    };
    let path = lab.write("d.toml", &sized(4096))?;
    let mut d = scenario::spawn_director(&lab, 0, &path)?;
    let s = scenario::wait_status(&state, Duration::from_secs(10), scenario::all_resolved)?;
    let pin_dir = s["pin_dir"].as_str().context("pin_dir")?.to_string();
    ensure!(pinned_flows(&pin_dir)? == 4096);
    ensure!(
        s["flow_table_size"] == 4096
            && s["flow_table_memory_bytes"]
                .as_u64()
                .is_some_and(|b| b > 4096 * 64),
        "{s}"
    );
    let vip = std::net::SocketAddr::from((VIP, 80));
    let t = lab
        .client
        .run(move || http::hammer(vip, 10, Duration::from_secs(2)))?;
    ensure!(t.ok == 10, "{t:?}");

    // Restarted with another size: a table of that size, said in the log.
    d.stop(Signal::SIGTERM, Duration::from_secs(10))?;
    std::fs::write(&path, sized(8192))?;
    let d = scenario::spawn_director(&lab, 0, &path)?;
    scenario::wait_status(&state, Duration::from_secs(10), scenario::all_resolved)?;
    ensure!(pinned_flows(&pin_dir)? == 8192);
    ensure!(d.log().contains("flow table resized"), "{}", d.log());
    let t = lab
        .client
        .run(move || http::hammer(vip, 10, Duration::from_secs(2)))?;
    ensure!(t.ok == 10, "{t:?}");
    Ok(())
}

/// `bpftool` with `args`, failing with its output.
fn bpftool(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("bpftool").args(args).output()?;
    ensure!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn hex(bytes: &[u8]) -> Vec<String> {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A director with a 4096-entry flow table, started, its servers resolved.
struct Small {
    lab: Lab,
    state: std::path::PathBuf,
    /// Its config file.
    path: std::path::PathBuf,
    d: director_tests::Proc,
    /// Its pinned maps.
    pins: std::path::PathBuf,
}

fn small_table_director() -> Result<Small> {
    let (lab, state, servers) = one_director()?;
    let config = scenario::http_config(&lab, "director1", &servers)?.replacen(
        "[global]\n",
        "[global]\nflow_table_size = 4096\n",
        1,
    );
    let path = lab.write("d.toml", &config)?;
    let d = scenario::spawn_director(&lab, 0, &path)?;
    let s = scenario::wait_status(&state, Duration::from_secs(10), scenario::all_resolved)?;
    let pins = std::path::PathBuf::from(s["pin_dir"].as_str().context("pin_dir")?);
    Ok(Small {
        lab,
        state,
        path,
        d,
        pins,
    })
}

/// An upgrade from the version whose flow table was an LRU hash (40-byte
/// keys, 24-byte values) and whose settings had 40 bytes: the new daemon
/// re-creates both maps, carries the old table's flows into the new one
/// (on the same real server) and keeps serving.
#[test]
fn a_flow_table_of_the_older_format_is_carried_over() -> Result<()> {
    use director_tests::bpfmap::PinnedMap;
    let Small {
        lab,
        state,
        path,
        mut d,
        pins,
    } = small_table_director()?;
    d.stop(Signal::SIGTERM, Duration::from_secs(10))?;

    // Real server slot 0 as the stopped daemon left it: its generation.
    let backend = PinnedMap::open(&pins.join("BACKENDS"))?.lookup(&0u32.to_ne_bytes(), 40)?;
    let generation = u32::from_ne_bytes(backend[8..12].try_into()?);
    ensure!(backend[7] != 0, "real server slot 0 is not in use");
    let old_settings = PinnedMap::open(&pins.join("SETTINGS"))?.lookup(&0u32.to_ne_bytes(), 48)?;

    // The older version's maps in their place: one flow on slot 0.
    let flows = pins.join("FLOWS");
    let settings = pins.join("SETTINGS");
    std::fs::remove_file(&flows)?;
    std::fs::remove_file(&settings)?;
    let (flows_s, settings_s) = (flows.to_string_lossy(), settings.to_string_lossy());
    bpftool(&[
        "map", "create", &flows_s, "type", "lru_hash", "key", "40", "value", "24", "entries",
        "4096", "name", "FLOWS",
    ])?;
    bpftool(&[
        "map",
        "create",
        &settings_s,
        "type",
        "array",
        "key",
        "4",
        "value",
        "40",
        "entries",
        "1",
        "name",
        "SETTINGS",
    ])?;
    let mut key = [0u8; 40];
    key[..4].copy_from_slice(&[10, 0, 0, 77]);
    key[16..20].copy_from_slice(&VIP.octets());
    key[32..34].copy_from_slice(&5555u16.to_be_bytes());
    key[34..36].copy_from_slice(&80u16.to_be_bytes());
    key[36] = 6;
    let mut value = [0u8; 24];
    value[4..8].copy_from_slice(&generation.to_ne_bytes());
    let mut args = vec!["map", "update", "pinned", &flows_s, "key", "hex"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    args.extend(hex(&key));
    args.extend(["value".into(), "hex".into()]);
    args.extend(hex(&value));
    bpftool(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let mut args = vec!["map", "update", "pinned", &settings_s, "key", "hex"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    args.extend(hex(&0u32.to_ne_bytes()));
    args.extend(["value".into(), "hex".into()]);
    args.extend(hex(&old_settings[..40]));
    bpftool(&args.iter().map(String::as_str).collect::<Vec<_>>())?;

    let d = scenario::spawn_director(&lab, 0, &path)?;
    scenario::wait_status(&state, Duration::from_secs(10), scenario::all_resolved)?;
    let log = d.log();
    ensure!(
        log.contains("flows of the previous flow table carried over") && log.contains("recorded=1"),
        "{log}"
    );
    // The flow is in the new table, on slot 0: one of its buckets' ways.
    let settings = PinnedMap::open(&settings)?.lookup(&0u32.to_ne_bytes(), 48)?;
    ensure!(
        settings[..40] == old_settings[..40],
        "settings not carried over"
    );
    let seed = u32::from_ne_bytes(settings[40..44].try_into()?);
    let mut fk = director_common::FlowKey::default();
    fk.src[..4].copy_from_slice(&key[..4]);
    fk.dst[..4].copy_from_slice(&key[16..20]);
    fk.sport = 5555u16.to_be_bytes();
    fk.dport = 80u16.to_be_bytes();
    fk.protocol = 6;
    let hash = director_common::flow_table_hash(&fk, seed);
    let (b1, b2) = director_common::flow_buckets(hash, 4096 / director_common::FLOW_WAYS);
    let table = PinnedMap::open(&flows)?;
    let found = (0..director_common::FLOW_WAYS)
        .flat_map(|w| [b1 + w, b2 + w])
        .filter_map(|i| table.lookup(&i.to_ne_bytes(), 64).ok())
        .any(|e| e[..40] == key[..] && e[40..42] == [0, 0]);
    ensure!(found, "the carried flow is not in the new flow table");
    let vip = std::net::SocketAddr::from((VIP, 80));
    let t = lab
        .client
        .run(move || http::hammer(vip, 10, Duration::from_secs(2)))?;
    ensure!(t.ok == 10, "{t:?}");
    Ok(())
}

/// Upgrades from the versions whose tag array held only the tag words, and
/// then the tag words and an occupancy byte per bucket: the new daemon
/// adopts the flow table, re-creates the tag array at its new size and
/// rebuilds it from the flows (a bucket's occupancy bit set exactly when a
/// way holds a flow), and keeps serving the flows it holds.
#[test]
fn a_tag_array_of_the_previous_layout_is_rebuilt() -> Result<()> {
    use director_common::{FLOW_WAYS, flow_tag_elements};
    use director_tests::bpfmap::PinnedMap;
    let Small {
        lab,
        state,
        path,
        mut d,
        pins,
    } = small_table_director()?;
    let vip = std::net::SocketAddr::from((VIP, 80));
    let t = lab
        .client
        .run(move || http::hammer(vip, 40, Duration::from_secs(2)))?;
    ensure!(t.ok == 40, "{t:?}");

    // The ways holding a flow, by bucket.
    let buckets = 4096 / FLOW_WAYS;
    let taken = |pins: &std::path::Path| -> Result<Vec<bool>> {
        let flows = PinnedMap::open(&pins.join("FLOWS"))?;
        (0..buckets)
            .map(|b| {
                let mut any = false;
                for i in b * FLOW_WAYS..(b + 1) * FLOW_WAYS {
                    any |= flows.lookup(&i.to_ne_bytes(), 64)?[36] != 0;
                }
                Ok(any)
            })
            .collect()
    };
    let before = taken(&pins)?;
    ensure!(
        before.iter().filter(|t| **t).count() >= 30,
        "the requests left {} flows",
        before.iter().filter(|t| **t).count()
    );
    // The previous versions' tag arrays: tag words only; tag words and a
    // byte per bucket.
    for old in [
        flow_tag_elements(buckets),
        flow_tag_elements(buckets) + buckets.div_ceil(8),
    ] {
        d.stop(Signal::SIGTERM, Duration::from_secs(10))?;
        let tags = pins.join("FLOW_TAGS");
        std::fs::remove_file(&tags)?;
        let old = old.to_string();
        let tags_s = tags.to_string_lossy();
        bpftool(&[
            "map",
            "create",
            &tags_s,
            "type",
            "array",
            "key",
            "4",
            "value",
            "8",
            "entries",
            &old,
            "name",
            "FLOW_TAGS",
            "flags",
            "1024",
        ])?;

        d = scenario::spawn_director(&lab, 0, &path)?;
        scenario::wait_status(&state, Duration::from_secs(10), scenario::all_resolved)?;
        ensure!(
            d.log().contains("tag array is re-created and rebuilt"),
            "{}",
            d.log()
        );
        ensure!(taken(&pins)? == before, "the adopted flow table changed");
        let array = PinnedMap::open(&tags)?;
        for (b, taken) in before.iter().enumerate() {
            let b = b as u32;
            let element = flow_tag_elements(buckets) + b / 64;
            let word = u64::from_ne_bytes(
                array.lookup(&element.to_ne_bytes(), 8)?[..8]
                    .try_into()
                    .context("an 8-byte element")?,
            );
            let occupied = word & (1 << (b % 64)) != 0;
            ensure!(
                occupied == *taken,
                "from {old} elements, bucket {b}: occupancy bit {occupied}, a way taken {taken}"
            );
        }
    }
    let t = lab
        .client
        .run(move || http::hammer(vip, 10, Duration::from_secs(2)))?;
    ensure!(t.ok == 10, "{t:?}");
    Ok(())
}
