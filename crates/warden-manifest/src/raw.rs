//! The manifest as written: serde types with `deny_unknown_fields`, from which the JSON Schema
//! (`warden manifest schema`) is generated. [`crate::manifest`] validates these into the
//! internal types the Governor uses.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// A Warden manifest: the single source of truth for what agents may do.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    /// Logical clock: raise it on every change. Decisions and grants cite it.
    pub version: u64,
    /// Risk tiers by name, each with its approval mode and rate limit.
    pub risk_tiers: BTreeMap<String, RawTier>,
    /// Progressive trust: for each trust level, which tiers its agents may run without approval
    /// and which only with approval. A tier listed in neither is forbidden to that level.
    pub trust: BTreeMap<TrustLevel, RawTrust>,
    /// Tenants (isolation boundaries, INV-008).
    pub tenants: Vec<RawTenant>,
    /// Trust zones agents live in.
    pub zones: Vec<RawZone>,
    /// The agents Warden knows. Any other agent is denied.
    pub agents: Vec<RawAgent>,
    /// The tools agents may propose. Any other tool is denied (INV-005).
    pub tools: Vec<RawTool>,
    /// The upstreams' resources agents may read (`resources/read`); any other URI is denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<RawResource>,
    /// The upstreams' prompts agents may get (`prompts/get`); any other prompt is denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<RawPrompt>,
    /// Call and cost budgets per agent, per tenant and in total.
    #[serde(default)]
    pub budgets: RawBudgets,
    /// System-level invariants: aggregate caps over a selection of tools, across all agents.
    #[serde(default)]
    pub invariants: Vec<RawInvariant>,
    /// Circuit-breaker settings.
    #[serde(default)]
    pub breakers: RawBreakers,
    /// Cedar policy files, relative to the manifest; the last path component may hold one `*`.
    pub policies: Vec<String>,
    /// Upstream MCP servers; their tools are served as `<upstream>.<tool>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<RawUpstream>,
    /// Where each secret comes from, by secret name. Values never appear in the manifest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, RawSecretSource>,
    /// Pins of each upstream, by upstream name (`warden upstreams pin --write` writes them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pins: BTreeMap<String, RawPins>,
    /// The people who approve escalated calls, each with their roles and Ed25519 public key.
    /// Never an agent (INV-002).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<RawApprover>,
    /// How approval requests behave: expiry, waiting, caps.
    #[serde(default)]
    pub approvals: RawApprovals,
    /// Who must approve replacing this manifest or its policies in a running Warden (INV-020).
    /// Omitted, a reload needs no approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governance: Option<RawGovernance>,
    /// Who is told when approvals are requested, brakes change or breakers trip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<RawNotifications>,
    /// What an agent must show before `warden agents promote` raises (or restores) its trust.
    #[serde(default)]
    pub promotion: RawPromotion,
    /// Information-flow control: what a session has read decides what it may do next
    /// (`docs/ifc.md`).
    #[serde(default)]
    pub flow: RawFlow,
}

/// Information-flow settings (`docs/ifc.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFlow {
    /// A tainted argument (a value read from untrusted output, not from the task, a trusted
    /// output or a known destination) of a tool with effects: `escalate` (default) or `deny`.
    #[serde(default)]
    pub on_taint: FlowAction,
    /// A controlling argument of a tool with effects whose value was seen nowhere (not the
    /// task, no output, no known destination): `escalate` (default), `deny` or `allow`.
    #[serde(default)]
    pub on_unknown_destination: FlowAction,
    /// A tool with effects called from a session that has read data classified above the
    /// tool's `egress_level`: `escalate`, `deny` or `allow` (default: no check).
    #[serde(default = "FlowAction::allow")]
    pub on_classification: FlowAction,
    /// Whether values seen in trusted outputs count as known destinations (default `true`).
    #[serde(default = "yes")]
    pub learn_from_trusted: bool,
    /// Most words and identifiers remembered per session (default 16384, at most 1048576). Past
    /// it, outputs are not remembered and every value not known to be clean is judged tainted.
    #[serde(default = "default_session_marks")]
    pub session_marks: u32,
    /// Whether the ledger keeps a session's task text (redacted) beside its hash and length
    /// (default `false`: only the hash and the length).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub record_task_text: bool,
}

