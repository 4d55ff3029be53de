//! The policy set, indexed by action and principal: which parts of which policies apply to a
//! call, and which of them depend on its context (the rest is cached).

use super::schema::*;
use super::*;

/// The compiled Cedar side of a Governor.
#[derive(Debug)]
pub struct CedarIndex {
    /// The schema generated from the manifest.
    pub schema: Schema,
    /// Every entity (agents, tools, tenants, zones, tiers), built once.
    pub entities: Entities,
    /// For each tool: the policies that can apply to it, minus those pinned to one agent.
    pub(super) per_action: HashMap<String, ActionPolicies>,
    /// For each agent with policies pinned to it (`principal == Agent::"x"`): those policies.
    pub(super) per_agent: HashMap<String, Policies>,
    /// Effect of every policy, by id.
    pub(super) effects: HashMap<String, Effect>,
    /// Every policy, for the unindexed baseline (benchmarks).
    pub all: PolicySet,
    /// How many policies.
    pub policy_count: usize,
    /// Every agent: its uid and cache indices.
    pub(super) agents: HashMap<String, AgentEntry>,
    /// Class index by tenant, zone and trust rank (a few entries: read without touching the
    /// per-agent map, so a decision costs the same with 10 agents or 10,000).
    pub(super) classes: HashMap<String, HashMap<String, [u32; 4]>>,
    /// How many policies are compiled for native evaluation (the rest always run in Cedar).
    pub native_count: usize,
    /// Results of context-free policy parts, by (tool index, class or agent index, by agent).
    // INVARIANT (static cache soundness): only policies whose outcome depends on nothing but
    // the tool and the agent's class (or the agent itself, for `by_agent`) are cached, and the
    // cache lives and dies with this index, i.e. with one manifest version.
    pub(super) static_cache: RwLock<HashMap<(u32, u32, bool), Arc<Part>>>,
    /// (`Action::"<tool>"`, `Tool::"<tool>"`) for every tool.
    pub(super) tool_uids: HashMap<String, (EntityUid, EntityUid)>,
    pub(super) authorizer: Authorizer,
}

/// One agent, as the index knows it.
#[derive(Debug)]
pub(super) struct AgentEntry {
    /// `Agent::"<id>"`, built once (parsing a uid costs a Cedar parse).
    pub(super) uid: EntityUid,
    /// Its index (cache key).
    pub(super) idx: u32,
    /// The index of its class (tenant, zone, trust).
    pub(super) class: u32,
}

/// A set of policies, in Cedar's form and, where every one of them compiled, in native form.
#[derive(Debug)]
pub(super) struct Policies {
    pub(super) cedar: PolicySet,
    pub(super) native: Vec<Arc<Compiled>>,
    /// Some policy of the set did not compile: the set is always evaluated by Cedar.
    pub(super) needs_cedar: bool,
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
    pub(super) fn add(
        &mut self,
        p: &Policy,
        compiled: Option<&Arc<Compiled>>,
    ) -> Result<(), CedarError> {
        if self.cedar.policy(p.id()).is_none() {
            self.cedar.add(p.clone()).map_err(|e| cedar_err("")(&e))?;
            match compiled {
                Some(c) => self.native.push(Arc::clone(c)),
                None => self.needs_cedar = true,
            }
        }
        Ok(())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.cedar.policies().next().is_none()
    }

