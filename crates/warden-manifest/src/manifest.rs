//! The validated manifest: every name resolved, every rate parsed, every argument schema
//! compiled. Built from [`RawManifest`]; all problems are collected, each with its key path and
//! line, rather than stopping at the first.

use crate::lines::LineIndex;
use crate::rate::{parse_duration, parse_rate, Rate};
use crate::raw::{
    Classification, OutputTrust, RawApproval, RawBudget, RawManifest, RawTool, TrustLevel,
};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

/// Largest manifest Warden reads, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// One problem found while loading, pointing at where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file it is in.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Key path (`agents[1].tenant`) or policy id.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: ", self.file)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found while loading a manifest or its policies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    /// The problems, in document order where possible.
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// How calls of a tier are approved (validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approval {
    /// No approval.
    Auto,
    /// No approval inside the daily window (minutes after local midnight, start inclusive,
    /// end exclusive); queued outside it.
    Window {
        /// Start minute, 0..1440.
        start: u32,
        /// End minute, 0..1440.
        end: u32,
        /// The window clock's offset from UTC, seconds.
        utc_offset: i32,
        /// As written.
        text: String,
    },
    /// N approvers of a role.
    Role {
        /// How many.
        approvers: u32,
        /// Which role.
        role: String,
    },
    /// N distinct humans.
    Humans {
        /// How many.
        approvers: u32,
    },
}

impl Approval {
    /// A number that grows with how hard approval is: used to find downgrades.
    #[must_use]
    pub fn strictness(&self) -> u32 {
        match self {
            Approval::Auto => 0,
            Approval::Window { .. } => 1,
            Approval::Role { approvers, .. } => 100u32.saturating_add(*approvers),
            Approval::Humans { approvers } => 200u32.saturating_add(*approvers),
        }
    }
}

impl fmt::Display for Approval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Approval::Auto => f.write_str("automatic"),
            Approval::Window { text, .. } => write!(f, "automatic {text}, queued outside"),
            Approval::Role { approvers, role } => {
                write!(f, "{approvers} approver(s) of role `{role}`")
            }
            Approval::Humans { approvers } => write!(f, "{approvers} distinct human(s)"),
        }
    }
}

/// A risk tier.
#[derive(Debug, Clone)]
pub struct Tier {
    /// Name.
    pub name: String,
    /// Approval mode.
    pub approval: Approval,
    /// Calls per agent per window.
    pub rate: Option<Rate>,
    /// The owner is never the only approver of its calls.
    pub critical: bool,
}

/// What a trust level may do with a tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustMode {
    /// Runs without an approval on account of trust.
    Autonomous,
    /// Runs after the owner approves.
    WithApproval,
    /// Not at all.
    Forbidden,
}

/// An agent.
#[derive(Debug, Clone)]
pub struct Agent {
    /// Id.
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// Owner (lineage root).
    pub owner: String,
    /// Zone.
    pub zone: String,
    /// Trust level.
    pub trust: TrustLevel,
}

/// A tool.
#[derive(Debug)]
pub struct Tool {
    /// Name.
    pub name: String,
    /// Index into [`Manifest::tiers`].
    pub tier: usize,
    /// Allowed zones; `None` for every zone.
    pub zones: Option<BTreeSet<String>>,
    /// Allowed tenants; `None` for every tenant.
    pub tenants: Option<BTreeSet<String>>,
    /// The argument schema as written.
    pub arguments: Value,
    /// The compiled argument validator.
    pub validator: jsonschema::Validator,
    /// Output trust.
    pub output_trust: OutputTrust,
    /// Output classification.
    pub classification: Classification,
    /// Egress hosts.
    pub egress: Vec<String>,
    /// Secret names.
    pub secrets: Vec<String>,
    /// Preview flag.
    pub preview: bool,
    /// What approvers are shown of a call.
    pub preview_template: Option<crate::raw::RawPreview>,
    /// Cost units per call.
    pub cost: u64,
    /// Redaction detectors turned on for it (groups expanded).
    pub redact: BTreeSet<String>,
    /// The most sensitive data its arguments may carry to its egress hosts.
    pub egress_level: Classification,
    /// What a leak leads to.
    pub on_leak: crate::raw::LeakAction,
    /// Whether a call changes something or reaches outside (`docs/ifc.md`).
    pub effects: bool,
    /// Arguments that choose where a call acts.
    pub controlling: BTreeSet<String>,
    /// Controlling arguments that may be looked up for another (`argument → subject`).
    pub lookup: std::collections::BTreeMap<String, String>,
    /// Labels of fields of its structured output.
    pub output_fields: Vec<FieldLabel>,
    /// What it is: a tool, a resource entry (`resources:`) or a prompt (`prompts:`).
    pub kind: warden_core::ActionKind,
    /// A resource entry's URIs (empty for tools and prompts).
    pub uris: Vec<crate::actions::UriPattern>,
}

