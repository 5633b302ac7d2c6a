//! Timestamps: the few textual forms log formats use, read from bytes and written as RFC 3339 UTC.
//!
//! Civil-date arithmetic is Howard Hinnant's `days_from_civil` / `civil_from_days`: exact for the
//! proleptic Gregorian calendar and a dozen lines, so no date crate is needed.

use std::time::{SystemTime, UNIX_EPOCH};

/// An instant, as seconds and nanoseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

/// A fixed offset from UTC, in seconds east. Stamps without an offset are read in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UtcOffset(pub i32);

/// Why a `--timezone` value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid time zone {0:?}: expected UTC, Z or an offset such as +02:00 or -0530")]
pub struct OffsetError(pub String);

impl std::str::FromStr for UtcOffset {
    type Err = OffsetError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let trimmed = value.trim();
        if trimmed.eq_ignore_ascii_case("utc") || trimmed == "Z" || trimmed.eq_ignore_ascii_case("gmt") {
            return Ok(UtcOffset(0));
        }
        let rest = trimmed
            .strip_prefix("UTC")
            .or_else(|| trimmed.strip_prefix("GMT"))
            .unwrap_or(trimmed);
        parse_offset(rest.as_bytes())
            .and_then(|(offset, used)| (used == rest.len()).then_some(offset))
            .map(UtcOffset)
            .ok_or_else(|| OffsetError(value.to_owned()))
    }
}

