//! The proposal: the only thing an agent can do is ask.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Largest proposal Warden parses, in bytes. Larger inputs are refused before parsing.
pub const MAX_PROPOSAL_BYTES: usize = 1 << 20;

/// Longest identifier (agent, session, tool, tenant) Warden accepts, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// A tool call an agent proposes. It carries no authority of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proposal {
    /// The agent that proposes the call, as named in the manifest.
    pub agent: String,
    /// The session the call belongs to (loop detection and pauses are per session).
    pub session: String,
    /// The tool to call, as named in the manifest.
    pub tool: String,
    /// The tool's arguments: always a JSON object.
    #[serde(default = "empty_object")]
    pub arguments: Value,
    /// The tenant the caller claims to act for; when present it must be the agent's own (INV-008).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// What is proposed: a tool call (the default), a resource read or a prompt. The manifest
    /// entry named `tool` must be of this kind.
    #[serde(default, skip_serializing_if = "ActionKind::is_tool")]
    pub kind: ActionKind,
    /// What is done with the entry: used (the default), or one of its arguments completed
    /// (`completion/complete`), the arguments then being a [`Completing`].
    #[serde(default, skip_serializing_if = "Operation::is_use")]
    pub operation: Operation,
}

/// What a proposal does with the entry it names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// The tool is called, the resource read, the prompt got.
    #[default]
    Use,
    /// An argument of a prompt or of a resource template is completed: the upstream is sent
    /// the partial value (and the values already chosen) and answers candidates.
    Complete,
}

impl Operation {
    /// Whether it is a use (the default, not written out).
    #[must_use]
    pub fn is_use(&self) -> bool {
        *self == Operation::Use
    }

    /// The hash a decision records, and its grant binds, of arguments whose canonical JSON is
    /// `canonical`: a use's is the SHA-256 of that JSON; a completion's is tagged, so that no
    /// grant for one operation redeems as the other with the same arguments.
    #[must_use]
    pub fn arguments_digest(self, canonical: &str) -> String {
        match self {
            Operation::Use => crate::canonical::sha256_tagged(canonical.as_bytes()),
            Operation::Complete => {
                crate::canonical::sha256_tagged(format!("complete\n{canonical}").as_bytes())
            }
        }
    }
}

/// The arguments of a completion: which argument, its value so far, the values of the other
/// arguments already chosen and, for a resource template, the template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Completing {
    /// The resource template whose argument is completed (absent for a prompt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// The argument's name.
    pub argument: String,
    /// Its value so far.
    pub value: String,
    /// The other arguments' values.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub context: std::collections::BTreeMap<String, String>,
}

impl Completing {
    /// The arguments of a completion proposal.
    #[must_use]
    pub fn to_arguments(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| empty_object())
    }

    /// A resource template's URI with the values the completion has (the argument's value so
    /// far, the context's) put in for its simple expressions (`{name}`, RFC 6570 level 1; a
    /// value is put in as it is, not percent-encoded, so that what it spells is judged). An
    /// expression without a value becomes `fill`, or, with `None`, ends the URI there (what
    /// the candidates will all be under). `None` for a completion of no template, or for a
    /// template with an expression Warden does not expand (an operator, several variables, a
    /// modifier) or a brace out of place.
    #[must_use]
    pub fn expand_template(&self, fill: Option<&str>) -> Option<String> {
        let mut rest = self.uri.as_deref()?;
        let mut out = String::new();
        while let Some((literal, after)) = rest.split_once('{') {
            let (name, tail) = after.split_once('}')?;
            let simple = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
            if !simple || literal.contains('}') {
                return None;
            }
            out.push_str(literal);
            let value = if name == self.argument {
                Some(self.value.as_str())
            } else {
                self.context.get(name).map(String::as_str)
            };
            match value.or(fill) {
                Some(v) => out.push_str(v),
                None => return Some(out),
            }
            rest = tail;
        }
        if rest.contains('}') {
            return None;
        }
        out.push_str(rest);
        Some(out)
    }

    /// The values the entry's argument schema judges: the context's, with the completed
    /// argument's value so far.
    #[must_use]
    pub fn values(&self) -> Value {
        let mut values: Map<String, Value> = self
            .context
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        values.insert(self.argument.clone(), Value::String(self.value.clone()));
        Value::Object(values)
    }
}

/// The kinds of action an agent can propose: each manifest entry is one of them, and a
/// proposal names the kind it asks for (an entry of another kind is not found).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// `tools/call`: the entry's tool, with the proposal's arguments.
    #[default]
    Tool,
    /// `resources/read`: the proposal's one argument, `uri`, read from the entry's upstream.
    Resource,
    /// `prompts/get`: the entry's prompt, with the proposal's arguments.
    Prompt,
}

