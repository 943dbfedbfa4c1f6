//! Making the maps equal to the plan: services, Maglev banks, real-server
//! slots, group members, the VIP filter and fragments.

use super::*;

impl XdpDataplane {
    /// Makes the maps match `plan`. `mac` is our interface's address.
    pub fn apply(
        &mut self,
        plan: &[ServicePlan],
        udp_timeout_s: u32,
        link: crate::net::neighbor::LinkInfo,
    ) -> Result<(), XdpError> {
        let settings = Settings {
            udp_timeout_ns: u64::from(udp_timeout_s) * 1_000_000_000,
            mac: link.mac.0,
            mtu: link.mtu.min(u32::from(u16::MAX)) as u16,
            tunnel_src4: TUNNEL_SOURCE_V4,
            new_flow_limit: self.new_flow_limit,
            tunnel_src6: TUNNEL_SOURCE_V6,
            flow_seed: self.flows.seed(),
            service_index: self.settings.map_or(0, |s| s.service_index),
        };
        if self.settings != Some(settings) {
            self.maps.settings.set(0, settings, 0)?;
            self.settings = Some(settings);
        }
        let wanted: BTreeMap<ServiceKey, &ServicePlan> =
            plan.iter().map(|s| (s.key(), s)).collect();
        // The VIP filter lets through old and new VIPs while they change,
        // then exactly the new ones.
        let member_addrs: Vec<ServiceKey> = plan
            .iter()
            .flat_map(|s| {
                s.members.iter().flat_map(|m| m.addresses()).map(|a| {
                    crate::config::ServiceAddr {
                        address: a,
                        port: 0,
                        protocol: s.protocol,
                    }
                    .key()
                })
            })
            .collect();
        let new_filter = vip_filter(wanted.keys().chain(&member_addrs));
        let union: Vec<u64> = self
            .filter
            .iter()
            .zip(&new_filter)
            .map(|(a, b)| a | b)
            .collect();
        self.write_filter(union)?;

        // Services that left: stop matching them, then free their slots.
        let gone: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for key in &gone {
            self.services_map()?.remove(key)?;
            self.services.remove(key);
            info!(
                service = %crate::config::ServiceAddr::from_key(key).map_or_else(|| "?".into(), |s| s.to_string()),
                "virtual service removed from the dataplane"
            );
        }

        let mut retired = Vec::new();
        for (key, service) in &wanted {
            // Service id, zeroed counters for a new one.
            let id = match self.services.get(key) {
                Some(i) => i.id,
                None => {
                    let id = self.free_service_id()?;
                    self.zero_counters(Stats::Service, id)?;
                    id
                }
            };
            // Real-server slots: write new and changed ones first, so the
            // table never points at a slot not yet written.
            let mut entries = Vec::new();
            let mut pool_entries = Vec::new();
            for b in &service.backends {
                let slot = self.slot(*key, id, b.address)?;
                let usable = b.mac.is_some();
                let mut next = slot.written;
                next.mac = b.mac.map(|m| m.0).unwrap_or([0; 6]);
                next.flags = match (usable, b.weight, b.failed) {
                    (false, _, _) => 0,
                    // Failed: its established TCP flows continue.
                    (true, _, true) => BACKEND_USABLE | BACKEND_DRAINING | BACKEND_FAILED,
                    (true, 0, false) => BACKEND_USABLE | BACKEND_DRAINING,
                    (true, _, false) => BACKEND_USABLE,
                } | match service.lb_kind {
                    crate::config::LbKind::Tun => BACKEND_TUNNEL,
                    crate::config::LbKind::Dr => 0,
                };
                if next != slot.written {
                    self.write_backend(slot.id, &next)?;
                    if let Some(s) = self.slots.get_mut(&(*key, b.address)) {
                        s.written = next;
                    }
                }
                if usable {
                    entries.push(maglev::Entry {
                        address: b.address,
                        weight: b.weight,
                        id: slot.id as u16,
                    });
                    pool_entries.push(maglev::Entry {
                        address: b.address,
                        weight: b.pool_weight,
                        id: slot.id as u16,
                    });
                }
            }
            let table = maglev::build(&entries, MAGLEV_TABLE_SIZE);
            // The recovered pool's table, only while it differs.
            let pool = (pool_entries
                .iter()
                .zip(&entries)
                .any(|(p, e)| p.weight != e.weight))
            .then(|| std::sync::Arc::new(maglev::build(&pool_entries, MAGLEV_TABLE_SIZE)));
            let flags = match service.scheduler {
                Scheduler::Sh => SVC_SOURCE_HASH,
                // The others are refused by the config check (IPVS only).
                Scheduler::Mh | Scheduler::Rr | Scheduler::Wrr | Scheduler::Lc | Scheduler::Wlc => {
                    0
                }
            } | if service.persistence_timeout > 0 {
                SVC_PERSISTENT
            } else {
                0
            };
            let installed = self.services.get(key).cloned();
            let same_table = installed
                .as_ref()
                .and_then(|i| i.table.as_ref())
                .is_some_and(|t| **t == table);
            let bank = match &installed {
                Some(i) if same_table => i.bank,
                Some(i) => 1 - i.bank,
                None => 0,
            };
            if !same_table {
                self.write_table(maglev_base(id, bank), &table)?;
            }
            let value = ServiceValue {
                id,
                table: maglev_base(id, bank),
                flags,
                persistence_timeout: service.persistence_timeout,
            };
            if installed.as_ref().map(|i| i.value) != Some(value) {
                self.services_map()?.insert(key, value, 0)?;
                let live: Vec<String> = entries
                    .iter()
                    .filter(|e| e.weight > 0)
                    .map(|e| e.address.to_string())
                    .collect();
                info!(
                    service = %service.name(),
                    scheduler = service.scheduler.as_str(),
                    real_servers = ?live,
                    "virtual service programmed"
                );
            }
            self.services.insert(
                *key,
                Installed {
                    id,
                    bank,
                    value,
                    table: Some(std::sync::Arc::new(table)),
                    pool,
                },
            );
            // Slots of real servers no longer in this service.
            for (k, addr) in self.slots.keys() {
                if k == key && !service.backends.iter().any(|b| b.address == *addr) {
                    retired.push((*k, *addr));
                }
            }
        }
        for key in &gone {
            retired.extend(self.slots.keys().filter(|(k, _)| k == key).copied());
        }
        self.sync_fragments()?;
        // The program switches to the new services (and tables) here.
        self.sync_index()?;
        // Only now that no table points at them: retire removed servers.
        // Their flows find the slot unusable and are placed again.
        for k in retired {
            if let Some(slot) = self.slots.remove(&k) {
                let cleared = Backend {
                    generation: slot.written.generation,
                    ..Backend::default()
                };
                self.write_backend(slot.id, &cleared)?;
            }
        }
        self.sync_members(plan)?;
        self.write_filter(new_filter)?;
        Ok(())
    }

