//! A native evaluator for the Cedar policy shapes Warden's policies are written in.
//!
//! Cedar's interpreter costs a few microseconds per call before it evaluates anything (building
//! the request and its context record) and about half a microsecond to several per policy. Most
//! policies that must run on every call are small: a scope, then comparisons, `like`, `has`,
//! `in`, set tests and boolean connectives over the agent's, the tool's and the call's
//! attributes. This module compiles such a policy, at load, from Cedar's own JSON form (the EST)
//! into a tree it evaluates directly against the call's arguments, without building a Cedar
//! request.
//!
//! It is an optimisation, never an authority:
//! - a policy with any construct outside the supported grammar is not compiled, and every set
//!   holding it is evaluated by Cedar;
//! - at run time, a value the evaluator is not certain to treat exactly as Cedar would (set or
//!   record equality, an attribute of an entity other than the call's own, a non-integral
//!   number, ...) stops native evaluation of that set ([`Stop::Unsupported`]) and Cedar
//!   evaluates it instead;
//! - where Cedar reports an evaluation error (a missing optional argument read without `has`),
//!   the evaluator reports one too ([`Stop::Error`]), so an erroring forbid still denies.
//!
//! `tests/index.rs` checks it against Cedar evaluating every policy, on random policies and
//! calls, and checks that the native path was the one taken.

use crate::cedar::ArgType;
use cedar_policy::{ActionConstraint, Effect, EntityUid, Policy, PrincipalConstraint};
use serde_json::{Map, Value};
use warden_manifest::manifest::Agent;

/// Why native evaluation of a policy stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Cedar would report an evaluation error for this policy.
    Error,
    /// The evaluator cannot be sure to agree with Cedar here: let Cedar evaluate.
    Unsupported,
}

/// An entity named in a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ent {
    ty: String,
    id: String,
}

impl Ent {
    fn from_uid(u: &EntityUid) -> Self {
        Ent {
            ty: u.type_name().to_string(),
            id: u.id().unescaped().to_string(),
        }
    }

    fn as_ref(&self) -> EntRef<'_> {
        EntRef {
            ty: &self.ty,
            id: &self.id,
        }
    }
}

/// A principal or resource scope constraint.
#[derive(Debug)]
enum Scope {
    Any,
    Is(String),
    Eq(Ent),
    In(Ent),
    IsIn(String, Ent),
}

/// An action scope constraint.
#[derive(Debug)]
enum ActionScope {
    Any,
    Eq(Ent),
    In(Vec<Ent>),
}

#[derive(Debug, Clone, Copy)]
enum Var {
    Principal,
    Action,
    Resource,
    Context,
}

#[derive(Debug, Clone, Copy)]
enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
}

/// A literal value.
#[derive(Debug)]
enum Lit {
    Bool(bool),
    Long(i64),
    Str(String),
    Ent(Ent),
    Set(Vec<Lit>),
}

/// A compiled `like` pattern: literal runs separated by wildcards.
#[derive(Debug)]
struct Pattern {
    /// The literal runs, in order (empty runs between adjacent wildcards are dropped).
    parts: Vec<String>,
    /// Whether the pattern starts with a wildcard.
    open_start: bool,
    /// Whether the pattern ends with a wildcard.
    open_end: bool,
}

impl Pattern {
    fn compile(elems: &[Value]) -> Option<Self> {
        let mut parts: Vec<String> = Vec::new();
        let mut current = String::new();
        let mut open_start = false;
        let mut open_end = false;
        let mut first = true;
        for e in elems {
            if e.as_str() == Some("Wildcard") {
                if first {
                    open_start = true;
                }
                if !current.is_empty() {
                    parts.push(std::mem::take(&mut current));
                }
                open_end = true;
            } else {
                current.push_str(e.get("Literal")?.as_str()?);
                open_end = false;
            }
            first = false;
        }
        if !current.is_empty() || parts.is_empty() {
            parts.push(current);
        }
        Some(Pattern {
            parts,
            open_start,
            open_end,
        })
    }

