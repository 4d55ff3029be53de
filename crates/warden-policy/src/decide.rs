//! The Governor and its `decide`.

use crate::cedar::{ArgType, CallFacts, CedarIndex, CedarOutcome, PolicySource};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use warden_core::canonical::{sha256_tagged, to_canonical_string};
use warden_core::state::{
    Charge, ChargeOutcome, HoldKind, HoldScope, Observe, Settle, Settled, StateStore,
};
use warden_core::time::{rfc3339, UnixSeconds, DAY};
use warden_core::{ActionKind, BudgetUse, Decision, Escalation, Operation, Proposal, Verdict};
use warden_manifest::manifest::{Approval, LoadError, Manifest, TrustMode};
use warden_manifest::rate::Rate;
use warden_manifest::raw::FlowAction;

/// The hash decisions cite for a bundle: SHA-256 over the manifest text and every policy file
/// (sorted by name), each length-prefixed, under a domain tag.
#[must_use]
pub fn bundle_hash(manifest_text: &str, policies: &[PolicySource]) -> String {
    let mut parts: Vec<(&str, &str)> = policies
        .iter()
        .map(|p| (p.name.as_str(), p.text.as_str()))
        .collect();
    parts.sort_unstable();
    let mut bytes = Vec::with_capacity(manifest_text.len() + 64);
    bytes.extend_from_slice(b"warden-bundle-v1\n");
    let mut push = |b: &[u8]| {
        bytes.extend_from_slice(&(b.len() as u64).to_be_bytes());
        bytes.extend_from_slice(b);
    };
    push(manifest_text.as_bytes());
    for (name, text) in parts {
        push(name.as_bytes());
        push(text.as_bytes());
    }
    sha256_tagged(&bytes)
}

/// The Governor's decision core for one manifest version: immutable once built, shared by
/// every decision made under that version.
#[derive(Debug)]
pub struct Governor {
    manifest: Manifest,
    policy_hash: String,
    /// Each policy file's name and SHA-256 (what a governance preview compares).
    policy_files: BTreeMap<String, String>,
    arg_types: BTreeMap<String, ArgType>,
    cedar: CedarIndex,
    /// Each zone's known destinations, as marks (`docs/ifc.md`).
    destinations: crate::flow::Destinations,
}

/// The rule a charge enforces, for messages when it is exhausted.
struct Planned {
    rule: ChargeRule,
    rate: Rate,
}

impl Governor {
    /// Builds a Governor from a validated manifest and the text of its policy files.
    ///
    /// # Errors
    /// [`LoadError`] with every Cedar parse and validation problem.
    pub fn new(manifest: Manifest, policies: &[PolicySource]) -> Result<Self, LoadError> {
        let arg_types: BTreeMap<String, ArgType> = manifest
            .tools
            .iter()
            .filter_map(|(n, t)| ArgType::from_json_schema(&t.arguments).map(|a| (n.clone(), a)))
            .collect();
        let cedar = CedarIndex::build(&manifest, &arg_types, policies)
            .map_err(|diagnostics| LoadError { diagnostics })?;
        let policy_hash = bundle_hash(&manifest.text, policies);
        let policy_files = policies
            .iter()
            .map(|p| (p.name.clone(), sha256_tagged(p.text.as_bytes())))
            .collect();
        let destinations = crate::flow::Destinations::new(&manifest.destinations);
        Ok(Self {
            manifest,
            policy_hash,
            policy_files,
            arg_types,
            cedar,
            destinations,
        })
    }

    /// The known destinations of `zone`, as marks.
    #[must_use]
    pub fn destinations(
        &self,
        zone: &str,
    ) -> Option<&std::collections::HashSet<warden_core::flow::Mark>> {
        self.destinations.of(zone)
    }

    /// Records `output` of a call by `agent` in its session's `flow` ([`crate::flow::label`]),
    /// by the manifest's labels for the tool. An unknown tool's output is untrusted and
    /// unclassified beyond the default (nothing about it is known).
    pub fn label_output(
        &self,
        agent: &str,
        flow: &mut warden_core::flow::SessionFlow,
        tool: &str,
        arguments: &serde_json::Value,
        text: &str,
        structured: Option<&serde_json::Value>,
    ) {
        let zone = self.manifest.agents.get(agent).map(|a| a.zone.as_str());
        let known = zone.and_then(|z| self.destinations.of(z));
        let max = usize::try_from(self.manifest.flow.session_marks).unwrap_or(usize::MAX);
        match self.manifest.tools.get(tool) {
            Some(t) => crate::flow::label(
                flow,
                &crate::flow::Output {
                    tool: t,
                    arguments,
                    text,
                    structured,
                },
                known,
                max,
            ),
            // INVARIANT (fail towards stricter): output of a tool the manifest does not
            // describe counts as untrusted.
            None => crate::flow::label_untrusted(flow, tool, text, max),
        }
    }

    /// The manifest this Governor decides under.
    #[must_use]
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The policy-bundle hash decisions cite.
    #[must_use]
    pub fn policy_hash(&self) -> &str {
        &self.policy_hash
    }

    /// Each policy file's name and `sha256:` hash.
    #[must_use]
    pub fn policy_files(&self) -> &BTreeMap<String, String> {
        &self.policy_files
    }

    /// The compiled Cedar side (schema, entities, index).
    #[must_use]
    pub fn cedar(&self) -> &CedarIndex {
        &self.cedar
    }

    /// The Cedar type tool `name`'s arguments are exposed as.
    #[must_use]
    pub fn arg_type(&self, name: &str) -> Option<&ArgType> {
        self.arg_types.get(name)
    }

    /// Whether `agent` may see `tool` in its tool list (seed 003: an agent never sees tools it
    /// could not call): both are in the manifest, the tool is available to the agent's tenant
    /// and zone, and the agent's trust level is not forbidden the tool's tier. Cedar and the
    /// arguments are still checked by [`Governor::decide`] on every call.
    #[must_use]
    pub fn may_see(&self, agent: &str, tool: &str) -> bool {
        self.manifest
            .tools
            .get(tool)
            .is_some_and(|t| t.kind == ActionKind::Tool && self.may_use(agent, t))
    }

