//! Turning a step's raw output bytes into log lines. Pure code, no I/O: the local backend
//! feeds it whatever chunks a pipe read returns, and it yields the lines that are complete.
//!
//! The rules, which every backend's log lines follow (see [`super::OutputLine`]):
//! - a line comes with its `\n` (a `\r\n` line keeps its `\r` too: nothing is dropped);
//! - a line longer than the maximum comes in pieces cut at a UTF-8 boundary, only the last
//!   piece carrying the `\n`, so that one runaway line cannot hold unbounded memory or make a
//!   log row of many megabytes;
//! - a last line without `\n` is held until [`LineSplitter::finish`];
//! - invalid UTF-8 is decoded lossily (U+FFFD), piece by piece.
//!
//! For valid UTF-8 input, concatenating the pieces gives back exactly the input bytes, however
//! the input was chunked: bytes are only decoded once a whole piece is known, so a chunk
//! boundary inside a multi-byte character changes nothing.

/// The longest piece, in bytes, not counting its `\n`: 64 KiB.
pub const MAX_LINE: usize = 64 * 1024;

/// Splits a byte stream into lines. Feed it with [`push`](Self::push), end it with
/// [`finish`](Self::finish).
#[derive(Debug)]
pub struct LineSplitter {
    /// Bytes received and not yet emitted: always the start of an unfinished line.
    pending: Vec<u8>,
    /// How far `pending` is known to hold no `\n`, so that a long line arriving in small
    /// chunks is not searched again from its start for every chunk.
    scanned: usize,
    max: usize,
}

impl Default for LineSplitter {
    fn default() -> Self {
        Self::new()
    }
}

impl LineSplitter {
    /// A splitter with the standard maximum, [`MAX_LINE`].
    pub fn new() -> Self {
        Self::with_max(MAX_LINE)
    }

    /// A splitter cutting pieces at `max` bytes (at least 4, so that any UTF-8 character
    /// fits in a piece; smaller values are raised to 4).
    pub fn with_max(max: usize) -> Self {
        LineSplitter {
            pending: Vec::new(),
            scanned: 0,
            max: max.max(4),
        }
    }

    /// Takes the next chunk and returns the lines (and pieces of long lines) it completes.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.push_measured(chunk)
            .into_iter()
            .map(|(text, _)| text)
            .collect()
    }

    /// As [`push`](Self::push), each piece with the number of input bytes it came from (which
    /// differs from its text's length where invalid UTF-8 was replaced): a reader that
    /// records where a piece starts in a file can resume splitting exactly there.
    pub fn push_measured(&mut self, chunk: &[u8]) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        if chunk.is_empty() {
            return out;
        }
        self.pending.extend_from_slice(chunk);
        // Emit from an offset and drain once at the end: draining per line would move the
        // rest of the buffer for every line of a chunk full of short lines.
        let mut start = 0;
        loop {
            let rest = &self.pending[start..];
            // A complete line fits when its `\n` is within the first `max + 1` bytes.
            let window = rest.len().min(self.max + 1);
            let search_from = self.scanned.min(window);
            match rest[search_from..window].iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let end = search_from + i + 1;
                    out.push((String::from_utf8_lossy(&rest[..end]).into_owned(), end));
                    start += end;
                    self.scanned = 0;
                }
                None if rest.len() > self.max => {
                    // No `\n` within reach: the line is too long, cut a piece off it.
                    let cut = utf8_cut(rest, self.max);
                    out.push((String::from_utf8_lossy(&rest[..cut]).into_owned(), cut));
                    start += cut;
                    self.scanned = 0;
                }
                None => {
                    self.scanned = rest.len();
                    break;
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// The bytes received and not yet emitted (the start of an unfinished line).
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Ends the stream: the last line if it had no `\n`.
    pub fn finish(self) -> Option<String> {
        if self.pending.is_empty() {
            None
        } else {
            Some(String::from_utf8_lossy(&self.pending).into_owned())
        }
    }
}

