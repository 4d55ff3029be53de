//! Resources and prompts: manifest entries of their own (`resources:`, `prompts:`), validated
//! into the same [`Tool`] entries as tools, with their [`ActionKind`], so that a read or a get
//! is decided like a call — allowlist, tiers, trust, zones, tenants, rate limits, budgets,
//! invariants, Cedar — and recorded, redacted and labelled like one.

use std::collections::{BTreeSet, HashMap, HashSet};

use warden_core::ActionKind;

use crate::manifest::{Collector, Tool};
use crate::raw::{RawManifest, RawPrompt, RawResource, RawTool};

/// One URI a resource entry admits: exactly, or every URI under a prefix (`…*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriPattern {
    /// The URI, or the prefix before the `*`.
    pub prefix: String,
    /// Whether it ends in `*`.
    pub wildcard: bool,
}

impl UriPattern {
    /// Parses `demo://docs/readme.md` (exact) or `demo://docs/*` (prefix).
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let (prefix, wildcard) = match text.strip_suffix('*') {
            Some(p) => (p, true),
            None => (text, false),
        };
        if prefix.contains('*') {
            return Err(
                "`*` may only end a pattern (every URI that starts with what comes before)",
            );
        }
        // INVARIANT (a prefix admits only what is under it): `https://host*` would admit
        // `https://host.evil` and `https://host@evil`.
        if wildcard && !prefix.ends_with('/') {
            return Err("what comes before a `*` must end with `/` (`demo://docs/*`), so that it admits only what is under it");
        }
        if text.len() > 2048 || text.chars().any(char::is_control) {
            return Err(
                "a URI pattern is at most 2048 characters, none of them control characters",
            );
        }
        let Some((scheme, _)) = prefix.split_once(':') else {
            return Err("a URI pattern starts with its scheme (`file:`, `demo:`, …), which it must name in full");
        };
        let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !scheme_ok {
            return Err(
                "a URI pattern starts with its scheme (letters, digits, `+`, `-`, `.`, then `:`)",
            );
        }
        Ok(UriPattern {
            prefix: prefix.to_owned(),
            wildcard,
        })
    }

    /// Whether it admits `uri`. Under a prefix, the rest may not climb out of it: no `.` or
    /// `..` segment, no backslash, no percent-encoded `.`, `/` or `\`.
    #[must_use]
    pub fn matches(&self, uri: &str) -> bool {
        if !self.wildcard {
            return uri == self.prefix;
        }
        // INVARIANT (a prefix admits only what is under it): `docs/*` must not admit
        // `docs/../secrets`, however the dots are spelled.
        uri.strip_prefix(&self.prefix)
            .is_some_and(|rest| !climbs_out(&self.prefix, rest))
    }

    /// Whether every URI a resource template can produce starts under this pattern: the
    /// template's text before its first `{` is under the prefix and does not climb out of it
    /// (or the template is the exact URI).
    #[must_use]
    pub fn covers_template(&self, template: &str) -> bool {
        let literal = template.split('{').next().unwrap_or_default();
        if self.wildcard {
            literal
                .strip_prefix(&self.prefix)
                .is_some_and(|rest| !climbs_out(&self.prefix, rest))
        } else {
            template == self.prefix
        }
    }
}

/// Whether `rest`, after `prefix`, could reach outside it, however an upstream decodes it:
/// a `.` or `..` segment (also before a `;` parameter), a backslash, a control or non-ASCII
/// character (full-width dots), or a percent-encoded `.`, `/`, `\`, NUL or `%` (double
/// encoding).
fn climbs_out(prefix: &str, rest: &str) -> bool {
    rest.contains('\\')
        || rest.chars().any(|c| c.is_control() || !c.is_ascii())
        || has_encoded_separator(rest)
        || rest.split(['/', '?', '#']).any(|segment| {
            let name = segment.split(';').next().unwrap_or_default();
            name == "." || name == ".."
        })
        || (prefix.ends_with('/') && rest.starts_with('/'))
}

fn has_encoded_separator(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    ["%2e", "%2f", "%5c", "%00", "%25"]
        .iter()
        .any(|e| lower.contains(e))
}

impl Tool {
    /// Whether this entry is a resource entry that admits `uri`.
    #[must_use]
    pub fn admits_uri(&self, uri: &str) -> bool {
        self.kind == ActionKind::Resource && self.uris.iter().any(|p| p.matches(uri))
    }

    /// The first way `arguments` break the entry's argument schema; with `partial`, an
    /// argument missing is not one (a completion's values are judged as far as they go).
    #[must_use]
    pub fn schema_error<'a>(
        &'a self,
        arguments: &'a serde_json::Value,
        partial: bool,
    ) -> Option<jsonschema::ValidationError<'a>> {
        self.validator.iter_errors(arguments).find(|e| {
            !(partial
                && matches!(
                    e.kind(),
                    jsonschema::error::ValidationErrorKind::Required { .. }
                ))
        })
    }

    /// The upstream that serves it (`<upstream>.` starts its name).
    #[must_use]
    pub fn upstream(&self) -> Option<&str> {
        self.name.split_once('.').map(|(u, _)| u)
    }
}

