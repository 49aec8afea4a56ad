//! Human durations in config files: "500ms", "2s", "1m30s", "1.5s", "1h".

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as a string with units, as operators write them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub Duration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (write e.g. \"500ms\", \"2s\", \"1m30s\")")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

impl Dur {
    pub const fn from_millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }

    pub const fn from_secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }

    pub fn get(self) -> Duration {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl FromStr for Dur {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| DurationError {
            input: input.to_string(),
            reason,
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("empty"));
        }
        let mut total_nanos: u128 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| err("missing unit (ms, s, m or h)"))?;
            if num_len == 0 {
                return Err(err("expected a number"));
            }
            let (num, after) = rest.split_at(num_len);
            let unit_len = after
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(after.len());
            let (unit, next) = after.split_at(unit_len);
            let unit_nanos: u128 = match unit {
                "ns" => 1,
                "us" | "µs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                _ => return Err(err("unknown unit (use ms, s, m or h)")),
            };
            total_nanos += scale(num, unit_nanos).ok_or_else(|| err("bad number"))?;
            rest = next;
        }
        let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| err("too large"))?;
        // The remainder of a division by 1e9 always fits in u32.
        let nanos = (total_nanos % 1_000_000_000) as u32;
        Ok(Dur(Duration::new(secs, nanos)))
    }
}

/// `num` (decimal, maybe with a fraction) times `unit` nanoseconds, exactly
/// up to nanosecond precision.
fn scale(num: &str, unit: u128) -> Option<u128> {
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return None;
    }
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut total = int.checked_mul(unit)?;
    let mut place = unit;
    for d in frac.bytes().take(18) {
        place /= 10;
        total = total.checked_add(u128::from(d - b'0') * place)?;
    }
    // Bound absurd values early: 100 years is plenty for any timeout.
    (total <= 100 * 365 * 86_400 * 1_000_000_000).then_some(total)
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            write!(f, "{}s", d.as_secs())
        } else if d.subsec_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}ns", d.as_nanos())
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Result<Duration, DurationError> {
        s.parse::<Dur>().map(Dur::get)
    }

    #[test]
    fn parses_common_forms() {
        assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(d("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(d("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(d("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(d("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(d("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(d("0s"), Ok(Duration::ZERO));
        assert_eq!(d("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(d(".5s"), Ok(Duration::from_millis(500)));
    }

    #[test]
    fn rejects_bad_forms() {
        for bad in [
            "",
            "5",
            "ms",
            "5 parsecs",
            "1.2.3s",
            "s5",
            "99999999999999h",
            "-1s",
            ".",
        ] {
            assert!(d(bad).is_err(), "{bad:?} should not parse");
        }
        let msg = d("5").map_err(|e| e.to_string()).err().unwrap_or_default();
        assert!(msg.contains("missing unit"), "{msg}");
    }

    #[test]
    fn display_round_trips() {
        for s in ["2s", "500ms", "1500ms", "0s"] {
            let parsed: Dur = s.parse().unwrap_or_default();
            assert_eq!(parsed.to_string(), s);
        }
    }
}
