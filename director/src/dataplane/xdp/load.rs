//! Loading the program (adopting pinned maps), attaching it to the
//! interface or swapping it into a pinned link, flushing it, and relaying
//! its log.

use super::*;

/// A flow of a pinned flow table that could not be adopted as it was
/// (another size, an older format), to be recorded in the new one.
#[derive(Debug, Clone, Copy)]
pub(super) struct CarriedFlow {
    pub key: FlowKey,
    pub backend: u32,
    pub service: u32,
    pub generation: u32,
    pub atime: u64,
}

/// The loaded object, and what became of the pinned maps.
pub(super) struct Loaded {
    pub ebpf: Ebpf,
    /// Entries of the flow table: the size asked for, in whole buckets.
    pub flow_entries: u32,
    /// The pinned flow table was adopted as it was (its seed is the one in
    /// the pinned settings).
    pub flows_adopted: bool,
    /// Its pinned tag words too (else they are rebuilt from its entries).
    pub tags_adopted: bool,
    /// Flows of a pinned table re-created at another size or format.
    pub carried: Vec<CarriedFlow>,
    /// The settings of a pinned settings map of an older format (its
    /// fields that this version still has), written before the program
    /// runs.
    pub carried_settings: Option<Settings>,
}

/// Entries of a flow table of `flows` flows: whole buckets.
pub fn flow_entries(flows: u32) -> u32 {
    flows.div_ceil(FLOW_WAYS).max(1) * FLOW_WAYS
}

pub(super) fn load(pin_dir: Option<&Path>, flows: u32) -> Result<Loaded, XdpError> {
    if PROGRAM.is_empty() {
        return Err(XdpError::NotBuilt);
    }
    let entries = flow_entries(flows);
    let buckets = entries / FLOW_WAYS;
    let (mut flows_adopted, mut tags_adopted) = (false, false);
    let (mut carried, mut carried_settings) = (Vec::new(), None);
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(MAP_FLOWS, entries);
    loader.map_max_entries(
        MAP_FLOW_TAGS,
        director_common::flow_tag_array_elements(buckets),
    );
    loader.override_global("FLOW_BUCKETS", &buckets, true);
    if let Some(dir) = pin_dir {
        let stale = incompatible_pins(dir, entries)?;
        let adopted = |name: &str| dir.join(name).exists() && !stale.contains(&name);
        flows_adopted = adopted(MAP_FLOWS);
        tags_adopted = adopted(MAP_FLOW_TAGS);
        if stale.contains(&MAP_FLOWS) {
            // Flows carry over only where real-server and service ids do.
            if adopted(MAP_BACKENDS) && adopted(MAP_SERVICES) {
                let seed = read_pinned_settings(&dir.join(MAP_SETTINGS)).map(|s| s.flow_seed);
                carried = read_old_flows(&dir.join(MAP_FLOWS), seed);
            }
            warn!(
                flows = carried.len(),
                entries,
                "flow table re-created (another size or an older format): its flows carried over"
            );
        }
        if stale.contains(&MAP_SETTINGS) {
            carried_settings = read_pinned_settings(&dir.join(MAP_SETTINGS));
        }
        for name in &stale {
            let _ = std::fs::remove_file(dir.join(name));
        }
        for name in PINNED_MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    Ok(Loaded {
        ebpf: loader.load(PROGRAM)?,
        flow_entries: entries,
        flows_adopted,
        tags_adopted,
        carried,
        carried_settings,
    })
}

/// The pinned maps in `dir` this program cannot use as they are: another
/// type, key, value or flag than its definition, or another size (the
/// flow table: other than `flow_entries`). Each is logged.
fn incompatible_pins(dir: &Path, flow_entries: u32) -> Result<Vec<&'static str>, XdpError> {
    let object = aya_obj::Object::parse(PROGRAM)
        .map_err(|e| XdpError::Link(format!("cannot parse the XDP object: {e}")))?;
    let mut stale = Vec::new();
    for name in PINNED_MAPS {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let Some(def) = object.maps.get(name) else {
            continue;
        };
        let want_entries = match name {
            MAP_FLOWS => flow_entries,
            MAP_FLOW_TAGS => director_common::flow_tag_array_elements(flow_entries / FLOW_WAYS),
            _ => def.max_entries(),
        };
        let fits = match aya::maps::MapInfo::from_pin(&path) {
            Ok(info) => {
                let same = info.map_type().ok().map(|t| t as u32) == Some(def.map_type())
                    && info.key_size() == def.key_size()
                    && info.value_size() == def.value_size()
                    && info.map_flags() == def.map_flags();
                if same && info.max_entries() != want_entries && name == MAP_FLOW_TAGS {
                    // Follows the table's size, or an older layout (before
                    // the occupancy bits): rebuilt from the flows.
                    info!(
                        map = name,
                        old = info.max_entries(),
                        new = want_entries,
                        "the flow table's tag array is re-created and rebuilt from its flows"
                    );
                } else if same && info.max_entries() != want_entries {
                    warn!(
                        map = name,
                        old = info.max_entries(),
                        new = want_entries,
                        "flow table resized: its flows are carried over into the new one"
                    );
                } else if !same {
                    warn!(
                        map = name,
                        "pinned map of an older format: re-created (its contents are written again)"
                    );
                }
                same && info.max_entries() == want_entries
            }
            Err(e) => {
                warn!(map = name, error = %e, "unreadable pinned map: re-created");
                false
            }
        };
        if !fits {
            stale.push(name);
        }
    }
    Ok(stale)
}

