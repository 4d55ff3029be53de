//! Pages of the lists Warden serves (`tools/list`, `resources/list`,
//! `resources/templates/list`, `prompts/list`). Each list is the agent's own, filtered from
//! every page its upstreams gave; Warden serves it in pages of [`PAGE`] items. A cursor is
//! Warden's own and opaque to the client (the offset of the page it names); one Warden did not
//! issue is refused as invalid params, naming it. A list that changes between pages can repeat
//! or skip an item at the page boundary (clients are told of changes and list again).

use rmcp::ErrorData as McpError;

/// Items per page.
pub(crate) const PAGE: usize = 500;

/// Prefix of every cursor Warden issues.
const CURSOR: &str = "warden-page-";

/// The page of `items` that `cursor` names (the first without one), and the cursor of the next
/// page, if any.
///
/// # Errors
/// Invalid params for a cursor Warden did not issue, or one past the end of the list.
pub(crate) fn page<T>(
    items: Vec<T>,
    cursor: Option<&str>,
) -> Result<(Vec<T>, Option<String>), McpError> {
    let from = match cursor {
        None => 0,
        Some(c) => c
            .strip_prefix(CURSOR)
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n > 0 && *n < items.len())
            .ok_or_else(|| {
                let shown: String = c.chars().take(64).collect();
                McpError::invalid_params(
                    format!(
                        "cursor `{shown}` is not one this list gave (list again from the start)"
                    ),
                    None,
                )
            })?,
    };
    let to = from.saturating_add(PAGE).min(items.len());
    let next = (to < items.len()).then(|| format!("{CURSOR}{to}"));
    let page = items.into_iter().skip(from).take(to - from).collect();
    Ok((page, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_each_other_to_the_end_and_a_foreign_cursor_is_refused() {
        let items: Vec<usize> = (0..PAGE * 2 + 7).collect();
        let (first, next) = page(items.clone(), None).unwrap_or_default();
        assert_eq!(first.len(), PAGE);
        let (second, next) = page(items.clone(), next.as_deref()).unwrap_or_default();
        assert_eq!(second.first(), Some(&PAGE));
        let (third, last) = page(items.clone(), next.as_deref()).unwrap_or_default();
        assert_eq!((third.len(), last), (7, None));
        // A short list is one page.
        assert_eq!(page(vec![1, 2], None).ok(), Some((vec![1, 2], None)));
        for bad in [
            "",
            "abc",
            "warden-page-0",
            "warden-page-99999",
            "warden-page--1",
        ] {
            let e = page(items.clone(), Some(bad))
                .err()
                .map(|e| e.message.to_string());
            assert!(
                e.is_some_and(|m| m.contains("not one this list gave")),
                "{bad}"
            );
        }
    }
}