impl ActionKind {
    /// Whether it is a tool call (the default, not written out).
    #[must_use]
    pub fn is_tool(&self) -> bool {
        *self == ActionKind::Tool
    }

    /// Its name in messages and manifests: `tool`, `resource`, `prompt`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Tool => "tool",
            ActionKind::Resource => "resource",
            ActionKind::Prompt => "prompt",
        }
    }
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// Why a proposal could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposalError {
    /// The input is larger than [`MAX_PROPOSAL_BYTES`].
    #[error("proposal is {size} bytes, more than the {limit}-byte limit")]
    TooLarge {
        /// Size of the input.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The input is not JSON of the proposal's shape.
    #[error("proposal is not valid: {0}")]
    Malformed(String),
    /// A field is empty, too long, or holds control characters.
    #[error("proposal field `{field}` {problem}")]
    BadField {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
}

impl Proposal {
    /// Parses a proposal from untrusted bytes: bounded size, bounded nesting (serde_json refuses
    /// more than 128 levels), unknown fields refused, identifiers checked.
    ///
    /// # Errors
    /// [`ProposalError`] naming what was wrong.
    pub fn from_json_slice(bytes: &[u8]) -> Result<Self, ProposalError> {
        if bytes.len() > MAX_PROPOSAL_BYTES {
            return Err(ProposalError::TooLarge {
                size: bytes.len(),
                limit: MAX_PROPOSAL_BYTES,
            });
        }
        // serde would also accept a JSON array in field order; a proposal is an object.
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => {}
            Some(_) => return Err(ProposalError::Malformed("expected a JSON object".into())),
            None => return Err(ProposalError::Malformed("empty input".into())),
        }
        let proposal: Proposal =
            serde_json::from_slice(bytes).map_err(|e| ProposalError::Malformed(e.to_string()))?;
        proposal.check()?;
        Ok(proposal)
    }

    /// Checks the identifiers and the shape of the arguments.
    ///
    /// # Errors
    /// [`ProposalError::BadField`] for the first field that is wrong.
    pub fn check(&self) -> Result<(), ProposalError> {
        check_id("agent", &self.agent)?;
        check_id("session", &self.session)?;
        check_id("tool", &self.tool)?;
        if let Some(t) = &self.tenant {
            check_id("tenant", t)?;
        }
        if !self.arguments.is_object() {
            return Err(ProposalError::BadField {
                field: "arguments",
                problem: "must be a JSON object",
            });
        }
        if self.operation == Operation::Complete {
            self.completing()?;
        }
        Ok(())
    }

    /// The arguments of a completion, checked: a prompt's or a resource template's argument
    /// (a tool's arguments are not completed), the template named for a resource only.
    ///
    /// # Errors
    /// [`ProposalError::BadField`] naming what is wrong.
    pub fn completing(&self) -> Result<Completing, ProposalError> {
        let bad = |problem| ProposalError::BadField {
            field: "arguments",
            problem,
        };
        let c: Completing = serde_json::from_value(self.arguments.clone())
            .map_err(|_| bad("of a completion must be `argument`, `value`, `context` and, for a resource template, `uri`"))?;
        check_id("argument", &c.argument)?;
        match (self.kind, &c.uri) {
            (ActionKind::Prompt, None) => Ok(c),
            (ActionKind::Resource, Some(uri)) if !uri.is_empty() => Ok(c),
            (ActionKind::Resource, _) => Err(bad(
                "of a resource template's completion name its template as `uri`",
            )),
            (ActionKind::Prompt, Some(_)) => Err(bad("of a prompt's completion name no `uri`")),
            (ActionKind::Tool, _) => Err(ProposalError::BadField {
                field: "operation",
                problem: "`complete` is for prompts and resource templates, not tools",
            }),
        }
    }
}

