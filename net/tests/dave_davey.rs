//! `quaver_net::dave` against davey 0.2 in a real MLS group (openmls external sender, davey
//! clients): our frames equal davey's byte for byte, davey decrypts ours, we decrypt davey's,
//! across an epoch change and a same-epoch key re-install.

#[path = "common/dave_group.rs"]
mod dave_group;

use std::time::{Duration, Instant};

use davey::MediaType;
use quaver_net::dave::{DaveError, FrameDecryptor, FrameEncryptor, MAX_OVERHEAD, parse_frame};

const CHANNEL: u64 = 927_364_958_113_445_001;
const USER_A: u64 = 158_049_329_150_427_136;
const USER_B: u64 = 1_234_123_412_341_234;
const USER_C: u64 = 987_654_321_987_654_321;

/// Opus-sized payloads of varying length (up to the 1,275-byte maximum), with a silence frame now
/// and then.
fn opus_frame(i: usize) -> Vec<u8> {
    if i % 37 == 5 {
        return vec![0xF8, 0xFF, 0xFE];
    }
    let len = match i % 5 {
        0 => 1275,
        1 => 3 + i % 7,
        _ => 60 + (i * 31) % 400,
    };
    (0..len).map(|k| (k * 7 + i * 13) as u8).collect()
}

fn ours(encryptor: &mut FrameEncryptor, opus: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; opus.len() + MAX_OVERHEAD];
    let n = encryptor.encrypt_into(opus, &mut out).expect("room");
    out.truncate(n);
    out
}

fn open(decryptor: &mut FrameDecryptor, frame: &[u8], now: Instant) -> Result<Vec<u8>, DaveError> {
    let mut out = vec![0u8; frame.len()];
    let n = decryptor.decrypt_into(frame, &mut out, now)?;
    out.truncate(n);
    Ok(out)
}

