//! List changes, told to MCP clients (issue 20): when an upstream announces that its tools,
//! resources or prompts changed, or a new manifest comes into force, a client that may see
//! something of it is told to list again — unsolicited on a stdio connection of a revision
//! before 2026-07-28 (after its `notifications/initialized`), and on 2026-07-28 only on a
//! `subscriptions/listen` stream whose filter asked for that list. What it then lists is
//! filtered per agent as always; a notification carries no data. A revoked credential is told
//! nothing more.

use rmcp::model::SubscriptionFilter;
use rmcp::service::SubscriptionSink;
use rmcp::{Peer, RoleServer};
use warden_core::ActionKind;
use warden_runtime::{Caller, Runtime};

/// The lists a `subscriptions/listen` filter asks to hear about.
pub fn wanted(filter: &SubscriptionFilter) -> Vec<ActionKind> {
    [
        (filter.tools_list_changed, ActionKind::Tool),
        (filter.resources_list_changed, ActionKind::Resource),
        (filter.prompts_list_changed, ActionKind::Prompt),
    ]
    .into_iter()
    .filter_map(|(asked, kind)| (asked == Some(true)).then_some(kind))
    .collect()
}

/// The list-change part of what Warden accepts of a requested filter: each list asked for.
pub(crate) fn accept(requested: &SubscriptionFilter, accepted: &mut SubscriptionFilter) {
    let yes = |asked: Option<bool>| (asked == Some(true)).then_some(true);
    accepted.tools_list_changed = yes(requested.tools_list_changed);
    accepted.resources_list_changed = yes(requested.resources_list_changed);
    accepted.prompts_list_changed = yes(requested.prompts_list_changed);
}

/// Tells a stdio client of an earlier revision, unsolicited, each list it should read again,
/// for as long as its connection and its credential (`token`, checked before each) last.
pub(crate) fn tell_stdio_client(app: Runtime, token: String, peer: Peer<RoleServer>) {
    tokio::spawn(async move {
        let mut changes = app.catalog_changes();
        loop {
            // INVARIANT (revocation is immediate): checked before each wait and each notice.
            let Ok(caller) = app.authenticate(Some(&token)) else {
                return;
            };
            let Some(kind) = changes.next(&caller).await else {
                return;
            };
            if app.authenticate(Some(&token)).is_err() {
                return;
            }
            let sent = match kind {
                ActionKind::Tool => peer.notify_tool_list_changed().await,
                ActionKind::Resource => peer.notify_resource_list_changed().await,
                ActionKind::Prompt => peer.notify_prompt_list_changed().await,
            };
            if sent.is_err() {
                return;
            }
        }
    });
}

/// Tells a `subscriptions/listen` stream each list in `wants` its caller should read again,
/// while `allowed` (over stdio, the credential checked again) and until the stream is
/// cancelled (over `/mcp` a revocation does that: the listen is one of its session's calls)
/// or closed.
pub(crate) async fn tell_listener(
    app: &Runtime,
    caller: &Caller,
    sink: &SubscriptionSink,
    wants: &[ActionKind],
    allowed: &(dyn Fn() -> bool + Send + Sync),
) {
    let mut changes = app.catalog_changes();
    while let Some(kind) = changes.next(caller).await {
        // INVARIANT (revocation is immediate): a revoked credential is told nothing more.
        if !allowed() {
            return;
        }
        if !wants.contains(&kind) {
            continue;
        }
        let sent = match kind {
            ActionKind::Tool => sink.notify_tool_list_changed().await,
            ActionKind::Resource => sink.notify_resource_list_changed().await,
            ActionKind::Prompt => sink.notify_prompt_list_changed().await,
        };
        if sent.is_err() {
            return;
        }
    }
}

/// Ends once `allowed` says no (checked every few seconds): a listen whose credential was
/// revoked or expired ends, whether or not anything was told on it since.
pub(crate) async fn revoked(allowed: &(dyn Fn() -> bool + Send + Sync)) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        if !allowed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_lists_a_filter_asks_for_are_accepted_and_wanted() {
        let mut requested = SubscriptionFilter::new();
        requested.tools_list_changed = Some(true);
        requested.prompts_list_changed = Some(false);
        let mut accepted = SubscriptionFilter::new();
        accept(&requested, &mut accepted);
        assert_eq!(accepted.tools_list_changed, Some(true));
        assert_eq!(accepted.prompts_list_changed, None);
        assert_eq!(accepted.resources_list_changed, None);
        assert_eq!(wanted(&accepted), vec![ActionKind::Tool]);
    }
}
