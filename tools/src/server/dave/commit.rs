//! Op 28 (Commit Welcome) by hand: openmls keeps a commit's body private, and the server needs
//! only the framing fields and the proposal references to decide whether a commit is the one
//! the epoch expects (PROTOCOL.md §6, "Server side").
//!
//! Layout (RFC 9420 §6 and §12.4, PublicMessage framing):
//! `u16 version (1) | u16 wire_format (1) | group_id<V> | u64 epoch | u8 sender_type (1 member)
//! | u32 leaf | authenticated_data<V> | u8 content_type (3 commit) | ProposalOrRef proposals<V>
//! | optional<UpdatePath> | auth data…`, where `ProposalOrRef` is `u8 type` followed by an
//! inline proposal (type 1, refused here) or a `ProposalRef<V>` (type 2).

use openmls::prelude::tls_codec::{Deserialize as _, Size as _};
use openmls::prelude::{MlsMessageIn, Welcome};

use super::DaveError;

/// MLS 1.0.
const MLS10: u16 = 1;
/// `WireFormat::PublicMessage`.
const PUBLIC_MESSAGE: u16 = 1;
/// `SenderType::Member`.
const SENDER_MEMBER: u8 = 1;
/// `ContentType::Commit`.
const CONTENT_COMMIT: u8 = 3;
/// `ProposalOrRefType::Proposal` (inline).
const INLINE: u8 = 1;
/// `ProposalOrRefType::Reference`.
const REFERENCE: u8 = 2;

/// The fields of a commit the server checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedCommit {
    /// The MLS group ID (the channel ID, big-endian).
    pub group_id: Vec<u8>,
    /// The epoch the commit was made in.
    pub epoch: u64,
    /// The committer's leaf index.
    pub sender_leaf: u32,
    /// The proposal references, in commit order.
    pub refs: Vec<Vec<u8>>,
}

/// An op 28 payload split into its commit (an MLSMessage, parsed) and its optional Welcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitWelcome {
    /// The commit message bytes exactly as received (relayed unchanged in op 29).
    pub commit: Vec<u8>,
    /// Its checked fields.
    pub parsed: ParsedCommit,
    /// The Welcome bytes (relayed unchanged in op 30), if any.
    pub welcome: Option<Vec<u8>>,
}

/// Splits and checks an op 28 payload (after the opcode byte). Every malformed input is an
/// error; nothing here panics.
pub fn parse_commit_welcome(payload: &[u8]) -> Result<CommitWelcome, DaveError> {
    super::untrusted(|| parse_commit_welcome_unguarded(payload))
}

fn parse_commit_welcome_unguarded(payload: &[u8]) -> Result<CommitWelcome, DaveError> {
    // openmls validates the whole MLSMessage structure and tells where it ends; what follows is
    // the Welcome.
    // The reader tells how much was consumed. (openmls' `tls_deserialize_bytes` re-serialises
    // to find the split and slices out of range when that disagrees with the input: the
    // server_dave fuzz target found it.)
    let mut rest = payload;
    let message = MlsMessageIn::tls_deserialize(&mut rest).map_err(DaveError::Tls)?;
    let commit_len = payload.len() - rest.len();
    // A re-serialisation that disagrees with what was consumed would make the split unsound.
    if message.tls_serialized_len() != commit_len {
        return Err(DaveError::NonCanonical);
    }
    let commit = &payload[..commit_len];
    let parsed = parse_commit(commit)?;
    let welcome = if rest.is_empty() {
        None
    } else {
        Welcome::tls_deserialize_exact(rest).map_err(DaveError::Tls)?;
        Some(rest.to_vec())
    };
    Ok(CommitWelcome {
        commit: commit.to_vec(),
        parsed,
        welcome,
    })
}

