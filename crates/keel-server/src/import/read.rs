//! Record readers for imports: CSV (RFC 4180: quoted fields, embedded newlines, CRLF, an
//! optional UTF-8 BOM) and NDJSON, both reading from a byte stream with a bound on each row,
//! so memory stays flat whatever the file's size and a hostile row cannot exhaust it.

use std::io::{self, BufRead, Read};

/// One row as read from the file.
#[derive(Debug)]
pub enum Raw {
    /// A CSV row: its fields as bytes (not yet checked as UTF-8).
    Fields(Vec<Vec<u8>>),
    /// An NDJSON line.
    Line(Vec<u8>),
    /// A row longer than the bound; its bytes were skipped.
    TooLarge,
}

/// A row and the line of the file it starts on (1-based).
#[derive(Debug)]
pub struct RawRow {
    pub line: u64,
    pub raw: Raw,
}

const BUFFER: usize = 64 * 1024;

/// Reads CSV records one at a time.
pub struct CsvReader<R> {
    input: io::BufReader<R>,
    core: csv_core::Reader,
    out: Vec<u8>,
    ends: Vec<usize>,
    max_row_bytes: usize,
    max_fields: usize,
    done: bool,
    /// Line feeds consumed so far (csv_core counts records, not the newlines inside quotes).
    newlines: u64,
}

impl<R: Read> CsvReader<R> {
    pub fn new(input: R, delimiter: u8, max_row_bytes: usize, max_fields: usize) -> CsvReader<R> {
        CsvReader {
            input: io::BufReader::with_capacity(BUFFER, input),
            core: csv_core::ReaderBuilder::new().delimiter(delimiter).build(),
            // Start small and grow up to the bounds (never past them).
            out: vec![0; 4096.min(max_row_bytes.max(1))],
            ends: vec![0; 64.min(max_fields.max(1))],
            max_row_bytes,
            max_fields,
            done: false,
            newlines: 0,
        }
    }

    /// The next row, or `None` at the end of the input. Blank lines are skipped.
    pub fn next_row(&mut self) -> io::Result<Option<RawRow>> {
        loop {
            if self.done {
                return Ok(None);
            }
            let mut line = None;
            let (mut out_len, mut ends_len) = (0, 0);
            let mut too_large = false;
            loop {
                let input = self.input.fill_buf()?;
                let (result, read, written, ended) =
                    self.core
                        .read_record(input, &mut self.out[out_len..], &mut self.ends[ends_len..]);
                let consumed = &input[..read];
                let rest = match line {
                    Some(_) => consumed,
                    None => {
                        // The record starts at its first byte that is not a line end.
                        let start = consumed
                            .iter()
                            .position(|b| *b != b'\n' && *b != b'\r')
                            .unwrap_or(consumed.len());
                        self.newlines += memchr::memchr_iter(b'\n', &consumed[..start]).count() as u64;
                        if start < consumed.len() {
                            line = Some(self.newlines + 1);
                        }
                        &consumed[start..]
                    }
                };
                self.newlines += memchr::memchr_iter(b'\n', rest).count() as u64;
                self.input.consume(read);
                out_len += written;
                ends_len += ended;
                match result {
                    csv_core::ReadRecordResult::InputEmpty => {}
                    csv_core::ReadRecordResult::OutputFull => {
                        if self.out.len() >= self.max_row_bytes {
                            // Keep reading the row into the same buffer, to skip it.
                            too_large = true;
                            out_len = 0;
                        } else {
                            let grown = (self.out.len() * 2).min(self.max_row_bytes);
                            self.out.resize(grown, 0);
                        }
                    }
                    csv_core::ReadRecordResult::OutputEndsFull => {
                        if self.ends.len() >= self.max_fields {
                            too_large = true;
                            ends_len = 0;
                        } else {
                            let grown = (self.ends.len() * 2).min(self.max_fields);
                            self.ends.resize(grown, 0);
                        }
                    }
                    csv_core::ReadRecordResult::Record => break,
                    csv_core::ReadRecordResult::End => {
                        self.done = true;
                        return Ok(None);
                    }
                }
            }
            let line = line.unwrap_or(self.newlines + 1);
            if too_large {
                return Ok(Some(RawRow {
                    line,
                    raw: Raw::TooLarge,
                }));
            }
            let mut fields = Vec::with_capacity(ends_len);
            let mut start = 0;
            for &end in &self.ends[..ends_len] {
                fields.push(self.out[start..end].to_vec());
                start = end;
            }
            if fields.len() == 1 && fields[0].is_empty() {
                continue;
            }
            return Ok(Some(RawRow {
                line,
                raw: Raw::Fields(fields),
            }));
        }
    }
}

