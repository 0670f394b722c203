// The `client_hello` fuzz target's invariants, shared with `tests/fuzz_corpus.rs` (which replays
// the corpus and the regressions through them under `cargo test`).
//
// Fuzz target for the TLS inspector: no panic on any input, in either direction, under several
// settings; the verdict does not depend on how the bytes are split into reads; an early final
// verdict is the verdict of the whole input; and only a stream that starts like a TLS record
// can be allowed.
use std::sync::Arc;

use splicegate::proto::connect::Host;
use splicegate::proto::tls::TlsSettings;
use splicegate::proto::tls::{
    normalize_subject, Inspector, Reason, Tls13Policy, TlsVersion, Verdict,
};

/// A ClientHello offering TLS 1.3 and 1.2 with SNI `a.example` (OpenSSL 3 s_client).
const HELLO: &[u8] = include_bytes!("../../tests/fixtures/tls/hello_default.bin");

fn settings() -> [TlsSettings; 3] {
    let certs = ["CN=agent01"]
        .iter()
        .filter_map(|s| normalize_subject(s).ok())
        .collect::<Vec<_>>();
    [
        TlsSettings::default(),
        TlsSettings {
            min_version: TlsVersion::Tls10,
            require_sni: false,
            require_sni_match: false,
            max_hello_bytes: 1024,
            ..TlsSettings::default()
        },
        TlsSettings {
            allowed_client_certificates: certs,
            tls13_client_certificate: Tls13Policy::Allow,
            ..TlsSettings::default()
        },
    ]
}

/// Runs every invariant on one input; panics when one does not hold.
pub fn check(data: &[u8]) {
    let host = Host::Name("a.example".to_owned());
    let split = usize::from(data.first().copied().unwrap_or(0)) * data.len() / 256;
    for s in settings() {
        let s = Arc::new(s);
        // The data as the client's stream.
        let whole = client(&s, &host, &[data]);
        check_verdict(&whole);
        if matches!(whole, Verdict::Allow { .. }) {
            assert_eq!(
                data.first(),
                Some(&0x16),
                "allowed without a handshake record"
            );
        }
        let (head, tail) = data.split_at(split);
        assert_eq!(client(&s, &host, &[head, tail]), whole, "split at {split}");
        let early = client(&s, &host, &[head]);
        if early.is_final() {
            assert_eq!(early, whole, "prefix of {split} bytes decided differently");
        }
        // The data after a valid ClientHello: as the server's answer, then as the client's
        // second flight (the client certificate path when it is configured).
        let Some(mut inspector) = Inspector::new(Arc::clone(&s), &host) else {
            continue;
        };
        let first = inspector.client_bytes(HELLO);
        if first.is_final() {
            continue;
        }
        assert_eq!(first, Verdict::Following);
        let server = inspector.server_bytes(head);
        check_verdict(&server);
        let server = inspector.server_bytes(tail);
        check_verdict(&server);
        let last = inspector.client_bytes(data);
        check_verdict(&last);
        assert_eq!(inspector.verdict(), last);
    }
}

/// The verdict after feeding `chunks` from the client, in order.
fn client(settings: &Arc<TlsSettings>, host: &Host, chunks: &[&[u8]]) -> Verdict {
    let Some(mut inspector) = Inspector::new(Arc::clone(settings), host) else {
        return Verdict::NeedMore;
    };
    let mut verdict = Verdict::NeedMore;
    for chunk in chunks {
        verdict = inspector.client_bytes(chunk);
    }
    verdict
}

/// Invariants every verdict holds.
pub fn check_verdict(verdict: &Verdict) {
    match verdict {
        Verdict::Deny(reason) => {
            assert!(Reason::LABELS.contains(&reason.label()));
            assert!(matches!(reason.event_id(), 105 | 106 | 402));
            assert!(!reason.to_string().is_empty());
            if let Reason::TlsVersion(v) = reason {
                assert!(*v < TlsVersion::Tls13);
            }
        }
        Verdict::Allow { version, sni, .. } => {
            assert!(*version >= TlsVersion::Tls10);
            if let Some(sni) = sni {
                assert!(!sni.is_empty() && !sni.ends_with('.'));
                assert!(!sni.bytes().any(|b| b.is_ascii_uppercase()));
            }
        }
        Verdict::NeedMore | Verdict::Following => {}
    }
}