/// The label of the fields one JSON pointer reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldLabel {
    /// The pointer's segments (unescaped); `*` matches any key or index.
    pub path: Vec<String>,
    /// Their trust.
    pub trust: OutputTrust,
    /// Their classification.
    pub classification: Classification,
}

/// A budget (calls and cost per window).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    /// Calls per window.
    pub calls: Option<Rate>,
    /// Cost units per window.
    pub cost: Option<Rate>,
}

/// A system-level invariant.
#[derive(Debug, Clone)]
pub struct Invariant {
    /// Name.
    pub name: String,
    /// Names of the tools it counts (resolved from tiers, tools and classifications).
    pub tools: BTreeSet<String>,
    /// Calls per window.
    pub calls: Option<Rate>,
    /// Cost per window.
    pub cost: Option<Rate>,
}

/// Circuit-breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breakers {
    /// Identical calls in a row that pause a session.
    pub repeat_pattern: u32,
    /// Failures in a row that open a tool's breaker.
    pub consecutive_failures: u32,
    /// Seconds an open breaker stays open.
    pub cooldown_secs: i64,
    /// Seconds of inactivity after which a session's history is forgotten.
    pub session_ttl_secs: i64,
}

/// A validated manifest.
#[derive(Debug)]
pub struct Manifest {
    /// The file it was read from (for messages).
    pub file: String,
    /// The text it was read from (hashed into the bundle hash).
    pub text: String,
    /// Logical clock.
    pub version: u64,
    /// Tiers, in name order.
    pub tiers: Vec<Tier>,
    /// For each trust level, the mode of each tier (indexed like `tiers`).
    pub trust: HashMap<TrustLevel, Vec<TrustMode>>,
    /// Tenant ids.
    pub tenants: BTreeSet<String>,
    /// Zone ids.
    pub zones: BTreeSet<String>,
    /// Agents by id.
    pub agents: HashMap<String, Agent>,
    /// Tools by name.
    pub tools: HashMap<String, Tool>,
    /// Per-agent budget.
    pub agent_budget: Budget,
    /// Per-tenant budget.
    pub tenant_budget: Budget,
    /// Global budget.
    pub global_budget: Budget,
    /// System-level invariants.
    pub invariants: Vec<Invariant>,
    /// Breakers.
    pub breakers: Breakers,
    /// Policy file patterns, as written.
    pub policies: Vec<String>,
    /// Upstream MCP servers.
    pub upstreams: Vec<crate::upstream::Upstream>,
    /// Where each secret comes from.
    pub secrets: std::collections::BTreeMap<String, crate::upstream::SecretSource>,
    /// Approvers by id.
    pub approvers: std::collections::BTreeMap<String, crate::approvers::ApproverSpec>,
    /// How approval requests behave.
    pub approvals: crate::approvers::ApprovalSettings,
    /// Who must approve replacing this manifest, if anyone.
    pub governance: Option<crate::approvers::Governance>,
    /// Webhooks.
    pub webhooks: Vec<crate::approvers::Webhook>,
    /// Promotion criteria.
    pub promotion: crate::raw::RawPromotion,
    /// Information-flow settings.
    pub flow: crate::raw::RawFlow,
    /// Known destinations of each zone (as written).
    pub destinations: std::collections::BTreeMap<String, Vec<String>>,
    /// The raw form (for `diff` and schema round-trips).
    pub raw: RawManifest,
}

impl Manifest {
    /// Index of the tier called `name`.
    #[must_use]
    pub fn tier_index(&self, name: &str) -> Option<usize> {
        self.tiers.iter().position(|t| t.name == name)
    }
}

pub(crate) struct Collector<'a> {
    file: &'a str,
    lines: LineIndex,
    diagnostics: Vec<Diagnostic>,
}

impl Collector<'_> {
    pub(crate) fn err(&mut self, path: impl Into<String>, message: impl std::fmt::Display) {
        let path = path.into();
        self.diagnostics.push(Diagnostic {
            file: self.file.to_string(),
            line: self.lines.line_of(&path),
            path,
            message: message.to_string(),
        });
    }
}

/// Whether `s` is a valid manifest id (agents, tenants, zones, tiers, roles, approvers).
#[must_use]
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@'))
}

/// What [`valid_id`] requires, for messages.
pub const ID_RULE: &str = "must be 1-128 characters of letters, digits, `-`, `_`, `.`, `:` or `@`";

