//! The DAVE client against a real external sender (openmls), driven op by op.

use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;

use super::*;
use crate::protocol::{DavePrepareEpoch, DavePrepareTransition};
use crate::voice::OutgoingFrame;

const CHANNEL: u64 = 0x0123_4567_89AB_CDEF;
const CS: Ciphersuite = Ciphersuite::MLS_128_DHKEMP256_AES128GCM_SHA256_P256;

/// The voice gateway's side, reduced to what these tests need: an external sender that makes
/// Add proposals.
struct Gateway {
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    op25: Vec<u8>,
}

impl Gateway {
    fn new() -> Self {
        let provider = OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::new(CS.signature_algorithm()).expect("signer");
        let sender = ExternalSender::new(
            signer.public().into(),
            BasicCredential::new(0u64.to_be_bytes().to_vec()).into(),
        );
        let op25 = sender.tls_serialize_detached().expect("op 25");
        Self {
            provider,
            signer,
            op25,
        }
    }

    /// Op 27 append: `[0] ‖ VLBytes(Add proposal for the key package of op 26)`.
    fn add_proposal(&self, op26: &[u8], epoch: u64) -> Vec<u8> {
        let kp = KeyPackageIn::tls_deserialize_exact_bytes(op26)
            .expect("key package")
            .validate(self.provider.crypto(), ProtocolVersion::Mls10)
            .expect("valid key package");
        let msg = ExternalProposal::new_add::<OpenMlsRustCrypto>(
            kp,
            GroupId::from_slice(&CHANNEL.to_be_bytes()),
            GroupEpoch::from(epoch),
            &self.signer,
            SenderExtensionIndex::new(0),
        )
        .expect("proposal")
        .tls_serialize_detached()
        .expect("serialize");
        let mut out = vec![0];
        VLBytes::new(msg).tls_serialize(&mut out).expect("vl bytes");
        out
    }
}

fn ctx(user_id: u64) -> DaveContext {
    DaveContext {
        user_id,
        channel_id: CHANNEL,
    }
}

/// Binary frames of `op` sent by the client, without their op byte.
fn binaries(out: &DaveOutbox, op: u8) -> Vec<Vec<u8>> {
    out.frames
        .iter()
        .filter_map(|f| match f {
            OutgoingFrame::Binary(b) if b.first() == Some(&op) => Some(b[1..].to_vec()),
            _ => None,
        })
        .collect()
}

fn texts(out: &DaveOutbox) -> Vec<VoicePayload> {
    out.frames
        .iter()
        .filter_map(|f| match f {
            OutgoingFrame::Text(t) => Some(VoicePayload::decode(t, 1 << 20).expect("json").payload),
            _ => None,
        })
        .collect()
}

fn keys(out: &DaveOutbox) -> Vec<DaveKeys> {
    out.events
        .iter()
        .filter_map(|e| match e {
            DaveEvent::KeysChanged(k) => Some(k.clone()),
            _ => None,
        })
        .collect()
}

