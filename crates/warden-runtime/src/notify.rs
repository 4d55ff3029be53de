//! Webhook notifications (issue 7): approval requests, brake changes (kill, quarantine,
//! lockdown, resume), tripped breakers and governance proposals are posted to the manifest's
//! webhooks, each body signed with HMAC-SHA256 so the receiver can check it came from this
//! gateway and was not replayed late:
//!
//! - `X-Warden-Timestamp: <unix seconds>`
//! - `X-Warden-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`
//!
//! Payloads come in three shapes (`format`): `generic` (`{"event","text","details","time"}`),
//! `slack` (`{"text"}`, an incoming webhook) and `telegram` (`{"chat_id","text"}`,
//! `sendMessage`). Delivery is off the governed path: a bounded queue per webhook (a full queue
//! drops the notification and logs it), a 5 s timeout, three attempts, each signed when sent.
//! `http://` or `https://`: TLS verifies the receiver's certificate against the system's roots
//! (the same client as https upstreams, `warden_executor::tls`).
//! Notifications carry no secrets: texts are the ledger's reasons; an approval request carries
//! its preview (filled from the call's arguments, with known secrets redacted).

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use warden_policy::approvers::Webhook;
use warden_policy::raw::WebhookFormat;
use zeroize::Zeroizing;

/// Notifications waiting for delivery, at most.
const QUEUE: usize = 1024;

/// One notification.
#[derive(Debug, Clone)]
struct Note {
    event: String,
    text: String,
    details: serde_json::Value,
    time: i64,
}

/// A webhook with its key and HTTP client. Logs name its host only: the URL itself can be a
/// credential (a Slack incoming webhook, a Telegram bot token).
struct Hook {
    spec: Webhook,
    key: Zeroizing<Vec<u8>>,
    client: reqwest::Client,
}

/// Sends notifications to the manifest's webhooks (none: a no-op). Each webhook has its own
/// queue and delivery task, so a slow or dead receiver delays no other.
#[derive(Debug, Default, Clone)]
pub struct Notifier {
    hooks: Vec<(
        std::collections::BTreeSet<String>,
        tokio::sync::mpsc::Sender<Note>,
    )>,
}

impl Notifier {
    /// Starts delivery to `hooks`, keyed by the secrets they name (on the current runtime).
    /// Hooks whose secret did not load are left out, and named in the returned errors.
    #[must_use]
    pub fn start(
        hooks: &[Webhook],
        secret: impl Fn(&str) -> Option<Zeroizing<String>>,
    ) -> (Self, Vec<String>) {
        let mut errors = Vec::new();
        let hooks: Vec<Hook> = hooks
            .iter()
            .filter_map(|h| match secret(&h.secret) {
                Some(v) => match warden_executor::tls::http_client(&h.url, None) {
                    Ok(client) => Some(Hook {
                        spec: h.clone(),
                        key: Zeroizing::new(v.as_bytes().to_vec()),
                        client,
                    }),
                    Err(e) => {
                        errors.push(format!("webhook to {} is off: {e}", h.authority));
                        None
                    }
                },
                None => {
                    errors.push(format!(
                        "webhook to {} is off: its secret `{}` did not load",
                        h.authority, h.secret
                    ));
                    None
                }
            })
            .collect();
        let hooks = hooks
            .into_iter()
            .map(|hook| {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<Note>(QUEUE);
                let events = hook.spec.events.clone();
                tokio::spawn(async move {
                    while let Some(note) = rx.recv().await {
                        deliver(&hook, &note).await;
                    }
                });
                (events, tx)
            })
            .collect();
        (Notifier { hooks }, errors)
    }

    /// Queues a notification for each webhook that carries `event`; never blocks the caller.
    pub fn notify(&self, event: &str, text: String, details: serde_json::Value) {
        let note = Note {
            event: event.to_owned(),
            text,
            details,
            time: crate::now_unix(),
        };
        for (events, tx) in &self.hooks {
            if events.contains(event) && tx.try_send(note.clone()).is_err() {
                tracing::warn!(event, "a webhook's queue is full: notification dropped");
            }
        }
    }
}

/// The body for `hook`'s format.
fn body(hook: &Webhook, note: &Note) -> String {
    let text = format!("[warden] {}: {}", note.event, note.text);
    let v = match hook.format {
        WebhookFormat::Generic => serde_json::json!({
            "event": note.event,
            "text": note.text,
            "details": note.details,
            "time": note.time,
        }),
        WebhookFormat::Slack => serde_json::json!({ "text": text }),
        WebhookFormat::Telegram => serde_json::json!({
            "chat_id": hook.chat_id,
            "text": text,
        }),
    };
    v.to_string()
}

/// `v1=<hex>` over `"<timestamp>.<body>"`.
#[must_use]
pub fn signature(key: &[u8], timestamp: i64, body: &str) -> String {
    let mut out = String::from("v1=");
    // HMAC takes keys of any length.
    if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) {
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body.as_bytes());
        warden_core::canonical::push_hex(&mut out, &mac.finalize().into_bytes());
    }
    out
}

async fn deliver(hook: &Hook, note: &Note) {
    let body = body(&hook.spec, note);
    for attempt in 1..=3u32 {
        // Signed at each attempt: a receiver's freshness check sees when it was sent.
        let sent = crate::now_unix();
        let sig = signature(&hook.key, sent, &body);
        match tokio::time::timeout(Duration::from_secs(5), post(hook, sent, &sig, &body)).await {
            Ok(Ok(status)) if (200..300).contains(&status) => return,
            Ok(Ok(status)) => {
                tracing::warn!(host = %hook.spec.authority, status, attempt, "webhook refused");
            }
            Ok(Err(e)) => {
                tracing::warn!(host = %hook.spec.authority, error = %e, attempt, "webhook failed")
            }
            Err(_) => tracing::warn!(host = %hook.spec.authority, attempt, "webhook timed out"),
        }
        tokio::time::sleep(Duration::from_millis(
            200u64.saturating_mul(u64::from(attempt)),
        ))
        .await;
    }
    tracing::error!(host = %hook.spec.authority, event = %note.event, "webhook undelivered after 3 attempts");
}

/// One POST; the status code.
async fn post(hook: &Hook, timestamp: i64, sig: &str, body: &str) -> Result<u16, String> {
    let response = hook
        .client
        .post(&hook.spec.url)
        .header("content-type", "application/json")
        .header("x-warden-timestamp", timestamp.to_string())
        .header("x-warden-signature", sig)
        .body(body.to_owned())
        .send()
        .await
        // Without the URL: a webhook URL can be a credential (Slack's, Telegram's bot token).
        .map_err(|e| e.without_url().to_string())?;
    Ok(response.status().as_u16())
}
