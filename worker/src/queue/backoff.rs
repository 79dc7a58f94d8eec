//! Delay before the next attempt: exponential backoff with full jitter, capped, raised to a
//! platform's Retry-After but never above the cap.
//!
//! backon supplies the exponential schedule (base, factor 2, cap); full jitter (a uniform
//! draw in `[0, schedule]`) spreads retries of many jobs that failed together, such as after
//! a registry outage, instead of sending them back in lockstep.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::config::RetryConfig;

/// The upper bound of the delay after `attempt` (1-based) failed attempts.
pub fn ceiling(policy: &RetryConfig, attempt: u32) -> Duration {
    let cap = Duration::from_millis(policy.cap_ms);
    let mut schedule = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(policy.base_ms))
        .with_max_delay(cap)
        .with_factor(2.0)
        .without_max_times()
        .build();
    let index = attempt.saturating_sub(1).min(64) as usize;
    schedule.nth(index).unwrap_or(cap).min(cap)
}

/// The delay to wait before the next attempt after `attempt` failed attempts.
pub fn delay(policy: &RetryConfig, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let ceiling = ceiling(policy, attempt);
    let jittered = Duration::from_millis(fastrand::u64(0..=ceiling.as_millis() as u64));
    let cap = Duration::from_millis(policy.cap_ms);
    match retry_after {
        Some(wait) => jittered.max(wait).min(cap),
        None => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryConfig = RetryConfig {
        base_ms: 100,
        cap_ms: 5_000,
        max_attempts: 10,
    };

    #[test]
    fn ceiling_doubles_then_caps() {
        let ms: Vec<u128> = (1..=8).map(|a| ceiling(&POLICY, a).as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(ceiling(&POLICY, 1000).as_millis(), 5000);
    }

    #[test]
    fn delays_stay_within_bounds_and_spread() {
        for attempt in 1..=10 {
            let top = ceiling(&POLICY, attempt);
            let draws: Vec<Duration> = (0..500).map(|_| delay(&POLICY, attempt, None)).collect();
            assert!(draws.iter().all(|d| *d <= top), "attempt {attempt}");
            // Full jitter: the draws cover the range, not a narrow band near the top.
            let low = draws.iter().filter(|d| **d < top / 2).count();
            assert!(
                low > 150 && low < 350,
                "attempt {attempt}: {low} of 500 in the lower half"
            );
        }
    }

    #[test]
    fn retry_after_is_honoured_within_the_cap() {
        for _ in 0..200 {
            let d = delay(&POLICY, 1, Some(Duration::from_secs(2)));
            assert!(d >= Duration::from_secs(2) && d <= Duration::from_secs(5));
            let d = delay(&POLICY, 1, Some(Duration::from_secs(3600)));
            assert_eq!(d, Duration::from_millis(5000));
        }
    }
}
