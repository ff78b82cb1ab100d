//! The metrics shared memory: what `proxy_define_metric`,
//! `proxy_increment_metric`, `proxy_record_metric` and `proxy_get_metric`
//! work on (Kong/ngx_wasm_module `src/common/metrics/ngx_wa_metrics.c`,
//! `ngx_wa_histogram.c`, the key-value store of
//! `src/common/shm/ngx_wa_shm_kv.c` and nginx's slab allocator).
//!
//! - A metric is one entry of a key-value store in the `metrics` zone,
//!   keyed by its prefixed name; its id is the CRC-32 of that name
//!   (`ngx_wa_metrics_define`), and every lookup goes by id alone
//!   (`ngx_wa_shm_kv_get_locked` with a hash): two names with the same
//!   CRC-32 are one metric.
//! - Entries sit in a red-black tree keyed by the id (nginx's
//!   `ngx_rbtree_insert` with `ngx_str_rbtree_insert_value`); Kong's Lua
//!   side lists them in pre-order (`retrieve_keys` in
//!   `src/common/lua/ngx_wasm_lua_ffi.c`), which [`MetricsStore::readings`]
//!   reproduces.
//! - Each value has one slot per worker; the emulator is worker 0 and the
//!   other slots stay empty, so merged reads equal worker 0's values.
//! - Memory is nginx's slab allocator over the zone (4 KiB pages, chunk
//!   sizes rounded up to powers of two from 8 to 2048 bytes, bigger
//!   allocations in whole pages): [`Slab`] counts pages and chunks the same
//!   way, so the zone fills up when the host's would.

use super::api::{HostOptions, MetricKind, MetricReading, MetricValue};
use std::collections::HashMap;

/// nginx's page size (x86-64 Linux).
const PAGE: usize = 4096;
/// `ngx_slab_max_size`: larger allocations take whole pages.
const SLAB_MAX_SIZE: usize = PAGE / 2;
/// `min_shift` of a shared zone (8-byte chunks at least).
const MIN_SHIFT: u32 = 3;
/// Chunk sizes (slots) of a pool: 8 .. 2048 bytes.
const SLOTS: usize = 9;
/// `ngx_slab_exact_shift`: 64-byte chunks keep their bitmap in the page
/// descriptor (64 bits, one per chunk).
const EXACT_SHIFT: u32 = 6;
/// `sizeof(ngx_slab_pool_t)`, `sizeof(ngx_slab_page_t)`,
/// `sizeof(ngx_slab_stat_t)` on x86-64 Linux.
const SLAB_POOL_HEADER: usize = 200;
const SLAB_PAGE_DESC: usize = 24;
const SLAB_STAT: usize = 32;

/// `sizeof(ngx_wa_shm_kv_t)`: allocated once when the zone is set up.
const KV_STORE_HEADER: usize = 88;
/// `sizeof(ngx_wa_shm_kv_node_t)`: every entry is one allocation of this
/// plus the key plus the value.
const KV_NODE: usize = 96;
/// `sizeof(ngx_wa_metric_t)` and `sizeof(ngx_wa_metric_val_t)`: a value is
/// the header plus one slot per worker.
const METRIC_HEADER: usize = 8;
const METRIC_SLOT: usize = 16;
/// `sizeof(ngx_wa_metrics_histogram_t)` and of one bin.
const HISTOGRAM_HEADER: usize = 16;
const HISTOGRAM_BIN: usize = 8;
/// `NGX_WA_METRICS_HISTOGRAM_BINS_INIT`, `_MAX`, `_INCREMENT`.
const BINS_INIT: usize = 5;
const BINS_MAX: usize = 18;
const BINS_INCREMENT: usize = 4;
/// The upper bound of the last bin ("+Inf").
pub(crate) const BIN_INF: u32 = u32::MAX;
/// Smallest zone the `slab_size` directive accepts (`NGX_WA_SHM_MIN_SIZE`).
const MIN_ZONE: usize = 3 * PAGE;

