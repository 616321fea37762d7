//! Pure: which Modbus read requests serve a set of items.
//!
//! # The rules
//!
//! A request reads one contiguous address range of one table. For register
//! tables it spans at most the host's `max_read_registers` (clamped to the
//! protocol's 1..=125); two neighbouring items may share it only if the unused
//! registers between them are at most `max_gap`. For the bit tables (coils,
//! discrete inputs) a request spans at most 2000 bits and the gap allowance is
//! `max_gap * 16` bits (the same number of bytes on the wire, roughly). Items may
//! share or overlap addresses (several `bool` items on bits of one register);
//! an item is never split across requests.
//!
//! # Why greedy after sorting is optimal
//!
//! [`plan_items`] sorts a table's items by (start, end) and walks them once,
//! adding each item to the open request while the request stays within the
//! span limit and the item starts at most `gap` unused addresses after the
//! highest end seen so far; otherwise it closes the request and opens a new one
//! at that item. Call the first rejected item `j` and the accepted prefix `G`,
//! read as the interval `[s1, g]` (`s1` = the smallest start, `g` = the largest
//! end in the prefix).
//!
//! Think of any plan as a set of address intervals, each within the span limit
//! and containing no run of more than `gap` addresses that no item covers, such
//! that every item lies inside some interval. (This is at least as permissive
//! as "each request lists its own items", so its optimum is a lower bound for
//! ours.) Take an optimal plan `P` and its interval `R` holding item 1; trimming
//! `R` to start at `s1` keeps it valid. Exchange `R` for `G`:
//!
//! * if `j` was rejected for the gap, the addresses `g+1 .. j.start-1` are
//!   covered by no item at all (earlier items end by `g`, later ones start at
//!   `j.start` or after), so `R` cannot reach past `g` without containing that
//!   hole: everything inside `R` is inside `G`;
//! * if `j` was rejected for the span, `j.end > s1 + limit - 1`, so `j` is not
//!   inside `R` but inside some other interval `R_j` of `P`; any item inside `R`
//!   but not inside `G` starts at or after `j.start` (it comes after `j` in the
//!   sorted order) and ends before `j.end` (it fits in `R`), so it lies inside
//!   `j` and therefore inside `R_j`.
//!
//! Either way `P - R + G` is still a valid plan of the same size. Every item
//! greedy has not yet placed is covered by `P - R`, and what earlier items
//! covered at or after `j.start` is covered by `j` too, so `P - R` (trimmed to
//! start at `j.start`) is a valid plan for the remaining items: by induction
//! greedy needs at most `|P| - 1` requests for them. Hence greedy needs at most
//! `|P|`, and every greedy request also satisfies the stricter per-request rule.
//! The tests check this against brute force over every set partition (small
//! maps) and a dynamic program over contiguous runs (larger maps).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::model::{HostSpec, Table};

/// One read request of a poll cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub table: Table,
    /// First address read (0-based).
    pub start: u16,
    /// Registers (or bits) read.
    pub count: u16,
    /// Indices into the host's `items` served by this request, in address order.
    pub items: Vec<usize>,
}

impl ReadRequest {
    /// The last address read (inclusive).
    pub fn end(&self) -> u16 {
        self.start.saturating_add(self.count.saturating_sub(1))
    }
}

/// The items of one poll interval and the requests that read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollGroup {
    pub interval: Duration,
    pub requests: Vec<ReadRequest>,
}

/// Bits one coil/discrete read may span (Modbus protocol limit).
pub const MAX_READ_BITS: u16 = 2000;

/// The span limit and gap allowance of one request of `table` on `host`:
/// registers for register tables, bits for bit tables.
pub fn limits(host: &HostSpec, table: Table) -> (u16, u32) {
    if table.is_bits() {
        (MAX_READ_BITS, u32::from(host.max_gap) * 16)
    } else {
        let max = host.max_read_registers.clamp(1, table.protocol_max_read());
        (max, u32::from(host.max_gap))
    }
}

