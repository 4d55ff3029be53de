//! Upstream MCP servers, secret sources and redaction detectors, as the manifest names them.
//!
//! Only names and references live here: the Executor (`warden-executor`) starts the servers,
//! reads the secrets and runs the detectors. Validating them with the rest of the manifest means
//! a typo is a load error that names its key, not a tool that silently never works.

use crate::manifest::Collector;
use crate::raw::{RawPins, RawSandbox, RawSecretSource, RawUpstream};
use std::collections::{BTreeMap, BTreeSet};

/// Credential detectors, turned on together by `credentials`.
pub const CREDENTIAL_DETECTORS: &[&str] = &[
    "aws_access_key",
    "github_token",
    "slack_token",
    "google_api_key",
    "private_key",
    "jwt",
    "bearer_token",
];

/// Personal-data detectors, turned on together by `pii`.
pub const PII_DETECTORS: &[&str] = &["email", "phone", "card", "iban"];

/// How sensitive a finding of the detector `what` (or `secret`, an exact secret value) is.
#[must_use]
pub fn leak_level(what: &str) -> crate::raw::Classification {
    use crate::raw::Classification as C;
    if what == "secret" || CREDENTIAL_DETECTORS.contains(&what) {
        C::Restricted
    } else if PII_DETECTORS.contains(&what) {
        C::Confidential
    } else {
        // An unknown finding is treated as the most sensitive (fail closed).
        C::Restricted
    }
}

/// Default time one upstream call may take.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// One piece of a value that may reference secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text as written.
    Literal(String),
    /// The value of the named secret.
    Secret(String),
}

/// A value with `${secret:NAME}` references, split into parts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template(pub Vec<Part>);

impl Template {
    /// Names of the secrets it references.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Part::Secret(s) => Some(s.as_str()),
            Part::Literal(_) => None,
        })
    }
}

/// How Warden reaches an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// A child process speaking MCP over stdin/stdout.
    Stdio {
        /// The program.
        program: String,
        /// Its arguments.
        args: Vec<String>,
    },
    /// An MCP Streamable HTTP endpoint.
    Http {
        /// The endpoint.
        url: String,
        /// For `https://`: the CA certificates (PEM) trusted instead of the system's roots;
        /// relative paths are under the manifest's directory ([`Upstream::with_paths_under`]).
        ca_file: Option<String>,
    },
}

/// A validated upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Name: the prefix of its tools.
    pub name: String,
    /// How to reach it.
    pub transport: Transport,
    /// Environment of a stdio server.
    pub env: BTreeMap<String, Template>,
    /// Headers for an HTTP server.
    pub headers: BTreeMap<String, Template>,
    /// Longest a call may take, in milliseconds.
    pub timeout_ms: u64,
    /// What it is pinned to; `None`: trusted on first use (for this run only).
    pub pins: Option<Pins>,
    /// The sandbox it runs in; `None`: unsandboxed (a `url` upstream, or `unsandboxed`).
    pub sandbox: Option<Sandbox>,
    /// Why a stdio server runs unsandboxed (the manifest's `unsandboxed`).
    pub unsandboxed: Option<String>,
    /// What it may ask of the agent's client while serving a call.
    pub client_requests: std::collections::BTreeSet<crate::raw::ClientRequestKind>,
}

impl Upstream {
    /// The same upstream with its relative file paths (`ca_file`) taken under `dir`, the
    /// manifest's directory.
    #[must_use]
    pub fn with_paths_under(mut self, dir: &std::path::Path) -> Self {
        if let Transport::Http {
            ca_file: Some(ca), ..
        } = &mut self.transport
        {
            *ca = dir.join(&*ca).to_string_lossy().into_owned();
        }
        self
    }
}

/// Sandbox guarantees, by name.
pub const GUARANTEES: &[&str] = &["filesystem", "egress", "privilege", "limits", "kill"];

/// Default longest time Warden may lose sight of a sandboxed server.
pub const DEFAULT_HEARTBEAT_MS: u64 = 30_000;

