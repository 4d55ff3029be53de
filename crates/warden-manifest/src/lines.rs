//! Where each key of a YAML document is: a map from key paths (`agents[1].tenant`) to 1-based
//! line numbers, so that validation errors can point at the offending line.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Key path to line.
#[derive(Debug, Default, Clone)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

/// Deepest nesting of mappings and sequences a manifest may have. Real manifests need about
/// ten; the limit keeps hostile input away from parsers whose cost grows with depth.
pub const MAX_DEPTH: usize = 64;

impl LineIndex {
    /// Indexes `text`. A document that does not parse yields an empty index (the parse error
    /// itself is reported elsewhere, with its own location).
    #[must_use]
    pub fn new(text: &str) -> Self {
        Self::build(text).unwrap_or_default()
    }

    /// Indexes `text`, or says why it is not acceptable YAML: a syntax error, or nesting deeper
    /// than [`MAX_DEPTH`]. Returns the 1-based line of the problem when known.
    ///
    /// # Errors
    /// `(line, message)` for the first problem.
    pub fn build(text: &str) -> Result<Self, (Option<usize>, String)> {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(text);
        if let Err(e) = parser.load(&mut walker, false) {
            return Err((
                Some(e.marker().line().max(1)),
                format!("YAML syntax error: {}", e.info()),
            ));
        }
        if let Some(line) = walker.too_deep {
            return Err((
                Some(line),
                format!("nesting is deeper than {MAX_DEPTH} levels"),
            ));
        }
        Ok(Self {
            lines: walker.lines,
        })
    }

    /// The line of `path`, or of its nearest indexed ancestor.
    #[must_use]
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(line) = self.lines.get(p) {
                return Some(*line);
            }
            let cut = p.rfind(['.', '['])?;
            p = p.get(..cut)?;
        }
    }
}

#[derive(Debug)]
enum Frame {
    Map { key: Option<String> },
    Seq { next: usize },
}

#[derive(Debug, Default)]
struct Walker {
    stack: Vec<(String, Frame)>,
    lines: HashMap<String, usize>,
    too_deep: Option<usize>,
}

impl Walker {
    /// The path of the node that starts now, advancing the parent's position; `None` when the
    /// node is a mapping key.
    fn next_path(&mut self, scalar: Option<&str>) -> Option<String> {
        let Some((parent, frame)) = self.stack.last_mut() else {
            return Some(String::new());
        };
        match frame {
            Frame::Seq { next } => {
                let p = format!("{parent}[{next}]");
                *next += 1;
                Some(p)
            }
            Frame::Map { key } => match key.take() {
                None => {
                    // This node is a key; remember it (non-scalar keys get a placeholder).
                    *key = Some(scalar.unwrap_or("?").to_string());
                    None
                }
                Some(k) => Some(if parent.is_empty() {
                    k
                } else {
                    format!("{parent}.{k}")
                }),
            },
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line().max(1);
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(path) = self.next_path(Some(&value)) {
                    self.lines.entry(path).or_insert(line);
                } else if let Some((parent, Frame::Map { key: Some(k) })) = self.stack.last() {
                    let path = if parent.is_empty() {
                        k.clone()
                    } else {
                        format!("{parent}.{k}")
                    };
                    self.lines.entry(path).or_insert(line);
                }
            }
            Event::Alias(_) => {
                if let Some(path) = self.next_path(None) {
                    self.lines.entry(path).or_insert(line);
                }
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                let path = self.next_path(None).unwrap_or_else(|| "?".to_string());
                self.lines.entry(path.clone()).or_insert(line);
                let frame = if is_map {
                    Frame::Map { key: None }
                } else {
                    Frame::Seq { next: 0 }
                };
                if self.stack.len() >= MAX_DEPTH && self.too_deep.is_none() {
                    self.too_deep = Some(line);
                }
                self.stack.push((path, frame));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_lines_of_nested_keys() {
        let text = "version: 1\nagents:\n  - id: a\n    tenant: t\n  - id: b\n    tenant: u\nrisk_tiers:\n  low: { approval: { mode: auto } }\n";
        let idx = LineIndex::new(text);
        assert_eq!(idx.line_of("version"), Some(1));
        assert_eq!(idx.line_of("agents"), Some(2));
        assert_eq!(idx.line_of("agents[1].tenant"), Some(6));
        assert_eq!(idx.line_of("agents[0].id"), Some(3));
        assert_eq!(idx.line_of("risk_tiers.low.approval.mode"), Some(8));
        assert_eq!(idx.line_of("agents[1].missing"), Some(5));
    }

    #[test]
    fn broken_yaml_gives_an_empty_index() {
        assert_eq!(LineIndex::new("a: [\n").line_of("a"), None);
    }
}
