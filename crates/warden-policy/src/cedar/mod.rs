//! Cedar: the schema generated from the manifest (`schema`), the policy set indexed by
//! action and principal (`index`), and evaluating a call against it (`evaluate`).
//!
//! Model:
//! - principal `Agent::"<id>"` (attributes `id`, `tenant`, `zone`, `trust`, `trust_rank`,
//!   `owner`), member of `Tenant::"<tenant>"` and `Zone::"<zone>"`;
//! - action `Action::"<tool name>"`, one per tool, member of the action group
//!   `Action::"tier:<tier>"`;
//! - resource `Tool::"<tool name>"` (attributes `name`, `tier`, `classification`, `output_trust`,
//!   `preview`, `cost`), member of `Tier::"<tier>"`;
//! - context `{ arguments: <record typed from the tool's JSON Schema>, session: String,
//!   hour: Long }`.
//!
//! Because every tool is an action and the context is typed per action, Cedar's validator
//! rejects at load a policy that names an unknown tool, attribute or argument.

use crate::native::{Call, Compiled, Stop, ToolFacts};
use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision as CedarDecision, Effect, Entities, Entity,
    EntityId, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, PrincipalConstraint, Request,
    RestrictedExpression, Schema, ValidationMode, Validator,
};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use warden_manifest::manifest::{Agent, Diagnostic, Manifest};

/// Most cached results of context-free policy parts; past it, they are evaluated every time.
const STATIC_CACHE_ENTRIES: usize = 1 << 20;
use std::str::FromStr as _;

/// A Cedar policy file's name and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySource {
    /// Path as shown in messages (relative to the manifest).
    pub name: String,
    /// Cedar text.
    pub text: String,
}

mod evaluate;
mod index;
mod schema;

pub use index::CedarIndex;

/// Why a call could not be put to Cedar (the caller denies: `cedar.context_error`), or a
/// policy or entity could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CedarError {
    /// A number Cedar cannot hold (it has 64-bit integers only).
    #[error("`{0}` does not fit a 64-bit integer")]
    TooLarge(String),
    /// A property the tool's schema requires is missing.
    #[error("`{0}` is required")]
    Required(String),
    /// A value of another type than the tool's schema gives it.
    #[error("`{0}` has an unexpected type")]
    UnexpectedType(String),
    /// The agent is not one the policies know.
    #[error("unknown agent `{0}`")]
    UnknownAgent(String),
    /// The tool is not one the policies know.
    #[error("unknown tool `{0}`")]
    UnknownTool(String),
    /// The request was needed again after it could not be built.
    #[error("the Cedar request could not be built")]
    NoRequest,
    /// Cedar refused a value, context, request, entity or policy: its message.
    #[error("{0}")]
    Cedar(String),
}

/// Cedar's error, as a [`CedarError`] (`at`: the JSON path it concerns, if any).
fn cedar_err(at: &str) -> impl Fn(&dyn std::fmt::Display) -> CedarError + '_ {
    move |e| {
        if at.is_empty() {
            CedarError::Cedar(e.to_string())
        } else {
            CedarError::Cedar(format!("`{at}`: {e}"))
        }
    }
}
pub use schema::{schema_json, ArgType};

/// The facts of one call that policies may read, given to the native evaluator.
#[derive(Debug, Clone, Copy)]
pub struct CallFacts<'a> {
    /// The calling agent, as the manifest has it.
    pub agent: &'a Agent,
    /// The call's arguments (already valid against the tool's schema).
    pub arguments: &'a Value,
    /// The Cedar type of the tool's arguments, if it has one.
    pub arg_type: Option<&'a ArgType>,
    /// The session id.
    pub session: &'a str,
    /// The hour of the day (UTC).
    pub hour: i64,
    /// What the session has read (information flow).
    pub flow: FlowFacts<'a>,
}

/// What a call's session has read, as policies see it in the context: `args_tainted` (the
/// arguments whose value came from untrusted output), `read_untrusted` and
/// `session_classification` (`docs/ifc.md`).
#[derive(Debug, Clone, Copy)]
pub struct FlowFacts<'a> {
    /// Names of the tainted arguments.
    pub tainted: &'a [String],
    /// Whether the session has read untrusted output.
    pub read_untrusted: bool,
    /// The highest classification the session has read.
    pub classification: &'a str,
}

impl Default for FlowFacts<'_> {
    fn default() -> Self {
        FlowFacts {
            tainted: &[],
            read_untrusted: false,
            classification: "public",
        }
    }
}

/// What Cedar concluded for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CedarOutcome {
    /// Some permit matched and no forbid did.
    Permit(Vec<String>),
    /// These forbids matched.
    Forbid(Vec<String>),
    /// No permit matched.
    NoPermit,
    /// These forbids could not be evaluated (fail closed).
    ForbidErrored(Vec<String>),
}
