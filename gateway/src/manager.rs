//! [`VoiceManager`]: the join flow of every guild wired to a [`ControlThread`].
//!
//! It serves both join paths. With a host library (twilight, serenity) the host implements
//! [`VoiceStateSender`] and forwards the two voice dispatches; with the built-in client
//! ([`crate::main_gateway`]) [`BotVoiceStateSender`] sends op 4 on the bot's socket and the
//! dispatches arrive as [`ControlEvent::MainGateway`], which
//! [`VoiceManager::handle_control_event`] consumes.

use std::collections::HashMap;
use std::sync::Arc;

use crate::Error;
use crate::control::{BotId, CallId, ControlEvent, ControlThread};
use crate::join::{
    JoinAction, JoinFlow, UpdateVoiceState, VoiceServerUpdate, VoiceStateSender, VoiceStateUpdate,
};
use crate::main_gateway::MainGatewayEvent;
use crate::voice::{VoiceConfig, VoiceEvent};

/// A voice event with the guild it belongs to.
#[derive(Debug)]
pub struct CallEvent {
    /// Guild.
    pub guild_id: u64,
    /// The call (a guild gets a new `CallId` for every fresh voice session: moves, endpoint
    /// changes).
    pub call: CallId,
    /// What happened.
    pub event: VoiceEvent,
}

/// Sends op 4 through a built-in main-gateway connection on the control thread.
#[derive(Debug, Clone)]
pub struct BotVoiceStateSender {
    control: Arc<ControlThread>,
    bot: BotId,
}

impl BotVoiceStateSender {
    /// Op 4 will go out on `bot`'s socket (queued until its session is up).
    pub fn new(control: Arc<ControlThread>, bot: BotId) -> Self {
        BotVoiceStateSender { control, bot }
    }
}

impl VoiceStateSender for BotVoiceStateSender {
    fn send_voice_state_update(&self, update: &UpdateVoiceState) {
        if let Err(e) = self.control.bot_send(self.bot, update.to_gateway_json()) {
            tracing::warn!(error = %e, "could not queue op 4");
        }
    }
}

struct GuildVoice {
    flow: JoinFlow,
    call: Option<CallId>,
}

/// Joins, moves and leaves voice channels across guilds for one bot user.
pub struct VoiceManager<S: VoiceStateSender> {
    control: Arc<ControlThread>,
    sender: S,
    user_id: u64,
    voice_config: VoiceConfig,
    guilds: HashMap<u64, GuildVoice>,
    /// Every call not yet ended, current or replaced, to its guild.
    calls: HashMap<CallId, u64>,
}

impl<S: VoiceStateSender> std::fmt::Debug for VoiceManager<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceManager")
            .field("user_id", &self.user_id)
            .field("guilds", &self.guilds.len())
            .finish_non_exhaustive()
    }
}

impl<S: VoiceStateSender> VoiceManager<S> {
    /// A manager for bot user `user_id`, opening voice connections on `control` with
    /// `voice_config`, sending op 4 through `sender`.
    pub fn new(
        control: Arc<ControlThread>,
        sender: S,
        user_id: u64,
        voice_config: VoiceConfig,
    ) -> Self {
        VoiceManager {
            control,
            sender,
            user_id,
            voice_config,
            guilds: HashMap::new(),
            calls: HashMap::new(),
        }
    }

    /// The control thread (for `set_discovered_address`, `set_speaking`).
    pub fn control(&self) -> &Arc<ControlThread> {
        &self.control
    }

    /// The current call of a guild.
    pub fn call(&self, guild_id: u64) -> Option<CallId> {
        self.guilds.get(&guild_id).and_then(|g| g.call)
    }

    /// Join (or move to) a voice channel.
    pub fn join(&mut self, guild_id: u64, channel_id: u64) -> Result<(), Error> {
        let user_id = self.user_id;
        let g = self.guilds.entry(guild_id).or_insert_with(|| GuildVoice {
            flow: JoinFlow::new(guild_id, user_id),
            call: None,
        });
        g.flow.join(channel_id, false, true);
        self.run(guild_id)
    }