    /// Makes the service index hold what the service map holds: written
    /// into the idle bank, then the program switched to it with one
    /// settings write. Keys that do not fit within the probe limit turn
    /// the index off (the program uses the hash map; said once).
    pub(super) fn sync_index(&mut self) -> Result<(), XdpError> {
        use director_common::{
            IndexEntry, SERVICE_INDEX_PROBES, SERVICE_INDEX_SLOTS, service_index_slot,
        };
        let mut slots = vec![IndexEntry::default(); SERVICE_INDEX_SLOTS as usize];
        let mut fits = true;
        let entries = self
            .services
            .iter()
            .map(|(k, i)| (k, i.value))
            .chain(self.fragments.iter().map(|(k, v)| (k, *v)));
        for (key, value) in entries {
            let (addr, tail) = (key.index_addr(), key.index_tail());
            let start = service_index_slot(&addr, tail);
            let free = (0..SERVICE_INDEX_PROBES)
                .map(|p| ((start + p) & (SERVICE_INDEX_SLOTS - 1)) as usize)
                .find(|i| slots[*i].tail == 0);
            match free {
                Some(i) => {
                    slots[i] = IndexEntry {
                        addr,
                        tail,
                        _pad: 0,
                        value,
                    }
                }
                None => fits = false,
            }
        }
        let current = self.settings.map_or(0, |s| s.service_index);
        let wanted = if fits {
            let active = current.checked_sub(1).map(|b| b as usize);
            if active.is_some_and(|b| self.index_banks[b].as_ref() == Some(&slots)) {
                return Ok(());
            }
            let bank = match active {
                Some(b) => 1 - b,
                None => 0,
            };
            let base = bank as u32 * SERVICE_INDEX_SLOTS;
            let old = self.index_banks[bank].take();
            for (i, e) in slots.iter().enumerate() {
                if old.as_ref().is_none_or(|o| o[i] != *e) {
                    self.maps.service_index.set(base + i as u32, e, 0)?;
                }
            }
            self.index_banks[bank] = Some(slots);
            bank as u32 + 1
        } else {
            if !self.index_overflow_said {
                warn!(
                    "the service index cannot hold every service within its probe limit: the XDP program looks services up in its hash map (slower for new flows)"
                );
                self.index_overflow_said = true;
            }
            0
        };
        if wanted != current {
            let mut settings = self.settings.unwrap_or_default();
            settings.service_index = wanted;
            self.maps.settings.set(0, settings, 0)?;
            self.settings = Some(settings);
        }
        Ok(())
    }

