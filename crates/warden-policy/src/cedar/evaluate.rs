//! Evaluating a call against the index: the native evaluator for the common policy shapes,
//! Cedar for the rest (and as the oracle), context-free results cached.

use super::index::*;
use super::schema::*;
use super::*;

/// A Cedar request built on first use, and the call's facts for native evaluation.
pub(super) struct LazyRequest<'a, F> {
    pub(super) make: Option<F>,
    pub(super) request: Option<Request>,
    pub(super) call: Option<Call<'a>>,
    /// Whether Cedar evaluated any part (tests check the native path is taken).
    pub(super) used_cedar: bool,
}

impl<F: FnOnce() -> Result<Request, CedarError>> LazyRequest<'_, F> {
    pub(super) fn get(&mut self) -> Result<&Request, CedarError> {
        if self.request.is_none() {
            let make = self.make.take().ok_or(CedarError::NoRequest)?;
            self.request = Some(make()?);
        }
        self.request.as_ref().ok_or(CedarError::NoRequest)
    }

    /// Evaluates `set`: natively where it can, else in Cedar, building the request only if
    /// the set is not empty.
    pub(super) fn evaluate(
        &mut self,
        index: &CedarIndex,
        set: &Policies,
    ) -> Result<Part, CedarError> {
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
impl CedarIndex {
    /// Evaluates one part of the policies.
    pub(super) fn evaluate_part(&self, request: &Request, set: &PolicySet) -> Part {
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
    pub(super) fn cached_part<F>(
        &self,
        key: (u32, u32, bool),
        request: &mut LazyRequest<'_, F>,
        set: &Policies,
    ) -> Result<Option<Arc<Part>>, CedarError>
    where
        F: FnOnce() -> Result<Request, CedarError>,
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
    ) -> Result<(CedarOutcome, bool), CedarError> {
        let mut used_cedar = false;
        let outcome = self.evaluate_traced(agent, tool, Some(facts), &mut used_cedar, || {
            self.request_with_flow(
                agent,
                tool,
                facts.arg_type,
                facts.arguments,
                facts.session,
                facts.hour,
                facts.flow,
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
    ) -> Result<CedarOutcome, CedarError>
    where
        F: FnOnce() -> Result<Request, CedarError>,
    {
        let mut used_cedar = false;
        self.evaluate_traced(agent, tool, facts, &mut used_cedar, make)
    }

    pub(super) fn evaluate_traced<F>(
        &self,
        agent: &str,
        tool: &str,
        facts: Option<CallFacts<'_>>,
        used_cedar: &mut bool,
        make: F,
    ) -> Result<CedarOutcome, CedarError>
    where
        F: FnOnce() -> Result<Request, CedarError>,
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
                flow: f.flow,
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
    pub(super) fn class_of(&self, agent: &Agent) -> Option<u32> {
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
    ) -> Result<Request, CedarError> {
        self.request_with_flow(
            agent,
            tool,
            arg_type,
            arguments,
            session,
            hour,
            super::FlowFacts::default(),
        )
    }

    /// [`Self::request`], with what the session has read.
    ///
    /// # Errors
    /// As [`Self::request`].
    #[expect(clippy::too_many_arguments, reason = "the parts of one Cedar request")]
    pub fn request_with_flow(
        &self,
        agent: &str,
        tool: &str,
        arg_type: Option<&ArgType>,
        arguments: &Value,
        session: &str,
        hour: i64,
        flow: super::FlowFacts<'_>,
    ) -> Result<Request, CedarError> {
        let principal = &self
            .agents
            .get(agent)
            .ok_or_else(|| CedarError::UnknownAgent(agent.to_owned()))?
            .uid;
        let (action, resource) = self
            .tool_uids
            .get(tool)
            .ok_or_else(|| CedarError::UnknownTool(tool.to_owned()))?;
        let args = match arg_type {
            Some(t) => t.project(arguments, "")?,
            None => RestrictedExpression::new_record(Vec::<(String, RestrictedExpression)>::new())
                .map_err(|e| cedar_err("")(&e))?,
        };
        let context = Context::from_pairs([
            ("arguments".to_string(), args),
            (
                "session".to_string(),
                RestrictedExpression::new_string(session.to_string()),
            ),
            ("hour".to_string(), RestrictedExpression::new_long(hour)),
            (
                "args_tainted".to_string(),
                RestrictedExpression::new_set(
                    flow.tainted
                        .iter()
                        .map(|t| RestrictedExpression::new_string(t.clone())),
                ),
            ),
            (
                "read_untrusted".to_string(),
                RestrictedExpression::new_bool(flow.read_untrusted),
            ),
            (
                "session_classification".to_string(),
                RestrictedExpression::new_string(flow.classification.to_owned()),
            ),
        ])
        .map_err(|e| cedar_err("")(&e))?;
        Request::new(
            principal.clone(),
            action.clone(),
            resource.clone(),
            context,
            None,
        )
        .map_err(|e| cedar_err("")(&e))
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
