//! The manifest's approvers and approval settings, validated.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use base64::Engine as _;

use crate::manifest::{Agent, Collector};
use crate::raw::{RawApprovals, RawApprover};

/// An approver (validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApproverSpec {
    /// Roles held.
    pub roles: BTreeSet<String>,
    /// Ed25519 public key bytes (a valid curve point).
    pub key: [u8; 32],
}

/// How approval requests behave (validated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApprovalSettings {
    /// A pending request expires after this many seconds.
    pub request_ttl_secs: u64,
    /// An approved call must run within this many seconds.
    pub redeem_ttl_secs: u64,
    /// An MCP call waits this many seconds for its approval.
    pub wait_secs: u64,
    /// Open requests per agent.
    pub max_open_per_agent: u32,
}

/// Who must approve a manifest change (validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Governance {
    /// How many distinct approvers.
    pub approvers: u32,
    /// The role they must hold, if any.
    pub role: Option<String>,
}

/// Validates `governance`: the count is 1-100, the role well formed, and the manifest lists
/// enough approvers (with the role) to ever approve a change — otherwise it could never be
/// replaced.
pub(crate) fn validate_governance(
    c: &mut Collector<'_>,
    raw: Option<&crate::raw::RawGovernance>,
    approvers: &BTreeMap<String, ApproverSpec>,
) -> Option<Governance> {
    let g = raw?;
    if g.approvers == 0 || g.approvers > 100 {
        c.err(
            "governance.approvers",
            format!("{} is out of range: 1 to 100", g.approvers),
        );
    }
    if let Some(r) = &g.role {
        if !crate::manifest::valid_id(r) {
            c.err(
                "governance.role",
                format!("role `{r}` {}", crate::manifest::ID_RULE),
            );
        }
    }
    let eligible = approvers
        .values()
        .filter(|a| g.role.as_ref().is_none_or(|r| a.roles.contains(r)))
        .count();
    if u32::try_from(eligible).unwrap_or(u32::MAX) < g.approvers {
        c.err(
            "governance.approvers",
            format!(
                "{} approver(s){} must approve a manifest change, but the manifest lists {eligible}: it could never be changed",
                g.approvers,
                g.role.as_ref().map_or(String::new(), |r| format!(" of role `{r}`"))
            ),
        );
    }
    Some(Governance {
        approvers: g.approvers,
        role: g.role.clone(),
    })
}

/// The longest a request may stay open, a call may wait, or an approval stay redeemable.
const MAX_TTL_SECS: u64 = 7 * 24 * 3600;
/// The longest an MCP call may wait for its approval.
const MAX_WAIT_SECS: u64 = 3600;

/// Parses `ed25519:<base64 of 32 bytes>` into a valid public key.
///
/// # Errors
/// What is wrong with it, readable.
pub fn parse_public_key(text: &str) -> Result<[u8; 32], String> {
    let Some(b64) = text.strip_prefix("ed25519:") else {
        return Err("must start with `ed25519:` followed by the base64 public key".into());
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim().as_bytes())
        .map_err(|e| format!("is not base64: {e}"))?;
    let key: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("is {} bytes; an Ed25519 public key is 32", b.len()))?;
    ed25519_dalek::VerifyingKey::from_bytes(&key)
        .map_err(|_| "is not a valid Ed25519 public key".to_string())?;
    Ok(key)
}

/// Validates the approvers (ids unique and never an agent's, roles well formed, keys valid) and
/// the approval settings.
pub(crate) fn validate(
    c: &mut Collector<'_>,
    raw: &[RawApprover],
    settings: &RawApprovals,
    agents: &HashMap<String, Agent>,
) -> (BTreeMap<String, ApproverSpec>, ApprovalSettings) {
    let mut out = BTreeMap::new();
    let mut keys = BTreeMap::new();
    for (i, a) in raw.iter().enumerate() {
        let path = format!("approvers[{i}]");
        if !crate::manifest::valid_id(&a.id) {
            c.err(
                format!("{path}.id"),
                format!("approver id `{}` {}", a.id, crate::manifest::ID_RULE),
            );
        }
        // INVARIANT (INV-002): an agent can never approve, so no approver may be an agent.
        if agents.contains_key(&a.id) {
            c.err(
                format!("{path}.id"),
                format!("`{}` is an agent; agents never approve (INV-002)", a.id),
            );
        }
        let mut roles = BTreeSet::new();
        for (j, r) in a.roles.iter().enumerate() {
            if !crate::manifest::valid_id(r) {
                c.err(
                    format!("{path}.roles[{j}]"),
                    format!("role `{r}` {}", crate::manifest::ID_RULE),
                );
            }
            roles.insert(r.clone());
        }
        let key = match parse_public_key(&a.key) {
            Ok(k) => k,
            Err(e) => {
                c.err(format!("{path}.key"), format!("the key {e}"));
                continue;
            }
        };
        // One key, one person: otherwise one holder could count as two approvers.
        if let Some(other) = keys.insert(key, a.id.clone()) {
            c.err(
                format!("{path}.key"),
                format!("the same key as approver `{other}`; each approver needs their own"),
            );
        }
        if out
            .insert(a.id.clone(), ApproverSpec { roles, key })
            .is_some()
        {
            c.err(
                format!("{path}.id"),
                format!("duplicate approver `{}`", a.id),
            );
        }
    }
    let mut secs = |key: &str, v: u64, min: u64, max: u64| {
        if v < min || v > max {
            c.err(
                format!("approvals.{key}"),
                format!("{v} is out of range: {min} to {max} seconds"),
            );
        }
        v.clamp(min, max)
    };
    let request_ttl_secs = secs(
        "request_ttl_seconds",
        settings.request_ttl_seconds,
        1,
        MAX_TTL_SECS,
    );
    let redeem_ttl_secs = secs(
        "redeem_ttl_seconds",
        settings.redeem_ttl_seconds,
        1,
        MAX_TTL_SECS,
    );
    let wait_secs = secs("wait_seconds", settings.wait_seconds, 0, MAX_WAIT_SECS);
    if settings.max_open_per_agent == 0 || settings.max_open_per_agent > 10_000 {
        c.err(
            "approvals.max_open_per_agent",
            format!(
                "{} is out of range: 1 to 10000",
                settings.max_open_per_agent
            ),
        );
    }
    (
        out,
        ApprovalSettings {
            request_ttl_secs,
            redeem_ttl_secs,
            wait_secs,
            max_open_per_agent: settings.max_open_per_agent.clamp(1, 10_000),
        },
    )
}

