//! Cedar: the schema generated from the manifest, the policy set indexed by action and
//! principal, and argument projection into the request context.
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

/// The Cedar type a tool argument is exposed as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgType {
    /// Cedar `String`.
    String,
    /// Cedar `Long`.
    Long,
    /// Cedar `Bool`.
    Bool,
    /// Cedar `Set<T>`.
    Set(Box<ArgType>),
    /// Cedar record: (name, type, required).
    Record(Vec<(String, ArgType, bool)>),
}

impl ArgType {
    /// Maps a JSON Schema to a Cedar type; `None` for what Cedar cannot represent (numbers with
    /// fractions, untyped or union schemas), which is then not exposed to policies.
    #[must_use]
    pub fn from_json_schema(schema: &Value) -> Option<ArgType> {
        match schema.get("type").and_then(Value::as_str)? {
            "string" => Some(ArgType::String),
            "integer" => Some(ArgType::Long),
            "boolean" => Some(ArgType::Bool),
            "array" => {
                let items = schema.get("items")?;
                Some(ArgType::Set(Box::new(ArgType::from_json_schema(items)?)))
            }
            "object" => {
                let required: HashSet<&str> = schema
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let mut attrs = Vec::new();
                if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                    for (name, sub) in props {
                        if let Some(t) = ArgType::from_json_schema(sub) {
                            attrs.push((name.clone(), t, required.contains(name.as_str())));
                        }
                    }
                }
                Some(ArgType::Record(attrs))
            }
            _ => None,
        }
    }

    fn cedar_json(&self) -> Value {
        match self {
            ArgType::String => json!({"type": "String"}),
            ArgType::Long => json!({"type": "Long"}),
            ArgType::Bool => json!({"type": "Boolean"}),
            ArgType::Set(t) => json!({"type": "Set", "element": t.cedar_json()}),
            ArgType::Record(attrs) => {
                let mut m = Map::new();
                for (name, t, required) in attrs {
                    let mut v = t.cedar_json();
                    if let Value::Object(o) = &mut v {
                        o.insert("required".into(), Value::Bool(*required));
                    }
                    m.insert(name.clone(), v);
                }
                json!({"type": "Record", "attributes": m})
            }
        }
    }

    /// Checks, without building anything, that a (schema-valid) value can be projected onto
    /// this type. `decide` runs it on every call, so that whether a call's arguments can be
    /// given to Cedar never depends on whether Cedar happened to need them (cached results).
    ///
    /// # Errors
    /// A message naming the JSON path that does not fit.
    pub fn check(&self, value: &Value, at: &str) -> Result<(), String> {
        match (self, value) {
            (ArgType::String, Value::String(_)) | (ArgType::Bool, Value::Bool(_)) => Ok(()),
            (ArgType::Long, Value::Number(n)) => {
                let fits = n.as_i64().is_some()
                    || n.as_f64()
                        .is_some_and(|f| f.fract() == 0.0 && f.abs() < 9.0e15);
                if fits {
                    Ok(())
                } else {
                    Err(format!("`{at}` does not fit a 64-bit integer"))
                }
            }
            (ArgType::Set(t), Value::Array(items)) => items
                .iter()
                .enumerate()
                .try_for_each(|(i, item)| t.check(item, &format!("{at}/{i}"))),
            (ArgType::Record(attrs), Value::Object(obj)) => {
                for (name, t, required) in attrs {
                    match obj.get(name) {
                        Some(v) => t.check(v, &format!("{at}/{name}"))?,
                        None if *required => return Err(format!("`{at}/{name}` is required")),
                        None => {}
                    }
                }
                Ok(())
            }
            _ => Err(format!(
                "`{}` has an unexpected type",
                if at.is_empty() { "/" } else { at }
            )),
        }
    }

    /// Projects a (schema-valid) argument value onto this type.
    ///
    /// # Errors
    /// A message naming the JSON path that does not fit.
    pub fn project(&self, value: &Value, at: &str) -> Result<RestrictedExpression, String> {
        match (self, value) {
            (ArgType::String, Value::String(s)) => Ok(RestrictedExpression::new_string(s.clone())),
            (ArgType::Long, Value::Number(n)) => {
                let i = n.as_i64().or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                        .map(|f| {
                            #[expect(
                                clippy::cast_possible_truncation,
                                reason = "checked integral and in range above"
                            )]
                            let i = f as i64;
                            i
                        })
                });
                i.map(RestrictedExpression::new_long)
                    .ok_or_else(|| format!("`{at}` does not fit a 64-bit integer"))
            }
            (ArgType::Bool, Value::Bool(b)) => Ok(RestrictedExpression::new_bool(*b)),
            (ArgType::Set(t), Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    out.push(t.project(item, &format!("{at}/{i}"))?);
                }
                Ok(RestrictedExpression::new_set(out))
            }
            (ArgType::Record(attrs), Value::Object(obj)) => {
                let mut pairs = Vec::with_capacity(attrs.len());
                for (name, t, required) in attrs {
                    match obj.get(name) {
                        Some(v) => {
                            pairs.push((name.clone(), t.project(v, &format!("{at}/{name}"))?))
                        }
                        None if *required => return Err(format!("`{at}/{name}` is required")),
                        None => {}
                    }
                }
                RestrictedExpression::new_record(pairs).map_err(|e| format!("`{at}`: {e}"))
            }
            _ => Err(format!(
                "`{}` has an unexpected type",
                if at.is_empty() { "/" } else { at }
            )),
        }
    }
}