    /// The entries of `kind` (resources or prompts) `agent` may see, as [`Governor::may_see`]
    /// judges a tool.
    #[must_use]
    pub fn visible(&self, agent: &str, kind: ActionKind) -> Vec<&warden_manifest::manifest::Tool> {
        let mut out: Vec<_> = self
            .manifest
            .tools
            .values()
            .filter(|t| t.kind == kind && self.may_use(agent, t))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The resource entry that decides a read of `uri`: the first (by name) whose URIs admit
    /// it. Load-time checks keep a URI from belonging to two upstreams.
    #[must_use]
    pub fn resource_entry(&self, uri: &str) -> Option<&str> {
        self.manifest
            .tools
            .values()
            .filter(|t| t.admits_uri(uri))
            .map(|t| t.name.as_str())
            .min()
    }

    /// The resource entry that decides a completion of the template `template`: the first
    /// (by name) whose URIs cover every URI the template can make.
    #[must_use]
    pub fn template_entry(&self, template: &str) -> Option<&str> {
        self.manifest
            .tools
            .values()
            .filter(|t| {
                t.kind == ActionKind::Resource && t.uris.iter().any(|u| u.covers_template(template))
            })
            .map(|t| t.name.as_str())
            .min()
    }

    fn may_use(&self, agent: &str, tool: &warden_manifest::manifest::Tool) -> bool {
        let m = &self.manifest;
        let Some(agent) = m.agents.get(agent) else {
            return false;
        };
        tool.tenants
            .as_ref()
            .is_none_or(|t| t.contains(&agent.tenant))
            && tool.zones.as_ref().is_none_or(|z| z.contains(&agent.zone))
            && m.trust
                .get(&agent.trust)
                .and_then(|modes| modes.get(tool.tier))
                .is_some_and(|mode| *mode != TrustMode::Forbidden)
    }

    /// Decides one proposal. Never fails: anything that cannot be evaluated is a deny that says
    /// why (INV-003). Side-effect free except for the state store (counters for allowed calls,
    /// session history, and a pause when a loop is detected).
    #[must_use]
    pub fn decide(&self, p: &Proposal, state: &dyn StateStore, now: UnixSeconds) -> Decision {
        self.decide_scanned(p, state, now, &[])
    }

    /// [`Governor::decide`], given what a scan of the arguments found (`secret` and detector
    /// names, from the Executor's redactor): for a tool with `egress` hosts, a finding classified
    /// above the tool's `egress_level` is denied or escalated as its `on_leak` says (INV-011).
    /// The rationale names the detector, never the value.
    #[must_use]
    pub fn decide_scanned(
        &self,
        p: &Proposal,
        state: &dyn StateStore,
        now: UnixSeconds,
        found: &[&str],
    ) -> Decision {
        self.decide_with(
            p,
            state,
            now,
            &Evidence {
                found,
                ..Evidence::default()
            },
        )
    }

    /// [`Governor::decide`], given the [`Evidence`] the gateway gathered about the proposal.
    /// The checks run as the steps below, in the order the crate documentation lists; the first
    /// that denies (or finishes the decision) wins.
    #[must_use]
    pub fn decide_with(
        &self,
        p: &Proposal,
        state: &dyn StateStore,
        now: UnixSeconds,
        evidence: &Evidence<'_>,
    ) -> Decision {
        let canonical_args = to_canonical_string(&p.arguments);
        let mut d = Decision {
            decision: Verdict::Deny,
            rules: Vec::new(),
            policies: Vec::new(),
            reason: String::new(),
            manifest_version: self.manifest.version,
            policy_hash: self.policy_hash.clone(),
            escalation: None,
            agent: p.agent.clone(),
            owner: String::new(),
            tenant: String::new(),
            session: p.session.clone(),
            tool: p.tool.clone(),
            operation: p.operation,
            arguments_hash: p.operation.arguments_digest(&canonical_args),
            decided_at: now,
            provenance: Vec::new(),
            budget_use: Vec::new(),
        };
        let call = Asked {
            p,
            state,
            now,
            evidence,
            canonical_args: &canonical_args,
            completing: match p.operation {
                Operation::Use => None,
                Operation::Complete => p.completing().ok(),
            },
        };
        let stop = match self.steps(&call, &mut d) {
            Ok(()) => return d,
            Err(Stop::Final)
                if p.operation == Operation::Complete && d.decision == Verdict::Escalate =>
            {
                not_escalated(&d)
            }
            Err(Stop::Final) => return d,
            Err(stop) => stop,
        };
        if let Stop::Deny { rule, reason } = stop {
            d.decision = Verdict::Deny;
            d.rules.insert(0, rule);
            d.reason = reason;
            d.escalation = None;
        }
        d
    }

    /// The steps of a decision, in order. `Ok` is an allowed call (charged); `Err` a deny, or a
    /// decision already made (an escalation, a Cedar forbid).
    ///
    /// The steps that read no state are judged first, so that the state store is asked once
    /// for everything the call reads and writes ([`StateStore::settle`]: one round trip to a
    /// networked store); the findings are then applied in the documented order, so the first
    /// step that stops the call still gives the verdict and its rule. A call under any hold
    /// takes the same steps with the store asked step by step.
    fn steps(&self, c: &Asked<'_>, d: &mut Decision) -> Step<()> {
        c.p.check()
            .map_err(|e| Stop::deny("proposal.invalid", e.to_string()))?;
        let agent = self.who(c.p, d)?;
        let judged = self.judge(agent, c);
        let (session_key, scopes) = scopes(agent, c.p);
        let mut charging = Charging {
            plan: None,
            outcome: None,
            used: Vec::new(),
        };
        let settled = self.settle(agent, &judged, &session_key, &scopes, &mut charging, c)?;
        charging.outcome = settled.charged;
        charging.used = settled.used;
        let holds = held(settled.holds)?;
        let ready = judged?;
        d.provenance.clone_from(&ready.provenance);
        let (tool, tier) = (ready.tool, ready.tier);
        self.cedar_applies(agent, tool, ready.cedar, d)?;
        paused(holds.paused, c.p, d)?;
        self.loop_detected(tool, &session_key, settled.repeats, c, d)?;
        let Needs {
            escalation,
            reason,
            rules,
        } = match holds.demoted {
            None => ready.needs,
            demoted => needs(
                agent,
                tier,
                ready.trust_mode,
                demoted,
                ready.leak.as_ref(),
                c.now,
            ),
        };
        d.rules.extend(rules);
        if let Some(e) = escalation {
            if c.p.operation == Operation::Complete {
                return Err(Stop::deny(
                    "completion.not_escalated",
                    format!("{reason}; a completion is not put to a person, so it is denied"),
                ));
            }
            return self.approval_step(agent, tool, tier, e, reason, charging, c, d);
        }
        // Rate limits, budgets and system-level invariants: one atomic charge.
        d.budget_use = self
            .charge(agent, tool, tier, charging, c)
            .map_err(|(rule, why)| Stop::Deny { rule, reason: why })?;
        d.decision = Verdict::Allow;
        d.reason = format!(
            "`{}` may {} `{}` ({}-tier, {}; trust `{}`; permitted by {})",
            agent.id,
            match c.p.operation {
                Operation::Use => "call",
                Operation::Complete => "complete an argument of",
            },
            tool.name,
            tier.name,
            tier.approval,
            agent.trust.as_str(),
            quote_list(&d.policies)
        );
        Ok(())
    }

    /// Steps 3 to 7, and step 10 as it stands under no demotion: everything that reads no
    /// state. A step that stops the call is applied only after the holds (step 2).
    fn judge<'m>(
        &'m self,
        agent: &'m warden_manifest::manifest::Agent,
        c: &Asked<'_>,
    ) -> Step<Ready<'m>> {
        credential_tools(c)?;
        let (tool, tier) = self.what(c.p, c.completing.as_ref(), agent)?;
        let leak = egress(tool, c.evidence.found)?;
        let (flow, provenance) = self.flow_step(agent, tool, c)?;
        let leak = join_needs(leak, flow);
        let trust_mode = self.trust(agent, tool, tier)?;
        let mut tainted: Vec<String> = provenance
            .iter()
            .filter(|p| p.from == "untrusted")
            .map(|p| p.argument.clone())
            .collect();
        tainted.dedup();
        let cedar = self.cedar_says(agent, tool, c, &tainted)?;
        let needs = needs(agent, tier, trust_mode, None, leak.as_ref(), c.now);
        Ok(Ready {
            tool,
            tier,
            trust_mode,
            leak,
            cedar,
            needs,
            provenance,
        })
    }

    /// The state store's one round trip: the holds over the call; its place in its session's
    /// history if it could run (step 9); its charge if, under no hold, it would run (step 11).
    fn settle(
        &self,
        agent: &warden_manifest::manifest::Agent,
        judged: &Step<Ready<'_>>,
        session_key: &str,
        scopes: &[HoldScope],
        charging: &mut Charging,
        c: &Asked<'_>,
    ) -> Step<Settled> {
        let runs = match judged {
            Ok(r) if matches!(r.cedar, CedarOutcome::Permit(_)) => Some(r),
            _ => None,
        };
        let breakers = &self.manifest.breakers;
        let observe = runs
            .filter(|_| !c.evidence.awaiting_approval && c.p.operation == Operation::Use)
            .map(|r| Observe {
                session: session_key,
                fingerprint: fingerprint(r.tool, c.canonical_args),
                ttl: breakers.session_ttl_secs,
                loop_at: breakers.repeat_pattern,
            });
        charging.plan = runs
            .filter(|r| match &r.needs.escalation {
                None => true,
                Some(e) => redeemed(c.evidence, e, r.tier).is_some(),
            })
            .map(|r| self.plan_charges(agent, r.tool, r.tier, c.now));
        // INVARIANT (fail-closed): no answer from the state store is a deny.
        c.state
            .settle(&Settle {
                scopes,
                observe,
                charge: charging
                    .plan
                    .as_ref()
                    .map(|(charges, _)| charges.as_slice()),
                now: c.now,
            })
            .map_err(|e| Stop::deny("state.unavailable", format!("cannot read holds: {e}")))
    }

    /// Step 1, who is asking: an agent of the manifest, acting for its own tenant (INV-008).
    fn who<'m>(
        &'m self,
        p: &Proposal,
        d: &mut Decision,
    ) -> Step<&'m warden_manifest::manifest::Agent> {
        let Some(agent) = self.manifest.agents.get(&p.agent) else {
            return Err(Stop::deny(
                "agent.unknown",
                format!("agent `{}` is not in the manifest", p.agent),
            ));
        };
        d.owner = agent.owner.clone();
        d.tenant = agent.tenant.clone();
        if let Some(claimed) = &p.tenant {
            if claimed != &agent.tenant {
                return Err(Stop::deny(
                    "tenant.mismatch",
                    format!(
                        "agent `{}` belongs to tenant `{}` and may not act for tenant `{claimed}`",
                        agent.id, agent.tenant
                    ),
                ));
            }
        }
        Ok(agent)
    }

    /// Step 4, what is asked: a tool of the manifest (INV-005), with a tier, available to the
    /// agent's tenant and zone, its arguments matching its JSON Schema.
    fn what(
        &self,
        p: &Proposal,
        completing: Option<&warden_core::Completing>,
        agent: &warden_manifest::manifest::Agent,
    ) -> Step<(
        &warden_manifest::manifest::Tool,
        &warden_manifest::manifest::Tier,
    )> {
        let Some(tool) = self
            .manifest
            .tools
            .get(&p.tool)
            .filter(|t| t.kind == p.kind)
        else {
            return Err(Stop::deny(
                "tool.unknown",
                match p.kind {
                    ActionKind::Tool => format!(
                        "tool `{}` is not in the manifest; only listed tools can be called",
                        p.tool
                    ),
                    ActionKind::Resource => format!(
                        "no resource entry of the manifest admits `{}`; only listed resources can be read",
                        p.tool
                    ),
                    ActionKind::Prompt => format!(
                        "prompt `{}` is not in the manifest; only listed prompts can be got",
                        p.tool
                    ),
                },
            ));
        };
        // INVARIANT (allowlist): a resource entry completes only the templates it covers,
        // with values that keep the URI among those it admits (whatever the template's parts
        // not yet filled in become).
        if let Some((c, uri)) = completing.and_then(|c| Some((c, c.uri.as_deref()?))) {
            let admits =
                |u: Option<String>| u.is_some_and(|u| tool.uris.iter().any(|p| p.matches(&u)));
            let admitted = tool.uris.iter().any(|p| p.covers_template(uri))
                && admits(c.expand_template(None))
                && admits(c.expand_template(Some("x")));
            if !admitted {
                return Err(Stop::deny(
                    "resource.not_admitted",
                    format!(
                        "resource entry `{}` does not admit the template `{uri}` with the values given",
                        tool.name
                    ),
                ));
            }
        }
        // INVARIANT (allowlist): a resource entry reads only the URIs it admits, whatever
        // name the proposal gives.
        if tool.kind == ActionKind::Resource && completing.is_none() {
            let uri = p.arguments.get("uri").and_then(serde_json::Value::as_str);
            if !uri.is_some_and(|u| tool.admits_uri(u)) {
                return Err(Stop::deny(
                    "resource.not_admitted",
                    format!(
                        "resource entry `{}` does not admit the URI {}",
                        tool.name,
                        uri.map_or_else(|| "(none given)".to_owned(), |u| format!("`{u}`"))
                    ),
                ));
            }
        }
        let Some(tier) = self.manifest.tiers.get(tool.tier) else {
            return Err(Stop::deny(
                "manifest.inconsistent",
                format!("tool `{}` has no tier", tool.name),
            ));
        };
        if let Some(tenants) = &tool.tenants {
            if !tenants.contains(&agent.tenant) {
                return Err(Stop::deny(
                    "tenant.tool_not_available",
                    format!(
                        "tool `{}` is not available to tenant `{}`",
                        tool.name, agent.tenant
                    ),
                ));
            }
        }
        if let Some(zones) = &tool.zones {
            if !zones.contains(&agent.zone) {
                return Err(Stop::deny(
                    "zone.not_allowed",
                    format!(
                        "tool `{}` may not be called from zone `{}` (allowed: {})",
                        tool.name,
                        agent.zone,
                        zones.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        // A completion's values are judged by the prompt's schema as far as they go (the
        // arguments not chosen yet are not missing); a template's are the upstream's.
        // A use's arguments are judged as they are (no copy on the hot path).
        let judged = match completing {
            None => Some(std::borrow::Cow::Borrowed(&p.arguments)),
            Some(c) if c.uri.is_none() => Some(std::borrow::Cow::Owned(c.values())),
            Some(_) => None,
        };
        let first_error = judged
            .as_ref()
            .and_then(|args| tool.schema_error(args, completing.is_some()));
        if let Some(err) = first_error {
            // INVARIANT (no secret in records, INV-009): the rationale names the schema's
            // constraint, never the argument's value or a property name the schema does not
            // declare (an agent can put a secret in either, and the rationale is recorded).
            let constraint = err.schema_path().to_string();
            let at = err.instance_path().to_string();
            let declared = at.split('/').filter(|seg| !seg.is_empty()).all(|seg| {
                seg.bytes().all(|b| b.is_ascii_digit()) || constraint.split('/').any(|t| t == seg)
            });
            let at = if at.is_empty() {
                "/".to_string()
            } else if declared {
                at
            } else {
                "an argument the schema does not declare".to_string()
            };
            return Err(Stop::deny(
                "arguments.invalid",
                format!(
                    "arguments of `{}` do not match its schema at `{at}`: the constraint \
                     `{constraint}` is not met",
                    tool.name
                ),
            ));
        }
        Ok((tool, tier))
    }

    /// Step 6, progressive trust: the agent's trust level may run the tool's tier at all.
    fn trust(
        &self,
        agent: &warden_manifest::manifest::Agent,
        tool: &warden_manifest::manifest::Tool,
        tier: &warden_manifest::manifest::Tier,
    ) -> Step<TrustMode> {
        let trust_mode = self
            .manifest
            .trust
            .get(&agent.trust)
            .and_then(|modes| modes.get(tool.tier))
            .copied()
            .unwrap_or(TrustMode::Forbidden);
        if trust_mode == TrustMode::Forbidden {
            return Err(Stop::deny(
                format!("trust.{}.forbidden", agent.trust.as_str()),
                format!(
                    "a `{}` agent may not run `{}`-tier tools",
                    agent.trust.as_str(),
                    tier.name
                ),
            ));
        }
        Ok(trust_mode)
    }

    /// Step 5b, information flow (`docs/ifc.md`): for a tool with effects or controlling
    /// arguments, where each argument's value came from in what the session has read. A value
    /// read from untrusted output (`ifc.tainted`), a destination seen nowhere
    /// (`ifc.unknown_destination`) and a session that has read more than the tool may carry
    /// out (`ifc.classification`) each escalate, deny or pass as the manifest's `flow` says.
    fn flow_step(
        &self,
        agent: &warden_manifest::manifest::Agent,
        tool: &warden_manifest::manifest::Tool,
        c: &Asked<'_>,
    ) -> Step<(Option<Extra>, Vec<warden_core::decision::ArgProvenance>)> {
        let Some(flow) = c.evidence.flow else {
            return Ok((None, Vec::new()));
        };
        if !tool.effects && tool.controlling.is_empty() {
            return Ok((None, Vec::new()));
        }
        let settings = &self.manifest.flow;
        let a = crate::flow::assess(
            tool,
            &c.p.arguments,
            flow,
            self.destinations.of(&agent.zone),
            settings.learn_from_trusted,
        );
        let provenance = a.args.iter().map(|f| recorded(f, flow)).collect();
        let mut found: Vec<(FlowAction, &str, String)> = Vec::with_capacity(3);
        if let Some(f) = a.tainted() {
            found.push((settings.on_taint, "ifc.tainted", why_tainted(tool, f, flow)));
        }
        if let Some(f) = a.unknown().filter(|_| tool.effects) {
            found.push((
                settings.on_unknown_destination,
                "ifc.unknown_destination",
                format!(
                    "argument `{}` of `{}` names a destination that is not in the task, in any output the session read, or among the zone's known destinations",
                    f.argument, tool.name
                ),
            ));
        }
        if a.over_classified {
            found.push((
                settings.on_classification,
                "ifc.classification",
                format!(
                    "the session has read data classified above `{}`, the most `{}` may carry out",
                    tool.egress_level.as_str(),
                    tool.name
                ),
            ));
        }
        // INVARIANT (fail-closed): a deny wins over an escalation, whatever the order found.
        if let Some((_, rule, why)) = found.iter().find(|(act, _, _)| *act == FlowAction::Deny) {
            return Err(Stop::deny(*rule, why.clone()));
        }
        let mut extra: Option<Extra> = None;
        for (_, rule, why) in found
            .into_iter()
            .filter(|(act, _, _)| *act == FlowAction::Escalate)
        {
            extra = join_needs(
                extra,
                Some(Extra {
                    rules: vec![rule.to_owned()],
                    why,
                }),
            );
        }
        Ok((extra, provenance))
    }

    /// Step 7, Cedar, evaluated: what the policies say about the call ([`Self::cedar_applies`]
    /// gives the verdict).
    fn cedar_says(
        &self,
        agent: &warden_manifest::manifest::Agent,
        tool: &warden_manifest::manifest::Tool,
        c: &Asked<'_>,
        tainted: &[String],
    ) -> Step<CedarOutcome> {
        let p = c.p;
        let hour = c.now.rem_euclid(DAY) / 3600;
        let context_error = |e: String| {
            Stop::deny(
                "cedar.context_error",
                format!("arguments cannot be given to Cedar: {e}"),
            )
        };
        // A completion is judged on the values it has (a template's on the template), by the
        // Cedar engine itself: the native evaluator reads arguments a use must have.
        let partial = c.completing.as_ref().map(|completing| {
            // A template's URI as far as its values go: what the candidates are under.
            let values = match completing.expand_template(None) {
                Some(uri) => serde_json::json!({ "uri": uri }),
                None => completing.values(),
            };
            (values, self.arg_types.get(&tool.name).map(ArgType::partial))
        });
        let (arguments, arg_type) = match &partial {
            None => (&p.arguments, self.arg_types.get(&tool.name)),
            Some((values, t)) => (values, t.as_ref()),
        };
        // INVARIANT (consistent verdicts): representability is checked on every call, not only
        // when Cedar needs the request (context-free results may be cached).
        if let Some(t) = arg_type {
            t.check(arguments, "")
                .map_err(|e| context_error(e.to_string()))?;
        }
        let flow = crate::cedar::FlowFacts {
            tainted,
            read_untrusted: c.evidence.flow.is_some_and(|f| f.read_untrusted),
            classification: c
                .evidence
                .flow
                .map_or("public", |f| crate::flow::level_name(f.classification)),
        };
        let facts = partial.is_none().then_some(CallFacts {
            agent,
            arguments,
            arg_type,
            session: &p.session,
            hour,
            flow,
        });
        self.cedar
            .evaluate_with(&agent.id, &tool.name, facts, || {
                self.cedar.request_with_flow(
                    &agent.id, &tool.name, arg_type, arguments, &p.session, hour, flow,
                )
            })
            .map_err(|e| context_error(e.to_string()))
    }

    /// Step 7, Cedar: some policy permits and none forbids (forbid wins). The permitting
    /// policies become the decision's first rules.
    fn cedar_applies(
        &self,
        agent: &warden_manifest::manifest::Agent,
        tool: &warden_manifest::manifest::Tool,
        outcome: CedarOutcome,
        d: &mut Decision,
    ) -> Step<()> {
        match outcome {
            CedarOutcome::Forbid(ids) => {
                let reason = format!("forbidden by policy {}", quote_list(&ids));
                d.policies.clone_from(&ids);
                d.rules = ids.iter().map(|i| join(&["policy:", i])).collect();
                d.reason = reason;
                d.decision = Verdict::Deny;
                Err(Stop::Final)
            }
            CedarOutcome::ForbidErrored(ids) => {
                let why = format!(
                    "forbid policy {} could not be evaluated; denying",
                    quote_list(&ids)
                );
                d.policies = ids;
                Err(Stop::deny("cedar.evaluation_error", why))
            }
            CedarOutcome::NoPermit => Err(Stop::deny(
                "cedar.no_permit",
                format!(
                    "no Cedar policy permits agent `{}` to call `{}`",
                    agent.id, tool.name
                ),
            )),
            CedarOutcome::Permit(ids) => {
                d.rules.extend(ids.iter().map(|i| join(&["policy:", i])));
                d.policies = ids;
                Ok(())
            }
        }
    }

    /// Step 9, loop detection: the same call N times in a row pauses the session. A call
    /// waiting for its approval is asked again by design ("call again once it is approved"):
    /// those retries are not a loop and are not counted.
    fn loop_detected(
        &self,
        tool: &warden_manifest::manifest::Tool,
        session_key: &str,
        settled: Option<u32>,
        c: &Asked<'_>,
        d: &mut Decision,
    ) -> Step<()> {
        // A completion changes nothing, and a client asks one again as the person types.
        if c.evidence.awaiting_approval || c.p.operation == Operation::Complete {
            return Ok(());
        }
        let breakers = &self.manifest.breakers;
        let repeats = match settled {
            Some(repeats) => repeats,
            None => c
                .state
                .observe_call(
                    session_key,
                    fingerprint(tool, c.canonical_args),
                    c.now,
                    breakers.session_ttl_secs,
                )
                .map_err(|e| {
                    Stop::deny(
                        "state.unavailable",
                        format!("cannot record session history: {e}"),
                    )
                })?,
        };
        if repeats < breakers.repeat_pattern {
            return Ok(());
        }
        let reason = format!(
            "`{}` proposed {repeats} times in a row with the same arguments in session `{}`; session paused",
            tool.name, c.p.session
        );
        let hold = warden_core::state::Hold {
            scope: HoldScope::Session(session_key.to_owned()),
            kind: HoldKind::Pause,
            reason: reason.clone(),
            since: c.now,
        };
        c.state
            .set_hold(hold)
            .map_err(|e| Stop::deny("state.unavailable", format!("cannot pause session: {e}")))?;
        d.decision = Verdict::Escalate;
        d.rules.insert(0, "loop.repeat_pattern".into());
        d.reason = reason;
        d.escalation = Some(Escalation::SessionPaused {
            session: c.p.session.clone(),
        });
        Err(Stop::Final)
    }

    /// Step 11, the approval step of an escalated call: an approval of this very call, given
    /// for what it needs now, lets it run, charged like any allowed call (INV-020); one that
    /// cannot be used, or no room for another request, denies; otherwise the call escalates
    /// and consumes no counter.
    #[expect(
        clippy::too_many_arguments,
        reason = "what the earlier steps established, each by name"
    )]
    fn approval_step(
        &self,
        agent: &warden_manifest::manifest::Agent,
        tool: &warden_manifest::manifest::Tool,
        tier: &warden_manifest::manifest::Tier,
        e: Escalation,
        reason: String,
        charging: Charging,
        c: &Asked<'_>,
        d: &mut Decision,
    ) -> Step<()> {
        if let Some((id, approved_by)) = redeemed(c.evidence, &e, tier) {
            d.budget_use = self
                .charge(agent, tool, tier, charging, c)
                .map_err(|(rule, why)| Stop::Deny {
                    rule,
                    reason: format!("approval {id} was redeemed, but {why}"),
                })?;
            d.decision = Verdict::Allow;
            d.rules.push("approval.redeemed".into());
            d.reason = format!("{reason}; approved by {approved_by} (approval {id})");
            return Err(Stop::Final);
        }
        match c.evidence.approval {
            Some(ApprovalEvidence::Refused { rule, reason: why }) => {
                return Err(Stop::deny(rule, format!("{why}; {reason}")));
            }
            Some(ApprovalEvidence::Full { reason: why }) => {
                return Err(Stop::deny(
                    "approval.too_many_open",
                    format!("{why}; {reason}"),
                ));
            }
            _ => {}
        }
        // INVARIANT (budgets): an escalated call consumes no counter.
        d.decision = Verdict::Escalate;
        d.escalation = Some(e);
        d.reason = reason;
        Err(Stop::Final)
    }

    /// Charges the rate limits, budgets and system-level invariants of one call, atomically
    /// (or reads the charge the state store's round trip already made); the rule and reason
    /// of the first one exceeded, or how much of each limit the counters now use (known when the
    /// state store's round trip made the charge).
    fn charge(
        &self,
        agent: &warden_manifest::manifest::Agent,
        tool: &warden_manifest::manifest::Tool,
        tier: &warden_manifest::manifest::Tier,
        charging: Charging,
        c: &Asked<'_>,
    ) -> Result<Vec<BudgetUse>, (String, String)> {
        let (charges, planned) = match charging.plan {
            Some(plan) => plan,
            None => self.plan_charges(agent, tool, tier, c.now),
        };
        let outcome = match charging.outcome {
            Some(outcome) => Ok(outcome),
            None => c.state.check_and_charge(&charges, c.now),
        };
        match outcome {
            Ok(ChargeOutcome::Charged) => Ok(charges
                .iter()
                .zip(&planned)
                .zip(&charging.used)
                .map(|((charge, p), used)| BudgetUse {
                    budget: self.rule_name(p, tier),
                    used: *used,
                    limit: charge.limit,
                    window_ends: charge.expires_at,
                })
                .collect()),
            Ok(ChargeOutcome::Exceeded { index, current }) => {
                let (Some(c), Some(p)) = (charges.get(index), planned.get(index)) else {
                    return Err((
                        "state.unavailable".into(),
                        "state store named an unknown counter".into(),
                    ));
                };
                let (rule, what) = self.describe(p, agent, tier);
                let limit = c.limit;
                Err((
                    rule,
                    format!("{what} exhausted ({current} of {limit} used)"),
                ))
            }
            Err(e) => Err((
                "state.unavailable".into(),
                format!("cannot charge budgets: {e}"),
            )),
        }
    }

    fn plan_charges(
        &self,
        agent: &warden_manifest::manifest::Agent,
        tool: &warden_manifest::manifest::Tool,
        tier: &warden_manifest::manifest::Tier,
        now: UnixSeconds,
    ) -> (Vec<Charge>, Vec<Planned>) {
        let m = &self.manifest;
        let mut charges = Vec::with_capacity(8);
        let mut out = Vec::with_capacity(8);
        let mut push = |parts: &[&str], rate: Option<Rate>, amount: u64, rule: ChargeRule| {
            let Some(rate) = rate else { return };
            if amount == 0 {
                return;
            }
            let window = now.div_euclid(rate.window_secs);
            // INVARIANT (distinct counters): parts are joined with `/`, which no manifest id may
            // contain, so two different counters never share a key.
            let mut key = String::with_capacity(64);
            for part in parts {
                key.push_str(part);
                key.push('/');
            }
            push_int(&mut key, rate.window_secs);
            key.push('/');
            push_int(&mut key, window);
            charges.push(Charge {
                key,
                amount,
                limit: rate.limit,
                expires_at: window.saturating_add(1).saturating_mul(rate.window_secs),
            });
            out.push(Planned { rule, rate });
        };
        let (ab, tb, gb) = (&m.agent_budget, &m.tenant_budget, &m.global_budget);
        let fixed: [(&[&str], Option<Rate>, u64, ChargeRule); 7] = [
            (
                &["rate", &tier.name, &agent.id],
                tier.rate,
                1,
                ChargeRule::TierRate,
            ),
            (
                &["agent", &agent.id, "calls"],
                ab.calls,
                1,
                ChargeRule::AgentCalls,
            ),
            (
                &["agent", &agent.id, "cost"],
                ab.cost,
                tool.cost,
                ChargeRule::AgentCost,
            ),
            (
                &["tenant", &agent.tenant, "calls"],
                tb.calls,
                1,
                ChargeRule::TenantCalls,
            ),
            (
                &["tenant", &agent.tenant, "cost"],
                tb.cost,
                tool.cost,
                ChargeRule::TenantCost,
            ),
            (&["global", "calls"], gb.calls, 1, ChargeRule::GlobalCalls),
            (
                &["global", "cost"],
                gb.cost,
                tool.cost,
                ChargeRule::GlobalCost,
            ),
        ];
        for (parts, rate, amount, rule) in fixed {
            push(parts, rate, amount, rule);
        }
        for (i, inv) in m.invariants.iter().enumerate() {
            if inv.tools.contains(&tool.name) {
                push(
                    &["invariant", &inv.name, "calls"],
                    inv.calls,
                    1,
                    ChargeRule::Invariant(i),
                );
                push(
                    &["invariant", &inv.name, "cost"],
                    inv.cost,
                    tool.cost,
                    ChargeRule::Invariant(i),
                );
            }
        }
        (charges, out)
    }

    /// The rule id and a description of an exhausted counter.
    /// The rule a limit's charge is named by (`rate.tier.<tier>`, `budget.agent.calls`,
    /// `invariant:<name>`...).
    fn rule_name(&self, c: &Planned, tier: &warden_manifest::manifest::Tier) -> String {
        match c.rule {
            ChargeRule::TierRate => format!("rate.tier.{}", tier.name),
            ChargeRule::AgentCalls => "budget.agent.calls".into(),
            ChargeRule::AgentCost => "budget.agent.cost".into(),
            ChargeRule::TenantCalls => "budget.tenant.calls".into(),
            ChargeRule::TenantCost => "budget.tenant.cost".into(),
            ChargeRule::GlobalCalls => "budget.global.calls".into(),
            ChargeRule::GlobalCost => "budget.global.cost".into(),
            ChargeRule::Invariant(i) => format!("invariant:{}", self.invariant_name(i)),
        }
    }

    fn invariant_name(&self, i: usize) -> &str {
        self.manifest
            .invariants
            .get(i)
            .map_or("?", |v| v.name.as_str())
    }

    /// The rule of a limit's charge, and the limit in words.
    fn describe(
        &self,
        c: &Planned,
        agent: &warden_manifest::manifest::Agent,
        tier: &warden_manifest::manifest::Tier,
    ) -> (String, String) {
        let what = match c.rule {
            ChargeRule::TierRate => {
                format!("`{}`-tier rate limit of agent `{}`", tier.name, agent.id)
            }
            ChargeRule::AgentCalls => format!("call budget of agent `{}`", agent.id),
            ChargeRule::AgentCost => format!("cost budget of agent `{}`", agent.id),
            ChargeRule::TenantCalls => format!("call budget of tenant `{}`", agent.tenant),
            ChargeRule::TenantCost => format!("cost budget of tenant `{}`", agent.tenant),
            ChargeRule::GlobalCalls => "global call budget".into(),
            ChargeRule::GlobalCost => "global cost budget".into(),
            ChargeRule::Invariant(i) => format!("system invariant `{}`", self.invariant_name(i)),
        };
        (self.rule_name(c, tier), format!("{what} ({})", c.rate))
    }
}

/// Which limit a planned charge enforces.
#[derive(Debug, Clone, Copy)]
enum ChargeRule {
    TierRate,
    AgentCalls,
    AgentCost,
    TenantCalls,
    TenantCost,
    GlobalCalls,
    GlobalCost,
    Invariant(usize),
}

/// One proposal as it is decided: what every step reads.
struct Asked<'a> {
    p: &'a Proposal,
    state: &'a dyn StateStore,
    now: UnixSeconds,
    evidence: &'a Evidence<'a>,
    canonical_args: &'a str,
    /// A completion's arguments, read once (`None` for a use, or for arguments that are not a
    /// completion's: the proposal's check denies those first).
    completing: Option<warden_core::Completing>,
}

/// Why the steps stopped before allowing the call.
enum Stop {
    /// A deny: the rule goes first, the reason replaces any other.
    Deny {
        /// The rule.
        rule: String,
        /// Why.
        reason: String,
    },
    /// The decision is made as it stands (an escalation, an approval redeemed, a forbid).
    Final,
}

impl Stop {
    fn deny(rule: impl Into<String>, reason: String) -> Stop {
        Stop::Deny {
            rule: rule.into(),
            reason,
        }
    }
}

/// A step's answer: its finding, or why the decision stops.
type Step<T> = Result<T, Stop>;

/// What the steps that read no state found (3 to 7, and 10 under no demotion).
struct Ready<'m> {
    tool: &'m warden_manifest::manifest::Tool,
    tier: &'m warden_manifest::manifest::Tier,
    trust_mode: TrustMode,
    /// Why the call needs its owner's approval for what its arguments carry (step 5: a leak
    /// through an egress tool; step 5b: an information-flow finding), and the rules.
    leak: Option<Extra>,
    /// Where each judged argument came from (step 5b).
    provenance: Vec<warden_core::decision::ArgProvenance>,
    /// Cedar's answer, applied after the holds.
    cedar: CedarOutcome,
    /// Step 10 for an agent under no demotion.
    needs: Needs,
}