impl Default for RawFlow {
    fn default() -> Self {
        RawFlow {
            on_taint: FlowAction::Escalate,
            on_unknown_destination: FlowAction::Escalate,
            on_classification: FlowAction::Allow,
            learn_from_trusted: true,
            session_marks: default_session_marks(),
            record_task_text: false,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_session_marks() -> u32 {
    16_384
}

/// What an information-flow finding leads to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FlowAction {
    /// Nothing: the finding is recorded only.
    Allow,
    /// The agent's owner (or the tier's approvers) must approve.
    #[default]
    Escalate,
    /// The call is denied.
    Deny,
}

impl FlowAction {
    fn allow() -> Self {
        FlowAction::Allow
    }

    /// The name as the manifest writes it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            FlowAction::Allow => "allow",
            FlowAction::Escalate => "escalate",
            FlowAction::Deny => "deny",
        }
    }
}

/// Promotion criteria (seed 002, progressive trust over time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPromotion {
    /// Days since the agent's first recorded call, its last promotion and its last violation
    /// (default 7).
    #[serde(default = "default_min_days")]
    pub min_days: u32,
    /// Allowed calls since its last violation (default 100).
    #[serde(default = "default_min_calls")]
    pub min_calls: u64,
}

impl Default for RawPromotion {
    fn default() -> Self {
        RawPromotion {
            min_days: default_min_days(),
            min_calls: default_min_calls(),
        }
    }
}

fn default_min_days() -> u32 {
    7
}

fn default_min_calls() -> u64 {
    100
}

/// Notifications.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNotifications {
    /// Webhooks, each signed with HMAC-SHA256.
    #[serde(default)]
    pub webhooks: Vec<RawWebhook>,
}

/// One webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// `http://host[:port]/path` or `https://…` (certificate verified against the system's
    /// roots).
    pub url: String,
    /// The name of the secret (in `secrets`) that keys the HMAC-SHA256 signature.
    pub secret: String,
    /// Payload shape: `generic` (default), `slack` (incoming-webhook `text`), `telegram`
    /// (`sendMessage`: `chat_id`, `text`).
    #[serde(default)]
    pub format: WebhookFormat,
    /// For `telegram`: the chat to post to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_id: Option<String>,
    /// Which events: `approval.requested`, `hold.changed`, `breaker.tripped`,
    /// `governance.proposed`; omit for all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
}

/// A webhook's payload shape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// `{"event", "text", "details", "time"}`.
    #[default]
    Generic,
    /// `{"text"}`, as Slack incoming webhooks take it.
    Slack,
    /// `{"chat_id", "text"}`, as Telegram's `sendMessage` takes it.
    Telegram,
}

/// Multi-party approval of manifest changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawGovernance {
    /// How many distinct approvers (1-100).
    pub approvers: u32,
    /// The role they must hold; omit for any approver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// One approver: a person, never an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawApprover {
    /// Id (an agent's `owner` names the approver with the same id).
    pub id: String,
    /// Roles held (tiers with `mode: role` require one).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Ed25519 public key: `ed25519:` and 32 bytes in base64 (`warden approvers keygen`
    /// prints it).
    pub key: String,
}

/// How approval requests behave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawApprovals {
    /// A pending request expires after this many seconds (default 900).
    #[serde(default = "default_request_ttl")]
    pub request_ttl_seconds: u64,
    /// An approved call must run within this many seconds of its approval (default 300).
    #[serde(default = "default_redeem_ttl")]
    pub redeem_ttl_seconds: u64,
    /// An MCP call that needs approval waits this many seconds for it (with progress
    /// notifications) before answering with the approval id; 0 answers at once (default 0).
    #[serde(default)]
    pub wait_seconds: u64,
    /// Open approval requests per agent (default 10); more are denied.
    #[serde(default = "default_max_open")]
    pub max_open_per_agent: u32,
}

impl Default for RawApprovals {
    fn default() -> Self {
        RawApprovals {
            request_ttl_seconds: default_request_ttl(),
            redeem_ttl_seconds: default_redeem_ttl(),
            wait_seconds: 0,
            max_open_per_agent: default_max_open(),
        }
    }
}

fn default_request_ttl() -> u64 {
    900
}

