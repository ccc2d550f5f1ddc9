//! Pattern redaction: payment card numbers (Luhn-checked), e-mail addresses and user regular
//! expressions, replaced wherever they occur in a text.

use std::ops::Range;

use regex::{Regex, RegexBuilder};

use super::REDACTED;

/// Longest compiled form of one user expression (bytes), so a configured pattern cannot make
/// the sensor use unbounded memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// E-mail addresses: a local part, `@`, and a domain of at least two labels.
const EMAIL: &str = r"(?i)[a-z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+";

/// Compiles a user expression with the sensor's limits.
pub(super) fn build_regex(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| e.to_string())
}

/// The patterns one service redacts.
#[derive(Clone, Debug, Default)]
pub struct Patterns {
    cards: bool,
    email: Option<Regex>,
    user: Vec<Regex>,
}

impl Patterns {
    /// Card numbers and e-mail addresses when asked for, and the given expressions.
    pub fn new(cards: bool, emails: bool, user: &[String]) -> Result<Self, String> {
        let email = if emails {
            Some(build_regex(EMAIL)?)
        } else {
            None
        };
        let user = user
            .iter()
            .map(|p| build_regex(p).map_err(|e| format!("pattern {p:?}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Patterns { cards, email, user })
    }

    /// Whether no pattern is configured.
    pub fn is_empty(&self) -> bool {
        !self.cards && self.email.is_none() && self.user.is_empty()
    }

    /// `text` with every match replaced by `[REDACTED]` and the number of replacements, or
    /// `None` when nothing matched.
    pub fn redact(&self, text: &str) -> Option<(String, u64)> {
        let mut current: Option<String> = None;
        let mut count = 0;
        if self.cards
            && let Some((out, n)) = redact_cards(current.as_deref().unwrap_or(text))
        {
            current = Some(out);
            count += n;
        }
        for re in self.email.iter().chain(self.user.iter()) {
            let input = current.as_deref().unwrap_or(text);
            let n = re
                .find_iter(input)
                .filter(|m| !m.is_empty() && m.as_str() != REDACTED)
                .count() as u64;
            if n > 0 {
                current = Some(re.replace_all(input, REDACTED).into_owned());
                count += n;
            }
        }
        current.map(|out| (out, count))
    }

    /// Byte ranges of `text` that some pattern matches (each pattern searched in the original
    /// text; ranges may overlap), in no particular order.
    pub fn spans(&self, text: &str) -> Vec<Range<usize>> {
        let mut out: Vec<Range<usize>> = Vec::new();
        if self.cards {
            out.extend(card_spans(text).into_iter().map(|(start, end)| start..end));
        }
        for re in self.email.iter().chain(self.user.iter()) {
            out.extend(
                re.find_iter(text)
                    .filter(|m| !m.is_empty())
                    .map(|m| m.range()),
            );
        }
        out
    }

    /// Whether some pattern matches somewhere in `text`.
    pub fn matches(&self, text: &str) -> bool {
        (self.cards && !card_spans(text).is_empty())
            || self
                .email
                .iter()
                .chain(self.user.iter())
                .any(|re| re.find_iter(text).any(|m| !m.is_empty()))
    }
}

/// Whether `digits` (ASCII digits) pass the Luhn check.
pub fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d.wrapping_sub(b'0'));
        if v > 9 {
            return false;
        }
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    !digits.is_empty() && sum.is_multiple_of(10)
}

/// Replaces card numbers (as found by [`card_spans`]) by `[REDACTED]`; returns the text and the
/// number of replacements, or `None` when there was none.
pub fn redact_cards(text: &str) -> Option<(String, u64)> {
    let spans = card_spans(text);
    if spans.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for &(start, end) in &spans {
        out.push_str(&text[last..start]);
        out.push_str(REDACTED);
        last = end;
    }
    out.push_str(&text[last..]);
    Some((out, spans.len() as u64))
}

/// Byte ranges of card numbers in `text`, in order: runs of 13 to 19 digits, optionally
/// grouped by single spaces or dashes, starting with 2 to 6 (the issuer ranges of the card
/// networks) and passing the Luhn check. Within a longer grouped run (two numbers side by
/// side), every window of whole groups is tried, longest valid first.
pub fn card_spans(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let mut groups: Vec<(usize, usize)> = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while j < bytes.len() && bytes[j].is_ascii_digit() {
                j += 1;
            }
            groups.push((start, j));
            if j + 1 < bytes.len()
                && matches!(bytes[j], b' ' | b'-')
                && bytes[j + 1].is_ascii_digit()
            {
                j += 1;
                continue;
            }
            break;
        }
        let mut g = 0;
        while g < groups.len() {
            let mut digits: Vec<u8> = Vec::with_capacity(19);
            let mut found = None;
            for (h, &(start, end)) in groups.iter().enumerate().skip(g) {
                digits.extend_from_slice(&bytes[start..end]);
                if digits.len() > 19 {
                    break;
                }
                if digits.len() >= 13 && (b'2'..=b'6').contains(&digits[0]) && luhn_valid(&digits) {
                    found = Some(h);
                }
            }
            match found {
                Some(h) => {
                    spans.push((groups[g].0, groups[h].1));
                    g = h + 1;
                }
                None => g += 1,
            }
        }
        i = j;
    }
    spans
}
