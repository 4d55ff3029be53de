//! Webhook notifications (issue 7): approval requests, brake changes (kill, quarantine,
//! lockdown, resume), tripped breakers and governance proposals are posted to the manifest's
//! webhooks, each body signed with HMAC-SHA256 so the receiver can check it came from this
//! gateway and was not replayed late (the Runtime publishes events to its
//! [`EventQueue`](warden_core::events::EventQueue); a dispatcher thread takes them off it and
//! hands them here):
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
use warden_core::events::{Event, EventQueue};
use warden_policy::approvers::Webhook;
use warden_policy::raw::WebhookFormat;
use zeroize::Zeroizing;

/// Notifications waiting for delivery, at most.
const QUEUE: usize = 1024;

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
        tokio::sync::mpsc::Sender<Event>,
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
                let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(QUEUE);
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

    /// Queues `event` for each webhook that carries its kind; never blocks the caller.
    pub fn notify(&self, event: &Event) {
        for (kinds, tx) in &self.hooks {
            if kinds.contains(&event.kind) && tx.try_send(event.clone()).is_err() {
                tracing::warn!(event = %event.kind, "a webhook's queue is full: notification dropped");
            }
        }
    }

    /// Delivers what `queue` hands out, on a thread of its own, until `queue` is dropped.
    pub fn dispatch(self, queue: std::sync::Weak<dyn EventQueue>) {
        let spawned = std::thread::Builder::new()
            .name("warden-events".into())
            .spawn(move || {
                while let Some(q) = queue.upgrade() {
                    match q.take(64, Duration::from_millis(500)) {
                        Ok(batch) => batch.iter().for_each(|e| self.notify(e)),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot take events to deliver");
                            drop(q);
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the event dispatcher: webhooks are off");
        }
    }
}

/// The body for `hook`'s format.
fn body(hook: &Webhook, note: &Event) -> String {
    let text = format!("[warden] {}: {}", note.kind, note.text);
    let v = match hook.format {
        WebhookFormat::Generic => serde_json::json!({
            "event": note.kind,
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

async fn deliver(hook: &Hook, note: &Event) {
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
    tracing::error!(host = %hook.spec.authority, event = %note.kind, "webhook undelivered after 3 attempts");
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
