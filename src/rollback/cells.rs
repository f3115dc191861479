//! Rollback cells: the slices of traffic in which outcomes are compared.
//!
//! Every request is in exactly one *single* cell per attribute group (device,
//! location, path class, method, and low/high of four history signals) and in
//! one *pair* cell per two groups (e.g. `device=tablet&path_class_2`), so a harm
//! that only appears where two attributes meet is seen in its own cell rather
//! than diluted in both parents. Indices: singles `0..CELLS`, then pairs
//! `CELLS..ALL_CELLS`, group pair by group pair.

use crate::profile::{Profile, MAX_HISTORY, MAX_LOCATIONS, MAX_PATH_CLASSES};

/// Attribute groups; a request has exactly one single cell in each.
pub const GROUPS: usize = 8;
/// Number of single cells across all groups.
pub const CELLS: usize = 25;
/// First single cell of each group, and the group sizes: device (5), location
/// (5), path class (5), method (2), four history signals (2 each).
pub const GROUP_START: [usize; GROUPS] = [0, 5, 10, 15, 17, 19, 21, 23];
const GROUP_SIZE: [usize; GROUPS] = [5, 5, 5, 2, 2, 2, 2, 2];
/// Pair cells: one per combination of two cells from different groups.
pub const PAIRS: usize = pair_count();
pub const ALL_CELLS: usize = CELLS + PAIRS;
/// Cells one request is in: its singles and their pairs.
pub const PER_REQUEST: usize = GROUPS + GROUPS * (GROUPS - 1) / 2;
/// Words of a bitmask over all cells.
pub const MASK_WORDS: usize = ALL_CELLS.div_ceil(64);

const fn pair_count() -> usize {
    let mut n = 0;
    let mut a = 0;
    while a < GROUPS {
        let mut b = a + 1;
        while b < GROUPS {
            n += GROUP_SIZE[a] * GROUP_SIZE[b];
            b += 1;
        }
        a += 1;
    }
    n
}

const fn pair_base() -> [[usize; GROUPS]; GROUPS] {
    let mut base = [[0; GROUPS]; GROUPS];
    let mut next = CELLS;
    let mut a = 0;
    while a < GROUPS {
        let mut b = a + 1;
        while b < GROUPS {
            base[a][b] = next;
            next += GROUP_SIZE[a] * GROUP_SIZE[b];
            b += 1;
        }
        a += 1;
    }
    base
}

/// First pair cell of groups `a < b`.
const PAIR_BASE: [[usize; GROUPS]; GROUPS] = pair_base();

// One cell per value of each attribute, plus one for "none of them".
const _: () = assert!(GROUP_SIZE[1] == MAX_LOCATIONS + 1 && GROUP_SIZE[2] == MAX_PATH_CLASSES + 1);
const _: () = assert!(GROUPS == 4 + MAX_HISTORY, "one group per history signal");

/// A request's single cell in each group, from its typed profile.
pub fn cells(profile: &Profile) -> [u8; GROUPS] {
    let mut out = [0u8; GROUPS];
    out[0] = profile.device.slot().unwrap_or(4) as u8; // mobile, tablet, desktop, bot, unknown
    out[1] = (5 + profile.location.unwrap_or(MAX_LOCATIONS)) as u8; // location 0-3, other
    out[2] = (10 + profile.path_class.unwrap_or(MAX_PATH_CLASSES)) as u8; // path class 0-3, none
    out[3] = (15 + usize::from(profile.write)) as u8; // read, write
    for h in 0..MAX_HISTORY {
        out[4 + h] = (GROUP_START[4 + h] + usize::from(profile.history_high(h))) as u8;
    }
    out
}

/// The group of single cell `c`.
pub fn group(c: usize) -> usize {
    GROUP_START.iter().rposition(|&start| start <= c).unwrap_or(0)
}

/// The single cells of the same group as `c` (including `c`).
pub fn siblings(c: usize) -> std::ops::Range<usize> {
    let g = group(c);
    GROUP_START[g]..GROUP_START[g] + GROUP_SIZE[g]
}

/// The pair cell of singles `a` and `b` (different groups, any order).
pub fn pair(a: usize, b: usize) -> Option<usize> {
    let (a, b) = if a <= b { (a, b) } else { (b, a) };
    let (ga, gb) = (group(a), group(b));
    if ga == gb || a >= CELLS || b >= CELLS {
        return None;
    }
    Some(PAIR_BASE[ga][gb] + (a - GROUP_START[ga]) * GROUP_SIZE[gb] + (b - GROUP_START[gb]))
}

/// The two single cells of pair cell `p` (`None` for a single).
pub fn parents(p: usize) -> Option<(usize, usize)> {
    if !(CELLS..ALL_CELLS).contains(&p) {
        return None;
    }
    for a in 0..GROUPS {
        for b in a + 1..GROUPS {
            let base = PAIR_BASE[a][b];
            if (base..base + GROUP_SIZE[a] * GROUP_SIZE[b]).contains(&p) {
                let off = p - base;
                return Some((GROUP_START[a] + off / GROUP_SIZE[b], GROUP_START[b] + off % GROUP_SIZE[b]));
            }
        }
    }
    None
}

/// Every cell a request with singles `singles` is in: the singles, then the pairs.
pub fn expand(singles: &[u8; GROUPS]) -> [u16; PER_REQUEST] {
    let mut out = [0u16; PER_REQUEST];
    let mut i = 0;
    for &s in singles {
        out[i] = u16::from(s);
        i += 1;
    }
    for a in 0..GROUPS {
        for b in a + 1..GROUPS {
            let (ca, cb) = (usize::from(singles[a]), usize::from(singles[b]));
            let p = PAIR_BASE[a][b]
                + ca.saturating_sub(GROUP_START[a]).min(GROUP_SIZE[a] - 1) * GROUP_SIZE[b]
                + cb.saturating_sub(GROUP_START[b]).min(GROUP_SIZE[b] - 1);
            out[i] = p as u16;
            i += 1;
        }
    }
    out
}