/// The argument schema of every resource entry: the URI read, and nothing else.
fn resource_arguments() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": {"uri": {"type": "string"}},
        "required": ["uri"],
        "additionalProperties": false
    })
}

/// A resource entry as the tool entry it is validated as.
fn resource_as_tool(r: &RawResource) -> RawTool {
    RawTool {
        arguments: Some(resource_arguments()),
        ..plain_tool(&r.name, &r.tier, &r.zones, r.tenants.as_ref(), &r.output)
    }
    .with(r.cost, &r.redact, r.description.as_ref())
}

/// A prompt entry as the tool entry it is validated as.
fn prompt_as_tool(p: &RawPrompt) -> RawTool {
    RawTool {
        arguments: p.arguments.clone(),
        ..plain_tool(&p.name, &p.tier, &p.zones, p.tenants.as_ref(), &p.output)
    }
    .with(p.cost, &p.redact, p.description.as_ref())
}

/// A tool entry with what resource and prompt entries have in common, and nothing else: no
/// effects, egress, secrets, previews or lookups.
fn plain_tool(
    name: &str,
    tier: &str,
    zones: &[String],
    tenants: Option<&Vec<String>>,
    output: &crate::raw::RawOutput,
) -> RawTool {
    RawTool {
        name: name.to_owned(),
        tier: tier.to_owned(),
        zones: zones.to_vec(),
        tenants: tenants.cloned(),
        arguments: None,
        output: output.clone(),
        effects: false,
        controlling: Vec::new(),
        lookup: std::collections::BTreeMap::new(),
        egress: Vec::new(),
        secrets: Vec::new(),
        preview: false,
        preview_template: None,
        cost: 0,
        redact: Vec::new(),
        egress_level: None,
        on_leak: None,
        description: None,
    }
}

impl RawTool {
    fn with(mut self, cost: u64, redact: &[String], description: Option<&String>) -> Self {
        self.cost = cost;
        self.redact = redact.to_vec();
        self.description = description.cloned();
        self
    }
}

/// What every entry is checked against.
pub(crate) struct Known<'a> {
    pub(crate) tiers: &'a HashMap<&'a str, usize>,
    pub(crate) zones: &'a BTreeSet<String>,
    pub(crate) tenants: &'a BTreeSet<String>,
}

/// The resource and prompt entries, added to `tools` (one name space: a name is one entry of
/// one kind). Each names an upstream of the manifest; no URI is admitted by two entries
/// (which would decide it, which upstream would be read?).
pub(crate) fn validate_resources_and_prompts(
    c: &mut Collector<'_>,
    raw: &RawManifest,
    known: &Known<'_>,
    tools: &mut HashMap<String, Tool>,
) {
    let upstreams: HashSet<&str> = raw.upstreams.iter().map(|u| u.name.as_str()).collect();
    let mut taken: Vec<(usize, UriPattern)> = Vec::new();
    for (i, r) in raw.resources.iter().enumerate() {
        let path = format!("resources[{i}]");
        if named_upstream(c, &path, &r.name, &upstreams).is_none() {
            continue;
        }
        if r.uris.is_empty() {
            c.err(format!("{path}.uris"), "list the URIs it admits");
            continue;
        }
        let mut uris = Vec::new();
        for (j, u) in r.uris.iter().enumerate() {
            match UriPattern::parse(u) {
                Ok(p) => uris.push(p),
                Err(why) => c.err(format!("{path}.uris[{j}]"), format!("`{u}`: {why}")),
            }
        }
        if uris.len() != r.uris.len() {
            continue;
        }
        // INVARIANT (one entry decides a URI): were two entries to admit one URI, a read could
        // be decided under the laxer one, or read from another upstream.
        for p in &uris {
            for (k, q) in &taken {
                if overlap(p, q) {
                    c.err(
                        format!("{path}.uris"),
                        format!(
                            "`{}{}` admits URIs that resources[{k}] admits too: a URI must belong to one entry",
                            p.prefix,
                            if p.wildcard { "*" } else { "" }
                        ),
                    );
                }
            }
        }
        // Within one entry, overlapping patterns are harmless (the entry decides either way).
        taken.extend(uris.iter().map(|p| (i, p.clone())));
        let tool = crate::manifest::validate_tool(
            c,
            &path,
            &resource_as_tool(r),
            known.tiers,
            known.zones,
            known.tenants,
        );
        if let Some(mut t) = tool {
            t.kind = ActionKind::Resource;
            t.uris = uris;
            insert(c, &path, tools, t);
        }
    }
    for (i, p) in raw.prompts.iter().enumerate() {
        let path = format!("prompts[{i}]");
        if named_upstream(c, &path, &p.name, &upstreams).is_none() {
            continue;
        }
        let tool = crate::manifest::validate_tool(
            c,
            &path,
            &prompt_as_tool(p),
            known.tiers,
            known.zones,
            known.tenants,
        );
        if let Some(mut t) = tool {
            t.kind = ActionKind::Prompt;
            insert(c, &path, tools, t);
        }
    }
}