/// `ngx_crc32_long`: CRC-32 (IEEE 802.3, reflected, as zlib's).
pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut crc = u32::MAX;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Refuses the settings the `metrics { }` directives refuse
/// (`ngx_wasm_core_metrics_slab_size_directive`, `validate_shm_size`,
/// `ngx_wasm_core_metrics_max_metric_name_length_directive`).
pub(crate) fn validate(opts: &HostOptions) -> anyhow::Result<()> {
    let size = opts.metrics_slab_size;
    if size < MIN_ZONE {
        anyhow::bail!(
            "shm size of {size} bytes is too small, minimum required is {MIN_ZONE} bytes"
        );
    }
    if !size.is_multiple_of(PAGE) {
        anyhow::bail!("shm size of {size} bytes is not page-aligned, must be a multiple of {PAGE}");
    }
    if opts.metrics_max_name_length < 6 {
        anyhow::bail!("max_metric_name_length: value too small (min: 6)");
    }
    if opts.worker_processes == 0 {
        anyhow::bail!("worker_processes must be at least 1");
    }
    Ok(())
}

/// One allocation in the slab pool.
#[derive(Clone, Copy, Debug)]
enum Alloc {
    /// A chunk of a page of slot `slot`; `page` indexes `Slab::slots[slot]`.
    Chunk { slot: usize, page: usize },
    /// A run of whole pages.
    Pages(usize),
}

/// nginx's slab allocator as far as capacity goes (`ngx_slab_init`,
/// `ngx_slab_alloc_locked`, `ngx_slab_free_locked`): how many pages are
/// free, and per chunk size how many chunks each of its pages has in use.
#[derive(Debug)]
struct Slab {
    free_pages: usize,
    /// Per slot, the pages holding chunks of that size: chunks in use
    /// (`None`: the page went back to the free pages).
    slots: Vec<Vec<Option<usize>>>,
}

impl Slab {
    /// The pages `ngx_slab_init` makes out of a zone of `size` bytes.
    fn new(size: usize) -> Self {
        let used = SLAB_POOL_HEADER + SLOTS * (SLAB_PAGE_DESC + SLAB_STAT);
        let rest = size.saturating_sub(used);
        let mut pages = rest / (PAGE + SLAB_PAGE_DESC);
        let start = (used + pages * SLAB_PAGE_DESC).div_ceil(PAGE) * PAGE;
        let fit = size.saturating_sub(start) / PAGE;
        if pages > fit {
            pages = fit;
        }
        Self {
            free_pages: pages,
            slots: vec![Vec::new(); SLOTS],
        }
    }

    /// Chunks a page of chunk size `1 << shift` can hand out (small sizes
    /// keep their bitmap in the first chunks of the page).
    fn chunks_per_page(shift: u32) -> usize {
        let total = PAGE >> shift;
        if shift < EXACT_SHIFT {
            let bitmap = (total / ((1usize << shift) * 8)).max(1);
            total - bitmap
        } else {
            total
        }
    }

    fn alloc(&mut self, size: usize) -> Option<Alloc> {
        if size > SLAB_MAX_SIZE {
            let pages = size.div_ceil(PAGE);
            if self.free_pages < pages {
                return None;
            }
            self.free_pages -= pages;
            return Some(Alloc::Pages(pages));
        }
        let shift = if size > 1 << MIN_SHIFT {
            usize::BITS - (size - 1).leading_zeros()
        } else {
            MIN_SHIFT
        };
        let slot = (shift - MIN_SHIFT) as usize;
        let cap = Self::chunks_per_page(shift);
        let pages = self.slots.get_mut(slot)?;
        if let Some((page, used)) = pages
            .iter_mut()
            .enumerate()
            .find_map(|(i, u)| u.as_mut().filter(|u| **u < cap).map(|u| (i, u)))
        {
            *used += 1;
            return Some(Alloc::Chunk { slot, page });
        }
        if self.free_pages == 0 {
            return None;
        }
        self.free_pages -= 1;
        let page = match pages.iter().position(Option::is_none) {
            Some(i) => {
                pages[i] = Some(1);
                i
            }
            None => {
                pages.push(Some(1));
                pages.len() - 1
            }
        };
        Some(Alloc::Chunk { slot, page })
    }

