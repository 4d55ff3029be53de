//! The Witness ledger end to end: RFC 6962 vectors, proofs, tampering, crash recovery, fail
//! closed, and one shared suite run against the embedded store and PostgreSQL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on purpose"
)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use warden_ledger::file::{decode_segment, FileStore, Mode};
use warden_ledger::merkle::{self, from_hex, leaf_hash, root_of_leaves, Hash};
use warden_ledger::note::{Checkpoint, NoteSigner};
use warden_ledger::postgres::PgStore;
use warden_ledger::record::{DecisionRecord, Entry, Receipt, ReceiptStatus};
use warden_ledger::store::LedgerStore;
use warden_ledger::{proof, verify, Ledger, LedgerConfig};

fn h(s: &str) -> Hash {
    from_hex(s).unwrap()
}

fn file_store(dir: &Path) -> Box<dyn LedgerStore> {
    Box::new(FileStore::open(dir, Mode::Write).unwrap())
}

fn raw_entries(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("entry-{i}").into_bytes()).collect()
}

// ---------------------------------------------------------------------------------------------
// RFC 6962 test vectors (the Certificate Transparency reference leaves, roots and proofs).

const CT_LEAVES: [&[u8]; 8] = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
];

const CT_ROOTS: [&str; 9] = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

fn ct_store(dir: &Path) -> Box<dyn LedgerStore> {
    let mut s = file_store(dir);
    let entries: Vec<Vec<u8>> = CT_LEAVES.iter().map(|l| l.to_vec()).collect();
    s.append(&entries).unwrap();
    s
}

#[test]
fn rfc6962_roots() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = ct_store(dir.path());
    let leaves: Vec<Hash> = CT_LEAVES.iter().map(|l| leaf_hash(l)).collect();
    for (size, want) in CT_ROOTS.iter().enumerate() {
        assert_eq!(
            proof::root(&mut *s, size as u64).unwrap(),
            h(want),
            "size {size}"
        );
        assert_eq!(root_of_leaves(&leaves[..size]), h(want), "size {size}");
    }
}

#[test]
fn rfc6962_inclusion_and_consistency_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = ct_store(dir.path());
    let cases: [(u64, u64, &[&str]); 2] = [
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];
    for (index, size, want) in cases {
        let p = proof::inclusion(&mut *s, index, size).unwrap();
        assert_eq!(
            p.proof,
            want.iter().map(|x| x.to_string()).collect::<Vec<_>>()
        );
        p.verify().unwrap();
    }
    let cons: [(u64, u64, &[&str]); 3] = [
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    for (old, new, want) in cons {
        let p = proof::consistency(&mut *s, old, new).unwrap();
        assert_eq!(
            p.proof,
            want.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
            "{old}->{new}"
        );
        p.verify().unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests.

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any sequence of appends, in any batching, gives the RFC's roots, and every inclusion and
    /// consistency proof verifies against independently computed roots; wrong ones do not.
    #[test]
    fn any_appends_verify(batches in prop::collection::vec(1usize..9, 1..10), seed in any::<u8>()) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileStore::open_with(dir.path(), Mode::Write, 256).unwrap();
        let mut all: Vec<Vec<u8>> = Vec::new();
        for (b, n) in batches.iter().enumerate() {
            let batch: Vec<Vec<u8>> = (0..*n).map(|i| vec![seed, b as u8, i as u8]).collect();
            s.append(&batch).unwrap();
            all.extend(batch);
        }
        let leaves: Vec<Hash> = all.iter().map(|e| leaf_hash(e)).collect();
        let n = leaves.len() as u64;
        for size in 0..=n {
            prop_assert_eq!(proof::root(&mut s, size).unwrap(), root_of_leaves(&leaves[..size as usize]));
        }
        for size in 1..=n {
            let root = root_of_leaves(&leaves[..size as usize]);
            for index in 0..size {
                let p = proof::inclusion(&mut s, index, size).unwrap();
                let path: Vec<Hash> = p.proof.iter().map(|x| h(x)).collect();
                prop_assert!(merkle::verify_inclusion(index, size, &leaves[index as usize], &path, &root).is_ok());
                let other = (index + 1) % size;
                if other != index {
                    prop_assert!(merkle::verify_inclusion(other, size, &leaves[index as usize], &path, &root).is_err());
                }
                prop_assert!(merkle::verify_inclusion(index, size, &leaf_hash(b"forged"), &path, &root).is_err());
            }
            for old in 0..=size {
                let p = proof::consistency(&mut s, old, size).unwrap();
                let path: Vec<Hash> = p.proof.iter().map(|x| h(x)).collect();
                let old_root = root_of_leaves(&leaves[..old as usize]);
                prop_assert!(merkle::verify_consistency(old, size, &old_root, &root, &path).is_ok());
                if old > 0 && old < size {
                    prop_assert!(merkle::verify_consistency(old, size, &leaf_hash(b"x"), &root, &path).is_err());
                    prop_assert!(merkle::verify_consistency(old, size, &old_root, &leaf_hash(b"x"), &path).is_err());
                }
            }
        }
        // The store reopens to the same tree.
        drop(s);
        let mut s = FileStore::open_with(dir.path(), Mode::Write, 256).unwrap();
        prop_assert_eq!(proof::root(&mut s, n).unwrap(), root_of_leaves(&leaves));
    }

    /// Flipping any bit of any stored byte (segments' frames, their headers included, derived
    /// files, checkpoint) is detected: the ledger either refuses to open or verification fails.
    /// A flip in the zeros preallocated after the last frame changes no entry and is not.
    #[test]
    fn any_flipped_byte_is_detected(which in 0usize..4, pos_seed in any::<u64>(), bit in 0u8..8) {
        let dir = tempfile::tempdir().unwrap();
        let signer = NoteSigner::generate("warden.test/flip").unwrap();
        let verifier = signer.verifier();
        {
            let ledger = Ledger::open(file_store(dir.path()), signer, LedgerConfig::default()).unwrap();
            for i in 0..20 {
                ledger.append(&decision(i)).unwrap();
            }
            ledger.checkpoint().unwrap();
        }
        let files = ["00000000000000000000.seg", "index.bin", "tree.bin", "checkpoints.log"];
        let path = dir.path().join(files[which]);
        let mut bytes = std::fs::read(&path).unwrap();
        // The segment's frames end here; zeros preallocated for later frames follow (a
        // megabyte of them: flips are drawn from the frames and the tail's first bytes).
        let frames_end = decode_segment(&bytes).valid_len;
        let span = if which == 0 { (frames_end + 64).min(bytes.len()) } else { bytes.len() };
        let pos = (pos_seed % span as u64) as usize;
        bytes[pos] ^= 1 << bit;
        std::fs::write(&path, &bytes).unwrap();
        let outcome = FileStore::open(dir.path(), Mode::ReadOnly)
            .map_err(|e| e.to_string())
            .and_then(|mut s| verify::verify_store(&mut s, &verifier, None, true).map_err(|e| e.to_string()));
        // Derived files are re-derived from the segments when they disagree with the signed
        // checkpoint, so flipping one of them is healed rather than fatal; everything else fails.
        if which == 1 || which == 2 {
            if let Ok(report) = &outcome {
                prop_assert_eq!(report.entries, 20);
            }
        } else if which == 0 && pos >= frames_end {
            // A flip in the preallocated zeros after the last frame alters no entry: it reads
            // as a torn write there, and every entry still verifies.
            prop_assert_eq!(outcome.map(|r| r.entries), Ok(20));
        } else if which == 3 {
            // A damaged checkpoint is never accepted: at worst it is treated as a torn write and
            // an older one (here: none) is used, which an auditor holding the newer one notices.
            if let Ok(report) = &outcome {
                prop_assert!(report.checkpoint_size < 20, "a damaged checkpoint was accepted");
            }
        } else {
            prop_assert!(outcome.is_err(), "flip in {} at {pos} went unnoticed", files[which]);
        }
    }
}