/// The upstream `<upstream>.<rest>` names, if the manifest has it.
fn named_upstream<'n>(
    c: &mut Collector<'_>,
    path: &str,
    name: &'n str,
    upstreams: &HashSet<&str>,
) -> Option<&'n str> {
    match name.split_once('.') {
        Some((up, rest)) if upstreams.contains(up) && !rest.is_empty() => Some(up),
        _ => {
            c.err(
                format!("{path}.name"),
                format!(
                    "`{name}` must be `<upstream>.<name>`, with an upstream of this manifest{}",
                    crate::manifest::known(upstreams.iter())
                ),
            );
            None
        }
    }
}

fn insert(c: &mut Collector<'_>, path: &str, tools: &mut HashMap<String, Tool>, t: Tool) {
    let name = t.name.clone();
    if tools.insert(name.clone(), t).is_some() {
        c.err(
            format!("{path}.name"),
            format!(
                "`{name}` is already a tool, resource or prompt entry: names are one name space"
            ),
        );
    }
}

/// Whether two patterns can admit one URI.
fn overlap(a: &UriPattern, b: &UriPattern) -> bool {
    match (a.wildcard, b.wildcard) {
        (false, false) => a.prefix == b.prefix,
        (true, false) => a.matches(&b.prefix),
        (false, true) => b.matches(&a.prefix),
        (true, true) => a.prefix.starts_with(&b.prefix) || b.prefix.starts_with(&a.prefix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> UriPattern {
        UriPattern::parse(s).unwrap()
    }

    #[test]
    fn a_prefix_admits_what_is_under_it_and_nothing_that_climbs_out() {
        let docs = p("file:///srv/docs/*");
        assert!(docs.matches("file:///srv/docs/readme.md"));
        assert!(docs.matches("file:///srv/docs/a/b.txt?v=2"));
        for bad in [
            "file:///srv/docs/../secrets",
            "file:///srv/docs/a/../../x",
            "file:///srv/docs/./x",
            "file:///srv/docs/%2e%2e/x",
            "file:///srv/docs/%2E%2E%2Fx",
            "file:///srv/docs/a%2fb",
            "file:///srv/docs/a\\..\\b",
            "file:///srv/docs//etc/passwd",
            "file:///srv/docs/a\nb",
            "file:///srv/docs/%252e%252e/x",
            "file:///srv/docs/..;/secret",
            "file:///srv/docs/\u{ff0e}\u{ff0e}/x",
            "file:///srv/documents/x",
            "file:///srv/doc",
        ] {
            assert!(!docs.matches(bad), "{bad}");
        }
        let exact = p("demo://resource/static/document/features.md");
        assert!(exact.matches("demo://resource/static/document/features.md"));
        assert!(!exact.matches("demo://resource/static/document/features.md/x"));
    }

    #[test]
    fn patterns_are_checked_when_loaded() {
        assert!(UriPattern::parse("demo://a/*/b").is_err());
        assert!(UriPattern::parse("no-scheme/*").is_err());
        assert!(UriPattern::parse("1http://x").is_err());
        assert!(UriPattern::parse("*").is_err());
        assert!(UriPattern::parse("demo://x\u{0}").is_err());
        assert!(UriPattern::parse("demo://x/*").is_ok());
        assert!(UriPattern::parse("https://host*").is_err());
        assert!(UriPattern::parse("demo://x/y*").is_err());
    }

    #[test]
    fn templates_are_covered_by_the_prefix_of_their_literal_part() {
        let text = p("demo://resource/dynamic/text/*");
        assert!(text.covers_template("demo://resource/dynamic/text/{resourceId}"));
        assert!(!text.covers_template("demo://resource/dynamic/blob/{resourceId}"));
        assert!(!text.covers_template("demo://resource/{kind}/text/1"));
        assert!(!text.covers_template("demo://resource/dynamic/text/../blob/{id}"));
    }

    #[test]
    fn overlapping_patterns_are_found() {
        assert!(overlap(&p("a://x/*"), &p("a://x/y/*")));
        assert!(overlap(&p("a://x/*"), &p("a://x/y")));
        assert!(!overlap(&p("a://x/*"), &p("a://z/*")));
        assert!(!overlap(&p("a://x"), &p("a://x/y")));
    }
}