    fn free(&mut self, a: Alloc) {
        match a {
            Alloc::Pages(n) => self.free_pages += n,
            Alloc::Chunk { slot, page } => {
                let Some(entry) = self.slots.get_mut(slot).and_then(|p| p.get_mut(page)) else {
                    return;
                };
                if let Some(used) = entry {
                    *used = used.saturating_sub(1);
                    if *used == 0 {
                        *entry = None;
                        self.free_pages += 1;
                    }
                }
            }
        }
    }
}

/// A log2 histogram of one worker (`ngx_wa_metrics_histogram_t`).
#[derive(Debug)]
struct Histogram {
    /// `n_bins`: the bins allocated (5, then 9, 13, 17, 18).
    cap: usize,
    /// The bins in use, in the host's order; the last is the "+Inf" bin.
    bins: Vec<(u32, u32)>,
    sum: u64,
    mem: Alloc,
}

/// `bin_log2_upper_bound`: 1 for 0 and 1, the next power of two for
/// values up to 2^31 - 1, "+Inf" above.
pub(crate) fn log2_upper_bound(n: u64) -> u32 {
    if n <= 1 {
        return 1;
    }
    if n > u64::from(BIN_INF / 2) {
        return BIN_INF;
    }
    u32::try_from(n.next_power_of_two()).unwrap_or(BIN_INF)
}

/// Where `histogram_log2_bin` puts a value of bin `ub` in `bins` (the bins
/// in use, the last one "+Inf"): `Ok(index)` of an existing bin, or
/// `Err(index)` where a new bin goes. The new bin goes before the first
/// bin with a larger bound, but the host only looks for that position
/// while it is still 0, so it never places a new bin before the first one:
/// a value smaller than the first bin's bound gets a bin at index 1.
fn log2_position(bins: &[(u32, u32)], ub: u32) -> Result<usize, usize> {
    let mut j = 0;
    for (i, &(bound, _)) in bins.iter().enumerate() {
        if j == 0 && ub < bound {
            j = i;
        }
        if bound == ub {
            return Ok(i);
        }
        if bound == BIN_INF {
            break;
        }
    }
    Err(j)
}

/// `ngx_wa_metrics_histogram_get` for one worker's bins: the bins are
/// placed one by one, in order, into an empty 18-bin histogram with the
/// same log2 rule (so a 2^31 bin lands in "+Inf").
fn merged_bins(bins: &[(u32, u32)]) -> Vec<(u32, u32)> {
    let mut out = vec![(BIN_INF, 0u32)];
    for &(bound, count) in bins {
        let ub = log2_upper_bound(u64::from(bound));
        let idx = match log2_position(&out, ub) {
            Ok(i) => i,
            Err(j) if out.len() < BINS_MAX => {
                out.insert(j, (ub, 0));
                j
            }
            Err(j) => j,
        };
        if let Some(b) = out.get_mut(idx) {
            b.1 = b.1.wrapping_add(count);
        }
        if bound == BIN_INF {
            break;
        }
    }
    out
}

/// One metric: a key-value entry and a node of the red-black tree.
#[derive(Debug)]
struct Entry {
    name: Vec<u8>,
    id: u32,
    kind: MetricKind,
    counter: u64,
    gauge: u64,
    histogram: Option<Histogram>,
    /// Children, indexed by [`LEFT`] and [`RIGHT`].
    kids: [Option<usize>; 2],
    parent: Option<usize>,
    red: bool,
}

/// The sides of a tree node, as indices of [`Entry::kids`]; the other side
/// of `side` is `1 - side`.
const LEFT: usize = 0;
const RIGHT: usize = 1;

/// Why a definition failed: the zone is full.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DefineError {
    /// A worker's histogram could not be allocated
    /// (`ngx_wa_metrics_histogram_add_locked`: `cannot allocate histogram`).
    Histogram,
    /// The entry could not be allocated (`ngx_wa_shm_kv_set_locked`:
    /// `"metrics" shm store: no memory; cannot allocate pair with key size
    /// K and value size V`).
    Pair { key_size: usize, value_size: usize },
}

/// Why an update failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum UpdateError {
    NotFound,
    /// Incrementing a gauge or histogram, or recording into a counter.
    WrongKind,
}

/// What [`MetricsStore::record`] did beyond the update.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Recorded {
    Done,
    /// The histogram needed a new bin and could not get one (18 bins
    /// already, or no memory): the value was counted in the next closest
    /// bin; the host logs it at info level with the value cut to 32 bits.
    NoNewBin(u32),
}