    /// Whether `text` matches: `*` stands for any sequence of characters, everything else for
    /// itself. Literal runs are matched leftmost-first between a fixed prefix and suffix, which
    /// is exact for a pattern whose only special element is `*`.
    fn matches(&self, text: &str) -> bool {
        let n = self.parts.len();
        let mut rest = text;
        for (i, part) in self.parts.iter().enumerate() {
            let is_first = i == 0;
            let is_last = i + 1 == n;
            if is_first && !self.open_start {
                if is_last && !self.open_end {
                    return rest == part;
                }
                match rest.strip_prefix(part.as_str()) {
                    Some(r) => rest = r,
                    None => return false,
                }
            } else if is_last && !self.open_end {
                return rest.ends_with(part.as_str());
            } else {
                match rest.find(part.as_str()) {
                    Some(at) => rest = rest.get(at + part.len()..).unwrap_or_default(),
                    None => return false,
                }
            }
        }
        true
    }
}

/// A compiled condition expression.
#[derive(Debug)]
enum Expr {
    Lit(Lit),
    Var(Var),
    Attr(Box<Expr>, String),
    Has(Box<Expr>, String),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Eq(Box<Expr>, Box<Expr>),
    Ne(Box<Expr>, Box<Expr>),
    Cmp(Cmp, Box<Expr>, Box<Expr>),
    Like(Box<Expr>, Pattern),
    In(Box<Expr>, Box<Expr>),
    Contains(Box<Expr>, Box<Expr>),
    ContainsAll(Box<Expr>, Box<Expr>),
    ContainsAny(Box<Expr>, Box<Expr>),
    IsEmpty(Box<Expr>),
    Set(Vec<Expr>),
    If(Box<Expr>, Box<Expr>, Box<Expr>),
    Is(Box<Expr>, String, Option<Box<Expr>>),
}

/// Deepest expression compiled; deeper ones are left to Cedar.
const MAX_DEPTH: usize = 64;

fn compile_lit(v: &Value) -> Option<Lit> {
    match v {
        Value::Bool(b) => Some(Lit::Bool(*b)),
        Value::Number(n) => n.as_i64().map(Lit::Long),
        Value::String(s) => Some(Lit::Str(s.clone())),
        Value::Array(items) => items
            .iter()
            .map(compile_lit)
            .collect::<Option<Vec<_>>>()
            .map(Lit::Set),
        Value::Object(o) => {
            let e = o.get("__entity")?;
            if o.len() != 1 {
                return None;
            }
            Some(Lit::Ent(Ent {
                ty: e.get("type")?.as_str()?.to_string(),
                id: e.get("id")?.as_str()?.to_string(),
            }))
        }
        Value::Null => None,
    }
}

