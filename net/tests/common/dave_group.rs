//! Real DAVE groups for tests: the voice gateway's external sender built with openmls (as a
//! Discord-compatible server does it, PROTOCOL.md §6 "Server side") and clients that are davey
//! 0.2 `DaveSession`s, driven through key package → external Add proposal → commit → welcome →
//! prepare/execute transition. Nothing is mocked.
//!
//! Reusable from any test crate that has davey, openmls, openmls_rust_crypto and
//! openmls_basic_credential as dev-dependencies:
//!
//! ```ignore
//! #[path = "common/dave_group.rs"]
//! mod dave_group;
//! let gateway = dave_group::Gateway::new(CHANNEL);
//! let (mut a, mut b) = dave_group::two_member_group(&gateway, CHANNEL, USER_A, USER_B);
//! let key = dave_group::sender_key(&a, USER_A); // quaver_net::dave::SenderKey of the epoch
//! ```
#![allow(dead_code)] // each test crate uses its own subset

use std::num::NonZeroU16;

use davey::{DaveSession, ProposalsOperationType};
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::{
    BasicCredential, Ciphersuite, DeserializeBytes as _, ExternalProposal, ExternalSender,
    GroupEpoch, GroupId, KeyPackageIn, OpenMlsProvider as _, ProtocolVersion, SenderExtensionIndex,
    VLBytes,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::{OpenMlsRustCrypto, RustCrypto};
use quaver_net::dave::{EXPORTER_LABEL, SenderKey};

/// DAVE protocol version 1.
pub const DAVE_V1: NonZeroU16 = NonZeroU16::MIN;

/// The gateway's side of the group: the external sender (op 25) that signs Add proposals (op 27).
pub struct Gateway {
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    external_sender: ExternalSender,
    group_id: GroupId,
}

impl Gateway {
    /// The external sender for voice channel `channel_id` (the MLS group id is the channel id,
    /// big-endian), with a fresh P-256 signing key of ciphersuite 2.
    pub fn new(channel_id: u64) -> Self {
        let suite = Ciphersuite::MLS_128_DHKEMP256_AES128GCM_SHA256_P256;
        let signer = SignatureKeyPair::new(suite.signature_algorithm()).expect("P-256 key pair");
        let external_sender = ExternalSender::new(
            signer.public().into(),
            BasicCredential::new(b"quaver-test-gateway".to_vec()).into(),
        );
        Self {
            provider: OpenMlsRustCrypto::default(),
            signer,
            external_sender,
            group_id: GroupId::from_slice(&channel_id.to_be_bytes()),
        }
    }

    /// Op 25's binary payload.
    pub fn external_sender_package(&self) -> Vec<u8> {
        self.external_sender
            .tls_serialize_detached()
            .expect("external sender serialises")
    }

    /// Op 27's payload after the operation byte (what davey's `process_proposals` takes): an
    /// external Add of `key_package`'s owner at `epoch`, as `VLBytes(MLSMessage)`.
    pub fn propose_add(&self, epoch: u64, key_package: &[u8]) -> Vec<u8> {
        let (key_package, rest) =
            KeyPackageIn::tls_deserialize_bytes(key_package).expect("op 26 key package parses");
        assert!(rest.is_empty(), "op 26 is exactly one key package");
        let key_package = key_package
            .validate(self.provider.crypto(), ProtocolVersion::Mls10)
            .expect("key package validates");
        let message = ExternalProposal::new_add::<OpenMlsRustCrypto>(
            key_package,
            self.group_id.clone(),
            GroupEpoch::from(epoch),
            &self.signer,
            SenderExtensionIndex::new(0),
        )
        .expect("external add proposal");
        VLBytes::new(
            message
                .tls_serialize_detached()
                .expect("proposal serialises"),
        )
        .tls_serialize_detached()
        .expect("vector serialises")
    }
}

/// A davey client of `user_id` in `channel_id` that has received op 25 (so it holds its
/// pending epoch-0 group).
pub fn client(gateway: &Gateway, channel_id: u64, user_id: u64) -> DaveSession {
    let mut session = DaveSession::new(DAVE_V1, user_id, channel_id, None).expect("davey session");
    session
        .set_external_sender(&gateway.external_sender_package())
        .expect("op 25 accepted");
    session
}

/// Two clients in an established group (epoch 1), both with their epoch-1 keys in use: `a`
/// commits the gateway's Add of `b`, merges its own commit (op 29), `b` joins from the Welcome
/// (op 30), and both execute transition 1 (ops 21/22).
pub fn two_member_group(
    gateway: &Gateway,
    channel_id: u64,
    user_a: u64,
    user_b: u64,
) -> (DaveSession, DaveSession) {
    let mut a = client(gateway, channel_id, user_a);
    let mut b = client(gateway, channel_id, user_b);
    let _ = a.create_key_package().expect("key package a");
    let kp_b = b.create_key_package().expect("key package b");
    let proposal = gateway.propose_add(0, &kp_b);
    let commit_welcome = a
        .process_proposals(
            ProposalsOperationType::APPEND,
            &proposal,
            Some(&[user_a, user_b]),
        )
        .expect("proposals processed")
        .expect("a commit with a welcome");
    assert!(
        a.process_commit(&commit_welcome.commit)
            .expect("own commit merges")
    );
    b.process_welcome(
        &commit_welcome
            .welcome
            .expect("a welcome for the new member"),
        Some(&[user_a, user_b]),
    )
    .expect("welcome joins");
    for session in [&mut a, &mut b] {
        session.prepare_transition(1, 1).expect("prepare");
        assert!(session.execute_transition(1).expect("execute"));
        assert_eq!(session.epoch().map(|e| e.as_u64()), Some(1));
    }
    (a, b)
}

/// Adds `joiner` to the established group of `members` (the first one commits; the others
/// process the commit as op 29), then every member and the joiner execute `transition_id`.
pub fn add_member(
    gateway: &Gateway,
    members: &mut [&mut DaveSession],
    joiner: &mut DaveSession,
    transition_id: u16,
) {
    let epoch = members[0].epoch().expect("established").as_u64();
    let kp = joiner.create_key_package().expect("key package");
    let proposal = gateway.propose_add(epoch, &kp);
    let mut roster: Vec<u64> = members.iter().map(|m| m.user_id()).collect();
    roster.push(joiner.user_id());
    // Every member receives the proposal and prepares a commit; the gateway takes the first.
    let mut commits = Vec::new();
    for member in members.iter_mut() {
        commits.push(
            member
                .process_proposals(ProposalsOperationType::APPEND, &proposal, Some(&roster))
                .expect("proposals processed")
                .expect("a commit"),
        );
    }
    let winner = commits.swap_remove(0);
    for member in members.iter_mut() {
        assert!(
            member
                .process_commit(&winner.commit)
                .expect("commit merges")
        );
    }
    joiner
        .process_welcome(&winner.welcome.expect("a welcome"), Some(&roster))
        .expect("welcome joins");
    for session in members.iter_mut().map(|m| &mut **m).chain([joiner]) {
        session
            .prepare_transition(transition_id, 1)
            .expect("prepare");
        assert!(session.execute_transition(transition_id).expect("execute"));
    }
}

/// The DAVE sender key of `user_id` in `session`'s current epoch, exported from its MLS group the
/// way the control thread does it: `MLS-Exporter("Discord Secure Frames v0", u64_le(user_id),
/// 16)`.
pub fn sender_key(session: &DaveSession, user_id: u64) -> SenderKey {
    let group = session.group().expect("established group");
    let secret = group
        .export_secret(
            &RustCrypto::default(),
            EXPORTER_LABEL,
            &user_id.to_le_bytes(),
            16,
        )
        .expect("exporter");
    SenderKey::from_slice(group.epoch().as_u64(), &secret).expect("16 bytes")
}
