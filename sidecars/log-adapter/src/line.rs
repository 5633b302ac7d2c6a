//! Splitting a stream's bytes into lines, with a bound: a line longer than the limit is cut at the
//! limit and flagged, and the rest of it, up to its newline, is skipped without being held in
//! memory. Sans-IO: the caller owns the buffer and the file.

/// One line found by [`LineSplitter::split`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    /// Without the newline (and without a `\r` before it).
    pub bytes: &'a [u8],
    pub truncated: bool,
    /// Offset in the input where the line starts and where the next one starts.
    pub start: usize,
    pub end: usize,
}

/// The per-stream state: the limit, and whether the rest of an overlong line is being skipped.
#[derive(Debug, Clone)]
pub struct LineSplitter {
    max: usize,
    skipping: bool,
}

impl LineSplitter {
    pub fn new(max_line_bytes: usize) -> Self {
        LineSplitter {
            max: max_line_bytes.max(1),
            skipping: false,
        }
    }

    /// Forgets a partly skipped line (the file was truncated or replaced).
    pub fn reset(&mut self) {
        self.skipping = false;
    }

    /// Calls `emit` for each line in `input` and returns how many bytes were consumed; the rest
    /// is an incomplete line to offer again with more data. With `at_end` (the stream will grow
    /// no more) an incomplete last line is emitted too.
    pub fn split(&mut self, input: &[u8], at_end: bool, mut emit: impl FnMut(Line<'_>)) -> usize {
        let mut pos = 0;
        while pos < input.len() {
            let rest = &input[pos..];
            match memchr::memchr(b'\n', rest) {
                Some(at) => {
                    let end = pos + at + 1;
                    if std::mem::take(&mut self.skipping) {
                        pos = end;
                        continue;
                    }
                    let mut bytes = &rest[..at];
                    if let Some(stripped) = bytes.strip_suffix(b"\r") {
                        bytes = stripped;
                    }
                    let truncated = bytes.len() > self.max;
                    emit(Line {
                        bytes: &bytes[..bytes.len().min(self.max)],
                        truncated,
                        start: pos,
                        end,
                    });
                    pos = end;
                }
                None if self.skipping => return input.len(),
                None if rest.len() > self.max => {
                    emit(Line {
                        bytes: &rest[..self.max],
                        truncated: true,
                        start: pos,
                        end: input.len(),
                    });
                    self.skipping = !at_end;
                    return input.len();
                }
                None if at_end => {
                    emit(Line {
                        bytes: rest,
                        truncated: false,
                        start: pos,
                        end: input.len(),
                    });
                    return input.len();
                }
                None => return pos,
            }
        }
        pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(splitter: &mut LineSplitter, input: &[u8], at_end: bool) -> (Vec<(String, bool)>, usize) {
        let mut out = Vec::new();
        let used = splitter.split(input, at_end, |line| {
            out.push((String::from_utf8_lossy(line.bytes).into_owned(), line.truncated));
        });
        (out, used)
    }

    #[test]
    fn complete_lines_are_emitted_and_a_partial_one_waits() {
        let mut splitter = LineSplitter::new(100);
        let (out, used) = lines(&mut splitter, b"one\r\ntwo\nthr", false);
        assert_eq!(out, [("one".into(), false), ("two".into(), false)]);
        assert_eq!(used, 9);
        let (out, used) = lines(&mut splitter, b"thr", true);
        assert_eq!((out, used), (vec![("thr".into(), false)], 3));
    }

    #[test]
    fn an_overlong_line_is_cut_flagged_and_its_rest_skipped_across_reads() {
        let mut splitter = LineSplitter::new(4);
        let (out, used) = lines(&mut splitter, b"abcdefgh", false);
        assert_eq!((out, used), (vec![("abcd".into(), true)], 8));
        let (out, used) = lines(&mut splitter, b"ijkl\nnext\n", false);
        assert_eq!((out, used), (vec![("next".into(), false)], 10));
        let (out, _) = lines(&mut splitter, b"123456\n", false);
        assert_eq!(out, [("1234".into(), true)]);
    }

    #[test]
    fn a_ten_megabyte_line_costs_no_more_than_the_limit() {
        let mut splitter = LineSplitter::new(1024);
        let big = vec![b'x'; 10 << 20];
        let mut seen = Vec::new();
        for chunk in big.chunks(64 << 10) {
            let used = splitter.split(chunk, false, |line| seen.push((line.bytes.len(), line.truncated)));
            assert_eq!(used, chunk.len(), "nothing of an overlong line is held back");
        }
        splitter.split(b"\nafter\n", false, |line| {
            seen.push((line.bytes.len(), line.truncated))
        });
        assert_eq!(seen, [(1024, true), (5, false)]);
    }
}