fn default_redeem_ttl() -> u64 {
    300
}

fn default_max_open() -> u32 {
    10
}

/// What approvers are shown of a call, written with `${argument}` placeholders for the call's
/// top-level arguments (INV-018).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPreview {
    /// What will change, e.g. `deploy ${service} ${version} to staging`.
    pub summary: String,
    /// How many objects it touches, e.g. `${count}` or `1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<String>,
    /// Whether the change cannot be undone.
    #[serde(default)]
    pub irreversible: bool,
}

/// What an upstream is pinned to: SHA-256 hashes (`sha256:<hex>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPins {
    /// The stdio server's executable (the file `command[0]` resolves to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    /// Other files it runs from (a package runner's lockfile), by path.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
    /// Each tool's name, description and schemas, by upstream tool name. Tools not listed here
    /// are withheld.
    #[serde(default)]
    pub tools: BTreeMap<String, String>,
}

/// An upstream MCP server the Executor runs tools on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// Name (letters, digits, `-`, `_`): the prefix of its tools' names.
    pub name: String,
    /// Stdio: the program and its arguments; Warden starts, restarts and stops it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Streamable HTTP: the server's MCP endpoint (`http://` or `https://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// For an `https://` upstream: a PEM file of the CA certificates to trust for it
    /// (absolute, or relative to the manifest), *instead of* the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Parameterized process tools, by tool name: each runs a fixed program with arguments
    /// filled from the call's arguments (never through a shell), inside the sandbox.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub process: BTreeMap<String, RawProcessTool>,
    /// Environment of a stdio server (it inherits nothing else but `PATH`, `HOME`, `LANG`).
    /// Values may hold `${secret:NAME}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// HTTP headers sent to an HTTP server. Values may hold `${secret:NAME}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// How long one call may take (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// The sandbox a stdio server runs in; omitted: the default sandbox (every guarantee
    /// required, default limits, no network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<RawSandbox>,
    /// Run a stdio server without a sandbox, and why (logged at every start). Instead of
    /// `sandbox`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsandboxed: Option<String>,
    /// What the server may ask of the agent's client while it serves one of the agent's calls:
    /// `sampling` (the client's model), `elicitation` (the user), `roots` (the client's roots).
    /// Omitted: none of them; Warden then does not offer them to the server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_requests: Vec<ClientRequestKind>,
}

/// A request an upstream may send to the agent's client.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ClientRequestKind {
    /// `sampling/createMessage`: a completion from the client's model.
    Sampling,
    /// `elicitation/create`: input from the user.
    Elicitation,
    /// `roots/list`: the client's roots.
    Roots,
}

impl ClientRequestKind {
    /// Its name in the manifest and in ledger events.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ClientRequestKind::Sampling => "sampling",
            ClientRequestKind::Elicitation => "elicitation",
            ClientRequestKind::Roots => "roots",
        }
    }
}

/// One parameterized process tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawProcessTool {
    /// The program: an absolute path.
    pub program: String,
    /// Its arguments: each is literal text, in which `{name}` is replaced by the call's argument
    /// `name` (a string, number or boolean). Each element stays one argument.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// What it does (shown to agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// The sandbox a stdio upstream runs in (issue 6; `docs/sandbox.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSandbox {
    /// Guarantees that must be enforced, or the server does not start: any of `filesystem`,
    /// `egress`, `privilege`, `limits`, `kill` (default: all five).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require: Option<Vec<String>>,
    /// Absolute host paths the server may read and execute besides the system (its
    /// installation: a virtualenv, a node_modules directory).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_only: Vec<String>,
    /// Resource limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RawSandboxLimits>,
    /// Where it may connect (through Warden's egress proxy); omitted: nowhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<RawEgress>,
    /// Longest Warden may lose sight of the server before it kills its whole tree
    /// (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<String>,
    /// One sandboxed process per `tenant` (default), per `agent` or per `session`: callers
    /// of different boundaries never share a process, a workspace or a network path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<RawRunner>,
}

/// The boundary one sandboxed process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawRunner {
    /// One per tenant.
    Tenant,
    /// One per agent.
    Agent,
    /// One per session (destroyed with it).
    Session,
}