/// Parses and validates a manifest.
///
/// # Errors
/// [`LoadError`] with every problem found, each with file, line and key path.
pub fn parse_manifest(file: &str, text: &str) -> Result<Manifest, LoadError> {
    let one = |line: Option<usize>, path: String, message: String| LoadError {
        diagnostics: vec![Diagnostic {
            file: file.to_string(),
            line,
            path,
            message,
        }],
    };
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(one(
            None,
            String::new(),
            format!(
                "manifest is {} bytes, more than the {MAX_MANIFEST_BYTES}-byte limit",
                text.len()
            ),
        ));
    }
    // Syntax and depth first, with a parser whose cost stays linear on hostile input.
    if let Err((line, message)) = LineIndex::build(text) {
        return Err(one(line, String::new(), message));
    }
    let de = serde_yaml::Deserializer::from_str(text);
    let raw: RawManifest = match serde_path_to_error::deserialize(de) {
        Ok(raw) => raw,
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let inner = e.into_inner();
            let line = inner.location().map(|l| l.line());
            let line = line.or_else(|| LineIndex::new(text).line_of(&path));
            let message = inner.to_string();
            // serde_yaml appends " at line L column C"; the line is already in front.
            let message = match message.find(" at line ") {
                Some(cut) => message.get(..cut).unwrap_or(&message).to_string(),
                None => message,
            };
            // serde_yaml also prefixes the path, which the diagnostic already shows.
            let message = message
                .strip_prefix(&format!("{path}: "))
                .map_or(message.clone(), str::to_string);
            return Err(one(line, path, message));
        }
    };
    validate(file, text, raw)
}

/// Validates an already-deserialized manifest, one step per section, every problem collected
/// (not only the first).
///
/// # Errors
/// [`LoadError`] with every problem found.
pub fn validate(file: &str, text: &str, raw: RawManifest) -> Result<Manifest, LoadError> {
    let mut c = Collector {
        file,
        lines: LineIndex::new(text),
        diagnostics: Vec::new(),
    };
    // Each step reports into `c`; the diagnostics are sorted by line at the end, so the order
    // of the steps is the order of the manifest's sections, not a priority.
    if raw.version == 0 {
        c.err("version", "must be 1 or more (it is a logical clock)");
    }
    let tiers = validate_tiers(&mut c, &raw);
    let tier_names: HashMap<&str, usize> = tiers
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let trust = validate_trust(&mut c, &raw, &tier_names, tiers.len());
    let tenants = validate_tenants(&mut c, &raw);
    let zones = validate_zones(&mut c, &raw);
    let agents = validate_agents(&mut c, &raw, &tenants, &zones);
    let mut tools = validate_tools(&mut c, &raw, &tier_names, &zones, &tenants);
    crate::actions::validate_resources_and_prompts(
        &mut c,
        &raw,
        &crate::actions::Known {
            tiers: &tier_names,
            zones: &zones,
            tenants: &tenants,
        },
        &mut tools,
    );
    let agent_budget = validate_budget(&mut c, "agent", raw.budgets.agent.as_ref());
    let tenant_budget = validate_budget(&mut c, "tenant", raw.budgets.tenant.as_ref());
    let global_budget = validate_budget(&mut c, "global", raw.budgets.global.as_ref());
    let invariants = validate_invariants(&mut c, &raw, &tier_names, &tools);
    let breakers = validate_breakers(&mut c, &raw);
    validate_policy_paths(&mut c, &raw);
    let (upstreams, secrets) =
        crate::upstream::validate_upstreams(&mut c, &raw.upstreams, &raw.secrets, &raw.pins);
    let (approvers, approvals) =
        crate::approvers::validate(&mut c, &raw.approvers, &raw.approvals, &agents);
    let governance =
        crate::approvers::validate_governance(&mut c, raw.governance.as_ref(), &approvers);
    let webhooks =
        crate::approvers::validate_notifications(&mut c, raw.notifications.as_ref(), &secrets);
    let destinations = validate_flow(&mut c, &raw);

    if !c.diagnostics.is_empty() {
        c.diagnostics.sort_by_key(|d| d.line.unwrap_or(usize::MAX));
        return Err(LoadError {
            diagnostics: c.diagnostics,
        });
    }
    Ok(Manifest {
        file: file.to_string(),
        text: text.to_string(),
        version: raw.version,
        tiers,
        trust,
        tenants,
        zones,
        agents,
        tools,
        agent_budget,
        tenant_budget,
        global_budget,
        invariants,
        breakers,
        policies: raw.policies.clone(),
        upstreams,
        secrets,
        approvers,
        approvals,
        governance,
        webhooks,
        promotion: raw.promotion.clone(),
        flow: raw.flow.clone(),
        destinations,
        raw,
    })
}

/// The most words and identifiers a session may be told to remember.
const MAX_SESSION_MARKS: u32 = 1 << 20;