fn compile_expr(v: &Value, depth: usize) -> Option<Expr> {
    if depth > MAX_DEPTH {
        return None;
    }
    let o = v.as_object()?;
    if o.len() != 1 {
        return None;
    }
    let (key, body) = o.iter().next()?;
    let sub =
        |k: &str| -> Option<Box<Expr>> { Some(Box::new(compile_expr(body.get(k)?, depth + 1)?)) };
    let pair = || -> Option<(Box<Expr>, Box<Expr>)> { Some((sub("left")?, sub("right")?)) };
    let binary = |make: fn(Box<Expr>, Box<Expr>) -> Expr| -> Option<Expr> {
        pair().map(|(l, r)| make(l, r))
    };
    let attr = || -> Option<(Box<Expr>, String)> {
        Some((sub("left")?, body.get("attr")?.as_str()?.to_string()))
    };
    Some(match key.as_str() {
        "Value" => Expr::Lit(compile_lit(body)?),
        "Var" => Expr::Var(match body.as_str()? {
            "principal" => Var::Principal,
            "action" => Var::Action,
            "resource" => Var::Resource,
            "context" => Var::Context,
            _ => return None,
        }),
        "." => {
            let (l, a) = attr()?;
            Expr::Attr(l, a)
        }
        "has" => {
            let (l, a) = attr()?;
            Expr::Has(l, a)
        }
        "!" => Expr::Not(sub("arg")?),
        "neg" => {
            // Only a negated integer literal (how `-5` is written).
            match compile_expr(body.get("arg")?, depth + 1)? {
                Expr::Lit(Lit::Long(n)) => Expr::Lit(Lit::Long(n.checked_neg()?)),
                _ => return None,
            }
        }
        "&&" => binary(Expr::And)?,
        "||" => binary(Expr::Or)?,
        "==" => binary(Expr::Eq)?,
        "!=" => binary(Expr::Ne)?,
        "<" | "<=" | ">" | ">=" => {
            let (l, r) = pair()?;
            let op = match key.as_str() {
                "<" => Cmp::Lt,
                "<=" => Cmp::Le,
                ">" => Cmp::Gt,
                _ => Cmp::Ge,
            };
            Expr::Cmp(op, l, r)
        }
        "like" => Expr::Like(
            sub("left")?,
            Pattern::compile(body.get("pattern")?.as_array()?)?,
        ),
        "in" => binary(Expr::In)?,
        "contains" => binary(Expr::Contains)?,
        "containsAll" => binary(Expr::ContainsAll)?,
        "containsAny" => binary(Expr::ContainsAny)?,
        "isEmpty" => Expr::IsEmpty(sub("arg")?),
        "Set" => Expr::Set(
            body.as_array()?
                .iter()
                .map(|x| compile_expr(x, depth + 1))
                .collect::<Option<Vec<_>>>()?,
        ),
        "if-then-else" => Expr::If(sub("if")?, sub("then")?, sub("else")?),
        "is" => {
            let ty = body.get("entity_type")?.as_str()?.to_string();
            let within = match body.get("in") {
                Some(x) => Some(Box::new(compile_expr(x, depth + 1)?)),
                None => None,
            };
            Expr::Is(sub("left")?, ty, within)
        }
        _ => return None,
    })
}

/// A policy compiled for native evaluation.
#[derive(Debug)]
pub(crate) struct Compiled {
    /// The policy id.
    pub(crate) id: String,
    /// Permit or forbid.
    pub(crate) effect: Effect,
    principal: Scope,
    action: ActionScope,
    resource: Scope,
    /// The `when` (true) and `unless` (false) bodies, in order.
    conditions: Vec<(bool, Expr)>,
}

impl Compiled {
    /// Compiles `p`, or `None` when any part of it is outside the supported grammar.
    pub(crate) fn compile(p: &Policy) -> Option<Self> {
        let scope = |c: PrincipalConstraint| match c {
            PrincipalConstraint::Any => Scope::Any,
            PrincipalConstraint::Is(t) => Scope::Is(t.to_string()),
            PrincipalConstraint::Eq(u) => Scope::Eq(Ent::from_uid(&u)),
            PrincipalConstraint::In(u) => Scope::In(Ent::from_uid(&u)),
            PrincipalConstraint::IsIn(t, u) => Scope::IsIn(t.to_string(), Ent::from_uid(&u)),
        };
        let resource = match p.resource_constraint() {
            cedar_policy::ResourceConstraint::Any => Scope::Any,
            cedar_policy::ResourceConstraint::Is(t) => Scope::Is(t.to_string()),
            cedar_policy::ResourceConstraint::Eq(u) => Scope::Eq(Ent::from_uid(&u)),
            cedar_policy::ResourceConstraint::In(u) => Scope::In(Ent::from_uid(&u)),
            cedar_policy::ResourceConstraint::IsIn(t, u) => {
                Scope::IsIn(t.to_string(), Ent::from_uid(&u))
            }
        };
        let action = match p.action_constraint() {
            ActionConstraint::Any => ActionScope::Any,
            ActionConstraint::Eq(u) => ActionScope::Eq(Ent::from_uid(&u)),
            ActionConstraint::In(us) => ActionScope::In(us.iter().map(Ent::from_uid).collect()),
        };
        let json = p.to_json().ok()?;
        let mut conditions = Vec::new();
        for c in json.get("conditions")?.as_array()? {
            let when = match c.get("kind")?.as_str()? {
                "when" => true,
                "unless" => false,
                _ => return None,
            };
            conditions.push((when, compile_expr(c.get("body")?, 0)?));
        }
        Some(Compiled {
            id: p.id().to_string(),
            effect: p.effect(),
            principal: scope(p.principal_constraint()),
            action,
            resource,
            conditions,
        })
    }