/// A segment's header (its magic) is read at open even where the checkpoint vouches for the
/// entries (the random flips above reach those 8 bytes only rarely).
#[test]
fn a_segment_without_its_magic_does_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let signer = NoteSigner::generate("warden.test/magic").unwrap();
    {
        let ledger = Ledger::open(file_store(dir.path()), signer, LedgerConfig::default()).unwrap();
        for i in 0..5 {
            ledger.append(&decision(i)).unwrap();
        }
        ledger.checkpoint().unwrap();
    }
    let seg = dir.path().join("00000000000000000000.seg");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&seg, &bytes).unwrap();
    for mode in [Mode::ReadOnly, Mode::Write] {
        let err = FileStore::open(dir.path(), mode).unwrap_err().to_string();
        assert!(
            err.contains("does not start with the segment magic"),
            "{err}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Records.

fn decision(i: u64) -> Entry {
    Entry::Decision(DecisionRecord {
        decision: warden_core::Verdict::Allow,
        rules: vec!["tier.low.auto".into()],
        policies: vec!["policy:permit-reads".into()],
        rationale: "allowed".into(),
        escalation: None,
        manifest_version: 3,
        policy_hash: "sha256:00".into(),
        agent: "coder-1".into(),
        lineage: vec!["alice@acme.example".into()],
        tenant: "acme".into(),
        session: "s1".into(),
        trace_id: format!("trace-{i}"),
        request_id: format!("req-{i}"),
        tool: "fs.read_file".into(),
        operation: warden_core::Operation::Use,
        arguments_hash: format!("sha256:{i:064x}"),
        time: 1_795_341_600 + i as i64,
        provenance: Vec::new(),
    })
}

fn receipt(i: u64) -> Entry {
    Entry::Receipt(Receipt {
        trace_id: format!("trace-{i}"),
        request_id: format!("req-{i}"),
        tenant: "acme".into(),
        agent: "coder-1".into(),
        action: "fs.read_file".into(),
        arguments_hash: format!("sha256:{i:064x}"),
        grant: format!("grant-{i}"),
        approval: None,
        started_at_ms: 1_795_341_600_000,
        ended_at_ms: 1_795_341_600_020,
        status: ReceiptStatus::Ok,
        result_hash: "sha256:11".into(),
        executor: "process".into(),
        sandbox_profile: "none".into(),
        redactions: 0,
    })
}

#[test]
fn records_are_canonical_and_round_trip() {
    for e in [decision(7), receipt(7)] {
        let bytes = e.to_bytes().unwrap();
        assert_eq!(Entry::from_bytes(&bytes).unwrap(), e);
        // Same value, other key order and whitespace: rejected as non-canonical.
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let pretty = serde_json::to_vec_pretty(&v).unwrap();
        assert!(Entry::from_bytes(&pretty).is_err());
    }
    // Unknown fields are refused.
    let mut v: serde_json::Value = serde_json::from_slice(&receipt(1).to_bytes().unwrap()).unwrap();
    v["secret"] = "x".into();
    let bytes = warden_core::canonical::to_canonical_string(&v).into_bytes();
    assert!(Entry::from_bytes(&bytes).is_err());
}

/// INV-009: argument values — including secrets an agent put in them — never reach a record;
/// only their hash does. Shown for an allowed call and for a call denied because an argument
/// did not match its schema (whose rationale must not quote the value either).
#[test]
fn no_secret_value_reaches_a_record() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/starter");
    let text = std::fs::read_to_string(root.join("manifest.yaml")).unwrap();
    let mut policies = Vec::new();
    for e in std::fs::read_dir(root.join("policies")).unwrap() {
        let p = e.unwrap().path();
        policies.push(warden_policy::PolicySource {
            name: p.file_name().unwrap().to_string_lossy().into_owned(),
            text: std::fs::read_to_string(&p).unwrap(),
        });
    }
    let m = warden_policy::parse_manifest("manifest.yaml", &text).unwrap();
    let g = warden_policy::Governor::new(m, &policies).unwrap();
    let state = warden_state::MemoryState::new();
    let secret = "ghp_S3cr3tT0k3nValue";
    let cases = [
        (
            "fs.read_file",
            serde_json::json!({ "path": format!("/home/{secret}") }),
        ),
        (
            "github.create_issue",
            serde_json::json!({ "repo": format!("{secret} not a repo"), "title": secret }),
        ),
        // A secret smuggled in as a property *name* the schema does not allow.
        (
            "fs.read_file",
            serde_json::json!({ "path": "/a", secret: 1 }),
        ),
        // ... or as a value of the wrong type deep inside.
        ("fs.read_file", serde_json::json!({ "path": [secret] })),
    ];
    let mut verdicts = Vec::new();
    for (tool, args) in cases {
        let p = warden_core::Proposal {
            agent: "coder-1".into(),
            session: "s".into(),
            tool: tool.into(),
            arguments: args,
            tenant: None,
            kind: warden_core::ActionKind::Tool,
            operation: warden_core::Operation::Use,
        };
        let d = g.decide(&p, &state, 1_795_341_600);
        verdicts.push(d.decision);
        let bytes = Entry::Decision(DecisionRecord::from_decision(&d, "t", "r"))
            .to_bytes()
            .unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(!text.contains(secret), "secret leaked into {text}");
        assert!(!text.contains("S3cr3t"), "secret leaked into {text}");
    }
    assert_eq!(verdicts[0], warden_core::Verdict::Allow);
    assert_eq!(&verdicts[1..], &[warden_core::Verdict::Deny; 3]);
}

// ---------------------------------------------------------------------------------------------
// The shared suite: the same checks against every backend.

fn shared_suite(make: &dyn Fn() -> Box<dyn LedgerStore>, origin: &str) {
    let signer = NoteSigner::generate(origin).unwrap();
    let private = signer.to_private_string();
    let verifier = signer.verifier();
    {
        let ledger = Ledger::open(make(), signer, LedgerConfig::default()).unwrap();
        // Concurrent submitters share group commits; every index is distinct and dense.
        let ledger = Arc::new(ledger);
        let mut handles = Vec::new();
        for t in 0..4u64 {
            let l = Arc::clone(&ledger);
            handles.push(std::thread::spawn(move || {
                (0..50u64)
                    .map(|i| l.append(&decision(t * 1000 + i)).unwrap())
                    .collect::<Vec<_>>()
            }));
        }
        let mut got: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(got, (0..200).collect::<Vec<_>>());
        ledger.append(&receipt(1)).unwrap();
        let note = ledger.checkpoint().unwrap();
        let cp = Checkpoint::open(&note, &verifier, origin).unwrap();
        assert_eq!(cp.size, 201);
        assert_eq!(ledger.root(201).unwrap(), cp.root);
        let p = ledger.prove(17, 201).unwrap();
        p.verify().unwrap();
        assert_eq!(h(&p.root), cp.root);
        let c = ledger
            .with_store(|s| Ok(proof::consistency(s, 100, 201)?))
            .unwrap();
        c.verify().unwrap();
        // Out of range is an error, not a panic.
        assert!(ledger.prove(201, 201).is_err());
        assert!(ledger.prove(0, 202).is_err());
    }
    // Reopen: same log, and it keeps growing.
    let signer = NoteSigner::parse(&private).unwrap();
    let ledger = Ledger::open(make(), signer, LedgerConfig::default()).unwrap();
    assert_eq!(ledger.size().unwrap(), 201);
    ledger.append(&decision(9999)).unwrap();
    let note = ledger.checkpoint().unwrap();
    drop(ledger);

    let mut s = make();
    let report = verify::verify_store(&mut *s, &verifier, Some(&note), true).unwrap();
    assert_eq!(report.entries, 202);
    assert_eq!(report.checkpoint_size, 202);
    let bytes = proof::entry_checked(&mut *s, 200).unwrap();
    assert_eq!(Entry::from_bytes(&bytes).unwrap(), receipt(1));

    // An export verifies with nothing but the public key.
    let mut out = Vec::new();
    assert_eq!(verify::export(&mut *s, &mut out).unwrap(), 202);
    let r = verify::verify_export(&mut out.as_slice(), &verifier).unwrap();
    assert_eq!(r.entries, 202);
    // ... and not with another key.
    let other = NoteSigner::generate(origin).unwrap().verifier();
    assert!(verify::verify_export(&mut out.as_slice(), &other).is_err());
    // An altered entry in the export is named.
    let text = String::from_utf8(out).unwrap();
    let altered = text.replacen("\"req-5\"", "\"req-X\"", 1);
    assert_ne!(altered, text);
    let err = verify::verify_export(&mut altered.as_bytes(), &verifier).unwrap_err();
    assert!(err.index.is_some(), "{err}");
}

#[test]
fn shared_suite_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    shared_suite(&|| file_store(&path), "warden.test/embedded");
}