/// The information-flow settings, and each zone's known destinations.
fn validate_flow(
    c: &mut Collector<'_>,
    raw: &RawManifest,
) -> std::collections::BTreeMap<String, Vec<String>> {
    if raw.flow.session_marks == 0 || raw.flow.session_marks > MAX_SESSION_MARKS {
        c.err(
            "flow.session_marks",
            format!("must be between 1 and {MAX_SESSION_MARKS}"),
        );
    }
    let mut out = std::collections::BTreeMap::new();
    for (i, z) in raw.zones.iter().enumerate() {
        for (j, d) in z.destinations.iter().enumerate() {
            if d.trim().is_empty() || d.len() > 512 {
                c.err(
                    format!("zones[{i}].destinations[{j}]"),
                    "a destination is 1 to 512 characters, not blank",
                );
            }
        }
        out.insert(z.id.clone(), z.destinations.clone());
    }
    out
}

/// A tool's flow labels: its controlling and looked-up arguments name its arguments; its
/// field labels are JSON pointers.
fn validate_tool_flow(
    c: &mut Collector<'_>,
    path: &str,
    t: &RawTool,
) -> Option<(BTreeSet<String>, Vec<FieldLabel>)> {
    let mut ok = true;
    let props = t
        .arguments
        .as_ref()
        .and_then(|a| a.get("properties"))
        .and_then(Value::as_object);
    let names_argument = |c: &mut Collector<'_>, key: String, name: &str| {
        let listed = props.is_some_and(|p| p.contains_key(name));
        if !listed {
            c.err(
                key,
                format!(
                    "`{name}` is not an argument of `{}` (its schema's `properties` must list it)",
                    t.name
                ),
            );
        }
        listed
    };
    let mut controlling = BTreeSet::new();
    for (j, a) in t.controlling.iter().enumerate() {
        ok &= names_argument(c, format!("{path}.controlling[{j}]"), a);
        controlling.insert(a.clone());
    }
    for (a, subject) in &t.lookup {
        ok &= names_argument(c, format!("{path}.lookup.{a}"), a);
        ok &= names_argument(c, format!("{path}.lookup.{a}"), subject);
        if !t.controlling.contains(a) || !t.controlling.contains(subject) || a == subject {
            c.err(
                format!("{path}.lookup.{a}"),
                "both the argument and the one it is looked up for must be distinct and listed in `controlling`",
            );
            ok = false;
        }
    }
    let mut fields = Vec::with_capacity(t.output.fields.len());
    for (j, f) in t.output.fields.iter().enumerate() {
        let Some(rest) = f.path.strip_prefix('/') else {
            c.err(
                format!("{path}.output.fields[{j}].path"),
                format!("`{}` is not a JSON pointer (it starts with `/`)", f.path),
            );
            ok = false;
            continue;
        };
        fields.push(FieldLabel {
            path: rest
                .split('/')
                .map(|seg| seg.replace("~1", "/").replace("~0", "~"))
                .collect(),
            trust: f.trust,
            classification: f.classification.unwrap_or(t.output.classification),
        });
    }
    ok.then_some((controlling, fields))
}

/// The risk tiers: names, approval modes (a window, approvers of a role, distinct humans),
/// rates.
fn validate_tiers(c: &mut Collector<'_>, raw: &RawManifest) -> Vec<Tier> {
    if raw.risk_tiers.is_empty() {
        c.err("risk_tiers", "at least one risk tier is required");
    }
    let mut tiers = Vec::new();
    for (name, t) in &raw.risk_tiers {
        let path = format!("risk_tiers.{name}");
        if !valid_id(name) {
            c.err(&path, format!("tier name `{name}` {ID_RULE}"));
        }
        let approval = match &t.approval {
            RawApproval::Auto => Approval::Auto,
            RawApproval::Window { window, utc_offset } => {
                let offset = match utc_offset.as_deref().map(parse_offset).transpose() {
                    Ok(o) => o.unwrap_or(0),
                    Err(e) => {
                        c.err(format!("{path}.approval.utc_offset"), e);
                        0
                    }
                };
                match parse_window(window) {
                    Ok((start, end)) => Approval::Window {
                        start,
                        end,
                        utc_offset: offset,
                        text: format!("{window} UTC{}", utc_offset.as_deref().unwrap_or("+00:00")),
                    },
                    Err(e) => {
                        c.err(format!("{path}.approval.window"), e);
                        Approval::Auto
                    }
                }
            }
            RawApproval::Role { approvers, role } => {
                if *approvers == 0 || *approvers > 100 {
                    c.err(
                        format!("{path}.approval.approvers"),
                        "must be between 1 and 100",
                    );
                }
                if !valid_id(role) {
                    c.err(
                        format!("{path}.approval.role"),
                        format!("role `{role}` {ID_RULE}"),
                    );
                }
                Approval::Role {
                    approvers: *approvers,
                    role: role.clone(),
                }
            }
            RawApproval::Humans { approvers } => {
                if *approvers == 0 || *approvers > 100 {
                    c.err(
                        format!("{path}.approval.approvers"),
                        "must be between 1 and 100",
                    );
                }
                Approval::Humans {
                    approvers: *approvers,
                }
            }
        };
        let rate = match t.rate.as_deref().map(parse_rate).transpose() {
            Ok(r) => r,
            Err(e) => {
                c.err(format!("{path}.rate"), e);
                None
            }
        };
        tiers.push(Tier {
            name: name.clone(),
            approval,
            rate,
            critical: t.critical,
        });
    }
    tiers
}

