//! Both join paths end to end on loopback: the built-in main-gateway client, and a host library
//! (simulated) that sends op 4 itself and forwards the dispatches.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{MainServer, ScriptedServer, ServerOptions};
use quaver_gateway::control::{CallId, ControlConfig, ControlEvent, ControlThread};
use quaver_gateway::join::{
    UpdateVoiceState, VoiceServerUpdate, VoiceStateSender, VoiceStateUpdate,
};
use quaver_gateway::main_gateway::{MainGatewayConfig, MainGatewayEvent};
use quaver_gateway::manager::{BotVoiceStateSender, CallEvent, VoiceManager};
use quaver_gateway::protocol::{Snowflake, Token};
use quaver_gateway::voice::{EndReason, VoiceConfig, VoiceEvent};

fn voice_server() -> ScriptedServer {
    ScriptedServer::start(ServerOptions {
        heartbeat_interval_ms: 1000.0,
        drop_first_after_speaking: false,
        ..Default::default()
    })
}

/// Feed control events through the manager until `done` matches a call event.
fn pump<S: VoiceStateSender>(
    control: &ControlThread,
    mgr: &mut VoiceManager<S>,
    mut done: impl FnMut(&CallEvent) -> bool,
) -> CallId {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("timed out waiting for a call event");
        let ev = control
            .events()
            .recv_timeout(left)
            .expect("timed out waiting for a call event");
        if let Ok(Some(ce)) = mgr.handle_control_event(ev) {
            if let VoiceEvent::DiscoveryRequested { .. } = ce.event {
                control
                    .set_discovered_address(ce.call, "127.0.0.1".into(), 50_000)
                    .unwrap();
            }
            if done(&ce) {
                return ce.call;
            }
        }
    }
}

#[test]
fn built_in_main_gateway_join_move_leave() {
    let voice = voice_server();
    let main = MainServer::start(voice.endpoint());
    let control = Arc::new(ControlThread::spawn(ControlConfig::default()).unwrap());
    let mut cfg = MainGatewayConfig::new(Token::new("bot-token"));
    cfg.url = main.url();
    let bot = control.connect_bot(cfg).unwrap();
    let user_id = loop {
        match control
            .events()
            .recv_timeout(Duration::from_secs(20))
            .unwrap()
        {
            ControlEvent::MainGateway {
                event: MainGatewayEvent::Ready { user_id },
                ..
            } => break user_id,
            _ => continue,
        }
    };
    assert_eq!(user_id, 99);
    let sender = BotVoiceStateSender::new(control.clone(), bot);
    let mut mgr = VoiceManager::new(control.clone(), sender, user_id, VoiceConfig::default());

    mgr.join(1, 5).unwrap();
    let first = pump(&control, &mut mgr, |e| {
        matches!(e.event, VoiceEvent::SessionReady(_)) && e.guild_id == 1
    });
    assert_eq!(mgr.call(1), Some(first));

    // Move: new token → a new voice session; the old call ends.
    mgr.join(1, 6).unwrap();
    let mut old_ended = false;
    let second = pump(&control, &mut mgr, |e| {
        if e.call == first && matches!(e.event, VoiceEvent::Ended(EndReason::Left)) {
            old_ended = true;
        }
        e.call != first && matches!(e.event, VoiceEvent::SessionReady(_))
    });
    if !old_ended {
        pump(&control, &mut mgr, |e| {
            e.call == first && matches!(e.event, VoiceEvent::Ended(_))
        });
    }
    assert_ne!(first, second);
    assert_eq!(main.op4s.load(Ordering::Relaxed), 2);
    assert_eq!(voice.stats.identifies.load(Ordering::Relaxed), 2);

    mgr.leave(1).unwrap();
    pump(&control, &mut mgr, |e| {
        e.call == second && matches!(e.event, VoiceEvent::Ended(EndReason::Left))
    });
    assert_eq!(mgr.call(1), None);
    assert_eq!(main.identifies.load(Ordering::Relaxed), 1);
}

#[derive(Clone, Default)]
struct RecordingHost(Arc<Mutex<Vec<UpdateVoiceState>>>);