/// Step 10's finding: the approval the call needs (none: it runs on its own), why, and the
/// rules that say so.
struct Needs {
    escalation: Option<Escalation>,
    reason: String,
    rules: Vec<String>,
}

/// An allowed call's charge: planned (the counters, and which limit each enforces) and made by
/// the state store's round trip, or, for a call under a hold, still to plan and make.
struct Charging {
    plan: Option<(Vec<Charge>, Vec<Planned>)>,
    outcome: Option<ChargeOutcome>,
    /// Each counter's value after the charge the state store's round trip made.
    used: Vec<u64>,
}

/// What the holds left for later steps.
struct Held {
    /// A pause over the call (loop detection, a tripped breaker): it escalates.
    paused: Option<warden_core::state::Hold>,
    /// A demotion of the agent or a parent: its owner approves its calls.
    demoted: Option<warden_core::state::Hold>,
}

/// The scopes whose holds reach a call: everything, the agent's tenant, the agent, its session
/// (the first value: its state-store key) and every parent of a sub-agent.
fn scopes(agent: &warden_manifest::manifest::Agent, p: &Proposal) -> (String, Vec<HoldScope>) {
    // INVARIANT (session isolation): sessions are keyed by agent, so one agent can neither
    // pause nor feed the loop detector of another agent's session of the same name. `/` is
    // not allowed in agent ids, so the key is unambiguous.
    let session_key = session_key(&agent.id, &p.session);
    let mut scopes = Vec::with_capacity(4);
    scopes.extend([
        HoldScope::Global,
        HoldScope::Tenant(agent.tenant.clone()),
        HoldScope::Agent(agent.id.clone()),
        HoldScope::Session(session_key.clone()),
    ]);
    // INVARIANT (a credential never exceeds its ancestors' current trust): a sub-agent is
    // named in its parent's namespace (`<parent>.<name>`, which delegation enforces), so
    // every ancestor's holds — kill, quarantine, pause, demotion — reach it too.
    if agent.id.contains('.') {
        scopes.extend(ancestors(&agent.id).map(|a| HoldScope::Agent(a.to_owned())));
    }
    (session_key, scopes)
}