fn postgres_url() -> Option<String> {
    match std::env::var("WARDEN_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!(
                "notice: WARDEN_TEST_POSTGRES_URL is unset; skipping the PostgreSQL ledger test"
            );
            None
        }
    }
}

fn unique(prefix: &str) -> String {
    let mut b = [0u8; 6];
    getrandom_fill(&mut b);
    let mut s = prefix.to_owned();
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn getrandom_fill(b: &mut [u8]) {
    // Distinct per test run; tests need uniqueness, not secrecy.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let pid = std::process::id() as u128;
    let v = (t ^ (pid << 64)).to_le_bytes();
    for (i, x) in b.iter_mut().enumerate() {
        *x = v[i % 16] ^ v[(i + 7) % 16];
    }
}

#[test]
fn shared_suite_postgres() {
    let Some(url) = postgres_url() else { return };
    let name = unique("warden.test/pg-");
    shared_suite(&|| Box::new(PgStore::connect(&url, &name).unwrap()), &name);
}

/// Several instances write one PostgreSQL ledger: one global order, one verifying tree.
#[test]
fn postgres_several_instances_one_order() {
    let Some(url) = postgres_url() else { return };
    let name = unique("warden.test/multi-");
    let signer = NoteSigner::generate(&name).unwrap();
    let private = signer.to_private_string();
    let verifier = signer.verifier();
    let mut handles = Vec::new();
    for inst in 0..3u64 {
        let url = url.clone();
        let name = name.clone();
        let private = private.clone();
        handles.push(std::thread::spawn(move || {
            let store = Box::new(PgStore::connect(&url, &name).unwrap());
            let ledger = Ledger::open(
                store,
                NoteSigner::parse(&private).unwrap(),
                LedgerConfig::default(),
            )
            .unwrap();
            let l = Arc::new(ledger);
            let mut got = Vec::new();
            for i in 0..40u64 {
                got.push(l.append(&decision(inst * 1000 + i)).unwrap());
            }
            l.checkpoint().unwrap();
            got
        }));
    }
    let mut got: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(
        got,
        (0..120).collect::<Vec<_>>(),
        "indices are dense and distinct across instances"
    );
    let mut s = PgStore::connect(&url, &name).unwrap();
    let report = verify::verify_store(&mut s, &verifier, None, true).unwrap();
    assert_eq!(report.entries, 120);
    assert_eq!(report.checkpoint_size, 120);
}

/// With PostgreSQL unreachable, appends fail (fail closed) instead of being acknowledged.
#[test]
fn postgres_down_fails_closed() {
    // A port nothing listens on stands in for a database that went away.
    let err = PgStore::connect("postgres://root@127.0.0.1:1/test", "warden.test/down").unwrap_err();
    assert!(err.to_string().contains("postgres"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Tampering with the embedded store.

/// Rewrites entry 12 of a 30-entry ledger with a valid frame (correct checksum), replacing
/// `from` by `to`; only the Merkle tree can catch it.
fn tamper_entry_12(from: &str, to: &str) -> (tempfile::TempDir, warden_ledger::NoteVerifier) {
    let dir = tempfile::tempdir().unwrap();
    let signer = NoteSigner::generate("warden.test/tamper").unwrap();
    let verifier = signer.verifier();
    {
        let ledger = Ledger::open(file_store(dir.path()), signer, LedgerConfig::default()).unwrap();
        for i in 0..30 {
            ledger.append(&decision(i)).unwrap();
        }
        ledger.checkpoint().unwrap();
    }
    let seg = dir.path().join("00000000000000000000.seg");
    let scan = decode_segment(&std::fs::read(&seg).unwrap());
    assert_eq!(scan.entries.len(), 30);
    let mut rebuilt = warden_ledger::file::SEGMENT_MAGIC.to_vec();
    for (i, payload) in &scan.entries {
        let mut p = payload.clone();
        if *i == 12 {
            let text = String::from_utf8(p).unwrap();
            assert!(text.contains(from));
            p = text.replacen(from, to, 1).into_bytes();
        }
        rebuilt.extend(warden_ledger::file::encode_frame(*i, &p));
    }
    std::fs::write(&seg, &rebuilt).unwrap();
    (dir, verifier)
}

#[test]
fn tampered_entry_is_named_by_index() {
    // Same length: the derived offsets still line up; verification names the entry.
    let (dir, verifier) = tamper_entry_12("\"coder-1\"", "\"coder-9\"");
    for records in [false, true] {
        let mut s = FileStore::open(dir.path(), Mode::ReadOnly).unwrap();
        let err = verify::verify_store(&mut s, &verifier, None, records).unwrap_err();
        assert_eq!(err.index, Some(12), "{err}");
        assert!(err.to_string().contains("stored leaf hash"), "{err}");
    }

    // Another length: the offsets no longer line up, the store re-derives from the frames and
    // refuses to open, naming the entry, for readers and the writer alike.
    let (dir, _) = tamper_entry_12("\"allow\"", "\"deny\"");
    // The writer goes first: a failed open must leave the evidence as it found it.
    let before: Vec<_> = ["index.bin", "tree.bin", "00000000000000000000.seg"]
        .iter()
        .map(|f| std::fs::read(dir.path().join(f)).unwrap())
        .collect();
    for mode in [Mode::Write, Mode::ReadOnly, Mode::Write] {
        let err = FileStore::open(dir.path(), mode).unwrap_err().to_string();
        assert!(err.contains("entry 12") && err.contains("altered"), "{err}");
    }
    let after: Vec<_> = ["index.bin", "tree.bin", "00000000000000000000.seg"]
        .iter()
        .map(|f| std::fs::read(dir.path().join(f)).unwrap())
        .collect();
    assert!(before == after, "a refused open changed the files");
}

#[test]
fn torn_tail_is_cut_and_damage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = file_store(dir.path());
        s.append(&raw_entries(10)).unwrap();
    }
    let seg = dir.path().join("00000000000000000000.seg");
    // Half a frame where the next would go, in the preallocated zeros.
    let end = decode_segment(&std::fs::read(&seg).unwrap()).valid_len as u64;
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    std::os::unix::fs::FileExt::write_all_at(
        &f,
        &warden_ledger::file::encode_frame(10, b"half")[..9],
        end,
    )
    .unwrap();
    drop(f);
    let mut s = file_store(dir.path());
    assert_eq!(s.size().unwrap(), 10);
    s.append(&raw_entries(1)).unwrap();
    assert_eq!(s.size().unwrap(), 11);
    drop(s);
    // A damaged frame with whole frames after it, in the last segment, is damage: refused, and
    // nothing is cut.
    let good = std::fs::read(&seg).unwrap();
    let mut bad = good.clone();
    bad[8 + 16 + 2] ^= 0x01; // inside entry 0's payload
    std::fs::write(&seg, &bad).unwrap();
    let err = FileStore::open(dir.path(), Mode::Write)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("damage") && err.contains("entry 1 follows"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        bad,
        "a refused open cut the segment"
    );
    std::fs::write(&seg, &good).unwrap();
    // Damage in the middle of a segment that is not the last is refused, naming the file.
    let mut s = FileStore::open_with(dir.path(), Mode::Write, 64).unwrap();
    s.append(&raw_entries(3)).unwrap(); // rolls a new segment
    drop(s);
    let mut bytes = std::fs::read(&seg).unwrap();
    let len = bytes.len();
    bytes[len - 3] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let err = FileStore::open(dir.path(), Mode::Write)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("00000000000000000000.seg") && err.contains("damage"),
        "{err}"
    );
}

/// The last segment's file runs ahead of its frames with zeros (so a sync writes data alone): a
/// frame torn inside them is cut, the next append lands right after the last whole frame, and a
/// segment that closes is cut to its last frame.
#[test]
fn the_preallocated_tail_holds_torn_writes_and_closed_segments_end_with_their_frames() {
    let dir = tempfile::tempdir().unwrap();
    let seg = dir.path().join("00000000000000000000.seg");
    {
        let mut s = FileStore::open_with(dir.path(), Mode::Write, 4096).unwrap();
        s.append(&raw_entries(5)).unwrap();
    }
    let bytes = std::fs::read(&seg).unwrap();
    let end = decode_segment(&bytes).valid_len;
    assert_eq!(decode_segment(&bytes).entries.len(), 5);
    assert!(bytes.len() > end, "no zeros ahead of the frames");
    assert!(bytes[end..].iter().all(|&b| b == 0));
    // A crash in the middle of the next frame: part of it landed in the zeros.
    let mut torn = bytes.clone();
    let frame = warden_ledger::file::encode_frame(5, b"never acknowledged");
    torn[end..end + 20].copy_from_slice(&frame[..20]);
    std::fs::write(&seg, &torn).unwrap();
    {
        let mut s = FileStore::open_with(dir.path(), Mode::Write, 4096).unwrap();
        assert_eq!(s.size().unwrap(), 5);
        s.append(&raw_entries(2)).unwrap();
        assert_eq!(s.size().unwrap(), 7);
    }
    let scan = decode_segment(&std::fs::read(&seg).unwrap());
    assert_eq!(scan.stopped, None);
    let indexes: Vec<u64> = scan.entries.iter().map(|(i, _)| *i).collect();
    assert_eq!(indexes, (0..7).collect::<Vec<u64>>());
    // Entries that pass the segment's limit roll a new one; the closed one ends with its frames.
    {
        let mut s = FileStore::open_with(dir.path(), Mode::Write, 4096).unwrap();
        for _ in 0..80 {
            s.append(&raw_entries(3)).unwrap();
        }
        assert_eq!(s.size().unwrap(), 247);
    }
    let closed = std::fs::read(&seg).unwrap();
    assert_eq!(decode_segment(&closed).valid_len, closed.len());
    assert!(closed.len() <= 4096);
    // A reader beside the writer, and a writer reopening, see the same entries.
    let mut r = FileStore::open_with(dir.path(), Mode::ReadOnly, 4096).unwrap();
    assert_eq!(r.size().unwrap(), 247);
    assert!(dir
        .path()
        .join(format!("{:020}.seg", decode_segment(&closed).entries.len()))
        .exists());
}

/// A reader opening beside a writer that is filling the preallocated zeros sees a consistent
/// snapshot every time (a frame half written is the snapshot's end, never damage).
#[test]
fn readers_beside_a_busy_writer_never_see_damage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let writer = std::thread::spawn(move || {
        let mut s = FileStore::open_with(&path, Mode::Write, 64 << 10).unwrap();
        for _ in 0..1500 {
            s.append(&raw_entries(3)).unwrap();
        }
    });
    let mut last = 0;
    let mut opens = 0;
    while !writer.is_finished() || opens == 0 {
        match FileStore::open_with(dir.path(), Mode::ReadOnly, 64 << 10) {
            Ok(mut r) => {
                let size = r.size().unwrap();
                assert!(size >= last, "a later snapshot is shorter: {size} < {last}");
                last = size;
                opens += 1;
            }
            // The first segment may not exist yet.
            Err(e) if last == 0 && !e.to_string().contains("damage") => {}
            Err(e) => panic!("a reader beside the writer was refused: {e}"),
        }
    }
    writer.join().unwrap();
    let mut r = FileStore::open_with(dir.path(), Mode::ReadOnly, 64 << 10).unwrap();
    assert_eq!(r.size().unwrap(), 4500);
}

