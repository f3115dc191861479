//! The rollback statistic: always-valid sequential tests on event counts.
//!
//! **Harm test** (one-sided). Requests are split at random between two arms
//! (feature on / off, or new / old stack) and `pi` is the share of requests on
//! the tested arm. If the arm does no harm, every bad event (an error, a
//! security event, a slow response) lands on it with probability at most `pi`,
//! whatever the base rate. Given `k` bad events, `x` of them on the tested arm,
//! the mixture likelihood ratio against a uniform prior on the harmful side,
//!
//! ```text
//! M = ∫_pi^1 q^x (1-q)^(k-x) dq / ((1-pi) · pi^x (1-pi)^(k-x))
//! ```
//!
//! is a nonnegative supermartingale under "no harm", so by Ville's inequality
//! `P(M ever ≥ 1/α) ≤ α`: the test may be looked at after every event, every
//! sync, for ever, and still alarms falsely with probability at most α. It is
//! exact for rare events (no normal approximation): a large contrast decides in
//! tens of events. `pi` comes from the counts themselves (the arms' request
//! shares); the sample-ratio check below guards that the split is what it
//! should be.
//!
//! **Sample-ratio test** (two-sided): `x` of `n` randomised requests drawn off
//! where the configuration says a share `p0`; the mixture ratio against a
//! uniform prior on the share, `M = B(x+1, n-x+1) / (p0^x (1-p0)^(n-x))`,
//! alarms at `1/α` with the same guarantee.
//!
//! `augur_tools.augur_stats` (python/) computes the same numbers (with SciPy); a test
//! compares the two through `augur stat`.

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9; ~15 significant digits).
pub fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1-x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let mut a = C[0];
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// ln B(a, b).
pub fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// Continued fraction of the incomplete beta function (modified Lentz).
fn beta_cf(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..20_000 {
        let m = f64::from(m);
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// ln I_x(a, b), the log of the regularized incomplete beta function, accurate
/// also where I_x is far below the smallest f64 (tails of large counts).
pub fn ln_beta_inc(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if x >= 1.0 {
        return 0.0;
    }
    let front = a * x.ln() + b * (1.0 - x).ln() - ln_beta(a, b);
    if x < (a + 1.0) / (a + b + 2.0) {
        front + beta_cf(x, a, b).ln() - a.ln()
    } else {
        // I_x(a, b) = 1 - I_{1-x}(b, a); here the complement is the small one.
        let complement = (front + beta_cf(1.0 - x, b, a).ln() - b.ln()).exp();
        (-complement).ln_1p()
    }
}

/// ln M of the one-sided harm test: `bad_on` of `bad` events on the tested
/// arm, which holds a share `pi` of the requests. 0 without evidence.
pub fn ln_harm(bad_on: u64, bad: u64, pi: f64) -> f64 {
    if bad == 0 || !(pi > 0.0 && pi < 1.0) {
        return 0.0;
    }
    let (x, k) = (bad_on.min(bad) as f64, bad as f64);
    // ∫_pi^1 q^x (1-q)^(k-x) dq = B(x+1, k-x+1) · I_{1-pi}(k-x+1, x+1).
    let ln_integral = ln_beta(x + 1.0, k - x + 1.0) + ln_beta_inc(1.0 - pi, k - x + 1.0, x + 1.0);
    ln_integral - (1.0 - pi).ln() - x * pi.ln() - (k - x) * (1.0 - pi).ln()
}

/// ln of the evidence that a harm is **gone** (the lift test of a block's
/// probe): `bad_on` of `bad` events on the probed arm, which holds a share `pi`
/// of the requests, against a harm that multiplies the arm's bad rate by
/// `rho` (> 1). The likelihood ratio of "no harm" (each event on the arm with
/// probability `pi`) to "a harm of `rho`" (probability `rho·pi / (rho·pi + 1 − pi)`)
/// is a nonnegative supermartingale under any harm of `rho` or more (more
/// events on the arm only lower it), so by Ville's inequality a harm that
/// big is lifted with probability at most α however often it is looked at.
/// 0 without events: nothing tells.
pub fn ln_no_harm(bad_on: u64, bad: u64, pi: f64, rho: f64) -> f64 {
    if bad == 0 || !(pi > 0.0 && pi < 1.0) || rho.is_nan() || rho <= 1.0 {
        return 0.0;
    }
    let (x, k) = (bad_on.min(bad) as f64, bad as f64);
    let q = rho * pi / (rho * pi + 1.0 - pi);
    x * (pi / q).ln() + (k - x) * ((1.0 - pi) / (1.0 - q)).ln()
}

/// ln M of the two-sided sample-ratio test: `x` of `n` drawn where a share
/// `p0` was configured.
pub fn ln_ratio(x: u64, n: u64, p0: f64) -> f64 {
    if n == 0 || !(p0 > 0.0 && p0 < 1.0) {
        return 0.0;
    }
    let (x, n) = (x.min(n) as f64, n as f64);
    ln_beta(x + 1.0, n - x + 1.0) - x * p0.ln() - (n - x) * (1.0 - p0).ln()
}

/// The alarm level of one test given its share `alpha` of the budget.
pub fn threshold(alpha: f64) -> f64 {
    (1.0 / alpha.clamp(f64::MIN_POSITIVE, 1.0)).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    #[test]
    fn special_functions_match_known_values() {
        assert!(close(ln_gamma(1.0), 0.0, 1e-13));
        assert!(close(ln_gamma(5.0), 24f64.ln(), 1e-13));
        assert!(close(ln_gamma(0.5), std::f64::consts::PI.sqrt().ln(), 1e-13));
        assert!(close(ln_gamma(1001.0), 5_912.128_178_488_163, 1e-12));
        // I_x(1, 1) = x; I_x(2, 1) = x².
        assert!(close(ln_beta_inc(0.3, 1.0, 1.0), 0.3f64.ln(), 1e-12));
        assert!(close(ln_beta_inc(0.3, 2.0, 1.0), 0.09f64.ln(), 1e-12));
        assert!(close(ln_beta_inc(0.7, 2.0, 1.0), 0.49f64.ln(), 1e-12));
        // Far tail: I_0.1(500, 500) ≈ e^-368 (below f64's range as a probability is not).
        let t = ln_beta_inc(0.1, 500.0, 500.0);
        assert!(t < -300.0 && t.is_finite(), "{t}");
    }

    #[test]
    fn harm_evidence_is_zero_without_events_and_grows_with_a_real_contrast() {
        assert_eq!(ln_harm(0, 0, 0.5), 0.0);
        assert_eq!(ln_harm(3, 3, 1.0), 0.0);
        // Events split as the arms are: no evidence (M < 1).
        assert!(ln_harm(50, 100, 0.5) < 0.0);
        // Every bad event on the tested arm: evidence grows with the count.
        assert!(ln_harm(20, 20, 0.5) > ln_harm(10, 10, 0.5));
        assert!(ln_harm(30, 30, 0.5) > threshold(1e-6), "30 of 30 decides at α=1e-6");
        // Fewer bad events on the arm than its share: evidence against harm.
        assert!(ln_harm(10, 100, 0.5) < -1.0);
        // A known value: x=k=1, pi=0.5 → ∫_.5^1 q dq / (.5·.5) = .375/.25 = 1.5.
        assert!(close(ln_harm(1, 1, 0.5), 1.5f64.ln(), 1e-12));
    }

    #[test]
    fn ratio_evidence_flags_a_skewed_split_only() {
        assert!(ln_ratio(500, 1000, 0.5) < 0.0);
        assert!(ln_ratio(700, 1000, 0.5) > threshold(1e-6));
        // x=1, n=1, p0=0.5: B(2,1)/0.5 = 0.5/0.5 = 1.
        assert!(close(ln_ratio(1, 1, 0.5), 0.0, 1e-12));
    }

    #[test]
    fn no_harm_evidence_grows_without_a_harm_and_falls_with_one() {
        assert_eq!(ln_no_harm(0, 0, 0.05, 2.0), 0.0);
        assert_eq!(ln_no_harm(3, 10, 0.05, 1.0), 0.0, "rho 1 is no alternative");
        // Events split as the arms are: evidence for "gone" grows with the count.
        assert!(ln_no_harm(50, 1000, 0.05, 2.0) > ln_no_harm(5, 100, 0.05, 2.0));
        assert!(ln_no_harm(50, 1000, 0.05, 2.0) > threshold(1e-4));
        // Twice the arm's share: the harm is still there.
        assert!(ln_no_harm(100, 1000, 0.05, 2.0) < -1.0);
        // A known value: one event off the arm, pi 0.5, rho 3 → q 0.75: ln(0.5 / 0.25).
        assert!(close(ln_no_harm(0, 1, 0.5, 3.0), 2f64.ln(), 1e-12));
    }

    #[test]
    fn a_harm_that_stays_is_lifted_within_alpha_however_often_it_is_looked_at() {
        // 400 runs of 3,000 events each under a harm of exactly rho (the
        // hardest case: a bigger one lifts even less), looked at after every event.
        let (alpha, rho) = (0.05, 2.0);
        let mut lifts = 0;
        for run in 0..400u64 {
            let mut rng = Lcg(run * 104_729 + 3);
            let pi = [0.05, 0.1, 0.3][run as usize % 3];
            let q = rho * pi / (rho * pi + 1.0 - pi);
            let (mut on, mut k) = (0, 0);
            for _ in 0..3000 {
                k += 1;
                on += u64::from(rng.next() < q);
                if ln_no_harm(on, k, pi, rho) >= threshold(alpha) {
                    lifts += 1;
                    break;
                }
            }
        }
        assert!(lifts <= 400 * 5 / 100 + 6, "{lifts} false lifts in 400 runs at α = {alpha}");
    }

    /// Deterministic uniform draws.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn looking_after_every_event_keeps_the_false_alarm_rate_within_alpha() {
        // 400 runs of 2,000 bad events each with no harm (each lands on the arm
        // with probability pi), the test looked at after every single event.
        let alpha = 0.05;
        let mut alarms = 0;
        for run in 0..400u64 {
            let mut rng = Lcg(run * 7919 + 1);
            let pi = [0.5, 0.3, 0.8][run as usize % 3];
            let (mut on, mut k) = (0, 0);
            for _ in 0..2000 {
                k += 1;
                on += u64::from(rng.next() < pi);
                if ln_harm(on, k, pi) >= threshold(alpha) {
                    alarms += 1;
                    break;
                }
            }
        }
        // A fixed-level test looked at 2,000 times would alarm in most runs.
        assert!(alarms <= 400 * 5 / 100 + 6, "{alarms} false alarms in 400 runs at α = {alpha}");
    }
}