/// A validated sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// Guarantees required (names from [`GUARANTEES`]).
    pub require: Vec<String>,
    /// Absolute host paths it may read and execute.
    pub read_only: Vec<String>,
    /// Memory, in bytes.
    pub memory_bytes: u64,
    /// Processes and threads.
    pub processes: u64,
    /// CPU seconds of the whole process tree.
    pub cpu_seconds: u64,
    /// CPU the tree may use at once, in thousandths of a core.
    pub cpu_millicores: u64,
    /// Open files.
    pub open_files: u64,
    /// Largest file, in bytes.
    pub file_size_bytes: u64,
    /// The workspace's total size, in bytes.
    pub workspace_bytes: u64,
    /// Allowed destinations; empty: no network.
    pub egress_allow: Vec<warden_core::net::HostRule>,
    /// Non-public networks allowed anyway.
    pub private_networks: Vec<warden_core::net::Net>,
    /// Bytes one connection may send.
    pub max_out_bytes: u64,
    /// Bytes one connection may receive.
    pub max_in_bytes: u64,
    /// Connections per minute.
    pub connections_per_minute: u32,
    /// Longest Warden may lose sight of it, in milliseconds.
    pub heartbeat_ms: u64,
    /// The boundary one process serves.
    pub runner: crate::raw::RawRunner,
}

fn mib(v: Option<u64>, default: u64) -> u64 {
    v.unwrap_or(default).saturating_mul(1 << 20)
}

/// One piece of a process tool's argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgPart {
    /// Text as written.
    Literal(String),
    /// The value of the call's argument of this name.
    Param(String),
}

/// Why an argument template (`{name}` parameters) or a secret template (`${secret:NAME}`)
/// does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// A `}` with no `{` before it.
    #[error("`{0}`: a `}}` without its `{{`")]
    UnopenedBrace(String),
    /// A `{` with no `}` after it.
    #[error("`{0}`: a `{{` without its `}}`")]
    UnclosedBrace(String),
    /// A parameter name that is not lower-case letters, digits and `_`.
    #[error("`{text}`: `{{{name}}}` is not a parameter (lower-case letters, digits, `_`)")]
    Parameter {
        /// The template.
        text: String,
        /// The name between the braces.
        name: String,
    },
    /// A `${` with no `}` after it.
    #[error("`${{` without a closing `}}`")]
    UnclosedReference,
    /// A reference to something else than a secret.
    #[error("`${{{0}}}`: only `${{secret:NAME}}` references are supported")]
    NotASecret(String),
    /// A secret name that is not UPPER_SNAKE_CASE.
    #[error("secret name `{0}` must be UPPER_SNAKE_CASE")]
    SecretName(String),
}

/// Parses a process tool's argument template: literal text with `{name}` parameters (`name`:
/// lower-case letters, digits and `_`, starting with a letter or `_`). Braces are used for
/// nothing else.
///
/// # Errors
/// [`TemplateError`]: what is wrong with `s`.
pub fn parse_arg_template(s: &str) -> Result<Vec<ArgPart>, TemplateError> {
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find(['{', '}']) {
        let (lit, tail) = rest.split_at(open);
        if tail.starts_with('}') {
            return Err(TemplateError::UnopenedBrace(s.to_owned()));
        }
        let close = tail
            .find('}')
            .ok_or_else(|| TemplateError::UnclosedBrace(s.to_owned()))?;
        let name = tail.get(1..close).unwrap_or_default();
        let ok = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok {
            return Err(TemplateError::Parameter {
                text: s.to_owned(),
                name: name.to_owned(),
            });
        }
        if !lit.is_empty() {
            parts.push(ArgPart::Literal(lit.to_owned()));
        }
        parts.push(ArgPart::Param(name.to_owned()));
        rest = tail.get(close + 1..).unwrap_or_default();
    }
    if !rest.is_empty() {
        parts.push(ArgPart::Literal(rest.to_owned()));
    }
    Ok(parts)
}