/// Step 2, holds: a kill switch or quarantine over the agent, its tenant, its session,
/// everything, or any of its parents denies; a pause or demotion is kept for later steps.
fn held(holds: Vec<warden_core::state::Hold>) -> Step<Held> {
    let mut held = Held {
        paused: None,
        demoted: None,
    };
    for h in holds {
        match h.kind {
            HoldKind::Kill | HoldKind::Quarantine => {
                let scope = match &h.scope {
                    HoldScope::Global => "global",
                    HoldScope::Tenant(_) => "tenant",
                    HoldScope::Agent(_) => "agent",
                    HoldScope::Session(_) => "session",
                };
                return Err(Stop::deny(
                    format!("{}.{scope}", h.kind.as_str()),
                    format!("{} in force for {}: {}", h.kind.as_str(), h.scope, h.reason),
                ));
            }
            HoldKind::Pause => {
                if held.paused.is_none() {
                    held.paused = Some(h);
                }
            }
            HoldKind::Demote => {
                if held.demoted.is_none() && matches!(h.scope, HoldScope::Agent(_)) {
                    held.demoted = Some(h);
                }
            }
        }
    }
    Ok(held)
}

/// Step 3, the credential: one that lists its tools grants no other (delegation narrows what
/// an agent may call below what the manifest allows it).
fn credential_tools(c: &Asked<'_>) -> Step<()> {
    match c.evidence.credential_tools {
        Some(granted) if !granted.contains(&c.p.tool) => Err(Stop::deny(
            "credential.tool_not_granted",
            format!("the credential does not grant tool `{}`", c.p.tool),
        )),
        _ => Ok(()),
    }
}