#[test]
fn segments_roll_and_reads_cross_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = FileStore::open_with(dir.path(), Mode::Write, 200).unwrap();
    for _ in 0..10 {
        s.append(&raw_entries(7)).unwrap();
    }
    let segs = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".seg")
        })
        .count();
    assert!(segs > 3, "only {segs} segments");
    let mut seen = Vec::new();
    s.scan(0, 70, &mut |i, b| {
        seen.push((i, b.to_vec()));
        Ok(())
    })
    .unwrap();
    assert_eq!(seen.len(), 70);
    assert_eq!(seen[69].1, b"entry-6".to_vec());
    drop(s);
    let mut r = FileStore::open(dir.path(), Mode::ReadOnly).unwrap();
    assert_eq!(r.size().unwrap(), 70);
    assert_eq!(
        proof::entry_checked(&mut r, 35).unwrap(),
        b"entry-0".to_vec()
    );
}

/// The derived files (`index.bin`, `tree.bin`) are written a batch at a time, not on every
/// append: new entries' offsets and nodes wait in memory, where proofs read them, until 1,024
/// have gathered or a checkpoint is about to be signed. What a crash leaves unwritten is
/// re-derived from the segments at the next open.
#[test]
fn derived_files_are_written_in_batches_and_before_each_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let len = |name: &str| std::fs::metadata(dir.path().join(name)).unwrap().len();
    let entry = |i: usize| format!("entry-{i}").into_bytes();
    let mut leaves = Vec::new();
    let mut s = FileStore::open(dir.path(), Mode::Write).unwrap();
    for i in 0..10 {
        s.append(&[entry(i)]).unwrap();
        leaves.push(leaf_hash(&entry(i)));
    }
    assert_eq!(
        (len("index.bin"), len("tree.bin")),
        (0, 0),
        "written per append"
    );
    // Proofs and reads come from memory meanwhile.
    assert_eq!(proof::root(&mut s, 10).unwrap(), root_of_leaves(&leaves));
    assert_eq!(
        proof::root(&mut s, 7).unwrap(),
        root_of_leaves(&leaves[..7])
    );
    assert_eq!(proof::entry_checked(&mut s, 4).unwrap(), entry(4));
    s.prepare_checkpoint().unwrap();
    assert_eq!(len("index.bin"), 10 * 8);
    assert_eq!(len("tree.bin"), merkle::nodes_for_size(10) * 32);
    assert_eq!(proof::root(&mut s, 10).unwrap(), root_of_leaves(&leaves));
    assert_eq!(proof::entry_checked(&mut s, 9).unwrap(), entry(9));

    // Without a checkpoint, they are written once 1,024 entries have gathered.
    for i in 10..1033 {
        s.append_written(&[entry(i)]).unwrap();
        leaves.push(leaf_hash(&entry(i)));
    }
    assert_eq!(len("index.bin"), 10 * 8, "written before 1,024 gathered");
    s.append(&[entry(1033)]).unwrap();
    leaves.push(leaf_hash(&entry(1033)));
    assert_eq!(len("index.bin"), 1034 * 8);
    assert_eq!(len("tree.bin"), merkle::nodes_for_size(1034) * 32);
    for i in 1034..1040 {
        s.append(&[entry(i)]).unwrap();
        leaves.push(leaf_hash(&entry(i)));
    }
    assert_eq!(proof::root(&mut s, 1040).unwrap(), root_of_leaves(&leaves));
    assert_eq!(proof::entry_checked(&mut s, 1037).unwrap(), entry(1037));
    // Dropped with six entries' derived data unwritten, as a crash would leave it: the next
    // open re-derives them from the segments.
    drop(s);
    assert_eq!(len("index.bin"), 1034 * 8);
    let mut s = FileStore::open(dir.path(), Mode::Write).unwrap();
    assert_eq!(s.size().unwrap(), 1040);
    assert_eq!(proof::root(&mut s, 1040).unwrap(), root_of_leaves(&leaves));
    assert_eq!(len("index.bin"), 1040 * 8);
    drop(s);

    // Through the ledger: a checkpoint vouches only for derived files that reach its size.
    let signer = NoteSigner::generate("warden.test/derived").unwrap();
    let ledger = Ledger::open(file_store(dir.path()), signer, LedgerConfig::default()).unwrap();
    for i in 0..5 {
        ledger.append(&decision(i)).unwrap();
    }
    let note = ledger.checkpoint().unwrap();
    let verifier = ledger.verifier();
    let cp = Checkpoint::open(&note, &verifier, "warden.test/derived").unwrap();
    assert_eq!(cp.size, 1045);
    assert_eq!(len("index.bin"), 1045 * 8);
    assert_eq!(len("tree.bin"), merkle::nodes_for_size(1045) * 32);
}

// ---------------------------------------------------------------------------------------------
// Crash recovery: a child process appends and reports each acknowledged index; it is killed
// with SIGKILL at random moments; every acknowledged entry must be there and the log verify.