/// Reads NDJSON lines one at a time (`\n` or `\r\n`); blank lines are skipped.
pub struct LineReader<R> {
    input: io::BufReader<R>,
    max_row_bytes: usize,
    line: u64,
}

impl<R: Read> LineReader<R> {
    pub fn new(input: R, max_row_bytes: usize) -> LineReader<R> {
        LineReader {
            input: io::BufReader::with_capacity(BUFFER, input),
            max_row_bytes,
            line: 0,
        }
    }

    pub fn next_row(&mut self) -> io::Result<Option<RawRow>> {
        loop {
            let mut bytes = vec![];
            let mut too_large = false;
            let mut any = false;
            loop {
                let input = self.input.fill_buf()?;
                if input.is_empty() {
                    break;
                }
                any = true;
                let (chunk, found) = match memchr::memchr(b'\n', input) {
                    Some(at) => (&input[..at], Some(at)),
                    None => (input, None),
                };
                if !too_large {
                    if bytes.len() + chunk.len() > self.max_row_bytes {
                        too_large = true;
                        bytes = vec![];
                    } else {
                        bytes.extend_from_slice(chunk);
                    }
                }
                match found {
                    Some(at) => {
                        self.input.consume(at + 1);
                        break;
                    }
                    None => {
                        let consumed = chunk.len();
                        self.input.consume(consumed);
                    }
                }
            }
            if !any {
                return Ok(None);
            }
            self.line += 1;
            if too_large {
                return Ok(Some(RawRow {
                    line: self.line,
                    raw: Raw::TooLarge,
                }));
            }
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
            if self.line == 1 && bytes.starts_with(b"\xEF\xBB\xBF") {
                bytes.drain(..3);
            }
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(RawRow {
                line: self.line,
                raw: Raw::Line(bytes),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv_rows(input: &[u8], max: usize) -> Vec<(u64, Raw)> {
        let mut reader = CsvReader::new(input, b',', max, 100);
        let mut out = vec![];
        while let Some(row) = reader.next_row().unwrap() {
            out.push((row.line, row.raw));
        }
        out
    }

    fn texts(raw: &Raw) -> Vec<String> {
        match raw {
            Raw::Fields(fields) => fields.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect(),
            other => panic!("expected fields, got {other:?}"),
        }
    }

    #[test]
    fn csv_reads_quotes_newlines_crlf_and_a_bom() {
        let rows = csv_rows(
            b"\xEF\xBB\xBFa,b\r\n\"x, y\",\"line\nbreak\"\r\n\r\n\"q\"\"uote\",\n",
            1 << 20,
        );
        assert_eq!(rows.len(), 3);
        assert_eq!(texts(&rows[0].1), ["a", "b"]);
        assert_eq!(texts(&rows[1].1), ["x, y", "line\nbreak"]);
        assert_eq!(rows[1].0, 2);
        assert_eq!(texts(&rows[2].1), ["q\"uote", ""]);
        assert_eq!(rows[2].0, 5, "the embedded newline and the blank line count");
    }

    #[test]
    fn csv_skips_a_row_past_the_bound_and_goes_on() {
        let big = "z".repeat(50_000);
        let input = format!("a,b\n1,{big}\n2,ok\n");
        let rows = csv_rows(input.as_bytes(), 10_000);
        assert_eq!(rows.len(), 3);
        assert!(matches!(rows[1].1, Raw::TooLarge));
        assert_eq!(texts(&rows[2].1), ["2", "ok"]);
    }

    #[test]
    fn lines_are_bounded_and_blank_ones_skipped() {
        let big = "z".repeat(50_000);
        let input = format!("{{\"a\":1}}\r\n\n{big}\n{{\"a\":2}}");
        let mut reader = LineReader::new(input.as_bytes(), 10_000);
        let mut rows = vec![];
        while let Some(row) = reader.next_row().unwrap() {
            rows.push(row);
        }
        assert_eq!(rows.len(), 3);
        assert!(matches!(&rows[0].raw, Raw::Line(l) if l == b"{\"a\":1}"));
        assert!(matches!(rows[1].raw, Raw::TooLarge));
        assert_eq!(rows[1].line, 3);
        assert!(matches!(&rows[2].raw, Raw::Line(l) if l == b"{\"a\":2}"));
    }

    // Fuzzing by property (S10): any bytes at all, and any fields the `csv` crate can write.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn all_rows(mut next: impl FnMut() -> io::Result<Option<RawRow>>) -> Vec<RawRow> {
            let mut rows = vec![];
            while let Some(row) = next().expect("reading from memory does not fail") {
                rows.push(row);
            }
            rows
        }

        /// Fields of the awkward kinds: delimiters, quotes, CR, LF, unicode, empty.
        fn field() -> impl Strategy<Value = String> {
            prop::collection::vec(
                prop_oneof![
                    Just(",".to_string()),
                    Just("\"".to_string()),
                    Just("\r\n".to_string()),
                    Just("\n".to_string()),
                    Just(" ".to_string()),
                    "[a-z0-9]{1,5}",
                    "\\PC{1,3}",
                ],
                0..6,
            )
            .prop_map(|parts| parts.concat())
            .prop_filter("a leading BOM is the file's, not the field's", |f| {
                !f.starts_with('\u{FEFF}')
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            #[test]
            fn csv_round_trips_what_a_csv_writer_writes(
                rows in prop::collection::vec(prop::collection::vec(field(), 1..6), 1..20)
            ) {
                let mut writer = csv::WriterBuilder::new().flexible(true).from_writer(vec![]);
                for row in &rows {
                    writer.write_record(row).unwrap();
                }
                let bytes = writer.into_inner().unwrap();
                let mut reader = CsvReader::new(&bytes[..], b',', 1 << 20, 100);
                let read = all_rows(|| reader.next_row());
                // A row of one empty field is written as a blank line, which readers skip.
                let expected: Vec<&Vec<String>> = rows.iter().filter(|r| !(r.len() == 1 && r[0].is_empty())).collect();
                prop_assert_eq!(read.len(), expected.len());
                let mut line = 1u64;
                for (got, want) in read.iter().zip(expected) {
                    let Raw::Fields(fields) = &got.raw else { panic!("{:?}", got.raw) };
                    let texts: Vec<String> = fields.iter().map(|f| String::from_utf8(f.clone()).unwrap()).collect();
                    prop_assert_eq!(&texts, want);
                    prop_assert!(got.line >= line, "lines only grow");
                    line = got.line;
                }
            }

            #[test]
            fn csv_reader_is_total_and_bounded_on_any_bytes(
                bytes in prop::collection::vec(any::<u8>(), 0..4096),
                delimiter in prop::sample::select(vec![b',', b';', b'\t', b'|']),
            ) {
                let mut reader = CsvReader::new(&bytes[..], delimiter, 64, 8);
                for row in all_rows(|| reader.next_row()) {
                    if let Raw::Fields(fields) = row.raw {
                        prop_assert!(fields.iter().map(Vec::len).sum::<usize>() <= 64);
                        prop_assert!(fields.len() <= 8);
                    }
                }
            }

            #[test]
            fn line_reader_is_total_and_bounded_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
                let mut reader = LineReader::new(&bytes[..], 64);
                let rows = all_rows(|| reader.next_row());
                let lines = bytes.iter().filter(|b| **b == b'\n').count() as u64 + 1;
                for row in rows {
                    prop_assert!(row.line <= lines);
                    if let Raw::Line(line) = row.raw {
                        prop_assert!(!line.is_empty() && line.len() <= 64);
                    }
                }
            }
        }
    }
}