/// Parses the framing of a commit MLSMessage (PublicMessage only, references only).
pub fn parse_commit(bytes: &[u8]) -> Result<ParsedCommit, DaveError> {
    let mut r = Reader(bytes);
    let version = r.u16()?;
    if version != MLS10 {
        return Err(DaveError::UnsupportedVersion(version));
    }
    let wire = r.u16()?;
    if wire != PUBLIC_MESSAGE {
        return Err(DaveError::NotPublicMessage(wire));
    }
    let group_id = r.vector()?.to_vec();
    let epoch = r.u64()?;
    let sender_type = r.u8()?;
    if sender_type != SENDER_MEMBER {
        return Err(DaveError::NotMemberSender(sender_type));
    }
    let sender_leaf = r.u32()?;
    let _authenticated_data = r.vector()?;
    let content_type = r.u8()?;
    if content_type != CONTENT_COMMIT {
        return Err(DaveError::NotCommit(content_type));
    }
    let mut proposals = Reader(r.vector()?);
    let mut refs = Vec::new();
    while !proposals.0.is_empty() {
        match proposals.u8()? {
            REFERENCE => refs.push(proposals.vector()?.to_vec()),
            INLINE => return Err(DaveError::InlineProposal),
            other => return Err(DaveError::UnknownProposalOrRef(other)),
        }
    }
    Ok(ParsedCommit {
        group_id,
        epoch,
        sender_leaf,
        refs,
    })
}

/// A bounds-checked cursor.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DaveError> {
        if self.0.len() < n {
            return Err(DaveError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DaveError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DaveError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DaveError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, DaveError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    /// An RFC 9420 §2.1.2 variable-length vector: a 1/2/4-byte length prefix whose top two
    /// bits give its size, then that many bytes.
    fn vector(&mut self) -> Result<&'a [u8], DaveError> {
        let first = self.u8()?;
        let len = match first >> 6 {
            0 => u64::from(first & 0x3f),
            1 => (u64::from(first & 0x3f) << 8) | u64::from(self.u8()?),
            2 => {
                let b = self.take(3)?;
                (u64::from(first & 0x3f) << 24)
                    | (u64::from(b[0]) << 16)
                    | (u64::from(b[1]) << 8)
                    | u64::from(b[2])
            }
            _ => return Err(DaveError::BadVarint),
        };
        let len = usize::try_from(len).map_err(|_| DaveError::Truncated)?;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(len: usize) -> Vec<u8> {
        assert!(len < 0x3fff);
        if len < 64 {
            vec![len as u8]
        } else {
            vec![0x40 | (len >> 8) as u8, len as u8]
        }
    }

    fn commit(refs: &[&[u8]], inline: bool) -> Vec<u8> {
        let mut b = vec![0, 1, 0, 1];
        b.extend(varint(8));
        b.extend(7u64.to_be_bytes());
        b.extend(3u64.to_be_bytes());
        b.push(1);
        b.extend(2u32.to_be_bytes());
        b.push(0);
        b.push(3);
        let mut list = Vec::new();
        for r in refs {
            list.push(2);
            list.extend(varint(r.len()));
            list.extend_from_slice(r);
        }
        if inline {
            list.extend([1, 0, 1]);
        }
        b.extend(varint(list.len()));
        b.extend(list);
        b.push(0); // no path
        b
    }

    #[test]
    fn parses_references_and_framing() {
        let c = parse_commit(&commit(&[&[1; 32], &[2; 32]], false)).expect("valid framing");
        assert_eq!(c.group_id, 7u64.to_be_bytes());
        assert_eq!((c.epoch, c.sender_leaf), (3, 2));
        assert_eq!(c.refs, vec![vec![1; 32], vec![2; 32]]);
    }

    #[test]
    fn rejects_inline_proposals_and_truncation() {
        assert!(matches!(
            parse_commit(&commit(&[&[1; 32]], true)),
            Err(DaveError::InlineProposal | DaveError::Truncated)
        ));
        let full = commit(&[&[1; 32]], false);
        for n in 0..full.len() - 1 {
            assert!(parse_commit(&full[..n]).is_err(), "prefix of {n} bytes");
        }
        let mut bad = full.clone();
        bad[3] = 2; // PrivateMessage
        assert!(matches!(
            parse_commit(&bad),
            Err(DaveError::NotPublicMessage(2))
        ));
    }

    #[test]
    fn garbage_is_an_error() {
        let mut x: u32 = 0x1234_5678;
        for _ in 0..5_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let len = (x % 300) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| (x.rotate_left(i as u32 % 32) ^ i as u32) as u8)
                .collect();
            let _ = parse_commit(&bytes);
            assert!(parse_commit_welcome(&bytes).is_err());
        }
    }
}