/// The `metrics` zone.
#[derive(Debug)]
pub(crate) struct MetricsStore {
    workers: usize,
    slab: Slab,
    entries: Vec<Entry>,
    by_id: HashMap<u32, usize>,
    root: Option<usize>,
    /// Memory of the other workers' (never used) histograms.
    idle: Vec<Alloc>,
}

impl MetricsStore {
    /// An empty zone (its key-value header already allocated, as
    /// `ngx_wa_shm_kv_init` does).
    pub fn new(opts: &HostOptions) -> Self {
        let mut slab = Slab::new(opts.metrics_slab_size);
        let _ = slab.alloc(KV_STORE_HEADER);
        Self {
            workers: opts.worker_processes.max(1),
            slab,
            entries: Vec::new(),
            by_id: HashMap::new(),
            root: None,
            idle: Vec::new(),
        }
    }

    /// `ngx_wa_metrics_define`: the id of `name` (the prefixed name); an
    /// existing id whatever `kind` (the first definition's kind and value
    /// stay).
    pub fn define(&mut self, name: &[u8], kind: MetricKind) -> Result<u32, DefineError> {
        let id = crc32(name);
        if self.by_id.contains_key(&id) {
            return Ok(id);
        }
        let mut histograms = Vec::new();
        if kind == MetricKind::Histogram {
            for _ in 0..self.workers {
                match self
                    .slab
                    .alloc(HISTOGRAM_HEADER + HISTOGRAM_BIN * BINS_INIT)
                {
                    Some(a) => histograms.push(a),
                    None => {
                        for a in histograms {
                            self.slab.free(a);
                        }
                        return Err(DefineError::Histogram);
                    }
                }
            }
        }
        let value_size = METRIC_HEADER + METRIC_SLOT * self.workers;
        if self.slab.alloc(KV_NODE + name.len() + value_size).is_none() {
            // The histograms are not given back (the host leaks them too).
            self.idle.extend(histograms);
            return Err(DefineError::Pair {
                key_size: name.len(),
                value_size,
            });
        }
        let mut histograms = histograms.into_iter();
        let histogram = histograms.next().map(|mem| Histogram {
            cap: BINS_INIT,
            bins: vec![(BIN_INF, 0)],
            sum: 0,
            mem,
        });
        self.idle.extend(histograms);
        let idx = self.entries.len();
        self.entries.push(Entry {
            name: name.to_vec(),
            id,
            kind,
            counter: 0,
            gauge: 0,
            histogram,
            kids: [None, None],
            parent: None,
            red: true,
        });
        self.by_id.insert(id, idx);
        self.tree_insert(idx);
        Ok(id)
    }

    /// `ngx_wa_metrics_increment`: counters only; the offset is added as
    /// an unsigned number (a negative one wraps around).
    pub fn increment(&mut self, id: u32, offset: i64) -> Result<(), UpdateError> {
        let e = self.entry_mut(id)?;
        if e.kind != MetricKind::Counter {
            return Err(UpdateError::WrongKind);
        }
        e.counter = e.counter.wrapping_add(offset as u64);
        Ok(())
    }

    /// `ngx_wa_metrics_record`: a gauge takes the value, a histogram counts
    /// it in its log2 bin; a counter refuses.
    pub fn record(&mut self, id: u32, value: i64) -> Result<Recorded, UpdateError> {
        let idx = *self.by_id.get(&id).ok_or(UpdateError::NotFound)?;
        let n = value as u64;
        let Some(e) = self.entries.get_mut(idx) else {
            return Err(UpdateError::NotFound);
        };
        match e.kind {
            MetricKind::Counter => Err(UpdateError::WrongKind),
            MetricKind::Gauge => {
                e.gauge = n;
                Ok(Recorded::Done)
            }
            MetricKind::Histogram => {
                let Some(h) = e.histogram.as_mut() else {
                    return Err(UpdateError::NotFound);
                };
                Ok(record_histogram(&mut self.slab, h, n))
            }
        }
    }

