//! Loading the program (adopting pinned maps), attaching it to the
//! interface or swapping it into a pinned link, flushing it, and relaying
//! its log.

use super::*;

pub(super) fn load(pin_dir: Option<&Path>, flows: u32) -> Result<Ebpf, XdpError> {
    if PROGRAM.is_empty() {
        return Err(XdpError::NotBuilt);
    }
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(MAP_FLOWS, flows);
    if let Some(dir) = pin_dir {
        // A pinned flow table of another size is re-created at the size
        // asked for (a pinned map is reused as it is otherwise).
        let pinned = dir.join(MAP_FLOWS);
        if let Ok(info) = aya::maps::MapInfo::from_pin(&pinned)
            && info.max_entries() != flows
        {
            warn!(
                old = info.max_entries(),
                new = flows,
                "flow table resized: its flows are placed again (by Maglev: on the same real servers unless the pool changed)"
            );
            let _ = std::fs::remove_file(&pinned);
        }
        for name in PINNED_MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    Ok(loader.load(PROGRAM)?)
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