/// The settings in a pinned settings map, of this format or the one
/// before (40 bytes, without the flow seed: fields are only appended).
fn read_pinned_settings(path: &Path) -> Option<Settings> {
    const OLD: usize = 40;
    let map = MapData::from_pin(path).ok()?;
    let size = map.info().ok()?.value_size() as usize;
    let map = aya::maps::Map::Array(map);
    if size == std::mem::size_of::<Settings>() {
        return Array::<_, Settings>::try_from(map).ok()?.get(&0, 0).ok();
    }
    if size != OLD {
        return None;
    }
    let old: [u8; OLD] = Array::<_, [u8; OLD]>::try_from(map).ok()?.get(&0, 0).ok()?;
    let mut bytes = [0u8; std::mem::size_of::<Settings>()];
    bytes[..OLD].copy_from_slice(&old);
    // SAFETY: Settings is plain integers and byte arrays (every bit
    // pattern is a value), and `bytes` is exactly its size.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Settings>()) })
}

/// The flows of a pinned flow table of another size or an older format:
/// the LRU hash of 40-byte keys and 24-byte values, or an array of
/// entries (those that check with `seed`, when it is known).
fn read_old_flows(path: &Path, seed: Option<u32>) -> Vec<CarriedFlow> {
    let Ok(map) = MapData::from_pin(path) else {
        return Vec::new();
    };
    let Ok(info) = map.info() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    match (info.key_size(), info.value_size()) {
        (40, 24) => {
            let Ok(old) =
                BpfHashMap::<_, FlowKey, FlowValue>::try_from(aya::maps::Map::LruHashMap(map))
            else {
                return Vec::new();
            };
            for (key, v) in old.iter().filter_map(Result::ok) {
                out.push(CarriedFlow {
                    key,
                    backend: v.backend,
                    service: v.service,
                    generation: v.generation,
                    atime: v.atime,
                });
            }
        }
        (4, 64) => {
            let Ok(old) = Array::<_, FlowEntry>::try_from(aya::maps::Map::Array(map)) else {
                return Vec::new();
            };
            for e in (0..info.max_entries()).filter_map(|i| old.get(&i, 0).ok()) {
                if e.key.protocol == 0
                    || seed.is_some_and(|s| {
                        !e.checks(director_common::flow_table_hash(&e.key, s) as u32)
                    })
                {
                    continue;
                }
                out.push(CarriedFlow {
                    key: e.key,
                    backend: u32::from(e.backend),
                    service: u32::from(e.service),
                    generation: e.generation,
                    atime: e.atime,
                });
            }
        }
        _ => {}
    }
    out
}

