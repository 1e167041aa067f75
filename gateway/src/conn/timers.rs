//! Token timers: the close at `exp` and the `refresh_needed` hint before it.

use std::time::Duration;

/// Longest a token timer sleeps before looking at the clock again.
pub(super) const MAX_TIMER: Duration = Duration::from_secs(86_400);

/// `exp` (Unix seconds) in Unix milliseconds, saturating.
pub(super) fn exp_ms(exp: u64) -> i64 {
    i64::try_from(exp.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// When a connection's token timers fire, from now.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct TokenTimers {
    /// The close 4502: at `exp` (at once if it has passed), capped at
    /// `MAX_TIMER` (the loop then looks again).
    pub(super) expiry: Duration,
    /// `refresh_needed`: `hint_secs` before `exp`, or halfway through the
    /// remaining lifetime when that is shorter than twice `hint_secs` (so a
    /// short token is not hinted at once, and a client refreshing on every
    /// hint does not loop). `None` when hints are off or it is beyond the cap.
    pub(super) hint: Option<Duration>,
}

pub(super) fn token_timers(exp: u64, hint_secs: u64, now_ms: i64) -> TokenTimers {
    let remaining = exp_ms(exp).saturating_sub(now_ms).max(0) as u64;
    let cap = MAX_TIMER.as_millis() as u64;
    let before = hint_secs.saturating_mul(1000).min(remaining / 2);
    let hint_at = remaining - before;
    TokenTimers {
        expiry: Duration::from_millis(remaining.min(cap)),
        hint: (hint_secs > 0 && hint_at <= cap).then(|| Duration::from_millis(hint_at)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_timers_close_at_exp_and_hint_before_it() {
        let now = 1_700_000_000_000;
        let exp = 1_700_000_100; // 100 s from now
        let t = token_timers(exp, 30, now);
        assert_eq!(t.expiry, Duration::from_secs(100));
        assert_eq!(t.hint, Some(Duration::from_secs(70)));
        // Shorter than twice the hint: halfway.
        let t = token_timers(exp, 80, now);
        assert_eq!(t.hint, Some(Duration::from_secs(50)));
        // Hints off.
        assert_eq!(token_timers(exp, 0, now).hint, None);
        // Passed (accepted within the connect leeway): close and hint at once.
        let t = token_timers(exp - 103, 30, now);
        assert_eq!((t.expiry, t.hint), (Duration::ZERO, Some(Duration::ZERO)));
        // Far away (even u64::MAX): capped, never overflowing; no hint yet.
        let t = token_timers(u64::MAX, 30, now);
        assert_eq!((t.expiry, t.hint), (MAX_TIMER, None));
    }
}