/// A sandbox's resource limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSandboxLimits {
    /// Memory, in MiB (default 512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// Processes and threads (default 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
    /// CPU time of the server's whole process tree, in seconds, over its life (default 3600):
    /// the tree is killed when it passes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<u64>,
    /// CPU the tree may use at once, in thousandths of a core (default 1000: one core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millicores: Option<u64>,
    /// Open files (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
    /// Largest file it may write, in MiB (default 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size_mb: Option<u64>,
    /// The workspace's total size, in MiB (default 256): a private in-memory filesystem,
    /// charged to `memory_mb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_mb: Option<u64>,
}

/// A sandbox's egress allowlist and caps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEgress {
    /// Allowed destinations: `host`, `host:port`, `*.domain` or `*.domain:port`.
    pub allow: Vec<String>,
    /// Non-public networks it may reach anyway (`10.0.0.0/8`): loopback, private, link-local
    /// and metadata addresses are refused unless listed here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub private_networks: Vec<String>,
    /// Bytes one connection may send, in MiB (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_out_mb: Option<u64>,
    /// Bytes one connection may receive, in MiB (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_mb: Option<u64>,
    /// Connections per minute (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections_per_minute: Option<u32>,
}

/// Where a secret's value comes from: exactly one of `env`, `file` and `keyring`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSecretSource {
    /// An environment variable of the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// A file (absolute, or relative to the manifest); one trailing newline is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The description of a `user` key in the OS keyring: on Linux, the kernel's keyrings of
    /// the gateway's user (its session keyring, then its user keyring), e.g. put there with
    /// `keyctl padd user warden:GITHUB_TOKEN @u < token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyring: Option<String>,
}

/// One risk tier.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    /// How calls of this tier are approved.
    pub approval: RawApproval,
    /// Calls per agent per window, e.g. `10/h`. Omit for no tier limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// Free text shown to approvers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Critical: the agent's own owner is never the only approver of its calls.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub critical: bool,
}

/// How calls of a tier are approved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum RawApproval {
    /// Allowed without approval.
    Auto,
    /// Allowed without approval inside the daily window; outside it, queued until it opens.
    Window {
        /// `HH:MM-HH:MM`; may wrap past midnight (`22:00-06:00`).
        window: String,
        /// Offset of the window's clock from UTC, `+HH:MM` or `-HH:MM` (default `+00:00`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        utc_offset: Option<String>,
    },
    /// `approvers` distinct approvers holding `role` must approve.
    Role {
        /// How many distinct approvers.
        approvers: u32,
        /// The role they must hold.
        role: String,
    },
    /// `approvers` distinct humans must approve (multi-party approval, INV-020).
    Humans {
        /// How many distinct humans.
        approvers: u32,
    },
}

/// The four levels of progressive trust.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TrustLevel {
    /// Read-only; can analyse, cannot act.
    Intern,
    /// Can recommend; acts with approval.
    Junior,
    /// Acts within scope.
    Senior,
    /// Autonomous within broad scope.
    Principal,
}

impl TrustLevel {
    /// Every level, lowest first.
    pub const ALL: [TrustLevel; 4] = [
        TrustLevel::Intern,
        TrustLevel::Junior,
        TrustLevel::Senior,
        TrustLevel::Principal,
    ];

    /// The level's name as the manifest writes it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            TrustLevel::Intern => "intern",
            TrustLevel::Junior => "junior",
            TrustLevel::Senior => "senior",
            TrustLevel::Principal => "principal",
        }
    }

    /// 1 for intern up to 4 for principal (exposed to Cedar as `trust_rank`).
    #[must_use]
    pub fn rank(self) -> i64 {
        match self {
            TrustLevel::Intern => 1,
            TrustLevel::Junior => 2,
            TrustLevel::Senior => 3,
            TrustLevel::Principal => 4,
        }
    }
}

/// What one trust level may do.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTrust {
    /// Tiers run without an approval on account of trust (the tier's own mode still applies).
    #[serde(default)]
    pub autonomous: Vec<String>,
    /// Tiers run only after the agent's owner approves.
    #[serde(default)]
    pub with_approval: Vec<String>,
}

/// A tenant.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    /// Tenant id.
    pub id: String,
}

