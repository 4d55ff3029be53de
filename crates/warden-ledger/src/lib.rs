//! The Witness: a tamper-evident, signed Merkle log of every decision and execution receipt
//! (INV-014, INV-015, INV-016, INV-022), verifiable offline by anyone holding the public key.
//!
//! - [`merkle`]: RFC 6962 / 9162 hashing, inclusion and consistency proofs, their verification.
//! - [`note`]: Ed25519 keys, C2SP signed notes and `tlog-checkpoint` checkpoints.
//! - [`record`]: decision records and receipts in canonical JSON; [`recorded`]: the proof that
//!   a decision is in the log, from which alone a grant is minted.
//! - [`store`]: the storage interface; [`file`] (segment files) and [`postgres`] implement it.
//! - [`ledger`]: group commit and checkpoint signing over a store.
//! - [`proof`] and [`verify`]: proofs from a store; full verification of a store or an export.
//!
//! Fail-closed (INV-003): an append returns only once the entry is durable; any error means the
//! entry is not recorded and the caller must not execute.

pub mod cosign;
pub mod file;
pub mod incident;
pub mod ledger;
pub mod merkle;
pub mod note;
pub mod postgres;
pub mod proof;
pub mod record;
pub mod recorded;
pub mod store;
pub mod verify;
pub mod witness;

pub use file::{FileStore, Mode};
pub use ledger::{
    Ledger, LedgerConfig, LedgerError, Receipts, SyncObserver, Ticket, DEFAULT_RECEIPT_WINDOW,
    RECORD_WAIT,
};
pub use note::{Checkpoint, NoteSigner, NoteVerifier};
pub use record::{DecisionRecord, Entry, EventRecord, Receipt, ReceiptStatus};
pub use recorded::Recorded;
pub use store::{LedgerStore, StoreError};

/// Entry points for fuzz targets (`fuzz/`): each must never panic or hang, whatever the input.
pub mod fuzz {
    use crate::note::{Checkpoint, NoteSigner, NoteVerifier};

    /// The fixed key the export seeds are signed with.
    #[must_use]
    pub fn export_signer() -> NoteSigner {
        NoteSigner::from_seed("warden.fuzz/ledger", &[7u8; 32])
    }

    /// Decodes arbitrary bytes as a ledger entry.
    pub fn record(data: &[u8]) {
        if let Ok(e) = crate::record::Entry::from_bytes(data) {
            let _ = e.to_bytes();
        }
    }

    /// Decodes arbitrary bytes as a segment.
    pub fn segment(data: &[u8]) {
        let scan = crate::file::decode_segment(data);
        debug_assert!(scan.valid_len <= data.len());
    }

    /// Parses arbitrary bytes as a signed checkpoint, a verifier key and a private key.
    pub fn checkpoint(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let v = export_signer().verifier();
        let _ = Checkpoint::open(text, &v, v.name());
        let _ = Checkpoint::parse_text(text);
        let _ = NoteVerifier::parse(text);
        let _ = NoteSigner::parse(text);
    }

    /// The fixed witness key of the witness seeds.
    #[must_use]
    pub fn witness_signer() -> crate::cosign::Cosigner {
        crate::cosign::Cosigner::from_seed("warden.fuzz/witness", &[9u8; 32])
    }

    /// Reads arbitrary bytes as a witness's input: an `add-checkpoint` request, a witness key
    /// (public and private), a cosigned checkpoint.
    pub fn witness(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        if let Ok((old, proof, note)) = crate::witness::parse_request(text) {
            debug_assert!(proof.len() <= crate::witness::MAX_PROOF);
            let v = export_signer().verifier();
            if let Ok(cp) = Checkpoint::open(note, &v, v.name()) {
                let _ = crate::merkle::verify_consistency(old, cp.size, &cp.root, &cp.root, &proof);
            }
        }
        let _ = text.parse::<crate::cosign::CosignatureVerifier>();
        let _ = crate::cosign::Cosigner::parse(text);
        let _ = witness_signer().verifier().verify(text);
    }

    /// Reads arbitrary bytes as an incident bundle and verifies it under [`export_signer`].
    pub fn incident(data: &[u8]) {
        let v = export_signer().verifier();
        if let Ok(b) = serde_json::from_slice::<crate::incident::Bundle>(data) {
            let _ = crate::incident::verify(&b, &v);
        }
    }

    /// Verifies arbitrary bytes as an export signed by [`export_signer`].
    pub fn export(data: &[u8]) {
        let v = export_signer().verifier();
        let mut input = data;
        let _ = crate::verify::verify_export(&mut input, &v);
    }
}