pub(super) fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, XdpError> {
    Ok(ebpf
        .program_mut(PROG_DIRECTOR)
        .ok_or(XdpError::Missing(PROG_DIRECTOR))?
        .try_into()?)
}

/// Attaches with a new link, native first when `mode` allows.
pub(super) fn attach_new(
    program: &mut Xdp,
    interface: &str,
    mode: XdpMode,
) -> Result<(XdpLinkId, AttachMode), XdpError> {
    let attach = |program: &mut Xdp, mode: AttachMode| {
        let flags = match mode {
            AttachMode::Native => AyaXdpMode::Driver,
            AttachMode::Generic => AyaXdpMode::Skb,
        };
        program
            .attach(interface, flags)
            .map_err(|source| XdpError::Attach {
                interface: interface.to_string(),
                mode: mode.as_str(),
                source,
            })
    };
    let result = match mode {
        XdpMode::Native => (attach(program, AttachMode::Native)?, AttachMode::Native),
        XdpMode::Generic => (attach(program, AttachMode::Generic)?, AttachMode::Generic),
        XdpMode::Auto => match attach(program, AttachMode::Native) {
            Ok(link) => (link, AttachMode::Native),
            Err(e) => {
                warn!(error = %e, "native XDP unavailable, using generic (skb) mode: expect lower throughput");
                (attach(program, AttachMode::Generic)?, AttachMode::Generic)
            }
        },
    };
    info!(interface, mode = result.1.as_str(), "XDP program attached");
    Ok(result)
}

/// Attaches through a link pinned in `pins`: replaces the program in an
/// existing link to the same interface (no gap in forwarding), or attaches
/// and pins a new link. A pinned link whose interface is gone (deleted,
/// re-created under the same name: the kernel refuses to update such a
/// link) or is another one is unpinned first.
pub(super) fn attach_pinned(
    program: &mut Xdp,
    pins: &PinPaths,
    interface: &str,
    mode: XdpMode,
) -> Result<(Attachment, AttachMode), XdpError> {
    let link_path = pins.link();
    let info = std::fs::read_to_string(pins.link_info()).unwrap_or_default();
    let mut info = info.split_whitespace();
    let pinned_mode = info.nth(1).and_then(AttachMode::parse);
    if link_path.exists() {
        let wanted = ifindex(interface);
        match link::pinned(&link_path) {
            Ok(l) if l.ifindex == 0 => warn!(
                interface,
                "the pinned XDP link's interface is gone (deleted or re-created); attaching anew"
            ),
            // Indexes repeat across network namespaces: the link is ours
            // only if the interface of that index here runs its program.
            Ok(l) if link::attached_program(l.ifindex).ok().flatten() != Some(l.program_id) => {
                return Err(XdpError::Link(format!(
                    "{} holds an XDP link to an interface of another network namespace (its ifindex {} here does not run its program): another director uses this pin directory; give each daemon its own state_dir or pin_dir",
                    link_path.display(),
                    l.ifindex
                )));
            }
            Ok(l) if Some(l.ifindex) == wanted => {
                let pinned = PinnedLink::from_pin(&link_path)
                    .map_err(|e| XdpError::Link(format!("{}: {e}", link_path.display())))?;
                let fd_link: FdLink = pinned.into();
                let link = XdpLink::try_from(fd_link)
                    .map_err(|e| XdpError::Link(format!("not an XDP link: {e}")))?;
                program.attach_to_link(link)?;
                let mode = pinned_mode.unwrap_or(AttachMode::Native);
                info!(
                    interface,
                    mode = mode.as_str(),
                    "XDP program replaced in the pinned link, without a gap"
                );
                return Ok((Attachment::Pinned(pins.clone()), mode));
            }
            Ok(l) => warn!(
                interface,
                pinned_ifindex = l.ifindex,
                ifindex = ?wanted,
                "the pinned XDP link is on another interface; moving it"
            ),
            Err(e) => warn!(interface, error = %e, "unreadable pinned XDP link; attaching anew"),
        }
        std::fs::remove_file(&link_path).map_err(|source| XdpError::PinDir {
            path: link_path.clone(),
            source,
        })?;
    }
    pin_new_link(program, pins, interface, mode)
}