fn uid(ty: &str, id: &str) -> Result<EntityUid, String> {
    let ty = EntityTypeName::from_str(ty).map_err(|e| e.to_string())?;
    Ok(EntityUid::from_type_name_and_id(ty, EntityId::new(id)))
}

/// Generates the Cedar schema (JSON form) for a manifest.
#[must_use]
pub fn schema_json(m: &Manifest, arg_types: &BTreeMap<String, ArgType>) -> Value {
    let s = |t: &str| json!({"type": t});
    let agent_attrs = json!({
        "id": s("String"), "tenant": s("String"), "zone": s("String"),
        "trust": s("String"), "trust_rank": s("Long"), "owner": s("String"),
    });
    let tool_attrs = json!({
        "name": s("String"), "tier": s("String"), "classification": s("String"),
        "output_trust": s("String"), "preview": s("Boolean"), "cost": s("Long"),
    });
    let mut actions = Map::new();
    for tier in &m.tiers {
        actions.insert(format!("tier:{}", tier.name), json!({}));
    }
    let mut names: Vec<&String> = m.tools.keys().collect();
    names.sort();
    for name in names {
        let Some(tool) = m.tools.get(name) else {
            continue;
        };
        let tier = m
            .tiers
            .get(tool.tier)
            .map(|t| t.name.as_str())
            .unwrap_or_default();
        let args = arg_types
            .get(name)
            .map_or_else(|| ArgType::Record(vec![]).cedar_json(), ArgType::cedar_json);
        actions.insert(
            name.clone(),
            json!({
                "memberOf": [{"id": format!("tier:{tier}")}],
                "appliesTo": {
                    "principalTypes": ["Agent"],
                    "resourceTypes": ["Tool"],
                    "context": {"type": "Record", "attributes": {
                        "arguments": args,
                        "session": s("String"),
                        "hour": s("Long"),
                    }},
                },
            }),
        );
    }
    json!({"": {
        "entityTypes": {
            "Tenant": {}, "Zone": {}, "Tier": {},
            "Agent": {"memberOfTypes": ["Tenant", "Zone"], "shape": {"type": "Record", "attributes": agent_attrs}},
            "Tool": {"memberOfTypes": ["Tier"], "shape": {"type": "Record", "attributes": tool_attrs}},
        },
        "actions": actions,
    }})
}

/// Byte offset of the first labelled span of a Cedar diagnostic, if any.
fn first_offset(d: &dyn miette::Diagnostic) -> Option<usize> {
    d.labels()?.next().map(|l| l.offset())
}

fn line_at(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .map_or(1, |t| t.bytes().filter(|&b| b == b'\n').count() + 1)
}

/// The compiled Cedar side of a Governor.
#[derive(Debug)]
pub struct CedarIndex {
    /// The schema generated from the manifest.
    pub schema: Schema,
    /// Every entity (agents, tools, tenants, zones, tiers), built once.
    pub entities: Entities,
    /// For each tool: the policies that can apply to it, minus those pinned to one agent.
    per_action: HashMap<String, ActionPolicies>,
    /// For each agent with policies pinned to it (`principal == Agent::"x"`): those policies.
    per_agent: HashMap<String, Policies>,
    /// Effect of every policy, by id.
    effects: HashMap<String, Effect>,
    /// Every policy, for the unindexed baseline (benchmarks).
    pub all: PolicySet,
    /// How many policies.
    pub policy_count: usize,
    /// Every agent: its uid and cache indices.
    agents: HashMap<String, AgentEntry>,
    /// Class index by tenant, zone and trust rank (a few entries: read without touching the
    /// per-agent map, so a decision costs the same with 10 agents or 10,000).
    classes: HashMap<String, HashMap<String, [u32; 4]>>,
    /// How many policies are compiled for native evaluation (the rest always run in Cedar).
    pub native_count: usize,
    /// Results of context-free policy parts, by (tool index, class or agent index, by agent).
    // INVARIANT (static cache soundness): only policies whose outcome depends on nothing but
    // the tool and the agent's class (or the agent itself, for `by_agent`) are cached, and the
    // cache lives and dies with this index, i.e. with one manifest version.
    static_cache: RwLock<HashMap<(u32, u32, bool), Arc<Part>>>,
    /// (`Action::"<tool>"`, `Tool::"<tool>"`) for every tool.
    tool_uids: HashMap<String, (EntityUid, EntityUid)>,
    authorizer: Authorizer,
}

/// One agent, as the index knows it.
#[derive(Debug)]
struct AgentEntry {
    /// `Agent::"<id>"`, built once (parsing a uid costs a Cedar parse).
    uid: EntityUid,
    /// Its index (cache key).
    idx: u32,
    /// The index of its class (tenant, zone, trust).
    class: u32,
}

/// A set of policies, in Cedar's form and, where every one of them compiled, in native form.
#[derive(Debug)]
struct Policies {
    cedar: PolicySet,
    native: Vec<Arc<Compiled>>,
    /// Some policy of the set did not compile: the set is always evaluated by Cedar.
    needs_cedar: bool,
}