const CRASH_DIR: &str = "WARDEN_LEDGER_CRASH_DIR";

/// The child side (does nothing unless the parent set the variable).
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CRASH_DIR) else {
        return;
    };
    let dir = Path::new(&dir);
    let key = std::fs::read_to_string(dir.join("key")).unwrap();
    let signer = NoteSigner::parse(&key).unwrap();
    let config = LedgerConfig {
        checkpoint_interval: Duration::from_millis(5),
        ..LedgerConfig::default()
    };
    let store = Box::new(FileStore::open_with(&dir.join("ledger"), Mode::Write, 4096).unwrap());
    let ledger = Arc::new(Ledger::open(store, signer, config).unwrap());
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let mut handles = Vec::new();
    for t in 0..4u64 {
        let l = Arc::clone(&ledger);
        let out = Arc::clone(&out);
        handles.push(std::thread::spawn(move || {
            for i in 0.. {
                let e = decision(t * 1_000_000 + i);
                let idx = l.append(&e).unwrap();
                let mut o = out.lock().unwrap();
                writeln!(o, "ack {idx} {}", e.request_id()).unwrap();
                o.flush().unwrap();
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
}

#[test]
fn crash_kill9_keeps_every_acknowledged_entry() {
    let dir = tempfile::tempdir().unwrap();
    let signer = NoteSigner::generate("warden.test/crash").unwrap();
    std::fs::write(dir.path().join("key"), &*signer.to_private_string()).unwrap();
    let verifier = signer.verifier();
    let exe = std::env::current_exe().unwrap();
    let mut acked: std::collections::BTreeMap<u64, String> = Default::default();
    let rounds = 12;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CRASH_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines.push(line);
            }
            lines
        });
        // Kill at a different moment each round: 20..~140 ms after start.
        std::thread::sleep(Duration::from_millis(20 + (round * 37 % 120)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for line in reader.join().unwrap() {
            let mut parts = line.split_whitespace();
            if parts.next() != Some("ack") {
                continue;
            }
            let (Some(idx), Some(req)) = (parts.next(), parts.next()) else {
                continue;
            };
            acked.insert(idx.parse().unwrap(), req.to_owned());
        }
        // Reopen as the writer would (repairing a torn tail) and check.
        let mut s = FileStore::open_with(&dir.path().join("ledger"), Mode::Write, 4096).unwrap();
        let size = s.size().unwrap();
        for (idx, req) in &acked {
            assert!(
                *idx < size,
                "round {round}: acknowledged entry {idx} lost (size {size})"
            );
            let bytes = proof::entry_checked(&mut s, *idx).unwrap();
            assert_eq!(Entry::from_bytes(&bytes).unwrap().request_id(), req);
        }
        if s.latest_checkpoint().unwrap().is_some() {
            verify::verify_store(&mut s, &verifier, None, true).unwrap();
        }
    }
    assert!(
        acked.len() > 100,
        "the child acknowledged only {} entries",
        acked.len()
    );
}

/// On a single-thread runtime (`warden stdio`), calls ready at the same time share a sync:
/// `Ledger::record` lets the other ready tasks queue behind the first before it writes, where
/// `submit` then `recorded` writes and syncs each on its own. A `record` cancelled while it waits
/// still writes what it queued, so nobody queued behind it waits forever.
#[test]
fn on_one_thread_calls_ready_together_share_a_sync_and_a_cancelled_one_still_writes() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let counted = || {
        let dir = tempfile::tempdir().unwrap();
        let signer = NoteSigner::generate("warden.test/one-thread").unwrap();
        let ledger = Arc::new(
            Ledger::open(file_store(dir.path()), signer, LedgerConfig::default()).unwrap(),
        );
        let syncs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = Arc::clone(&syncs);
        ledger.observe_syncs(Box::new(move |_| {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        (dir, ledger, syncs)
    };
    let count = |s: &std::sync::atomic::AtomicUsize| s.load(std::sync::atomic::Ordering::SeqCst);
    for grouped in [true, false] {
        let (_dir, ledger, syncs) = counted();
        let mut indices: Vec<u64> = rt.block_on(async {
            let tasks: Vec<_> = (0..10)
                .map(|i| {
                    let ledger = Arc::clone(&ledger);
                    tokio::spawn(async move {
                        if grouped {
                            ledger.record(&decision(i)).await.unwrap()
                        } else {
                            ledger
                                .submit(&decision(i))
                                .unwrap()
                                .recorded()
                                .await
                                .unwrap()
                        }
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        });
        indices.sort_unstable();
        assert_eq!(indices, (0..10).collect::<Vec<_>>());
        if grouped {
            assert!(count(&syncs) <= 2, "{} syncs for 10 calls", count(&syncs));
        } else {
            assert_eq!(count(&syncs), 10);
        }
    }

    let (_dir, ledger, _) = counted();
    rt.block_on(async {
        // Polled once, it has queued its entry and is waiting its turn; then it is dropped.
        let zero = decision(0);
        let mut first = Box::pin(ledger.record(&zero));
        let polled = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(first.as_mut(), cx))
        })
        .await;
        assert!(polled.is_pending(), "it did not wait");
        drop(first);
        assert_eq!(ledger.record(&decision(1)).await.unwrap(), 1);
    });
    assert_eq!(ledger.size().unwrap(), 2);
    let first = ledger
        .with_store(|s| Ok(proof::entry_checked(s, 0)?))
        .unwrap();
    assert_eq!(Entry::from_bytes(&first).unwrap(), decision(0));
}

// ---------------------------------------------------------------------------------------------
// Fail closed (INV-003): a full disk makes appends fail, and nothing after is acknowledged.

// ---------------------------------------------------------------------------------------------
// Grouped receipts: acknowledged once written, synced within the window; a power loss can cut
// only an unsynced tail, and no checkpoint ever covers it.

fn grouped_ledger(dir: &Path, window: Duration, checkpoint_interval: Duration) -> Ledger {
    let signer = NoteSigner::generate("warden.test/grouped").unwrap();
    let config = LedgerConfig {
        receipts: warden_ledger::Receipts::Grouped { window },
        checkpoint_interval,
        ..LedgerConfig::default()
    };
    Ledger::open(file_store(dir), signer, config).unwrap()
}

#[test]
fn a_grouped_receipt_is_synced_within_its_window_without_another_append() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = grouped_ledger(
        dir.path(),
        Duration::from_millis(20),
        Duration::from_secs(3600),
    );
    assert_eq!(ledger.append(&decision(1)).unwrap(), 0);
    // A decision is durable when it is acknowledged, whatever the receipts' mode.
    assert_eq!(ledger.durable_size(), 1);
    assert_eq!(ledger.append(&receipt(1)).unwrap(), 1);
    assert_eq!(
        ledger.size().unwrap(),
        2,
        "acknowledged receipts are readable at once"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ledger.durable_size() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the receipt was never synced"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_decision_makes_the_receipts_written_before_it_durable() {
    let dir = tempfile::tempdir().unwrap();
    // A window far beyond the test: only the decision's sync can make the receipt durable.
    let ledger = grouped_ledger(
        dir.path(),
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    );
    ledger.append(&decision(1)).unwrap();
    ledger.append(&receipt(1)).unwrap();
    assert_eq!(ledger.durable_size(), 1, "the receipt waits for its window");
    ledger.append(&decision(2)).unwrap();
    assert_eq!(ledger.durable_size(), 3);
    // A checkpoint asked for covers every acknowledged entry: it syncs first.
    ledger.append(&receipt(2)).unwrap();
    let note = ledger.checkpoint().unwrap();
    assert!(note.lines().nth(1) == Some("4"), "{note}");
    assert_eq!(ledger.durable_size(), 4);
}

#[test]
fn strict_receipts_are_durable_when_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let signer = NoteSigner::generate("warden.test/strict").unwrap();
    let config = LedgerConfig {
        receipts: warden_ledger::Receipts::Strict,
        checkpoint_interval: Duration::from_secs(3600),
        ..LedgerConfig::default()
    };
    let ledger = Ledger::open(file_store(dir.path()), signer, config).unwrap();
    ledger.append(&decision(1)).unwrap();
    ledger.append(&receipt(1)).unwrap();
    assert_eq!(ledger.durable_size(), 2);
}

const POWER_LOSS_DIR: &str = "WARDEN_LEDGER_POWER_LOSS_DIR";

/// The child side of the power-loss test (does nothing unless the parent set the variable):
/// records a decision, reports the segment's synced length, records a grouped receipt (never
/// synced: its window is an hour), reports it, and waits to be killed after several checkpoint
/// intervals have passed.
#[test]
fn power_loss_child() {
    let Ok(dir) = std::env::var(POWER_LOSS_DIR) else {
        return;
    };
    let dir = Path::new(&dir);
    let key = std::fs::read_to_string(dir.join("key")).unwrap();
    let config = LedgerConfig {
        receipts: warden_ledger::Receipts::Grouped {
            window: Duration::from_secs(3600),
        },
        checkpoint_interval: Duration::from_millis(10),
        ..LedgerConfig::default()
    };
    let store = Box::new(FileStore::open(&dir.join("ledger"), Mode::Write).unwrap());
    let ledger = Ledger::open(store, NoteSigner::parse(&key).unwrap(), config).unwrap();
    ledger.append(&decision(1)).unwrap();
    let segment = dir.join("ledger").join(format!("{:020}.seg", 0));
    // Where the synced frames end (the file runs on: zeros preallocated ahead of them).
    let synced = decode_segment(&std::fs::read(&segment).unwrap()).valid_len;
    ledger.append(&receipt(1)).unwrap();
    // Let the idle writer sign what it considers signable.
    std::thread::sleep(Duration::from_millis(200));
    let mut out = std::io::stdout();
    writeln!(out, "synced {synced}").unwrap();
    out.flush().unwrap();
    std::thread::sleep(Duration::from_secs(3600));
}

#[test]
fn a_power_loss_cuts_only_unsynced_receipts_and_no_checkpoint_covers_them() {
    let dir = tempfile::tempdir().unwrap();
    let signer = NoteSigner::generate("warden.test/power").unwrap();
    std::fs::write(dir.path().join("key"), &*signer.to_private_string()).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "power_loss_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(POWER_LOSS_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut synced = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        // The harness may have printed the test's name on the same line.
        if let Some((_, n)) = line.unwrap().split_once("synced ") {
            synced = Some(n.trim().parse::<usize>().unwrap());
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let synced = synced.expect("the child reported its synced length");
    let ledger_dir = dir.path().join("ledger");
    let segment = ledger_dir.join(format!("{:020}.seg", 0));
    let written = std::fs::read(&segment).unwrap();
    assert!(decode_segment(&written).valid_len > synced);
    // What a power loss does to writes never synced: they are gone. They overwrote zeros the
    // file already had (its preallocated tail), so zeros are what is left.
    let mut lost = written.clone();
    lost[synced..].fill(0);
    std::fs::write(&segment, &lost).unwrap();
    // The log opens (no signed checkpoint claims the lost receipt), holds the decision and
    // verifies; the lost receipt is a missing tail, which the gateway's start closes as
    // `interrupted`.
    let mut s = FileStore::open(&ledger_dir, Mode::Write).unwrap();
    assert_eq!(s.size().unwrap(), 1);
    assert!(
        s.latest_checkpoint().unwrap().is_some(),
        "the decision was signed"
    );
    verify::verify_store(&mut s, &signer.verifier(), None, true).unwrap();
    drop(s);
    let ledger = Ledger::open(file_store(&ledger_dir), signer, LedgerConfig::default()).unwrap();
    assert_eq!(ledger.size().unwrap(), 1);
}

#[test]
fn full_disk_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mnt)
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("notice: cannot mount a small tmpfs here (needs root); skipping the full-disk ledger test");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let signer = NoteSigner::generate("warden.test/full").unwrap();
    let verifier = signer.verifier();
    let ledger = Ledger::open(file_store(&mnt), signer, LedgerConfig::default()).unwrap();
    let mut acked = 0u64;
    let mut failed = None;
    for i in 0..100_000u64 {
        match ledger.append(&decision(i)) {
            Ok(idx) => {
                assert_eq!(idx, acked);
                acked += 1;
            }
            Err(e) => {
                failed = Some(e.to_string());
                break;
            }
        }
    }
    let failed = failed.expect("a 256 KiB filesystem must fill up");
    assert!(failed.contains("do not execute"), "{failed}");
    // Said once, not once per layer the error passed through.
    assert_eq!(failed.matches("ledger unavailable").count(), 1, "{failed}");
    // Every later append is refused too, even if space came back.
    assert!(ledger.append(&decision(0)).is_err());
    drop(ledger);
    // After the disk is freed, reopening recovers exactly the acknowledged entries.
    for e in std::fs::read_dir(&mnt).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "bin") {
            // Derived files can be rebuilt; removing them frees space for recovery.
            std::fs::remove_file(p).unwrap();
        }
    }
    let mut s = FileStore::open(&mnt, Mode::Write).unwrap();
    assert!(s.size().unwrap() >= acked);
    if s.latest_checkpoint().unwrap().is_some() {
        verify::verify_store(&mut s, &verifier, None, true).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Fuzz seeds: the corpus in `fuzz/seeds/ledger_*` is replayed (with every truncation) through
// the fuzz entry points. `WARDEN_WRITE_FUZZ_SEEDS=1` regenerates it.

fn seed_dir(target: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target)
}

fn write_seeds() {
    let w = |target: &str, name: &str, bytes: &[u8]| {
        std::fs::create_dir_all(seed_dir(target)).unwrap();
        std::fs::write(seed_dir(target).join(name), bytes).unwrap();
    };
    w(
        "ledger_record",
        "decision.json",
        &decision(1).to_bytes().unwrap(),
    );
    w(
        "ledger_record",
        "receipt.json",
        &receipt(2).to_bytes().unwrap(),
    );
    let mut seg = warden_ledger::file::SEGMENT_MAGIC.to_vec();
    for i in 0..3u64 {
        seg.extend(warden_ledger::file::encode_frame(
            i,
            &decision(i).to_bytes().unwrap(),
        ));
    }
    w("ledger_segment", "three.seg", &seg);
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(
        file_store(dir.path()),
        warden_ledger::fuzz::export_signer(),
        LedgerConfig::default(),
    )
    .unwrap();
    for i in 0..5 {
        ledger.append(&decision(i)).unwrap();
    }
    let note = ledger.checkpoint().unwrap();
    w("ledger_checkpoint", "checkpoint.note", note.as_bytes());
    w(
        "ledger_checkpoint",
        "verifier.key",
        warden_ledger::fuzz::export_signer()
            .verifier()
            .to_string()
            .as_bytes(),
    );
    let mut out = Vec::new();
    ledger
        .with_store(|s| Ok(verify::export(s, &mut out)?))
        .unwrap();
    w("ledger_export", "five.jsonl", &out);
    w(
        "witness",
        "add-checkpoint.txt",
        warden_ledger::witness::request_body(0, &[], &note).as_bytes(),
    );
    let text = note.get(..=note.rfind("\n\n").unwrap()).unwrap();
    let cosigned = format!(
        "{note}{}",
        warden_ledger::fuzz::witness_signer()
            .cosign(text, 1_800_000_000)
            .unwrap()
    );
    w("witness", "cosigned.note", cosigned.as_bytes());
    w(
        "witness",
        "witness.key",
        warden_ledger::fuzz::witness_signer()
            .verifier()
            .to_string()
            .as_bytes(),
    );
    let bundle = ledger
        .with_store(|s| {
            Ok(warden_ledger::incident::build(
                s,
                &warden_ledger::fuzz::export_signer().verifier(),
                "coder-1",
                0,
            )
            .unwrap())
        })
        .unwrap();
    w(
        "ledger_incident",
        "five.json",
        serde_json::to_string(&bundle).unwrap().as_bytes(),
    );
}

#[test]
fn fuzz_seeds_replay() {
    if std::env::var_os("WARDEN_WRITE_FUZZ_SEEDS").is_some() {
        write_seeds();
    }
    type Target = (&'static str, fn(&[u8]));
    let targets: [Target; 6] = [
        ("ledger_record", warden_ledger::fuzz::record),
        ("ledger_segment", warden_ledger::fuzz::segment),
        ("ledger_checkpoint", warden_ledger::fuzz::checkpoint),
        ("ledger_export", warden_ledger::fuzz::export),
        ("ledger_incident", warden_ledger::fuzz::incident),
        ("witness", warden_ledger::fuzz::witness),
    ];
    for (target, run) in targets {
        let mut n = 0;
        for e in std::fs::read_dir(seed_dir(target)).unwrap() {
            let bytes = std::fs::read(e.unwrap().path()).unwrap();
            for cut in (0..=bytes.len()).step_by(5) {
                run(&bytes[..cut]);
            }
            let mut flipped = bytes.clone();
            for i in (0..flipped.len()).step_by(11) {
                flipped[i] ^= 0x20;
                run(&flipped);
            }
            n += 1;
        }
        assert!(n > 0, "no seeds for {target}");
    }
    // The valid export seed verifies; the seeds are not dead weight.
    let export = std::fs::read(seed_dir("ledger_export").join("five.jsonl")).unwrap();
    let v = warden_ledger::fuzz::export_signer().verifier();
    assert_eq!(
        verify::verify_export(&mut export.as_slice(), &v)
            .unwrap()
            .entries,
        5
    );
    let bundle: warden_ledger::incident::Bundle = serde_json::from_slice(
        &std::fs::read(seed_dir("ledger_incident").join("five.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        warden_ledger::incident::verify(&bundle, &v).unwrap().counts,
        (5, 0, 0)
    );
    // Hostile shapes: deep nesting, a huge length prefix.
    warden_ledger::fuzz::record(
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).as_bytes(),
    );
    let mut seg = warden_ledger::file::SEGMENT_MAGIC.to_vec();
    seg.extend_from_slice(&u32::MAX.to_le_bytes());
    seg.extend_from_slice(&[0u8; 12]);
    assert!(decode_segment(&seg).stopped.is_some());
}

/// A crash while appending a checkpoint leaves a torn frame: it is skipped (and cut by the
/// writer), and the previous checkpoint is the latest.
#[test]
fn torn_checkpoint_frame_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let signer = NoteSigner::generate("warden.test/torn-cp").unwrap();
    let verifier = signer.verifier();
    let first;
    {
        let ledger = Ledger::open(file_store(dir.path()), signer, LedgerConfig::default()).unwrap();
        ledger.append(&decision(0)).unwrap();
        first = ledger.checkpoint().unwrap();
        ledger.append(&decision(1)).unwrap();
        ledger.checkpoint().unwrap();
    }
    let log = dir.path().join("checkpoints.log");
    let bytes = std::fs::read(&log).unwrap();
    // Cut the second frame in half.
    let first_len = first.len() + 20;
    std::fs::write(&log, &bytes[..first_len + (bytes.len() - first_len) / 2]).unwrap();
    let mut r = FileStore::open(dir.path(), Mode::ReadOnly).unwrap();
    assert_eq!(r.latest_checkpoint().unwrap().unwrap(), first);
    assert_eq!(
        verify::verify_store(&mut r, &verifier, None, true)
            .unwrap()
            .checkpoint_size,
        1
    );
    drop(r);
    let mut w = FileStore::open(dir.path(), Mode::Write).unwrap();
    assert_eq!(w.latest_checkpoint().unwrap().unwrap(), first);
    assert_eq!(std::fs::metadata(&log).unwrap().len() as usize, first_len);
    assert_eq!(w.size().unwrap(), 2);
}

/// Issue 18: a newest checkpoint whose signature was changed, its frame's checksum made to match
/// (not a torn write), is refused: `verify` fails on it rather than falling back to the previous
/// checkpoint, and the writer does not open (a gateway would otherwise sign over it).
#[test]
fn a_newest_checkpoint_with_a_forged_signature_is_refused_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let signer = NoteSigner::generate("warden.test/forged-cp").unwrap();
    let verifier = signer.verifier();
    let first;
    {
        let ledger = Ledger::open(file_store(dir.path()), signer, LedgerConfig::default()).unwrap();
        ledger.append(&decision(0)).unwrap();
        first = ledger.checkpoint().unwrap();
        ledger.append(&decision(1)).unwrap();
        ledger.checkpoint().unwrap();
    }
    let log = dir.path().join("checkpoints.log");
    let bytes = std::fs::read(&log).unwrap();
    let first_len = first.len() + 20;
    let second = &bytes[first_len..];
    let len = u32::from_le_bytes(second[..4].try_into().unwrap()) as usize;
    let mut note = String::from_utf8(second[4..4 + len].to_vec()).unwrap();
    let size = u64::from_le_bytes(second[4 + len..12 + len].try_into().unwrap());
    // One base64 character of the signature, changed (the note keeps its length).
    let at = note.len() - 10;
    let c = if &note[at..=at] == "A" { "B" } else { "A" };
    note.replace_range(at..=at, c);
    let mut frame = Vec::new();
    frame.extend_from_slice(&(len as u32).to_le_bytes());
    frame.extend_from_slice(note.as_bytes());
    frame.extend_from_slice(&size.to_le_bytes());
    frame.extend_from_slice(&(len as u32).to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(note.as_bytes());
    h.update(&size.to_le_bytes());
    frame.extend_from_slice(&h.finalize().to_le_bytes());
    let mut forged = bytes[..first_len].to_vec();
    forged.extend_from_slice(&frame);
    std::fs::write(&log, &forged).unwrap();

    let mut r = FileStore::open(dir.path(), Mode::ReadOnly).unwrap();
    assert_ne!(
        r.latest_checkpoint().unwrap().unwrap(),
        first,
        "not a torn frame"
    );
    let err = verify::verify_store(&mut r, &verifier, None, true).unwrap_err();
    assert!(err.to_string().contains("latest checkpoint"), "{err}");
    drop(r);
    let reopened = Ledger::open(
        file_store(dir.path()),
        NoteSigner::generate("warden.test/forged-cp").unwrap(),
        LedgerConfig {
            also_trusted: Some(verifier),
            ..LedgerConfig::default()
        },
    );
    assert!(
        reopened.is_err(),
        "a writer opened over a forged checkpoint"
    );
}

/// Incident bundles: one agent's entries since a time, each proven against one signed
/// checkpoint; verified with only the public key; any alteration is named.
#[test]
fn incident_bundles_prove_one_agents_entries_offline() {
    use warden_ledger::incident::{self, IncidentError};
    let dir = tempfile::tempdir().unwrap();
    let signer = NoteSigner::generate("warden-test").unwrap();
    let verifier = signer.verifier();
    {
        let ledger = Ledger::open(file_store(dir.path()), signer, LedgerConfig::default()).unwrap();
        for i in 0..30u64 {
            let mut e = decision(i);
            if let Entry::Decision(d) = &mut e {
                if i % 3 == 0 {
                    d.agent = "ops-1".into();
                }
            }
            ledger.append(&e).unwrap();
        }
        ledger.append(&receipt(1)).unwrap();
        ledger.checkpoint().unwrap();
    }
    let mut store: Box<dyn LedgerStore> =
        Box::new(FileStore::open(dir.path(), Mode::ReadOnly).unwrap());
    // coder-1's entries from decision 10's time on: decisions 10..30 not divisible by 3 (the
    // receipt's time is decision 0's, before `since`).
    let since = 1_795_341_600 + 10;
    let bundle = incident::build(&mut *store, &verifier, "coder-1", since).unwrap();
    let want: Vec<u64> = (10..30).filter(|i| i % 3 != 0).collect();
    assert_eq!(
        bundle.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
        want
    );
    let ok = incident::verify(&bundle, &verifier).unwrap();
    assert_eq!((ok.size, ok.counts), (31, (want.len(), 0, 0)));
    // The whole history includes the receipt.
    let all = incident::build(&mut *store, &verifier, "coder-1", 0).unwrap();
    assert_eq!(incident::verify(&all, &verifier).unwrap().counts.1, 1);

    // Through JSON and back, unchanged.
    let text = serde_json::to_string(&bundle).unwrap();
    let back: incident::Bundle = serde_json::from_str(&text).unwrap();
    assert!(incident::verify(&back, &verifier).is_ok());

    // An entry altered (one rule changed): its proof no longer leads to the root.
    let mut altered = bundle.clone();
    altered.entries[2].entry = altered.entries[2]
        .entry
        .replace("tier.low.auto", "tier.low.autX");
    assert!(matches!(
        incident::verify(&altered, &verifier),
        Err(IncidentError::Proof { index: 13, .. })
    ));
    // Another agent's entry slipped in, with its genuine proof: named.
    let foreign = incident::build(&mut *store, &verifier, "ops-1", since).unwrap();
    let mut mixed = bundle.clone();
    mixed.entries.push(foreign.entries.last().unwrap().clone());
    mixed.entries.sort_by_key(|e| e.index);
    let err = incident::verify(&mixed, &verifier).unwrap_err().to_string();
    assert!(err.contains("is agent `ops-1`'s"), "{err}");
    // Reordered, a bad hash, another key, another format.
    let mut reordered = bundle.clone();
    reordered.entries.swap(0, 1);
    assert!(matches!(
        incident::verify(&reordered, &verifier),
        Err(IncidentError::Entry { .. })
    ));
    let mut bad = bundle.clone();
    bad.entries[0].proof[0] = "zz".into();
    assert!(incident::verify(&bad, &verifier)
        .unwrap_err()
        .to_string()
        .contains("not 64 hex digits"));
    let other = NoteSigner::generate("warden-test").unwrap().verifier();
    assert!(matches!(
        incident::verify(&bundle, &other),
        Err(IncidentError::Checkpoint(_))
    ));
    let mut v2 = bundle;
    v2.format = "v2".into();
    assert!(matches!(
        incident::verify(&v2, &verifier),
        Err(IncidentError::Format(_))
    ));
}

/// Issue 18: a damaged ledger does not open, even where the signed checkpoint covers the
/// damage (recovery does not re-derive that part): a deleted middle segment, a middle segment
/// cut short, a corrupted frame in a segment that is not the last. Each refuses the open in
/// both modes, and the untouched copy opens.
#[test]
fn a_missing_cut_or_damaged_segment_under_the_checkpoint_does_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let signer = NoteSigner::generate("warden.test/damage").unwrap();
    {
        let store = Box::new(FileStore::open_with(dir.path(), Mode::Write, 600).unwrap());
        let ledger = Ledger::open(store, signer, LedgerConfig::default()).unwrap();
        for i in 0..30 {
            ledger.append(&decision(i)).unwrap();
        }
        ledger.checkpoint().unwrap();
    }
    let mut segments: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 4, "{segments:?}");
    let copy = || {
        let to = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), to.path().join(e.file_name())).unwrap();
            }
        }
        to
    };
    let refused = |d: &Path| {
        for mode in [Mode::ReadOnly, Mode::Write] {
            let err = FileStore::open(d, mode)
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(err.contains("damaged"), "{mode:?}: {err}");
        }
    };
    // Untouched, it opens.
    let whole = copy();
    FileStore::open(whole.path(), Mode::Write).unwrap();

    let middle = &segments[1];
    let deleted = copy();
    std::fs::remove_file(deleted.path().join(middle)).unwrap();
    refused(deleted.path());

    let cut = copy();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(cut.path().join(middle))
        .unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - 5).unwrap();
    drop(f);
    refused(cut.path());

    let flipped = copy();
    let path = flipped.path().join(&segments[0]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8 + 16 + 3] ^= 0x20; // inside entry 0's payload
    std::fs::write(&path, &bytes).unwrap();
    refused(flipped.path());
}