/// Merges the given items (indices into `host.items`) into the fewest read
/// requests the host allows (see the module docs for the rules and the proof).
///
/// The result is sorted by (table, start); each request lists its items in
/// address order. Duplicate indices are served once; indices outside
/// `host.items` are ignored. An item wider than the host's limit (a config the
/// validator should refuse) is read alone by a request of exactly its width.
pub fn plan_items(host: &HostSpec, items: &[usize]) -> Vec<ReadRequest> {
    let mut sorted: Vec<(Table, u16, u16, usize)> = items
        .iter()
        .filter_map(|&i| {
            host.items
                .get(i)
                .map(|it| (it.table, it.address, it.end(), i))
        })
        .collect();
    sorted.sort_unstable();
    sorted.dedup_by_key(|e| e.3);
    // dedup_by_key only drops adjacent duplicates; equal indices are always
    // adjacent because they sort by the same (table, address, end).

    let mut out: Vec<ReadRequest> = Vec::new();
    // The open request: (table, start, highest end so far, items).
    let mut open: Option<(Table, u16, u16, Vec<usize>)> = None;
    for (table, start, end, index) in sorted {
        if let Some((t, s, e, list)) = open.as_mut() {
            let (limit, gap) = limits(host, *t);
            let new_end = (*e).max(end);
            let span = u32::from(new_end) - u32::from(*s) + 1;
            let unused = u32::from(start).saturating_sub(u32::from(*e) + 1);
            if *t == table && span <= u32::from(limit) && unused <= gap {
                *e = new_end;
                list.push(index);
                continue;
            }
        }
        if let Some(done) = open.take() {
            out.push(close(done));
        }
        open = Some((table, start, end, vec![index]));
    }
    if let Some(done) = open.take() {
        out.push(close(done));
    }
    out
}

fn close((table, start, end, items): (Table, u16, u16, Vec<usize>)) -> ReadRequest {
    ReadRequest {
        table,
        start,
        // At most 65536 when an item ends at the top of the address space and
        // starts at 0, which no device limit allows; saturate rather than wrap.
        count: u16::try_from(u32::from(end) - u32::from(start) + 1).unwrap_or(u16::MAX),
        items,
    }
}

/// The host's items grouped by their poll interval (ascending), each group
/// planned with [`plan_items`]. Groups without items do not appear.
pub fn plan_host(host: &HostSpec) -> Vec<PollGroup> {
    let mut groups: BTreeMap<Duration, Vec<usize>> = BTreeMap::new();
    for (i, item) in host.items.iter().enumerate() {
        groups.entry(item.poll_interval).or_default().push(i);
    }
    groups
        .into_iter()
        .map(|(interval, items)| PollGroup {
            interval,
            requests: plan_items(host, &items),
        })
        .collect()
}