/// A trust zone.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawZone {
    /// Zone id.
    pub id: String,
    /// Destinations its agents may reach without further evidence: addresses, accounts,
    /// domains, channels, user names (`docs/ifc.md`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// An agent.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    /// Agent id.
    pub id: String,
    /// The tenant it works for.
    pub tenant: String,
    /// The human it is paired with: the root of its lineage.
    pub owner: String,
    /// The zone it lives in.
    pub zone: String,
    /// Its trust level.
    pub trust: TrustLevel,
}

/// A tool.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTool {
    /// Tool name (letters, digits, `.`, `_`, `-`, `:`).
    pub name: String,
    /// Its risk tier.
    pub tier: String,
    /// Zones it may be called from; `"*"` for every zone.
    pub zones: Vec<String>,
    /// Tenants that may use it; omit for every tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Vec<String>>,
    /// JSON Schema of its arguments (root type `object`). Omit for a tool without arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Map<String, Value>>")]
    pub arguments: Option<Value>,
    /// Trust and classification of what it returns.
    #[serde(default)]
    pub output: RawOutput,
    /// Whether a call changes something or reaches outside (a payment, a message, a fetch):
    /// its arguments are then checked against what the session has read (`docs/ifc.md`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub effects: bool,
    /// Arguments that choose where a call acts (recipients, accounts, URLs, paths, channel and
    /// user ids, credentials): their values must come from the task, a trusted output or a
    /// known destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controlling: Vec<String>,
    /// Controlling arguments the agent may look up for another one: `{user_email: user}` lets
    /// `user_email` come from an untrusted output when `user` is clean, the output was read
    /// from a source the task named, and it holds exactly one value of that kind.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lookup: BTreeMap<String, String>,
    /// Hosts it may reach (enforced by the Executor's egress guard).
    #[serde(default)]
    pub egress: Vec<String>,
    /// Names of the secrets the Executor injects for it (never values).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Whether a preview of its effect is produced before approval (INV-018).
    #[serde(default)]
    pub preview: bool,
    /// What approvers are shown of a call that needs approval (INV-018).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_template: Option<RawPreview>,
    /// Cost units one call consumes from cost budgets.
    #[serde(default)]
    pub cost: u64,
    /// Detectors the Executor runs over this tool's results (and, for egress tools, its
    /// arguments): `credentials`, `pii`, or single detectors (`docs/redaction.md`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<String>,
    /// For a tool with `egress` hosts: the most sensitive data its arguments may carry out
    /// (default `public`). Secrets and credentials are `restricted`, personal data
    /// `confidential`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_level: Option<Classification>,
    /// What happens when its arguments carry more than `egress_level`: `deny` (default) or
    /// `escalate` (the owner, or the tier's approvers, must approve).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_leak: Option<LeakAction>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Resources of one upstream that agents may read: each read is decided like a tool call.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawResource {
    /// `<upstream>.<label>`: the upstream that serves the resources, and a label of your
    /// choosing. Decisions, budgets, invariants and Cedar policies name it like a tool.
    pub name: String,
    /// The URIs it admits: each exact, or ending in `*` to admit every URI that starts with
    /// what comes before (no `.`/`..` segment, backslash or encoded `.`, `/` or `\` after it).
    pub uris: Vec<String>,
    /// Its risk tier.
    pub tier: String,
    /// Zones it may be read from; `"*"` for every zone.
    pub zones: Vec<String>,
    /// Tenants that may read it; omit for every tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Vec<String>>,
    /// Trust and classification of what a read returns.
    #[serde(default)]
    pub output: RawOutput,
    /// Cost units one read consumes from cost budgets.
    #[serde(default)]
    pub cost: u64,
    /// Detectors the Executor runs over what a read returns (`docs/redaction.md`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A prompt of one upstream that agents may get: each get is decided like a tool call.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPrompt {
    /// `<upstream>.<prompt>`: the upstream and the prompt's name there.
    pub name: String,
    /// Its risk tier.
    pub tier: String,
    /// Zones it may be got from; `"*"` for every zone.
    pub zones: Vec<String>,
    /// Tenants that may get it; omit for every tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Vec<String>>,
    /// JSON Schema of its arguments (root type `object`; MCP prompt arguments are strings).
    /// Omit for a prompt without arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Map<String, Value>>")]
    pub arguments: Option<Value>,
    /// Trust and classification of the messages it returns.
    #[serde(default)]
    pub output: RawOutput,
    /// Cost units one get consumes from cost budgets.
    #[serde(default)]
    pub cost: u64,
    /// Detectors the Executor runs over the messages (`docs/redaction.md`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Trust and classification of a tool's output.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOutput {
    /// Whether the output may carry instructions from outside (web pages, mail): `untrusted`.
    #[serde(default)]
    pub trust: OutputTrust,
    /// How sensitive the output is.
    #[serde(default)]
    pub classification: Classification,
    /// Labels of fields of a structured (JSON) output that differ from the output's own: a
    /// JSON pointer whose segments may be `*` (any key or index), e.g. `/*/subject`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<RawFieldLabel>,
}

