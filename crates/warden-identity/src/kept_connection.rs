//! The one Redis connection each Redis-backed store of this crate keeps between calls (the
//! grant replay guard, the revocation list, the approvals book): opened when a call needs it,
//! dropped when a call on it fails, and replaced at once when a Redis that restarted has closed
//! it, so the first request after Redis comes back is served rather than refused.

use std::time::Duration;

/// How long opening the connection, and each reply on it, may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// What an error of a call means for the connection it ran on.
pub(crate) enum Meant {
    /// Nothing: the connection is kept (a refusal by the store's own rules).
    Kept,
    /// The connection may be in any state: it is dropped, the next call opens another.
    Broken,
    /// The server had closed it: it is dropped and, if it was kept from an earlier call, the
    /// call runs once more on a new one.
    Closed,
}

/// Runs `f` on the connection in `slot`, opened first if there is none; what an error means for
/// the connection is `meant`'s to say. `f` may run twice (a kept connection found closed): it
/// must do nothing twice that one run would not (the callers say why theirs do not).
pub(crate) fn run<T, E: From<redis::RedisError>>(
    client: &redis::Client,
    slot: &mut Option<redis::Connection>,
    mut f: impl FnMut(&mut redis::Connection) -> Result<T, E>,
    meant: impl Fn(&E) -> Meant,
) -> Result<T, E> {
    let kept = slot.is_some();
    match once(client, slot, &mut f, &meant) {
        Err(e) if kept && matches!(meant(&e), Meant::Closed) => once(client, slot, &mut f, &meant),
        out => out,
    }
}

/// [`run`]'s one try.
fn once<T, E: From<redis::RedisError>>(
    client: &redis::Client,
    slot: &mut Option<redis::Connection>,
    f: &mut impl FnMut(&mut redis::Connection) -> Result<T, E>,
    meant: &impl Fn(&E) -> Meant,
) -> Result<T, E> {
    if slot.is_none() {
        let c = client.get_connection_with_timeout(TIMEOUT)?;
        c.set_read_timeout(Some(TIMEOUT))?;
        c.set_write_timeout(Some(TIMEOUT))?;
        *slot = Some(c);
    }
    let Some(conn) = slot.as_mut() else {
        return Err(E::from(redis::RedisError::from(std::io::Error::other(
            "no redis connection",
        ))));
    };
    let out = f(conn);
    if let Err(e) = &out {
        if !matches!(meant(e), Meant::Kept) {
            *slot = None;
        }
    }
    out
}
