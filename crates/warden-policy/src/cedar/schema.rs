//! The Cedar schema Warden generates from the manifest (one action per tool, a typed context per
//! action), the entities of its agents, tenants, zones, tools and tiers, and the argument types.

use super::*;

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

    /// The type of what a completion has of these arguments: a record's attributes, none
    /// required (the arguments not chosen yet are not missing). A policy that reads a
    /// required one (Cedar's validator lets it, without `has`) the completion lacks meets an
    /// error: a permit in error permits nothing, and a forbid in error denies (Warden counts
    /// it as matching), so such a forbid is written behind `has` to let completions without
    /// that argument through.
    #[must_use]
    pub fn partial(&self) -> ArgType {
        match self {
            ArgType::Record(attrs) => ArgType::Record(
                attrs
                    .iter()
                    .map(|(name, t, _)| (name.clone(), t.clone(), false))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    pub(super) fn cedar_json(&self) -> Value {
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
    /// [`CedarError`] naming the JSON path that does not fit.
    pub fn check(&self, value: &Value, at: &str) -> Result<(), CedarError> {
        match (self, value) {
            (ArgType::String, Value::String(_)) | (ArgType::Bool, Value::Bool(_)) => Ok(()),
            (ArgType::Long, Value::Number(n)) => {
                let fits = n.as_i64().is_some()
                    || n.as_f64()
                        .is_some_and(|f| f.fract() == 0.0 && f.abs() < 9.0e15);
                if fits {
                    Ok(())
                } else {
                    Err(CedarError::TooLarge(at.to_owned()))
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
                        None if *required => {
                            return Err(CedarError::Required(format!("{at}/{name}")))
                        }
                        None => {}
                    }
                }
                Ok(())
            }
            _ => Err(CedarError::UnexpectedType(
                if at.is_empty() { "/" } else { at }.to_owned(),
            )),
        }
    }

    /// Projects a (schema-valid) argument value onto this type.
    ///
    /// # Errors
    /// [`CedarError`] naming the JSON path that does not fit.
    pub fn project(&self, value: &Value, at: &str) -> Result<RestrictedExpression, CedarError> {
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
                    .ok_or_else(|| CedarError::TooLarge(at.to_owned()))
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
                        None if *required => {
                            return Err(CedarError::Required(format!("{at}/{name}")))
                        }
                        None => {}
                    }
                }
                RestrictedExpression::new_record(pairs).map_err(|e| cedar_err(at)(&e))
            }
            _ => Err(CedarError::UnexpectedType(
                if at.is_empty() { "/" } else { at }.to_owned(),
            )),
        }
    }
}

pub(super) fn uid(ty: &str, id: &str) -> Result<EntityUid, CedarError> {
    let ty = EntityTypeName::from_str(ty).map_err(|e| cedar_err("")(&e))?;
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
                        "args_tainted": {"type": "Set", "element": s("String")},
                        "read_untrusted": s("Boolean"),
                        "session_classification": s("String"),
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
pub(super) fn first_offset(d: &dyn miette::Diagnostic) -> Option<usize> {
    d.labels()?.next().map(|l| l.offset())
}

pub(super) fn line_at(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .map_or(1, |t| t.bytes().filter(|&b| b == b'\n').count() + 1)
}

/// The attributes of tool `name` as policies see them (the same values as its Cedar entity).
pub(super) fn tool_facts(m: &Manifest, name: &str) -> ToolFacts {
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
pub(super) fn unknown_entities(m: &Manifest, all: &PolicySet) -> Vec<(String, String)> {
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

pub(super) fn build_entities(m: &Manifest, schema: &Schema) -> Result<Entities, CedarError> {
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
        out.push(Entity::new(uid("Agent", &a.id)?, attrs, parents).map_err(|e| cedar_err("")(&e))?);
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
        out.push(
            Entity::new(uid("Tool", &t.name)?, attrs, parents).map_err(|e| cedar_err("")(&e))?,
        );
    }
    Entities::from_entities(out, Some(schema)).map_err(|e| cedar_err("")(&e))
}
