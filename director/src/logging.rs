//! How log lines are written: tracing's text or JSON format, each line
//! prefixed with its syslog priority when stderr is journald's stream
//! (systemd's `JOURNAL_STREAM`, see `systemd.exec(5)`), so that journald
//! records the level (`journalctl -p warning`) instead of "info" for all.

use std::os::unix::fs::MetadataExt as _;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// The syslog priority of a tracing level (`sd-daemon(3)`'s `<N>`).
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Whether stderr is the journal stream systemd connected: the
/// `JOURNAL_STREAM` variable holds that stream's `DEVICE:INODE`, and a
/// stderr redirected elsewhere (`director run 2>file` inside a unit) has
/// other numbers.
pub fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    journal_stream_is(&v, meta.dev(), meta.ino())
}

/// `JOURNAL_STREAM`'s `DEVICE:INODE` names the file `dev`/`ino`.
fn journal_stream_is(value: &str, dev: u64, ino: u64) -> bool {
    value
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

/// A line format, with the `<N>` priority prefix in front when `on`.
pub struct Priority<F> {
    inner: F,
    on: bool,
}

impl<F> Priority<F> {
    pub fn new(inner: F, on: bool) -> Priority<F> {
        Priority { inner, on }
    }
}

impl<S, N, F> FormatEvent<S, N> for Priority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        if self.on {
            write!(writer, "<{}>", priority(*event.metadata().level()))?;
        }
        self.inner.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_names_one_file() {
        assert!(journal_stream_is("8:123", 8, 123));
        assert!(!journal_stream_is("8:124", 8, 123));
        assert!(!journal_stream_is("8", 8, 123));
        assert!(!journal_stream_is("x:y", 8, 123));
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(Level::ERROR), 3);
        assert_eq!(priority(Level::WARN), 4);
        assert_eq!(priority(Level::INFO), 6);
        assert_eq!(priority(Level::TRACE), 7);
    }
}