impl Default for Policies {
    fn default() -> Self {
        Self {
            cedar: PolicySet::new(),
            native: Vec::new(),
            needs_cedar: false,
        }
    }
}

impl Policies {
    /// Adds `p` (once), with its compiled form if it has one.
    fn add(&mut self, p: &Policy, compiled: Option<&Arc<Compiled>>) -> Result<(), String> {
        if self.cedar.policy(p.id()).is_none() {
            self.cedar.add(p.clone()).map_err(|e| e.to_string())?;
            match compiled {
                Some(c) => self.native.push(Arc::clone(c)),
                None => self.needs_cedar = true,
            }
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.cedar.policies().next().is_none()
    }

    /// Evaluates the set natively; `None` when Cedar must (a policy did not compile, or a
    /// value the native evaluator leaves to Cedar).
    fn evaluate_native(&self, call: &Call<'_>) -> Option<Part> {
        if self.needs_cedar {
            return None;
        }
        let mut permits = Vec::new();
        let mut forbids = Vec::new();
        let mut errored_forbids = Vec::new();
        for c in &self.native {
            match c.satisfied(call) {
                Ok(true) if c.effect == Effect::Permit => permits.push(c.id.clone()),
                Ok(true) => forbids.push(c.id.clone()),
                Ok(false) => {}
                // INVARIANT (fail-closed): a forbid that cannot be evaluated counts as
                // matching (as in `evaluate_part`).
                Err(Stop::Error) if c.effect == Effect::Forbid => {
                    errored_forbids.push(c.id.clone())
                }
                Err(Stop::Error) => {}
                Err(Stop::Unsupported) => return None,
            }
        }
        // As Cedar answers: satisfied forbids deny (and hide the permits); else permits allow.
        if !forbids.is_empty() {
            permits.clear();
        }
        Some(Part {
            permits,
            forbids,
            errored_forbids,
        })
    }
}

/// The policies indexed under one action, split by what their outcome depends on.
#[derive(Debug, Default)]
struct ActionPolicies {
    /// Index of the tool (cache key).
    idx: u32,
    /// The tool's attributes, as policies see them.
    facts: ToolFacts,
    /// Policies that read `context` (or that the analysis cannot classify): evaluated on every
    /// call.
    dynamic: Policies,
    /// Only the forbids among `dynamic`.
    dynamic_forbids: Policies,
    /// Context-free policies that see only the agent's tenant, zone and trust: evaluated once
    /// per (tool, class) and cached.
    by_class: Policies,
    /// Context-free policies that see the agent's identity (id, owner): cached per (tool,
    /// agent).
    by_agent: Policies,
    /// Permits that hold for every request to this action: no `when`/`unless`, principal
    /// unconstrained or `is Agent`, resource unconstrained or `is Tool`.
    unconditional_permits: Vec<String>,
}

/// A Cedar request built on first use, and the call's facts for native evaluation.
struct LazyRequest<'a, F> {
    make: Option<F>,
    request: Option<Request>,
    call: Option<Call<'a>>,
    /// Whether Cedar evaluated any part (tests check the native path is taken).
    used_cedar: bool,
}

impl<F: FnOnce() -> Result<Request, String>> LazyRequest<'_, F> {
    fn get(&mut self) -> Result<&Request, String> {
        if self.request.is_none() {
            let make = self
                .make
                .take()
                .ok_or("the Cedar request could not be built")?;
            self.request = Some(make()?);
        }
        self.request
            .as_ref()
            .ok_or_else(|| "the Cedar request could not be built".to_string())
    }

    /// Evaluates `set`: natively where it can, else in Cedar, building the request only if
    /// the set is not empty.
    fn evaluate(&mut self, index: &CedarIndex, set: &Policies) -> Result<Part, String> {
        if set.is_empty() {
            return Ok(Part::default());
        }
        if let Some(part) = self.call.as_ref().and_then(|c| set.evaluate_native(c)) {
            return Ok(part);
        }
        self.used_cedar = true;
        Ok(index.evaluate_part(self.get()?, &set.cedar))
    }
}

/// The outcome of one evaluated part of the policies.
#[derive(Debug, Default, Clone)]
struct Part {
    permits: Vec<String>,
    forbids: Vec<String>,
    errored_forbids: Vec<String>,
}

impl Part {
    /// The combined outcome: a matching forbid wins, then a forbid that errored (fail closed),
    /// then a matching permit; otherwise no permit. Ids are sorted and deduplicated.
    fn into_outcome(self) -> CedarOutcome {
        let tidy = |mut ids: Vec<String>| {
            ids.sort();
            ids.dedup();
            ids
        };
        if !self.forbids.is_empty() {
            CedarOutcome::Forbid(tidy(self.forbids))
        } else if !self.errored_forbids.is_empty() {
            CedarOutcome::ForbidErrored(tidy(self.errored_forbids))
        } else if !self.permits.is_empty() {
            CedarOutcome::Permit(tidy(self.permits))
        } else {
            CedarOutcome::NoPermit
        }
    }
}