    /// `ngx_wa_metrics_get`, for `proxy_get_metric`.
    pub fn get(&self, id: u32) -> Option<MetricReading> {
        self.by_id
            .get(&id)
            .and_then(|&i| self.entries.get(i))
            .map(reading)
    }

    /// Every metric, in the order Kong's Lua interface lists the keys
    /// (pre-order of the tree).
    pub fn readings(&self) -> Vec<MetricReading> {
        let mut out = Vec::with_capacity(self.entries.len());
        let mut stack: Vec<usize> = self.root.into_iter().collect();
        while let Some(i) = stack.pop() {
            let Some(e) = self.entries.get(i) else {
                continue;
            };
            out.push(reading(e));
            stack.extend(e.kids[RIGHT]);
            stack.extend(e.kids[LEFT]);
        }
        out
    }

    fn entry_mut(&mut self, id: u32) -> Result<&mut Entry, UpdateError> {
        let idx = *self.by_id.get(&id).ok_or(UpdateError::NotFound)?;
        self.entries.get_mut(idx).ok_or(UpdateError::NotFound)
    }

    fn is_red(&self, n: Option<usize>) -> bool {
        n.and_then(|i| self.entries.get(i)).is_some_and(|e| e.red)
    }

    fn set_red(&mut self, n: usize, red: bool) {
        if let Some(e) = self.entries.get_mut(n) {
            e.red = red;
        }
    }

    fn parent(&self, n: usize) -> Option<usize> {
        self.entries.get(n).and_then(|e| e.parent)
    }

    fn kid(&self, n: usize, side: usize) -> Option<usize> {
        self.entries
            .get(n)
            .and_then(|e| e.kids.get(side).copied().flatten())
    }

    fn set_kid(&mut self, n: usize, side: usize, kid: Option<usize>) {
        if let Some(slot) = self.entries.get_mut(n).and_then(|e| e.kids.get_mut(side)) {
            *slot = kid;
        }
    }

    /// `ngx_rbtree_insert` (the tree's insert function compares the keys,
    /// the ids; equal ids never reach it).
    fn tree_insert(&mut self, node: usize) {
        let key = self.entries.get(node).map_or(0, |e| e.id);
        let Some(mut cur) = self.root else {
            self.root = Some(node);
            self.set_red(node, false);
            return;
        };
        loop {
            let cur_key = self.entries.get(cur).map_or(0, |e| e.id);
            let side = if key < cur_key { LEFT } else { RIGHT };
            match self.kid(cur, side) {
                Some(n) => cur = n,
                None => {
                    self.set_kid(cur, side, Some(node));
                    if let Some(e) = self.entries.get_mut(node) {
                        e.parent = Some(cur);
                        e.red = true;
                    }
                    break;
                }
            }
        }
        // The fix-up, one code for both mirror cases: `side` is the side
        // of the grandparent the parent hangs on.
        let mut n = node;
        while Some(n) != self.root && self.is_red(self.parent(n)) {
            let Some(p) = self.parent(n) else { break };
            let Some(g) = self.parent(p) else { break };
            let side = if Some(p) == self.kid(g, LEFT) {
                LEFT
            } else {
                RIGHT
            };
            let other = 1 - side;
            let uncle = self.kid(g, other);
            if self.is_red(uncle) {
                self.set_red(p, false);
                if let Some(u) = uncle {
                    self.set_red(u, false);
                }
                self.set_red(g, true);
                n = g;
            } else {
                if Some(n) == self.kid(p, other) {
                    n = p;
                    self.rotate(n, side);
                }
                let Some(p) = self.parent(n) else { break };
                let Some(g) = self.parent(p) else { break };
                self.set_red(p, false);
                self.set_red(g, true);
                self.rotate(g, other);
            }
        }
        if let Some(r) = self.root {
            self.set_red(r, false);
        }
    }

    /// Replaces `old` by `new` as a child of `old`'s parent (or as root).
    fn replace_child(&mut self, parent: Option<usize>, old: usize, new: usize) {
        match parent {
            None => self.root = Some(new),
            Some(p) => {
                let side = if self.kid(p, LEFT) == Some(old) {
                    LEFT
                } else {
                    RIGHT
                };
                self.set_kid(p, side, Some(new));
            }
        }
        if let Some(e) = self.entries.get_mut(new) {
            e.parent = parent;
        }
    }

