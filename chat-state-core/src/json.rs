//! Decoding JSON that other clients wrote.
//!
//! JavaScript strings are UTF-16, and `JSON.stringify` writes a string cut in the middle of a
//! surrogate pair (`"🤖".slice(0, 1)`, a message truncated to a length limit) as a lone
//! surrogate escape: `"\ud83e"`. That text matches JSON's grammar but is not Unicode, and
//! serde_json refuses it, so a TypeScript bot sharing a store could leave data behind that a
//! Rust bot can never read. [`from_json_slice`] reads it instead, with every lone surrogate
//! replaced by U+FFFD REPLACEMENT CHARACTER — what `TextDecoder` and `String::from_utf16_lossy`
//! do with the same UTF-16.
//!
//! Every backend decodes stored JSON through it (the typed helpers of
//! [`StateExt`](crate::StateExt), queue entries), so the rule holds everywhere.

use serde::de::DeserializeOwned;

/// Decodes `bytes` as JSON into `T`; lone surrogate escapes (`\ud800`–`\udfff` not part of a
/// pair) decode as U+FFFD. Valid JSON decodes exactly as `serde_json::from_slice` would, and
/// any other malformation is serde_json's error.
pub fn from_json_slice<T: DeserializeOwned>(bytes: &[u8]) -> serde_json::Result<T> {
    // One UTF-8 check of the whole value, then a parser that trusts it: `from_slice` checks
    // every string on its own, which cost more than the rest of the parse.
    let Ok(text) = std::str::from_utf8(bytes) else {
        return serde_json::from_slice(bytes);
    };
    match serde_json::from_str(text) {
        Ok(value) => Ok(value),
        Err(first) => match replace_lone_surrogates(text) {
            Some(repaired) => serde_json::from_str(&repaired).map_err(|_| first),
            None => Err(first),
        },
    }
}

/// The four hex digits at `at`, as a UTF-16 code unit.
fn code_unit(bytes: &[u8], at: usize) -> Option<u16> {
    let digits = std::str::from_utf8(bytes.get(at..at + 4)?).ok()?;
    u16::from_str_radix(digits, 16).ok()
}

fn is_high(unit: u16) -> bool {
    (0xD800..0xDC00).contains(&unit)
}

fn is_low(unit: u16) -> bool {
    (0xDC00..0xE000).contains(&unit)
}

/// `text` with each lone surrogate escape inside a string replaced by `\ufffd`, or `None` if
/// it has none (so the caller's error stands).
fn replace_lone_surrogates(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut repaired = String::new();
    // `text[copied..i]` is yet to be copied into `repaired`.
    let mut copied = 0;
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                in_string = !in_string;
                i += 1;
            }
            b'\\' if in_string => {
                let unit = (bytes.get(i + 1) == Some(&b'u'))
                    .then(|| code_unit(bytes, i + 2))
                    .flatten();
                match unit {
                    Some(high) if is_high(high) => {
                        let paired = bytes.get(i + 6..i + 8) == Some(b"\\u")
                            && code_unit(bytes, i + 8).is_some_and(is_low);
                        if paired {
                            i += 12;
                        } else {
                            repaired.push_str(&text[copied..i]);
                            repaired.push_str("\\ufffd");
                            i += 6;
                            copied = i;
                        }
                    }
                    Some(low) if is_low(low) => {
                        repaired.push_str(&text[copied..i]);
                        repaired.push_str("\\ufffd");
                        i += 6;
                        copied = i;
                    }
                    Some(_) => i += 6,
                    // Any other escape is two bytes: skipping both keeps `\"` and `\\` from
                    // being read as the end of the string or the start of an escape.
                    None => i += 2,
                }
            }
            _ => i += 1,
        }
    }
    if copied == 0 {
        return None;
    }
    repaired.push_str(&text[copied..]);
    Some(repaired)
}

/// The length of `value` serialized as JSON, without building the text.
pub(crate) fn serialized_len(value: &serde_json::Value) -> serde_json::Result<usize> {
    let mut count = ByteCount(0);
    serde_json::to_writer(&mut count, value)?;
    Ok(count.0)
}

/// A writer that only counts the bytes written to it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::from_json_slice;
    use serde_json::{Value, json};

    fn decode(text: &str) -> serde_json::Result<Value> {
        from_json_slice(text.as_bytes())
    }

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        // Exactly what JSON.stringify("🤖".slice(0, 1)) and friends write.
        assert_eq!(decode(r#""\ud83e""#).unwrap(), json!("\u{fffd}"));
        assert_eq!(decode(r#""\uDC16x""#).unwrap(), json!("\u{fffd}x"));
        assert_eq!(
            decode(r#"{"text":"hi \ud83e","n":1}"#).unwrap(),
            json!({"text": "hi \u{fffd}", "n": 1})
        );
        // A high surrogate followed by anything but a low one is lone too.
        assert_eq!(decode(r#""\ud83e\u0041""#).unwrap(), json!("\u{fffd}A"));
        assert_eq!(
            decode(r#""\ud83e\ud83e""#).unwrap(),
            json!("\u{fffd}\u{fffd}")
        );
        // Keys are strings too.
        assert_eq!(decode(r#"{"\udc00":1}"#).unwrap(), json!({"\u{fffd}": 1}));
    }

    #[test]
    fn valid_json_decodes_unchanged() {
        assert_eq!(decode(r#""\ud83e\udd16""#).unwrap(), json!("🤖"));
        // An escaped backslash followed by "ud83e" is text, not an escape.
        assert_eq!(decode(r#""\\ud83e""#).unwrap(), json!("\\ud83e"));
        assert_eq!(decode(r#""a\"\\ud83e""#).unwrap(), json!("a\"\\ud83e"));
        assert_eq!(decode(r#"[1, "x", null]"#).unwrap(), json!([1, "x", null]));
    }

    #[test]
    fn other_malformations_keep_serde_jsons_error() {
        for bad in [r#""\ud83e"#, "{", r#""\uZZZZ""#, r#""\ud83e" trailing"#] {
            let err = decode(bad).unwrap_err();
            assert!(err.is_syntax() || err.is_eof(), "{bad}: {err}");
        }
        assert!(from_json_slice::<Value>(b"\xff\xfe").is_err());
        // Repaired but still not the expected type: serde_json's error for the original.
        assert!(from_json_slice::<u64>(br#""\ud83e""#).is_err());
    }
}