/// Step 5, egress (INV-011): nothing classified above the destination leaves through the
/// arguments of an egress tool: denied, or (the tool's `on_leak: escalate`) the reason its
/// owner must approve.
fn egress(tool: &warden_manifest::manifest::Tool, found: &[&str]) -> Step<Option<Extra>> {
    if tool.egress.is_empty() {
        return Ok(None);
    }
    let Some((what, level)) = found
        .iter()
        .map(|w| (*w, warden_manifest::upstream::leak_level(w)))
        .filter(|(_, l)| *l > tool.egress_level)
        .max_by_key(|(_, l)| *l)
    else {
        return Ok(None);
    };
    let why = format!(
        "the arguments of `{}` carry {} (classified `{}`) to an egress destination cleared for `{}`",
        tool.name,
        if what == "secret" { "a secret value".to_owned() } else { format!("a `{what}` match") },
        level.as_str(),
        tool.egress_level.as_str()
    );
    match tool.on_leak {
        warden_manifest::raw::LeakAction::Deny => Err(Stop::deny("egress.leak", why)),
        warden_manifest::raw::LeakAction::Escalate => Ok(Some(Extra {
            rules: vec!["egress.leak".into()],
            why,
        })),
    }
}

/// The reason for `ifc.tainted`: the argument, and the tool whose output it came from.
fn why_tainted(
    tool: &warden_manifest::manifest::Tool,
    f: &crate::flow::ArgFinding,
    flow: &warden_core::flow::SessionFlow,
) -> String {
    let what = match (f.controlling, f.kind) {
        (true, _) => "a value".to_owned(),
        (false, Some(k)) => format!("an identifier ({})", k.as_str()),
        (false, None) => "text".to_owned(),
    };
    let from = match f.provenance {
        crate::flow::Provenance::Tainted { output: Some(i) } => source_tool(flow, i).map_or_else(
            || format!("untrusted output {i}"),
            |t| format!("the output of `{t}` (output {i})"),
        ),
        _ => "an output the session read past its flow's bound".to_owned(),
    };
    format!(
        "argument `{}` of `{}` carries {what} read from {from}, not from the task, a trusted output or a known destination",
        f.argument, tool.name
    )
}