/// The label of one field of a tool's structured output.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFieldLabel {
    /// JSON pointer to the field; `*` matches any key or index.
    pub path: String,
    /// Its trust.
    pub trust: OutputTrust,
    /// Its classification (the output's if omitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification: Option<Classification>,
}

/// Trust of a tool's output.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OutputTrust {
    /// Produced by a system Warden trusts.
    Trusted,
    /// May carry outside text (INV-013); the default.
    #[default]
    Untrusted,
}

/// What a leak through an egress tool's arguments leads to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LeakAction {
    /// Deny the call.
    #[default]
    Deny,
    /// Escalate it for approval.
    Escalate,
}

/// Data classification, lowest first.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Classification {
    /// Anyone may see it.
    Public,
    /// Inside the organisation; the default.
    #[default]
    Internal,
    /// A need-to-know group.
    Confidential,
    /// The most sensitive.
    Restricted,
}

impl Classification {
    /// The name as the manifest writes it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Public => "public",
            Classification::Internal => "internal",
            Classification::Confidential => "confidential",
            Classification::Restricted => "restricted",
        }
    }
}

impl OutputTrust {
    /// The name as the manifest writes it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            OutputTrust::Trusted => "trusted",
            OutputTrust::Untrusted => "untrusted",
        }
    }
}

/// Budgets at each level.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBudgets {
    /// For each agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<RawBudget>,
    /// For each tenant (all its agents together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<RawBudget>,
    /// For everything Warden governs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<RawBudget>,
}

/// Calls and cost units per window.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    /// Calls per window, e.g. `1000/h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<String>,
    /// Cost units per window, e.g. `500/d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<String>,
}

/// A system-level invariant: one aggregate counter over the tools it selects (O(1) in agents).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawInvariant {
    /// Name, cited by decisions (`invariant:NAME`).
    pub name: String,
    /// Tools of these tiers count.
    #[serde(default)]
    pub tiers: Vec<String>,
    /// These tools count.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Tools whose output has one of these classifications count.
    #[serde(default)]
    pub classifications: Vec<Classification>,
    /// Calls per window across all agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<String>,
    /// Cost units per window across all agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<String>,
}

/// Circuit-breaker settings.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBreakers {
    /// The same call this many times in a row in one session pauses the session.
    #[serde(default = "default_repeat")]
    pub repeat_pattern: u32,
    /// This many failed executions in a row open the tool's breaker (enforced by the Executor).
    #[serde(default = "default_failures")]
    pub consecutive_failures: u32,
    /// How long an open breaker stays open, e.g. `5m`.
    #[serde(default = "default_cooldown")]
    pub cooldown: String,
    /// How long a session's call history is kept without activity, e.g. `1h`.
    #[serde(default = "default_session_ttl")]
    pub session_ttl: String,
}

impl Default for RawBreakers {
    fn default() -> Self {
        Self {
            repeat_pattern: default_repeat(),
            consecutive_failures: default_failures(),
            cooldown: default_cooldown(),
            session_ttl: default_session_ttl(),
        }
    }
}

fn default_repeat() -> u32 {
    3
}
fn default_failures() -> u32 {
    3
}
fn default_cooldown() -> String {
    "5m".into()
}
fn default_session_ttl() -> String {
    "1h".into()
}

/// The JSON Schema of the manifest, generated from these types.
#[must_use]
pub fn manifest_json_schema() -> Value {
    serde_json::to_value(schemars::schema_for!(RawManifest)).unwrap_or(Value::Null)
}
