//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016, section 3.4), with weights.
//!
//! Each real server gets a permutation of the table's slots derived from
//! its address (`offset`, `skip`); servers take turns claiming their next
//! free preferred slot until the table is full. Removing one of N servers
//! moves only about 1/N of the slots, and every director computes the same
//! table from the same config, so they agree on every flow.
//!
//! Weights: in each round a server earns credit equal to its weight and
//! claims one slot per `max_weight` of credit, so shares are proportional
//! to weights.

use std::net::IpAddr;

use director_common::NO_BACKEND;

/// One real server as the table builder sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Identity used for the permutation: the same on every director.
    pub address: IpAddr,
    /// Relative share; 0 takes no slots.
    pub weight: u32,
    /// What the table stores for this server (its backend id).
    pub id: u16,
}

/// 64-bit FNV-1a over `bytes`, starting from `seed`.
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche (splitmix64) so nearby addresses diverge.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn address_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Builds a table of `size` slots (`size` must be prime). Servers with
/// weight 0 are left out; with none left, every slot is [`NO_BACKEND`].
pub fn build(entries: &[Entry], size: u32) -> Vec<u16> {
    let m = u64::from(size);
    let mut table = vec![NO_BACKEND; size as usize];
    let mut live: Vec<&Entry> = entries.iter().filter(|e| e.weight > 0).collect();
    if live.is_empty() || size < 2 {
        return table;
    }
    // Order by address so the result does not depend on config order.
    live.sort_by_key(|e| address_bytes(&e.address));
    let perms: Vec<(u64, u64)> = live
        .iter()
        .map(|e| {
            let name = address_bytes(&e.address);
            let offset = fnv1a(0xcbf2_9ce4_8422_2325, &name) % m;
            let skip = fnv1a(0x8422_2325_cbf2_9ce4, &name) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let max_weight = u64::from(live.iter().map(|e| e.weight).max().unwrap_or(1));
    let mut next = vec![0u64; live.len()];
    let mut credit = vec![0u64; live.len()];
    let mut filled = 0u64;
    loop {
        for (i, e) in live.iter().enumerate() {
            credit[i] += u64::from(e.weight);
            while credit[i] >= max_weight {
                credit[i] -= max_weight;
                let (offset, skip) = perms[i];
                // The next free slot in this server's preference list.
                let slot = loop {
                    let c = (offset + next[i] * skip) % m;
                    next[i] += 1;
                    if table[c as usize] == NO_BACKEND {
                        break c;
                    }
                };
                table[slot as usize] = e.id;
                filled += 1;
                if filled == m {
                    return table;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u32 = 65537;

    fn servers(n: usize) -> Vec<Entry> {
        (0..n)
            .map(|i| Entry {
                address: IpAddr::from([10, 1, (i / 250) as u8, (i % 250) as u8 + 1]),
                weight: 1,
                id: i as u16,
            })
            .collect()
    }

    fn shares(table: &[u16], ids: usize) -> Vec<f64> {
        let mut counts = vec![0usize; ids];
        for id in table {
            counts[*id as usize] += 1;
        }
        counts
            .iter()
            .map(|c| *c as f64 / table.len() as f64)
            .collect()
    }

    #[test]
    fn every_slot_is_filled_and_shares_are_even() {
        let s = servers(7);
        let t = build(&s, M);
        assert!(t.iter().all(|id| *id != NO_BACKEND));
        for share in shares(&t, 7) {
            assert!((share - 1.0 / 7.0).abs() < 0.002, "share {share}");
        }
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        for n in [3usize, 10, 50] {
            let all = servers(n);
            let before = build(&all, M);
            let removed = all[n / 2].id;
            let rest: Vec<Entry> = all.iter().copied().filter(|e| e.id != removed).collect();
            let after = build(&rest, M);
            let moved =
                before.iter().zip(&after).filter(|(b, a)| b != a).count() as f64 / f64::from(M);
            let ideal = 1.0 / n as f64;
            // Every slot of the removed server must move; Maglev moves a
            // little more than that, and the paper's bound is loose.
            assert!(moved >= ideal * 0.99, "n={n}: moved {moved}");
            assert!(moved < ideal * 1.6, "n={n}: moved {moved}, ideal {ideal}");
            // Flows of surviving servers mostly stay put.
            let kept = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| **b != removed && b == a)
                .count() as f64
                / before.iter().filter(|b| **b != removed).count() as f64;
            assert!(kept > 0.85, "n={n}: only {kept} of surviving slots kept");
        }
    }

    #[test]
    fn weights_give_proportional_shares_within_one_percent() {
        let mut s = servers(4);
        for (i, e) in s.iter_mut().enumerate() {
            e.weight = (i as u32 + 1) * 10;
        }
        let t = build(&s, M);
        let total: u32 = s.iter().map(|e| e.weight).sum();
        for (i, share) in shares(&t, 4).iter().enumerate() {
            let want = f64::from(s[i].weight) / f64::from(total);
            assert!(
                (share - want).abs() / want < 0.01,
                "server {i}: share {share}, want {want}"
            );
        }
    }

    #[test]
    fn zero_weight_takes_no_slots_and_empty_means_no_backend() {
        let mut s = servers(3);
        s[1].weight = 0;
        let t = build(&s, M);
        assert!(!t.contains(&1));
        assert!(t.contains(&0) && t.contains(&2));
        let none = build(&[], M);
        assert!(none.iter().all(|id| *id == NO_BACKEND));
    }

    #[test]
    fn independent_of_config_order_and_ids_follow_addresses() {
        let s = servers(5);
        let mut r = s.clone();
        r.reverse();
        assert_eq!(build(&s, M), build(&r, M));
    }

    #[test]
    fn small_prime_table() {
        let t = build(&servers(2), 13);
        assert_eq!(t.len(), 13);
        assert!(t.iter().all(|id| *id < 2));
    }
}
