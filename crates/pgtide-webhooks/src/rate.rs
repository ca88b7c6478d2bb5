//! The per-endpoint rate limit: a token bucket holding up to `burst` tokens,
//! refilled at `requests_per_period / period_seconds` per second. A delivery
//! without a token waits for one; nothing is dropped.

use std::time::{Duration, Instant};

use pgtide_store::webhooks::RateLimit;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket. `burst` defaults to 1 (evenly spaced requests).
    pub fn new(limit: &RateLimit, now: Instant) -> TokenBucket {
        let capacity = f64::from(limit.burst.unwrap_or(1).max(1));
        let per_second =
            f64::from(limit.requests_per_period.max(1)) / f64::from(limit.period_seconds.max(1));
        TokenBucket {
            capacity,
            per_second,
            tokens: capacity,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.at = now;
    }

    /// Whole tokens available now.
    pub fn available(&mut self, now: Instant) -> u32 {
        self.refill(now);
        self.tokens.floor() as u32
    }

    /// Takes `n` tokens (the caller checked [`available`](Self::available)).
    pub fn take(&mut self, n: u32, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens - f64::from(n)).max(0.0);
    }

    /// Gives back tokens taken for deliveries that were not claimed after all.
    pub fn give_back(&mut self, n: u32) {
        self.tokens = (self.tokens + f64::from(n)).min(self.capacity);
    }

    /// How long until the next whole token.
    pub fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(requests: u32, period: u32, burst: Option<u32>) -> RateLimit {
        RateLimit {
            requests_per_period: requests,
            period_seconds: period,
            burst,
        }
    }

    #[test]
    fn burst_then_steady_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&limit(10, 1, Some(3)), t0);
        assert_eq!(b.available(t0), 3);
        b.take(3, t0);
        assert_eq!(b.available(t0), 0);
        assert_eq!(b.wait(t0), Duration::from_millis(100));
        assert_eq!(b.available(t0 + Duration::from_millis(250)), 2);
        // Never more than the burst, however long it idles.
        assert_eq!(b.available(t0 + Duration::from_secs(60)), 3);
    }

    #[test]
    fn slow_limits_space_requests_out() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&limit(2, 60, None), t0);
        assert_eq!(b.available(t0), 1);
        b.take(1, t0);
        assert_eq!(b.wait(t0), Duration::from_secs(30));
        assert_eq!(b.available(t0 + Duration::from_secs(29)), 0);
        assert_eq!(b.available(t0 + Duration::from_secs(30)), 1);
    }

    #[test]
    fn unclaimed_tokens_go_back() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&limit(1, 1, Some(5)), t0);
        b.take(5, t0);
        b.give_back(2);
        assert_eq!(b.available(t0), 2);
        b.give_back(10);
        assert_eq!(b.available(t0), 5);
    }
}
