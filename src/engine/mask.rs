//! Secret masking: every secret value, and the forms a step is likely to print it in, replaced
//! in a line before it is stored or streamed.
//!
//! The forms of each value (and of each line of a multi-line value):
//! - the value itself;
//! - base64 of the value alone, standard and URL-safe, with and without padding;
//! - the value inside base64 of a longer text (`printf 'user:%s' "$S" | base64`, HTTP Basic):
//!   for each of the three places the value can start relative to base64's 3-byte groups, the
//!   characters that depend on the value's bytes only (the first and last character of the
//!   value's stretch also carry bits of its neighbours, so they stay, and show at most 4 bits of
//!   the value each). Such a core is masked only when it is at least [`MIN_BASE64_CORE`]
//!   characters long, which it is in every alignment for values of 5 bytes or more: a shorter
//!   one turns up in unrelated base64 and would blot it out, for little to hide;
//! - percent-encoding of every byte but the unreserved `A-Z a-z 0-9 - _ . ~`, with upper- and
//!   lower-case hex, a space as `%20` or `+`;
//! - the JSON-escaped form, as JSON writers print a string: `"` `\` and control characters
//!   escaped (`\n`, `\t`, …, else `\u00xx`), optionally `/` as `\/`, non-ASCII as `\uxxxx`
//!   (Python's default, and PHP's with `\/`), `<` `>` `&` as `\u003c`… (Go's), and upper-case
//!   hex (Jackson's).

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

/// What a masked value becomes.
pub const MASK: &str = "********";

/// The shortest base64 core of a value inside a longer text that is masked, in characters:
/// 36 bits, which unrelated text matches by chance too rarely to matter.
pub const MIN_BASE64_CORE: usize = 6;

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