    /// Rotates `x` down to `side` (`LEFT`: nginx's `ngx_rbtree_left_rotate`):
    /// its child on the other side takes its place.
    fn rotate(&mut self, x: usize, side: usize) {
        let other = 1 - side;
        let Some(y) = self.kid(x, other) else { return };
        let inner = self.kid(y, side);
        self.set_kid(x, other, inner);
        if let Some(t) = inner.and_then(|t| self.entries.get_mut(t)) {
            t.parent = Some(x);
        }
        let parent = self.parent(x);
        self.replace_child(parent, x, y);
        self.set_kid(y, side, Some(x));
        if let Some(e) = self.entries.get_mut(x) {
            e.parent = Some(y);
        }
    }
}

/// `ngx_wa_metrics_histogram_record` on a log2 histogram: the sum takes
/// the value (modulo 2^64), its bin counts one more; a missing bin is
/// added, growing the histogram by 4 bins (up to 18) when it is full
/// (`histogram_grow`: a new allocation, the old one freed).
fn record_histogram(slab: &mut Slab, h: &mut Histogram, n: u64) -> Recorded {
    h.sum = h.sum.wrapping_add(n);
    let ub = log2_upper_bound(n);
    let j = match log2_position(&h.bins, ub) {
        Ok(i) => {
            if let Some(b) = h.bins.get_mut(i) {
                b.1 = b.1.wrapping_add(1);
            }
            return Recorded::Done;
        }
        Err(j) => j,
    };
    if h.bins.len() == h.cap {
        let grown = if h.cap < BINS_MAX {
            let cap = h.cap + BINS_INCREMENT.min(BINS_MAX - h.cap);
            slab.alloc(HISTOGRAM_HEADER + HISTOGRAM_BIN * cap)
                .map(|mem| (cap, mem))
        } else {
            None
        };
        match grown {
            Some((cap, mem)) => {
                slab.free(h.mem);
                h.mem = mem;
                h.cap = cap;
            }
            None => {
                if let Some(b) = h.bins.get_mut(j) {
                    b.1 = b.1.wrapping_add(1);
                }
                return Recorded::NoNewBin(n as u32);
            }
        }
    }
    h.bins.insert(j, (ub, 1));
    Recorded::Done
}