/// The tool that produced output `index` of the session.
fn source_tool(flow: &warden_core::flow::SessionFlow, index: u32) -> Option<&str> {
    flow.sources
        .iter()
        .find(|s| s.index == index)
        .map(|s| s.tool.as_str())
}

/// A finding as the decision records it: names and sources, never the value.
fn recorded(
    f: &crate::flow::ArgFinding,
    flow: &warden_core::flow::SessionFlow,
) -> warden_core::decision::ArgProvenance {
    let output = match f.provenance {
        crate::flow::Provenance::Tainted { output } => output,
        crate::flow::Provenance::Lookup { output } => Some(output),
        _ => None,
    };
    warden_core::decision::ArgProvenance {
        argument: f.argument.clone(),
        from: f.provenance.as_str().to_owned(),
        kind: f.kind.map(|k| k.as_str().to_owned()),
        tool: output.and_then(|i| source_tool(flow, i)).map(str::to_owned),
        output,
    }
}

/// What a call's arguments carry that needs its owner's approval: the rules and why.
#[derive(Debug, Clone)]
struct Extra {
    rules: Vec<String>,
    why: String,
}

/// Both needs of step 5 as one.
fn join_needs(a: Option<Extra>, b: Option<Extra>) -> Option<Extra> {
    match (a, b) {
        (Some(mut a), Some(b)) => {
            a.rules.extend(b.rules);
            a.why = format!("{}; and {}", a.why, b.why);
            Some(a)
        }
        (a, b) => a.or(b),
    }
}