/// What a policy's outcome depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dependence {
    /// The call's context (arguments, session, hour).
    Context,
    /// The agent's identity.
    Agent,
    /// Only the agent's tenant, zone and trust (and the tool).
    Class,
}

/// Principal attributes that are part of an agent's class.
const CLASS_ATTRS: [&str; 4] = ["tenant", "zone", "trust", "trust_rank"];

fn dependence(p: &Policy) -> Dependence {
    let scope_by_class = match p.principal_constraint() {
        PrincipalConstraint::Any => true,
        PrincipalConstraint::Is(t) => t.to_string() == "Agent",
        PrincipalConstraint::In(u) | PrincipalConstraint::IsIn(_, u) => {
            matches!(u.type_name().to_string().as_str(), "Tenant" | "Zone")
        }
        PrincipalConstraint::Eq(_) => false,
    };
    let Ok(json) = p.to_json() else {
        return Dependence::Context;
    };
    let mut flags = (false, !scope_by_class);
    if let Some(conditions) = json.get("conditions") {
        scan_condition(conditions, &mut flags);
    }
    match flags {
        (true, _) => Dependence::Context,
        (false, true) => Dependence::Agent,
        (false, false) => Dependence::Class,
    }
}

/// Sets `flags.0` when the expression reads `context` (or holds a form this analysis does not
/// know), `flags.1` when it reads the principal beyond its class attributes.
fn scan_condition(v: &Value, flags: &mut (bool, bool)) {
    match v {
        Value::Object(o) => {
            if let Some(var) = o.get("Var") {
                match var.as_str() {
                    Some("principal") => flags.1 = true,
                    Some("action" | "resource") => {}
                    _ => flags.0 = true,
                }
                return;
            }
            if o.contains_key("Slot") || o.contains_key("Unknown") {
                flags.0 = true;
                return;
            }
            for key in [".", "has"] {
                if let Some(Value::Object(inner)) = o.get(key) {
                    let on_principal = inner
                        .get("left")
                        .and_then(|l| l.get("Var"))
                        .and_then(Value::as_str)
                        == Some("principal");
                    if on_principal {
                        let attr = inner
                            .get("attr")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        if !CLASS_ATTRS.contains(&attr) {
                            flags.1 = true;
                        }
                        return;
                    }
                }
            }
            for x in o.values() {
                scan_condition(x, flags);
            }
        }
        Value::Array(items) => {
            for x in items {
                scan_condition(x, flags);
            }
        }
        _ => {}
    }
}

/// Whether `p` is a permit that every request to an action it is indexed under satisfies.
fn is_unconditional_permit(p: &Policy) -> bool {
    if p.effect() != Effect::Permit {
        return false;
    }
    let principal_ok = match p.principal_constraint() {
        PrincipalConstraint::Any => true,
        PrincipalConstraint::Is(t) => t.to_string() == "Agent",
        _ => false,
    };
    let resource_ok = match p.resource_constraint() {
        cedar_policy::ResourceConstraint::Any => true,
        cedar_policy::ResourceConstraint::Is(t) => t.to_string() == "Tool",
        _ => false,
    };
    let no_conditions = p
        .to_json()
        .ok()
        .and_then(|v| {
            v.get("conditions")
                .and_then(Value::as_array)
                .map(Vec::is_empty)
        })
        .unwrap_or(false);
    principal_ok && resource_ok && no_conditions
}

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