#[test]
fn frames_match_davey_byte_for_byte_across_epochs() {
    let gateway = dave_group::Gateway::new(CHANNEL);
    let (mut a, mut b) = dave_group::two_member_group(&gateway, CHANNEL, USER_A, USER_B);
    let now = Instant::now();

    // Epoch 1. The key comes from A's group; B's group exports the same secret.
    let key_a1 = dave_group::sender_key(&a, USER_A);
    assert_eq!(key_a1.epoch(), 1);
    assert!(key_a1.same_key(&dave_group::sender_key(&b, USER_A)));
    let mut encryptor = FrameEncryptor::new(key_a1.clone());
    // Our decryptor of A's frames (as B's receive path would hold it).
    let mut from_a = FrameDecryptor::new();
    from_a.install_key(key_a1, now);

    let mut held_back = Vec::new();
    for i in 0..300 {
        let opus = opus_frame(i);
        let theirs = a.encrypt_opus(&opus).expect("davey encrypts").into_owned();
        let mine = ours(&mut encryptor, &opus);
        assert_eq!(mine, theirs, "frame {i} differs from davey's");
        if opus == [0xF8, 0xFF, 0xFE] {
            assert_eq!(mine, opus, "silence is not wrapped");
            continue;
        }
        assert_eq!(
            parse_frame(&mine).expect("DAVE frame").nonce as usize,
            encryptor.frames() as usize
        );
        // davey (B) accepts our frame...
        assert_eq!(
            b.decrypt(USER_A, MediaType::AUDIO, &mine)
                .expect("davey decrypts ours"),
            opus,
            "frame {i}"
        );
        // ...and we accept davey's (the same bytes): keep one back to deliver late, after the
        // epoch change.
        if i >= 298 {
            held_back.push((theirs, opus));
        } else {
            assert_eq!(open(&mut from_a, &theirs, now), Ok(opus), "frame {i}");
        }
    }

    // The same epoch's key installed again continues the counter, in davey and here.
    a.prepare_transition(0, 1)
        .expect("re-apply the current epoch");
    assert!(!encryptor.set_key(dave_group::sender_key(&a, USER_A)));
    for i in 300..320 {
        let opus = opus_frame(i);
        let theirs = a.encrypt_opus(&opus).expect("davey encrypts").into_owned();
        assert_eq!(
            ours(&mut encryptor, &opus),
            theirs,
            "frame {i} after re-install"
        );
    }

    // Epoch 2: C joins; A's key changes and the counter restarts at nonce 1.
    let mut c = dave_group::client(&gateway, CHANNEL, USER_C);
    dave_group::add_member(&gateway, &mut [&mut a, &mut b], &mut c, 7);
    let key_a2 = dave_group::sender_key(&a, USER_A);
    assert_eq!(key_a2.epoch(), 2);
    assert!(encryptor.set_key(key_a2.clone()));
    let later = now + Duration::from_secs(1);
    assert!(from_a.install_key(key_a2, later));
    for i in 0..150 {
        let opus = opus_frame(i + 1000);
        let theirs = a.encrypt_opus(&opus).expect("davey encrypts").into_owned();
        let mine = ours(&mut encryptor, &opus);
        assert_eq!(mine, theirs, "epoch 2 frame {i}");
        if opus == [0xF8, 0xFF, 0xFE] {
            continue;
        }
        if i == 0 {
            assert_eq!(parse_frame(&mine).expect("DAVE frame").nonce, 1);
        }
        for receiver in [&mut b, &mut c] {
            assert_eq!(
                receiver
                    .decrypt(USER_A, MediaType::AUDIO, &mine)
                    .expect("davey decrypts ours"),
                opus
            );
        }
        assert_eq!(open(&mut from_a, &theirs, later), Ok(opus));
    }
    // Epoch-1 frames held back still open within the 10 s overlap, and not after it.
    assert_eq!(held_back.len(), 2);
    let (late, late_opus) = &held_back[1];
    assert_eq!(
        open(&mut from_a, late, later + Duration::from_secs(9)).as_ref(),
        Ok(late_opus)
    );
    let (too_late, _) = &held_back[0];
    assert_eq!(
        open(&mut from_a, too_late, later + Duration::from_secs(11)),
        Err(DaveError::AuthenticationFailed),
        "epoch 1 expired; epoch 2's key does not open it"
    );
}

#[test]
fn we_decrypt_davey_frames_of_every_member() {
    let gateway = dave_group::Gateway::new(CHANNEL);
    let (mut a, mut b) = dave_group::two_member_group(&gateway, CHANNEL, USER_A, USER_B);
    let now = Instant::now();
    let mut from_b = FrameDecryptor::new();
    from_b.install_key(dave_group::sender_key(&a, USER_B), now);
    let mut from_a = FrameDecryptor::new();
    from_a.install_key(dave_group::sender_key(&b, USER_A), now);
    // Holds A's key but is only ever shown B's frames.
    let mut wrong_sender = FrameDecryptor::new();
    wrong_sender.install_key(dave_group::sender_key(&b, USER_A), now);
    for i in 0..200 {
        let opus = opus_frame(i);
        let frame_b = b.encrypt_opus(&opus).expect("davey encrypts").into_owned();
        assert_eq!(
            open(&mut from_b, &frame_b, now),
            Ok(opus.clone()),
            "B frame {i}"
        );
        let frame_a = a.encrypt_opus(&opus).expect("davey encrypts").into_owned();
        assert_eq!(
            open(&mut from_a, &frame_a, now),
            Ok(opus.clone()),
            "A frame {i}"
        );
        if opus != [0xF8, 0xFF, 0xFE] {
            // A sender's frames do not open under another member's key, and replays are refused.
            assert_eq!(
                open(&mut wrong_sender, &frame_b, now),
                Err(DaveError::AuthenticationFailed)
            );
            assert!(matches!(
                open(&mut from_b, &frame_b, now),
                Err(DaveError::Replayed { .. })
            ));
        }
    }
}