/// Step 8: a paused session (loop detection) or agent (a tripped breaker) escalates until a
/// human resumes it.
fn paused(h: Option<warden_core::state::Hold>, p: &Proposal, d: &mut Decision) -> Step<()> {
    let Some(h) = h else {
        return Ok(());
    };
    d.decision = Verdict::Escalate;
    let (rule, reason) = match &h.scope {
        HoldScope::Session(_) => (
            "session.paused",
            format!("session `{}` is paused; a human must resume it", p.session),
        ),
        scope => (
            match scope {
                HoldScope::Agent(_) => "agent.paused",
                HoldScope::Tenant(_) => "tenant.paused",
                _ => "global.paused",
            },
            format!("{scope} is paused ({}); a human must resume it", h.reason),
        ),
    };
    d.rules.insert(0, rule.into());
    d.reason = reason;
    d.escalation = Some(Escalation::SessionPaused {
        session: p.session.clone(),
    });
    Err(Stop::Final)
}

/// Step 10a, the tier's approval mode: automatic, a time window, approvers of a role, or
/// distinct humans. Its rule is recorded; what it needs, if anything, and why.
fn approval_mode(
    tier: &warden_manifest::manifest::Tier,
    now: UnixSeconds,
    rules: &mut Vec<String>,
) -> (Option<Escalation>, String) {
    match &tier.approval {
        Approval::Auto => {
            rules.push(join(&["tier.", &tier.name, ".auto"]));
            (None, String::new())
        }
        Approval::Window {
            start,
            end,
            utc_offset,
            text,
        } => {
            let local = now.saturating_add(i64::from(*utc_offset));
            let minute = u32::try_from(local.rem_euclid(DAY) / 60).unwrap_or(0);
            let inside = if start < end {
                (*start..*end).contains(&minute)
            } else {
                minute >= *start || minute < *end
            };
            if inside {
                rules.push(join(&["tier.", &tier.name, ".window_open"]));
                return (None, String::new());
            }
            let day_start = local - local.rem_euclid(DAY);
            let mut open = day_start + i64::from(*start) * 60;
            if open <= local {
                open += DAY;
            }
            let until_unix = open - i64::from(*utc_offset);
            rules.push(join(&["tier.", &tier.name, ".window_closed"]));
            let reason = format!(
                "`{}`-tier calls run automatically only {text}; queued until {}",
                tier.name,
                rfc3339(until_unix, *utc_offset)
            );
            let queued = Escalation::Queued {
                until: rfc3339(until_unix, *utc_offset),
                until_unix,
            };
            (Some(queued), reason)
        }
        Approval::Role { approvers, role } => {
            rules.push(join(&["tier.", &tier.name, ".approvers"]));
            let reason = format!(
                "`{}`-tier calls need {approvers} approval(s) from role `{role}`",
                tier.name
            );
            let e = Escalation::Approvers {
                approvers: *approvers,
                role: role.clone(),
            };
            (Some(e), reason)
        }
        Approval::Humans { approvers } => {
            rules.push(join(&["tier.", &tier.name, ".humans"]));
            let reason = format!(
                "`{}`-tier calls need {approvers} distinct human approver(s)",
                tier.name
            );
            let e = Escalation::Humans {
                approvers: *approvers,
            };
            (Some(e), reason)
        }
    }
}

/// Step 10: what approval the call needs, if any (its tier's mode, the agent's trust level or
/// demotion, a leak an egress tool may carry only with approval), why, and the rules.
fn needs(
    agent: &warden_manifest::manifest::Agent,
    tier: &warden_manifest::manifest::Tier,
    trust_mode: TrustMode,
    demoted: Option<warden_core::state::Hold>,
    leak: Option<&Extra>,
    now: UnixSeconds,
) -> Needs {
    let mut rules = Vec::with_capacity(3);
    let (escalation, reason) = approval_mode(tier, now, &mut rules);
    let (escalation, reason) = trust_level(
        agent, tier, trust_mode, demoted, escalation, reason, &mut rules,
    );
    let (escalation, reason) = leak_needs(agent, leak, escalation, reason, &mut rules);
    Needs {
        escalation,
        reason,
        rules,
    }
}

/// The approval the evidence brings for this very call, given for what it needs now (`e`) and
/// at the tier's criticality: its id and who approved it.
fn redeemed<'e>(
    evidence: &'e Evidence<'_>,
    e: &Escalation,
    tier: &warden_manifest::manifest::Tier,
) -> Option<(&'e str, &'e str)> {
    match evidence.approval {
        Some(ApprovalEvidence::Approved {
            id,
            approved_by,
            needed,
            critical,
        }) if same_need(needed, e) && critical == tier.critical => Some((id, approved_by)),
        _ => None,
    }
}

/// A call's identity for loop detection: the tool and its canonical arguments, hashed.
fn fingerprint(tool: &warden_manifest::manifest::Tool, canonical_args: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(tool.name.as_bytes());
    h.update([0u8]);
    h.update(canonical_args.as_bytes());
    h.finalize().into()
}

