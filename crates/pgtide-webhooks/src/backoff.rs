//! The retry schedule: the n-th retry waits `base · 2^(n-1)` (2, 4, 8, 16,
//! 32 … s with the default base), capped at 300 s, with ±10 % jitter so
//! endpoints that failed together do not retry together.

use std::time::Duration;

/// The longest wait between two attempts.
pub const CAP: Duration = Duration::from_secs(300);

/// How much of each delay is jitter, either way.
const JITTER: f64 = 0.1;

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    Retry(Duration),
    GiveUp,
}

/// The wait before retry number `retry` (1-based), for a `jitter` in `[0, 1)`.
pub fn delay(base: Duration, retry: u32, jitter: f64) -> Duration {
    let exp = retry.saturating_sub(1).min(30);
    let plain = base.as_secs_f64() * f64::from(1u32 << exp);
    let factor = 1.0 + JITTER * (2.0 * jitter.clamp(0.0, 1.0) - 1.0);
    Duration::from_secs_f64((plain * factor).min(CAP.as_secs_f64()))
}

/// After failed attempt number `attempt` (1 is the first send): retry while
/// fewer than `max_retries` retries were made, else give up.
pub fn after_failure(base: Duration, attempt: i32, max_retries: i32, jitter: f64) -> Next {
    if attempt <= max_retries {
        Next::Retry(delay(base, attempt.max(1) as u32, jitter))
    } else {
        Next::GiveUp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(2);

    #[test]
    fn schedule_doubles_from_the_base() {
        let secs: Vec<f64> = (1..=6).map(|n| delay(BASE, n, 0.5).as_secs_f64()).collect();
        assert_eq!(secs, [2.0, 4.0, 8.0, 16.0, 32.0, 64.0]);
    }

    #[test]
    fn schedule_is_capped_at_300_seconds_even_with_jitter() {
        assert_eq!(delay(BASE, 9, 0.999), CAP);
        assert_eq!(delay(BASE, 40, 0.5), CAP);
        assert!(delay(BASE, 8, 0.0) < CAP); // 256 s less 10 %
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for j in [0.0, 0.25, 0.75, 0.9999] {
            let d = delay(BASE, 3, j).as_secs_f64();
            assert!((7.2..=8.8).contains(&d), "{d}");
        }
    }

    #[test]
    fn gives_up_after_max_retries() {
        assert_eq!(after_failure(BASE, 1, 2, 0.5), Next::Retry(BASE));
        assert_eq!(
            after_failure(BASE, 2, 2, 0.5),
            Next::Retry(Duration::from_secs(4))
        );
        assert_eq!(after_failure(BASE, 3, 2, 0.5), Next::GiveUp);
        assert_eq!(after_failure(BASE, 1, 0, 0.5), Next::GiveUp);
    }

    #[test]
    fn a_small_base_makes_a_fast_schedule() {
        let base = Duration::from_millis(100);
        assert_eq!(delay(base, 1, 0.5), Duration::from_millis(100));
        assert_eq!(delay(base, 4, 0.5), Duration::from_millis(800));
    }
}
