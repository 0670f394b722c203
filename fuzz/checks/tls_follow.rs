// The `tls_follow` fuzz target's invariants, shared with `tests/fuzz_corpus.rs` (which replays
// the corpus and the regressions through them under `cargo test`).
//
// The TLS inspector while it follows a handshake for the client certificate
// (`tls.allowed_client_certificates` set): after a valid ClientHello that offers TLS 1.3 and
// 1.2, the input is the server's flight and the client's second flight.
//
// Input: one selector byte (where each side is split), a big-endian u16 length, that many bytes
// of the server's flight, then the client's bytes.
//
// - Split invariance: each side fed in two pieces gives the verdict of each side fed whole, with
//   the server first and with the client first.
// - Order: when the server-first and the client-first runs both allow, they agree.
// - A final verdict never changes, and `verdict()` is the last verdict returned.
// - An allowed session meets the certificate rule: a leaf subject on the list, or TLS 1.3 under
//   `tls13_client_certificate: allow`; never "not required"; never below `min_version`.
use std::sync::Arc;

use splicegate::proto::connect::Host;
use splicegate::proto::tls::TlsSettings;
use splicegate::proto::tls::{
    normalize_subject, CertCheck, Inspector, Reason, Tls13Policy, TlsVersion, Verdict,
};

/// A ClientHello offering TLS 1.3 and 1.2 with SNI `a.example` (OpenSSL 3 s_client).
const HELLO: &[u8] = include_bytes!("../../tests/fixtures/tls/hello_default.bin");

/// Which side a chunk of bytes comes from.
#[derive(Clone, Copy)]
enum Side<'a> {
    Server(&'a [u8]),
    Client(&'a [u8]),
}

fn settings() -> [TlsSettings; 2] {
    let certs = ["CN=agent01,O=Contoso", "CN=other"]
        .iter()
        .filter_map(|s| normalize_subject(s).ok())
        .collect::<Vec<_>>();
    [
        TlsSettings {
            allowed_client_certificates: certs.clone(),
            ..TlsSettings::default()
        },
        TlsSettings {
            min_version: TlsVersion::Tls10,
            max_hello_bytes: 1024,
            allowed_client_certificates: certs,
            tls13_client_certificate: Tls13Policy::Allow,
            ..TlsSettings::default()
        },
    ]
}

/// Runs every invariant on one input; panics when one does not hold.
pub fn check(data: &[u8]) {
    let selector = data.first().copied().unwrap_or(0);
    let rest = data.get(1..).unwrap_or_default();
    let (server, client) = match rest {
        [hi, lo, tail @ ..] => {
            tail.split_at(usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len()))
        }
        _ => (rest, &[][..]),
    };
    let (s1, s2) = server.split_at(usize::from(selector & 0x0f) * server.len() / 16);
    let (c1, c2) = client.split_at(usize::from(selector >> 4) * client.len() / 16);
    let host = Host::Name("a.example".to_owned());
    for settings in settings() {
        let settings = Arc::new(settings);
        let run = |steps: &[Side<'_>]| follow(&settings, &host, steps);
        let server_first = run(&[Side::Server(server), Side::Client(client)]);
        assert_eq!(
            run(&[
                Side::Server(s1),
                Side::Server(s2),
                Side::Client(c1),
                Side::Client(c2)
            ]),
            server_first,
            "server first, split {} and {}",
            s1.len(),
            c1.len()
        );
        let client_first = run(&[Side::Client(client), Side::Server(server)]);
        assert_eq!(
            run(&[
                Side::Client(c1),
                Side::Client(c2),
                Side::Server(s1),
                Side::Server(s2)
            ]),
            client_first,
            "client first, split {} and {}",
            c1.len(),
            s1.len()
        );
        if matches!(server_first, Verdict::Allow { .. })
            && matches!(client_first, Verdict::Allow { .. })
        {
            assert_eq!(
                server_first, client_first,
                "the order changed the allowed session"
            );
        }
        run(&[
            Side::Server(s1),
            Side::Client(c1),
            Side::Server(s2),
            Side::Client(c2),
        ]);
    }
}

/// Feeds the ClientHello, then `steps`; checks every verdict on the way and returns the last.
fn follow(settings: &Arc<TlsSettings>, host: &Host, steps: &[Side<'_>]) -> Verdict {
    let Some(mut inspector) = Inspector::new(Arc::clone(settings), host) else {
        panic!("inspection is on");
    };
    let mut verdict = inspector.client_bytes(HELLO);
    assert_eq!(verdict, Verdict::Following, "the hello is followed");
    for step in steps {
        let next = match *step {
            Side::Server(bytes) => inspector.server_bytes(bytes),
            Side::Client(bytes) => inspector.client_bytes(bytes),
        };
        check_verdict(settings, &next);
        if verdict.is_final() {
            assert_eq!(next, verdict, "a final verdict changed");
        }
        verdict = next;
    }
    assert_eq!(inspector.verdict(), verdict);
    verdict
}

/// Invariants every verdict holds while following.
fn check_verdict(settings: &TlsSettings, verdict: &Verdict) {
    match verdict {
        Verdict::Deny(reason) => {
            assert!(Reason::LABELS.contains(&reason.label()));
            assert!(matches!(reason.event_id(), 105 | 106 | 402));
            assert!(!reason.to_string().is_empty());
        }
        Verdict::Allow { version, cert, .. } => {
            assert!(*version >= settings.min_version, "allowed {version:?}");
            match cert {
                CertCheck::Subject(subject) => assert!(
                    settings.allowed_client_certificates.contains(subject),
                    "allowed subject {subject:?} is not on the list"
                ),
                CertCheck::Tls13Policy => {
                    assert_eq!(settings.tls13_client_certificate, Tls13Policy::Allow);
                    assert_eq!(*version, TlsVersion::Tls13);
                }
                CertCheck::NotRequired => panic!("certificates are required"),
            }
        }
        Verdict::NeedMore => panic!("NeedMore after the ClientHello"),
        Verdict::Following => {}
    }
}