impl CedarIndex {
    /// Parses, validates and indexes the policies against the manifest.
    ///
    /// # Errors
    /// Every parse and validation problem, with file, line and policy id.
    pub fn build(
        m: &Manifest,
        arg_types: &BTreeMap<String, ArgType>,
        sources: &[PolicySource],
    ) -> Result<Self, Vec<Diagnostic>> {
        let mut diags = Vec::new();
        let diag = |file: &str, line: Option<usize>, path: &str, message: String| Diagnostic {
            file: file.to_string(),
            line,
            path: path.to_string(),
            message,
        };
        let schema = match Schema::from_json_value(schema_json(m, arg_types)) {
            Ok(s) => s,
            Err(e) => {
                return Err(vec![diag(
                    &m.file,
                    None,
                    "",
                    format!("cannot build the Cedar schema: {e}"),
                )]);
            }
        };
        let mut all = PolicySet::new();
        let mut origin: HashMap<String, (String, usize)> = HashMap::new();
        for src in sources {
            let parsed = match PolicySet::from_str(&src.text) {
                Ok(p) => p,
                Err(e) => {
                    let line = first_offset(&e).map(|o| line_at(&src.text, o));
                    diags.push(diag(
                        &src.name,
                        line,
                        "",
                        format!("Cedar syntax error: {e}"),
                    ));
                    continue;
                }
            };
            if parsed.templates().next().is_some() {
                diags.push(diag(
                    &src.name,
                    None,
                    "",
                    "policy templates are not supported".into(),
                ));
                continue;
            }
            let mut policies: Vec<&Policy> = parsed.policies().collect();
            // `from_str` names policies `policy0`, `policy1`, ... in file order.
            policies.sort_by_key(|p| {
                p.id()
                    .to_string()
                    .trim_start_matches("policy")
                    .parse::<usize>()
                    .unwrap_or(usize::MAX)
            });
            for (n, p) in policies.into_iter().enumerate() {
                let id = match p.annotation("id") {
                    Some(id) => id.to_string(),
                    None => format!("{}#{n}", src.name),
                };
                let line = p
                    .annotation("id")
                    .and_then(|a| src.text.find(&format!("\"{a}\"")))
                    .map(|o| line_at(&src.text, o));
                if let Some((file, l)) = origin.get(&id) {
                    diags.push(diag(
                        &src.name,
                        line,
                        &id,
                        format!("duplicate policy id (also at {file}:{l})"),
                    ));
                    continue;
                }
                origin.insert(id.clone(), (src.name.clone(), line.unwrap_or(0)));
                if let Err(e) = all.add(p.new_id(PolicyId::new(&id))) {
                    diags.push(diag(&src.name, line, &id, e.to_string()));
                }
            }
        }
        let validation = Validator::new(schema.clone()).validate(&all, ValidationMode::Strict);
        for e in validation.validation_errors() {
            let id = e.policy_id().to_string();
            let (file, line) = match origin.get(&id) {
                Some((file, _)) => {
                    let text = sources
                        .iter()
                        .find(|s| &s.name == file)
                        .map(|s| s.text.as_str());
                    let line = match (first_offset(e), text) {
                        (Some(o), Some(t)) => Some(line_at(t, o)),
                        _ => origin.get(&id).map(|(_, l)| *l),
                    };
                    (file.clone(), line)
                }
                None => (m.file.clone(), None),
            };
            diags.push(diag(&file, line, &format!("policy `{id}`"), e.to_string()));
        }
        for (id, what) in unknown_entities(m, &all) {
            let (file, line) = origin
                .get(&id)
                .map_or((m.file.clone(), None), |(f, l)| (f.clone(), Some(*l)));
            diags.push(diag(&file, line, &format!("policy `{id}`"), what));
        }
        if !diags.is_empty() {
            return Err(diags);
        }

        let entities = match build_entities(m, &schema) {
            Ok(e) => e,
            Err(e) => {
                return Err(vec![diag(
                    &m.file,
                    None,
                    "",
                    format!("cannot build Cedar entities: {e}"),
                )])
            }
        };

        // Index. Expand action groups (`tier:<name>`) to their tools.
        let tools_by_tier: HashMap<String, Vec<String>> = {
            let mut map: HashMap<String, Vec<String>> = HashMap::new();
            for (name, tool) in &m.tools {
                if let Some(t) = m.tiers.get(tool.tier) {
                    map.entry(format!("tier:{}", t.name))
                        .or_default()
                        .push(name.clone());
                }
            }
            map
        };
        let expand = |u: &EntityUid| -> Vec<String> {
            let id = u.id().unescaped().to_string();
            tools_by_tier.get(&id).cloned().unwrap_or_else(|| vec![id])
        };
        let mut names: Vec<&String> = m.tools.keys().collect();
        names.sort();
        let mut per_action: HashMap<String, ActionPolicies> = names
            .into_iter()
            .enumerate()
            .map(|(i, k)| {
                let idx = u32::try_from(i).unwrap_or(u32::MAX);
                (
                    k.clone(),
                    ActionPolicies {
                        idx,
                        facts: tool_facts(m, k),
                        ..ActionPolicies::default()
                    },
                )
            })
            .collect();
        let mut per_agent: HashMap<String, Policies> = HashMap::new();
        let mut effects = HashMap::new();
        let mut native_count = 0;
        for p in all.policies() {
            effects.insert(p.id().to_string(), p.effect());
            let compiled = Compiled::compile(p).map(Arc::new);
            native_count += usize::from(compiled.is_some());
            let compiled = compiled.as_ref();
            let pinned = match p.principal_constraint() {
                PrincipalConstraint::Eq(u) if u.type_name().to_string() == "Agent" => {
                    Some(u.id().unescaped().to_string())
                }
                _ => None,
            };
            let result = if let Some(agent) = pinned {
                per_agent.entry(agent).or_default().add(p, compiled)
            } else {
                let targets: Vec<String> = match p.action_constraint() {
                    ActionConstraint::Any => m.tools.keys().cloned().collect(),
                    ActionConstraint::Eq(u) => expand(&u),
                    ActionConstraint::In(us) => us.iter().flat_map(expand).collect(),
                };
                let unconditional = is_unconditional_permit(p);
                let dep = dependence(p);
                let mut r = Ok(());
                for t in targets {
                    if let Some(entry) = per_action.get_mut(&t) {
                        match dep {
                            Dependence::Context => {
                                r = r.and(entry.dynamic.add(p, compiled));
                                if p.effect() == Effect::Forbid {
                                    r = r.and(entry.dynamic_forbids.add(p, compiled));
                                }
                            }
                            Dependence::Agent => r = r.and(entry.by_agent.add(p, compiled)),
                            Dependence::Class => r = r.and(entry.by_class.add(p, compiled)),
                        }
                        let id = p.id().to_string();
                        if unconditional && !entry.unconditional_permits.contains(&id) {
                            entry.unconditional_permits.push(id);
                        }
                    }
                }
                r
            };
            if let Err(e) = result {
                return Err(vec![diag(&m.file, None, p.id().as_ref(), e)]);
            }
        }
        let policy_count = all.policies().count();
        let mut classes: HashMap<(&str, &str, &str), u32> = HashMap::new();
        let mut agents = HashMap::with_capacity(m.agents.len());
        let mut class_of: HashMap<String, HashMap<String, [u32; 4]>> = HashMap::new();
        let mut ids: Vec<&String> = m.agents.keys().collect();
        ids.sort();
        for (i, id) in ids.into_iter().enumerate() {
            let Some(a) = m.agents.get(id) else { continue };
            let uid = match uid("Agent", id) {
                Ok(u) => u,
                Err(e) => return Err(vec![diag(&m.file, None, "", format!("agent `{id}`: {e}"))]),
            };
            let next = u32::try_from(classes.len()).unwrap_or(u32::MAX);
            let class = *classes
                .entry((a.tenant.as_str(), a.zone.as_str(), a.trust.as_str()))
                .or_insert(next);
            let slot = class_of
                .entry(a.tenant.clone())
                .or_default()
                .entry(a.zone.clone())
                .or_insert([u32::MAX; 4]);
            if let Some(s) = trust_slot(a).and_then(|k| slot.get_mut(k)) {
                *s = class;
            }
            agents.insert(
                id.clone(),
                AgentEntry {
                    uid,
                    idx: u32::try_from(i).unwrap_or(u32::MAX),
                    class,
                },
            );
        }
        let mut tool_uids = HashMap::with_capacity(m.tools.len());
        for name in m.tools.keys() {
            match (uid("Action", name), uid("Tool", name)) {
                (Ok(a), Ok(r)) => {
                    tool_uids.insert(name.clone(), (a, r));
                }
                (Err(e), _) | (_, Err(e)) => {
                    return Err(vec![diag(&m.file, None, "", format!("tool `{name}`: {e}"))])
                }
            }
        }
        Ok(Self {
            schema,
            entities,
            per_action,
            per_agent,
            effects,
            all,
            policy_count,
            agents,
            classes: class_of,
            native_count,
            static_cache: RwLock::new(HashMap::new()),
            tool_uids,
            authorizer: Authorizer::new(),
        })
    }

