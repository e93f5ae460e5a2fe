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
//!       + (answer tokens - result tokens) + 5 x answer tokens     write_to given
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
    /// Characters of the result Claude read, when the answer went to a file.
    pub(crate) written_result_chars: Option<usize>,
}

/// Claude tokens saved (input-token equivalents); never below zero.
pub(crate) fn saved(m: Measured) -> i64 {
    let mut s = 0;
    if m.file_chars > 0 {
        s += OUTPUT_WEIGHT * (tokens(m.file_chars) - tokens(m.path_chars));
    }
    if let Some(result) = m.written_result_chars {
        let answer = tokens(m.answer_chars);
        s += answer - tokens(result) + OUTPUT_WEIGHT * answer;
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
            // An answer of 7,000 characters written to a file, read as 700.
            (
                Measured {
                    answer_chars: 7_000,
                    written_result_chars: Some(700),
                    ..Default::default()
                },
                2_000 - 200 + 10_000,
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