/// Validates `process` tools into the stdio server that runs them (`warden process-server`,
/// inside the upstream's sandbox).
fn validate_process(
    c: &mut Collector<'_>,
    path: &str,
    tools: &BTreeMap<String, crate::raw::RawProcessTool>,
) -> Option<Transport> {
    let mut ok = true;
    for (name, t) in tools {
        let tpath = format!("{path}.{name}");
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-');
        if !valid_name {
            c.err(
                &tpath,
                format!("tool name `{name}` must be 1-64 letters, digits, `_` or `-`"),
            );
            ok = false;
        }
        if !t.program.starts_with('/')
            || t.program.split('/').any(|p| p == "..")
            || t.program.chars().any(char::is_control)
        {
            c.err(
                format!("{tpath}.program"),
                format!("`{}` must be an absolute path (the program runs as written, never through a shell)", t.program),
            );
            ok = false;
        }
        // The program is bound into the sandbox's view: the same paths are refused as for
        // `read_only` (a socket, the host root, kernel interfaces).
        if let Some(root) = refused_root(&t.program) {
            c.err(
                format!("{tpath}.program"),
                format!(
                    "`{}` is under `{root}`: not a program to bind into a sandbox",
                    t.program
                ),
            );
            ok = false;
        }
        for (i, a) in t.args.iter().enumerate() {
            if let Err(e) = parse_arg_template(a) {
                c.err(format!("{tpath}.args[{i}]"), e);
                ok = false;
            }
            if a.contains('\0') {
                c.err(format!("{tpath}.args[{i}]"), "must not contain NUL");
                ok = false;
            }
        }
    }
    if !ok {
        return None;
    }
    let spec = serde_json::to_string(tools).ok()?;
    Some(Transport::Stdio {
        program: "warden".into(),
        args: vec!["process-server".into(), "--tools".into(), spec],
    })
}

/// The host directory a `read_only` path may not be (or be under): the root, kernel
/// interfaces, runtime sockets (docker, dbus), configuration and whole home directories.
fn refused_root(p: &str) -> Option<&'static str> {
    const UNDER: &[&str] = &["/proc", "/sys", "/dev", "/run", "/var/run", "/etc"];
    let p = p.trim_end_matches('/');
    if p.is_empty() {
        return Some("/");
    }
    if let Some(r) = UNDER
        .iter()
        .find(|r| p == **r || p.starts_with(&format!("{r}/")))
    {
        return Some(r);
    }
    // A tool installed under a home directory is fine; the home itself is not.
    ["/root", "/home"].into_iter().find(|r| p == *r)
}