/// What a tally of cell `c` shares with cell `blocked` (a single or a pair):
/// what a block there takes away from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// No request in common: some group of `blocked` has another value in `c`.
    Disjoint,
    /// The requests in common are exactly those of this cell (`c` itself
    /// when it lies inside the block, the block when it lies inside `c`, or
    /// the pair of a single `c` with a blocked single of another group).
    Within(usize),
    /// In common: a triple of attributes, which no tally counts.
    Unknown,
}

/// The [`Overlap`] of cell `c` with cell `blocked` (both `< ALL_CELLS`).
pub fn overlap(blocked: usize, c: usize) -> Overlap {
    let attrs = |x: usize| parents(x).map_or([x, x], |(a, b)| [a, b]);
    let (block, cell) = (attrs(blocked), attrs(c));
    let clash = block.iter().any(|&a| cell.iter().any(|&x| group(a) == group(x) && a != x));
    if clash {
        return Overlap::Disjoint;
    }
    let inside = |inner: [usize; 2], outer: [usize; 2]| outer.iter().all(|o| inner.contains(o));
    if inside(cell, block) {
        Overlap::Within(c)
    } else if inside(block, cell) {
        Overlap::Within(blocked)
    } else if blocked < CELLS && c < CELLS {
        pair(blocked, c).map_or(Overlap::Unknown, Overlap::Within)
    } else {
        Overlap::Unknown
    }
}

/// Human-readable cell name, for logs and reports.
pub fn cell_name(cell: usize) -> String {
    const DEVICES: [&str; 5] = ["mobile", "tablet", "desktop", "bot", "unknown"];
    if let Some((a, b)) = parents(cell) {
        return format!("{}&{}", cell_name(a), cell_name(b));
    }
    match cell {
        0..=4 => format!("device={}", DEVICES[cell]),
        5..=8 => format!("location_{}", cell - 5),
        9 => "location=other".into(),
        10..=13 => format!("path_class_{}", cell - 10),
        14 => "path_class=none".into(),
        15 => "method=read".into(),
        16 => "method=write".into(),
        17..=24 => {
            format!("history_{}={}", (cell - 17) / 2, if (cell - 17) % 2 == 0 { "low" } else { "high" })
        }
        _ => format!("cell_{cell}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_cover_every_group_once() {
        use crate::profile::Device;
        let p = Profile { device: Device::Tablet, location: Some(2), ..Profile::default() };
        let c = cells(&p);
        assert_eq!(c, [1, 7, 14, 15, 17, 19, 21, 23]);
        assert_eq!(cells(&Profile::default()), [4, 9, 14, 15, 17, 19, 21, 23]);
        let mut p = Profile { write: true, ..Profile::default() };
        p.history[3] = 0.9;
        assert_eq!(cells(&p)[3], 16);
        assert_eq!(cells(&p)[7], 24);
        assert_eq!(cell_name(1), "device=tablet");
        assert_eq!(cell_name(24), "history_3=high");
    }

    #[test]
    fn pairs_are_numbered_once_and_name_their_parents() {
        assert_eq!(PAIRS, 265);
        assert_eq!(PER_REQUEST, 36);
        let mut seen = vec![false; ALL_CELLS];
        for a in 0..CELLS {
            for b in 0..CELLS {
                if let Some(p) = pair(a, b) {
                    assert_eq!(parents(p), Some((a.min(b), a.max(b))));
                    seen[p] = true;
                } else {
                    assert_eq!(group(a), group(b));
                }
            }
        }
        assert!(seen[CELLS..].iter().all(|s| *s), "every pair index is reachable");
        assert_eq!(cell_name(pair(1, 12).unwrap()), "device=tablet&path_class_2");
        let singles = [1, 7, 12, 16, 17, 20, 21, 24];
        let all = expand(&singles);
        assert_eq!(&all[..GROUPS], &singles.map(u16::from));
        assert_eq!(all[GROUPS], pair(1, 7).unwrap() as u16);
        assert!(all.contains(&(pair(12, 24).unwrap() as u16)));
        assert_eq!(parents(3), None);
    }

    #[test]
    fn overlap_names_the_shared_requests() {
        let (tablet, mobile, latam, write) = (1, 0, 8, 16);
        let tablet_latam = pair(tablet, latam).unwrap();
        assert_eq!(overlap(tablet, tablet), Overlap::Within(tablet));
        assert_eq!(overlap(tablet, mobile), Overlap::Disjoint, "same group, other value");
        assert_eq!(overlap(tablet, latam), Overlap::Within(tablet_latam), "their pair");
        assert_eq!(overlap(tablet, tablet_latam), Overlap::Within(tablet_latam), "inside the block");
        assert_eq!(overlap(tablet_latam, tablet), Overlap::Within(tablet_latam), "a parent holds the pair");
        assert_eq!(overlap(tablet_latam, pair(mobile, latam).unwrap()), Overlap::Disjoint);
        assert_eq!(overlap(tablet_latam, write), Overlap::Unknown, "a triple");
        assert_eq!(overlap(tablet, pair(latam, write).unwrap()), Overlap::Unknown);
        assert_eq!(overlap(tablet_latam, pair(tablet, write).unwrap()), Overlap::Unknown);
    }
}
