//! Proof that a decision is in the log. Only the ledger makes a [`Recorded`], and only once the
//! decision's entry is durable; a grant is minted from one (`warden_identity::GrantKeys::mint`),
//! so "no grant without a recorded allow" (INV-003, INV-014) is checked by the compiler.

use warden_core::Decision;

use crate::ledger::{Ledger, LedgerError};
use crate::record::{DecisionRecord, Entry};

/// A decision the ledger has durably recorded, and its index in the log. Its fields are
/// private: outside this crate one is had only from [`Ledger::record_decision`] (or
/// [`Ledger::record_decision_blocking`]).
#[derive(Debug)]
pub struct Recorded {
    decision: Decision,
    index: u64,
}

impl Recorded {
    /// The decision.
    #[must_use]
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// Its index in the log.
    #[must_use]
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The decision, giving up the proof.
    #[must_use]
    pub fn into_decision(self) -> Decision {
        self.decision
    }
}

/// The entry for `decision`: its record, with `lineage` (the owner, then the delegation chain
/// down to the caller) after the owner.
fn entry(decision: &Decision, trace: &str, request_id: &str, lineage: Vec<String>) -> Entry {
    let mut record = DecisionRecord::from_decision(decision, trace, request_id);
    record.lineage.extend(lineage);
    Entry::Decision(record)
}

impl Ledger {
    /// Records `decision` and waits until it is durable.
    ///
    /// # Errors
    /// [`LedgerError`]: the decision is not recorded (the caller must not act on it).
    pub async fn record_decision(
        &self,
        decision: Decision,
        trace: &str,
        request_id: &str,
        lineage: Vec<String>,
    ) -> Result<Recorded, LedgerError> {
        let index = self
            .record(&entry(&decision, trace, request_id, lineage))
            .await?;
        Ok(Recorded { decision, index })
    }

    /// [`Ledger::record_decision`], blocking the calling thread (not inside an async runtime).
    ///
    /// # Errors
    /// [`LedgerError`]: the decision is not recorded (the caller must not act on it).
    pub fn record_decision_blocking(
        &self,
        decision: Decision,
        trace: &str,
        request_id: &str,
        lineage: Vec<String>,
    ) -> Result<Recorded, LedgerError> {
        let ticket = self.submit(&entry(&decision, trace, request_id, lineage))?;
        let index = ticket.wait()?;
        Ok(Recorded { decision, index })
    }
}
