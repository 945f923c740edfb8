//! `quaver play`: the music bot. Mixes files into one voice channel — on the local server by
//! default, or in a real Discord guild with a bot token — with a progress line, and leaves
//! cleanly on Ctrl-C (silence frames, Speaking off, op 4 leave).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use quaver::engine::FileOptions;
use quaver::gateway::main_gateway::MainGatewayEvent;
use quaver::gateway::voice::VoiceEvent;
use quaver::net::SenderEvent;
use quaver::{CallEvent, Event};

use crate::{Error, Finished};

/// What to play where (also the `quaver play` command line).
#[derive(Clone, Default, clap::Args)]
pub struct PlayOptions {
    /// Files to play.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Per-file volume (linear, 0 to 16, 1.0 = unchanged), in the order of the files.
    #[arg(long, value_delimiter = ',', value_parser = crate::args::volume, allow_negative_numbers = true)]
    pub volume: Vec<f32>,
    /// Where to play.
    #[command(flatten)]
    pub at: crate::channel::ChannelArgs,
}

impl std::fmt::Debug for PlayOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bot token is a secret: never in Debug output.
        f.debug_struct("PlayOptions")
            .field("files", &self.files)
            .field("volume", &self.volume)
            .field("at", &self.at)
            .finish()
    }
}

/// Plays until every file has ended or `stop` is set. Every file is checked before anything
/// connects.
pub fn play(options: &PlayOptions, stop: &AtomicBool) -> Result<Finished, Error> {
    crate::media::check_all(&options.files)?;
    if let Some(volume) = options
        .volume
        .iter()
        .find(|v| !(0.0..=crate::args::MAX_VOLUME).contains(*v))
    {
        return Err(Error::Usage(format!(
            "volume {volume} is not between 0 and {}",
            crate::args::MAX_VOLUME
        )));
    }
    let crate::channel::Joined {
        engine,
        call,
        embedded,
        ..
    } = crate::channel::join(&options.at, "quaver-play", stop)?;

    let mut tracks = Vec::new();
    for (index, file) in options.files.iter().enumerate() {
        let volume = options.volume.get(index).copied().unwrap_or(1.0);
        let handle = engine.play_file(
            call,
            file,
            FileOptions {
                volume,
                ..FileOptions::default()
            },
        )?;
        let name = file.file_name().map_or_else(
            || file.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        tracks.push((name, handle));
    }
    // DAVE keys arrive once the MLS group has formed, usually just after the join: each change
    // of the keys in force is shown as it happens.
    let mut e2ee_shown = None;
    let mut progress = crate::progress::Progress::on_terminal();
    while !stop.load(Ordering::Relaxed) && tracks.iter().any(|(_, h)| !h.is_ended()) {
        // The main gateway's and the call's state changes are shown as they happen: an outage
        // is never silent.
        for event in engine.events().try_iter() {
            match event {
                Event::Call(CallEvent::Bot { event, .. }) => match event {
                    MainGatewayEvent::Reconnecting { attempt, delay, .. } => {
                        progress.say(&format!(
                            "main gateway lost; reconnecting (attempt {attempt}, in {:.1} s)",
                            delay.as_secs_f64()
                        ))
                    }
                    MainGatewayEvent::Reconnected { resumed, .. } => progress.say(&format!(
                        "main gateway back ({})",
                        if resumed {
                            "resumed"
                        } else {
                            "new session; rejoining"
                        }
                    )),
                    MainGatewayEvent::Ended { code } => progress.say(&format!(
                        "main gateway ended for good (close code {code:?})"
                    )),
                    _ => {}
                },
                Event::Call(CallEvent::Voice {
                    event: VoiceEvent::Resuming { attempt, .. },
                    ..
                }) => progress.say(&format!(
                    "voice connection lost; resuming (attempt {attempt})"
                )),
                Event::Call(CallEvent::Ended { reason, .. }) => {
                    progress.say(&format!("the voice connection ended: {reason}"))
                }
                _ => {}
            }
        }
        let e2ee = engine
            .e2ee_status(call)
            .filter(|s| s.transitions > 0)
            .map(|s| (s.protocol_version, s.epoch));
        if e2ee.is_some() && e2ee != e2ee_shown {
            e2ee_shown = e2ee;
            match e2ee {
                Some((0, _)) => {
                    progress.say("E2EE: none (DAVE version 0: transport encryption only)")
                }
                Some((version, epoch)) => {
                    progress.say(&format!("E2EE: DAVE v{version}, epoch {epoch}"))
                }
                None => {}
            }
        }
        progress.update(|| {
            let line: Vec<String> = tracks
                .iter()
                .map(|(name, handle)| {
                    let duration = handle.duration().map_or_else(|| "?".into(), clock);
                    let state = if handle.is_ended() { " ended" } else { "" };
                    format!("{name} {}/{duration}{state}", clock(handle.position()))
                })
                .collect();
            line.join(" | ")
        });
        std::thread::sleep(Duration::from_millis(50));
    }
    progress.clear();
    let finished = if tracks.iter().all(|(_, h)| h.is_ended()) {
        Finished::Completed
    } else {
        Finished::Interrupted
    };
    // Leaving: fade out, let the sender send its five silence frames (it then turns Speaking
    // off), and leave the channel with op 4.
    for (_, handle) in &tracks {
        handle.stop();
    }
    let give_up = Instant::now() + Duration::from_millis(500);
    while Instant::now() < give_up {
        let stopped = engine.events().try_iter().any(|event| {
            matches!(
                event,
                Event::Call(CallEvent::Sender {
                    event: SenderEvent::SpeakingStopped { .. },
                    ..
                })
            )
        });
        if stopped {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    engine.disconnect(call)?;
    if let Some(server) = embedded {
        for call in server.stats().calls {
            for stream in call.streams {
                eprintln!(
                    "local server received {} packets from ssrc {} ({} lost; {} DAVE frames decrypted, {} undecryptable)",
                    stream.unique_packets,
                    stream.ssrc,
                    stream.lost,
                    stream.dave_frames,
                    stream.dave_undecryptable
                );
            }
        }
    }
    Ok(finished)
}

fn clock(duration: Duration) -> String {
    let seconds = duration.as_secs();
    format!("{}:{:02}", seconds / 60, seconds % 60)
}