    /// Evaluates one part of the policies.
    fn evaluate_part(&self, request: &Request, set: &PolicySet) -> Part {
        let mut part = Part::default();
        if set.policies().next().is_none() {
            return part;
        }
        let response = self.authorizer.is_authorized(request, set, &self.entities);
        let ids = response.diagnostics().reason().map(ToString::to_string);
        match response.decision() {
            CedarDecision::Allow => part.permits.extend(ids),
            CedarDecision::Deny => part.forbids.extend(ids),
        }
        for e in response.diagnostics().errors() {
            let cedar_policy::AuthorizationError::PolicyEvaluationError(e) = e;
            let id = e.policy_id().to_string();
            // INVARIANT (fail-closed): a forbid that cannot be evaluated counts as matching.
            if self.effects.get(&id) != Some(&Effect::Permit) {
                part.errored_forbids.push(id);
            }
        }
        part
    }

    /// A context-free part, from the cache or evaluated and cached; `None` for an empty set.
    fn cached_part<F>(
        &self,
        key: (u32, u32, bool),
        request: &mut LazyRequest<'_, F>,
        set: &Policies,
    ) -> Result<Option<Arc<Part>>, String>
    where
        F: FnOnce() -> Result<Request, String>,
    {
        if set.is_empty() {
            return Ok(None);
        }
        if let Ok(cache) = self.static_cache.read() {
            if let Some(part) = cache.get(&key) {
                return Ok(Some(Arc::clone(part)));
            }
        }
        let part = Arc::new(request.evaluate(self, set)?);
        if let Ok(mut cache) = self.static_cache.write() {
            if cache.len() < STATIC_CACHE_ENTRIES {
                cache.insert(key, Arc::clone(&part));
            }
        }
        Ok(Some(part))
    }

    /// Evaluates the policies that can apply to (`agent`, `tool`) for `request`, in Cedar.
    #[must_use]
    pub fn evaluate(&self, agent: &str, tool: &str, request: &Request) -> CedarOutcome {
        self.evaluate_with(agent, tool, None, || Ok(request.clone()))
            .unwrap_or(CedarOutcome::NoPermit)
    }

    /// Evaluates the policies that can apply to one call the way `decide` does (natively where
    /// it can, else in Cedar), and says whether Cedar had to evaluate any part.
    ///
    /// # Errors
    /// The message of [`CedarIndex::request`], when Cedar was needed and the request could not
    /// be built.
    pub fn evaluate_call(
        &self,
        agent: &str,
        tool: &str,
        facts: CallFacts<'_>,
    ) -> Result<(CedarOutcome, bool), String> {
        let mut used_cedar = false;
        let outcome = self.evaluate_traced(agent, tool, Some(facts), &mut used_cedar, || {
            self.request(
                agent,
                tool,
                facts.arg_type,
                facts.arguments,
                facts.session,
                facts.hour,
            )
        })?;
        Ok((outcome, used_cedar))
    }