    /// Whether the policy is satisfied by `call`.
    pub(crate) fn satisfied(&self, call: &Call<'_>) -> Result<bool, Stop> {
        let principal = call.principal();
        let resource = call.resource();
        let action = call.action();
        let scope_holds = |s: &Scope, e: EntRef<'_>| -> Result<bool, Stop> {
            Ok(match s {
                Scope::Any => true,
                Scope::Is(t) => e.ty == t,
                Scope::Eq(u) => e == u.as_ref(),
                Scope::In(u) => call.within(e, u.as_ref())?,
                Scope::IsIn(t, u) => e.ty == t && call.within(e, u.as_ref())?,
            })
        };
        if !scope_holds(&self.principal, principal)? || !scope_holds(&self.resource, resource)? {
            return Ok(false);
        }
        let action_holds = match &self.action {
            ActionScope::Any => true,
            ActionScope::Eq(u) => action == u.as_ref(),
            ActionScope::In(us) => {
                let mut any = false;
                for u in us {
                    if call.within(action, u.as_ref())? {
                        any = true;
                        break;
                    }
                }
                any
            }
        };
        if !action_holds {
            return Ok(false);
        }
        for (when, body) in &self.conditions {
            if call.eval(body)?.boolean()? != *when {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The tool attributes Cedar sees.
#[derive(Debug, Clone, Default)]
pub(crate) struct ToolFacts {
    pub(crate) name: String,
    pub(crate) tier: String,
    /// `tier:<tier>`, the action group.
    pub(crate) group: String,
    pub(crate) classification: String,
    pub(crate) output_trust: String,
    pub(crate) preview: bool,
    pub(crate) cost: i64,
}

/// One call, as the native evaluator sees it.
pub(crate) struct Call<'a> {
    /// The agent, as the manifest has it (its Cedar attributes are read from it).
    pub(crate) agent: &'a Agent,
    pub(crate) tool: &'a ToolFacts,
    pub(crate) arguments: &'a Value,
    pub(crate) arg_type: Option<&'a ArgType>,
    pub(crate) session: &'a str,
    pub(crate) hour: i64,
    pub(crate) flow: crate::cedar::FlowFacts<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EntRef<'a> {
    ty: &'a str,
    id: &'a str,
}

/// A value during evaluation.
#[derive(Debug, Clone)]
enum V<'a> {
    Bool(bool),
    Long(i64),
    Str(&'a str),
    Ent(EntRef<'a>),
    Set(Vec<V<'a>>),
    /// A record of arguments: the JSON object and the attributes its type declares.
    Args(&'a Map<String, Value>, &'a [(String, ArgType, bool)]),
    /// The context record.
    Context,
}

impl V<'_> {
    fn boolean(&self) -> Result<bool, Stop> {
        match self {
            V::Bool(b) => Ok(*b),
            _ => Err(Stop::Unsupported),
        }
    }

    /// Cedar's `==` on the values this evaluator compares: values of different types are
    /// unequal; sets and records are left to Cedar.
    fn equals(&self, other: &V<'_>) -> Result<bool, Stop> {
        Ok(match (self, other) {
            (V::Bool(a), V::Bool(b)) => a == b,
            (V::Long(a), V::Long(b)) => a == b,
            (V::Str(a), V::Str(b)) => a == b,
            (V::Ent(a), V::Ent(b)) => a.ty == b.ty && a.id == b.id,
            (V::Set(_) | V::Args(..) | V::Context, _)
            | (_, V::Set(_) | V::Args(..) | V::Context) => return Err(Stop::Unsupported),
            _ => false,
        })
    }

    fn set(self) -> Result<Vec<Self>, Stop> {
        match self {
            V::Set(items) => Ok(items),
            _ => Err(Stop::Unsupported),
        }
    }
}

/// An argument value as the Cedar type `t` projects it.
fn argument<'a>(t: &'a ArgType, v: &'a Value) -> Result<V<'a>, Stop> {
    match (t, v) {
        (ArgType::String, Value::String(s)) => Ok(V::Str(s)),
        (ArgType::Bool, Value::Bool(b)) => Ok(V::Bool(*b)),
        // Integral floats are left to Cedar (the projection converts them).
        (ArgType::Long, Value::Number(n)) => n.as_i64().map(V::Long).ok_or(Stop::Unsupported),
        (ArgType::Set(t), Value::Array(items)) => items
            .iter()
            .map(|x| argument(t, x))
            .collect::<Result<Vec<_>, _>>()
            .map(V::Set),
        (ArgType::Record(attrs), Value::Object(o)) => Ok(V::Args(o, attrs)),
        _ => Err(Stop::Unsupported),
    }
}

fn literal(l: &Lit) -> V<'_> {
    match l {
        Lit::Bool(b) => V::Bool(*b),
        Lit::Long(n) => V::Long(*n),
        Lit::Str(s) => V::Str(s),
        Lit::Ent(e) => V::Ent(e.as_ref()),
        Lit::Set(items) => V::Set(items.iter().map(literal).collect()),
    }
}

const AGENT_ATTRS: [&str; 6] = ["id", "tenant", "zone", "trust", "trust_rank", "owner"];
const TOOL_ATTRS: [&str; 6] = [
    "name",
    "tier",
    "classification",
    "output_trust",
    "preview",
    "cost",
];

impl<'a> Call<'a> {
    fn principal(&self) -> EntRef<'a> {
        EntRef {
            ty: "Agent",
            id: &self.agent.id,
        }
    }

    fn resource(&self) -> EntRef<'a> {
        EntRef {
            ty: "Tool",
            id: &self.tool.name,
        }
    }

