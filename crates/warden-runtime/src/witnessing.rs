//! Sending the ledger's checkpoints to witnesses outside the data directory (issue 18,
//! docs/ledger.md "Witnesses"): whoever can rewrite the data directory can roll the whole log
//! back to an earlier, self-consistent state, and nothing inside the directory shows it. A
//! witness remembers the newest checkpoint it cosigned and cosigns only extensions of it
//! (C2SP `tlog-witness`, [`warden_ledger::witness`]).
//!
//! One task per witness, never in a decision's path: every second it takes the latest signed
//! checkpoint and, if the witness has not cosigned it, posts it with the consistency proof from
//! the size the witness last cosigned. A refusal is recorded in the ledger
//! (`ledger.witness_refused`) once per distinct reason; a witness that has cosigned more than
//! this log holds means the log was rolled back or replaced (`ledger.witness_ahead`).

use std::sync::Arc;
use std::time::Duration;

use warden_ledger::cosign::CosignatureVerifier;
use warden_ledger::merkle::Hash;
use warden_ledger::note::Checkpoint;
use warden_ledger::Ledger;

/// How often each witness is offered the latest checkpoint.
const EVERY: Duration = Duration::from_secs(1);

/// A witness: where to post (`<url>/add-checkpoint`) and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessTarget {
    /// Its base URL.
    pub url: String,
    /// Its verifier key (a cosignature is checked before it counts).
    pub key: CosignatureVerifier,
}

/// Why a `--witness` value is not a witness.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WitnessTargetError {
    /// Not `URL#KEY`.
    #[error("`{0}` is not a witness: write URL#KEY (its base URL, then its verifier key)")]
    Form(String),
    /// The key does not parse.
    #[error("witness `{url}`: {why}")]
    Key {
        /// The URL.
        url: String,
        /// Why.
        why: String,
    },
}

impl std::str::FromStr for WitnessTarget {
    type Err = WitnessTargetError;

    fn from_str(spec: &str) -> Result<WitnessTarget, WitnessTargetError> {
        let (url, key) = spec
            .split_once('#')
            .filter(|(u, _)| u.starts_with("http://") || u.starts_with("https://"))
            .ok_or_else(|| WitnessTargetError::Form(spec.to_owned()))?;
        let key =
            key.parse().map_err(
                |e: warden_ledger::note::NoteError| WitnessTargetError::Key {
                    url: url.to_owned(),
                    why: e.to_string(),
                },
            )?;
        Ok(WitnessTarget {
            url: url.trim_end_matches('/').to_owned(),
            key,
        })
    }
}

/// Starts offering checkpoints to each witness (on the current runtime).
pub(crate) fn start(ledger: &Arc<Ledger>, targets: &[WitnessTarget]) {
    for t in targets {
        let (ledger, target) = (Arc::clone(ledger), t.clone());
        tokio::spawn(async move { offer(ledger, target).await });
    }
}

/// The latest signed checkpoint, as stored and as read.
async fn latest(ledger: &Arc<Ledger>) -> Option<(String, Checkpoint)> {
    let l = Arc::clone(ledger);
    let note = tokio::task::spawn_blocking(move || {
        l.with_store(|s| s.latest_checkpoint().map_err(Into::into))
    })
    .await
    .ok()?
    .ok()??;
    let cp = Checkpoint::open(&note, &ledger.verifier(), ledger.origin()).ok()?;
    Some((note, cp))
}

/// The consistency proof from `old` to `new` entries.
async fn consistency(ledger: &Arc<Ledger>, old: u64, new: u64) -> Option<Vec<Hash>> {
    let l = Arc::clone(ledger);
    let c = tokio::task::spawn_blocking(move || {
        l.with_store(|s| warden_ledger::proof::consistency(s, old, new).map_err(Into::into))
    })
    .await
    .ok()?
    .ok()?;
    c.proof
        .iter()
        .map(|h| warden_ledger::merkle::from_hex(h))
        .collect()
}

/// What the witness answered.
enum Answer {
    Cosigned,
    /// 409: it last cosigned this size.
    Conflict(u64),
    Refused(String),
}