/// Where to cut `bytes` (longer than `max`) so that the first piece is at most `max` bytes
/// and does not end inside a UTF-8 character. Invalid UTF-8 has no boundary to respect: then
/// the cut is at `max`.
fn utf8_cut(bytes: &[u8], max: usize) -> usize {
    let is_continuation = |b: u8| b & 0b1100_0000 == 0b1000_0000;
    // A character is at most 4 bytes: a boundary is at most 3 steps back.
    (max.saturating_sub(3)..=max)
        .rev()
        .find(|&i| i > 0 && !is_continuation(bytes[i]))
        .unwrap_or(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in chunks of `chunk` bytes and returns every piece, `finish` included.
    fn split(input: &[u8], chunk: usize, max: usize) -> Vec<String> {
        let mut s = LineSplitter::with_max(max);
        let mut out = Vec::new();
        for c in input.chunks(chunk.max(1)) {
            out.extend(s.push(c));
        }
        out.extend(s.finish());
        out
    }

    /// Checks the invariants that hold for every valid UTF-8 input and chunking.
    fn check_invariants(input: &str, pieces: &[String], max: usize) {
        assert_eq!(
            pieces.concat(),
            input,
            "concatenation must give back the input"
        );
        for (i, p) in pieces.iter().enumerate() {
            assert!(!p.is_empty(), "no empty piece");
            let body = p.strip_suffix('\n').unwrap_or(p);
            assert!(body.len() <= max, "piece {i} has {} bytes", body.len());
            assert!(!body.contains('\n'), "a `\\n` only ends a piece");
            let last = i + 1 == pieces.len();
            if !p.ends_with('\n') && !last {
                // A piece without `\n` that is not the last is a cut of a long line: full,
                // up to at most 3 bytes given back to stay on a character boundary.
                assert!(body.len() + 3 >= max, "short cut piece {i}: {}", body.len());
            }
        }
    }

    #[test]
    fn empty_input_gives_nothing() {
        assert!(split(b"", 1, MAX_LINE).is_empty());
        let mut s = LineSplitter::new();
        assert!(s.push(b"").is_empty());
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn lines_keep_their_newline() {
        assert_eq!(
            split(b"a\nbb\n\nccc\n", 100, MAX_LINE),
            ["a\n", "bb\n", "\n", "ccc\n"]
        );
    }

    #[test]
    fn last_line_without_newline_waits_for_finish() {
        let mut s = LineSplitter::new();
        assert_eq!(s.push(b"one\ntw"), ["one\n"]);
        assert!(s.push(b"o").is_empty());
        assert_eq!(s.finish().as_deref(), Some("two"));
    }

    #[test]
    fn crlf_is_kept_as_written() {
        let input = "dos\r\nline\r\n\r\nend\r";
        let pieces = split(input.as_bytes(), 3, MAX_LINE);
        assert_eq!(pieces, ["dos\r\n", "line\r\n", "\r\n", "end\r"]);
    }

    #[test]
    fn every_chunking_gives_the_same_lines() {
        let input = "héllo wörld\n€uro\n🦀 crab 🦀\nlast";
        let expected = split(input.as_bytes(), input.len(), MAX_LINE);
        assert_eq!(
            expected,
            ["héllo wörld\n", "€uro\n", "🦀 crab 🦀\n", "last"]
        );
        for chunk in 1..=input.len() {
            assert_eq!(
                split(input.as_bytes(), chunk, MAX_LINE),
                expected,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn chunk_boundary_inside_a_multibyte_character() {
        let crab = "🦀".as_bytes(); // 4 bytes
        let mut s = LineSplitter::new();
        assert!(s.push(&crab[..1]).is_empty());
        assert!(s.push(&crab[1..3]).is_empty());
        assert_eq!(s.push(&[crab[3], b'\n']), ["🦀\n"]);
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn long_line_is_cut_into_pieces_only_the_last_with_newline() {
        let input = format!("{}\nshort\n", "x".repeat(25));
        let pieces = split(input.as_bytes(), 7, 10);
        assert_eq!(
            pieces,
            ["xxxxxxxxxx", "xxxxxxxxxx", "xxxxx\n", "short\n"],
            "{pieces:?}"
        );
    }

    #[test]
    fn a_line_of_exactly_max_bytes_is_not_cut() {
        let input = format!("{}\n", "y".repeat(10));
        assert_eq!(split(input.as_bytes(), 1, 10), std::slice::from_ref(&input));
        // One more byte and it is cut, and the `\n` goes with the rest.
        let input = format!("{}\n", "y".repeat(11));
        assert_eq!(split(input.as_bytes(), 4, 10), ["yyyyyyyyyy", "y\n"]);
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        // 3-byte characters never line up with a 10-byte maximum.
        let input = format!("{}\n", "€".repeat(20));
        for chunk in [1, 2, 5, 64] {
            let pieces = split(input.as_bytes(), chunk, 10);
            check_invariants(&input, &pieces, 10);
            assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
            assert_eq!(pieces[0], "€€€", "9 bytes: the 4th € would end at 12");
        }
        let input = "🦀".repeat(30);
        for max in 4..=13 {
            let pieces = split(input.as_bytes(), 3, max);
            check_invariants(&input, &pieces, max);
            assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')));
        }
    }

    #[test]
    fn one_mebibyte_line() {
        let line = "abcdefghijklmnopqrstuvwxyz0123456789-é€🦀".repeat(1 << 15);
        let input = format!("{line}\nafter\n");
        assert!(input.len() > 1 << 20);
        for chunk in [4096, 65536 + 3, 1 << 21] {
            let pieces = split(input.as_bytes(), chunk, MAX_LINE);
            check_invariants(&input, &pieces, MAX_LINE);
            assert!(pieces.len() >= 16);
            assert_eq!(pieces.last().map(String::as_str), Some("after\n"));
            let with_newline = pieces.iter().filter(|p| p.ends_with('\n')).count();
            assert_eq!(
                with_newline, 2,
                "only the last piece of the long line has `\\n`"
            );
        }
    }

    #[test]
    fn many_short_lines_in_one_chunk() {
        let input: String = (0..100_000).map(|i| format!("line {i}\n")).collect();
        let pieces = split(input.as_bytes(), input.len(), MAX_LINE);
        assert_eq!(pieces.len(), 100_000);
        assert_eq!(pieces[99_999], "line 99999\n");
        check_invariants(&input, &pieces, MAX_LINE);
    }

    #[test]
    fn invalid_utf8_is_decoded_lossily() {
        let pieces = split(b"ok\n\xff\xfe bad\n\xe2\x82", 2, MAX_LINE);
        assert_eq!(pieces, ["ok\n", "\u{FFFD}\u{FFFD} bad\n", "\u{FFFD}"]);
        // A long line of invalid bytes is still cut at the maximum, never stuck.
        let pieces = split(&[0x80; 25], 25, 10);
        assert_eq!(pieces.len(), 3);
        assert!(pieces.iter().all(|p| p.chars().all(|c| c == '\u{FFFD}')));
    }

    #[test]
    fn measured_pieces_count_input_bytes_and_restart_at_any_piece() {
        let input = b"ok\n\xff\xfe bad\nlonger line here\ntail";
        let mut s = LineSplitter::with_max(6);
        let mut pieces = Vec::new();
        for c in input.chunks(5) {
            pieces.extend(s.push_measured(c));
        }
        assert_eq!(s.pending_len(), 4, "\"tail\" waits for more");
        let lens: usize = pieces.iter().map(|(_, n)| n).sum();
        assert_eq!(lens + s.pending_len(), input.len());
        assert_eq!(pieces[1], ("\u{FFFD}\u{FFFD} bad\n".to_string(), 7));
        // Splitting again from any piece's start gives the same pieces from there on.
        let mut offset = 0;
        for (i, (_, n)) in pieces.iter().enumerate() {
            let again = split(&input[offset..], 3, 6);
            let expected: Vec<String> = pieces[i..].iter().map(|(t, _)| t.clone()).collect();
            assert_eq!(&again[..expected.len()], &expected[..], "from piece {i}");
            offset += n;
        }
    }

    #[test]
    fn tiny_maximum_is_raised_to_fit_a_character() {
        let pieces = split("🦀🦀".as_bytes(), 1, 1);
        assert_eq!(pieces, ["🦀", "🦀"]);
    }

    #[test]
    fn pseudo_random_inputs_and_chunkings_round_trip() {
        // A small deterministic generator: no dependency, reproducible failures.
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = ["a", "b", "\n", "\r\n", "é", "€", "🦀", " "];
        for round in 0..200 {
            let len = (next() % 300) as usize;
            let input: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let max = 4 + (next() % 20) as usize;
            let chunk = 1 + (next() % 17) as usize;
            let pieces = split(input.as_bytes(), chunk, max);
            check_invariants(&input, &pieces, max);
            assert_eq!(
                pieces,
                split(input.as_bytes(), input.len().max(1), max),
                "round {round}: chunking changed the pieces"
            );
        }
    }
}
