//! The Witness: a tamper-evident, signed Merkle log of every decision and execution receipt
//! (INV-014, INV-015, INV-016, INV-022), verifiable offline by anyone holding the public key.
//!
//! - [`merkle`]: RFC 6962 / 9162 hashing, inclusion and consistency proofs, their verification.
//! - [`note`]: Ed25519 keys, C2SP signed notes and `tlog-checkpoint` checkpoints.
//! - [`record`]: decision records and receipts in canonical JSON.
//! - [`store`]: the storage interface; [`file`] (segment files) and [`postgres`] implement it.
//! - [`ledger`]: group commit and checkpoint signing over a store.
//! - [`proof`] and [`verify`]: proofs from a store; full verification of a store or an export.
//!
//! Fail-closed (INV-003): an append returns only once the entry is durable; any error means the
//! entry is not recorded and the caller must not execute.

pub mod file;
pub mod ledger;
pub mod merkle;
pub mod note;
pub mod postgres;
pub mod proof;
pub mod record;
pub mod store;
pub mod verify;

pub use file::{FileStore, Mode};
pub use ledger::{Ledger, LedgerConfig, LedgerError, Ticket};
pub use note::{Checkpoint, NoteSigner, NoteVerifier};
pub use record::{DecisionRecord, Entry, Receipt, ReceiptStatus};
pub use store::{LedgerStore, StoreError};
