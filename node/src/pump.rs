//! The node's event thread: turns the engine's events into Lavalink events for the session
//! that owns the source or call, and does the periodic work — `endTime`, stuck tracks,
//! `playerUpdate`, `stats`, and ending resumable sessions whose client stayed away too long.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use quaver::gateway::voice::EndReason as VoiceEnd;
use quaver::{CallEvent, Event};
use serde_json::Value;

use crate::events::{self, EndReason};
use crate::node::Shared;
use crate::session::SessionId;

/// How often `endTime` and stuck tracks are checked (endTime is met within this).
const TICK: Duration = Duration::from_millis(50);

pub(crate) fn run(shared: &Arc<Shared>) {
    let mut next_update = Instant::now() + shared.config.player_update_interval;
    let mut next_stats = Instant::now() + shared.config.stats_interval;
    let mut next_tick = Instant::now();
    // Start the frame counters, so the first stats message covers one interval.
    frame_stats(shared);
    while !shared.stopping.load(Ordering::Relaxed) {
        let wait = next_tick.saturating_duration_since(Instant::now());
        if let Some(event) = shared.engine.events().recv_timeout(wait) {
            on_engine_event(shared, event);
            continue;
        }
        let now = Instant::now();
        next_tick = now + TICK;
        check_players(shared, now);
        reap_sessions(shared, now);
        if now >= next_update {
            next_update = now + shared.config.player_update_interval;
            player_updates(shared);
        }
        if now >= next_stats {
            next_stats = now + shared.config.stats_interval;
            let mut stats = crate::routes::info::stats(shared);
            stats["op"] = "stats".into();
            stats["frameStats"] = frame_stats(shared);
            let limits = shared.config.limits;
            let mut state = shared.lock();
            for session in state.sessions.values_mut() {
                if session.socket.is_some() {
                    session.send(&limits, &stats);
                }
            }
        }
    }
}

fn on_engine_event(shared: &Arc<Shared>, event: Event) {
    let limits = shared.config.limits;
    let mut state = shared.lock();
    let state = &mut *state;
    match event {
        Event::Audio(quaver::engine::Event::SourceEnded { source, reason, .. }) => {
            let reason = EndReason::from_engine(reason);
            let Some(owner) = state.sources.remove(&source) else {
                state.unowned_end(source, reason);
                return;
            };
            let Some(player) = state
                .sessions
                .get_mut(&owner.session)
                .and_then(|s| s.players.get_mut(&owner.guild))
            else {
                return;
            };
            let message = match &owner.layer {
                Some(id) => player
                    .layers
                    .remove(id)
                    .map(|_| events::mix_ended(owner.guild, id, reason)),
                None => {
                    let ours = player
                        .track
                        .as_ref()
                        .and_then(|p| p.handle.as_ref())
                        .is_some_and(|h| h.id() == source);
                    if ours {
                        player
                            .track
                            .take()
                            .map(|p| events::track_end(owner.guild, &p.track, reason))
                    } else {
                        None
                    }
                }
            };
            if let Some(message) = message {
                state.emit(&limits, &owner.session, &message);
            }
        }
        Event::Audio(quaver::engine::Event::SourceError { source, error, .. }) => {
            let Some(owner) = state.sources.get(&source).cloned() else {
                return;
            };
            let track = state
                .sessions
                .get(&owner.session)
                .and_then(|s| s.players.get(&owner.guild))
                .and_then(|p| match &owner.layer {
                    None => p.track.as_ref().map(|t| t.track.clone()),
                    Some(id) => p.layers.get(id).map(|l| l.track.clone()),
                });
            if let Some(track) = track {
                let message =
                    events::track_exception(owner.guild, &track, &error.to_string(), "fault");
                state.emit(&limits, &owner.session, &message);
            }
        }
        Event::Call(CallEvent::Ended { call, reason }) => {
            let Some((session, guild)) = state.calls.get(&call).cloned() else {
                return;
            };
            let (code, by_remote) = match &reason {
                VoiceEnd::Left => (1000, false),
                VoiceEnd::NeedsNewVoiceState { code } | VoiceEnd::AwaitServerUpdate { code } => {
                    (*code, true)
                }
                VoiceEnd::GaveUp { code: Some(code) } => (*code, true),
                // No close frame: what websockets call an abnormal closure.
                _ => (1006, true),
            };
            let message = events::socket_closed(guild, code, &reason.to_string(), by_remote);
            state.emit(&limits, &session, &message);
        }
        _ => {}
    }
}

