//! Info protocol (type 1, spec §2): the request body is command lines, the
//! reply one `command text<TAB>value<LF>` line per command, in order.
//!
//! The reply must echo each command's full text (parameters included),
//! because the Rust client finds its answer by the exact string it sent.
//! Values must never contain a tab or newline: the C client would misparse
//! the whole reply, so [`push_line`] turns them into spaces.

use super::proto::FrameError;

/// One command line of an info request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InfoCommand<'a> {
    /// The full line as received, without its `\n`; the reply key.
    pub text: &'a str,
    /// The text before the first `:` (all of it when there is none).
    pub name: &'a str,
    /// The text after the first `:`, or `""`.
    pub params: &'a str,
}

/// Splits an info request body into commands. Lines end in `\n`; a last
/// line without one still counts; empty lines are skipped (an empty body
/// gives no commands, which the caller answers with its summary).
pub fn parse_request(body: &[u8]) -> Result<Vec<InfoCommand<'_>>, FrameError> {
    let text = std::str::from_utf8(body).map_err(|e| FrameError::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    Ok(text
        .split('\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (name, params) = line.split_once(':').unwrap_or((line, ""));
            InfoCommand {
                text: line,
                name,
                params,
            }
        })
        .collect())
}

/// The value of `key` in `k=v;k=v` parameters; the first match wins. An
/// item without `=` has no value and never matches.
pub fn param<'a>(params: &'a str, key: &str) -> Option<&'a str> {
    params
        .split(';')
        .filter_map(|item| item.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Appends the reply line `text<TAB>value<LF>`, with any tab or newline in
/// `value` replaced by a space.
pub fn push_line(out: &mut Vec<u8>, text: &str, value: &str) {
    out.reserve(text.len() + value.len() + 2);
    out.extend_from_slice(text.as_bytes());
    out.push(b'\t');
    out.extend(value.bytes().map(|b| match b {
        b'\t' | b'\n' => b' ',
        b => b,
    }));
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::proto::{begin_frame, end_frame, FrameKind};

    #[test]
    fn spec_node_request_and_reply() {
        // §11: `02 01 00 00 00 00 00 05 node\n` and its reply.
        let commands = parse_request(b"node\n").unwrap();
        assert_eq!(
            commands,
            [InfoCommand {
                text: "node",
                name: "node",
                params: ""
            }]
        );
        let mut out = Vec::new();
        let start = begin_frame(&mut out, FrameKind::Info);
        push_line(&mut out, commands[0].text, "BB9020011AC4202");
        end_frame(&mut out, start);
        let mut expected = vec![0x02, 0x01, 0, 0, 0, 0, 0, 0x15];
        expected.extend_from_slice(b"node\tBB9020011AC4202\n");
        assert_eq!(out, expected);
    }

    #[test]
    fn lines_split_and_params_parse() {
        let commands = parse_request(
            b"node\n\npartition-generation\ntruncate:namespace=test;set=demo;lut=5\nbuild",
        )
        .unwrap();
        let names: Vec<_> = commands.iter().map(|c| c.name).collect();
        assert_eq!(names, ["node", "partition-generation", "truncate", "build"]);
        let truncate = commands[2];
        assert_eq!(truncate.text, "truncate:namespace=test;set=demo;lut=5");
        assert_eq!(truncate.params, "namespace=test;set=demo;lut=5");
        assert_eq!(param(truncate.params, "namespace"), Some("test"));
        assert_eq!(param(truncate.params, "set"), Some("demo"));
        assert_eq!(param(truncate.params, "lut"), Some("5"));
        assert_eq!(param(truncate.params, "nope"), None);
        assert_eq!(param("a;b=", "a"), None);
        assert_eq!(param("a;b=", "b"), Some(""));
        // Only the first ':' separates: a value may contain more.
        let c = parse_request(b"user-agent-set:value=a:b").unwrap()[0];
        assert_eq!((c.name, c.params), ("user-agent-set", "value=a:b"));
        assert!(parse_request(b"").unwrap().is_empty());
        assert!(parse_request(b"\n\n").unwrap().is_empty());
    }

    #[test]
    fn invalid_utf8_names_its_offset() {
        let e = parse_request(b"node\n\xFFx").unwrap_err();
        assert_eq!(e, FrameError::InvalidUtf8 { offset: 5 });
        assert!(e.to_string().contains("byte 5"), "{e}");
    }

    #[test]
    fn values_cannot_break_the_line_format() {
        let mut out = Vec::new();
        push_line(&mut out, "statistics", "a\tb\nc");
        assert_eq!(out, b"statistics\ta b c\n");
    }
}