/// Attaches with a new link and pins it.
pub(super) fn pin_new_link(
    program: &mut Xdp,
    pins: &PinPaths,
    interface: &str,
    mode: XdpMode,
) -> Result<(Attachment, AttachMode), XdpError> {
    let link_path = pins.link();
    let (id, mode) = attach_new(program, interface, mode)?;
    let link = program.take_link(id)?;
    let fd_link = FdLink::try_from(link).map_err(|e| XdpError::Link(e.to_string()))?;
    fd_link
        .pin(&link_path)
        .map_err(|e| XdpError::Link(format!("pinning at {}: {e}", link_path.display())))?;
    let info = pins.link_info();
    std::fs::write(&info, format!("{interface} {}\n", mode.as_str()))
        .map_err(|source| XdpError::PinDir { path: info, source })?;
    Ok((Attachment::Pinned(pins.clone()), mode))
}

/// The interface's index, if it exists.
pub(super) fn ifindex(interface: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(interface).ok()
}

/// Removes the pinned dataplane in `dir`: unpinning the link detaches the
/// program; unpinning the maps frees them. Returns what was removed.
pub fn flush(dir: &Path, state_dir: &Path) -> Result<Vec<String>, XdpError> {
    let mut removed = Vec::new();
    let pins = PinPaths {
        dir: dir.to_path_buf(),
        state_dir: state_dir.to_path_buf(),
    };
    let mut paths = vec![pins.link(), pins.link_info()];
    paths.extend(PINNED_MAPS.iter().map(|name| dir.join(name)));
    for path in paths {
        if path.exists() {
            std::fs::remove_file(&path).map_err(|source| XdpError::PinDir {
                path: path.clone(),
                source,
            })?;
            removed.push(path.display().to_string());
        }
    }
    Ok(removed)
}

/// Forwards the XDP program's log records to our log, as they arrive.
pub(super) fn spawn_logger(
    logger: EbpfLogger<&'static dyn log::Log>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // SAFETY: the logger owns its ring buffer's fd and never closes or
        // replaces it while the AsyncFd owns the logger.
        let registered = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) };
        let mut fd = match registered {
            Ok(fd) => fd,
            Err(e) => {
                warn!(error = %e, "cannot poll the XDP log buffer");
                return;
            }
        };
        loop {
            let mut guard = match fd.readable_mut().await {
                Ok(guard) => guard,
                Err(e) => {
                    warn!(error = %e, "XDP log buffer closed");
                    return;
                }
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    })
}

#[cfg(test)]
mod tests {
    /// Whether the ELF object holds `name` (a program's or map's symbol).
    fn holds(name: &str) -> bool {
        super::super::PROGRAM
            .windows(name.len() + 1)
            .any(|w| &w[..name.len()] == name.as_bytes() && w[name.len()] == 0)
    }

    /// The object the daemon loads carries its program and none of the
    /// benchmark harness's (those are the `director-bench` object's).
    #[test]
    fn the_daemons_object_holds_no_benchmark_program() {
        assert!(holds(director_common::PROG_DIRECTOR) && holds("SERVICES"));
        for name in [
            director_common::PROG_FLOOR,
            director_common::PROG_FRESH_CLIENT,
            director_common::MAP_BENCH_TARGETS,
            "BENCH_FRAMES",
        ] {
            assert!(!holds(name), "the daemon's XDP object holds {name}");
        }
    }
}
