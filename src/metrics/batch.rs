//! Stats batching: counter increments kept in the worker and handed to the
//! proxy once per tick, and histograms kept as such counters. Knows nothing of
//! which stats exist (that is [`super::catalogue`]).

use super::{MetricKind, MetricSink};

/// A counter: its slot in the worker's [`Batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counter(u16);

/// Counter increments of one worker, handed to the proxy on the next tick.
///
/// Why: every stat update is a call out of the VM (~0.5 µs in Envoy's V8), and a
/// request moves up to `2 + 2 × features` counters. Batched, a tick makes one
/// call per counter that moved, whatever the traffic. Histograms are recorded
/// at once (the host has no "record N samples" call). With `stats.flush_ms: 0`
/// counters are incremented immediately.
#[derive(Debug, Clone, Default)]
pub(super) struct Batch {
    /// Host stat id per slot.
    ids: Vec<u32>,
    /// Increments not yet handed over, per slot.
    deltas: Vec<u64>,
    /// Histogram slots `(first, len)` whose deltas are per bucket, not yet
    /// cumulative: [`Batch::flush`] sums each run up before handing it over.
    cumulative: Vec<(usize, usize)>,
    immediate: bool,
}

impl Batch {
    /// A batch that flushes on [`Batch::flush`], or with `immediate` one that
    /// increments at once.
    pub(super) fn new(immediate: bool) -> Batch {
        Batch { immediate, ..Batch::default() }
    }

    pub(super) fn define(&mut self, sink: &mut impl MetricSink, name: &str) -> Option<Counter> {
        let id = sink.define(MetricKind::Counter, name)?;
        let slot = u16::try_from(self.ids.len()).ok()?;
        self.ids.push(id);
        self.deltas.push(0);
        Some(Counter(slot))
    }

    pub(super) fn add(&mut self, c: Option<Counter>, sink: &mut impl MetricSink) {
        self.add_n(c, 1, sink);
    }

    pub(super) fn add_n(&mut self, c: Option<Counter>, n: u64, sink: &mut impl MetricSink) {
        let Some(Counter(slot)) = c else { return };
        let slot = usize::from(slot);
        if self.immediate {
            if let Some(id) = self.ids.get(slot) {
                sink.increment(*id, i64::try_from(n).unwrap_or(i64::MAX));
            }
        } else if let Some(d) = self.deltas.get_mut(slot) {
            *d = d.saturating_add(n);
        }
    }

    pub(super) fn flush(&mut self, sink: &mut impl MetricSink) {
        for &(first, len) in &self.cumulative {
            let mut below = 0u64;
            for d in self.deltas.iter_mut().skip(first).take(len) {
                below = below.saturating_add(*d);
                *d = below;
            }
        }
        for (id, d) in self.ids.iter().zip(self.deltas.iter_mut()) {
            if *d > 0 {
                sink.increment(*id, i64::try_from(*d).unwrap_or(i64::MAX));
                *d = 0;
            }
        }
    }
}

/// A histogram kept as batched counters in Prometheus' layout: cumulative
/// `<name>_bucket` counters labelled `le` (the bounds, then `+Inf`), plus
/// `<name>_count` and a sum counter, so `histogram_quantile()` works on it.
///
/// Why not an Envoy histogram: each sample would be one more call out of the VM
/// per request (per feature, for the feature histograms); these are counted in
/// the worker and flushed with the other counters. Counters are integers, so a
/// sum of seconds cannot be kept exactly: the sum of a latency histogram is
/// `<unit-less base>_milliseconds_total` (see [`Buckets::define`]).
#[derive(Debug, Clone)]
pub(super) struct Buckets {
    bounds: &'static [(u64, &'static str)],
    /// One per bound, then `+Inf`, then `_count` (the `+Inf` bucket's twin).
    buckets: Vec<Option<Counter>>,
    sum: Option<Counter>,
    /// The buckets and the count hold consecutive batch slots, summed up at
    /// flush: an observation is then one increment, not one per bucket above it.
    batched: bool,
}

impl Buckets {
    /// `name` is the base name (`_bucket` and `_count` are appended), `sum`
    /// the full name of the sum counter; `labels` the `.label.value` pairs.
    pub(super) fn define(
        batch: &mut Batch,
        sink: &mut impl MetricSink,
        name: &str,
        sum: &str,
        labels: &str,
        bounds: &'static [(u64, &'static str)],
    ) -> Buckets {
        let les = bounds.iter().map(|(_, le)| format!("_bucket{labels}.le.{le}"));
        let names = les.chain([format!("_bucket{labels}.le.+Inf"), format!("_count{labels}")]);
        let buckets: Vec<Option<Counter>> =
            names.map(|n| batch.define(sink, &format!("{name}{n}"))).collect();
        let slots: Vec<usize> = buckets.iter().flatten().map(|Counter(s)| usize::from(*s)).collect();
        let consecutive = slots.len() == buckets.len() && slots.windows(2).all(|w| w[1] == w[0] + 1);
        let batched = consecutive && !batch.immediate;
        if let (true, Some(&first)) = (batched, slots.first()) {
            batch.cumulative.push((first, slots.len()));
        }
        Buckets { bounds, buckets, sum: batch.define(sink, &format!("{sum}{labels}")), batched }
    }

    pub(super) fn observe(&self, batch: &mut Batch, value: u64, sink: &mut impl MetricSink) {
        let first = self.bounds.iter().position(|(b, _)| value <= *b).unwrap_or(self.bounds.len());
        if self.batched {
            batch.add(self.buckets.get(first).copied().flatten(), sink);
        } else {
            for c in self.buckets.iter().skip(first) {
                batch.add(*c, sink);
            }
        }
        batch.add_n(self.sum, value, sink);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_sink::MapSink;
    use super::*;

    const BOUNDS: &[(u64, &str)] = &[(1, "1"), (5, "5"), (10, "10")];

    /// The same samples through a batched and an immediate histogram, flushed
    /// twice with samples in between: the same cumulative counters.
    #[test]
    fn batched_buckets_sum_up_at_flush_like_immediate_ones() {
        let mut out = Vec::new();
        for immediate in [false, true] {
            let (mut sink, mut batch) = (MapSink::default(), Batch::new(immediate));
            let h = Buckets::define(&mut batch, &mut sink, "h", "h_ms_total", ".x.y", BOUNDS);
            assert_eq!(h.batched, !immediate);
            for v in [0, 1, 3, 7, 50, 5] {
                h.observe(&mut batch, v, &mut sink);
            }
            batch.flush(&mut sink);
            let first = sink.counters.clone();
            for v in [2, 11] {
                h.observe(&mut batch, v, &mut sink);
            }
            batch.flush(&mut sink);
            batch.flush(&mut sink);
            out.push((first, sink.counters));
        }
        let c = |m: &std::collections::BTreeMap<String, i64>, k: &str| m.get(k).copied().unwrap_or(0);
        let (first, last) = &out[0];
        assert_eq!(out[0], out[1]);
        let les = ["h_bucket.x.y.le.1", "h_bucket.x.y.le.5", "h_bucket.x.y.le.10", "h_bucket.x.y.le.+Inf"];
        assert_eq!(les.map(|k| c(first, k)), [2, 4, 5, 6]);
        assert_eq!(les.map(|k| c(last, k)), [2, 5, 6, 8]);
        assert_eq!((c(first, "h_count.x.y"), c(last, "h_count.x.y")), (6, 8));
        assert_eq!(c(last, "h_ms_total.x.y"), 66 + 13);
    }
}
