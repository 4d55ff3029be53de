//! Grant mint + redeem latency (run in release: `cargo bench -p warden-identity --bench grants`),
//! against the Ed25519 sign + verify the issue names as the alternative, in the same run.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "benchmark harness"
)]

use std::time::{Duration, Instant};
use warden_identity::{Call, GrantKeys, MemoryReplayGuard};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = if quick { 1_000 } else { 200_000 };
    let keys = GrantKeys::generate().unwrap();
    let guard = MemoryReplayGuard::new();
    let args = format!("sha256:{}", "ab".repeat(32));
    let call = Call {
        session: "session-0123456789",
        agent: "coder-1",
        tool: "fs.read_file",
        arguments_hash: &args,
    };
    // The allow a grant is minted from, recorded once (the ledger's cost is measured in
    // warden-ledger's benchmark; this one measures the grant).
    let dir = tempfile::tempdir().unwrap();
    let ledger = warden_ledger::Ledger::open(
        Box::new(warden_ledger::FileStore::open(dir.path(), warden_ledger::Mode::Write).unwrap()),
        warden_ledger::NoteSigner::generate("warden.bench/grants").unwrap(),
        Default::default(),
    )
    .unwrap();
    let allowed = warden_core::Decision {
        decision: warden_core::Verdict::Allow,
        rules: Vec::new(),
        policies: Vec::new(),
        reason: String::new(),
        manifest_version: 12,
        policy_hash: String::new(),
        escalation: None,
        agent: call.agent.into(),
        owner: String::new(),
        tenant: String::new(),
        session: call.session.into(),
        tool: call.tool.into(),
        operation: warden_core::Operation::Use,
        arguments_hash: call.arguments_hash.into(),
        decided_at: 0,
        provenance: Vec::new(),
        budget_use: Vec::new(),
    };
    let recorded = ledger
        .record_decision_blocking(allowed, "", "bench", Vec::new())
        .unwrap();
    let mut lat = Vec::with_capacity(n);
    let now = 1_795_341_600_000i64;
    for i in 0..n {
        let t = Instant::now();
        let token = keys.mint(&recorded, now, 30_000).unwrap();
        let claims = keys
            .redeem(&token, &call, 12, now + 1 + i as i64 / 1000, &guard)
            .unwrap();
        lat.push(t.elapsed());
        std::hint::black_box(claims);
    }
    lat.sort_unstable();
    println!(
        "grant mint + redeem (HMAC-SHA256, replay guard): p50 {:?} p99 {:?} ({n} samples)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );

    // Credential verification: first call (whole chain, two Ed25519 verifies for a delegated
    // credential), then cached per token.
    {
        use std::collections::{BTreeSet, HashMap};
        use warden_identity::credential::{encode_key, random_id};
        use warden_identity::{Credential, CredentialBody, Revocations, Verifier};
        let g = ed25519_dalek::SigningKey::from_bytes(&[1u8; 32]);
        let agent = ed25519_dalek::SigningKey::from_bytes(&[2u8; 32]);
        let sub = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
        let mk = |name: &str, trust: &str, k: &ed25519_dalek::SigningKey| CredentialBody {
            id: random_id().unwrap(),
            agent: name.into(),
            tenant: "acme".into(),
            owner: "alice@acme.example".into(),
            zone: "dev".into(),
            trust: trust.into(),
            tools: Some(
                ["fs.read_file".to_string()]
                    .into_iter()
                    .collect::<BTreeSet<_>>(),
            ),
            expires_at: 1_795_345_200,
            manifest_version: 1,
            subject_key: encode_key(&k.verifying_key()),
            issuer: String::new(),
        };
        let root = Credential::issue(&g, "g1", mk("coder-1", "senior", &agent)).unwrap();
        let child = root
            .derive(&agent, mk("coder-1.sub", "junior", &sub))
            .unwrap();
        let token = child.to_token().unwrap();
        let keys: HashMap<String, _> = [("g1".to_string(), g.verifying_key())].into();
        let v = Verifier::new(keys, std::sync::Arc::new(Revocations::new()));
        let t = Instant::now();
        v.verify_token(&token, 1_795_341_600).unwrap();
        let first = t.elapsed();
        let mut cached = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            std::hint::black_box(v.verify_token(&token, 1_795_341_600).unwrap());
            cached.push(t.elapsed());
        }
        cached.sort_unstable();
        println!(
            "credential ({} byte token, chain of 2): first verification {:?}; cached p50 {:?} p99 {:?}",
            token.len(),
            first,
            percentile(&cached, 0.5),
            percentile(&cached, 0.99)
        );
    }

    // Baseline: the same payload signed and verified with Ed25519.
    use ed25519_dalek::{Signer as _, SigningKey, Verifier as _};
    let sk = SigningKey::from_bytes(&[7u8; 32]);
    let vk = sk.verifying_key();
    let payload = keys.mint(&recorded, now, 30_000).unwrap();
    let m = n.min(20_000);
    let mut base = Vec::with_capacity(m);
    for _ in 0..m {
        let t = Instant::now();
        let sig = sk.sign(payload.as_bytes());
        vk.verify(payload.as_bytes(), &sig).unwrap();
        base.push(t.elapsed());
    }
    base.sort_unstable();
    let (g, b) = (percentile(&lat, 0.5), percentile(&base, 0.5));
    println!(
        "baseline Ed25519 sign + verify: p50 {:?} p99 {:?} ({m} samples); grant p50 = {:.3}x of it",
        b,
        percentile(&base, 0.99),
        g.as_secs_f64() / b.as_secs_f64()
    );
}
