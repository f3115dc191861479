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
    /// One per bound, then `+Inf`.
    buckets: Vec<Option<Counter>>,
    count: Option<Counter>,
    sum: Option<Counter>,
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
        let les = bounds.iter().map(|(_, le)| *le).chain(std::iter::once("+Inf"));
        let buckets = les.map(|le| batch.define(sink, &format!("{name}_bucket{labels}.le.{le}"))).collect();
        Buckets {
            bounds,
            buckets,
            count: batch.define(sink, &format!("{name}_count{labels}")),
            sum: batch.define(sink, &format!("{sum}{labels}")),
        }
    }

    pub(super) fn observe(&self, batch: &mut Batch, value: u64, sink: &mut impl MetricSink) {
        let first = self.bounds.iter().position(|(b, _)| value <= *b).unwrap_or(self.bounds.len());
        for c in self.buckets.iter().skip(first) {
            batch.add(*c, sink);
        }
        batch.add(self.count, sink);
        batch.add_n(self.sum, value, sink);
    }
}
