//! Back-off with jitter, for send retries and reconnecting harnesses.

use std::time::Duration;

/// A random u64 (from the OS, via UUID v4) for jitter.
pub fn random_u64() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

/// Exponential back-off with "equal jitter": the step is
/// `min(cap, base * 2^attempt)` and the delay is uniform in `[step/2, step]`
/// (`rand` picks the point). `attempt` starts at 0.
pub fn backoff_delay(attempt: u32, base: Duration, cap: Duration, rand: u64) -> Duration {
    let base_ms = base.as_millis().min(u64::MAX as u128) as u64;
    let cap_ms = cap.as_millis().min(u64::MAX as u128) as u64;
    let step = base_ms.saturating_mul(1u64 << attempt.min(32)).min(cap_ms);
    let half = step / 2;
    Duration::from_millis(half + rand % (step - half + 1))
}

/// The wait before retry number `attempt + 1`: `retry_after_ms` plus up to
/// 10 % (at least 10 ms) of jitter when the server gave it, else
/// [`backoff_delay`].
pub fn retry_delay(
    attempt: u32,
    retry_after_ms: Option<u64>,
    base: Duration,
    cap: Duration,
    rand: u64,
) -> Duration {
    match retry_after_ms {
        Some(ms) => {
            let spread = (ms / 10).max(10);
            Duration::from_millis(ms.saturating_add(rand % (spread + 1)))
        }
        None => backoff_delay(attempt, base, cap, rand),
    }
}

/// Reconnect back-off state for harnesses: [`Backoff::next_delay`] grows
/// exponentially (with jitter) up to `cap`; [`Backoff::reset`] after success.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// First step.
    pub base: Duration,
    /// Largest step.
    pub cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// A back-off from `base` up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next delay (jittered), advancing the attempt count.
    pub fn next_delay(&mut self) -> Duration {
        let d = backoff_delay(self.attempt, self.base, self.cap, random_u64());
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Back to the first step.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Delays handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_within_bounds() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        for attempt in 0..40 {
            let step = (100u64 << attempt.min(20)).min(2000);
            for rand in [0, 1, 7, 12345, u64::MAX] {
                let d = backoff_delay(attempt, base, cap, rand).as_millis() as u64;
                assert!(
                    d >= step / 2 && d <= step,
                    "attempt {attempt}: {d} not in [{}, {step}]",
                    step / 2
                );
            }
        }
        assert_eq!(backoff_delay(0, base, cap, 0), Duration::from_millis(50));
        assert_eq!(backoff_delay(3, base, cap, 400), Duration::from_millis(800));
        // Zero base never panics.
        assert_eq!(backoff_delay(5, Duration::ZERO, cap, 99), Duration::ZERO);
    }

    #[test]
    fn retry_delay_honours_retry_after() {
        let base = Duration::from_millis(50);
        let cap = Duration::from_secs(2);
        for rand in [0, 3, 999, u64::MAX] {
            let d = retry_delay(4, Some(500), base, cap, rand).as_millis() as u64;
            assert!((500..=550).contains(&d), "{d}");
            let d = retry_delay(0, Some(0), base, cap, rand).as_millis() as u64;
            assert!(d <= 10, "{d}");
        }
        assert_eq!(
            retry_delay(1, None, base, cap, 0),
            Duration::from_millis(50)
        );
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(40));
        let ds: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert!(ds.iter().all(|&d| d <= 40), "{ds:?}");
        assert_eq!(b.attempts(), 6);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(10));
    }
}
