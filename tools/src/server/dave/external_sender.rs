//! The gateway's MLS identity in one channel: the external sender of op 25, the signer of the
//! Add and Remove proposals of op 27, and the checks on op 26 key packages.

use openmls::prelude::hash_ref::make_proposal_ref;
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    BasicCredential, Ciphersuite, CredentialType, ExternalProposal, ExternalSender, GroupEpoch,
    GroupId, KeyPackage, KeyPackageIn, LeafNodeIndex, OpenMlsProvider, ProtocolVersion,
    SenderExtensionIndex,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;

use super::DaveError;

/// DAVE protocol version 1's ciphersuite.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMP256_AES128GCM_SHA256_P256;

/// The identity the gateway signs with. The credential's identity is empty: it is never a
/// member, and clients only compare the whole ExternalSender with the group's extension.
const GATEWAY_IDENTITY: &[u8] = b"";

/// One channel's external sender. No `Debug`: it holds a private key.
pub(crate) struct ExternalSenderKeys {
    signer: SignatureKeyPair,
    provider: OpenMlsRustCrypto,
    /// The TLS-serialised `ExternalSender` (op 25's payload).
    op25: Vec<u8>,
    group_id: GroupId,
}

/// A proposal message ready for op 27, with its reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProposalMessage {
    /// The MLSMessage bytes.
    pub message: Vec<u8>,
    /// Its `ProposalRef` (RFC 9420 §5.2 over the AuthenticatedContent, i.e. the message
    /// without its 2-byte version).
    pub reference: Vec<u8>,
}

impl ExternalSenderKeys {
    /// A fresh key pair for the group `channel_id` (big-endian, as clients build it).
    pub fn new(channel_id: u64) -> Result<Self, DaveError> {
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm())
            .map_err(|_| DaveError::Crypto)?;
        let sender = ExternalSender::new(
            signer.public().into(),
            BasicCredential::new(GATEWAY_IDENTITY.to_vec()).into(),
        );
        let op25 = sender.tls_serialize_detached().map_err(DaveError::Tls)?;
        Ok(ExternalSenderKeys {
            signer,
            provider: OpenMlsRustCrypto::default(),
            op25,
            group_id: GroupId::from_slice(&channel_id.to_be_bytes()),
        })
    }

    /// Op 25's payload.
    pub fn op25(&self) -> &[u8] {
        &self.op25
    }

    /// An external Add of `key_package` for `epoch`.
    pub fn add(&self, key_package: KeyPackage, epoch: u64) -> Result<ProposalMessage, DaveError> {
        let message = ExternalProposal::new_add::<OpenMlsRustCrypto>(
            key_package,
            self.group_id.clone(),
            GroupEpoch::from(epoch),
            &self.signer,
            SenderExtensionIndex::new(0),
        )
        .map_err(|_| DaveError::Crypto)?;
        self.finish(message.tls_serialize_detached().map_err(DaveError::Tls)?)
    }

    /// An external Remove of `leaf` for `epoch`.
    pub fn remove(&self, leaf: u32, epoch: u64) -> Result<ProposalMessage, DaveError> {
        let message = ExternalProposal::new_remove::<OpenMlsRustCrypto>(
            LeafNodeIndex::new(leaf),
            self.group_id.clone(),
            GroupEpoch::from(epoch),
            &self.signer,
            SenderExtensionIndex::new(0),
        )
        .map_err(|_| DaveError::Crypto)?;
        self.finish(message.tls_serialize_detached().map_err(DaveError::Tls)?)
    }

    fn finish(&self, message: Vec<u8>) -> Result<ProposalMessage, DaveError> {
        let body = message.get(2..).ok_or(DaveError::Truncated)?;
        let reference = make_proposal_ref(body, CIPHERSUITE, self.provider.crypto())
            .map_err(|_| DaveError::Crypto)?;
        Ok(ProposalMessage {
            reference: reference.as_slice().to_vec(),
            message,
        })
    }
}

/// Checks an op 26 payload: a bare KeyPackage, correctly signed, for MLS 1.0 and ciphersuite
/// 2, with a basic credential naming `user_id` (8 bytes big-endian), leaf capabilities that
/// include MLS 1.0, ciphersuite 2 and basic credentials, and DAVE's lifetime (not_before 0,
/// not_after 2^64−1).
pub fn parse_key_package(payload: &[u8], user_id: u64) -> Result<KeyPackage, DaveError> {
    let provider = OpenMlsRustCrypto::default();
    let key_package = super::untrusted(|| {
        // The `Read` decoder: the `_bytes` one slices out of range on some extensions.
        KeyPackageIn::tls_deserialize_exact(payload)
            .map_err(DaveError::Tls)?
            .validate(provider.crypto(), ProtocolVersion::Mls10)
            .map_err(DaveError::KeyPackage)
    })?;
    if key_package.ciphersuite() != CIPHERSUITE {
        return Err(DaveError::WrongCiphersuite);
    }
    let credential = key_package.leaf_node().credential();
    if credential.credential_type() != CredentialType::Basic {
        return Err(DaveError::NotBasicCredential);
    }
    let identity: [u8; 8] = credential
        .serialized_content()
        .try_into()
        .map_err(|_| DaveError::BadIdentity)?;
    let claimed = u64::from_be_bytes(identity);
    if claimed != user_id {
        return Err(DaveError::WrongIdentity {
            expected: user_id,
            claimed,
        });
    }
    // DAVE's leaf capabilities: MLS 1.0, ciphersuite 2, basic credentials.
    let caps = key_package.leaf_node().capabilities();
    if !caps.versions().contains(&ProtocolVersion::Mls10)
        || !caps.ciphersuites().contains(&CIPHERSUITE.into())
        || !caps.credentials().contains(&CredentialType::Basic)
    {
        return Err(DaveError::MissingCapabilities);
    }
    let lifetime = key_package.life_time();
    if lifetime.not_before() != 0 || lifetime.not_after() != u64::MAX {
        return Err(DaveError::BadLifetime);
    }
    Ok(key_package)
}