impl Timestamp {
    pub fn now() -> Self {
        let elapsed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp {
            secs: i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX),
            nanos: elapsed.subsec_nanos(),
        }
    }

    /// Seconds, milliseconds, microseconds or nanoseconds since the epoch, told apart by magnitude
    /// (as Vector and Fluent Bit do): a seconds value below 1e11 is before the year 5138.
    pub fn from_epoch_number(value: f64) -> Option<Self> {
        if !value.is_finite() || value < 0.0 {
            return None;
        }
        let secs = if value < 1e11 {
            value
        } else if value < 1e14 {
            value / 1e3
        } else if value < 1e17 {
            value / 1e6
        } else {
            value / 1e9
        };
        let whole = secs.trunc();
        // Round to microseconds: f64 cannot carry nanoseconds of a current epoch value.
        let micros = ((secs - whole) * 1e6).round() as u32;
        #[allow(clippy::cast_possible_truncation)]
        let secs = whole as i64;
        Some(Timestamp {
            secs: secs + i64::from(micros / 1_000_000),
            nanos: (micros % 1_000_000) * 1000,
        })
    }

    /// Civil (year, month, day, hour, minute, second) in UTC.
    pub fn civil(self) -> (i64, u32, u32, u32, u32, u32) {
        let days = self.secs.div_euclid(86_400);
        let rem = self.secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let rem = rem as u32;
        (y, m, d, rem / 3600, rem / 60 % 60, rem % 60)
    }

    /// Appends `YYYY-MM-DDTHH:MM:SS[.fff[fff[fff]]]Z`: the fraction in groups of three digits,
    /// as short as exact.
    pub fn write_rfc3339(self, out: &mut Vec<u8>) {
        let (y, mo, d, h, mi, s) = self.civil();
        if (0..=9999).contains(&y) {
            #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)]
            push_digits(out, y as u32, 4);
        } else {
            out.extend_from_slice(y.to_string().as_bytes());
        }
        out.push(b'-');
        push_digits(out, mo, 2);
        out.push(b'-');
        push_digits(out, d, 2);
        out.push(b'T');
        push_digits(out, h, 2);
        out.push(b':');
        push_digits(out, mi, 2);
        out.push(b':');
        push_digits(out, s, 2);
        if self.nanos != 0 {
            out.push(b'.');
            if self.nanos.is_multiple_of(1_000_000) {
                push_digits(out, self.nanos / 1_000_000, 3);
            } else if self.nanos.is_multiple_of(1000) {
                push_digits(out, self.nanos / 1000, 6);
            } else {
                push_digits(out, self.nanos, 9);
            }
        }
        out.push(b'Z');
    }

    pub fn to_rfc3339(self) -> String {
        let mut out = Vec::with_capacity(32);
        self.write_rfc3339(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

fn push_digits(out: &mut Vec<u8>, mut value: u32, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    for slot in out[start..].iter_mut().rev() {
        #[allow(clippy::cast_possible_truncation)]
        let digit = (value % 10) as u8;
        *slot = b'0' + digit;
        value /= 10;
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day counted from 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// Local civil time plus its offset, checked for range, as an instant.
pub fn from_civil(
    year: i64,
    month: u32,
    day: u32,
    (hour, minute, second): (u32, u32, u32),
    nanos: u32,
    offset: UtcOffset,
) -> Option<Timestamp> {
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        // 60 is a leap second; it folds onto the next second.
        || second > 60
    {
        return None;
    }
    let local = days_from_civil(year, month, day) * 86_400
        + i64::from(hour) * 3600
        + i64::from(minute) * 60
        + i64::from(second);
    Some(Timestamp {
        secs: local - i64::from(offset.0),
        nanos,
    })
}

/// `n` ASCII digits at the start of `input`.
pub fn digits(input: &[u8], n: usize) -> Option<u32> {
    let bytes = input.get(..n)?;
    bytes.iter().try_fold(0u32, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
    })
}

/// `.123456789` (or `,123` as Python and log4j write it): nanoseconds and bytes used.
fn fraction(input: &[u8]) -> (u32, usize) {
    if !matches!(input.first(), Some(b'.' | b',')) {
        return (0, 0);
    }
    let count = input[1..].iter().take_while(|b| b.is_ascii_digit()).count();
    if count == 0 {
        return (0, 0);
    }
    let mut nanos = 0u32;
    for (i, b) in input[1..=count].iter().enumerate() {
        if i < 9 {
            nanos = nanos * 10 + u32::from(b - b'0');
        }
    }
    for _ in count..9 {
        nanos *= 10;
    }
    (nanos, count + 1)
}

/// `Z`, `+02:00`, `+0200`, `+02`, `-05:30`: seconds east and bytes used.
pub fn parse_offset(input: &[u8]) -> Option<(i32, usize)> {
    match input.first()? {
        b'Z' | b'z' => Some((0, 1)),
        sign @ (b'+' | b'-') => {
            let hours = digits(&input[1..], 2)?;
            let (minutes, used) = if input.get(3) == Some(&b':') {
                (digits(&input[4..], 2)?, 6)
            } else if let Some(minutes) = digits(&input[3..], 2) {
                (minutes, 5)
            } else {
                (0, 3)
            };
            if hours > 23 || minutes > 59 {
                return None;
            }
            #[allow(clippy::cast_possible_wrap)]
            let secs = (hours * 3600 + minutes * 60) as i32;
            Some((if *sign == b'-' { -secs } else { secs }, used))
        }
        _ => None,
    }
}

/// Hours, minutes, seconds and fraction: `HH:MM:SS[.fff]`, and bytes used.
fn clock(input: &[u8]) -> Option<((u32, u32, u32), u32, usize)> {
    let hour = digits(input, 2)?;
    (input.get(2) == Some(&b':')).then_some(())?;
    let minute = digits(&input[3..], 2)?;
    (input.get(5) == Some(&b':')).then_some(())?;
    let second = digits(&input[6..], 2)?;
    let (nanos, used) = fraction(&input[8..]);
    Some(((hour, minute, second), nanos, 8 + used))
}

/// RFC 3339 / ISO 8601 as logs write it: `2024-01-02T03:04:05.123Z`, a space instead of `T`,
/// `,123` fractions, `+0200` offsets, or no offset (read in `default`). Returns the instant and
/// the bytes used; trailing input is left to the caller.
pub fn parse_iso8601(input: &[u8], default: UtcOffset) -> Option<(Timestamp, usize)> {
    let year = digits(input, 4)?;
    (input.get(4) == Some(&b'-')).then_some(())?;
    let month = digits(&input[5..], 2)?;
    (input.get(7) == Some(&b'-')).then_some(())?;
    let day = digits(&input[8..], 2)?;
    if !matches!(input.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let (hms, nanos, used) = clock(&input[11..])?;
    let mut end = 11 + used;
    let offset = match parse_offset(&input[end..]) {
        Some((offset, used)) => {
            end += used;
            UtcOffset(offset)
        }
        None => default,
    };
    from_civil(i64::from(year), month, day, hms, nanos, offset).map(|ts| (ts, end))
}

/// The whole input is an ISO 8601 stamp (surrounding whitespace allowed).
pub fn parse_iso8601_exact(input: &[u8], default: UtcOffset) -> Option<Timestamp> {
    let input = input.trim_ascii();
    parse_iso8601(input, default).and_then(|(ts, used)| (used == input.len()).then_some(ts))
}

/// `Jan`..`Dec` as 1..12.
pub fn month_abbrev(input: &[u8]) -> Option<u32> {
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
    ];
    let name = input.get(..3)?;
    MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(name))
        .and_then(|i| u32::try_from(i + 1).ok())
}

/// The year a stamp without one (syslog's `Jan  2 03:04:05`, klog's `0102 03:04:05`) most likely
/// has: this year, unless that puts it more than a day in the future, when it is last year's (a
/// December line read in January).
pub fn infer_year(
    now: Timestamp,
    month: u32,
    day: u32,
    hms: (u32, u32, u32),
    nanos: u32,
    offset: UtcOffset,
) -> Option<Timestamp> {
    let (year, ..) = Timestamp {
        secs: now.secs + i64::from(offset.0),
        nanos: 0,
    }
    .civil();
    // Feb 29 in a non-leap year is tried one year back, where it may exist.
    match from_civil(year, month, day, hms, nanos, offset) {
        Some(ts) if ts.secs <= now.secs + 86_400 => Some(ts),
        _ => from_civil(year - 1, month, day, hms, nanos, offset),
    }
}

/// nginx / Apache `%t`: `10/Oct/2000:13:55:36 -0700` (without the brackets).
pub fn parse_clf(input: &[u8]) -> Option<Timestamp> {
    let day = digits(input, 2)?;
    (input.get(2) == Some(&b'/')).then_some(())?;
    let month = month_abbrev(input.get(3..)?)?;
    (input.get(6) == Some(&b'/')).then_some(())?;
    let year = digits(input.get(7..)?, 4)?;
    (input.get(11) == Some(&b':')).then_some(())?;
    let (hms, nanos, used) = clock(input.get(12..)?)?;
    let rest = input.get(12 + used..)?.trim_ascii_start();
    let (offset, used) = parse_offset(rest)?;
    (used == rest.len()).then_some(())?;
    from_civil(i64::from(year), month, day, hms, nanos, UtcOffset(offset))
}

/// nginx's error log and Go's `log` package: `2024/01/02 03:04:05[.123456]`, in local time.
pub fn parse_slashed(input: &[u8], offset: UtcOffset) -> Option<Timestamp> {
    parse_slashed_prefix(input, offset).and_then(|(ts, used)| (used == input.len()).then_some(ts))
}

/// [`parse_slashed`] at the start of `input`: the instant and the bytes used.
pub fn parse_slashed_prefix(input: &[u8], offset: UtcOffset) -> Option<(Timestamp, usize)> {
    let year = digits(input, 4)?;
    (input.get(4) == Some(&b'/')).then_some(())?;
    let month = digits(input.get(5..)?, 2)?;
    (input.get(7) == Some(&b'/')).then_some(())?;
    let day = digits(input.get(8..)?, 2)?;
    (input.get(10) == Some(&b' ')).then_some(())?;
    let (hms, nanos, used) = clock(input.get(11..)?)?;
    from_civil(i64::from(year), month, day, hms, nanos, offset).map(|ts| (ts, 11 + used))
}

/// Clock part shared with the syslog and klog parsers.
pub fn parse_clock(input: &[u8]) -> Option<((u32, u32, u32), u32, usize)> {
    clock(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iso(input: &str) -> Option<String> {
        parse_iso8601_exact(input.as_bytes(), UtcOffset(3600)).map(Timestamp::to_rfc3339)
    }

    #[test]
    fn civil_date_math_round_trips_across_eras() {
        for days in [-800_000, -1, 0, 1, 11_016, 19_723, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn iso_stamps_normalise_to_utc() {
        let cases = [
            ("2024-01-02T03:04:05Z", Some("2024-01-02T03:04:05Z")),
            ("2024-01-02T03:04:05.5+02:00", Some("2024-01-02T01:04:05.500Z")),
            ("2024-01-02 03:04:05,123", Some("2024-01-02T02:04:05.123Z")),
            (
                "2024-01-02T03:04:05.123456-0530",
                Some("2024-01-02T08:34:05.123456Z"),
            ),
            (
                "2024-01-02T03:04:05.123456789Z",
                Some("2024-01-02T03:04:05.123456789Z"),
            ),
            ("2024-02-30T03:04:05Z", None),
            ("2024-01-02T25:04:05Z", None),
            ("2024-01-02", None),
            ("not a date", None),
        ];
        for (input, want) in cases {
            assert_eq!(iso(input).as_deref(), want, "{input}");
        }
    }

    #[test]
    fn epoch_numbers_are_told_apart_by_magnitude() {
        let want = "2023-11-14T22:13:20Z";
        for value in [1_700_000_000.0, 1_700_000_000_000.0, 1.7e15, 1.7e18] {
            let ts = Timestamp::from_epoch_number(value).unwrap();
            assert_eq!(ts.to_rfc3339(), want, "{value}");
        }
        assert_eq!(
            Timestamp::from_epoch_number(1_700_000_000.25)
                .unwrap()
                .to_rfc3339(),
            "2023-11-14T22:13:20.250Z"
        );
        assert_eq!(Timestamp::from_epoch_number(f64::NAN), None);
    }

    #[test]
    fn clf_and_slashed_stamps_parse() {
        assert_eq!(
            parse_clf(b"10/Oct/2000:13:55:36 -0700")
                .map(Timestamp::to_rfc3339)
                .as_deref(),
            Some("2000-10-10T20:55:36Z")
        );
        assert_eq!(parse_clf(b"10/Foo/2000:13:55:36 -0700"), None);
        assert_eq!(
            parse_slashed(b"2024/01/02 03:04:05", UtcOffset(-3600))
                .map(Timestamp::to_rfc3339)
                .as_deref(),
            Some("2024-01-02T04:04:05Z")
        );
    }

    #[test]
    fn a_december_stamp_read_in_january_belongs_to_last_year() {
        let now = parse_iso8601_exact(b"2025-01-01T00:10:00Z", UtcOffset(0)).unwrap();
        let ts = infer_year(now, 12, 31, (23, 59, 0), 0, UtcOffset(0)).unwrap();
        assert_eq!(ts.to_rfc3339(), "2024-12-31T23:59:00Z");
        let ts = infer_year(now, 1, 1, (0, 5, 0), 0, UtcOffset(0)).unwrap();
        assert_eq!(ts.to_rfc3339(), "2025-01-01T00:05:00Z");
    }

    #[test]
    fn time_zone_flags_accept_offsets_and_utc() {
        assert_eq!("UTC".parse(), Ok(UtcOffset(0)));
        assert_eq!("+02:00".parse(), Ok(UtcOffset(7200)));
        assert_eq!("-0530".parse(), Ok(UtcOffset(-19_800)));
        assert!("UTC+1".parse::<UtcOffset>().is_err());
        assert!("Europe/Berlin".parse::<UtcOffset>().is_err());
    }
}
