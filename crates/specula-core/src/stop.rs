//! Stop criteria and finish reasons.

use serde::{Deserialize, Serialize};

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-sequence token (not included in the output).
    Eos,
    /// The text reached one of the stop strings (the stop string is not included).
    StopString,
    /// `max_new_tokens` tokens were produced.
    MaxTokens,
    /// The model's context window is full.
    ContextFull,
}

impl std::fmt::Display for FinishReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FinishReason::Eos => "eos",
            FinishReason::StopString => "stop_string",
            FinishReason::MaxTokens => "max_tokens",
            FinishReason::ContextFull => "context_full",
        })
    }
}

/// Finds stop strings in growing text and tells how much text is safe to stream.
///
/// Text that could be the start of a stop string is held back until it is known not to be one, so
/// a streamed stop string never reaches the user.
///
/// ```
/// use specula_core::StopStringMatcher;
/// let m = StopStringMatcher::new(vec!["\n\n".into(), "END".into()]);
/// assert_eq!(m.find("abc\n\ndef"), Some(3));
/// assert_eq!(m.safe_len("abcEN"), 3); // "EN" may become "END"
/// assert_eq!(m.safe_len("abcEX"), 5);
/// ```
#[derive(Debug, Clone, Default)]
pub struct StopStringMatcher {
    stops: Vec<String>,
}

impl StopStringMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        StopStringMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
        }
    }

    /// True if there are no stop strings.
    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    /// Byte offset of the earliest stop-string occurrence in `text`.
    pub fn find(&self, text: &str) -> Option<usize> {
        self.stops
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
    }

    /// Length of the prefix of `text` that cannot become part of a stop string, whatever follows.
    pub fn safe_len(&self, text: &str) -> usize {
        let mut safe = text.len();
        for stop in &self.stops {
            // Longest proper prefix of `stop` that is a suffix of `text`.
            let max = stop.len().saturating_sub(1).min(text.len());
            for k in (1..=max).rev() {
                if stop.is_char_boundary(k)
                    && text.is_char_boundary(text.len() - k)
                    && text.ends_with(&stop[..k])
                {
                    safe = safe.min(text.len() - k);
                    break;
                }
            }
        }
        safe
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_earliest() {
        let m = StopStringMatcher::new(vec!["b".into(), "a".into()]);
        assert_eq!(m.find("xxbxa"), Some(2));
        assert_eq!(m.find("xx"), None);
        assert!(StopStringMatcher::new(vec![String::new()]).is_empty());
    }

    #[test]
    fn unicode_prefixes() {
        let m = StopStringMatcher::new(vec!["é!".into()]);
        assert_eq!(m.safe_len("abé"), 2);
        assert_eq!(m.safe_len("abé?"), 5);
    }

    proptest! {
        // Streaming text in any chunking and holding back `safe_len` never emits a stop string.
        #[test]
        fn streaming_never_leaks_a_stop(text in "[ab\n]{0,40}", cut in 0usize..40) {
            let m = StopStringMatcher::new(vec!["ab\n".into(), "bb".into()]);
            let stop_at = m.find(&text);
            let partial = &text[..cut.min(text.len())];
            let emitted = match m.find(partial) {
                Some(i) => &partial[..i],
                None => &partial[..m.safe_len(partial)],
            };
            let final_text = match stop_at { Some(i) => &text[..i], None => &text[..] };
            prop_assert!(final_text.starts_with(emitted));
        }
    }
}