    fn action(&self) -> EntRef<'a> {
        EntRef {
            ty: "Action",
            id: &self.tool.name,
        }
    }

    /// Cedar's `in` between two entities: equal, or `target` is an ancestor of `e`. Only the
    /// call's own entities and the parentless ones (tenants, zones, tiers) are known here.
    fn within(&self, e: EntRef<'_>, target: EntRef<'_>) -> Result<bool, Stop> {
        if e == target {
            return Ok(true);
        }
        if e == self.principal() {
            return Ok((target.ty == "Tenant" && target.id == self.agent.tenant)
                || (target.ty == "Zone" && target.id == self.agent.zone));
        }
        if e == self.resource() {
            return Ok(target.ty == "Tier" && target.id == self.tool.tier);
        }
        if e == self.action() {
            return Ok(target.ty == "Action" && target.id == self.tool.group);
        }
        if matches!(e.ty, "Tenant" | "Zone" | "Tier") {
            return Ok(false);
        }
        Err(Stop::Unsupported)
    }

    fn args_record(&self) -> Result<V<'a>, Stop> {
        match (self.arg_type, self.arguments) {
            (Some(t @ ArgType::Record(_)), v) => argument(t, v),
            (None, _) => Ok(V::Args(empty_map(), &[])),
            _ => Err(Stop::Unsupported),
        }
    }

    fn get_attr(&self, on: V<'a>, attr: &str) -> Result<V<'a>, Stop> {
        match on {
            V::Ent(e) if e == self.principal() => {
                let a = self.agent;
                Ok(match attr {
                    "id" => V::Str(&a.id),
                    "tenant" => V::Str(&a.tenant),
                    "zone" => V::Str(&a.zone),
                    "trust" => V::Str(a.trust.as_str()),
                    "trust_rank" => V::Long(a.trust.rank()),
                    "owner" => V::Str(&a.owner),
                    _ => return Err(Stop::Unsupported),
                })
            }
            V::Ent(e) if e == self.resource() => {
                let t = self.tool;
                Ok(match attr {
                    "name" => V::Str(&t.name),
                    "tier" => V::Str(&t.tier),
                    "classification" => V::Str(&t.classification),
                    "output_trust" => V::Str(&t.output_trust),
                    "preview" => V::Bool(t.preview),
                    "cost" => V::Long(t.cost),
                    _ => return Err(Stop::Unsupported),
                })
            }
            V::Context => match attr {
                "arguments" => self.args_record(),
                "session" => Ok(V::Str(self.session)),
                "hour" => Ok(V::Long(self.hour)),
                "args_tainted" => Ok(V::Set(
                    self.flow.tainted.iter().map(|t| V::Str(t)).collect(),
                )),
                "read_untrusted" => Ok(V::Bool(self.flow.read_untrusted)),
                "session_classification" => Ok(V::Str(self.flow.classification)),
                _ => Err(Stop::Unsupported),
            },
            V::Args(obj, attrs) => {
                let Some((_, t, _)) = attrs.iter().find(|(n, _, _)| n == attr) else {
                    return Err(Stop::Unsupported);
                };
                match obj.get(attr) {
                    Some(v) => argument(t, v),
                    // INVARIANT (fail-closed): reading an absent optional argument is an error
                    // in Cedar, and so here: an erroring forbid still denies.
                    None => Err(Stop::Error),
                }
            }
            _ => Err(Stop::Unsupported),
        }
    }

    fn has_attr(&self, on: &V<'a>, attr: &str) -> Result<bool, Stop> {
        match on {
            V::Ent(e) if *e == self.principal() => Ok(AGENT_ATTRS.contains(&attr)),
            V::Ent(e) if *e == self.resource() => Ok(TOOL_ATTRS.contains(&attr)),
            V::Context => Ok(matches!(
                attr,
                "arguments"
                    | "session"
                    | "hour"
                    | "args_tainted"
                    | "read_untrusted"
                    | "session_classification"
            )),
            // Only declared attributes are projected into Cedar's record.
            V::Args(obj, attrs) => {
                Ok(attrs.iter().any(|(n, _, _)| n == attr) && obj.contains_key(attr))
            }
            _ => Err(Stop::Unsupported),
        }
    }

    fn eval(&self, e: &'a Expr) -> Result<V<'a>, Stop> {
        Ok(match e {
            Expr::Lit(l) => literal(l),
            Expr::Var(Var::Principal) => V::Ent(self.principal()),
            Expr::Var(Var::Action) => V::Ent(self.action()),
            Expr::Var(Var::Resource) => V::Ent(self.resource()),
            Expr::Var(Var::Context) => V::Context,
            Expr::Attr(on, attr) => {
                let on = self.eval(on)?;
                self.get_attr(on, attr)?
            }
            Expr::Has(on, attr) => {
                let on = self.eval(on)?;
                V::Bool(self.has_attr(&on, attr)?)
            }
            Expr::Not(x) => V::Bool(!self.eval(x)?.boolean()?),
            Expr::And(l, r) => V::Bool(self.eval(l)?.boolean()? && self.eval(r)?.boolean()?),
            Expr::Or(l, r) => V::Bool(self.eval(l)?.boolean()? || self.eval(r)?.boolean()?),
            Expr::Eq(l, r) => V::Bool(self.eval(l)?.equals(&self.eval(r)?)?),
            Expr::Ne(l, r) => V::Bool(!self.eval(l)?.equals(&self.eval(r)?)?),
            Expr::Cmp(op, l, r) => match (self.eval(l)?, self.eval(r)?) {
                (V::Long(a), V::Long(b)) => V::Bool(match op {
                    Cmp::Lt => a < b,
                    Cmp::Le => a <= b,
                    Cmp::Gt => a > b,
                    Cmp::Ge => a >= b,
                }),
                _ => return Err(Stop::Unsupported),
            },
            Expr::Like(x, pattern) => match self.eval(x)? {
                V::Str(s) => V::Bool(pattern.matches(s)),
                _ => return Err(Stop::Unsupported),
            },
            Expr::In(l, r) => {
                let V::Ent(e) = self.eval(l)? else {
                    return Err(Stop::Unsupported);
                };
                match self.eval(r)? {
                    V::Ent(target) => V::Bool(self.within(e, target)?),
                    V::Set(items) => {
                        let mut any = false;
                        for item in items {
                            let V::Ent(target) = item else {
                                return Err(Stop::Unsupported);
                            };
                            if self.within(e, target)? {
                                any = true;
                            }
                        }
                        V::Bool(any)
                    }
                    _ => return Err(Stop::Unsupported),
                }
            }
            Expr::Contains(l, r) => {
                let items = self.eval(l)?.set()?;
                let needle = self.eval(r)?;
                V::Bool(contains(&items, &needle)?)
            }
            Expr::ContainsAll(l, r) => {
                let items = self.eval(l)?.set()?;
                let wanted = self.eval(r)?.set()?;
                let mut all = true;
                for w in &wanted {
                    all &= contains(&items, w)?;
                }
                V::Bool(all)
            }
            Expr::ContainsAny(l, r) => {
                let items = self.eval(l)?.set()?;
                let wanted = self.eval(r)?.set()?;
                let mut any = false;
                for w in &wanted {
                    any |= contains(&items, w)?;
                }
                V::Bool(any)
            }
            Expr::IsEmpty(x) => V::Bool(self.eval(x)?.set()?.is_empty()),
            Expr::Set(items) => V::Set(
                items
                    .iter()
                    .map(|x| self.eval(x))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Expr::If(c, t, f) => {
                if self.eval(c)?.boolean()? {
                    self.eval(t)?
                } else {
                    self.eval(f)?
                }
            }
            Expr::Is(x, ty, within) => {
                let V::Ent(e) = self.eval(x)? else {
                    return Err(Stop::Unsupported);
                };
                if e.ty != ty {
                    V::Bool(false)
                } else {
                    match within {
                        None => V::Bool(true),
                        Some(w) => match self.eval(w)? {
                            V::Ent(target) => V::Bool(self.within(e, target)?),
                            _ => return Err(Stop::Unsupported),
                        },
                    }
                }
            }
        })
    }
}

/// Whether `items` holds a value equal to `needle` (every element compared, so that a value
/// Cedar would compare differently stops native evaluation whatever its position).
fn contains(items: &[V<'_>], needle: &V<'_>) -> Result<bool, Stop> {
    let mut found = false;
    for item in items {
        found |= item.equals(needle)?;
    }
    Ok(found)
}

fn empty_map() -> &'static Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Map::new)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]

    use super::*;
    use serde_json::json;

    fn pattern(p: &str) -> Pattern {
        let mut elems = Vec::new();
        for (i, lit) in p.split('*').enumerate() {
            if i > 0 {
                elems.push(json!("Wildcard"));
            }
            if !lit.is_empty() {
                elems.push(json!({ "Literal": lit }));
            }
        }
        Pattern::compile(&elems).unwrap()
    }

    #[test]
    fn like_matches_as_a_glob_with_star_only() {
        let cases = [
            ("acme/*", "acme/x", true),
            ("acme/*", "acme/", true),
            ("acme/*", "acm", false),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "acb", false),
            ("*ab", "abab", true),
            ("*ab", "aba", false),
            ("ab*ab", "ab", false),
            ("ab*ab", "abab", true),
            ("a**b", "ab", true),
            ("*.ssh/*", "/home/x/.ssh/id", true),
            ("é*ü", "éxü", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ];
        for (p, text, want) in cases {
            assert_eq!(pattern(p).matches(text), want, "{p:?} on {text:?}");
        }
    }

    #[test]
    fn constructs_outside_the_grammar_are_not_compiled() {
        // Arithmetic is left to Cedar (overflow is an error there).
        let set: cedar_policy::PolicySet =
            "permit (principal, action, resource) when { context.hour + 1 > 2 };"
                .parse()
                .unwrap();
        let p = set.policies().next().unwrap();
        assert!(Compiled::compile(p).is_none());
        let set: cedar_policy::PolicySet =
            "permit (principal, action, resource) when { context.hour > -2 && principal has owner };"
                .parse()
                .unwrap();
        let p = set.policies().next().unwrap();
        assert!(Compiled::compile(p).is_some());
    }
}
