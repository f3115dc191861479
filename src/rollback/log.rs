//! The rollback log: one line per event, naming the feature, the cell and
//! the KPI, and the evidence against the level it crossed — what an operator
//! reads in Envoy's log to know why a feature went off.

use super::{cell_name, Event, KPI_NAMES};

impl Event {
    /// The log line of the event; `feature(i)` names feature `i`.
    pub fn describe<'a>(&self, feature: impl Fn(usize) -> &'a str) -> String {
        let kpi = |k: &usize| KPI_NAMES.get(*k).copied().unwrap_or("?");
        match self {
            Event::Suspect { cell, kpi: k, evidence } => {
                format!("cell {} suspect on {} (evidence {evidence:.1}): exploring", cell_name(*cell), kpi(k))
            }
            Event::Cleared { cell } => format!("cell {} cleared", cell_name(*cell)),
            Event::Blocked { feature: f, cell, kpi: k, evidence, needed } => format!(
                "feature {} rolled back in {} on {} (evidence {evidence:.1} ≥ {needed:.1})",
                feature(*f),
                cell_name(*cell),
                kpi(k)
            ),
            Event::Killed { feature: f, kpi: k, evidence } => {
                format!("feature {} rolled back everywhere on {} (evidence {evidence:.1})", feature(*f), kpi(k))
            }
            Event::Reverted { kpi: k, evidence } => format!(
                "new stack regressed on {} (evidence {evidence:.1}): all traffic reverts to the old stack",
                kpi(k)
            ),
            Event::Recovered { feature: f } => format!("feature {} back on probation", feature(*f)),
            Event::Lifted { feature: f, cell, evidence, needed } => format!(
                "feature {} lifted in {}: its probe shows the harm gone (evidence {evidence:.1} ≥ {needed:.1})",
                feature(*f),
                cell_name(*cell)
            ),
            Event::SampleRatioMismatch { feature: f, probe, drawn_off, drawn, share, evidence } => format!(
                "feature {}: sample ratio mismatch ({drawn_off} of {drawn} {} draws off, configured {share:.2}; evidence {evidence:.1}): no automated decisions for it until the next rollback.epoch",
                feature(*f),
                if *probe { "block-probe" } else { "exploration" },
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_feature_cell_kpi_and_evidence() {
        let names = ["new_checkout"];
        let name = |f: usize| names.get(f).copied().unwrap_or("?");
        let e = Event::Blocked { feature: 0, cell: 1, kpi: 0, evidence: 13.21, needed: 11.9 };
        assert_eq!(
            e.describe(name),
            "feature new_checkout rolled back in device=tablet on errors (evidence 13.2 ≥ 11.9)"
        );
        assert_eq!(Event::Recovered { feature: 3 }.describe(name), "feature ? back on probation");
        let e = Event::Lifted { feature: 0, cell: 1, evidence: 12.04, needed: 11.9 };
        assert_eq!(
            e.describe(name),
            "feature new_checkout lifted in device=tablet: its probe shows the harm gone (evidence 12.0 ≥ 11.9)"
        );
        let e = Event::SampleRatioMismatch {
            feature: 0,
            probe: true,
            drawn_off: 90,
            drawn: 100,
            share: 0.95,
            evidence: 9.0,
        };
        assert!(
            e.describe(name).contains("90 of 100 block-probe draws off, configured 0.95"),
            "{}",
            e.describe(name)
        );
    }
}