async fn post(
    client: &reqwest::Client,
    target: &WitnessTarget,
    body: String,
    note: &str,
) -> Result<Answer, reqwest::Error> {
    let resp = client
        .post(format!("{}/add-checkpoint", target.url))
        .body(body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    Ok(match status {
        200 => match target.key.verify(&format!("{note}{text}")) {
            Ok(_) => Answer::Cosigned,
            Err(e) => Answer::Refused(format!("its cosignature does not verify: {e}")),
        },
        409 => match text.trim().parse() {
            Ok(size) => Answer::Conflict(size),
            Err(_) => Answer::Refused(format!("409 without a size: {}", clip(&text))),
        },
        _ => Answer::Refused(format!("{status}: {}", clip(&text))),
    })
}

fn clip(text: &str) -> String {
    text.trim().chars().take(200).collect()
}

async fn offer(ledger: Arc<Ledger>, target: WitnessTarget) {
    let client = match warden_executor::tls::http_client(&target.url, None) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(witness = target.key.name(), error = %e, "witness is off");
            return;
        }
    };
    // The size of this log's checkpoint the witness cosigned (nothing to send until it grows),
    // and the size the witness says it last cosigned (told on a 409, when asked from 0): the
    // same size with another root is a fork, so it is sent, never skipped.
    let mut cosigned: Option<u64> = None;
    let mut known: Option<u64> = None;
    let mut last_problem = String::new();
    let mut again = false;
    loop {
        if !again {
            tokio::time::sleep(EVERY).await;
        }
        again = false;
        let Some((note, cp)) = latest(&ledger).await else {
            continue;
        };
        if cosigned == Some(cp.size) {
            continue;
        }
        let old = known.unwrap_or(0);
        let problem = if old > cp.size {
            // INVARIANT (rollback is seen): the witness holds a larger tree than this log.
            Some((
                "ledger.witness_ahead",
                format!(
                    "witness {} cosigned {old} entries of this log, which now has {}: it was rolled back or replaced",
                    target.key.name(),
                    cp.size
                ),
            ))
        } else {
            let proof = if old == 0 || old == cp.size {
                Some(Vec::new())
            } else {
                consistency(&ledger, old, cp.size).await
            };
            match proof {
                None => None,
                Some(proof) => {
                    let body = warden_ledger::witness::request_body(old, &proof, &note);
                    match post(&client, &target, body, &note).await {
                        Ok(Answer::Cosigned) => {
                            cosigned = Some(cp.size);
                            known = Some(cp.size);
                            last_problem.clear();
                            None
                        }
                        Ok(Answer::Conflict(size)) => {
                            again = known != Some(size);
                            known = Some(size);
                            None
                        }
                        Ok(Answer::Refused(why)) => Some((
                            "ledger.witness_refused",
                            format!(
                                "witness {} refused the checkpoint at size {}: {why}",
                                target.key.name(),
                                cp.size
                            ),
                        )),
                        Err(e) => {
                            tracing::warn!(witness = target.key.name(), error = %e, "witness unreachable");
                            None
                        }
                    }
                }
            }
        };
        if let Some((kind, reason)) = problem {
            if reason != last_problem {
                tracing::error!(witness = target.key.name(), "{reason}");
                crate::witness::record(
                    &ledger,
                    kind,
                    crate::witness::About::governance(),
                    reason.clone(),
                )
                .await;
                last_problem = reason;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn witness_targets_are_parsed_and_bad_ones_named() {
        let key = warden_ledger::cosign::Cosigner::generate("witness.test")
            .unwrap()
            .verifier();
        let t: WitnessTarget = format!("http://127.0.0.1:9/w/#{key}").parse().unwrap();
        assert_eq!(t.url, "http://127.0.0.1:9/w");
        assert_eq!(t.key, key);
        assert!(matches!(
            format!("127.0.0.1:9#{key}").parse::<WitnessTarget>(),
            Err(WitnessTargetError::Form(_))
        ));
        assert!(matches!(
            "http://127.0.0.1:9#nope".parse::<WitnessTarget>(),
            Err(WitnessTargetError::Key { .. })
        ));
    }
}