    /// Leave the guild's voice channel.
    pub fn leave(&mut self, guild_id: u64) -> Result<(), Error> {
        let g = self
            .guilds
            .get_mut(&guild_id)
            .ok_or(crate::join::JoinError::NotJoined(guild_id))?;
        g.flow.leave();
        self.run(guild_id)
    }

    /// Feed a VOICE_STATE_UPDATE dispatch from the main gateway.
    pub fn handle_voice_state_update(&mut self, u: &VoiceStateUpdate) -> Result<(), Error> {
        let Some(guild_id) = u.guild_id.map(|g| g.0) else {
            return Ok(());
        };
        if let Some(g) = self.guilds.get_mut(&guild_id) {
            g.flow.handle_voice_state_update(u);
            self.run(guild_id)?;
        }
        Ok(())
    }

    /// Feed a VOICE_SERVER_UPDATE dispatch from the main gateway.
    pub fn handle_voice_server_update(&mut self, u: &VoiceServerUpdate) -> Result<(), Error> {
        let guild_id = u.guild_id.0;
        if let Some(g) = self.guilds.get_mut(&guild_id) {
            g.flow.handle_voice_server_update(u);
            self.run(guild_id)?;
        }
        Ok(())
    }

    /// Feed every event from the control thread. Voice events come back tagged with their
    /// guild; main-gateway voice dispatches are consumed; anything else is returned as `Err`
    /// (untouched) for the caller to handle.
    pub fn handle_control_event(
        &mut self,
        event: ControlEvent,
    ) -> Result<Option<CallEvent>, Box<ControlEvent>> {
        match event {
            ControlEvent::Voice { call, event } => {
                let Some(&guild_id) = self.calls.get(&call) else {
                    return Ok(None);
                };
                if let VoiceEvent::Ended(reason) = &event {
                    self.calls.remove(&call);
                    if let Some(g) = self.guilds.get_mut(&guild_id)
                        && g.call == Some(call)
                    {
                        g.call = None;
                        g.flow.handle_voice_ended(reason);
                        if let Err(e) = self.run(guild_id) {
                            tracing::warn!(error = %e, guild_id, "join flow action failed");
                        }
                    }
                }
                Ok(Some(CallEvent {
                    guild_id,
                    call,
                    event,
                }))
            }
            ControlEvent::MainGateway {
                event: MainGatewayEvent::VoiceStateUpdate(u),
                ..
            } => {
                if let Err(e) = self.handle_voice_state_update(&u) {
                    tracing::warn!(error = %e, "join flow action failed");
                }
                Ok(None)
            }
            ControlEvent::MainGateway {
                event: MainGatewayEvent::VoiceServerUpdate(u),
                ..
            } => {
                if let Err(e) = self.handle_voice_server_update(&u) {
                    tracing::warn!(error = %e, "join flow action failed");
                }
                Ok(None)
            }
            other => Err(Box::new(other)),
        }
    }

    fn run(&mut self, guild_id: u64) -> Result<(), Error> {
        let Some(g) = self.guilds.get_mut(&guild_id) else {
            return Ok(());
        };
        while let Some(action) = g.flow.poll_action() {
            match action {
                JoinAction::SendVoiceStateUpdate(u) => self.sender.send_voice_state_update(&u),
                JoinAction::Connect(request) => {
                    if let Some(old) = g.call.take() {
                        self.control.disconnect(old)?;
                    }
                    let call = self.control.connect(request, self.voice_config.clone())?;
                    self.calls.insert(call, guild_id);
                    g.call = Some(call);
                }
                JoinAction::Disconnect => {
                    if let Some(old) = g.call.take() {
                        self.control.disconnect(old)?;
                    }
                }
                JoinAction::Left => {}
            }
        }
        Ok(())
    }
}