/// One line of `modbridge check`'s plan, e.g.
/// `pump input 0..12 (13 registers, 30001..30013) 8 items every 10s`.
pub fn describe(host: &HostSpec, req: &ReadRequest, interval: Duration) -> String {
    let end = req.end();
    let noun = match (req.table, req.count == 1) {
        (Table::Coil, true) => "coil",
        (Table::Coil, false) => "coils",
        (Table::Discrete, true) => "discrete input",
        (Table::Discrete, false) => "discrete inputs",
        (_, true) => "register",
        (_, false) => "registers",
    };
    let n = req.items.len();
    format!(
        "{} {} {}..{} ({} {}, {}..{}) {} {} every {}",
        host.host,
        req.table.name(),
        req.start,
        end,
        req.count,
        noun,
        req.table.modicon(req.start),
        req.table.modicon(end),
        n,
        if n == 1 { "item" } else { "items" },
        crate::units::format_duration(interval),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ItemSpec, ValueType};

    fn item(table: Table, address: u16, vt: ValueType, every: u64) -> ItemSpec {
        ItemSpec {
            poll_interval: Duration::from_secs(every),
            ..ItemSpec::new(&format!("{}.{address}", table.name()), table, address, vt)
        }
    }

    fn host(max: u16, gap: u16, items: Vec<ItemSpec>) -> HostSpec {
        HostSpec {
            max_read_registers: max,
            max_gap: gap,
            ..HostSpec::tcp("pump", "127.0.0.1", 502, items)
        }
    }

    use Table::{Coil, Discrete, Holding, Input};

    /// A request flattened for comparison: (table, start, count, items).
    type Flat = (Table, u16, u16, Vec<usize>);

    fn flat(plan: Vec<ReadRequest>) -> Vec<Flat> {
        plan.into_iter()
            .map(|r| (r.table, r.start, r.count, r.items))
            .collect()
    }
    use ValueType::{Bool, F32, F64, I16, U16, U32};

    /// Plans every item of a host built from `(table, address, type)` and
    /// compares the requests as `(table, start, count, item indices)`.
    #[track_caller]
    fn check(
        max: u16,
        gap: u16,
        items: &[(Table, u16, ValueType)],
        expected: &[(Table, u16, u16, &[usize])],
    ) {
        let h = host(
            max,
            gap,
            items.iter().map(|&(t, a, vt)| item(t, a, vt, 10)).collect(),
        );
        let all: Vec<usize> = (0..items.len()).collect();
        let got = flat(plan_items(&h, &all));
        let want: Vec<Flat> = expected
            .iter()
            .map(|&(t, s, c, i)| (t, s, c, i.to_vec()))
            .collect();
        assert_eq!(got, want, "max {max} gap {gap} items {items:?}");
        assert_valid(&h, &all, &plan_items(&h, &all));
    }

    #[test]
    fn plans() {
        // Nothing to read.
        check(125, 8, &[], &[]);
        // One item.
        check(125, 8, &[(Holding, 3, I16)], &[(Holding, 3, 1, &[0])]);
        // Adjacent items merge; listed in address order whatever the input order.
        check(
            125,
            0,
            &[(Input, 2, U32), (Input, 0, I16), (Input, 1, U16)],
            &[(Input, 0, 4, &[1, 2, 0])],
        );
        // A gap of exactly max_gap merges, one more splits.
        check(
            125,
            3,
            &[(Input, 0, U16), (Input, 4, U16), (Input, 9, U16)],
            &[(Input, 0, 5, &[0, 1]), (Input, 9, 1, &[2])],
        );
        // Gap measured from the end of a wide item.
        check(
            125,
            1,
            &[(Holding, 0, F64), (Holding, 5, U16)],
            &[(Holding, 0, 6, &[0, 1])],
        );
        // The span limit splits even without gaps; items are never split.
        check(
            3,
            8,
            &[(Holding, 0, U16), (Holding, 1, U16), (Holding, 2, F32)],
            &[(Holding, 0, 2, &[0, 1]), (Holding, 2, 2, &[2])],
        );
        check(
            4,
            8,
            &[(Holding, 0, F32), (Holding, 2, F32), (Holding, 4, F32)],
            &[(Holding, 0, 4, &[0, 1]), (Holding, 4, 2, &[2])],
        );
        // One table per request, tables in model order (coil, discrete, input, holding).
        check(
            125,
            100,
            &[
                (Holding, 0, U16),
                (Input, 0, U16),
                (Coil, 0, Bool),
                (Discrete, 0, Bool),
            ],
            &[
                (Coil, 0, 1, &[2]),
                (Discrete, 0, 1, &[3]),
                (Input, 0, 1, &[1]),
                (Holding, 0, 1, &[0]),
            ],
        );
        // Several bools on one register share it; overlapping items are fine.
        check(
            125,
            0,
            &[
                (Holding, 5, Bool),
                (Holding, 5, Bool),
                (Holding, 4, U32),
                (Holding, 5, U16),
            ],
            &[(Holding, 4, 2, &[2, 0, 1, 3])],
        );
        // Bit tables: up to 2000 bits, gap allowance max_gap * 16 bits.
        check(
            10,
            2,
            &[(Coil, 0, Bool), (Coil, 33, Bool), (Coil, 67, Bool)],
            &[(Coil, 0, 34, &[0, 1]), (Coil, 67, 1, &[2])],
        );
        check(
            1,
            200,
            &[
                (Discrete, 0, Bool),
                (Discrete, 1999, Bool),
                (Discrete, 2000, Bool),
            ],
            &[(Discrete, 0, 2000, &[0, 1]), (Discrete, 2000, 1, &[2])],
        );
        // max_read_registers is clamped to the protocol's 125.
        check(
            500,
            200,
            &[(Input, 0, U16), (Input, 124, U16), (Input, 125, U16)],
            &[(Input, 0, 125, &[0, 1]), (Input, 125, 1, &[2])],
        );
        // An item wider than the limit is read alone, whole.
        check(
            2,
            8,
            &[(Holding, 0, U16), (Holding, 1, F64), (Holding, 5, U16)],
            &[
                (Holding, 0, 1, &[0]),
                (Holding, 1, 4, &[1]),
                (Holding, 5, 1, &[2]),
            ],
        );
        // Top of the address space: the end saturates instead of wrapping.
        check(
            125,
            0,
            &[(Holding, 65534, U16), (Holding, 65535, U16)],
            &[(Holding, 65534, 2, &[0, 1])],
        );
    }

    #[test]
    fn plan_items_takes_a_subset_and_ignores_duplicates_and_bad_indices() {
        let h = host(
            125,
            8,
            vec![
                item(Holding, 0, U16, 10),
                item(Holding, 1, U16, 10),
                item(Holding, 2, U16, 10),
            ],
        );
        let got = plan_items(&h, &[2, 0, 2, 99]);
        assert_eq!(
            got,
            vec![ReadRequest {
                table: Holding,
                start: 0,
                count: 3,
                items: vec![0, 2]
            }]
        );
    }

    #[test]
    fn plan_host_groups_by_interval() {
        let h = host(
            125,
            8,
            vec![
                item(Input, 0, I16, 60),
                item(Input, 1, I16, 10),
                item(Input, 2, I16, 60),
                item(Coil, 0, Bool, 1),
            ],
        );
        let groups = plan_host(&h);
        let got: Vec<(u64, Vec<Flat>)> = groups
            .into_iter()
            .map(|g| (g.interval.as_secs(), flat(g.requests)))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, vec![(Coil, 0, 1, vec![3])]),
                (10, vec![(Input, 1, 1, vec![1])]),
                (60, vec![(Input, 0, 3, vec![0, 2])]),
            ]
        );
        assert!(plan_host(&host(125, 8, Vec::new())).is_empty());
    }

    #[test]
    fn describe_lines() {
        let mut items: Vec<ItemSpec> = (0..8).map(|a| item(Input, a, I16, 10)).collect();
        items.push(item(Input, 12, I16, 10));
        let h = host(125, 8, items);
        let cases: &[(Table, u16, u16, usize, Duration, &str)] = &[
            (
                Input,
                0,
                13,
                8,
                Duration::from_secs(10),
                "pump input 0..12 (13 registers, 30001..30013) 8 items every 10s",
            ),
            (
                Holding,
                3,
                1,
                1,
                Duration::from_millis(500),
                "pump holding 3..3 (1 register, 40004..40004) 1 item every 500ms",
            ),
            (
                Holding,
                9990,
                20,
                2,
                Duration::from_secs(300),
                "pump holding 9990..10009 (20 registers, 49991..410010) 2 items every 5m",
            ),
            (
                Coil,
                0,
                16,
                3,
                Duration::from_secs(90),
                "pump coil 0..15 (16 coils, 1..16) 3 items every 90s",
            ),
            (
                Coil,
                7,
                1,
                1,
                Duration::from_secs(7200),
                "pump coil 7..7 (1 coil, 8..8) 1 item every 2h",
            ),
            (
                Discrete,
                0,
                2,
                2,
                Duration::from_secs(86_400),
                "pump discrete 0..1 (2 discrete inputs, 10001..10002) 2 items every 1d",
            ),
            (
                Discrete,
                4,
                1,
                1,
                Duration::from_millis(1500),
                "pump discrete 4..4 (1 discrete input, 10005..10005) 1 item every 1500ms",
            ),
        ];
        for &(table, start, count, n, every, want) in cases {
            let req = ReadRequest {
                table,
                start,
                count,
                items: (0..n).collect(),
            };
            assert_eq!(describe(&h, &req, every), want);
        }
        // And straight from a plan.
        let groups = plan_host(&h);
        assert_eq!(groups.len(), 1);
        let lines: Vec<String> = groups[0]
            .requests
            .iter()
            .map(|r| describe(&h, r, groups[0].interval))
            .collect();
        assert_eq!(
            lines,
            vec!["pump input 0..12 (13 registers, 30001..30013) 9 items every 10s"]
        );
    }

    // ---- optimality against brute force ----

    /// The item intervals of a request (inclusive ends).
    fn feasible(h: &HostSpec, table: Table, spans: &[(u16, u16)]) -> bool {
        let (limit, gap) = limits(h, table);
        let mut v = spans.to_vec();
        v.sort_unstable();
        let Some(&(lo, _)) = v.first() else {
            return true;
        };
        let hi = v.iter().map(|s| s.1).max().unwrap_or(lo);
        if u32::from(hi) - u32::from(lo) + 1 > u32::from(limit) {
            return false;
        }
        let mut reach = v[0].1;
        for &(s, e) in &v[1..] {
            if u32::from(s) > u32::from(reach) + 1 + gap {
                return false;
            }
            reach = reach.max(e);
        }
        true
    }

    /// Every request is valid and every item is served exactly once.
    fn assert_valid(h: &HostSpec, asked: &[usize], plan: &[ReadRequest]) {
        let mut served: Vec<usize> = Vec::new();
        for w in plan.windows(2) {
            assert!(
                (w[0].table, w[0].start) <= (w[1].table, w[1].start),
                "sorted: {plan:?}"
            );
        }
        for r in plan {
            let spans: Vec<(u16, u16)> = r
                .items
                .iter()
                .map(|&i| (h.items[i].address, h.items[i].end()))
                .collect();
            for w in r.items.windows(2) {
                let (a, b) = (&h.items[w[0]], &h.items[w[1]]);
                assert!((a.address, a.end()) <= (b.address, b.end()), "{r:?}");
            }
            for &i in &r.items {
                assert_eq!(h.items[i].table, r.table);
            }
            assert_eq!(r.start, spans.iter().map(|s| s.0).min().unwrap());
            assert_eq!(r.end(), spans.iter().map(|s| s.1).max().unwrap());
            let oversized = spans.len() == 1 && r.count > limits(h, r.table).0;
            assert!(oversized || feasible(h, r.table, &spans), "{r:?}");
            served.extend(&r.items);
        }
        served.sort_unstable();
        let mut want = asked.to_vec();
        want.sort_unstable();
        want.dedup();
        assert_eq!(served, want);
    }

    /// Minimum requests over every partition of the items into sets
    /// (restricted-growth strings), for small maps. Item lists are one table.
    fn brute_partitions(h: &HostSpec, table: Table) -> usize {
        let n = h.items.len();
        let spans: Vec<(u16, u16)> = h.items.iter().map(|i| (i.address, i.end())).collect();
        let mut best = n;
        let mut block = vec![0usize; n];
        fn rec(
            k: usize,
            used: usize,
            block: &mut Vec<usize>,
            best: &mut usize,
            f: &dyn Fn(&[usize], usize) -> bool,
        ) {
            if used >= *best {
                return;
            }
            if k == block.len() {
                if f(block, used) {
                    *best = used;
                }
                return;
            }
            for b in 0..=used {
                block[k] = b;
                rec(k + 1, used.max(b + 1), block, best, f);
            }
        }
        let ok = |block: &[usize], used: usize| {
            (0..used).all(|b| {
                let s: Vec<(u16, u16)> = (0..n)
                    .filter(|&i| block[i] == b)
                    .map(|i| spans[i])
                    .collect();
                feasible(h, table, &s)
            })
        };
        if n == 0 {
            return 0;
        }
        rec(0, 0, &mut block, &mut best, &ok);
        best
    }

    /// Minimum requests over every split of the sorted items into contiguous runs (DP).
    fn dp_runs(h: &HostSpec, table: Table) -> usize {
        let mut spans: Vec<(u16, u16)> = h.items.iter().map(|i| (i.address, i.end())).collect();
        spans.sort_unstable();
        let n = spans.len();
        let mut best = vec![usize::MAX; n + 1];
        best[0] = 0;
        for i in 1..=n {
            for j in 0..i {
                if best[j] != usize::MAX && feasible(h, table, &spans[j..i]) {
                    best[i] = best[i].min(best[j] + 1);
                }
            }
        }
        best[n]
    }

    fn random_host(rng: &mut fastrand::Rng, n: usize, overlaps: bool) -> (HostSpec, Table) {
        let table = [Holding, Input, Coil, Discrete][rng.usize(0..4)];
        let bits = table.is_bits();
        let max = if bits { 2000 } else { rng.u16(1..=12) };
        let gap = rng.u16(0..=4);
        let mut items = Vec::new();
        let mut addr: u32 = rng.u32(0..20);
        for _ in 0..n {
            let vt = if bits {
                Bool
            } else {
                let choices: Vec<ValueType> = [U16, U32, F64]
                    .into_iter()
                    .filter(|v| v.registers() <= max)
                    .collect();
                choices[rng.usize(0..choices.len())]
            };
            let mut it = item(table, u16::try_from(addr).unwrap_or(u16::MAX), vt, 10);
            if bits && rng.bool() {
                // Make the bit tables' span limit bite in small maps too.
                it.address = rng.u16(0..6000);
            }
            let w = u32::from(it.width());
            let step = if bits {
                rng.u32(0..=80)
            } else {
                rng.u32(0..=6)
            };
            addr += if overlaps && rng.u8(0..4) == 0 {
                rng.u32(0..w) // overlap the next item with this one
            } else {
                w + step
            };
            items.push(it);
        }
        rng.shuffle(&mut items);
        (host(max, gap, items), table)
    }

    #[test]
    fn greedy_matches_brute_force_over_all_partitions() {
        let mut rng = fastrand::Rng::with_seed(0x6d6f_6462);
        for round in 0..1500 {
            let n = rng.usize(0..=7);
            let (h, table) = random_host(&mut rng, n, round % 2 == 0);
            let all: Vec<usize> = (0..n).collect();
            let plan = plan_items(&h, &all);
            assert_valid(&h, &all, &plan);
            assert_eq!(
                plan.len(),
                brute_partitions(&h, table),
                "round {round}: {:?}",
                h.items
                    .iter()
                    .map(|i| (i.address, i.end()))
                    .collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn greedy_matches_dp_over_contiguous_runs() {
        let mut rng = fastrand::Rng::with_seed(42);
        for round in 0..1500 {
            let n = rng.usize(0..=40);
            let (h, table) = random_host(&mut rng, n, round % 3 == 0);
            let all: Vec<usize> = (0..n).collect();
            let plan = plan_items(&h, &all);
            assert_valid(&h, &all, &plan);
            assert_eq!(plan.len(), dp_runs(&h, table), "round {round}");
        }
    }
}