    /// Evaluates the policies that can apply to (`agent`, `tool`). With the call's `facts`,
    /// policies compiled for native evaluation run without Cedar; the Cedar request is built
    /// with `make` only if some policy must still be evaluated by Cedar (context-free results
    /// are cached per tool and agent class).
    ///
    /// # Errors
    /// The message of `make`, when the request was needed and could not be built.
    pub fn evaluate_with<F>(
        &self,
        agent: &str,
        tool: &str,
        facts: Option<CallFacts<'_>>,
        make: F,
    ) -> Result<CedarOutcome, String>
    where
        F: FnOnce() -> Result<Request, String>,
    {
        let mut used_cedar = false;
        self.evaluate_traced(agent, tool, facts, &mut used_cedar, make)
    }

    fn evaluate_traced<F>(
        &self,
        agent: &str,
        tool: &str,
        facts: Option<CallFacts<'_>>,
        used_cedar: &mut bool,
        make: F,
    ) -> Result<CedarOutcome, String>
    where
        F: FnOnce() -> Result<Request, String>,
    {
        let action = self.per_action.get(tool);
        let call = match (facts, action) {
            (Some(f), Some(a)) if f.agent.id == agent => Some(Call {
                agent: f.agent,
                tool: &a.facts,
                arguments: f.arguments,
                arg_type: f.arg_type,
                session: f.session,
                hour: f.hour,
            }),
            _ => None,
        };
        let mut request = LazyRequest {
            make: Some(make),
            request: None,
            call,
            used_cedar: false,
        };
        let mut permits: Vec<String> = Vec::new();
        let mut forbids: Vec<String> = Vec::new();
        let mut errored: Vec<String> = Vec::new();
        let mut merge = |part: &Part| {
            permits.extend(part.permits.iter().cloned());
            forbids.extend(part.forbids.iter().cloned());
            errored.extend(part.errored_forbids.iter().cloned());
        };
        if let Some(a) = action {
            // The class from the agent's attributes when they are at hand (no per-agent
            // lookup); the agent's own index only when agent-specific parts exist.
            let class = match facts.filter(|f| f.agent.id == agent) {
                Some(f) => self.class_of(f.agent),
                None => self.agents.get(agent).map(|e| e.class),
            };
            let by_agent_key = if a.by_agent.is_empty() {
                None
            } else {
                self.agents.get(agent).map(|e| e.idx)
            };
            // Context-free parts: cached under their key when there is one.
            for (key, by_agent, set) in [
                (class, false, &a.by_class),
                (by_agent_key, true, &a.by_agent),
            ] {
                match key {
                    Some(k) => {
                        if let Some(part) =
                            self.cached_part((a.idx, k, by_agent), &mut request, set)?
                        {
                            merge(&part);
                        }
                    }
                    None => merge(&request.evaluate(self, set)?),
                }
            }
            // When a permit is known to hold for every request to this action, only the
            // forbids can change the outcome: evaluate just those.
            if a.unconditional_permits.is_empty() {
                merge(&request.evaluate(self, &a.dynamic)?);
            } else {
                merge(&request.evaluate(self, &a.dynamic_forbids)?);
            }
        }
        if let Some(set) = self.per_agent.get(agent) {
            merge(&request.evaluate(self, set)?);
        }
        *used_cedar = request.used_cedar;
        Ok(Part {
            permits,
            forbids,
            errored_forbids: errored,
        }
        .into_outcome())
    }

    /// The class index of `agent` (tenant, zone, trust), if the manifest has that class.
    fn class_of(&self, agent: &Agent) -> Option<u32> {
        let slot = self.classes.get(&agent.tenant)?.get(&agent.zone)?;
        trust_slot(agent)
            .and_then(|k| slot.get(k).copied())
            .filter(|c| *c != u32::MAX)
    }

    /// Builds the Cedar request for one call.
    ///
    /// # Errors
    /// A message when the agent or tool is unknown or the arguments cannot be represented (the
    /// caller denies).
    pub fn request(
        &self,
        agent: &str,
        tool: &str,
        arg_type: Option<&ArgType>,
        arguments: &Value,
        session: &str,
        hour: i64,
    ) -> Result<Request, String> {
        let principal = &self
            .agents
            .get(agent)
            .ok_or_else(|| format!("unknown agent `{agent}`"))?
            .uid;
        let (action, resource) = self
            .tool_uids
            .get(tool)
            .ok_or_else(|| format!("unknown tool `{tool}`"))?;
        let args = match arg_type {
            Some(t) => t.project(arguments, "")?,
            None => RestrictedExpression::new_record(Vec::<(String, RestrictedExpression)>::new())
                .map_err(|e| e.to_string())?,
        };
        let context = Context::from_pairs([
            ("arguments".to_string(), args),
            (
                "session".to_string(),
                RestrictedExpression::new_string(session.to_string()),
            ),
            ("hour".to_string(), RestrictedExpression::new_long(hour)),
        ])
        .map_err(|e| e.to_string())?;
        Request::new(
            principal.clone(),
            action.clone(),
            resource.clone(),
            context,
            None,
        )
        .map_err(|e| e.to_string())
    }

    /// Evaluates the whole policy set, unindexed, in one call: the reference the index must
    /// agree with (differential tests) and the benchmark baseline.
    #[must_use]
    pub fn evaluate_reference(&self, request: &Request) -> CedarOutcome {
        self.evaluate_part(request, &self.all).into_outcome()
    }