    /// Evaluates the set natively; `None` when Cedar must (a policy did not compile, or a
    /// value the native evaluator leaves to Cedar).
    pub(super) fn evaluate_native(&self, call: &Call<'_>) -> Option<Part> {
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
pub(super) struct ActionPolicies {
    /// Index of the tool (cache key).
    pub(super) idx: u32,
    /// The tool's attributes, as policies see them.
    pub(super) facts: ToolFacts,
    /// Policies that read `context` (or that the analysis cannot classify): evaluated on every
    /// call.
    pub(super) dynamic: Policies,
    /// Only the forbids among `dynamic`.
    pub(super) dynamic_forbids: Policies,
    /// Context-free policies that see only the agent's tenant, zone and trust: evaluated once
    /// per (tool, class) and cached.
    pub(super) by_class: Policies,
    /// Context-free policies that see the agent's identity (id, owner): cached per (tool,
    /// agent).
    pub(super) by_agent: Policies,
    /// Permits that hold for every request to this action: no `when`/`unless`, principal
    /// unconstrained or `is Agent`, resource unconstrained or `is Tool`.
    pub(super) unconditional_permits: Vec<String>,
}

/// The outcome of one evaluated part of the policies.
#[derive(Debug, Default, Clone)]
pub(super) struct Part {
    pub(super) permits: Vec<String>,
    pub(super) forbids: Vec<String>,
    pub(super) errored_forbids: Vec<String>,
}

impl Part {
    /// The combined outcome: a matching forbid wins, then a forbid that errored (fail closed),
    /// then a matching permit; otherwise no permit. Ids are sorted and deduplicated.
    pub(super) fn into_outcome(self) -> CedarOutcome {
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
pub(super) enum Dependence {
    /// The call's context (arguments, session, hour).
    Context,
    /// The agent's identity.
    Agent,
    /// Only the agent's tenant, zone and trust (and the tool).
    Class,
}

/// Principal attributes that are part of an agent's class.
pub(super) const CLASS_ATTRS: [&str; 4] = ["tenant", "zone", "trust", "trust_rank"];

pub(super) fn dependence(p: &Policy) -> Dependence {
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
pub(super) fn scan_condition(v: &Value, flags: &mut (bool, bool)) {
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
pub(super) fn is_unconditional_permit(p: &Policy) -> bool {
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
impl CedarIndex {
    /// Parses, validates and indexes the policies against the manifest, in these steps: the
    /// schema from the manifest; every policy file parsed, each policy named by its `@id`;
    /// the set validated against the schema (and every entity it names checked against the
    /// manifest); the entities built; the policies indexed by tool and pinned agent; the agents
    /// sorted into classes; the tools' uids.
    ///
    /// # Errors
    /// Every parse and validation problem, with file, line and policy id.
    pub fn build(
        m: &Manifest,
        arg_types: &BTreeMap<String, ArgType>,
        sources: &[PolicySource],
    ) -> Result<Self, Vec<Diagnostic>> {
        let one = |message: String| vec![diag(&m.file, None, "", message)];
        let schema = Schema::from_json_value(schema_json(m, arg_types))
            .map_err(|e| one(format!("cannot build the Cedar schema: {e}")))?;
        let mut diags = Vec::new();
        let (all, origin) = parse(sources, &mut diags);
        validate(m, &schema, &all, &origin, sources, &mut diags);
        if !diags.is_empty() {
            return Err(diags);
        }
        let entities = build_entities(m, &schema)
            .map_err(|e| one(format!("cannot build Cedar entities: {e}")))?;
        let indexed = index_policies(m, &all).map_err(|d| vec![d])?;
        let (agents, classes) = classify_agents(m).map_err(|d| vec![d])?;
        let mut tool_uids = HashMap::with_capacity(m.tools.len());
        for name in m.tools.keys() {
            let both = uid("Action", name).and_then(|a| Ok((a, uid("Tool", name)?)));
            tool_uids.insert(
                name.clone(),
                both.map_err(|e| one(format!("tool `{name}`: {e}")))?,
            );
        }
        Ok(Self {
            schema,
            entities,
            per_action: indexed.per_action,
            per_agent: indexed.per_agent,
            effects: indexed.effects,
            policy_count: all.policies().count(),
            all,
            agents,
            classes,
            native_count: indexed.native_count,
            static_cache: RwLock::new(HashMap::new()),
            tool_uids,
            authorizer: Authorizer::new(),
        })
    }
}

/// A diagnostic at `file`, `line`, `path`.
fn diag(file: &str, line: Option<usize>, path: &str, message: String) -> Diagnostic {
    Diagnostic {
        file: file.to_string(),
        line,
        path: path.to_string(),
        message,
    }
}

/// Where each policy id was defined: file and line.
type Origins = HashMap<String, (String, usize)>;

/// Parses every policy file into one set, each policy named by its `@id` (or `<file>#<n>`);
/// syntax errors, templates and duplicate ids go to `diags`.
fn parse(sources: &[PolicySource], diags: &mut Vec<Diagnostic>) -> (PolicySet, Origins) {
    let mut all = PolicySet::new();
    let mut origin: Origins = HashMap::new();
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
    (all, origin)
}

/// Validates the set against the schema (strict mode) and checks that every entity it names is
/// in the manifest; problems go to `diags`, at the policy's file and line.
fn validate(
    m: &Manifest,
    schema: &Schema,
    all: &PolicySet,
    origin: &Origins,
    sources: &[PolicySource],
    diags: &mut Vec<Diagnostic>,
) {
    let validation = Validator::new(schema.clone()).validate(all, ValidationMode::Strict);
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
    for (id, what) in unknown_entities(m, all) {
        let (file, line) = origin
            .get(&id)
            .map_or((m.file.clone(), None), |(f, l)| (f.clone(), Some(*l)));
        diags.push(diag(&file, line, &format!("policy `{id}`"), what));
    }
}

/// The policies, indexed.
struct Indexed {
    per_action: HashMap<String, ActionPolicies>,
    per_agent: HashMap<String, Policies>,
    effects: HashMap<String, Effect>,
    native_count: usize,
}

/// Indexes every policy: one pinned to an agent under that agent; any other under each tool
/// its action constraint reaches (action groups `tier:<name>` expanded), in the part its
/// dependence says (context, agent identity, agent class).
fn index_policies(m: &Manifest, all: &PolicySet) -> Result<Indexed, Diagnostic> {
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
    let mut indexed = Indexed {
        per_action: names
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
            .collect(),
        per_agent: HashMap::new(),
        effects: HashMap::new(),
        native_count: 0,
    };
    for p in all.policies() {
        indexed.effects.insert(p.id().to_string(), p.effect());
        let compiled = Compiled::compile(p).map(Arc::new);
        indexed.native_count += usize::from(compiled.is_some());
        let compiled = compiled.as_ref();
        let pinned = match p.principal_constraint() {
            PrincipalConstraint::Eq(u) if u.type_name().to_string() == "Agent" => {
                Some(u.id().unescaped().to_string())
            }
            _ => None,
        };
        let result = if let Some(agent) = pinned {
            indexed.per_agent.entry(agent).or_default().add(p, compiled)
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
                if let Some(entry) = indexed.per_action.get_mut(&t) {
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
        result.map_err(|e| diag(&m.file, None, p.id().as_ref(), e.to_string()))?;
    }
    Ok(indexed)
}

/// Agents by id, each with its uid, index and class (tenant, zone, trust); and the class of
/// each (tenant, zone, trust slot).
type Classified = (
    HashMap<String, AgentEntry>,
    HashMap<String, HashMap<String, [u32; 4]>>,
);

/// Sorts the agents into classes: agents of one tenant, zone and trust level see the same
/// context-free policy results.
fn classify_agents(m: &Manifest) -> Result<Classified, Diagnostic> {
    let mut classes: HashMap<(&str, &str, &str), u32> = HashMap::new();
    let mut agents = HashMap::with_capacity(m.agents.len());
    let mut class_of: HashMap<String, HashMap<String, [u32; 4]>> = HashMap::new();
    let mut ids: Vec<&String> = m.agents.keys().collect();
    ids.sort();
    for (i, id) in ids.into_iter().enumerate() {
        let Some(a) = m.agents.get(id) else { continue };
        let uid =
            uid("Agent", id).map_err(|e| diag(&m.file, None, "", format!("agent `{id}`: {e}")))?;
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
    Ok((agents, class_of))
}

/// The agent's trust level as an index into a class slot (0 for intern .. 3 for principal).
pub(super) fn trust_slot(a: &Agent) -> Option<usize> {
    usize::try_from(a.trust.rank() - 1).ok()
}