/// The trust levels: each lists the tiers it runs on its own and those it runs with approval.
fn validate_trust(
    c: &mut Collector<'_>,
    raw: &RawManifest,
    tier_names: &HashMap<&str, usize>,
    tier_count: usize,
) -> HashMap<TrustLevel, Vec<TrustMode>> {
    let mut trust = HashMap::new();
    for level in TrustLevel::ALL {
        let path = format!("trust.{}", level.as_str());
        let Some(rule) = raw.trust.get(&level) else {
            c.err(
                "trust",
                format!(
                    "level `{}` is missing; list the tiers it may run (possibly none)",
                    level.as_str()
                ),
            );
            continue;
        };
        let mut modes = vec![TrustMode::Forbidden; tier_count];
        for (list, mode, key) in [
            (&rule.autonomous, TrustMode::Autonomous, "autonomous"),
            (
                &rule.with_approval,
                TrustMode::WithApproval,
                "with_approval",
            ),
        ] {
            for (i, name) in list.iter().enumerate() {
                match tier_names.get(name.as_str()) {
                    Some(&t) => match modes.get_mut(t) {
                        Some(slot) if *slot != TrustMode::Forbidden => c.err(
                            format!("{path}.{key}[{i}]"),
                            format!("tier `{name}` is listed twice for this level"),
                        ),
                        Some(slot) => *slot = mode,
                        None => {}
                    },
                    None => c.err(
                        format!("{path}.{key}[{i}]"),
                        format!("unknown tier `{name}`{}", known(tier_names.keys())),
                    ),
                }
            }
        }
        trust.insert(level, modes);
    }
    trust
}

/// The tenants: valid, distinct ids.
fn validate_tenants(c: &mut Collector<'_>, raw: &RawManifest) -> BTreeSet<String> {
    let mut tenants = BTreeSet::new();
    for (i, t) in raw.tenants.iter().enumerate() {
        if !valid_id(&t.id) {
            c.err(
                format!("tenants[{i}].id"),
                format!("tenant id `{}` {ID_RULE}", t.id),
            );
        }
        if !tenants.insert(t.id.clone()) {
            c.err(
                format!("tenants[{i}].id"),
                format!("duplicate tenant `{}`", t.id),
            );
        }
    }
    tenants
}

/// The zones: valid, distinct ids (`*` is not one).
fn validate_zones(c: &mut Collector<'_>, raw: &RawManifest) -> BTreeSet<String> {
    let mut zones = BTreeSet::new();
    for (i, z) in raw.zones.iter().enumerate() {
        if !valid_id(&z.id) || z.id == "*" {
            c.err(
                format!("zones[{i}].id"),
                format!("zone id `{}` {ID_RULE}", z.id),
            );
        }
        if !zones.insert(z.id.clone()) {
            c.err(
                format!("zones[{i}].id"),
                format!("duplicate zone `{}`", z.id),
            );
        }
    }
    zones
}

/// The agents: valid, distinct ids, in a listed tenant and zone, each paired with a human.
fn validate_agents(
    c: &mut Collector<'_>,
    raw: &RawManifest,
    tenants: &BTreeSet<String>,
    zones: &BTreeSet<String>,
) -> HashMap<String, Agent> {
    let mut agents = HashMap::new();
    for (i, a) in raw.agents.iter().enumerate() {
        let path = format!("agents[{i}]");
        if !valid_id(&a.id) {
            c.err(
                format!("{path}.id"),
                format!("agent id `{}` {ID_RULE}", a.id),
            );
        }
        if !tenants.contains(&a.tenant) {
            c.err(
                format!("{path}.tenant"),
                format!("unknown tenant `{}`{}", a.tenant, known(tenants.iter())),
            );
        }
        if !zones.contains(&a.zone) {
            c.err(
                format!("{path}.zone"),
                format!("unknown zone `{}`{}", a.zone, known(zones.iter())),
            );
        }
        if a.owner.trim().is_empty() || a.owner.chars().any(char::is_control) {
            c.err(
                format!("{path}.owner"),
                "must name the human this agent is paired with",
            );
        }
        let agent = Agent {
            id: a.id.clone(),
            tenant: a.tenant.clone(),
            owner: a.owner.clone(),
            zone: a.zone.clone(),
            trust: a.trust,
        };
        if agents.insert(a.id.clone(), agent).is_some() {
            c.err(format!("{path}.id"), format!("duplicate agent `{}`", a.id));
        }
    }
    agents
}

