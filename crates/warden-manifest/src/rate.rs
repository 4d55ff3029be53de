//! Rates (`100/h`) and durations (`5m`) as the manifest writes them.

use std::fmt;

/// A count per window, written `N/UNIT` with UNIT one of `s`, `m`, `h`, `d`, or `N/Xunit` with a
/// multiplier (`500/6h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    /// The most a window may hold.
    pub limit: u64,
    /// The window, in seconds.
    pub window_secs: i64,
}

impl Rate {
    /// Per-second rate as a fraction, for comparisons (`diff`).
    #[must_use]
    pub fn per_second(&self) -> f64 {
        // Precision loss is acceptable: this is only used to rank two rates.
        #[expect(clippy::cast_precision_loss, reason = "ranking only, not enforcement")]
        let r = self.limit as f64 / self.window_secs.max(1) as f64;
        r
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.limit, format_duration(self.window_secs))
    }
}

/// Why a rate (`N/UNIT`) or duration (`30s`, `5m`, `1h`, `7d`) does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RateError {
    /// No `/`.
    #[error("`{0}` is not a rate; write it like `100/h`")]
    NotARate(String),
    /// The count is not a whole number.
    #[error("`{count}` in `{text}` is not a whole number")]
    Count {
        /// The count as written.
        count: String,
        /// The rate.
        text: String,
    },
    /// The window is not a duration.
    #[error("window `{unit}` of `{text}`: {why}")]
    Window {
        /// The window as written.
        unit: String,
        /// The rate.
        text: String,
        /// Why.
        #[source]
        why: Box<RateError>,
    },
    /// A duration without a unit.
    #[error("`{0}` has no unit; use s, m, h or d")]
    NoUnit(String),
    /// A duration that does not start with a whole number.
    #[error("`{0}` does not start with a whole number")]
    NoNumber(String),
    /// A unit other than s, m, h, d.
    #[error("unknown unit `{unit}` in `{text}`; use s, m, h or d")]
    Unit {
        /// The unit as written.
        unit: String,
        /// The duration.
        text: String,
    },
    /// Past what 64 bits of seconds hold.
    #[error("`{0}` is too long")]
    Overflow(String),
    /// Zero or less.
    #[error("`{0}` must be longer than zero")]
    NotPositive(String),
    /// More than a year.
    #[error("`{0}` is longer than a year")]
    OverAYear(String),
}

/// Parses `N/UNIT`.
///
/// # Errors
/// [`RateError`] naming what is wrong with `text`.
pub fn parse_rate(text: &str) -> Result<Rate, RateError> {
    let (count, unit) = text
        .split_once('/')
        .ok_or_else(|| RateError::NotARate(text.to_owned()))?;
    let limit: u64 = count.trim().parse().map_err(|_| RateError::Count {
        count: count.to_owned(),
        text: text.to_owned(),
    })?;
    let unit = unit.trim();
    let window_secs = if unit.chars().next().is_some_and(|c| c.is_ascii_digit()) {
        parse_duration(unit)
    } else {
        parse_duration(&format!("1{unit}"))
    }
    .map_err(|why| RateError::Window {
        unit: unit.to_owned(),
        text: text.to_owned(),
        why: Box::new(why),
    })?;
    Ok(Rate { limit, window_secs })
}

/// Parses a duration such as `30s`, `5m`, `1h`, `7d`.
///
/// # Errors
/// [`RateError`] naming what is wrong with `text`.
pub fn parse_duration(text: &str) -> Result<i64, RateError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| RateError::NoUnit(text.to_owned()))?;
    let (n, unit) = text.split_at(split);
    let n: i64 = n
        .parse()
        .map_err(|_| RateError::NoNumber(text.to_owned()))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => {
            return Err(RateError::Unit {
                unit: other.to_owned(),
                text: text.to_owned(),
            })
        }
    };
    let secs = n
        .checked_mul(scale)
        .ok_or_else(|| RateError::Overflow(text.to_owned()))?;
    if secs <= 0 {
        return Err(RateError::NotPositive(text.to_owned()));
    }
    if secs > 366 * 86_400 {
        return Err(RateError::OverAYear(text.to_owned()));
    }
    Ok(secs)
}

/// Formats seconds back into the shortest unit that divides them.
#[must_use]
pub fn format_duration(secs: i64) -> String {
    if secs % 86_400 == 0 {
        day_or(secs / 86_400, "d")
    } else if secs % 3600 == 0 {
        day_or(secs / 3600, "h")
    } else if secs % 60 == 0 {
        day_or(secs / 60, "m")
    } else {
        day_or(secs, "s")
    }
}

fn day_or(n: i64, unit: &str) -> String {
    if n == 1 {
        unit.to_string()
    } else {
        format!("{n}{unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        assert_eq!(
            parse_rate("100/h").unwrap(),
            Rate {
                limit: 100,
                window_secs: 3600
            }
        );
        assert_eq!(
            parse_rate("2 / d").unwrap(),
            Rate {
                limit: 2,
                window_secs: 86_400
            }
        );
        assert_eq!(
            parse_rate("500/6h").unwrap(),
            Rate {
                limit: 500,
                window_secs: 21_600
            }
        );
        assert_eq!(parse_rate("0/m").unwrap().limit, 0);
        assert_eq!(parse_rate("500/6h").unwrap().to_string(), "500/6h");
        assert_eq!(parse_rate("10/h").unwrap().to_string(), "10/h");
    }

    #[test]
    fn rejects_bad_rates_with_reasons() {
        assert!(parse_rate("100")
            .unwrap_err()
            .to_string()
            .contains("like `100/h`"));
        assert!(parse_rate("x/h")
            .unwrap_err()
            .to_string()
            .contains("not a whole number"));
        assert!(parse_rate("1/w")
            .unwrap_err()
            .to_string()
            .contains("window `w` of `1/w`: unknown unit `w`"));
        assert!(parse_rate("1/0h")
            .unwrap_err()
            .to_string()
            .contains("longer than zero"));
        assert!(parse_rate("1/99999999999999999d")
            .unwrap_err()
            .to_string()
            .contains("too long"));
        assert!(parse_duration("400d")
            .unwrap_err()
            .to_string()
            .contains("year"));
    }
}