    /// Writes the group-member trie for `plan`: each member's ports as
    /// aligned blocks, and a fragment entry per member address (fragments
    /// after the first carry no port), each with its service's value.
    /// New and changed entries first, then stale ones go.
    pub(super) fn sync_members(&mut self, plan: &[ServicePlan]) -> Result<(), XdpError> {
        let mut wanted: BTreeMap<(u32, MemberKey), ServiceValue> = BTreeMap::new();
        for s in plan.iter().filter(|s| !s.members.is_empty()) {
            let Some(value) = self.services.get(&s.key()).map(|i| i.value) else {
                continue;
            };
            let protocol = s.protocol.number();
            for m in &s.members {
                let mut blocks = [(0u16, 0u8); 32];
                let n = director_common::port_blocks(m.ports.0, m.ports.1, &mut blocks);
                for a in m.addresses() {
                    let base = crate::config::ServiceAddr {
                        address: a,
                        port: 0,
                        protocol: s.protocol,
                    }
                    .key();
                    for (start, bits) in &blocks[..n] {
                        let key = MemberKey {
                            protocol,
                            flags: base.flags,
                            addr: base.addr,
                            port: start.to_be_bytes(),
                        };
                        wanted.insert((MEMBER_PREFIX_BASE + u32::from(*bits), key), value);
                    }
                    let frag = MemberKey {
                        protocol,
                        flags: base.flags | KEY_FRAGMENT,
                        addr: base.addr,
                        port: [0, 0],
                    };
                    wanted.entry((MEMBER_PREFIX_BASE, frag)).or_insert(value);
                }
            }
        }
        if wanted == self.members {
            return Ok(());
        }
        self.version += 1;
        let old = std::mem::take(&mut self.members);
        let trie = &mut self.maps.members;
        for (k, v) in &wanted {
            if old.get(k) != Some(v)
                && let Err(e) = trie.insert(&LpmKey::new(k.0, k.1), v, 0)
            {
                // Remember every key as possibly written, none as right:
                // the next apply writes them all again and removes what
                // is not wanted then.
                let unknown = ServiceValue {
                    id: u32::MAX,
                    ..ServiceValue::default()
                };
                self.members = old
                    .into_keys()
                    .chain(wanted.into_keys())
                    .map(|k| (k, unknown))
                    .collect();
                return Err(e.into());
            }
        }
        for k in old.keys() {
            if !wanted.contains_key(k) {
                // An entry already gone is fine.
                let _ = trie.remove(&LpmKey::new(k.0, k.1));
            }
        }
        self.members = wanted;
        Ok(())
    }