/// `endTime` reached (the track ends as `finished`), and tracks that stopped producing audio
/// for the stuck threshold (`TrackStuckEvent`, once per stall).
fn check_players(shared: &Arc<Shared>, now: Instant) {
    let limits = shared.config.limits;
    let threshold = shared.config.stuck_threshold;
    let mut state = shared.lock();
    let state = &mut *state;
    let mut out: Vec<(SessionId, Value)> = Vec::new();
    let mut ended = Vec::new();
    for (id, session) in &mut state.sessions {
        for player in session.players.values_mut() {
            let Some(playing) = &mut player.track else {
                continue;
            };
            let Some(handle) = &playing.handle else {
                continue;
            };
            if let Some(end) = playing.end_time
                && handle.position().as_millis() as u64 >= end
            {
                handle.stop();
                ended.push(handle.id());
                if let Some(p) = player.track.take() {
                    let e = events::track_end(player.guild, &p.track, EndReason::Finished);
                    out.push((id.clone(), e));
                }
                continue;
            }
            let stats = handle.stats();
            let audible = stats.frames_mixed.saturating_sub(stats.underruns);
            if player.paused || audible != playing.progress.0 {
                playing.progress = (audible, now);
                playing.stuck_reported = false;
            } else if !playing.stuck_reported
                && now.duration_since(playing.progress.1) >= threshold
                && shared.connected(player.call)
            {
                playing.stuck_reported = true;
                let e =
                    events::track_stuck(player.guild, &playing.track, threshold.as_millis() as u64);
                out.push((id.clone(), e));
            }
        }
    }
    for source in ended {
        state.sources.remove(&source);
    }
    for (session, message) in out {
        state.emit(&limits, &session, &message);
    }
}

fn player_updates(shared: &Arc<Shared>) {
    let limits = shared.config.limits;
    let mut state = shared.lock();
    for session in state.sessions.values_mut() {
        if session.socket.is_none() {
            continue;
        }
        let updates: Vec<Value> = session
            .players
            .values()
            .map(|p| events::player_update(p.guild, p.state_json(shared.connection(p.call))))
            .collect();
        for update in updates {
            session.send(&limits, &update);
        }
    }
}

fn reap_sessions(shared: &Arc<Shared>, now: Instant) {
    let expired: Vec<SessionId> = shared
        .lock()
        .sessions
        .iter()
        .filter(|(_, s)| {
            s.away_since
                .is_some_and(|t| now.duration_since(t) >= s.timeout)
        })
        .map(|(id, _)| id.clone())
        .collect();
    for id in expired {
        let calls = shared.lock().remove_session(&id);
        tracing::info!(players = calls.len(), "a resumable session timed out");
        shared.disconnect_later(calls);
    }
}

/// `frameStats` since the previous call (see [`crate::stats`]).
fn frame_stats(shared: &Arc<Shared>) -> Value {
    let packets_sent = match shared.engine.stats() {
        Ok(stats) => stats.sender.packets_sent,
        Err(_) => return Value::Null,
    };
    let mut playing = 0;
    let mut nulled = 0;
    {
        let mut state = shared.lock();
        for session in state.sessions.values_mut() {
            for player in session.players.values_mut() {
                let connected = shared.connected(player.call);
                let Some(track) = &mut player.track else {
                    continue;
                };
                let Some(handle) = &track.handle else {
                    continue;
                };
                let underruns = handle.stats().underruns;
                if connected && !player.paused {
                    playing += 1;
                    nulled += underruns.saturating_sub(track.underruns_at_stats);
                }
                track.underruns_at_stats = underruns;
            }
        }
    }
    shared
        .sampler
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .frame_stats(packets_sent, playing, nulled)
}
