//! Time as plain numbers: Warden's decision core never reads a clock, it is handed `now` as Unix
//! seconds. These helpers turn such a number into a calendar date (proleptic Gregorian, UTC) and
//! format it as RFC 3339, without a time-zone database.

/// Seconds since the Unix epoch, UTC.
pub type UnixSeconds = i64;

/// Seconds in a day.
pub const DAY: i64 = 86_400;

/// Formats `t` (plus a fixed offset in seconds) as RFC 3339, e.g. `2026-11-22T08:00:00+01:00`.
#[must_use]
pub fn rfc3339(t: UnixSeconds, offset_secs: i32) -> String {
    let local = t.saturating_add(i64::from(offset_secs));
    let days = local.div_euclid(DAY);
    let secs = local.rem_euclid(DAY);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let zone = if offset_secs == 0 {
        "Z".to_string()
    } else {
        let sign = if offset_secs < 0 { '-' } else { '+' };
        let abs = offset_secs.unsigned_abs();
        format!("{sign}{:02}:{:02}", abs / 3600, (abs % 3600) / 60)
    };
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}{zone}")
}

/// Converts days since 1970-01-01 to a (year, month, day) triple (Howard Hinnant's algorithm).
#[must_use]
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    // The casts cannot truncate: d is in 1..=31 and m in 1..=12 by construction.
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_334_400, 0), "2026-11-22T08:00:00Z");
        assert_eq!(rfc3339(1_795_334_400, 3600), "2026-11-22T09:00:00+01:00");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-1, -5400), "1969-12-31T22:29:59-01:30");
    }
}