/// The tools, each by [`validate_tool`]; names distinct.
fn validate_tools(
    c: &mut Collector<'_>,
    raw: &RawManifest,
    tier_names: &HashMap<&str, usize>,
    zones: &BTreeSet<String>,
    tenants: &BTreeSet<String>,
) -> HashMap<String, Tool> {
    let mut tools = HashMap::new();
    for (i, t) in raw.tools.iter().enumerate() {
        let path = format!("tools[{i}]");
        if let Some(tool) = validate_tool(c, &path, t, tier_names, zones, tenants) {
            if tools.insert(t.name.clone(), tool).is_some() {
                c.err(
                    format!("{path}.name"),
                    format!("duplicate tool `{}`", t.name),
                );
            }
        }
    }
    tools
}

/// One budget (`budgets.<key>`): its call and cost rates.
fn validate_budget(c: &mut Collector<'_>, key: &str, b: Option<&RawBudget>) -> Budget {
    let Some(b) = b else {
        return Budget::default();
    };
    let mut parse = |field: &str, v: &Option<String>| match v.as_deref().map(parse_rate).transpose()
    {
        Ok(r) => r,
        Err(e) => {
            c.err(format!("budgets.{key}.{field}"), e);
            None
        }
    };
    Budget {
        calls: parse("calls", &b.calls),
        cost: parse("cost", &b.cost),
    }
}

/// The system-level invariants: each selects tools (by tier, name or classification) and caps
/// their calls or cost.
fn validate_invariants(
    c: &mut Collector<'_>,
    raw: &RawManifest,
    tier_names: &HashMap<&str, usize>,
    tools: &HashMap<String, Tool>,
) -> Vec<Invariant> {
    let mut invariants = Vec::new();
    let mut invariant_names = HashSet::new();
    for (i, inv) in raw.invariants.iter().enumerate() {
        let path = format!("invariants[{i}]");
        if !valid_id(&inv.name) {
            c.err(
                format!("{path}.name"),
                format!("invariant name `{}` {ID_RULE}", inv.name),
            );
        }
        if !invariant_names.insert(inv.name.clone()) {
            c.err(
                format!("{path}.name"),
                format!("duplicate invariant `{}`", inv.name),
            );
        }
        let mut selected = BTreeSet::new();
        for (j, tier) in inv.tiers.iter().enumerate() {
            match tier_names.get(tier.as_str()) {
                Some(&ti) => selected.extend(
                    tools
                        .iter()
                        .filter(|(_, t)| t.tier == ti)
                        .map(|(n, _)| n.clone()),
                ),
                None => c.err(
                    format!("{path}.tiers[{j}]"),
                    format!("unknown tier `{tier}`{}", known(tier_names.keys())),
                ),
            }
        }
        for (j, tool) in inv.tools.iter().enumerate() {
            if tools.contains_key(tool) {
                selected.insert(tool.clone());
            } else {
                c.err(
                    format!("{path}.tools[{j}]"),
                    format!("unknown tool `{tool}`"),
                );
            }
        }
        for class in &inv.classifications {
            selected.extend(
                tools
                    .iter()
                    .filter(|(_, t)| t.classification == *class)
                    .map(|(n, _)| n.clone()),
            );
        }
        if inv.tiers.is_empty() && inv.tools.is_empty() && inv.classifications.is_empty() {
            c.err(
                &path,
                "select tools with at least one of `tiers`, `tools`, `classifications`",
            );
        }
        let mut parse =
            |field: &str, v: &Option<String>| match v.as_deref().map(parse_rate).transpose() {
                Ok(r) => r,
                Err(e) => {
                    c.err(format!("{path}.{field}"), e);
                    None
                }
            };
        let calls = parse("calls", &inv.calls);
        let cost = parse("cost", &inv.cost);
        if inv.calls.is_none() && inv.cost.is_none() {
            c.err(&path, "give a cap: `calls`, `cost` or both");
        }
        invariants.push(Invariant {
            name: inv.name.clone(),
            tools: selected,
            calls,
            cost,
        });
    }
    invariants
}

