//! `warden manifest diff`: what changed between two manifests, with every loosening called out.

use crate::manifest::Manifest;
use crate::raw::TrustLevel;
use serde::Serialize;

/// How a change affects safety.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Impact {
    /// Grants more than before (a tier downgrade, a looser approval, a higher limit, more
    /// reach). Review before deploying.
    Loosened,
    /// Grants less than before.
    Tightened,
    /// Neither (or not rankable).
    Changed,
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Effect on safety.
    pub impact: Impact,
    /// Key path.
    pub path: String,
    /// What changed.
    pub message: String,
}

fn change(impact: Impact, path: impl Into<String>, message: impl Into<String>) -> Change {
    Change {
        impact,
        path: path.into(),
        message: message.into(),
    }
}

fn rank(looser: bool, tighter: bool) -> Impact {
    match (looser, tighter) {
        (true, false) => Impact::Loosened,
        (false, true) => Impact::Tightened,
        _ => Impact::Changed,
    }
}

/// Compares two validated manifests. Policy text changes show up through `policy_hash`
/// (compare bundle hashes separately).
#[must_use]
#[expect(clippy::too_many_lines, reason = "one section per manifest part")]
pub fn diff(old: &Manifest, new: &Manifest) -> Vec<Change> {
    let mut out = Vec::new();
    if new.version <= old.version {
        out.push(change(
            Impact::Changed,
            "version",
            format!(
                "version did not increase ({} -> {}); grants in flight will not be re-checked",
                old.version, new.version
            ),
        ));
    } else {
        out.push(change(
            Impact::Changed,
            "version",
            format!("{} -> {}", old.version, new.version),
        ));
    }

    // Tiers.
    for t in &old.tiers {
        let path = format!("risk_tiers.{}", t.name);
        match new.tiers.iter().find(|n| n.name == t.name) {
            None => out.push(change(Impact::Changed, path, "tier removed")),
            Some(n) => {
                let (a, b) = (t.approval.strictness(), n.approval.strictness());
                if t.approval != n.approval {
                    out.push(change(
                        rank(b < a, b > a),
                        format!("{path}.approval"),
                        format!(
                            "approval {} -> {}{}",
                            t.approval,
                            n.approval,
                            if b < a { " (loosened approval)" } else { "" }
                        ),
                    ));
                }
                if t.critical != n.critical {
                    out.push(change(
                        rank(t.critical, n.critical),
                        format!("{path}.critical"),
                        format!(
                            "critical {} -> {}{}",
                            t.critical,
                            n.critical,
                            if t.critical {
                                " (the owner alone may now approve)"
                            } else {
                                ""
                            }
                        ),
                    ));
                }
                if t.rate != n.rate {
                    let looser = match (t.rate, n.rate) {
                        (Some(x), Some(y)) => y.per_second() > x.per_second(),
                        (Some(_), None) => true,
                        _ => false,
                    };
                    let tighter = match (t.rate, n.rate) {
                        (Some(x), Some(y)) => y.per_second() < x.per_second(),
                        (None, Some(_)) => true,
                        _ => false,
                    };
                    out.push(change(
                        rank(looser, tighter),
                        format!("{path}.rate"),
                        format!("rate {} -> {}", show(t.rate), show(n.rate)),
                    ));
                }
            }
        }
    }
    for n in &new.tiers {
        if !old.tiers.iter().any(|t| t.name == n.name) {
            out.push(change(
                Impact::Changed,
                format!("risk_tiers.{}", n.name),
                format!("tier added ({})", n.approval),
            ));
        }
    }

    // Trust.
    for level in TrustLevel::ALL {
        for t in &new.tiers {
            let before = old
                .tier_index(&t.name)
                .and_then(|i| old.trust.get(&level).and_then(|m| m.get(i)).copied());
            let after = new
                .tier_index(&t.name)
                .and_then(|i| new.trust.get(&level).and_then(|m| m.get(i)).copied());
            if let (Some(b), Some(a)) = (before, after) {
                if a != b {
                    let score = |m: crate::manifest::TrustMode| match m {
                        crate::manifest::TrustMode::Forbidden => 0,
                        crate::manifest::TrustMode::WithApproval => 1,
                        crate::manifest::TrustMode::Autonomous => 2,
                    };
                    out.push(change(
                        rank(score(a) > score(b), score(a) < score(b)),
                        format!("trust.{}", level.as_str()),
                        format!(
                            "`{}` tier for `{}` agents: {b:?} -> {a:?}",
                            t.name,
                            level.as_str()
                        ),
                    ));
                }
            }
        }
    }

    // Agents.
    let mut agent_ids: Vec<&String> = old.agents.keys().chain(new.agents.keys()).collect();
    agent_ids.sort();
    agent_ids.dedup();
    for id in agent_ids {
        let path = format!("agents[{id}]");
        match (old.agents.get(id), new.agents.get(id)) {
            (Some(_), None) => out.push(change(Impact::Tightened, path, "agent removed")),
            (None, Some(a)) => out.push(change(
                Impact::Loosened,
                path,
                format!(
                    "agent added (tenant `{}`, zone `{}`, trust `{}`)",
                    a.tenant,
                    a.zone,
                    a.trust.as_str()
                ),
            )),
            (Some(a), Some(b)) => {
                if a.trust != b.trust {
                    out.push(change(
                        rank(b.trust > a.trust, b.trust < a.trust),
                        format!("{path}.trust"),
                        format!("trust {} -> {}", a.trust.as_str(), b.trust.as_str()),
                    ));
                }
                for (key, x, y) in [
                    ("tenant", &a.tenant, &b.tenant),
                    ("zone", &a.zone, &b.zone),
                    ("owner", &a.owner, &b.owner),
                ] {
                    if x != y {
                        out.push(change(
                            Impact::Changed,
                            format!("{path}.{key}"),
                            format!("{key} `{x}` -> `{y}`"),
                        ));
                    }
                }
            }
            (None, None) => {}
        }
    }

    // Tools.
    let mut tool_names: Vec<&String> = old.tools.keys().chain(new.tools.keys()).collect();
    tool_names.sort();
    tool_names.dedup();
    for name in tool_names {
        let path = format!("tools[{name}]");
        match (old.tools.get(name), new.tools.get(name)) {
            (Some(_), None) => out.push(change(Impact::Tightened, path, "tool removed")),
            (None, Some(t)) => {
                let tier = new
                    .tiers
                    .get(t.tier)
                    .map(|t| t.name.as_str())
                    .unwrap_or_default();
                out.push(change(
                    Impact::Loosened,
                    path,
                    format!("tool added (tier `{tier}`)"),
                ));
            }
            (Some(a), Some(b)) => {
                let (ta, tb) = (old.tiers.get(a.tier), new.tiers.get(b.tier));
                if let (Some(ta), Some(tb)) = (ta, tb) {
                    if ta.name != tb.name {
                        let (sa, sb) = (ta.approval.strictness(), tb.approval.strictness());
                        out.push(change(
                            rank(sb < sa, sb > sa),
                            format!("{path}.tier"),
                            format!(
                                "tier `{}` -> `{}`{}",
                                ta.name,
                                tb.name,
                                if sb < sa { " (tier downgrade)" } else { "" }
                            ),
                        ));
                    }
                }
                let widened =
                    |x: &Option<std::collections::BTreeSet<String>>,
                     y: &Option<std::collections::BTreeSet<String>>| match (
                        x, y,
                    ) {
                        (Some(_), None) => true,
                        (Some(x), Some(y)) => !y.is_subset(x),
                        _ => false,
                    };
                if a.zones != b.zones {
                    out.push(change(
                        rank(widened(&a.zones, &b.zones), widened(&b.zones, &a.zones)),
                        format!("{path}.zones"),
                        format!("zones {} -> {}", set(&a.zones), set(&b.zones)),
                    ));
                }
                if a.tenants != b.tenants {
                    out.push(change(
                        rank(
                            widened(&a.tenants, &b.tenants),
                            widened(&b.tenants, &a.tenants),
                        ),
                        format!("{path}.tenants"),
                        format!("tenants {} -> {}", set(&a.tenants), set(&b.tenants)),
                    ));
                }
                if a.arguments != b.arguments {
                    out.push(change(
                        Impact::Changed,
                        format!("{path}.arguments"),
                        "argument schema changed",
                    ));
                }
                let ea: std::collections::BTreeSet<_> = a.egress.iter().collect();
                let eb: std::collections::BTreeSet<_> = b.egress.iter().collect();
                if ea != eb {
                    out.push(change(
                        rank(!eb.is_subset(&ea), !ea.is_subset(&eb)),
                        format!("{path}.egress"),
                        format!("egress {:?} -> {:?}", a.egress, b.egress),
                    ));
                }
                let sa: std::collections::BTreeSet<_> = a.secrets.iter().collect();
                let sb: std::collections::BTreeSet<_> = b.secrets.iter().collect();
                if sa != sb {
                    out.push(change(
                        rank(!sb.is_subset(&sa), !sa.is_subset(&sb)),
                        format!("{path}.secrets"),
                        format!("secrets {:?} -> {:?}", a.secrets, b.secrets),
                    ));
                }
                if a.preview != b.preview {
                    out.push(change(
                        rank(!b.preview, b.preview),
                        format!("{path}.preview"),
                        format!("preview {} -> {}", a.preview, b.preview),
                    ));
                }
                if a.cost != b.cost {
                    out.push(change(
                        rank(b.cost < a.cost, b.cost > a.cost),
                        format!("{path}.cost"),
                        format!("cost {} -> {}", a.cost, b.cost),
                    ));
                }
                if a.classification != b.classification || a.output_trust != b.output_trust {
                    out.push(change(
                        Impact::Changed,
                        format!("{path}.output"),
                        format!(
                            "output {}/{} -> {}/{}",
                            a.output_trust.as_str(),
                            a.classification.as_str(),
                            b.output_trust.as_str(),
                            b.classification.as_str()
                        ),
                    ));
                }
            }
            (None, None) => {}
        }
    }

    // Budgets and invariants.
    for (key, a, b) in [
        ("budgets.agent", old.agent_budget, new.agent_budget),
        ("budgets.tenant", old.tenant_budget, new.tenant_budget),
        ("budgets.global", old.global_budget, new.global_budget),
    ] {
        for (field, x, y) in [("calls", a.calls, b.calls), ("cost", a.cost, b.cost)] {
            if x != y {
                let looser = match (x, y) {
                    (Some(x), Some(y)) => y.per_second() > x.per_second(),
                    (Some(_), None) => true,
                    _ => false,
                };
                let tighter = match (x, y) {
                    (Some(x), Some(y)) => y.per_second() < x.per_second(),
                    (None, Some(_)) => true,
                    _ => false,
                };
                out.push(change(
                    rank(looser, tighter),
                    format!("{key}.{field}"),
                    format!("{} -> {}", show(x), show(y)),
                ));
            }
        }
    }
    for inv in &old.invariants {
        if !new.invariants.iter().any(|n| n.name == inv.name) {
            out.push(change(
                Impact::Loosened,
                format!("invariants[{}]", inv.name),
                "invariant removed",
            ));
        }
    }
    for inv in &new.invariants {
        match old.invariants.iter().find(|o| o.name == inv.name) {
            None => out.push(change(
                Impact::Tightened,
                format!("invariants[{}]", inv.name),
                "invariant added",
            )),
            Some(o) if o.calls != inv.calls || o.cost != inv.cost || o.tools != inv.tools => out
                .push(change(
                    invariant_impact(o, inv),
                    format!("invariants[{}]", inv.name),
                    invariant_changes(o, inv),
                )),
            Some(_) => {}
        }
    }
    let (ob, nb) = (&old.breakers, &new.breakers);
    for (key, before, after, looser_when_higher) in [
        (
            "repeat_pattern",
            i64::from(ob.repeat_pattern),
            i64::from(nb.repeat_pattern),
            true,
        ),
        (
            "consecutive_failures",
            i64::from(ob.consecutive_failures),
            i64::from(nb.consecutive_failures),
            true,
        ),
        // A shorter cooldown reopens a tripped breaker sooner; a shorter session history
        // forgets repeats sooner: both loosen.
        ("cooldown", ob.cooldown_secs, nb.cooldown_secs, false),
        (
            "session_ttl",
            ob.session_ttl_secs,
            nb.session_ttl_secs,
            false,
        ),
    ] {
        if before != after {
            let looser = if looser_when_higher {
                after > before
            } else {
                after < before
            };
            out.push(change(
                rank(looser, !looser),
                format!("breakers.{key}"),
                format!("{before} -> {after}"),
            ));
        }
    }
    approver_changes(old, new, &mut out);
    if old.policies != new.policies {
        out.push(change(
            Impact::Changed,
            "policies",
            format!("{:?} -> {:?}", old.policies, new.policies),
        ));
    }
    out
}

