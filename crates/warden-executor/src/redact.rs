//! Redaction (INV-010): every result is scrubbed before it reaches the agent, the logs or the
//! ledger.
//!
//! Two layers:
//!
//! - **exact secrets**, always on: every loaded secret value and its common encodings (standard
//!   and URL-safe base64, with and without padding; percent-encoding; lower and upper hex; JSON
//!   string escaping, also with `\/`);
//! - **detectors** the manifest turns on per tool (`redact:`): credentials (cloud keys, tokens,
//!   private keys, JWTs, bearer tokens) and personal data (emails, phone numbers, card numbers
//!   that pass the Luhn check, IBANs that pass the mod-97 check).
//!
//! Each match becomes `[REDACTED:<what>]`. The same detectors scan the arguments of egress
//! tools ([`Redactor::scan`]).

use base64::Engine as _;
use regex::Regex;
use serde_json::Value;
use std::collections::BTreeSet;

/// What replaces an exact secret.
pub const SECRET_MARK: &str = "[REDACTED:secret]";

/// Why a redactor could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    /// A pattern did not compile (too many or too large secrets).
    #[error("cannot build the redaction patterns: {0}")]
    Pattern(String),
}

/// A check a match must also pass (a checksum).
type Check = fn(&str) -> bool;

struct Detector {
    name: &'static str,
    re: Regex,
    check: Option<Check>,
}

impl Detector {
    /// Whether a match in `s` passes the detector's checksum (what redaction replaces).
    fn matches(&self, s: &str) -> bool {
        self.re
            .find_iter(s)
            .any(|m| self.check.is_none_or(|check| check(m.as_str())))
    }
}