// ---------------------------------------------------------------------------------------------
// A writer that panics.

/// A store whose next append panics once `armed` (a bug, or a client library that panics).
struct PanicOnce {
    inner: Box<dyn LedgerStore>,
    armed: Arc<std::sync::atomic::AtomicBool>,
    any_thread: bool,
}

impl PanicOnce {
    fn check(&self) {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            panic!("injected: the store panics mid-append");
        }
    }
}

impl LedgerStore for PanicOnce {
    fn append(
        &mut self,
        entries: &[Vec<u8>],
    ) -> Result<warden_ledger::store::Appended, warden_ledger::store::StoreError> {
        self.check();
        self.inner.append(entries)
    }
    fn append_written(
        &mut self,
        entries: &[Vec<u8>],
    ) -> Result<warden_ledger::store::Appended, warden_ledger::store::StoreError> {
        self.check();
        self.inner.append_written(entries)
    }
    fn sync(&mut self) -> Result<(), warden_ledger::store::StoreError> {
        self.inner.sync()
    }
    fn prepare_checkpoint(&mut self) -> Result<(), warden_ledger::store::StoreError> {
        self.inner.prepare_checkpoint()
    }
    fn size(&mut self) -> Result<u64, warden_ledger::store::StoreError> {
        self.inner.size()
    }
    fn scan(
        &mut self,
        from: u64,
        to: u64,
        visit: &mut warden_ledger::store::Visit<'_>,
    ) -> Result<(), warden_ledger::store::StoreError> {
        self.inner.scan(from, to, visit)
    }
    fn nodes(
        &mut self,
        ids: &[merkle::NodeId],
    ) -> Result<Vec<Hash>, warden_ledger::store::StoreError> {
        self.inner.nodes(ids)
    }
    fn checkpointer(
        &mut self,
    ) -> Result<Box<dyn warden_ledger::store::Checkpointer>, warden_ledger::store::StoreError> {
        self.inner.checkpointer()
    }
    fn latest_checkpoint(&mut self) -> Result<Option<String>, warden_ledger::store::StoreError> {
        self.inner.latest_checkpoint()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn writes_on_any_thread(&self) -> bool {
        self.any_thread
    }
}

#[test]
fn a_writer_that_panics_fails_closed_and_never_leaves_callers_waiting() {
    // Both ways a batch is written: by the caller that found no leader, and by the ledger's own
    // thread (stores that cannot be written from any thread, as PostgreSQL's).
    for any_thread in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let store = PanicOnce {
            inner: file_store(dir.path()),
            armed: Arc::clone(&armed),
            any_thread,
        };
        let signer = NoteSigner::generate("warden.test/panic").unwrap();
        let ledger =
            Arc::new(Ledger::open(Box::new(store), signer, LedgerConfig::default()).unwrap());
        assert!(ledger.append(&decision(0)).is_ok());
        armed.store(true, std::sync::atomic::Ordering::SeqCst);
        // The append that meets the panic is not recorded (a panic in the caller's thread
        // unwinds into it; on the ledger's thread, its ticket resolves as stopped).
        let met =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ledger.append(&decision(1))));
        assert!(
            !matches!(met, Ok(Ok(_))),
            "any_thread={any_thread}: recorded through a panic"
        );
        // Later appends answer — refused, the store's lock poisoned — and never hang.
        let (tx, rx) = std::sync::mpsc::channel();
        let l = Arc::clone(&ledger);
        std::thread::spawn(move || {
            let _ = tx.send(l.append(&decision(2)).is_ok());
        });
        let answered = rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(
            answered,
            Ok(false),
            "any_thread={any_thread}: the next append hung or ran"
        );
    }

    // A caller queued behind a leader that then panics is answered (not recorded), though
    // nobody appends after it: the leader is held at the store (its lock taken here) while the
    // second caller queues, then meets the panic.
    let dir = tempfile::tempdir().unwrap();
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store = PanicOnce {
        inner: file_store(dir.path()),
        armed: Arc::clone(&armed),
        any_thread: true,
    };
    let signer = NoteSigner::generate("warden.test/panic-queued").unwrap();
    let ledger = Arc::new(Ledger::open(Box::new(store), signer, LedgerConfig::default()).unwrap());
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let (tx, rx) = std::sync::mpsc::channel();
    let leader = ledger
        .with_store(|_| {
            let l = Arc::clone(&ledger);
            let leader = std::thread::spawn(move || {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| l.append(&decision(0))))
            });
            // By now the leader has queued, taken its batch and waits for the store.
            std::thread::sleep(Duration::from_millis(100));
            let l = Arc::clone(&ledger);
            std::thread::spawn(move || {
                let _ = tx.send(l.append(&decision(1)).is_ok());
            });
            std::thread::sleep(Duration::from_millis(100));
            Ok(leader)
        })
        .unwrap();
    assert!(
        !matches!(leader.join().unwrap(), Ok(Ok(_))),
        "recorded through a panic"
    );
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)),
        Ok(false),
        "the caller queued behind a panicking leader hung or was recorded"
    );
}
