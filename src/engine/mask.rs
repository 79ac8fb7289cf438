//! Secret masking: every secret value, and its base64 and URL-encoded forms, replaced in a
//! line before it is stored or streamed.

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

/// What a masked value becomes.
pub const MASK: &str = "********";

/// Replaces secret values in text; built once per workflow. Every value is masked, however
/// short: a one-character secret blots that character out of the log, which is the price of
/// never showing it.
#[derive(Debug, Clone)]
pub struct Masker {
    matcher: Option<AhoCorasick>,
    /// The longest pattern, in bytes (0: nothing to mask).
    longest: usize,
    /// The patterns again, for the (theoretical) case the automaton cannot be built: masking
    /// then falls back on plain replacement rather than showing anything.
    fallback: Vec<String>,
}

fn url_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Masker {
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Masker {
        let mut patterns: Vec<String> = Vec::new();
        for value in values {
            // A multi-line secret (a key file) is printed line by line.
            let pieces = std::iter::once(value).chain(value.lines().filter(|l| l != &value));
            for piece in pieces {
                let piece = piece.trim_end_matches('\r');
                if piece.is_empty() {
                    continue;
                }
                patterns.push(piece.to_string());
                for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
                    patterns.push(engine.encode(piece));
                }
                patterns.push(url_encode(piece));
                patterns.push(url_encode(piece).replace("%20", "+"));
            }
        }
        patterns.sort();
        patterns.dedup();
        let longest = patterns.iter().map(String::len).max().unwrap_or(0);
        let matcher = if patterns.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .ok()
        };
        let fallback = if matcher.is_none() {
            // Longest first, so that a value is replaced before its own parts.
            patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
            patterns
        } else {
            Vec::new()
        };
        Masker {
            matcher,
            longest,
            fallback,
        }
    }

    /// Whether there is anything to mask.
    pub fn is_empty(&self) -> bool {
        self.longest == 0
    }

    /// Where to cut `text`, a piece of a line that goes on, so that no secret is split: the
    /// part before the cut can be masked and stored, and the rest must wait for the next piece.
    /// Everything after the cut is shorter than the longest secret, or part of a match that
    /// runs to the end.
    pub fn safe_cut(&self, text: &str) -> usize {
        if self.longest == 0 {
            return text.len();
        }
        let mut cut = text.len().saturating_sub(self.longest - 1);
        let straddling = |start: usize, end: usize, cut: usize| start < cut && cut < end;
        match &self.matcher {
            Some(m) => {
                for found in m.find_iter(text) {
                    if straddling(found.start(), found.end(), cut) {
                        cut = found.end();
                    }
                }
            }
            None => {
                for p in &self.fallback {
                    for (start, _) in text.match_indices(p.as_str()) {
                        if straddling(start, start + p.len(), cut) {
                            cut = cut.max(start + p.len());
                        }
                    }
                }
            }
        }
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        cut
    }

    pub fn mask(&self, text: String) -> String {
        match &self.matcher {
            Some(m) if m.is_match(&text) => m.replace_all(&text, &vec![MASK; m.patterns_len()]),
            Some(_) => text,
            None => self.fallback.iter().fold(text, |text, p| {
                if text.contains(p.as_str()) {
                    text.replace(p.as_str(), MASK)
                } else {
                    text
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_never_splits_a_secret() {
        let m = Masker::new(["abcdef"]);
        // The longest pattern is the base64 form, 8 bytes: everything but the last 7 bytes
        // (a secret may start there) can go.
        assert_eq!(m.safe_cut("0123456789"), 10 - 7);
        // A secret straddling that point moves the cut behind it.
        assert_eq!(m.safe_cut("0abcdef123456"), 7);
        // Never inside a character.
        let t = "ééééé";
        assert!(t.is_char_boundary(m.safe_cut(t)));
        assert_eq!(Masker::new(std::iter::empty::<&str>()).safe_cut("abc"), 3);
    }

    #[test]
    fn masks_plain_base64_and_url_encoded_forms() {
        let m = Masker::new(["p@ss word!"]);
        assert_eq!(
            m.mask("login p@ss word! ok\n".into()),
            "login ******** ok\n"
        );
        let b64 = STANDARD.encode("p@ss word!");
        assert_eq!(m.mask(format!("auth {b64}\n")), "auth ********\n");
        assert_eq!(m.mask("u=p%40ss%20word%21\n".into()), "u=********\n");
        assert_eq!(m.mask("u=p%40ss+word%21\n".into()), "u=********\n");
        assert_eq!(m.mask("nothing here\n".into()), "nothing here\n");
    }

    #[test]
    fn masks_each_line_of_a_multi_line_secret() {
        let m = Masker::new(["-----BEGIN KEY-----\nabcdefgh\n-----END KEY-----"]);
        assert_eq!(m.mask("abcdefgh\n".into()), "********\n");
    }

    #[test]
    fn short_values_are_masked_too() {
        let m = Masker::new(["7", ""]);
        assert_eq!(m.mask("1 7 3\n".into()), "1 ******** 3\n");
        let none = Masker::new([""]);
        assert_eq!(none.mask("1 7 3\n".into()), "1 7 3\n");
    }
}