/// Whether an escalation already needs approvers (stricter than the owner alone).
fn needs_approvers(e: Option<&Escalation>) -> bool {
    matches!(
        e,
        Some(Escalation::Approvers { .. } | Escalation::Humans { .. })
    )
}

/// Step 10b, the trust level: a level that runs the tier only with approval, or a demoted
/// agent, needs its owner (a tier that already needs approvers keeps its stricter
/// requirement, and the owner's approval overrides a closed window).
fn trust_level(
    agent: &warden_manifest::manifest::Agent,
    tier: &warden_manifest::manifest::Tier,
    trust_mode: TrustMode,
    demoted: Option<warden_core::state::Hold>,
    escalation: Option<Escalation>,
    reason: String,
    rules: &mut Vec<String>,
) -> (Option<Escalation>, String) {
    let level = agent.trust.as_str();
    let owner = || {
        Some(Escalation::Owner {
            owner: agent.owner.clone(),
        })
    };
    if trust_mode == TrustMode::WithApproval {
        rules.push(join(&["trust.", level, ".with_approval"]));
        if needs_approvers(escalation.as_ref()) {
            return (escalation, reason);
        }
        let reason = format!(
            "a `{level}` agent needs its owner `{}` to approve `{}`-tier calls",
            agent.owner, tier.name
        );
        return (owner(), reason);
    }
    if let Some(h) = demoted {
        // INVARIANT (seed 002): a demoted agent runs nothing on its own; its owner approves
        // what its level would have let it run (the tier's own approvers still apply).
        rules.push("trust.demoted".into());
        if needs_approvers(escalation.as_ref()) {
            return (escalation, reason);
        }
        let reason = format!(
            "agent `{}` is demoted ({}); its owner `{}` must approve its calls until it is promoted again",
            agent.id, h.reason, agent.owner
        );
        return (owner(), reason);
    }
    rules.push(join(&["trust.", level, ".autonomous"]));
    (escalation, reason)
}

/// Step 10c: arguments an egress tool may not carry without its owner's approval (step 5)
/// add that need to whatever the call already needs.
fn leak_needs(
    agent: &warden_manifest::manifest::Agent,
    leak: Option<&Extra>,
    escalation: Option<Escalation>,
    reason: String,
    rules: &mut Vec<String>,
) -> (Option<Escalation>, String) {
    let Some(Extra { rules: fired, why }) = leak else {
        return (escalation, reason);
    };
    rules.extend(fired.iter().cloned());
    let escalation = if needs_approvers(escalation.as_ref()) {
        escalation
    } else {
        Some(Escalation::Owner {
            owner: agent.owner.clone(),
        })
    };
    let reason = if reason.is_empty() {
        format!("{why}; its owner must approve")
    } else {
        format!("{reason}; and {why}")
    };
    (escalation, reason)
}

/// Concatenates `parts` (cheaper than `format!` on the hot path).
fn join(parts: &[&str]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.push_str(p);
    }
    out
}

/// Appends the decimal form of `v` (without the formatting machinery: this is on the hot path).
fn push_int(out: &mut String, v: i64) {
    if v < 0 {
        out.push('-');
    }
    let mut n = v.unsigned_abs();
    let mut digits = [0u8; 20];
    let mut len = 0;
    loop {
        if let Some(slot) = digits.get_mut(len) {
            // `n % 10` is below 10, so the cast cannot truncate.
            *slot = b'0' + u8::try_from(n % 10).unwrap_or(0);
        }
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for d in digits.iter().take(len).rev() {
        out.push(char::from(*d));
    }
}

/// What a completion that would escalate (a paused session, a loop) is instead: denied, for
/// the same reason.
fn not_escalated(d: &Decision) -> Stop {
    Stop::deny(
        "completion.not_escalated",
        format!(
            "{}; a completion is not put to a person, so it is denied",
            d.reason
        ),
    )
}

/// The decision when no Governor could be loaded: deny, saying why (INV-003).
#[must_use]
pub fn deny_unloaded(p: &Proposal, why: &str, now: UnixSeconds) -> Decision {
    Decision {
        decision: Verdict::Deny,
        rules: vec!["manifest.not_loaded".into()],
        policies: Vec::new(),
        reason: format!("no manifest is loaded, so nothing is allowed: {why}"),
        manifest_version: 0,
        policy_hash: String::new(),
        escalation: None,
        agent: p.agent.clone(),
        owner: String::new(),
        tenant: String::new(),
        session: p.session.clone(),
        tool: p.tool.clone(),
        operation: p.operation,
        arguments_hash: p
            .operation
            .arguments_digest(&warden_core::canonical::to_canonical_string(&p.arguments)),
        decided_at: now,
        provenance: Vec::new(),
        budget_use: Vec::new(),
    }
}

/// What the gateway found out about a proposal before the Governor decides it; the Governor
/// weighs it, and nothing downstream edits the decision.
#[derive(Debug, Clone, Copy, Default)]
pub struct Evidence<'a> {
    /// What a scan of an egress tool's arguments found (`secret` and detector names).
    pub found: &'a [&'a str],
    /// An approval request for exactly this call is open (pending or approved): proposing it
    /// again is waiting for that approval, and does not count towards loop detection.
    pub awaiting_approval: bool,
    /// The tools the caller's credential is limited to, if it lists any: any other tool is
    /// denied (`credential.tool_not_granted`) before anything is charged.
    pub credential_tools: Option<&'a std::collections::BTreeSet<String>>,
    /// What the approval book holds for this call, weighed at the approval step (when the
    /// call would escalate); `None`: no approval or request for it.
    pub approval: Option<ApprovalEvidence<'a>>,
    /// What the call's session has read (information-flow control, `docs/ifc.md`); `None`:
    /// the caller keeps no flow, and no flow rule applies.
    pub flow: Option<&'a warden_core::flow::SessionFlow>,
}

/// What the approval book holds for the call being decided.
#[derive(Debug, Clone, Copy)]
pub enum ApprovalEvidence<'a> {
    /// An approval of this call, held for it while it is decided. It lets the call run if it
    /// was given for what the call needs now (`needed`, and whether the tier is `critical`).
    Approved {
        /// The approval id.
        id: &'a str,
        /// Who approved, as the reason names them.
        approved_by: &'a str,
        /// The escalation it was given for.
        needed: &'a Escalation,
        /// Whether it was given for a critical tier.
        critical: bool,
    },
    /// The approval cannot be used: the rule (`approval.used`, `approval.other_call`, ...) and
    /// why. An escalated call is then denied.
    Refused {
        /// The rule.
        rule: &'a str,
        /// Why.
        reason: &'a str,
    },
    /// The agent has as many approval requests open as it may: an escalated call is denied
    /// (`approval.too_many_open`) instead of opening another.
    Full {
        /// Why.
        reason: &'a str,
    },
}

/// Whether two escalations ask for the same thing (a queued call: the same opening, whatever
/// the text of the time).
fn same_need(a: &Escalation, b: &Escalation) -> bool {
    match (a, b) {
        (Escalation::Queued { until_unix: x, .. }, Escalation::Queued { until_unix: y, .. }) => {
            x == y
        }
        _ => a == b,
    }
}

/// The agents whose namespace `agent` is in, nearest first: `a.b.c` → `a.b`, `a`.
fn ancestors(agent: &str) -> impl Iterator<Item = &str> {
    agent
        .rmatch_indices('.')
        .filter_map(move |(i, _)| agent.get(..i))
        .filter(|a| !a.is_empty())
}

pub use warden_core::state::session_key;

fn quote_list(ids: &[String]) -> String {
    ids.iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn push_int_writes_decimal() {
        for v in [0i64, 7, -7, 10, 3600, 498_706, i64::MAX, i64::MIN] {
            let mut s = String::new();
            super::push_int(&mut s, v);
            assert_eq!(s, v.to_string());
        }
    }
}
