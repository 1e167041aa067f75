//! (c) the examples of PROTOCOL.md

use chorus_protocol::{ClientFrame, ServerFrame};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

use super::meta::*;
use super::support::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Dir {
    Client,
    Server,
}

/// Every frame example of PROTOCOL.md: the JSON code blocks of sections 5
/// (client) and 6 (server), the frames among the JSON blocks of 14, and the
/// `C→S` / `S→C` lines of section 15. `(section, direction, text)`.
pub(crate) fn doc_examples() -> Vec<(String, Dir, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut fence: Option<String> = None;
    for line in PROTOCOL_MD.lines() {
        if let Some(lang) = &fence {
            if line.starts_with("```") {
                fence = None;
                continue;
            }
            let major = section.split('.').next().unwrap_or("");
            let line = line.trim();
            match (lang.as_str(), major) {
                ("json", "5") if !line.is_empty() => {
                    out.push((section.clone(), Dir::Client, line.to_owned()))
                }
                ("json", "6") if !line.is_empty() => {
                    out.push((section.clone(), Dir::Server, line.to_owned()))
                }
                ("json", "14") if line.starts_with(r#"{"op":"#) => {
                    out.push((section.clone(), Dir::Server, line.to_owned()))
                }
                ("text", "15") => {
                    if let Some(f) = line.strip_prefix("C→S ") {
                        out.push((section.clone(), Dir::Client, f.to_owned()));
                    } else if let Some(f) = line.strip_prefix("S→C ") {
                        out.push((section.clone(), Dir::Server, f.to_owned()));
                    }
                }
                _ => {}
            }
            continue;
        }
        if let Some(lang) = line.strip_prefix("```") {
            fence = Some(lang.trim().to_owned());
        } else if let Some(h) = line
            .strip_prefix("### ")
            .or_else(|| line.strip_prefix("## "))
        {
            let number = h.split_whitespace().next().unwrap_or("");
            if number.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                section = number.trim_end_matches('.').to_owned();
            }
        }
    }
    out
}

#[test]
fn every_frame_example_in_protocol_md_validates_and_is_exact() {
    let client = validator(CLIENT_SCHEMA);
    let server = validator(SERVER_SCHEMA);
    let examples = doc_examples();
    let mut ops: BTreeMap<Dir, BTreeSet<String>> = BTreeMap::new();
    let mut per_section: BTreeMap<String, usize> = BTreeMap::new();
    for (section, dir, text) in &examples {
        let value: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("PROTOCOL.md {section}: {text} is not JSON: {e}"));
        let e = errors(
            if *dir == Dir::Client {
                &client
            } else {
                &server
            },
            &value,
        );
        assert!(
            e.is_empty(),
            "PROTOCOL.md {section}: {dir:?} example {text} does not validate:\n{e}"
        );
        // The Rust types read it and write it back: a server frame byte for
        // byte (it is what the server sends), a client frame as the same
        // JSON value (a client may order a map's keys as it likes).
        match dir {
            Dir::Client => {
                let again = ClientFrame::decode(text)
                    .unwrap_or_else(|e| panic!("PROTOCOL.md {section}: {text}: {e:?}"))
                    .encode();
                let again: Value = serde_json::from_str(&again).unwrap();
                assert_eq!(again, value, "PROTOCOL.md {section}: re-encoded");
            }
            Dir::Server => {
                let again = ServerFrame::decode(text)
                    .unwrap_or_else(|e| panic!("PROTOCOL.md {section}: {text}: {e}"))
                    .encode();
                assert_eq!(&again, text, "PROTOCOL.md {section}: re-encoded");
            }
        }
        ops.entry(*dir)
            .or_default()
            .insert(value["op"].as_str().unwrap().to_owned());
        *per_section.entry(section.clone()).or_default() += 1;
    }
    // Every op has an example; the extraction found the sections.
    assert_eq!(ops[&Dir::Client], CLIENT_OPS.map(String::from).into());
    assert_eq!(ops[&Dir::Server], SERVER_OPS.map(String::from).into());
    for n in 1..=12 {
        assert!(
            per_section.contains_key(&format!("5.{n}")),
            "5.{n}: {per_section:?}"
        );
    }
    for n in 1..=16 {
        assert!(
            per_section.contains_key(&format!("6.{n}")),
            "6.{n}: {per_section:?}"
        );
    }
    assert!(per_section["15"] >= 20, "{per_section:?}");
    assert!(per_section.contains_key("14.5"), "{per_section:?}");
}
