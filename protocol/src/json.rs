//! Application JSON rules: what a message `body`, a message `meta` and a
//! presence `meta` may contain.
//!
//! chorus stores and forwards application JSON as the text the client sent,
//! so whatever it accepts once, every reader of the room gets forever: a value
//! that some client's parser refuses would make the room's history
//! unreadable for that client. One check, [`check_app_json`], runs at every
//! entry point (the WebSocket `send` and `hello`, the HTTP publish, anything
//! later), on text that is already syntactically valid JSON. Its rules:
//!
//! - nesting: at most [`MAX_JSON_DEPTH`] arrays/objects deep (many parsers,
//!   serde_json among them, refuse 128 and more; recursive ones overflow
//!   their stack far below 8,000);
//! - numbers: finite as an IEEE 754 double (`1e400` is infinity in
//!   JavaScript and an error in Rust and Go);
//! - strings: no unpaired UTF-16 surrogate escapes (`"\ud800"`), which strict
//!   parsers refuse and which have no UTF-8 form;
//! - keys: no object key starting with [`RESERVED_KEY_PREFIX`]: serde_json
//!   (with its `raw_value` or `arbitrary_precision` features, as Rust readers
//!   commonly build it) reads an object whose first key is one of its private
//!   tokens as something else, so such a body would fail or change meaning for
//!   them once its keys are sorted.
//!
//! The checker is a single pass without recursion: its cost is linear in the
//! text and its stack is constant, whatever the input.

use std::fmt;

/// Deepest nesting of arrays and objects accepted in application JSON.
pub const MAX_JSON_DEPTH: usize = 32;

/// Which rule a JSON value broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonRule {
    /// Nested deeper than [`MAX_JSON_DEPTH`].
    Depth,
    /// A number that is not finite as a 64-bit float.
    Number(String),
    /// An unpaired UTF-16 surrogate escape in a string.
    Surrogate,
    /// An object key that a common parser reserves ([`RESERVED_KEY_PREFIX`]).
    ReservedKey,
    /// Not valid JSON at all.
    Syntax,
}

/// Object keys starting with this are refused (serde_json's private tokens).
pub const RESERVED_KEY_PREFIX: &str = "$serde_json::private::";

impl fmt::Display for JsonRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonRule::Depth => write!(
                f,
                "JSON nested deeper than {MAX_JSON_DEPTH} levels (rule: max_depth)"
            ),
            JsonRule::Number(n) => write!(
                f,
                "number {n} is outside the range of a 64-bit float (rule: finite_numbers)"
            ),
            JsonRule::Surrogate => write!(
                f,
                "string holds an unpaired UTF-16 surrogate escape (rule: unicode_strings)"
            ),
            JsonRule::ReservedKey => write!(
                f,
                "object key starts with {RESERVED_KEY_PREFIX:?}, reserved by JSON parsers (rule: reserved_keys)"
            ),
            JsonRule::Syntax => write!(f, "not valid JSON (rule: syntax)"),
        }
    }
}

/// Check application JSON text against the rules above.
pub fn check_app_json(text: &str) -> Result<(), JsonRule> {
    let b = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(JsonRule::Depth);
                }
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.checked_sub(1).ok_or(JsonRule::Syntax)?;
                i += 1;
            }
            b'"' => {
                let start = i;
                i = skip_string(b, i + 1)?;
                if is_key(b, i) && reserved_key(&text[start..i]) {
                    return Err(JsonRule::ReservedKey);
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let num = &text[start..i];
                match num.parse::<f64>() {
                    Ok(v) if v.is_finite() => {}
                    Ok(_) => return Err(JsonRule::Number(shorten(num))),
                    Err(_) => return Err(JsonRule::Syntax),
                }
            }
            _ => i += 1,
        }
    }
    if depth == 0 {
        Ok(())
    } else {
        Err(JsonRule::Syntax)
    }
}

/// Whether the string that ended just before `i` is an object key (a `:` follows).
fn is_key(b: &[u8], mut i: usize) -> bool {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    b.get(i) == Some(&b':')
}

/// Whether a quoted key (escapes included) starts with [`RESERVED_KEY_PREFIX`].
fn reserved_key(quoted: &str) -> bool {
    let inner = &quoted[1..quoted.len() - 1];
    if !inner.contains('\\') {
        return inner.starts_with(RESERVED_KEY_PREFIX);
    }
    // Escaped: compare the decoded key (`"\u0024serde_json::private::..."`).
    serde_json::from_str::<String>(quoted).is_ok_and(|k| k.starts_with(RESERVED_KEY_PREFIX))
}