/// The breakers: loop detection, consecutive failures, their durations.
fn validate_breakers(c: &mut Collector<'_>, raw: &RawManifest) -> Breakers {
    let b = &raw.breakers;
    if b.repeat_pattern < 2 {
        c.err("breakers.repeat_pattern", "must be 2 or more");
    }
    if b.consecutive_failures == 0 {
        c.err("breakers.consecutive_failures", "must be 1 or more");
    }
    let cooldown_secs = parse_duration(&b.cooldown).unwrap_or_else(|e| {
        c.err("breakers.cooldown", e);
        1
    });
    let session_ttl_secs = parse_duration(&b.session_ttl).unwrap_or_else(|e| {
        c.err("breakers.session_ttl", e);
        1
    });
    Breakers {
        repeat_pattern: b.repeat_pattern,
        consecutive_failures: b.consecutive_failures,
        cooldown_secs,
        session_ttl_secs,
    }
}

/// The policy files: at least one, relative paths inside the manifest's directory, at most
/// one `*` (in the file name).
fn validate_policy_paths(c: &mut Collector<'_>, raw: &RawManifest) {
    if raw.policies.is_empty() {
        c.err(
            "policies",
            "at least one Cedar policy file is required: without a `permit`, nothing is ever allowed",
        );
    }
    for (i, p) in raw.policies.iter().enumerate() {
        if p.trim().is_empty() || p.contains("..") || p.starts_with('/') {
            c.err(
                format!("policies[{i}]"),
                format!("`{p}` must be a relative path inside the manifest's directory"),
            );
        }
        if p.rsplit('/').skip(1).any(|part| part.contains('*')) || p.matches('*').count() > 1 {
            c.err(
                format!("policies[{i}]"),
                format!("`{p}`: only one `*`, in the file name, is supported"),
            );
        }
    }
}

pub(crate) fn validate_tool(
    c: &mut Collector<'_>,
    path: &str,
    t: &RawTool,
    tier_names: &HashMap<&str, usize>,
    zones: &BTreeSet<String>,
    tenants: &BTreeSet<String>,
) -> Option<Tool> {
    let mut ok = true;
    if !valid_tool_name(&t.name) {
        c.err(
            format!("{path}.name"),
            format!(
                "tool name `{}` must be 1-128 characters of letters, digits, `.`, `_`, `-` or `:`, not starting with `tier:`",
                t.name
            ),
        );
        ok = false;
    }
    let tier = match tier_names.get(t.tier.as_str()) {
        Some(&i) => i,
        None => {
            c.err(
                format!("{path}.tier"),
                format!("unknown tier `{}`{}", t.tier, known(tier_names.keys())),
            );
            ok = false;
            0
        }
    };
    if t.zones.is_empty() {
        c.err(
            format!("{path}.zones"),
            "list the zones it may be called from, or `\"*\"` for all",
        );
        ok = false;
    }
    let zone_set = if t.zones.iter().any(|z| z == "*") {
        if t.zones.len() > 1 {
            c.err(
                format!("{path}.zones"),
                "`\"*\"` already means every zone; list it alone",
            );
            ok = false;
        }
        None
    } else {
        for (j, z) in t.zones.iter().enumerate() {
            if !zones.contains(z) {
                c.err(
                    format!("{path}.zones[{j}]"),
                    format!("unknown zone `{z}`{}", known(zones.iter())),
                );
                ok = false;
            }
        }
        Some(t.zones.iter().cloned().collect())
    };
    let tenant_set = match &t.tenants {
        None => None,
        Some(list) if list.is_empty() => {
            c.err(
                format!("{path}.tenants"),
                "an empty list makes the tool unusable; omit `tenants` to allow every tenant",
            );
            ok = false;
            None
        }
        Some(list) => {
            for (j, tn) in list.iter().enumerate() {
                if !tenants.contains(tn) {
                    c.err(
                        format!("{path}.tenants[{j}]"),
                        format!("unknown tenant `{tn}`{}", known(tenants.iter())),
                    );
                    ok = false;
                }
            }
            Some(list.iter().cloned().collect())
        }
    };
    let arguments = t
        .arguments
        .clone()
        .unwrap_or_else(|| serde_json::json!({"type": "object", "additionalProperties": false}));
    if arguments.get("type").and_then(Value::as_str) != Some("object") {
        c.err(
            format!("{path}.arguments"),
            "the argument schema's root must have `type: object`",
        );
        ok = false;
    }
    let validator = match jsonschema::options()
        .with_pattern_options(jsonschema::PatternOptions::regex())
        .build(&arguments)
    {
        Ok(v) => Some(v),
        Err(e) => {
            let at = e.schema_path().to_string();
            c.err(
                format!("{path}.arguments"),
                format!(
                    "not a usable JSON Schema ({e}{})",
                    if at.is_empty() {
                        String::new()
                    } else {
                        format!(" at `{at}`")
                    }
                ),
            );
            None
        }
    };
    for (j, s) in t.secrets.iter().enumerate() {
        let valid = !s.is_empty()
            && s.len() <= 128
            && s.chars()
                .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_')
            && !s.starts_with(|ch: char| ch.is_ascii_digit());
        if !valid {
            c.err(
                format!("{path}.secrets[{j}]"),
                format!("secret name `{s}` must be UPPER_SNAKE_CASE (it names a secret, never holds one)"),
            );
            ok = false;
        }
    }
    for (j, h) in t.egress.iter().enumerate() {
        let host = h.strip_prefix("*.").unwrap_or(h);
        let (name, port) = match host.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        };
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '.')
            && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
        if !valid {
            c.err(
                format!("{path}.egress[{j}]"),
                format!(
                    "`{h}` is not a host name (`api.example.com`, `*.example.com`, `host:443`)"
                ),
            );
            ok = false;
        }
    }
    let redact = crate::upstream::validate_detectors(c, path, &t.redact);
    let flow = validate_tool_flow(c, path, t);
    let validator = validator?;
    let (controlling, output_fields) = flow?;
    if !ok {
        return None;
    }
    Some(Tool {
        name: t.name.clone(),
        tier,
        zones: zone_set,
        tenants: tenant_set,
        arguments,
        validator,
        output_trust: t.output.trust,
        classification: t.output.classification,
        egress: t.egress.clone(),
        secrets: t.secrets.clone(),
        preview: t.preview,
        preview_template: t.preview_template.clone(),
        cost: t.cost,
        redact,
        egress_level: t.egress_level.unwrap_or(Classification::Public),
        on_leak: t.on_leak.unwrap_or_default(),
        effects: t.effects,
        controlling,
        lookup: t.lookup.clone(),
        output_fields,
        kind: warden_core::ActionKind::Tool,
        uris: Vec::new(),
    })
}