impl VoiceStateSender for RecordingHost {
    fn send_voice_state_update(&self, update: &UpdateVoiceState) {
        self.0.lock().unwrap().push(*update);
    }
}

#[test]
fn host_library_path_follows_endpoint_changes() {
    let voice = voice_server();
    let control = Arc::new(ControlThread::spawn(ControlConfig::default()).unwrap());
    let host = RecordingHost::default();
    let mut mgr = VoiceManager::new(control.clone(), host.clone(), 99, VoiceConfig::default());
    mgr.join(7, 70).unwrap();
    assert_eq!(
        *host.0.lock().unwrap(),
        vec![UpdateVoiceState {
            guild_id: Snowflake(7),
            channel_id: Some(Snowflake(70)),
            self_mute: false,
            self_deaf: true
        }]
    );
    // The host's library hands over the two dispatches, here as raw JSON.
    let server_update = |token: &str, endpoint: Option<String>| VoiceServerUpdate {
        token: Token::new(token),
        guild_id: Snowflake(7),
        endpoint,
    };
    mgr.handle_voice_server_update(&server_update("t1", Some(voice.endpoint())))
        .unwrap();
    mgr.handle_voice_state_update(
        &VoiceStateUpdate::from_json(
            r#"{"guild_id":"7","channel_id":"70","user_id":"99","session_id":"s"}"#,
        )
        .unwrap(),
    )
    .unwrap();
    let first = pump(&control, &mut mgr, |e| {
        matches!(e.event, VoiceEvent::SessionReady(_))
    });

    // Failover to another voice server: tear down and identify again there.
    let other = voice_server();
    mgr.handle_voice_server_update(&server_update("t2", Some(other.endpoint())))
        .unwrap();
    let second = pump(&control, &mut mgr, |e| {
        e.call != first && matches!(e.event, VoiceEvent::SessionReady(_))
    });
    assert_eq!(other.stats.identifies.load(Ordering::Relaxed), 1);

    // Null endpoint: close and wait.
    mgr.handle_voice_server_update(&server_update("t2", None))
        .unwrap();
    pump(&control, &mut mgr, |e| {
        e.call == second && matches!(e.event, VoiceEvent::Ended(EndReason::Left))
    });
    assert_eq!(mgr.call(7), None);
    mgr.handle_voice_server_update(&server_update("t3", Some(voice.endpoint())))
        .unwrap();
    pump(&control, &mut mgr, |e| {
        e.call != second && matches!(e.event, VoiceEvent::SessionReady(_))
    });
    assert_eq!(voice.stats.identifies.load(Ordering::Relaxed), 2);
}

#[test]
fn built_in_main_gateway_resumes_after_a_drop_and_still_joins() {
    let voice = voice_server();
    let main = MainServer::start_with(voice.endpoint(), true);
    let control = Arc::new(ControlThread::spawn(ControlConfig::default()).unwrap());
    let mut cfg = MainGatewayConfig::new(Token::new("bot-token"));
    cfg.url = main.url();
    let bot = control.connect_bot(cfg).unwrap();
    let mut user_id = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("no RESUMED");
        match control.events().recv_timeout(left).expect("no RESUMED") {
            ControlEvent::MainGateway {
                event: MainGatewayEvent::Ready { user_id: u },
                ..
            } => user_id = Some(u),
            ControlEvent::MainGateway {
                event: MainGatewayEvent::Resumed,
                ..
            } => break,
            _ => {}
        }
    }
    assert_eq!(main.identifies.load(Ordering::Relaxed), 1);
    assert_eq!(main.resumes.load(Ordering::Relaxed), 1);
    let sender = BotVoiceStateSender::new(control.clone(), bot);
    let mut mgr = VoiceManager::new(
        control.clone(),
        sender,
        user_id.unwrap(),
        VoiceConfig::default(),
    );
    mgr.join(1, 5).unwrap();
    pump(&control, &mut mgr, |e| {
        matches!(e.event, VoiceEvent::SessionReady(_))
    });
}
