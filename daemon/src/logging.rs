//! Log output for a terminal, for journald, or for machines.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::registry::LookupSpan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// journald when started by systemd, text otherwise.
    Auto,
    /// Human text with timestamps.
    Text,
    /// No timestamps (journald adds them), `<N>` syslog priority prefixes.
    Journald,
    /// One JSON object per line.
    Json,
}

/// ONNX Runtime logs every graph transformer at INFO (about 150 lines per session); the demo's
/// embedded broker logs every client disconnect as an error.
const DEFAULT_FILTER: &str = "info,ort=warn,rumqttd=off";

pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let format = match format {
        // systemd sets JOURNAL_STREAM for services whose stderr goes to the journal.
        LogFormat::Auto if std::env::var_os("JOURNAL_STREAM").is_some() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        other => other,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
        LogFormat::Journald => builder.event_format(JournaldFormat).try_init(),
        LogFormat::Text | LogFormat::Auto => builder.with_target(false).try_init(),
    };
}

/// `<3>message key=value`: sd-daemon(3) priority prefixes, which journald turns into levels.
struct JournaldFormat;

impl<S, N> FormatEvent<S, N> for JournaldFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