/// Approvers: one added, a role gained or a key replaced loosens (more people, or another key,
/// can approve); one removed or a role dropped tightens. Approval settings: longer lifetimes,
/// more open requests loosen.
fn approver_changes(old: &Manifest, new: &Manifest, out: &mut Vec<Change>) {
    for (id, a) in &old.approvers {
        let path = format!("approvers.{id}");
        match new.approvers.get(id) {
            None => out.push(change(Impact::Tightened, path, "approver removed")),
            Some(b) => {
                if a.key != b.key {
                    out.push(change(
                        Impact::Loosened,
                        format!("{path}.key"),
                        "key replaced (votes signed by the new key count)",
                    ));
                }
                if a.roles != b.roles {
                    let gained = b.roles.difference(&a.roles).count() > 0;
                    let lost = a.roles.difference(&b.roles).count() > 0;
                    out.push(change(
                        rank(gained, lost),
                        format!("{path}.roles"),
                        format!("roles {:?} -> {:?}", a.roles, b.roles),
                    ));
                }
            }
        }
    }
    for id in new.approvers.keys() {
        if !old.approvers.contains_key(id) {
            out.push(change(
                Impact::Loosened,
                format!("approvers.{id}"),
                "approver added",
            ));
        }
    }
    let (a, b) = (&old.approvals, &new.approvals);
    for (key, before, after) in [
        (
            "request_ttl_seconds",
            a.request_ttl_secs,
            b.request_ttl_secs,
        ),
        ("redeem_ttl_seconds", a.redeem_ttl_secs, b.redeem_ttl_secs),
        (
            "max_open_per_agent",
            u64::from(a.max_open_per_agent),
            u64::from(b.max_open_per_agent),
        ),
    ] {
        if before != after {
            out.push(change(
                rank(after > before, after < before),
                format!("approvals.{key}"),
                format!("{before} -> {after}"),
            ));
        }
    }
    let (op, np) = (&old.promotion, &new.promotion);
    for (key, before, after) in [
        ("min_days", u64::from(op.min_days), u64::from(np.min_days)),
        ("min_calls", op.min_calls, np.min_calls),
    ] {
        if before != after {
            out.push(change(
                rank(after < before, after > before),
                format!("promotion.{key}"),
                format!("{before} -> {after}"),
            ));
        }
    }
    // Where notifications go: a moved or removed webhook is for the reviewers to read.
    if old.raw.notifications != new.raw.notifications {
        let urls = |m: &Manifest| {
            m.webhooks
                .iter()
                .map(|w| w.url.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push(change(
            Impact::Changed,
            "notifications",
            format!("webhooks [{}] -> [{}]", urls(old), urls(new)),
        ));
    }
    match (&old.governance, &new.governance) {
        (Some(o), None) => out.push(change(
            Impact::Loosened,
            "governance",
            format!(
                "governance removed (was {} approver(s)): manifest changes need no approval",
                o.approvers
            ),
        )),
        (None, Some(n)) => out.push(change(
            Impact::Tightened,
            "governance",
            format!("governance added: {} approver(s)", n.approvers),
        )),
        (Some(o), Some(n)) if o != n => out.push(change(
            rank(
                n.approvers < o.approvers || (o.role.is_some() && n.role.is_none()),
                n.approvers > o.approvers || (o.role.is_none() && n.role.is_some()),
            ),
            "governance",
            format!(
                "{} approver(s){} -> {} approver(s){}",
                o.approvers,
                o.role
                    .as_ref()
                    .map_or(String::new(), |r| format!(" of `{r}`")),
                n.approvers,
                n.role
                    .as_ref()
                    .map_or(String::new(), |r| format!(" of `{r}`"))
            ),
        )),
        _ => {}
    }
    if a.wait_secs != b.wait_secs {
        out.push(change(
            Impact::Changed,
            "approvals.wait_seconds",
            format!("{} -> {}", a.wait_secs, b.wait_secs),
        ));
    }
}

/// A cap raised or dropped, or fewer tools counted, loosens; the reverse tightens.
fn invariant_impact(old: &crate::manifest::Invariant, new: &crate::manifest::Invariant) -> Impact {
    let cap = |a: Option<crate::rate::Rate>, b: Option<crate::rate::Rate>| match (a, b) {
        (Some(x), Some(y)) => (
            y.per_second() > x.per_second(),
            y.per_second() < x.per_second(),
        ),
        (Some(_), None) => (true, false),
        (None, Some(_)) => (false, true),
        (None, None) => (false, false),
    };
    let (l1, t1) = cap(old.calls, new.calls);
    let (l2, t2) = cap(old.cost, new.cost);
    let l3 = !new.tools.is_superset(&old.tools);
    let t3 = !old.tools.is_superset(&new.tools);
    rank(l1 || l2 || l3, t1 || t2 || t3)
}

/// What changed in an invariant, naming only what did.
fn invariant_changes(old: &crate::manifest::Invariant, new: &crate::manifest::Invariant) -> String {
    let mut parts = Vec::new();
    if old.calls != new.calls {
        parts.push(format!("calls {} -> {}", show(old.calls), show(new.calls)));
    }
    if old.cost != new.cost {
        parts.push(format!("cost {} -> {}", show(old.cost), show(new.cost)));
    }
    if old.tools != new.tools {
        let list = |t: &std::collections::BTreeSet<String>| {
            format!("[{}]", t.iter().cloned().collect::<Vec<_>>().join(", "))
        };
        parts.push(format!(
            "tools counted {} -> {}",
            list(&old.tools),
            list(&new.tools)
        ));
    }
    parts.join(", ")
}

fn show(r: Option<crate::rate::Rate>) -> String {
    r.map_or_else(|| "none".to_string(), |r| r.to_string())
}

fn set(s: &Option<std::collections::BTreeSet<String>>) -> String {
    match s {
        None => "*".to_string(),
        Some(s) => format!("[{}]", s.iter().cloned().collect::<Vec<_>>().join(", ")),
    }
}
