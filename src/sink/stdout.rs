//! The stdout sink: JSON Lines (or a compact human line) on standard output,
//! for piping into other tools and for watching the stream by eye.

use tokio::io::AsyncWriteExt;

use crate::config::LineFormat;
use crate::event::StoredEvent;

pub struct StdoutTarget {
    format: LineFormat,
    out: tokio::io::Stdout,
}

impl StdoutTarget {
    pub fn new(format: LineFormat) -> Self {
        StdoutTarget {
            format,
            out: tokio::io::stdout(),
        }
    }

    /// Writes and flushes one line per event.
    pub async fn write(&mut self, events: &[StoredEvent], source: &str) -> std::io::Result<()> {
        let mut buf = String::with_capacity(events.len() * 256);
        for e in events {
            match self.format {
                LineFormat::Json => buf.push_str(&e.to_cloudevent(source)),
                LineFormat::Compact => buf.push_str(&e.to_compact()),
            }
            buf.push('\n');
        }
        self.out.write_all(buf.as_bytes()).await?;
        self.out.flush().await
    }
}