/// Renders a preview template: `${name}` becomes the top-level argument `name` (strings as
/// they are, other values as JSON), cut to 200 characters; an unknown name stays as written.
#[must_use]
pub fn render(template: &str, arguments: &serde_json::Value) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        let (before, after) = rest.split_at(start);
        out.push_str(before);
        let body = after.get(2..).unwrap_or("");
        let Some(end) = body.find('}') else {
            out.push_str(after);
            rest = "";
            break;
        };
        let (name, tail) = body.split_at(end);
        match arguments.get(name) {
            Some(serde_json::Value::String(s)) => out.push_str(&cut(s)),
            Some(v) => out.push_str(&cut(&v.to_string())),
            None => {
                out.push_str("${");
                out.push_str(name);
                out.push('}');
            }
        }
        rest = tail.get(1..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

fn cut(s: &str) -> String {
    if s.chars().count() <= 200 {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(200).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_in_arguments() {
        let args = serde_json::json!({"service": "api", "count": 3, "long": "x".repeat(300)});
        assert_eq!(
            render("deploy ${service} (${count} objects) ${missing}", &args),
            "deploy api (3 objects) ${missing}"
        );
        assert_eq!(render("${long}", &args).chars().count(), 201);
        assert_eq!(
            render("unterminated ${service", &args),
            "unterminated ${service"
        );
    }

    #[test]
    fn public_keys_must_be_ed25519() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]).verifying_key();
        let text = format!(
            "ed25519:{}",
            base64::engine::general_purpose::STANDARD.encode(key.to_bytes())
        );
        assert_eq!(parse_public_key(&text).unwrap(), key.to_bytes());
        assert!(parse_public_key("ed25519:AAAA")
            .unwrap_err()
            .contains("3 bytes"));
        assert!(parse_public_key("rsa:AAAA")
            .unwrap_err()
            .contains("ed25519:"));
    }
}

/// The events webhooks can carry.
pub const NOTIFY_EVENTS: [&str; 4] = [
    "approval.requested",
    "hold.changed",
    "breaker.tripped",
    "governance.proposed",
];

/// A webhook (validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Host and port to connect to.
    pub authority: String,
    /// The request path (with query).
    pub path: String,
    /// The URL as written (for messages).
    pub url: String,
    /// The secret's name.
    pub secret: String,
    /// Payload shape.
    pub format: crate::raw::WebhookFormat,
    /// Telegram chat.
    pub chat_id: Option<String>,
    /// Events it carries.
    pub events: BTreeSet<String>,
}

/// Validates the webhooks: `http://` or `https://` URLs, secrets that the manifest's `secrets`
/// name, known events, a `chat_id` for Telegram.
pub(crate) fn validate_notifications(
    c: &mut Collector<'_>,
    raw: Option<&crate::raw::RawNotifications>,
    secrets: &BTreeMap<String, crate::upstream::SecretSource>,
) -> Vec<Webhook> {
    let mut out = Vec::new();
    for (i, w) in raw
        .map(|n| n.webhooks.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let path = format!("notifications.webhooks[{i}]");
        let Some(rest) = w
            .url
            .strip_prefix("http://")
            .or_else(|| w.url.strip_prefix("https://"))
        else {
            c.err(
                format!("{path}.url"),
                format!("`{}` must be an http:// or https:// URL", w.url),
            );
            continue;
        };
        let (authority, rest_path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty()
            || authority.contains('@')
            || !authority
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | ':' | '[' | ']'))
        {
            c.err(
                format!("{path}.url"),
                format!("`{}` has no valid host", w.url),
            );
            continue;
        }
        if rest_path
            .chars()
            .any(|ch| ch.is_whitespace() || ch.is_control())
        {
            c.err(format!("{path}.url"), "the path holds whitespace");
            continue;
        }
        if !secrets.contains_key(&w.secret) {
            c.err(
                format!("{path}.secret"),
                format!("`{}` is not in `secrets`", w.secret),
            );
        }
        let events: BTreeSet<String> = match &w.events {
            Some(list) => list.iter().cloned().collect(),
            None => NOTIFY_EVENTS.iter().map(|e| (*e).to_owned()).collect(),
        };
        for e in &events {
            if !NOTIFY_EVENTS.contains(&e.as_str()) {
                c.err(
                    format!("{path}.events"),
                    format!("unknown event `{e}`; known: {}", NOTIFY_EVENTS.join(", ")),
                );
            }
        }
        if w.format == crate::raw::WebhookFormat::Telegram && w.chat_id.is_none() {
            c.err(
                format!("{path}.chat_id"),
                "a telegram webhook needs `chat_id`",
            );
        }
        out.push(Webhook {
            authority: authority.to_owned(),
            path: if rest_path.is_empty() {
                "/".into()
            } else {
                rest_path.to_owned()
            },
            url: w.url.clone(),
            secret: w.secret.clone(),
            format: w.format,
            chat_id: w.chat_id.clone(),
            events,
        });
    }
    out
}