    /// Evaluates the whole policy set, unindexed (the benchmark baseline).
    #[must_use]
    pub fn evaluate_unindexed(&self, request: &Request) -> bool {
        self.authorizer
            .is_authorized(request, &self.all, &self.entities)
            .decision()
            == CedarDecision::Allow
    }
}

/// The agent's trust level as an index into a class slot (0 for intern .. 3 for principal).
fn trust_slot(a: &Agent) -> Option<usize> {
    usize::try_from(a.trust.rank() - 1).ok()
}

/// The attributes of tool `name` as policies see them (the same values as its Cedar entity).
fn tool_facts(m: &Manifest, name: &str) -> ToolFacts {
    let Some(t) = m.tools.get(name) else {
        return ToolFacts::default();
    };
    let tier = m
        .tiers
        .get(t.tier)
        .map(|t| t.name.clone())
        .unwrap_or_default();
    ToolFacts {
        name: t.name.clone(),
        group: format!("tier:{tier}"),
        tier,
        classification: t.classification.as_str().into(),
        output_trust: t.output_trust.as_str().into(),
        preview: t.preview,
        cost: i64::try_from(t.cost).unwrap_or(i64::MAX),
    }
}

/// Entities a policy names that the manifest does not have (`Agent::"codr-1"` for `coder-1`):
/// such a policy silently never applies, and a `forbid` that never matches protects nothing, so
/// the bundle is refused. Cedar's validator already refuses unknown actions.
fn unknown_entities(m: &Manifest, all: &PolicySet) -> Vec<(String, String)> {
    let known = |ty: &str, id: &str| match ty {
        "Agent" => m.agents.contains_key(id),
        "Tenant" => m.tenants.iter().any(|t| t.as_str() == id),
        "Zone" => m.zones.iter().any(|z| z.as_str() == id),
        "Tier" => m.tiers.iter().any(|t| t.name == id),
        "Tool" => m.tools.contains_key(id),
        _ => true,
    };
    let mut out = Vec::new();
    for p in all.policies() {
        for u in p.entity_literals() {
            let ty = u.type_name().to_string();
            let id = u.id().unescaped();
            if !known(&ty, id) {
                let effect = match p.effect() {
                    Effect::Forbid => "this forbid would protect nothing",
                    Effect::Permit => "this permit would never apply",
                };
                out.push((
                    p.id().to_string(),
                    format!(
                        "`{ty}::\"{}\"` is not in the manifest, so {effect}; name a {} the \
                         manifest defines",
                        id.escape_debug(),
                        ty.to_lowercase()
                    ),
                ));
            }
        }
    }
    out
}

fn build_entities(m: &Manifest, schema: &Schema) -> Result<Entities, String> {
    let mut out = Vec::with_capacity(m.agents.len() + m.tools.len() + 16);
    for t in &m.tenants {
        out.push(Entity::new_no_attrs(uid("Tenant", t)?, HashSet::new()));
    }
    for z in &m.zones {
        out.push(Entity::new_no_attrs(uid("Zone", z)?, HashSet::new()));
    }
    for t in &m.tiers {
        out.push(Entity::new_no_attrs(uid("Tier", &t.name)?, HashSet::new()));
    }
    for a in m.agents.values() {
        let attrs = HashMap::from([
            (
                "id".to_string(),
                RestrictedExpression::new_string(a.id.clone()),
            ),
            (
                "tenant".to_string(),
                RestrictedExpression::new_string(a.tenant.clone()),
            ),
            (
                "zone".to_string(),
                RestrictedExpression::new_string(a.zone.clone()),
            ),
            (
                "trust".to_string(),
                RestrictedExpression::new_string(a.trust.as_str().into()),
            ),
            (
                "trust_rank".to_string(),
                RestrictedExpression::new_long(a.trust.rank()),
            ),
            (
                "owner".to_string(),
                RestrictedExpression::new_string(a.owner.clone()),
            ),
        ]);
        let parents = HashSet::from([uid("Tenant", &a.tenant)?, uid("Zone", &a.zone)?]);
        out.push(Entity::new(uid("Agent", &a.id)?, attrs, parents).map_err(|e| e.to_string())?);
    }
    // The same facts the native evaluator reads (`tool_facts`): one derivation for both.
    for name in m.tools.keys() {
        let t = tool_facts(m, name);
        let attrs = HashMap::from([
            (
                "name".to_string(),
                RestrictedExpression::new_string(t.name.clone()),
            ),
            (
                "tier".to_string(),
                RestrictedExpression::new_string(t.tier.clone()),
            ),
            (
                "classification".to_string(),
                RestrictedExpression::new_string(t.classification),
            ),
            (
                "output_trust".to_string(),
                RestrictedExpression::new_string(t.output_trust),
            ),
            (
                "preview".to_string(),
                RestrictedExpression::new_bool(t.preview),
            ),
            ("cost".to_string(), RestrictedExpression::new_long(t.cost)),
        ]);
        let parents = HashSet::from([uid("Tier", &t.tier)?]);
        out.push(Entity::new(uid("Tool", &t.name)?, attrs, parents).map_err(|e| e.to_string())?);
    }
    Entities::from_entities(out, Some(schema)).map_err(|e| e.to_string())
}