/// Percent-encoding of every byte but the unreserved ones.
fn url_encode(value: &str, upper: bool) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else if upper {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

/// The base64 characters that depend on `value`'s bytes only, when it follows 0, 1 or 2 other
/// bytes of a 3-byte group: character `j` of the encoding holds bits `6j..6j+6`, and the value
/// holds bits `8k..8(k+n)`. Standard and URL-safe alphabets; cores shorter than
/// [`MIN_BASE64_CORE`] are left out.
fn base64_cores(value: &[u8]) -> Vec<String> {
    let mut cores = Vec::new();
    for k in 0..3 {
        let mut shifted = vec![0u8; k];
        shifted.extend_from_slice(value);
        let encoded = STANDARD_NO_PAD.encode(&shifted);
        let start = (8 * k).div_ceil(6);
        let end = 8 * (k + value.len()) / 6;
        if end >= start + MIN_BASE64_CORE {
            let core = &encoded[start..end];
            cores.push(core.replace('+', "-").replace('/', "_"));
            cores.push(core.to_string());
        }
    }
    cores
}

/// How a JSON writer escapes a string; every writer escapes `"`, `\` and control characters.
#[derive(Clone, Copy)]
struct JsonStyle {
    /// `/` as `\/`.
    slash: bool,
    /// Every non-ASCII character as `\uxxxx` (UTF-16 units).
    ascii: bool,
    /// `<`, `>`, `&`, U+2028 and U+2029 as `\uxxxx`.
    html: bool,
    /// `\u00XX` rather than `\u00xx`.
    upper: bool,
}

/// The writers' styles: serde_json and JavaScript, with `\/`, Python, PHP, Go, Jackson.
const JSON_STYLES: [JsonStyle; 6] = [
    JsonStyle {
        slash: false,
        ascii: false,
        html: false,
        upper: false,
    },
    JsonStyle {
        slash: true,
        ascii: false,
        html: false,
        upper: false,
    },
    JsonStyle {
        slash: false,
        ascii: true,
        html: false,
        upper: false,
    },
    JsonStyle {
        slash: true,
        ascii: true,
        html: false,
        upper: false,
    },
    JsonStyle {
        slash: false,
        ascii: false,
        html: true,
        upper: false,
    },
    JsonStyle {
        slash: false,
        ascii: false,
        html: false,
        upper: true,
    },
];

/// `value` as the inside of a JSON string written in `style`.
fn json_escape(value: &str, style: JsonStyle) -> String {
    let unit = |out: &mut String, u: u16| {
        if style.upper {
            out.push_str(&format!("\\u{u:04X}"));
        } else {
            out.push_str(&format!("\\u{u:04x}"));
        }
    };
    let mut out = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '/' if style.slash => out.push_str("\\/"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' if style.html => unit(&mut out, c as u16),
            c if (c as u32) < 0x20 => unit(&mut out, c as u16),
            c if style.ascii && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    unit(&mut out, *u);
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Every form of `piece` that is masked.
fn forms(piece: &str) -> Vec<String> {
    let mut forms = vec![piece.to_string()];
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        forms.push(engine.encode(piece));
    }
    forms.extend(base64_cores(piece.as_bytes()));
    for upper in [true, false] {
        let encoded = url_encode(piece, upper);
        forms.push(encoded.replace("%20", "+"));
        forms.push(encoded);
    }
    forms.extend(JSON_STYLES.iter().map(|s| json_escape(piece, *s)));
    forms
}

/// Up to this many bytes of patterns (a few ordinary secrets in all their forms) the automaton
/// may be a DFA, the fastest to search; past it, a contiguous NFA, whose build time grows
/// linearly with the patterns, where a DFA's took minutes for one 60 KB secret.
const DFA_PATTERN_BYTES: usize = 16 * 1024;

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
                patterns.extend(forms(piece));
            }
        }
        patterns.sort();
        patterns.dedup();
        let longest = patterns.iter().map(String::len).max().unwrap_or(0);
        let matcher = if patterns.is_empty() {
            None
        } else {
            let mut builder = AhoCorasick::builder();
            builder.match_kind(MatchKind::LeftmostLongest);
            if patterns.iter().map(String::len).sum::<usize>() > DFA_PATTERN_BYTES {
                builder.kind(Some(AhoCorasickKind::ContiguousNFA));
            }
            builder.build(&patterns).ok()
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
    fn a_large_secret_is_masked_by_an_automaton_built_in_linear_time() {
        // 64 KiB of a two-letter alphabet: as a DFA, its forms took minutes to build.
        let secret = "ab".repeat(32 * 1024);
        let m = Masker::new([secret.as_str()]);
        let kind = m.matcher.as_ref().map(AhoCorasick::kind);
        assert_eq!(kind, Some(AhoCorasickKind::ContiguousNFA));
        assert_eq!(m.mask(format!("x{secret}y")), format!("x{MASK}y"));
        // An ordinary secret keeps the fastest automaton.
        let small = Masker::new(["hunter2-secret"]);
        assert_eq!(
            small.matcher.as_ref().map(AhoCorasick::kind),
            Some(AhoCorasickKind::DFA)
        );
    }

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

    /// HTTP Basic: `printf 'user:%s' "$S" | base64`, in the middle of a line, for every
    /// alignment of the secret.
    #[test]
    fn masks_a_secret_inside_base64_of_a_longer_text() {
        let secret = "p@ss w0rd!";
        let m = Masker::new([secret]);
        for prefix in ["", "u:", "us:", "user:", "admin:"] {
            for engine in [&STANDARD, &URL_SAFE_NO_PAD] {
                let encoded = engine.encode(format!("{prefix}{secret}"));
                let masked = m.mask(format!("Authorization: Basic {encoded} sent\n"));
                assert!(masked.contains(MASK), "{prefix:?}: {masked}");
                assert!(masked.starts_with("Authorization: Basic "), "{masked}");
                assert!(masked.ends_with(" sent\n"), "{masked}");
                let core = core_in(&encoded, prefix.len(), secret.len());
                assert!(core.len() >= MIN_BASE64_CORE);
                assert!(!masked.contains(&core), "{prefix:?}: {masked}");
            }
        }
        // The prefix's own characters stay.
        let masked = m.mask(STANDARD.encode(format!("user-name-here:{secret}")));
        assert!(masked.starts_with("dXNlci1uYW1lLWhlcmU6"), "{masked}");
    }

    /// Characters `j` of `encoded` with `6j >= 8p` and `6(j+1) <= 8(p+n)`: those that depend
    /// only on the `n` bytes at offset `p` of what was encoded.
    fn core_in(encoded: &str, p: usize, n: usize) -> String {
        encoded[(8 * p).div_ceil(6)..8 * (p + n) / 6].to_string()
    }

    /// A tiny xorshift generator: the same cases on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }

        fn text(&mut self, len: usize) -> String {
            const CHARS: &[char] = &[
                'a', 'Z', '0', '9', ' ', ':', '/', '+', '"', '\\', '~', 'é', '€', '🦀', '\t',
            ];
            (0..len).map(|_| CHARS[self.next(CHARS.len())]).collect()
        }
    }

    #[test]
    fn base64_of_any_text_around_a_secret_never_shows_its_core() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..500 {
            let len = 5 + rng.next(20);
            let secret = rng.text(len);
            let len = rng.next(12);
            let prefix = rng.text(len);
            let len = rng.next(12);
            let suffix = rng.text(len);
            let m = Masker::new([secret.as_str()]);
            let whole = format!("{prefix}{secret}{suffix}");
            for engine in [&STANDARD, &URL_SAFE, &STANDARD_NO_PAD] {
                let encoded = engine.encode(&whole);
                let core = core_in(&encoded, prefix.len(), secret.len());
                assert!(core.len() >= MIN_BASE64_CORE, "{secret:?}");
                let masked = m.mask(format!("x {encoded} y"));
                assert!(
                    !masked.contains(&core),
                    "{secret:?} after {prefix:?}: {core} in {masked}"
                );
            }
        }
    }

    #[test]
    fn short_values_leave_unrelated_base64_alone() {
        // "abcd" alone is masked in its full base64 form, but its cores are too short to be
        // told from other text: base64 of "abce" keeps the four characters it shares.
        let m = Masker::new(["abcd"]);
        assert_eq!(m.mask("YWJjZA==".into()), MASK);
        assert_eq!(m.mask("x YWJjZQ== y".into()), "x YWJjZQ== y");
        // From 5 bytes on, every alignment is masked.
        let m = Masker::new(["abcde"]);
        assert_eq!(m.mask(STANDARD.encode("abcdef")), "********Vm");
        assert_eq!(base64_cores(b"abcde").len(), 6);
        assert_eq!(base64_cores(b"abcd").len(), 0);
    }

    #[test]
    fn masks_json_escaped_forms() {
        let secret = "pa\"ss\\wo/rd\n\t\u{1}é<&>";
        let m = Masker::new([secret]);
        let serde = serde_json::to_string(secret).unwrap();
        let serde = &serde[1..serde.len() - 1];
        for escaped in [
            serde,
            r#"pa\"ss\\wo\/rd\n\t\u0001é<&>"#,
            r#"pa\"ss\\wo/rd\n\t\u0001\u00e9<&>"#,
            r#"pa\"ss\\wo\/rd\n\t\u0001\u00e9<&>"#,
            r#"pa\"ss\\wo/rd\n\t\u0001é\u003c\u0026\u003e"#,
            r#"pa\"ss\\wo/rd\n\t\u0001é<&>"#,
        ] {
            let line = format!("{{\"token\":\"{escaped}\",\"n\":1}}\n");
            assert_eq!(
                m.mask(line),
                "{\"token\":\"********\",\"n\":1}\n",
                "{escaped}"
            );
        }
        let m = Masker::new(["esc\u{1b}"]);
        assert_eq!(m.mask(r#"["esc\u001B"]"#.into()), r#"["********"]"#);
        // Outside the basic plane: a surrogate pair.
        let m = Masker::new(["crab🦀crab"]);
        assert_eq!(m.mask(r#"x crab\ud83e\udd80crab y"#.into()), "x ******** y");
    }

    #[test]
    fn masks_percent_encoding_in_either_case() {
        let m = Masker::new(["a/b:c d"]);
        for encoded in [
            "a%2Fb%3Ac%20d",
            "a%2fb%3ac%20d",
            "a%2Fb%3Ac+d",
            "a%2fb%3ac+d",
        ] {
            assert_eq!(
                m.mask(format!("?token={encoded}&x=1")),
                "?token=********&x=1"
            );
        }
    }

    #[test]
    fn short_values_are_masked_too() {
        let m = Masker::new(["7", ""]);
        assert_eq!(m.mask("1 7 3\n".into()), "1 ******** 3\n");
        let none = Masker::new([""]);
        assert_eq!(none.mask("1 7 3\n".into()), "1 7 3\n");
    }
}