fn check_id(field: &'static str, value: &str) -> Result<(), ProposalError> {
    if value.is_empty() {
        return Err(ProposalError::BadField {
            field,
            problem: "is empty",
        });
    }
    if value.len() > MAX_ID_BYTES {
        return Err(ProposalError::BadField {
            field,
            problem: "is longer than 256 bytes",
        });
    }
    if value.chars().any(char::is_control) {
        return Err(ProposalError::BadField {
            field,
            problem: "contains control characters",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_minimal_proposal() {
        let p = Proposal::from_json_slice(br#"{"agent":"a","session":"s","tool":"t"}"#).unwrap();
        assert_eq!(p.arguments, Value::Object(Map::new()));
        assert_eq!(p.tenant, None);
    }

    #[test]
    fn refuses_unknown_fields_and_bad_shapes() {
        let e = Proposal::from_json_slice(br#"{"agent":"a","session":"s","tool":"t","grant":"x"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `grant`"), "{e}");
        let e =
            Proposal::from_json_slice(br#"{"agent":"a","session":"s","tool":"t","arguments":[1]}"#)
                .unwrap_err();
        assert_eq!(
            e.to_string(),
            "proposal field `arguments` must be a JSON object"
        );
        let e = Proposal::from_json_slice(br#"{"agent":"","session":"s","tool":"t"}"#).unwrap_err();
        assert_eq!(e.to_string(), "proposal field `agent` is empty");
        let e =
            Proposal::from_json_slice(b"{\"agent\":\"a\\u0000\",\"session\":\"s\",\"tool\":\"t\"}")
                .unwrap_err();
        assert_eq!(
            e.to_string(),
            "proposal field `agent` contains control characters"
        );
    }

    #[test]
    fn a_completion_names_a_prompts_or_a_templates_argument() {
        let p = Proposal::from_json_slice(
            br#"{"agent":"a","session":"s","tool":"u.p","kind":"prompt","operation":"complete",
                "arguments":{"argument":"city","value":"Par","context":{"country":"FR"}}}"#,
        )
        .unwrap();
        let c = p.completing().unwrap();
        assert_eq!(
            c.values(),
            serde_json::json!({"city": "Par", "country": "FR"})
        );
        assert_eq!(c.to_arguments(), p.arguments);
        let bad = |kind: &str, args: &str| {
            let text = format!(
                r#"{{"agent":"a","session":"s","tool":"u.p","kind":"{kind}","operation":"complete","arguments":{args}}}"#
            );
            Proposal::from_json_slice(text.as_bytes())
                .unwrap_err()
                .to_string()
        };
        assert!(bad("tool", r#"{"argument":"x","value":""}"#).contains("`operation`"));
        assert!(bad("resource", r#"{"argument":"x","value":""}"#).contains("`uri`"));
        assert!(
            bad("prompt", r#"{"uri":"f:///{x}","argument":"x","value":""}"#).contains("no `uri`")
        );
        assert!(bad("prompt", r#"{"argument":"x","value":"","extra":1}"#)
            .contains("`argument`, `value`"));
        assert!(bad("prompt", r#"{"argument":"","value":""}"#).contains("`argument` is empty"));
        // A template is expanded with the values it has, up to the first it lacks (or filled).
        let t = |uri: &str, value: &str| Completing {
            uri: Some(uri.into()),
            argument: "b".into(),
            value: value.into(),
            context: [("a".to_owned(), "x/y".to_owned())].into(),
        };
        assert_eq!(
            t("f:///{a}/{b}", "c").expand_template(None).unwrap(),
            "f:///x/y/c"
        );
        assert_eq!(
            t("f:///{c}/{b}", "q").expand_template(None).unwrap(),
            "f:///"
        );
        assert_eq!(
            t("f:///{c}/{b}/z", "q").expand_template(Some("_")).unwrap(),
            "f:///_/q/z"
        );
        for odd in [
            "f:///{+a}",
            "f:///{a,b}",
            "f:///{a",
            "f:///a}",
            "f:///{}",
            "f:///{a*}",
        ] {
            assert_eq!(t(odd, "q").expand_template(Some("_")), None, "{odd}");
        }
        assert_eq!(
            c.expand_template(None),
            None,
            "a prompt's completion has no template"
        );
        // A use is unchanged by the field's default: it is not written out.
        let use_ = Proposal::from_json_slice(br#"{"agent":"a","session":"s","tool":"t"}"#).unwrap();
        assert!(!serde_json::to_string(&use_).unwrap().contains("operation"));
    }

    #[test]
    fn refuses_huge_and_deep_input_without_panicking() {
        let huge = vec![b' '; MAX_PROPOSAL_BYTES + 1];
        assert!(matches!(
            Proposal::from_json_slice(&huge),
            Err(ProposalError::TooLarge { .. })
        ));
        let mut deep = String::from(r#"{"agent":"a","session":"s","tool":"t","arguments":{"x":"#);
        deep.push_str(&"[".repeat(100_000));
        let e = Proposal::from_json_slice(deep.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("recursion limit"), "{e}");
    }

    #[test]
    fn refuses_arrays_and_empty_input() {
        let e = Proposal::from_json_slice(br#"["a","s","t",{},null]"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "proposal is not valid: expected a JSON object"
        );
        let e = Proposal::from_json_slice(b"  ").unwrap_err();
        assert_eq!(e.to_string(), "proposal is not valid: empty input");
    }

    #[test]
    fn refuses_truncated_input() {
        let e = Proposal::from_json_slice(br#"{"agent":"a","sess"#).unwrap_err();
        assert!(e.to_string().contains("EOF"), "{e}");
    }
}