fn reading(e: &Entry) -> MetricReading {
    let value = match e.kind {
        MetricKind::Counter => MetricValue::Counter(e.counter),
        MetricKind::Gauge => MetricValue::Gauge(e.gauge),
        MetricKind::Histogram => {
            let (bins, sum) = e
                .histogram
                .as_ref()
                .map_or((vec![(BIN_INF, 0)], 0), |h| (merged_bins(&h.bins), h.sum));
            MetricValue::Histogram { bins, sum }
        }
    };
    MetricReading {
        name: String::from_utf8_lossy(&e.name).into_owned(),
        id: e.id,
        value,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn store(slab_size: usize, workers: usize) -> MetricsStore {
        MetricsStore::new(&HostOptions {
            metrics_slab_size: slab_size,
            worker_processes: workers,
            ..HostOptions::default()
        })
    }

    fn bins(s: &MetricsStore, id: u32) -> Vec<(u32, u32)> {
        match s.get(id).unwrap().value {
            MetricValue::Histogram { bins, .. } => bins,
            other => panic!("not a histogram: {other:?}"),
        }
    }

    #[test]
    fn crc32_is_zlibs() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn log2_bounds_follow_the_host() {
        let cases = [
            (0, 1),
            (1, 1),
            (2, 2),
            (3, 4),
            (4, 4),
            (5, 8),
            (1000, 1024),
            (0x7fff_ffff, 0x8000_0000),
            (0x8000_0000, BIN_INF),
            (u64::MAX, BIN_INF),
        ];
        for (n, ub) in cases {
            assert_eq!(log2_upper_bound(n), ub, "value {n}");
        }
    }

    #[test]
    fn zone_pages_follow_ngx_slab_init() {
        // 5 MiB: 1272 pages; 3 pages: 2.
        assert_eq!(Slab::new(5 * 1024 * 1024).free_pages, 1272);
        assert_eq!(Slab::new(3 * PAGE).free_pages, 2);
        assert_eq!(Slab::chunks_per_page(3), 504);
        assert_eq!(Slab::chunks_per_page(4), 254);
        assert_eq!(Slab::chunks_per_page(5), 127);
        assert_eq!(Slab::chunks_per_page(6), 64);
        assert_eq!(Slab::chunks_per_page(8), 16);
    }

    #[test]
    fn a_smaller_first_bound_keeps_the_first_bin_in_front() {
        let mut s = store(5 * 1024 * 1024, 1);
        let id = s.define(b"pw:f:h", MetricKind::Histogram).unwrap();
        for v in [10, 1, 3, 40] {
            assert_eq!(s.record(id, v), Ok(Recorded::Done));
        }
        assert_eq!(
            bins(&s, id),
            [(16, 1), (1, 1), (4, 1), (64, 1), (BIN_INF, 0)]
        );
    }

    #[test]
    fn a_full_histogram_counts_in_the_next_closest_bin() {
        let mut s = store(5 * 1024 * 1024, 1);
        let id = s.define(b"pw:f:h", MetricKind::Histogram).unwrap();
        for k in 0..17 {
            assert_eq!(s.record(id, 1 << k), Ok(Recorded::Done));
        }
        assert_eq!(s.record(id, 1 << 17), Ok(Recorded::NoNewBin(1 << 17)));
        let b = bins(&s, id);
        assert_eq!(b.len(), 18);
        assert_eq!(b.last(), Some(&(BIN_INF, 1)));
    }

    #[test]
    fn a_2_pow_31_bin_reads_as_inf() {
        let mut s = store(5 * 1024 * 1024, 1);
        let id = s.define(b"pw:f:h", MetricKind::Histogram).unwrap();
        s.record(id, 0x7000_0000).unwrap();
        s.record(id, -1).unwrap();
        assert_eq!(bins(&s, id), [(BIN_INF, 2)]);
    }

    /// The pre-order of the ids after inserting them in this order.
    fn preorder_after_inserting(ids: impl Iterator<Item = u32>) -> Vec<u32> {
        let mut s = store(5 * 1024 * 1024, 1);
        for k in ids {
            let idx = s.entries.len();
            s.entries.push(Entry {
                name: k.to_string().into_bytes(),
                id: k,
                kind: MetricKind::Counter,
                counter: 0,
                gauge: 0,
                histogram: None,
                kids: [None, None],
                parent: None,
                red: true,
            });
            s.by_id.insert(k, idx);
            s.tree_insert(idx);
        }
        s.readings().iter().map(|r| r.id).collect()
    }

    #[test]
    fn tree_preorder_is_nginx_rbtree() {
        // Ascending keys 1..=7 inserted in order give the CLRS tree with
        // root 2 (black), 1 and 4 (4 red with 3 and 6, 6 with 5 and 7).
        let order = preorder_after_inserting(1..=7);
        assert_eq!(order, [2, 1, 4, 3, 6, 5, 7]);
    }

    #[test]
    fn tree_preorder_mirrors_for_descending_ids() {
        // The mirror cases of the fix-up: the same tree, mirrored.
        let order = preorder_after_inserting((1..=7).rev());
        assert_eq!(order, [6, 4, 2, 1, 3, 5, 7]);
    }

    #[test]
    fn histograms_take_memory_per_worker() {
        // 3 pages give the slab 2: the key-value header takes one, the 4
        // workers' histograms (64-byte chunks) the other, and the entry
        // (a 256-byte chunk) finds no page.
        let mut s = store(3 * PAGE, 4);
        assert_eq!(
            s.define(b"pw:f:h", MetricKind::Histogram),
            Err(DefineError::Pair {
                key_size: 6,
                value_size: 8 + 4 * 16
            })
        );
        // With one worker an entry is 126 bytes and shares the header's
        // page of 128-byte chunks; the histogram takes the other page.
        let mut s = store(3 * PAGE, 1);
        assert!(s.define(b"pw:f:c", MetricKind::Counter).is_ok());
        assert!(s.define(b"pw:f:h", MetricKind::Histogram).is_ok());
        assert_eq!(s.slab.free_pages, 0);
    }
}