/// Validates an upstream's `sandbox` block (`path` is the block's key path).
fn validate_sandbox(c: &mut Collector<'_>, path: &str, raw: &RawSandbox) -> Option<Sandbox> {
    let mut ok = true;
    let require = match &raw.require {
        None => GUARANTEES.iter().map(|g| (*g).to_owned()).collect(),
        Some(list) => {
            for (i, g) in list.iter().enumerate() {
                if !GUARANTEES.contains(&g.as_str()) {
                    c.err(
                        format!("{path}.require[{i}]"),
                        format!(
                            "`{g}` is not a guarantee (one of {})",
                            GUARANTEES.join(", ")
                        ),
                    );
                    ok = false;
                }
            }
            list.clone()
        }
    };
    for (i, p) in raw.read_only.iter().enumerate() {
        if !p.starts_with('/') || p.split('/').any(|s| s == "..") || p.chars().any(char::is_control)
        {
            c.err(
                format!("{path}.read_only[{i}]"),
                format!("`{p}` must be an absolute path without `..`"),
            );
            ok = false;
        } else if let Some(root) = refused_root(p) {
            c.err(
                format!("{path}.read_only[{i}]"),
                format!("`{p}` is under `{root}`: host sockets, kernel interfaces, configuration and homes are not shared into a sandbox (name the tool's own directory)"),
            );
            ok = false;
        }
    }
    let limits = raw.limits.clone().unwrap_or(crate::raw::RawSandboxLimits {
        memory_mb: None,
        processes: None,
        cpu_seconds: None,
        cpu_millicores: None,
        open_files: None,
        file_size_mb: None,
        workspace_mb: None,
    });
    for (key, v) in [
        ("memory_mb", limits.memory_mb),
        ("processes", limits.processes),
        ("cpu_seconds", limits.cpu_seconds),
        ("open_files", limits.open_files),
        ("file_size_mb", limits.file_size_mb),
        ("workspace_mb", limits.workspace_mb),
    ] {
        if v == Some(0) {
            c.err(format!("{path}.limits.{key}"), "must be at least 1");
            ok = false;
        }
    }
    // The kernel's least CPU quota is 1 ms per 100 ms period.
    if limits.cpu_millicores.is_some_and(|m| m < 10) {
        c.err(
            format!("{path}.limits.cpu_millicores"),
            "must be at least 10 (a hundredth of a core)",
        );
        ok = false;
    }
    let mut egress_allow = Vec::new();
    let mut private_networks = Vec::new();
    let (mut max_out, mut max_in, mut per_minute) = (None, None, None);
    if let Some(e) = &raw.egress {
        for (i, r) in e.allow.iter().enumerate() {
            match warden_core::net::HostRule::parse(r) {
                Ok(rule) => egress_allow.push(rule),
                Err(why) => {
                    c.err(format!("{path}.egress.allow[{i}]"), why);
                    ok = false;
                }
            }
        }
        for (i, n) in e.private_networks.iter().enumerate() {
            match warden_core::net::Net::parse(n) {
                Ok(net) => private_networks.push(net),
                Err(why) => {
                    c.err(format!("{path}.egress.private_networks[{i}]"), why);
                    ok = false;
                }
            }
        }
        if e.connections_per_minute == Some(0) {
            c.err(
                format!("{path}.egress.connections_per_minute"),
                "must be at least 1",
            );
            ok = false;
        }
        (max_out, max_in, per_minute) = (e.max_out_mb, e.max_in_mb, e.connections_per_minute);
    }
    let heartbeat_ms = match raw.heartbeat.as_deref().map(crate::rate::parse_duration) {
        None => DEFAULT_HEARTBEAT_MS,
        // parse_duration refuses zero.
        Some(Ok(s)) => u64::try_from(s).unwrap_or(u64::MAX).saturating_mul(1000),
        Some(Err(e)) => {
            c.err(format!("{path}.heartbeat"), e);
            ok = false;
            DEFAULT_HEARTBEAT_MS
        }
    };
    ok.then(|| Sandbox {
        require,
        read_only: raw.read_only.clone(),
        memory_bytes: mib(limits.memory_mb, 512),
        processes: limits.processes.unwrap_or(128),
        cpu_seconds: limits.cpu_seconds.unwrap_or(3_600),
        cpu_millicores: limits.cpu_millicores.unwrap_or(1_000),
        open_files: limits.open_files.unwrap_or(1_024),
        file_size_bytes: mib(limits.file_size_mb, 256),
        workspace_bytes: mib(limits.workspace_mb, 256),
        egress_allow,
        private_networks,
        max_out_bytes: mib(max_out, 10),
        max_in_bytes: mib(max_in, 100),
        connections_per_minute: per_minute.unwrap_or(60),
        heartbeat_ms,
        runner: raw.runner.unwrap_or(crate::raw::RawRunner::Tenant),
    })
}

/// An upstream's pins (INV-023): hashes are `sha256:<64 hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pins {
    /// The executable's hash.
    pub executable: Option<String>,
    /// Other files' hashes, by path.
    pub files: BTreeMap<String, String>,
    /// Each tool's hash ([`tool_pin`]), by upstream tool name.
    pub tools: BTreeMap<String, String>,
}

/// Whether `s` is `sha256:` and 64 lower-case hex digits.
#[must_use]
pub fn valid_hash(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The pin of a tool as an upstream lists it: the SHA-256 of the canonical JSON (RFC 8785) of
/// `{"description", "inputSchema", "name", "outputSchema"}` (absent ones as `null`). A change to
/// any of them (a rug-pull, tool poisoning) changes the pin.
#[must_use]
pub fn tool_pin(
    name: &str,
    description: Option<&str>,
    input_schema: &serde_json::Value,
    output_schema: Option<&serde_json::Value>,
) -> String {
    let v = serde_json::json!({
        "name": name,
        "description": description,
        "inputSchema": input_schema,
        "outputSchema": output_schema,
    });
    warden_core::canonical::json_digest(&v)
}

/// Where a secret comes from (file paths as written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable of the gateway.
    Env(String),
    /// A file, relative to the manifest unless absolute.
    File(String),
    /// A `user` key in the OS keyring, by description.
    Keyring(String),
}