fn with_id(transition_id: u16, body: &[u8]) -> Vec<u8> {
    let mut v = transition_id.to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// A client that got op 4 (version 1) and op 25; returns it and its key package.
fn joined(gateway: &Gateway, user_id: u64, others: &[u64]) -> (DaveClient, Vec<u8>) {
    let mut client = DaveClient::new(1);
    client.on_clients_connect(others);
    let mut out = DaveOutbox::default();
    client.on_session_description(ctx(user_id), 1, &mut out);
    let kp = binaries(&out, op::DAVE_MLS_KEY_PACKAGE);
    assert_eq!(kp.len(), 1, "one key package after op 4");
    client.on_binary(op::DAVE_MLS_EXTERNAL_SENDER, &gateway.op25, &mut out);
    assert!(out.events.is_empty(), "{:?}", out.events);
    (client, kp.into_iter().next().unwrap_or_default())
}

/// Two members form a group through the gateway; both end with the same keys for each other.
#[test]
fn two_members_agree_on_each_others_sender_keys() {
    let gateway = Gateway::new();
    let (mut a, kp_a) = joined(&gateway, 1, &[2]);
    let (mut b, kp_b) = joined(&gateway, 2, &[1]);

    // While the group forms, each pending member gets the other's Add; A's commit wins.
    let mut out_a = DaveOutbox::default();
    a.on_binary(
        op::DAVE_MLS_PROPOSALS,
        &gateway.add_proposal(&kp_b, 0),
        &mut out_a,
    );
    let commit_welcome = binaries(&out_a, op::DAVE_MLS_COMMIT_WELCOME);
    assert_eq!(commit_welcome.len(), 1, "A commits the Add");
    let (_, welcome) = MlsMessageIn::tls_deserialize_bytes(&commit_welcome[0]).expect("commit");
    let commit = &commit_welcome[0][..commit_welcome[0].len() - welcome.len()];
    assert!(!welcome.is_empty(), "adding B carries a welcome");

    let mut out_b = DaveOutbox::default();
    b.on_binary(
        op::DAVE_MLS_PROPOSALS,
        &gateway.add_proposal(&kp_a, 0),
        &mut out_b,
    );

    let mut out_a = DaveOutbox::default();
    a.on_binary(
        op::DAVE_MLS_ANNOUNCE_COMMIT_TRANSITION,
        &with_id(7, commit),
        &mut out_a,
    );
    let mut out_b = DaveOutbox::default();
    b.on_binary(op::DAVE_MLS_WELCOME, &with_id(7, welcome), &mut out_b);
    for out in [&out_a, &out_b] {
        assert_eq!(
            texts(out),
            vec![VoicePayload::DaveTransitionReady(DaveTransition {
                transition_id: 7
            })],
            "op 23 for transition 7, no failure: {:?}",
            out.events
        );
        assert!(keys(out).is_empty(), "keys switch only on op 22");
    }

    let execute = VoicePayload::DaveExecuteTransition(DaveTransition { transition_id: 7 });
    let mut out_a = DaveOutbox::default();
    a.on_json(&execute, &mut out_a);
    let mut out_b = DaveOutbox::default();
    b.on_json(&execute, &mut out_b);
    let (ka, kb) = (keys(&out_a), keys(&out_b));
    assert_eq!((ka.len(), kb.len()), (1, 1));
    let (ka, kb) = (&ka[0], &kb[0]);
    assert_eq!((ka.protocol_version, ka.epoch), (1, 1));
    assert_eq!(kb.epoch, 1);
    let a_own = ka.own.as_ref().expect("A has a sender key");
    let b_own = kb.own.as_ref().expect("B has a sender key");
    assert_ne!(a_own, b_own, "each member has its own sender key");
    assert_eq!(kb.members, vec![(1, a_own.clone())], "B can decrypt A");
    assert_eq!(ka.members, vec![(2, b_own.clone())], "A can decrypt B");
    assert_eq!(a.epoch(), Some(1));

    // A second op 22 for the same transition changes nothing.
    let mut again = DaveOutbox::default();
    a.on_json(&execute, &mut again);
    assert!(again.events.is_empty() && again.frames.is_empty());
}

#[test]
fn adds_for_users_not_announced_are_refused() {
    let gateway = Gateway::new();
    let (mut a, _) = joined(&gateway, 1, &[]);
    let (_, kp_stranger) = joined(&gateway, 66, &[1]);
    let mut out = DaveOutbox::default();
    a.on_binary(
        op::DAVE_MLS_PROPOSALS,
        &gateway.add_proposal(&kp_stranger, 0),
        &mut out,
    );
    assert!(
        binaries(&out, op::DAVE_MLS_COMMIT_WELCOME).is_empty(),
        "no commit for a stranger"
    );
    assert!(matches!(
        out.events.as_slice(),
        [DaveEvent::Failed {
            step: DaveStep::Proposals,
            ..
        }]
    ));

    // Announced, then gone in op 13: refused as well.
    let (mut a, _) = joined(&gateway, 1, &[66]);
    a.on_client_disconnect(66);
    let mut out = DaveOutbox::default();
    a.on_binary(
        op::DAVE_MLS_PROPOSALS,
        &gateway.add_proposal(&kp_stranger, 0),
        &mut out,
    );
    assert!(binaries(&out, op::DAVE_MLS_COMMIT_WELCOME).is_empty());
}

#[test]
fn a_bad_commit_sends_op_31_and_a_fresh_key_package() {
    let gateway = Gateway::new();
    let (mut a, kp_a) = joined(&gateway, 1, &[2]);
    let (_, kp_b) = joined(&gateway, 2, &[1]);
    let mut out = DaveOutbox::default();
    a.on_binary(
        op::DAVE_MLS_PROPOSALS,
        &gateway.add_proposal(&kp_b, 0),
        &mut out,
    );
    let mut out = DaveOutbox::default();
    a.on_binary(
        op::DAVE_MLS_ANNOUNCE_COMMIT_TRANSITION,
        &with_id(9, &[0xde, 0xad, 0xbe, 0xef]),
        &mut out,
    );
    assert_eq!(
        texts(&out),
        vec![VoicePayload::DaveMlsInvalidCommitWelcome(DaveTransition {
            transition_id: 9
        })]
    );
    let fresh = binaries(&out, op::DAVE_MLS_KEY_PACKAGE);
    assert_eq!(fresh.len(), 1);
    assert_ne!(fresh[0], kp_a, "a new key package, never the old one");
    assert!(matches!(
        out.events.as_slice(),
        [DaveEvent::Failed {
            step: DaveStep::Commit,
            transition_id: Some(9),
            recovering: true
        }]
    ));
}

#[test]
fn garbage_and_truncated_binary_ops_are_errors_not_panics() {
    let gateway = Gateway::new();
    let (mut a, _) = joined(&gateway, 1, &[2]);
    let cases: &[(u8, &[u8])] = &[
        (op::DAVE_MLS_PROPOSALS, &[]),
        (op::DAVE_MLS_PROPOSALS, &[7]),
        (op::DAVE_MLS_PROPOSALS, &[0, 0xff, 0xff]),
        (op::DAVE_MLS_PROPOSALS, &[1, 3, 1, 2, 3]),
        (op::DAVE_MLS_ANNOUNCE_COMMIT_TRANSITION, &[]),
        (op::DAVE_MLS_ANNOUNCE_COMMIT_TRANSITION, &[1]),
        (op::DAVE_MLS_WELCOME, &[0, 1, 0xff]),
        (op::DAVE_MLS_EXTERNAL_SENDER, &[1, 2, 3]),
        (99, &[1, 2, 3]),
    ];
    for (op, payload) in cases {
        let mut out = DaveOutbox::default();
        a.on_binary(*op, payload, &mut out);
        assert!(keys(&out).is_empty(), "op {op} {payload:?}");
    }
    // Still usable afterwards: a valid Add is committed.
    let (_, kp_b) = joined(&gateway, 2, &[1]);
    let mut out = DaveOutbox::default();
    a.on_binary(
        op::DAVE_MLS_PROPOSALS,
        &gateway.add_proposal(&kp_b, 0),
        &mut out,
    );
    assert_eq!(binaries(&out, op::DAVE_MLS_COMMIT_WELCOME).len(), 1);
}

#[test]
fn downgrade_waits_for_op_22_and_upgrade_starts_a_new_group() {
    let gateway = Gateway::new();
    let (mut a, _) = joined(&gateway, 1, &[]);

    let mut out = DaveOutbox::default();
    a.on_json(
        &VoicePayload::DavePrepareTransition(DavePrepareTransition {
            protocol_version: 0,
            transition_id: 3,
        }),
        &mut out,
    );
    assert_eq!(
        texts(&out),
        vec![VoicePayload::DaveTransitionReady(DaveTransition {
            transition_id: 3
        })]
    );
    assert!(keys(&out).is_empty());
    let mut out = DaveOutbox::default();
    a.on_json(
        &VoicePayload::DaveExecuteTransition(DaveTransition { transition_id: 3 }),
        &mut out,
    );
    let k = keys(&out);
    assert_eq!(k.len(), 1);
    assert_eq!(
        (k[0].protocol_version, k[0].own.is_none()),
        (0, true),
        "plain Opus now"
    );
    assert_eq!(a.protocol_version(), 0);

    // Op 24 epoch 1: a new group is coming; a fresh key package goes out.
    let mut out = DaveOutbox::default();
    a.on_json(
        &VoicePayload::DavePrepareEpoch(DavePrepareEpoch {
            protocol_version: 1,
            epoch: 1,
            transition_id: 4,
        }),
        &mut out,
    );
    assert_eq!(binaries(&out, op::DAVE_MLS_KEY_PACKAGE).len(), 1);
}

#[test]
fn transition_id_zero_applies_at_once_without_op_23() {
    let gateway = Gateway::new();
    let (mut a, _) = joined(&gateway, 1, &[]);
    let mut out = DaveOutbox::default();
    a.on_json(
        &VoicePayload::DavePrepareTransition(DavePrepareTransition {
            protocol_version: 1,
            transition_id: 0,
        }),
        &mut out,
    );
    assert!(texts(&out).is_empty(), "never op 23 for transition 0");
    let k = keys(&out);
    assert_eq!(k.len(), 1);
    assert!(
        k[0].own.is_none(),
        "alone with no group: plain Opus, never waiting for op 22"
    );
}

#[test]
fn version_zero_sends_nothing() {
    let mut client = DaveClient::new(1);
    let mut out = DaveOutbox::default();
    client.on_session_description(ctx(1), 0, &mut out);
    assert!(out.frames.is_empty() && out.events.is_empty());
    let mut disabled = DaveClient::new(0);
    assert_eq!(disabled.max_protocol_version(), 0);
    disabled.on_session_description(ctx(1), 1, &mut out);
    assert!(
        out.frames.is_empty(),
        "a client configured for 0 never sends key packages"
    );
}

#[test]
fn debug_shows_no_key_material() {
    let gateway = Gateway::new();
    let (a, _) = joined(&gateway, 1, &[2]);
    let shown = format!("{a:?}");
    assert!(
        shown.contains("DaveClient") && !shown.contains("secret"),
        "{shown}"
    );
}

/// The fuzz target's input format (fuzz/fuzz_targets/dave_client.rs), fed seeded random records
/// and mutated real messages, so every test run exercises it too.
#[test]
fn random_and_mutated_ops_never_panic() {
    let gateway = Gateway::new();
    let (_, kp_b) = joined(&gateway, 2, &[1]);
    let real: Vec<(u8, Vec<u8>)> = vec![
        (op::DAVE_MLS_EXTERNAL_SENDER, gateway.op25.clone()),
        (op::DAVE_MLS_PROPOSALS, gateway.add_proposal(&kp_b, 0)),
    ];
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..300 {
        let (mut client, _) = joined(&gateway, 1, &[2]);
        let mut out = DaveOutbox::default();
        for _ in 0..4 {
            let (op, mut bytes) = if round % 2 == 0 {
                let (op, b) = &real[(next() % real.len() as u64) as usize];
                (*op, b.clone())
            } else {
                let len = (next() % 64) as usize;
                let op = [25, 27, 29, 30, 99][(next() % 5) as usize];
                (op, (0..len).map(|_| next() as u8).collect())
            };
            if !bytes.is_empty() {
                for _ in 0..(next() % 4) {
                    let i = (next() % bytes.len() as u64) as usize;
                    bytes[i] ^= 1 << (next() % 8);
                }
                if next() % 3 == 0 {
                    bytes.truncate((next() % bytes.len() as u64) as usize);
                }
            }
            client.on_binary(op, &bytes, &mut out);
        }
        client.on_json(
            &VoicePayload::DaveExecuteTransition(DaveTransition {
                transition_id: (next() % 4) as u16,
            }),
            &mut out,
        );
    }
}