/// Scrubs strings and JSON values.
pub struct Redactor {
    exact: Option<Regex>,
    detectors: Vec<Detector>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // INVARIANT (secrets never logged): the exact pattern holds secret values.
        f.debug_struct("Redactor")
            .field("exact", &self.exact.is_some())
            .field(
                "detectors",
                &self.detectors.iter().map(|d| d.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The encodings of a secret that are redacted as the secret itself.
fn encodings(secret: &str) -> Vec<String> {
    let b = secret.as_bytes();
    let mut out = vec![secret.to_owned()];
    for engine in [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        out.push(engine.encode(b));
    }
    let (mut pct, mut pct_lower, mut hex) = (String::new(), String::new(), String::new());
    for &c in b {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'~') {
            pct.push(char::from(c));
            pct_lower.push(char::from(c));
        } else {
            pct.push_str(&format!("%{c:02X}"));
            pct_lower.push_str(&format!("%{c:02x}"));
        }
        hex.push_str(&format!("{c:02x}"));
    }
    out.push(pct);
    out.push(pct_lower);
    // As it appears inside JSON text that a tool returns as a string: escaped, and with `/`
    // escaped as `\/` (PHP's `json_encode` and others).
    let json = serde_json::Value::from(secret).to_string();
    let json = json
        .strip_prefix('"')
        .and_then(|j| j.strip_suffix('"'))
        .unwrap_or(&json)
        .to_owned();
    out.push(json.replace('/', "\\/"));
    out.push(json);
    out.push(hex.to_ascii_uppercase());
    out.push(hex);
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

fn luhn(candidate: &str) -> bool {
    let digits: Vec<u32> = candidate.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn iban(candidate: &str) -> bool {
    let s: String = candidate.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&s.len()) {
        return false;
    }
    // Checked split: a match is not trusted to be ASCII.
    let Some((head, tail)) = s.split_at_checked(4) else {
        return false;
    };
    let mut rem: u64 = 0;
    for c in tail.chars().chain(head.chars()) {
        let v = match c.to_digit(36) {
            Some(v) => v,
            None => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + u64::from(v)) % 97
        } else {
            (rem * 10 + u64::from(v)) % 97
        };
    }
    rem == 1
}

fn detectors() -> Result<Vec<Detector>, RedactError> {
    let table: [(&'static str, &str, Option<Check>); 11] = [
        ("aws_access_key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", None),
        (
            "github_token",
            r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b",
            None,
        ),
        ("slack_token", r"\bxox[abposr]-[A-Za-z0-9-]{10,250}", None),
        ("google_api_key", r"\bAIza[0-9A-Za-z_\-]{35}", None),
        (
            "private_key",
            r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY-----[\s\S]*?-----END [A-Z0-9 ]{0,40}PRIVATE KEY-----",
            None,
        ),
        (
            "jwt",
            r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{8,}",
            None,
        ),
        (
            "bearer_token",
            r"(?i)\bbearer[ \t]+[A-Za-z0-9._~+/=-]{16,}",
            None,
        ),
        (
            "email",
            r"\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}\b",
            None,
        ),
        (
            "card",
            r"\b[0-9](?:[ -]?[0-9]){12,18}\b",
            Some(luhn as Check),
        ),
        (
            "iban",
            r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b",
            Some(iban as Check),
        ),
        (
            "phone",
            // International (`+` and a country code), `(415) 555-2671`, or `415-555-2671`:
            // bare digit runs are left to the card detector.
            r"(?:\+[0-9]{1,3}[ .-]?(?:\([0-9]{1,4}\)[ .-]?)?[0-9]{1,4}(?:[ .-]?[0-9]{2,4}){2,4}|\([0-9]{3}\)[ .-]?[0-9]{3}[ .-][0-9]{4}|\b[0-9]{3}[.-][0-9]{3}[.-][0-9]{4})\b",
            None,
        ),
    ];
    table
        .into_iter()
        .map(|(name, pat, check)| {
            Regex::new(pat)
                .map(|re| Detector { name, re, check })
                .map_err(|e| RedactError::Pattern(e.to_string()))
        })
        .collect()
}

impl Redactor {
    /// A redactor for these secret values and every detector.
    ///
    /// # Errors
    /// [`RedactError`] if the patterns cannot be built.
    pub fn new<'a>(secrets: impl Iterator<Item = &'a str>) -> Result<Self, RedactError> {
        let mut alts: Vec<String> = secrets
            .filter(|s| !s.is_empty())
            .flat_map(encodings)
            .collect();
        alts.sort_by_key(|s| std::cmp::Reverse(s.len()));
        alts.dedup();
        let exact = if alts.is_empty() {
            None
        } else {
            let pattern = alts
                .iter()
                .map(|a| regex::escape(a))
                .collect::<Vec<_>>()
                .join("|");
            Some(
                regex::RegexBuilder::new(&pattern)
                    .size_limit(64 << 20)
                    .build()
                    .map_err(|e| RedactError::Pattern(e.to_string()))?,
            )
        };
        Ok(Redactor {
            exact,
            detectors: detectors()?,
        })
    }

    /// Names of every detector this redactor runs when asked.
    pub fn detector_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.detectors.iter().map(|d| d.name)
    }

    /// `s` with exact secrets and the `on` detectors replaced, and how many replacements were
    /// made; `None` when nothing matched.
    #[must_use]
    pub fn redact_str(&self, s: &str, on: &BTreeSet<String>) -> Option<(String, u64)> {
        let mut count = 0u64;
        let mut cur: Option<String> = None;
        if let Some(re) = &self.exact {
            let text = cur.as_deref().unwrap_or(s);
            if re.is_match(text) {
                let mut n = 0u64;
                let out = re.replace_all(text, |_: &regex::Captures<'_>| {
                    n += 1;
                    SECRET_MARK
                });
                count += n;
                cur = Some(out.into_owned());
            }
        }
        for d in self.detectors.iter().filter(|d| on.contains(d.name)) {
            let text = cur.as_deref().unwrap_or(s);
            if !d.re.is_match(text) {
                continue;
            }
            let mut n = 0u64;
            let out = d.re.replace_all(text, |c: &regex::Captures<'_>| {
                let m = c.get(0).map_or("", |m| m.as_str());
                if d.check.is_none_or(|check| check(m)) {
                    n += 1;
                    format!("[REDACTED:{}]", d.name)
                } else {
                    m.to_owned()
                }
            });
            if n > 0 {
                count += n;
                cur = Some(out.into_owned());
            }
        }
        cur.map(|c| (c, count))
    }

    /// `text` with the exact secrets redacted (no detector): for what Warden logs or records of
    /// an upstream's own words (errors, refused requests, listed names).
    #[must_use]
    pub fn without_secrets(&self, text: String) -> String {
        self.redact_str(&text, &BTreeSet::new())
            .map_or(text, |(r, _)| r)
    }

    /// `item` with the exact secrets redacted in its JSON form, every field whatever its type
    /// (for what an upstream lists: tools, resources, prompts); `None` if its redacted form no
    /// longer reads as a `T` (the item cannot be offered).
    pub fn without_secrets_in<T>(&self, item: T) -> Option<T>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        let mut v = serde_json::to_value(&item).ok()?;
        if self.redact_json(&mut v, &BTreeSet::new()) == 0 {
            return Some(item);
        }
        serde_json::from_value(v).ok()
    }

    /// Whether [`Redactor::redact_str`] would change `s`: an exact secret, or an `on` detector's
    /// match that passes its checksum.
    #[must_use]
    pub fn finds(&self, s: &str, on: &BTreeSet<String>) -> bool {
        self.exact.as_ref().is_some_and(|re| re.is_match(s))
            || self
                .detectors
                .iter()
                .filter(|d| on.contains(d.name))
                .any(|d| d.matches(s))
    }

    /// Redacts every string in `v` (values and object keys) in place, and every number whose
    /// digits hold what a string would be redacted for (a card number, a numeric secret): the
    /// number becomes the redacted string. Returns the count.
    pub fn redact_json(&self, v: &mut Value, on: &BTreeSet<String>) -> u64 {
        let mut count = 0;
        // An explicit stack: results nest as deep as the upstream sent them.
        let mut stack: Vec<&mut Value> = vec![v];
        while let Some(v) = stack.pop() {
            match v {
                Value::String(s) => {
                    if let Some((out, n)) = self.redact_str(s, on) {
                        *s = out;
                        count += n;
                    }
                }
                Value::Array(a) => stack.extend(a.iter_mut()),
                Value::Object(m) => {
                    let keys: Vec<String> = m.keys().cloned().collect();
                    for k in keys {
                        if let Some((nk, n)) = self.redact_str(&k, on) {
                            if let Some(val) = m.remove(&k) {
                                m.insert(nk, val);
                                count += n;
                            }
                        }
                    }
                    stack.extend(m.values_mut());
                }
                Value::Number(n) => {
                    if let Some((out, k)) = self.redact_str(&n.to_string(), on) {
                        *v = Value::String(out);
                        count += k;
                    }
                }
                Value::Null | Value::Bool(_) => {}
            }
        }
        count
    }

    /// What in `v` would be redacted: `secret` and the names of the `on` detectors that match
    /// in its strings, names and numbers (for the egress check on arguments, INV-011).
    #[must_use]
    pub fn scan(&self, v: &Value, on: &BTreeSet<String>) -> BTreeSet<&'static str> {
        let mut found = BTreeSet::new();
        let mut stack: Vec<&Value> = vec![v];
        while let Some(v) = stack.pop() {
            match v {
                Value::String(s) => self.scan_str(s, on, &mut found),
                Value::Array(a) => stack.extend(a.iter()),
                Value::Object(m) => {
                    for (k, val) in m {
                        self.scan_str(k, on, &mut found);
                        stack.push(val);
                    }
                }
                Value::Number(n) => self.scan_str(&n.to_string(), on, &mut found),
                Value::Null | Value::Bool(_) => {}
            }
        }
        found
    }

    fn scan_str(&self, s: &str, on: &BTreeSet<String>, found: &mut BTreeSet<&'static str>) {
        if self.exact.as_ref().is_some_and(|re| re.is_match(s)) {
            found.insert("secret");
        }
        for d in self.detectors.iter().filter(|d| on.contains(d.name)) {
            if d.matches(s) {
                found.insert(d.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> BTreeSet<String> {
        warden_manifest::upstream::CREDENTIAL_DETECTORS
            .iter()
            .chain(warden_manifest::upstream::PII_DETECTORS)
            .map(|s| (*s).to_owned())
            .collect()
    }

    #[test]
    fn every_manifest_detector_name_has_a_detector() {
        let r = Redactor::new(std::iter::empty()).unwrap();
        let have: BTreeSet<String> = r.detector_names().map(str::to_owned).collect();
        assert_eq!(have, all());
    }

    #[test]
    fn exact_secrets_and_their_encodings_are_redacted() {
        let secret = "hunter2/s3cr3t+value";
        let r = Redactor::new([secret].into_iter()).unwrap();
        let none = BTreeSet::new();
        for form in encodings(secret) {
            let (out, n) = r
                .redact_str(&format!("token={form};"), &none)
                .unwrap_or_else(|| panic!("{form} not redacted"));
            assert_eq!(out, format!("token={SECRET_MARK};"), "{form}");
            assert_eq!(n, 1);
        }
        assert!(r.redact_str("nothing here", &none).is_none());
    }

    #[test]
    fn detectors_only_when_turned_on_and_checksums_apply() {
        let r = Redactor::new(std::iter::empty()).unwrap();
        let on = all();
        let cases = [
            ("key AKIAIOSFODNN7EXAMPLE end", "aws_access_key"),
            ("ghp_abcdefghijklmnopqrstuvwxyz0123456789 x", "github_token"),
            ("mail alice@example.com now", "email"),
            ("card 4111 1111 1111 1111.", "card"),
            ("iban GB82 WEST 1234 5698 7654 32", "iban"),
            ("call +1 415-555-2671", "phone"),
            (
                "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLXZhbHVl",
                "jwt",
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----",
                "private_key",
            ),
        ];
        for (text, name) in cases {
            let (out, n) = r
                .redact_str(text, &on)
                .unwrap_or_else(|| panic!("{name} missed in {text}"));
            assert!(out.contains(&format!("[REDACTED:{name}]")), "{name}: {out}");
            assert!(n >= 1);
            assert!(r.redact_str(text, &BTreeSet::new()).is_none(), "{name} off");
        }
        // Numbers that fail their checksum are left alone.
        assert!(r.redact_str("order 4111 1111 1111 1112", &on).is_none());
        // Non-ASCII digits neither panic nor match.
        assert!(r
            .redact_str("GB\u{966}\u{967}ABCDEFGHIJK x", &on)
            .is_none_or(|(o, _)| !o.contains("iban")));
        assert!(r.redact_str("(415) 555-2671", &on).is_some());
        assert!(r
            .redact_str("GB82 WEST 1234 5698 7654 33", &on)
            .is_none_or(|(o, _)| !o.contains("iban")));
    }

    #[test]
    fn finds_says_exactly_when_redaction_would_change_a_string() {
        let r = Redactor::new(["topsecret"].into_iter()).unwrap();
        let texts = [
            "plain words",
            "x topsecret y",
            "dG9wc2VjcmV0",
            "card 4111 1111 1111 1111",
            "order 4111 1111 1111 1112",
            "(415) 555-2671",
            "GB82 WEST 1234 5698 7654 32",
            "",
        ];
        for on in [all(), BTreeSet::new()] {
            for text in texts {
                assert_eq!(
                    r.finds(text, &on),
                    r.redact_str(text, &on).is_some(),
                    "{text:?} with {} detectors",
                    on.len()
                );
            }
        }
        assert!(!r.finds("order 4111 1111 1111 1112", &all()));
        assert!(r.finds("card 4111 1111 1111 1111", &all()));
    }

    /// What Warden logs or records of an upstream's own words (a refused request line, an
    /// error, a listed name) loses the exact secrets and nothing else: detectors stay off.
    #[test]
    fn without_secrets_redacts_exact_secrets_only() {
        let r = Redactor::new(["sk_live_abc123"].into_iter()).unwrap();
        assert_eq!(
            r.without_secrets(
                "GET https://api.x.com/v1?api_key=sk_live_abc123 HTTP/1.1: only CONNECT".into()
            ),
            format!("GET https://api.x.com/v1?api_key={SECRET_MARK} HTTP/1.1: only CONNECT")
        );
        let plain = "mail alice@example.com, card 4111 1111 1111 1111".to_owned();
        assert_eq!(r.without_secrets(plain.clone()), plain);
    }

    /// A card number or a numeric secret sent as a JSON number is what it would be as a string:
    /// found by the scan (egress) and redacted (results), the number becoming the redacted
    /// string; other numbers stay numbers.
    #[test]
    fn numbers_are_scanned_and_redacted_as_their_digits() {
        let r = Redactor::new(["90210337"].into_iter()).unwrap();
        let card = BTreeSet::from(["card".to_owned()]);
        let mut v = serde_json::json!({
            "card": 4_111_111_111_111_111_u64,
            "not_a_card": 4_111_111_111_111_112_u64,
            "pin": 90_210_337,
            "amount": 12.5,
            "items": [-3, 0]
        });
        assert_eq!(r.scan(&v, &card), BTreeSet::from(["card", "secret"]));
        assert_eq!(r.scan(&v, &BTreeSet::new()), BTreeSet::from(["secret"]));
        assert_eq!(r.redact_json(&mut v, &card), 2);
        assert_eq!(
            v,
            serde_json::json!({
                "card": "[REDACTED:card]",
                "not_a_card": 4_111_111_111_111_112_u64,
                "pin": SECRET_MARK,
                "amount": 12.5,
                "items": [-3, 0]
            })
        );
        assert!(r.scan(&v, &card).is_empty());
    }

    #[test]
    fn json_is_walked_keys_included_and_counted() {
        let r = Redactor::new(["topsecret"].into_iter()).unwrap();
        let mut v = serde_json::json!({
            "a": ["x topsecret y", {"topsecret": 1, "n": 2}],
            "b": "dG9wc2VjcmV0"
        });
        let n = r.redact_json(&mut v, &BTreeSet::new());
        assert_eq!(n, 3);
        let text = v.to_string();
        assert!(
            !text.contains("topsecret") && !text.contains("dG9wc2VjcmV0"),
            "{text}"
        );
        assert_eq!(
            r.scan(&serde_json::json!({"to": "x topsecret"}), &BTreeSet::new()),
            BTreeSet::from(["secret"])
        );
    }
}