fn valid_upstream_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Whether `s` is a secret name (UPPER_SNAKE_CASE).
#[must_use]
pub fn valid_secret_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_')
        && !s.starts_with(|ch: char| ch.is_ascii_digit())
}

/// Splits `text` at `${secret:NAME}` references.
///
/// # Errors
/// [`TemplateError`]: what is wrong with a reference.
pub fn parse_template(text: &str) -> Result<Template, TemplateError> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        let (lit, tail) = rest.split_at(at);
        if !lit.is_empty() {
            parts.push(Part::Literal(lit.to_owned()));
        }
        let body = tail.get(2..).unwrap_or_default();
        let Some(end) = body.find('}') else {
            return Err(TemplateError::UnclosedReference);
        };
        let inner = body.get(..end).unwrap_or_default();
        let Some(name) = inner.strip_prefix("secret:") else {
            return Err(TemplateError::NotASecret(inner.to_owned()));
        };
        if !valid_secret_name(name) {
            return Err(TemplateError::SecretName(name.to_owned()));
        }
        parts.push(Part::Secret(name.to_owned()));
        rest = body.get(end + 1..).unwrap_or_default();
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_owned()));
    }
    Ok(Template(parts))
}

/// Expands `credentials` and `pii` and checks every name.
pub(crate) fn validate_detectors(
    c: &mut Collector<'_>,
    path: &str,
    names: &[String],
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (j, n) in names.iter().enumerate() {
        match n.as_str() {
            "credentials" => out.extend(CREDENTIAL_DETECTORS.iter().map(|s| (*s).to_owned())),
            "pii" => out.extend(PII_DETECTORS.iter().map(|s| (*s).to_owned())),
            d if CREDENTIAL_DETECTORS.contains(&d) || PII_DETECTORS.contains(&d) => {
                out.insert(d.to_owned());
            }
            other => c.err(
                format!("{path}.redact[{j}]"),
                format!(
                    "unknown detector `{other}` (known: `credentials`, `pii`, {})",
                    CREDENTIAL_DETECTORS
                        .iter()
                        .chain(PII_DETECTORS)
                        .map(|d| format!("`{d}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        }
    }
    out
}

fn validate_pins(c: &mut Collector<'_>, name: &str, p: &RawPins, stdio: bool) -> Option<Pins> {
    let path = format!("pins.{name}");
    let mut ok = true;
    let mut check = |c: &mut Collector<'_>, key: String, h: &str| {
        if !valid_hash(h) {
            c.err(
                key,
                format!("`{h}` is not `sha256:` and 64 lower-case hex digits"),
            );
            ok = false;
        }
    };
    if let Some(h) = &p.executable {
        if !stdio {
            c.err(
                format!("{path}.executable"),
                "only a `command` upstream has an executable to pin",
            );
        }
        check(c, format!("{path}.executable"), h);
    }
    for (f, h) in &p.files {
        check(c, format!("{path}.files.{f}"), h);
    }
    for (t, h) in &p.tools {
        check(c, format!("{path}.tools.{t}"), h);
    }
    ok.then(|| Pins {
        executable: p.executable.clone(),
        files: p.files.clone(),
        tools: p.tools.clone(),
    })
}

/// Validates `upstreams`, `secrets` and `pins`.
pub(crate) fn validate_upstreams(
    c: &mut Collector<'_>,
    raw: &[RawUpstream],
    raw_secrets: &BTreeMap<String, RawSecretSource>,
    raw_pins: &BTreeMap<String, RawPins>,
) -> (Vec<Upstream>, BTreeMap<String, SecretSource>) {
    for name in raw_pins.keys() {
        if !raw.iter().any(|u| &u.name == name) {
            c.err(
                format!("pins.{name}"),
                format!("no upstream is called `{name}`"),
            );
        }
    }
    let mut secrets = BTreeMap::new();
    for (name, source) in raw_secrets {
        let path = format!("secrets.{name}");
        if !valid_secret_name(name) {
            c.err(
                &path,
                format!("secret name `{name}` must be UPPER_SNAKE_CASE"),
            );
        }
        let (key, value, source) = match (&source.env, &source.file, &source.keyring) {
            (Some(v), None, None) => ("env", v, SecretSource::Env(v.clone())),
            (None, Some(v), None) => ("file", v, SecretSource::File(v.clone())),
            (None, None, Some(v)) => ("keyring", v, SecretSource::Keyring(v.clone())),
            _ => {
                c.err(&path, "give exactly one of `env`, `file` and `keyring`");
                continue;
            }
        };
        if value.is_empty() || value.chars().any(char::is_control) {
            c.err(
                format!("{path}.{key}"),
                "must be non-empty, without control characters",
            );
            continue;
        }
        secrets.insert(name.clone(), source);
    }
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for (i, u) in raw.iter().enumerate() {
        let path = format!("upstreams[{i}]");
        let mut ok = true;
        if !valid_upstream_name(&u.name) {
            c.err(
                format!("{path}.name"),
                format!(
                    "upstream name `{}` must be 1-64 letters, digits, `-` or `_` (it prefixes its tools' names)",
                    u.name
                ),
            );
            ok = false;
        } else if !names.insert(u.name.clone()) {
            c.err(
                format!("{path}.name"),
                format!("duplicate upstream `{}`", u.name),
            );
            ok = false;
        }
        let is_process = !u.process.is_empty();
        let process_transport = if is_process {
            if !u.command.is_empty() || u.url.is_some() {
                c.err(
                    path.clone(),
                    "give exactly one of `command` (stdio), `url` (Streamable HTTP) and `process` (process tools)",
                );
                continue;
            }
            if u.sandbox.is_none() {
                c.err(
                    format!("{path}.process"),
                    "process tools run only in a sandbox: add a `sandbox` block",
                );
                ok = false;
            }
            match validate_process(c, &format!("{path}.process"), &u.process) {
                Some(t) => Some(t),
                None => {
                    ok = false;
                    None
                }
            }
        } else {
            None
        };
        let transport = match (u.command.split_first(), &u.url) {
            _ if is_process => process_transport.unwrap_or(Transport::Stdio {
                program: String::new(),
                args: Vec::new(),
            }),
            (Some((program, args)), None) => {
                if program.is_empty() {
                    c.err(
                        format!("{path}.command[0]"),
                        "the program must not be empty",
                    );
                    ok = false;
                }
                if u.ca_file.is_some() {
                    c.err(
                        format!("{path}.ca_file"),
                        "ca_file applies to https:// upstreams",
                    );
                    ok = false;
                }
                if !u.headers.is_empty() {
                    c.err(
                        format!("{path}.headers"),
                        "headers apply to `url` upstreams; a `command` upstream takes `env`",
                    );
                    ok = false;
                }
                Transport::Stdio {
                    program: program.clone(),
                    args: args.to_vec(),
                }
            }
            (None, Some(url)) => {
                if !(url.starts_with("http://") || url.starts_with("https://"))
                    || url.chars().any(|ch| ch.is_whitespace() || ch.is_control())
                {
                    c.err(
                        format!("{path}.url"),
                        format!("`{url}` is not an http:// or https:// URL"),
                    );
                    ok = false;
                }
                if !u.env.is_empty() {
                    c.err(
                        format!("{path}.env"),
                        "env applies to `command` upstreams; a `url` upstream takes `headers`",
                    );
                    ok = false;
                }
                if let Some(ca) = &u.ca_file {
                    if !url.starts_with("https://") {
                        c.err(
                            format!("{path}.ca_file"),
                            "ca_file applies to https:// upstreams",
                        );
                        ok = false;
                    } else if ca.is_empty() || ca.chars().any(char::is_control) {
                        c.err(
                            format!("{path}.ca_file"),
                            "must be a path, without control characters",
                        );
                        ok = false;
                    }
                }
                Transport::Http {
                    url: url.clone(),
                    ca_file: u.ca_file.clone(),
                }
            }
            _ => {
                c.err(
                    path.clone(),
                    "give exactly one of `command` (stdio) and `url` (Streamable HTTP)",
                );
                continue;
            }
        };
        let mut templates = |key: &str, map: &BTreeMap<String, String>| {
            let mut out = BTreeMap::new();
            for (k, v) in map {
                let kpath = format!("{path}.{key}.{k}");
                match parse_template(v) {
                    Ok(t) => {
                        for s in t.secrets() {
                            if !raw_secrets.contains_key(s) {
                                c.err(
                                    &kpath,
                                    format!("secret `{s}` is not defined under `secrets`"),
                                );
                                ok = false;
                            }
                        }
                        out.insert(k.clone(), t);
                    }
                    Err(e) => {
                        c.err(&kpath, e);
                        ok = false;
                    }
                }
            }
            out
        };
        let env = templates("env", &u.env);
        let headers = templates("headers", &u.headers);
        let timeout_ms = match u.timeout.as_deref().map(crate::rate::parse_duration) {
            None => DEFAULT_TIMEOUT_MS,
            Some(Ok(s)) => u64::try_from(s).unwrap_or(u64::MAX).saturating_mul(1000),
            Some(Err(e)) => {
                c.err(format!("{path}.timeout"), e);
                ok = false;
                DEFAULT_TIMEOUT_MS
            }
        };
        let stdio = matches!(transport, Transport::Stdio { .. });
        let pins = match raw_pins.get(&u.name) {
            None => None,
            Some(p) => match validate_pins(c, &u.name, p, stdio) {
                Some(p) => Some(p),
                None => {
                    ok = false;
                    None
                }
            },
        };
        if let Some(why) = &u.unsandboxed {
            if !stdio || u.sandbox.is_some() || is_process {
                c.err(
                    format!("{path}.unsandboxed"),
                    "only a `command` upstream without a `sandbox` block may run unsandboxed",
                );
                ok = false;
            } else if why.trim().is_empty() || why.chars().any(char::is_control) {
                c.err(
                    format!("{path}.unsandboxed"),
                    "say why it runs unsandboxed (non-empty text, one line)",
                );
                ok = false;
            }
        }
        // INVARIANT (fail-closed, INV-006): a stdio server runs in the sandbox unless the
        // manifest says, with a reason, that it does not.
        let default_sandbox = crate::raw::RawSandbox {
            require: None,
            read_only: Vec::new(),
            limits: None,
            egress: None,
            heartbeat: None,
            runner: None,
        };
        let raw_sandbox = match (&u.sandbox, &u.unsandboxed) {
            (Some(s), _) => Some(s),
            (None, None) if stdio => Some(&default_sandbox),
            (None, _) => None,
        };
        let sandbox = match raw_sandbox {
            None => None,
            Some(_) if !stdio => {
                c.err(
                    format!("{path}.sandbox"),
                    "a sandbox applies to `command` upstreams (Warden does not run a `url` upstream)",
                );
                ok = false;
                None
            }
            Some(raw) => {
                let mut s = validate_sandbox(c, &format!("{path}.sandbox"), raw);
                ok &= s.is_some();
                // A process tool's program is part of its installation.
                if let Some(sb) = &mut s {
                    for t in u.process.values() {
                        if !sb.read_only.contains(&t.program) {
                            sb.read_only.push(t.program.clone());
                        }
                    }
                }
                s
            }
        };
        if ok {
            out.push(Upstream {
                name: u.name.clone(),
                transport,
                env,
                headers,
                timeout_ms,
                pins,
                sandbox,
                unsandboxed: u.unsandboxed.clone(),
                client_requests: u.client_requests.iter().copied().collect(),
            });
        }
    }
    (out, secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_split_at_secret_references() {
        let t = parse_template("Bearer ${secret:API_TOKEN}!").unwrap();
        assert_eq!(
            t.0,
            vec![
                Part::Literal("Bearer ".into()),
                Part::Secret("API_TOKEN".into()),
                Part::Literal("!".into())
            ]
        );
        assert_eq!(
            parse_template("plain").unwrap().0,
            vec![Part::Literal("plain".into())]
        );
        assert!(parse_template("${secret:API_TOKEN")
            .unwrap_err()
            .to_string()
            .contains("closing"));
        assert!(parse_template("${env:HOME}")
            .unwrap_err()
            .to_string()
            .contains("only `${secret:NAME}`"));
        assert!(parse_template("${secret:lower}")
            .unwrap_err()
            .to_string()
            .contains("UPPER_SNAKE_CASE"));
    }
}
