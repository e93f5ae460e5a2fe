//! What a delegation saved Claude, in tokens of its own budget.
//!
//! The comparison is with delegating the same task by pasting: Claude
//! writing each file's content into the tool call (output tokens, about five
//! times the price of input), then reading the whole answer back and, when
//! it must end up in a file, writing it out again with its own Write tool.
//! With `files`, Claude writes paths instead of contents; with `write_to`,
//! it reads a short summary instead of the answer and writes nothing.
//!
//! ```text
//! saved = 5 x (file tokens - path tokens)                       files given
//!       + (inline result tokens - result tokens)                  write_to given
//!       + 5 x answer tokens                                       write_to given
//! ```
//!
//! in input-token equivalents (an output token counts 5), with Claude's
//! tokens estimated at 3.5 characters each. The estimate is deliberately
//! narrow: it leaves out the Read Claude would have spent to see a file
//! before pasting it, and any retry.

/// An output token costs Claude about this many input tokens.
pub(crate) const OUTPUT_WEIGHT: i64 = 5;

/// Characters per Claude token, for estimates (code and English prose average 3-4).
const CHARS_PER_TOKEN: f64 = 3.5;

/// Claude tokens in a text of `chars` characters.
pub(crate) fn tokens(chars: usize) -> i64 {
    (chars as f64 / CHARS_PER_TOKEN).round() as i64
}

/// The measurements of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Measured {
    /// Characters of file content sent to the pool.
    pub(crate) file_chars: usize,
    /// Characters Claude wrote to name those files (the `files` argument).
    pub(crate) path_chars: usize,
    /// Characters of the answer.
    pub(crate) answer_chars: usize,
    /// When the answer went to a file: characters of the result Claude read,
    /// and of the result it would have read with the answer inline.
    pub(crate) written: Option<Written>,
}

/// The two results compared when an answer went to a file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Written {
    /// Characters of the result as read (where it went, a preview).
    pub(crate) result_chars: usize,
    /// Characters of the same result with the whole answer in it.
    pub(crate) inline_chars: usize,
}

/// Claude tokens saved (input-token equivalents); never below zero.
pub(crate) fn saved(m: Measured) -> i64 {
    let mut s = 0;
    if m.file_chars > 0 {
        s += OUTPUT_WEIGHT * (tokens(m.file_chars) - tokens(m.path_chars));
    }
    if let Some(w) = m.written {
        s += tokens(w.inline_chars) - tokens(w.result_chars)
            + OUTPUT_WEIGHT * tokens(m.answer_chars);
    }
    s.max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_part_of_the_estimate() {
        let cases = [
            // A prompt-only call saves nothing measurable.
            (Measured::default(), 0),
            // 35,000 characters of files named in 35: 5 x (10,000 - 10).
            (
                Measured {
                    file_chars: 35_000,
                    path_chars: 35,
                    ..Default::default()
                },
                49_950,
            ),
            // An answer of 7,000 characters written to a file, read as 700
            // rather than as 7,700 with the answer inline.
            (
                Measured {
                    answer_chars: 7_000,
                    written: Some(Written {
                        result_chars: 700,
                        inline_chars: 7_700,
                    }),
                    ..Default::default()
                },
                2_200 - 200 + 10_000,
            ),
            // Never negative: a tiny file named by a long glob.
            (
                Measured {
                    file_chars: 10,
                    path_chars: 70,
                    ..Default::default()
                },
                0,
            ),
        ];
        for (m, want) in cases {
            assert_eq!(saved(m), want, "{m:?}");
        }
    }
}
