//! Statistics for deciding whether two sets of runs differ: the Mann-Whitney U test (exact
//! over all splits for small samples, ties included) and a bootstrap interval of the relative
//! change of the medians.

use super::model::median;

/// Splits enumerated exactly up to this many; past it the normal approximation is used.
const EXACT_LIMIT: u64 = 250_000;

/// The two-sided p-value of the Mann-Whitney U test of `a` against `b`: how likely a
/// difference in ranks at least this large is when both samples come from one distribution.
/// Returns 1 when either sample is empty.
pub fn mann_whitney_p(a: &[f64], b: &[f64]) -> f64 {
    let (n, m) = (a.len(), b.len());
    if n == 0 || m == 0 {
        return 1.0;
    }
    let pooled: Vec<f64> = a.iter().chain(b).copied().collect();
    let ranks = midranks(&pooled);
    let centre = (n * m) as f64 / 2.0;
    let u_of = |rank_sum: f64| rank_sum - (n * (n + 1)) as f64 / 2.0;
    let observed = (u_of(ranks[..n].iter().sum()) - centre).abs();
    if binomial(n + m, n) <= EXACT_LIMIT {
        // Every way of choosing which n of the pooled values are "a": the permutation
        // distribution of U, ties and all.
        let mut extreme = 0u64;
        let mut total = 0u64;
        for_each_combination(n + m, n, &mut |chosen| {
            let rank_sum: f64 = chosen.iter().map(|&i| ranks[i]).sum();
            total += 1;
            if (u_of(rank_sum) - centre).abs() >= observed - 1e-9 {
                extreme += 1;
            }
        });
        return extreme as f64 / total as f64;
    }
    // Normal approximation with the tie correction.
    let total = (n + m) as f64;
    let mut sorted = pooled;
    sorted.sort_by(f64::total_cmp);
    let mut ties = 0.0;
    let mut start = 0;
    while start < sorted.len() {
        let mut end = start + 1;
        while end < sorted.len() && sorted[end] == sorted[start] {
            end += 1;
        }
        let t = (end - start) as f64;
        ties += t * t * t - t;
        start = end;
    }
    let variance = (n * m) as f64 / 12.0 * ((total + 1.0) - ties / (total * (total - 1.0)));
    if variance <= 0.0 {
        return 1.0;
    }
    let z = (observed - 0.5).max(0.0) / variance.sqrt();
    (2.0 * normal_upper_tail(z)).min(1.0)
}

/// Ranks from 1, ties sharing the mean of their ranks.
fn midranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|x, y| values[*x].total_cmp(&values[*y]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        let rank = (start + end + 1) as f64 / 2.0;
        for &index in &order[start..end] {
            ranks[index] = rank;
        }
        start = end;
    }
    ranks
}

fn binomial(n: usize, k: usize) -> u64 {
    let k = k.min(n - k);
    let mut result: u64 = 1;
    for i in 0..k {
        result = result.saturating_mul((n - i) as u64) / (i as u64 + 1);
    }
    result
}

fn for_each_combination(n: usize, k: usize, visit: &mut impl FnMut(&[usize])) {
    let mut chosen: Vec<usize> = (0..k).collect();
    loop {
        visit(&chosen);
        // The rightmost index that can still move right.
        let Some(position) = (0..k).rev().find(|&i| chosen[i] < n - k + i) else {
            return;
        };
        chosen[position] += 1;
        for next in position + 1..k {
            chosen[next] = chosen[next - 1] + 1;
        }
    }
}

/// P(Z > z) for a standard normal Z (Abramowitz and Stegun 7.1.26, error below 1.5e-7).
fn normal_upper_tail(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erfc = poly * (-x * x).exp();
    erfc / 2.0
}