    pub(super) fn write_filter(&mut self, words: Vec<u64>) -> Result<(), XdpError> {
        let changed: Vec<(u32, u64)> = (0u32..)
            .zip(words.iter().zip(&self.filter))
            .filter(|(_, (new, old))| new != old)
            .map(|(i, (new, _))| (i, *new))
            .collect();
        if !changed.is_empty() {
            for (i, word) in changed {
                self.maps.vip_filter.set(i, word, 0)?;
            }
        }
        self.filter = words;
        Ok(())
    }

    /// The slot of a service's real server, allocated on first use.
    pub(super) fn slot(
        &mut self,
        key: ServiceKey,
        service_id: u32,
        address: IpAddr,
    ) -> Result<Slot, XdpError> {
        if let Some(slot) = self.slots.get(&(key, address)) {
            return Ok(*slot);
        }
        let used: std::collections::HashSet<u32> = self.slots.values().map(|s| s.id).collect();
        let id = (0..MAX_REAL_SERVERS)
            .find(|id| !used.contains(id))
            .ok_or(XdpError::Capacity("real server"))?;
        let generation = self.generations[id as usize].wrapping_add(1);
        self.generations[id as usize] = generation;
        let (family, addr) = match address {
            IpAddr::V4(a) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&a.octets());
                (4, b)
            }
            IpAddr::V6(a) => (6, a.octets()),
        };
        let written = Backend {
            mac: [0; 6],
            flags: 0,
            family,
            generation,
            service: service_id,
            addr,
            _pad: [0; 4],
        };
        self.zero_counters(Stats::Backend, id)?;
        self.write_backend(id, &written)?;
        let slot = Slot { id, written };
        self.slots.insert((key, address), slot);
        Ok(slot)
    }

    /// Fragments of a VIP and protocol follow its any-port service, or else
    /// its lowest port's: one entry per (VIP, protocol).
    pub(super) fn sync_fragments(&mut self) -> Result<(), XdpError> {
        let mut wanted: BTreeMap<ServiceKey, ServiceValue> = BTreeMap::new();
        let mut keys: Vec<&ServiceKey> = self.services.keys().collect();
        keys.sort_by_key(|k| (k.addr, k.protocol, k.flags, k.port()));
        for key in keys {
            let frag = ServiceKey {
                port: [0, 0],
                flags: key.flags | KEY_FRAGMENT,
                ..*key
            };
            wanted.entry(frag).or_insert(self.services[key].value);
        }
        let stale: Vec<ServiceKey> = self
            .fragments
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for k in stale {
            self.services_map()?.remove(&k)?;
            self.fragments.remove(&k);
        }
        for (k, v) in wanted {
            if self.fragments.get(&k) != Some(&v) {
                self.services_map()?.insert(k, v, 0)?;
                self.fragments.insert(k, v);
            }
        }
        Ok(())
    }

    pub(super) fn write_table(&mut self, base: u32, table: &[u16]) -> Result<(), XdpError> {
        self.version += 1;
        let array = &mut self.maps.maglev;
        for (i, chunk) in table.chunks(MAGLEV_LANES as usize).enumerate() {
            let mut elem = [NO_BACKEND; 4];
            elem[..chunk.len()].copy_from_slice(chunk);
            array.set(base + i as u32, elem, 0)?;
        }
        Ok(())
    }

    pub(super) fn write_backend(&mut self, id: u32, b: &Backend) -> Result<(), XdpError> {
        self.version += 1;
        self.maps.backends.set(id, b, 0)?;
        Ok(())
    }

    /// The service map, for a write (the tables' version moves on).
    pub(super) fn services_map(
        &mut self,
    ) -> Result<&mut BpfHashMap<MapData, ServiceKey, ServiceValue>, XdpError> {
        self.version += 1;
        Ok(&mut self.maps.services)
    }
}

/// The VIP filter bitmap for a set of services.
pub(super) fn vip_filter<'a>(keys: impl Iterator<Item = &'a ServiceKey>) -> Vec<u64> {
    use director_common::vip_bucket;
    let mut words = vec![0u64; VIP_FILTER_WORDS as usize];
    for key in keys {
        let bucket = vip_bucket(&key.addr);
        words[(bucket / 64) as usize] |= 1 << (bucket % 64);
    }
    words
}
