//! `--hlog FILE`: the run's per-second histograms as an HdrHistogram
//! interval log, the format of the Java `HistogramLogWriter` that
//! HdrHistogram's `HistogramLogProcessor` (and HdrHistogram_py, HdrHistogramJS,
//! hdrhistogram-go ...) read: a `#[StartTime: ...]` and `#[BaseTime: ...]`
//! header (the start of the measuring window), the column legend, then one
//! line per second and histogram, `Tag=corrected`, `Tag=uncorrected` and, at
//! a fixed rate, `Tag=lag`: start (s since BaseTime), length (s), maximum
//! (ms; values are recorded in ns, so the `MaxValueDivisor` is 10^6), and
//! the histogram in the V2 + DEFLATE encoding, base64. Written by the
//! hdrhistogram crate's interval log writer from the report's series (so
//! the same seconds as the JSON), by `cli.rs` after a run or a merge.

use std::io::{self, Write};
use std::time::{Duration, UNIX_EPOCH};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;

use crate::report::Report;

/// Nanoseconds per millisecond: the maxima in the log are in ms.
const NS_PER_MS: f64 = 1e6;

/// The tags of the histograms of one second, as written.
pub const TAGS: [&str; 3] = ["corrected", "uncorrected", "lag"];

fn other<E: std::fmt::Display>(e: E) -> io::Error {
    io::Error::other(format!("interval log: {e}"))
}

/// Writes `r`'s interval log to `out`.
pub fn write(r: &Report, out: &mut impl Write) -> io::Result<()> {
    let start = r.windows.iter().map(|w| w.start_unix).reduce(f64::min).unwrap_or(0.0);
    let start = UNIX_EPOCH + Duration::from_secs_f64(start.max(0.0));
    let mut text = Vec::new();
    let mut ser = V2DeflateSerializer::new();
    IntervalLogWriterBuilder::new()
        .add_comment(&format!("[Logged with switchyard-client {}]", env!("CARGO_PKG_VERSION")))
        .add_comment("[Histogram log format version 1.3]")
        .with_start_time(start)
        .with_base_time(start)
        .begin_log_with(&mut text, &mut ser)?;
    // The Java writer's column legend, which the crate's writer leaves out.
    text.extend_from_slice(
        b"\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n",
    );
    let mut log =
        IntervalLogWriterBuilder::new().with_max_value_divisor(NS_PER_MS).begin_log_with(&mut text, &mut ser)?;
    let paced = r.target_rate.is_some();
    for s in &r.series {
        let Some(h) = s.hists()? else {
            return Err(other("the report has no per-second histograms (written by an older client?)"));
        };
        let from = Duration::from_secs_f64((s.t - 1.0).max(0.0));
        let len = Duration::from_secs(1);
        for (tag, hist) in TAGS.iter().zip([&h.latency, &h.uncorrected, &h.lag]) {
            if *tag == "lag" && !paced {
                continue;
            }
            log.write_histogram(hist, from, len, Tag::new(tag)).map_err(other)?;
        }
    }
    out.write_all(&text)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::SecondStat;
    use crate::report::Window;
    use crate::stats::Hists;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

    #[test]
    fn the_log_reads_back_with_every_count() {
        let mut r = Report::empty();
        r.target_rate = Some(10.0);
        r.windows = vec![Window { start_unix: 1_767_225_600.5, end_unix: 1_767_225_603.0 }];
        for i in 0..3u64 {
            let mut h = Hists::default();
            for k in 0..=i {
                h.latency.record(2_000_000 + k).unwrap();
                h.uncorrected.record(1_000 + k).unwrap();
                h.lag.record(10 + k).unwrap();
            }
            r.series.push(SecondStat::from_hists(i as f64 + 1.0, i + 1, 0, 0, 0, &h));
        }
        let mut out = Vec::new();
        write(&r, &mut out).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.contains("#[StartTime: 1767225600.500 (seconds since epoch)]"), "{text}");
        assert!(text.contains("#[BaseTime: 1767225600.500 (seconds since epoch)]"), "{text}");
        assert!(text
            .contains("\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n"));
        assert!(text.contains("Tag=corrected,2.000,1.000,2.001,"), "{text}");
        let mut counts = std::collections::BTreeMap::new();
        for e in IntervalLogIterator::new(&out) {
            if let LogEntry::Interval(h) = e.unwrap() {
                *counts.entry(h.tag().unwrap().as_str().to_string()).or_insert(0) += 1;
            }
        }
        assert_eq!(
            counts.into_iter().collect::<Vec<_>>(),
            vec![("corrected".to_string(), 3), ("lag".to_string(), 3), ("uncorrected".to_string(), 3)]
        );
    }
}
