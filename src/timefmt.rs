//! RFC 3339 timestamps in UTC (metrics, records, log lines), without a date-time crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// `2026-11-29T09:20:11Z` for the given instant (seconds precision, UTC).
pub fn rfc3339(time: SystemTime) -> String {
    let (date_time, _) = split(time);
    format!("{date_time}Z")
}

/// `2026-11-29T09:20:11.042Z`: milliseconds, always 24 characters (log lines line up).
pub fn rfc3339_millis(time: SystemTime) -> String {
    let (date_time, millis) = split(time);
    format!("{date_time}.{millis:03}Z")
}

/// `2026-11-29T09:20:11` and the milliseconds of the given instant, rounded down.
fn split(time: SystemTime) -> (String, u32) {
    let millis = match time.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    };
    let secs = millis.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let date_time = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    (date_time, millis.rem_euclid(1000) as u32)
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (HTTP's IMF-fixdate, RFC 9110 5.6.7) for the given instant.
pub fn http_date(time: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_944_011);
        assert_eq!(rfc3339(t), "2026-11-29T09:20:11Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn millis_have_a_fixed_width() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_944_011_000);
        assert_eq!(rfc3339_millis(t), "2026-11-29T09:20:11.000Z");
        let t = UNIX_EPOCH + Duration::from_nanos(1_795_944_011_042_999_999);
        assert_eq!(rfc3339_millis(t), "2026-11-29T09:20:11.042Z");
        assert_eq!(rfc3339(t), "2026-11-29T09:20:11Z");
        let before = UNIX_EPOCH - Duration::from_millis(1);
        assert_eq!(rfc3339_millis(before), "1969-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_millis(SystemTime::now()).len(), 24);
    }

    #[test]
    fn http_dates() {
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_944_011);
        assert_eq!(http_date(t), "Sun, 29 Nov 2026 09:20:11 GMT");
    }
}
