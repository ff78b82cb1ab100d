//! Back-off after a 429 from the policy provider.
//!
//! The Lua plugin kept one circuit per nginx worker, shared by every route,
//! reported the seconds *elapsed* instead of remaining, and broke every later
//! request of the worker when a 429 came without a numeric `Retry-After`
//! (docs/sideband-protocol.md#rate-limiting). Here one [`Backoff`] belongs to one filter
//! configuration (one root context), `Retry-After` may be seconds or an HTTP
//! date, a missing or unreadable one means 1 second, and the client is told
//! the seconds remaining.

use std::time::{Duration, SystemTime};

/// Parses `Retry-After`: delay-seconds or an HTTP date; `None` if neither.
/// Dates in the past give 0.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<u64> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return Some(v.parse::<u64>().unwrap_or(u64::MAX).min(MAX_BACKOFF_SECS));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(now)
            .map(|d| ceil_secs(d).min(MAX_BACKOFF_SECS))
            .unwrap_or(0),
    )
}

/// A `Retry-After` longer than a day is treated as a day.
pub const MAX_BACKOFF_SECS: u64 = 86_400;

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The back-off state of one filter configuration.
#[derive(Debug, Default, Clone)]
pub struct Backoff {
    open_until: Option<SystemTime>,
}

impl Backoff {
    /// Seconds remaining (at least 1) while sideband calls are paused, or
    /// `None` when calls may go ahead (and the back-off is cleared).
    pub fn remaining(&mut self, now: SystemTime) -> Option<u64> {
        let until = self.open_until?;
        match until.duration_since(now) {
            Ok(d) if !d.is_zero() => Some(ceil_secs(d).max(1)),
            _ => {
                self.open_until = None;
                None
            }
        }
    }

    /// Pauses sideband calls for `secs` seconds from `now` (0 pauses nothing).
    pub fn trip(&mut self, now: SystemTime, secs: u64) {
        self.open_until = if secs == 0 {
            None
        } else {
            now.checked_add(Duration::from_secs(secs))
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_retry_after("5", now), Some(5));
        assert_eq!(parse_retry_after(" 120 ", now), Some(120));
        assert_eq!(parse_retry_after("abc", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&later, now), Some(30));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(0));
        assert_eq!(
            parse_retry_after("99999999999999999999", now),
            Some(MAX_BACKOFF_SECS)
        );
    }

    #[test]
    fn remaining_counts_down_and_clears() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut b = Backoff::default();
        assert_eq!(b.remaining(t0), None);
        b.trip(t0, 5);
        assert_eq!(b.remaining(t0), Some(5));
        assert_eq!(b.remaining(t0 + Duration::from_millis(1500)), Some(4));
        assert_eq!(b.remaining(t0 + Duration::from_secs(5)), None);
        assert_eq!(b.remaining(t0 + Duration::from_secs(1)), None, "cleared");
    }
}
