//! An `https://` upstream end to end: server-everything (HTTP mode) behind a TLS terminator the
//! test runs with a certificate from its own CA. Through `warden serve`, a call to the upstream
//! that trusts that CA (`ca_file`) succeeds; the same server reached by an upstream trusting
//! another CA, or presenting a certificate of the trusted CA for another name, is refused at the
//! TLS handshake, and the call fails without reaching it. The gateway runs with `HTTP(S)_PROXY`
//! pointing at a dead port: proxies from the environment are ignored.

use super::{call, enroll, env, first_text, remote, start_existing};
use std::path::Path;
use std::sync::Arc;

/// A test CA.
struct Ca {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A server certificate and its key.
struct Leaf {
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
}

fn ca(name: &str) -> Ca {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: rcgen::Issuer::new(params, key),
    }
}

/// A certificate `ca` signed for `names`.
fn leaf(ca: &Ca, names: &[&str]) -> Leaf {
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(ToString::to_string).collect();
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &ca.issuer)
        .unwrap();
    Leaf {
        cert: cert.der().clone(),
        key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    }
}

/// Terminates TLS on a free port and forwards each connection to `127.0.0.1:to`. Runs for the
/// life of the test process.
fn tls_terminator(pki: &Leaf, to: u16) -> u16 {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![pki.cert.clone()], pki.key.clone_key())
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that does not trust the certificate aborts the handshake.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
    });
    port
}

#[test]
fn https_upstreams_are_reached_only_when_their_certificate_verifies() {
    let Some(e) = env() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = remote(&e);
    let trusted = ca("trusted");
    let other = ca("other");
    // The server as itself, and the same server under a certificate for another name (from the
    // trusted CA: only the name is wrong).
    let port = tls_terminator(&leaf(&trusted, &["localhost", "127.0.0.1"]), server.port);
    let misnamed = tls_terminator(&leaf(&trusted, &["other.example"]), server.port);
    std::fs::write(dir.path().join("upstream-ca.pem"), &trusted.pem).unwrap();
    std::fs::write(dir.path().join("other-ca.pem"), &other.pem).unwrap();

    let (data, m) = super::approvals::setup(dir.path());
    let tools = "  - { name: secure.echo, tier: low, zones: [\"*\"], arguments: { type: object } }\n  - { name: forged.echo, tier: low, zones: [\"*\"], arguments: { type: object } }\n  - { name: misnamed.echo, tier: low, zones: [\"*\"], arguments: { type: object } }\n";
    let upstreams = format!(
        "  - name: secure\n    url: \"https://localhost:{port}/mcp\"\n    ca_file: upstream-ca.pem\n  - name: forged\n    url: \"https://localhost:{port}/mcp\"\n    ca_file: other-ca.pem\n  - name: misnamed\n    url: \"https://localhost:{misnamed}/mcp\"\n    ca_file: upstream-ca.pem\n"
    );
    super::add_to_manifest(&m, tools, &upstreams, "");
    enroll(&data, &m, "ops-1");
    let s = start_existing(dir.path(), &data, &m);

    // Verified TLS: the call goes through and the server's answer comes back.
    let r = call(&e, &s, "ops-1", "secure.echo", r#"{"message":"over TLS"}"#);
    assert_eq!(r["isError"], false, "{r}");
    assert!(first_text(&r).contains("over TLS"), "{r}");

    // Same server, certificate from a CA this upstream does not trust: refused.
    let r = call(&e, &s, "ops-1", "forged.echo", r#"{"message":"x"}"#);
    assert_eq!(r["isError"], true, "{r}");
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    // The upstream is reported down, and the handshake failure is logged with its reason (the
    // `secure` upstream on the same server verified, so the refusal is `forged`'s).
    assert!(log.contains("upstream `forged` is unavailable"), "{log}");
    assert!(
        log.contains("InvalidCertificate(UnknownIssuer)"),
        "the TLS refusal is logged with its reason:\n{log}"
    );

    // A certificate from the trusted CA, but for another name: refused too.
    let r = call(&e, &s, "ops-1", "misnamed.echo", r#"{"message":"x"}"#);
    assert_eq!(r["isError"], true, "{r}");
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert!(log.contains("upstream `misnamed` is unavailable"), "{log}");
    assert!(log.contains("NotValidForName"), "{log}");
    drop(s);
    drop(server);
}

#[test]
fn a_bad_ca_file_is_a_clear_error() {
    // Unit-level checks of the messages an operator sees live in the executor; here: what
    // `warden manifest validate` says of the starter with `upstreams` lines added.
    let dir = tempfile::tempdir().unwrap();
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/starter");
    let starter = std::fs::read_to_string(here.join("manifest.yaml")).unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::copy(
        here.join("policies/base.cedar"),
        dir.path().join("policies/base.cedar"),
    )
    .unwrap();
    std::fs::write(dir.path().join("empty.pem"), "no certificate here\n").unwrap();
    let m = dir.path().join("m.yaml");
    let validate = |upstreams: &str| {
        let text = starter.replacen("\nupstreams:\n", &format!("\nupstreams:\n{upstreams}"), 1);
        std::fs::write(&m, text).unwrap();
        let out = super::super::warden(&["manifest", "validate", m.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2));
        super::super::text(&out.stderr) + &super::super::text(&out.stdout)
    };

    // A ca_file on a plain http upstream does not load.
    let err = validate("  - { name: plain, url: \"http://127.0.0.1:1/mcp\", ca_file: ca.pem }\n");
    assert!(
        err.contains("ca_file") && err.contains("applies to https:// upstreams"),
        "{err}"
    );

    // An https upstream whose ca_file is missing, or holds no certificate: validate names the
    // key, its line and the file (serve would keep the upstream down).
    let err = validate(
        "  - { name: a, url: \"https://a.example/mcp\", ca_file: gone.pem }\n  - { name: b, url: \"https://b.example/mcp\", ca_file: empty.pem }\n",
    );
    assert!(
        err.contains("upstreams[0].ca_file") && err.contains("gone.pem"),
        "{err}"
    );
    assert!(
        err.contains("upstreams[1].ca_file") && err.contains("holds no certificate"),
        "{err}"
    );
}