/// The relative change of the medians, `median(head) / median(base) - 1`, and its
/// `confidence` (for instance 0.95) percentile bootstrap interval over `resamples` resamples
/// of both sets. Deterministic for a given `seed`. `None` when a set is empty or the base
/// median is not positive.
pub fn median_change_interval(
    base: &[f64],
    head: &[f64],
    confidence: f64,
    resamples: usize,
    seed: u64,
) -> Option<(f64, f64, f64)> {
    let base_median = median(base);
    if base.is_empty() || head.is_empty() || base_median <= 0.0 {
        return None;
    }
    let change = median(head) / base_median - 1.0;
    let mut rng = SplitMix64(seed);
    let mut draw = |set: &[f64], into: &mut Vec<f64>| {
        into.clear();
        into.extend((0..set.len()).map(|_| set[rng.below(set.len())]));
    };
    let (mut base_sample, mut head_sample) = (Vec::new(), Vec::new());
    let mut changes = Vec::with_capacity(resamples);
    for _ in 0..resamples.max(1) {
        draw(base, &mut base_sample);
        draw(head, &mut head_sample);
        let resampled_base = median(&base_sample);
        if resampled_base > 0.0 {
            changes.push(median(&head_sample) / resampled_base - 1.0);
        }
    }
    changes.sort_by(f64::total_cmp);
    let tail = (1.0 - confidence.clamp(0.0, 1.0)) / 2.0;
    let at = |q: f64| changes[((changes.len() - 1) as f64 * q).round() as usize];
    Some((change, at(tail), at(1.0 - tail)))
}

/// SplitMix64 (Steele, Lea and Flood): a small seeded generator, plenty for resampling.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (Lemire's multiply-shift; `n` > 0).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_mann_whitney_matches_tables() {
        // Complete separation of 5 and 5: 2 of the 252 splits are as extreme.
        let low = [1.0, 2.0, 3.0, 4.0, 5.0];
        let high = [6.0, 7.0, 8.0, 9.0, 10.0];
        assert!((mann_whitney_p(&low, &high) - 2.0 / 252.0).abs() < 1e-12);
        // 3 against 3 can never reach 0.05 two-sided: 2 of 20.
        assert!((mann_whitney_p(&low[..3], &high[..3]) - 0.1).abs() < 1e-12);
        // Identical samples: nothing to see.
        assert_eq!(mann_whitney_p(&low, &low), 1.0);
        // Interleaved samples are far from significant.
        let odd = [1.0, 3.0, 5.0, 7.0, 9.0];
        let even = [2.0, 4.0, 6.0, 8.0, 10.0];
        assert!(mann_whitney_p(&odd, &even) > 0.5);
        assert_eq!(mann_whitney_p(&[], &even), 1.0);
    }

    #[test]
    fn large_samples_use_the_normal_approximation() {
        let a: Vec<f64> = (0..20).map(f64::from).collect();
        let b: Vec<f64> = (10..30).map(f64::from).collect();
        let p = mann_whitney_p(&a, &b);
        // U = 45 of 400; z about 4.0: p about 7e-5.
        assert!(p > 1e-5 && p < 3e-4, "{p}");
        let same = mann_whitney_p(&a, &a);
        assert!(same > 0.9, "{same}");
    }

    #[test]
    fn ranks_share_ties() {
        assert_eq!(
            midranks(&[10.0, 20.0, 10.0, 30.0]),
            vec![1.5, 3.0, 1.5, 4.0]
        );
        assert_eq!(binomial(10, 5), 252);
        assert_eq!(binomial(6, 3), 20);
    }

    #[test]
    fn the_interval_covers_the_change_and_is_deterministic() {
        let base = [100.0, 102.0, 98.0, 101.0, 99.0];
        let head = [50.0, 51.0, 49.0, 50.5, 49.5];
        let (change, low, high) = median_change_interval(&base, &head, 0.95, 2000, 7).unwrap();
        assert!((change + 0.5).abs() < 1e-9);
        assert!(low <= change && change <= high);
        assert!(high < -0.4, "{high}");
        assert_eq!(
            median_change_interval(&base, &head, 0.95, 2000, 7),
            Some((change, low, high))
        );
        assert_eq!(median_change_interval(&[], &head, 0.95, 10, 1), None);
    }
}