/// Skip a string body starting after its opening quote; returns the index
/// after the closing quote.
fn skip_string(b: &[u8], mut i: usize) -> Result<usize, JsonRule> {
    // A high surrogate escape waiting for its low half.
    let mut pending_high = false;
    while i < b.len() {
        match b[i] {
            b'"' => {
                return if pending_high {
                    Err(JsonRule::Surrogate)
                } else {
                    Ok(i + 1)
                };
            }
            b'\\' => {
                let esc = *b.get(i + 1).ok_or(JsonRule::Syntax)?;
                if esc == b'u' {
                    let hex = b.get(i + 2..i + 6).ok_or(JsonRule::Syntax)?;
                    let hex = std::str::from_utf8(hex).map_err(|_| JsonRule::Syntax)?;
                    let unit = u16::from_str_radix(hex, 16).map_err(|_| JsonRule::Syntax)?;
                    match unit {
                        0xD800..=0xDBFF if pending_high => return Err(JsonRule::Surrogate),
                        0xD800..=0xDBFF => pending_high = true,
                        0xDC00..=0xDFFF if pending_high => pending_high = false,
                        0xDC00..=0xDFFF => return Err(JsonRule::Surrogate),
                        _ if pending_high => return Err(JsonRule::Surrogate),
                        _ => {}
                    }
                    i += 6;
                } else {
                    if pending_high {
                        return Err(JsonRule::Surrogate);
                    }
                    i += 2;
                }
            }
            _ => {
                if pending_high {
                    return Err(JsonRule::Surrogate);
                }
                i += 1;
            }
        }
    }
    Err(JsonRule::Syntax)
}

/// A number as quoted in an error message: at most 32 characters.
fn shorten(num: &str) -> String {
    if num.len() <= 32 {
        num.to_owned()
    } else {
        format!("{}...", &num[..32])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(n: usize) -> String {
        format!("{}{}", "[".repeat(n), "]".repeat(n))
    }

    #[test]
    fn serde_json_private_keys_are_refused() {
        for text in [
            r#"{"$serde_json::private::RawValue":true}"#,
            r#"{"a":1,"$serde_json::private::RawValue":"{}"}"#,
            r#"{"x":[{"$serde_json::private::Number" : "1"}]}"#,
            r#"{"\u0024serde_json::private::RawValue":1}"#,
        ] {
            assert_eq!(check_app_json(text), Err(JsonRule::ReservedKey), "{text}");
        }
        // As a value, or a key that only looks alike, it is fine.
        for text in [
            r#"{"k":"$serde_json::private::RawValue"}"#,
            r#"["$serde_json::private::RawValue"]"#,
            r#"{"serde_json::private::RawValue":1}"#,
            r#"{"$serde_json":1}"#,
        ] {
            assert_eq!(check_app_json(text), Ok(()), "{text}");
        }
    }

    #[test]
    fn depth_is_bounded() {
        assert_eq!(check_app_json(&nested(MAX_JSON_DEPTH)), Ok(()));
        assert_eq!(
            check_app_json(&nested(MAX_JSON_DEPTH + 1)),
            Err(JsonRule::Depth)
        );
        assert_eq!(check_app_json(&nested(8000)), Err(JsonRule::Depth));
        // Brackets inside strings are text, not nesting.
        let s = format!("\"{}\"", "[".repeat(100));
        assert_eq!(check_app_json(&s), Ok(()));
        assert_eq!(check_app_json(r#"{"a":{"b":"\"[[[["}}"#), Ok(()));
    }

    #[test]
    fn numbers_must_be_finite_doubles() {
        assert_eq!(
            check_app_json(r#"{"n":1e400}"#),
            Err(JsonRule::Number("1e400".into()))
        );
        assert!(check_app_json("-1e309").is_err());
        assert_eq!(
            check_app_json(r#"[0, -0.5, 1.7976931348623157e308, 12345678901234567890123]"#),
            Ok(())
        );
        assert_eq!(check_app_json("1e-400"), Ok(()), "underflow reads as 0");
    }

    #[test]
    fn surrogates_must_pair() {
        assert_eq!(check_app_json(r#""\ud83d\ude00""#), Ok(()));
        assert_eq!(check_app_json(r#""\ud800""#), Err(JsonRule::Surrogate));
        assert_eq!(check_app_json(r#""\udc00x""#), Err(JsonRule::Surrogate));
        assert_eq!(
            check_app_json(r#""\ud800\u0041""#),
            Err(JsonRule::Surrogate)
        );
        assert_eq!(check_app_json(r#""\ud800a""#), Err(JsonRule::Surrogate));
        assert_eq!(
            check_app_json(r#""\\ud800""#),
            Ok(()),
            "an escaped backslash"
        );
    }

    #[test]
    fn every_value_that_serde_json_reads_back_passes() {
        for text in [
            r#"{"text":"hi","n":[1,2,{"x":null}],"t":true}"#,
            r#""plain""#,
            "42",
            "null",
        ] {
            assert_eq!(check_app_json(text), Ok(()), "{text}");
            serde_json::from_str::<serde_json::Value>(text).unwrap();
        }
    }

    /// Found by the `app_json` fuzz target: a decimal within half an ulp of
    /// the largest double is finite (correctly rounded), and serde_json (with
    /// `float_roundtrip`) agrees, so what passes the check is readable.
    #[test]
    fn near_max_doubles_agree_with_serde_json() {
        for text in [
            "1.7976931348623158e308",
            "-1.7976931348623158e308",
            "1.7976931348623157e308",
        ] {
            assert_eq!(check_app_json(text), Ok(()), "{text}");
            let v: serde_json::Value = serde_json::from_str(text).expect(text);
            assert!(v.as_f64().is_some_and(f64::is_finite), "{text}");
        }
        assert!(check_app_json("1.7976931348623159e308").is_err());
    }
}
