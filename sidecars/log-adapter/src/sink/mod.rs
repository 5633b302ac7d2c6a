//! Where records go. A [`Batch`] is encoded JSON lines plus what the checkpoint may advance to
//! once it is written; a [`Sink`] writes a whole batch or fails, and the caller commits the
//! checkpoint only after success (at-least-once: a failed or interrupted batch is read again).
//!
//! A sink blocks until its batch is written: that is the backpressure, since no more is read
//! meanwhile. The [`http`] sink (JSON lines, Loki, Elasticsearch) reads the lines and their
//! timestamps from the batch, retries inside `write_batch` within its own bounds, and reports a
//! failure the caller retries.

use std::{io::Write, time::Instant};

use crate::{checkpoint::FileId, time::Timestamp};

pub mod http;

/// Records ready to write, and the file offsets they cover.
#[derive(Debug, Default)]
pub struct Batch {
    buf: Vec<u8>,
    /// Offset in `buf` where each record ends, and its timestamp (for sinks that index by time).
    ends: Vec<(u32, Timestamp)>,
    /// For each file touched: the offset every record before which is in this batch.
    offsets: Vec<(FileId, u64)>,
    /// When the oldest record of the batch was read: the sink's lag is measured from it.
    first_read: Option<Instant>,
}

impl Batch {
    /// The buffer to encode one record into; call [`Batch::finish_record`] after.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    pub fn finish_record(&mut self, timestamp: Timestamp) {
        let end = u32::try_from(self.buf.len()).unwrap_or(u32::MAX);
        self.ends.push((end, timestamp));
        self.first_read.get_or_insert_with(Instant::now);
    }

    /// When the oldest record was read, if there is one.
    pub fn first_read(&self) -> Option<Instant> {
        self.first_read
    }

    /// Everything of `id` before `offset` is in this batch (or needs no record).
    pub fn cover(&mut self, id: FileId, offset: u64) {
        match self.offsets.last_mut() {
            Some((last, at)) if *last == id => *at = offset,
            _ => match self.offsets.iter_mut().find(|(known, _)| *known == id) {
                Some((_, at)) => *at = offset,
                None => self.offsets.push((id, offset)),
            },
        }
    }

    pub fn records(&self) -> usize {
        self.ends.len()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Whether there is anything to write or commit.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty() && self.offsets.is_empty()
    }

    /// Each record's JSON (without the newline) and timestamp.
    pub fn lines(&self) -> impl Iterator<Item = (&[u8], Timestamp)> {
        let mut start = 0usize;
        self.ends.iter().map(move |&(end, ts)| {
            let end = end as usize;
            let line = &self.buf[start..end.saturating_sub(1).max(start)];
            start = end;
            (line, ts)
        })
    }

    pub fn offsets(&self) -> &[(FileId, u64)] {
        &self.offsets
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
        self.offsets.clear();
        self.first_read = None;
    }
}

/// Why a batch was not written.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("writing records: {0}")]
    Io(#[from] std::io::Error),
    #[error("delivering records over HTTP: {0}")]
    Http(#[from] http::HttpError),
}

impl SinkError {
    /// A fixed label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            SinkError::Io(_) => "io",
            SinkError::Http(error) => error.category(),
        }
    }
}

/// A destination for batches.
pub trait Sink {
    /// Writes the whole batch, or fails; on failure the same batch is offered again.
    fn write_batch(&mut self, batch: &Batch) -> Result<(), SinkError>;
}

/// A sink chosen at start (stdout or HTTP).
impl<S: Sink + ?Sized> Sink for Box<S> {
    fn write_batch(&mut self, batch: &Batch) -> Result<(), SinkError> {
        (**self).write_batch(batch)
    }
}

/// JSON lines to any writer (stdout in the binary): one `write_all` and a flush per batch.
#[derive(Debug)]
pub struct WriterSink<W> {
    writer: W,
}

impl<W: Write> WriterSink<W> {
    pub fn new(writer: W) -> Self {
        WriterSink { writer }
    }

    pub fn into_inner(self) -> W {
        self.writer
    }
}

impl<W: Write> Sink for WriterSink<W> {
    fn write_batch(&mut self, batch: &Batch) -> Result<(), SinkError> {
        self.writer.write_all(batch.bytes())?;
        self.writer.flush()?;
        Ok(())
    }
}

/// Sinks held in memory, for tests and benchmarks.
impl Sink for Vec<u8> {
    fn write_batch(&mut self, batch: &Batch) -> Result<(), SinkError> {
        self.extend_from_slice(batch.bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_lists_its_records_and_the_offsets_it_covers() {
        let mut batch = Batch::default();
        let (a, b) = (FileId { dev: 1, ino: 1 }, FileId { dev: 1, ino: 2 });
        for (id, offset, text) in [
            (a, 10, "{\"x\":1}\n"),
            (b, 5, "{\"y\":2}\n"),
            (a, 20, "{\"z\":3}\n"),
        ] {
            batch.buffer().extend_from_slice(text.as_bytes());
            batch.finish_record(Timestamp { secs: 1, nanos: 0 });
            batch.cover(id, offset);
        }
        let lines: Vec<_> = batch
            .lines()
            .map(|(line, _)| String::from_utf8_lossy(line).into_owned())
            .collect();
        assert_eq!(lines, ["{\"x\":1}", "{\"y\":2}", "{\"z\":3}"]);
        assert_eq!(batch.offsets(), [(a, 20), (b, 5)]);
        let mut sink = WriterSink::new(Vec::new());
        sink.write_batch(&batch).unwrap();
        assert_eq!(sink.into_inner(), batch.bytes());
        batch.clear();
        assert!(batch.is_empty());
    }
}