fn valid_tool_name(s: &str) -> bool {
    // INVARIANT (no action aliasing): `tier:` names Cedar's tier action groups; a tool of that
    // name would be confused with a group in the policy index.
    !s.starts_with("tier:")
        && !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

pub(crate) fn known<I, S>(names: I) -> String
where
    I: Iterator<Item = S>,
    S: AsRef<str>,
{
    let mut v: Vec<String> = names.map(|s| format!("`{}`", s.as_ref())).collect();
    v.sort();
    if v.is_empty() {
        " (none are defined)".to_string()
    } else {
        format!(" (known: {})", v.join(", "))
    }
}

/// Parses `HH:MM-HH:MM` into minutes after midnight.
fn parse_window(text: &str) -> Result<(u32, u32), String> {
    let (a, b) = text
        .split_once('-')
        .ok_or_else(|| format!("`{text}` is not a window; write it like `08:00-22:00`"))?;
    let start =
        parse_hhmm(a.trim()).ok_or_else(|| format!("`{a}` in `{text}` is not a time `HH:MM`"))?;
    let end =
        parse_hhmm(b.trim()).ok_or_else(|| format!("`{b}` in `{text}` is not a time `HH:MM`"))?;
    if start == end {
        return Err(format!("`{text}` is empty; use `mode: auto` for always"));
    }
    Ok((start, end))
}

fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let h: u32 = h.parse().ok()?;
    let m: u32 = m.parse().ok()?;
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// Parses `+HH:MM` / `-HH:MM` into seconds.
fn parse_offset(text: &str) -> Result<i32, String> {
    let err = || format!("`{text}` is not a UTC offset; write it like `+02:00`");
    let (sign, rest) = match text.split_at_checked(1) {
        Some(("+", rest)) => (1, rest),
        Some(("-", rest)) => (-1, rest),
        _ => return Err(err()),
    };
    let minutes = parse_hhmm(rest).ok_or_else(err)?;
    if minutes > 14 * 60 {
        return Err(err());
    }
    let secs = i32::try_from(minutes).map_err(|_| err())? * 60;
    Ok(sign * secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_offsets() {
        assert_eq!(parse_window("08:00-22:00").unwrap(), (480, 1320));
        assert_eq!(parse_window("22:00-06:30").unwrap(), (1320, 390));
        assert!(parse_window("8-22").unwrap_err().contains("not a time"));
        assert!(parse_window("08:00-08:00").unwrap_err().contains("empty"));
        assert_eq!(parse_offset("+02:00").unwrap(), 7200);
        assert_eq!(parse_offset("-05:30").unwrap(), -19800);
        assert!(parse_offset("02:00").is_err());
        assert!(parse_offset("+15:00").is_err());
    }
}
