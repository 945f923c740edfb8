//! The engine: the control-side API (calls, sources, events, stats) and the two threads behind
//! it — the real-time mixer thread, and a worker that reads files ahead, frees what the mixer
//! hands back, and forwards events.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use crate::codec::OpusConfig;
use crate::decode::Decoder;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::file::FileOptions;
use crate::frame::{FRAME_DURATION, FrameReceiver, FrameSignal, Grid};
use crate::frame_queue::{FrameSender, frame_queue};
use crate::input::InputError;
use crate::mixer::{CallShared, CallSlot, Command, Garbage, Mixer};
use crate::pcm::PcmFormat;
use crate::pool::{CodecFactory, SpareFeed};
use crate::rebalance::{Candidate, MixerLoad};
use crate::source::{SourceHandle, SourceOptions, SourceSlot};
use crate::stats::{
    EngineStats, MixerCounters, MixerHistograms, StatsCollector, Summary, stats_channel,
};
use crate::stream::{Feed, Running};
use crate::writer::{OpusWriter, PcmWriter};
use crate::{CallId, SourceId};

/// Engine-wide settings and limits, fixed at start-up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most calls at once. Exceeding it is an error, never growth.
    pub max_calls: usize,
    /// Mixer threads; calls are spread over them (each call stays on one). Libopus bounds one
    /// thread at roughly 100–150 encoded calls, so use more on machines with more cores.
    pub mixer_threads: usize,
    /// Most sources per call at once.
    pub max_sources_per_call: usize,
    /// Encoder settings for new calls.
    pub opus: OpusConfig,
    /// Frames each call's queue holds (20 ms each) before the mixer drops new ones. Default 5:
    /// the mixer runs at most a lead (≤ 16 ms) plus the call's phase (≤ 18 ms) ahead of the
    /// sender, so the queue holds two frames in steady flow, and the rest absorbs ~60 ms of a
    /// stalled sender. Frames are queued at their own length: each counts 640 bytes of every
    /// call's memory (a 256 kb/s stream's frame; larger ones fill the queue sooner, but it
    /// always holds two of the largest).
    pub frame_queue: usize,
    /// Events held for [`Engine::events`] before new ones are dropped (and counted).
    pub event_queue: usize,
    /// How long before a frame's deadline the mixer must have finished it; the mixer starts each
    /// tick this much plus its recent tick duration ahead. It must exceed the time the sender
    /// builds packets ahead of their deadline (0.6–5 ms, adaptive), or frames miss their tick.
    pub min_lead: Duration,
    /// Ask for SCHED_FIFO priority for the mixer thread (used when the process may).
    pub realtime_priority: bool,
    /// Under overload (a mixer thread's tick takes over 70 % of the period for 3 ticks), step
    /// Opus complexity down one call batch at a time, newest calls first (10 → 8 → 5 → 2 → 0),
    /// and back up after 5 s below 40 %, instead of sending late frames. Counted in
    /// [`EngineStats::complexity_steps_down`]. Threaded engines only: a manual mixer has no
    /// deadline.
    pub adaptive_complexity: bool,
    /// Ready Opus encoders, and as many decoders, each mixer thread keeps for calls that start
    /// mixing (see [`crate::EngineStats::opus_encoders`]): a passthrough call holds no codec,
    /// and takes one when its source's volume changes, it pauses or stops (fades), a seek
    /// fades in, or a master volume is set. The worker refills them every few milliseconds; a
    /// call that finds none waits a tick (counted in [`EngineStats::codec_shortages`]). Calls
    /// that are known to mix from the start (PCM sources, a second source, a start below
    /// unity) bring their own and never wait. At least 1.
    pub spare_codecs: usize,
    /// Runs first thing on the mixer thread (after its set-up), e.g. to pin it to a core or to
    /// mark it for an allocation-counting test.
    pub on_mixer_thread_start: Option<fn()>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_calls: 1024,
            max_sources_per_call: 64,
            mixer_threads: std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
            opus: OpusConfig::default(),
            frame_queue: 5,
            event_queue: 4096,
            min_lead: Duration::from_millis(6),
            realtime_priority: true,
            adaptive_complexity: true,
            spare_codecs: 4,
            on_mixer_thread_start: None,
        }
    }
}

/// How often the worker thread frees garbage, forwards events and refills spare codecs: once a
/// tick. (Its wake-ups were the largest share of an idle engine's CPU at every 5 ms.)
const HOUSEKEEPING_PERIOD: Duration = FRAME_DURATION;
/// How often it wakes while it decodes files, to keep their read-ahead topped up.
const READ_AHEAD_PERIOD: Duration = Duration::from_millis(5);
/// Commands that can wait for the mixer at once; far more than it applies per tick.
const COMMAND_QUEUE: usize = 4096;
/// Calls in flight from one mixer to another at once (one move at a time is asked for).
const TRANSFER_RING: usize = 4;
/// How long a control call waits for room in a full command queue before giving up.
const COMMAND_WAIT: Duration = Duration::from_millis(200);
/// Longest lead the mixer gives itself; beyond this it is overloaded, not early.
const MAX_LEAD: Duration = Duration::from_millis(16);

/// Control-side bookkeeping of calls, used to enforce the limits up front.
struct CallTable {
    calls: HashMap<CallId, CallEntry>,
    /// Calls whose slots exist anywhere: live, or removed but not yet freed.
    slots_in_use: usize,
    /// Live calls per mixer thread, to place new calls on the least busy one.
    calls_per_mixer: Vec<usize>,
    next_id: u32,
    /// Calls being handed from one mixer to another, with the commands that wait for it.
    moving: HashMap<CallId, Moving>,
    /// When the last move was asked for (see [`crate::rebalance::COOLDOWN`]).
    last_move: Option<Instant>,
}

/// A call in flight between mixers.
struct Moving {
    from: usize,
    to: usize,
    /// Commands for the call sent meanwhile, in order; they go to whichever mixer has it once
    /// the move is confirmed or refused.
    pending: Vec<Command>,
}

struct CallEntry {
    shared: Arc<CallShared>,
    /// Which mixer thread runs the call.
    mixer: usize,
    /// Sources whose slots exist: playing, queued, or ended but not yet freed.
    sources_in_use: usize,
}

/// What the mixer sends back to the control side.
struct Outlet {
    events: rtrb::Consumer<Event>,
    garbage: rtrb::Consumer<Garbage>,
    stats: StatsCollector,
}

/// One mixer's queues, seen from the control side.
struct MixerLink {
    commands: Mutex<rtrb::Producer<Command>>,
    outlet: Mutex<Outlet>,
    /// The control side's end of the mixer's spare codecs.
    spares: Mutex<SpareFeed>,
    load: Arc<MixerLoad>,
}

pub(crate) struct Inner {
    config: EngineConfig,
    grid: Grid,
    mixers: Vec<MixerLink>,
    table: Mutex<CallTable>,
    decoders: Mutex<Vec<Decoder>>,
    /// Inputs decoded on threads of their own (child processes, HTTP streams).
    streams: Mutex<Vec<Running>>,
    /// The calls' track queues.
    pub(crate) queues: Mutex<HashMap<CallId, crate::queue::TrackQueue>>,
    /// The engine is being dropped: no new source may start (a queue loader finishing late
    /// would otherwise leave an input thread, or a child, behind).
    closing: AtomicBool,
    /// The worker thread, woken early when a file source is asked to seek.
    worker: OnceLock<Thread>,
    event_tx: crossbeam_channel::Sender<Event>,
    counters: Arc<MixerCounters>,
    /// Makes (and counts) every Opus encoder and decoder of the engine's calls and sources.
    codecs: CodecFactory,
    next_source_id: AtomicU64,
    /// Bumped when a parked frame queue gets a frame (see [`crate::frame_queue`]).
    frame_signal: Arc<FrameSignal>,
}

/// The audio engine: many calls, many sources per call, a few mixer threads.
///
/// ```no_run
/// use quaver_engine::{Engine, EngineConfig, PcmFormat};
///
/// let engine = Engine::new(EngineConfig::default())?;
/// let (call, frames) = engine.create_call()?;
/// let (handle, mut writer) = engine.push_source(call, PcmFormat::new(44_100, 2)?)?;
/// writer.write_all_f32(&vec![0.0; 44_100 * 2])?; // one second of stereo silence
/// handle.set_volume(0.5);
/// drop(writer); // the source plays out what is buffered, then ends with an event
/// # drop(frames);
/// # Ok::<(), quaver_engine::Error>(())
/// ```
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
    events: crossbeam_channel::Receiver<Event>,
    shutdown: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.inner.config)
            .field("threaded", &!self.threads.is_empty())
            .finish()
    }
}

impl Engine {
    /// Starts an engine with its mixer threads (real-time priority when allowed) and its worker.
    pub fn new(config: EngineConfig) -> Result<Self> {
        let threads = config.mixer_threads.max(1);
        let (mut engine, mixers) = Self::build(config, threads)?;
        for (index, mut mixer) in mixers.into_iter().enumerate() {
            mixer.set_adaptive_complexity(engine.inner.config.adaptive_complexity);
            let inner = Arc::clone(&engine.inner);
            let shutdown = Arc::clone(&engine.shutdown);
            let mixer_thread = std::thread::Builder::new()
                .name(format!("quaver-mixer-{index}"))
                .spawn(move || run_mixer_thread(mixer, &inner, &shutdown))
                .map_err(|source| Error::Thread {
                    name: "mixer",
                    source,
                })?;
            engine.threads.push(mixer_thread);
        }

        let inner = Arc::clone(&engine.inner);
        let shutdown = Arc::clone(&engine.shutdown);
        let worker = std::thread::Builder::new()
            .name("quaver-engine-worker".into())
            .spawn(move || {
                while !shutdown.load(Ordering::Relaxed) {
                    let reading = inner.housekeep();
                    // Parked rather than asleep, so a new file or a seek can wake it at once.
                    std::thread::park_timeout(if reading {
                        READ_AHEAD_PERIOD
                    } else {
                        HOUSEKEEPING_PERIOD
                    });
                }
            })
            .map_err(|source| Error::Thread {
                name: "engine worker",
                source,
            })?;
        let _ = engine.inner.worker.set(worker.thread().clone());
        engine.threads.push(worker);
        Ok(engine)
    }

    /// An engine without threads: you drive the returned [`Mixer`] with [`Mixer::tick`] (as fast
    /// as you like) and call [`Engine::housekeep`] between ticks, which reads files ahead,
    /// frees ended sources and delivers events. Used for offline rendering and tests. A manual
    /// engine has exactly one mixer, whatever `mixer_threads` says.
    pub fn manual(config: EngineConfig) -> Result<(Self, Mixer)> {
        let (engine, mut mixers) = Self::build(config, 1)?;
        // Invariant: `build` makes exactly as many mixers as asked for.
        let mixer = mixers.pop().expect("one mixer");
        Ok((engine, mixer))
    }

    fn build(config: EngineConfig, mixer_count: usize) -> Result<(Self, Vec<Mixer>)> {
        if config.max_calls == 0 || config.max_sources_per_call == 0 {
            return Err(Error::InvalidConfig(
                "max_calls and max_sources_per_call must be above 0",
            ));
        }
        let counters = Arc::new(MixerCounters::default());
        let codecs = CodecFactory::new(config.opus);
        let (event_tx, event_rx) = crossbeam_channel::bounded(config.event_queue.max(16));
        let mut mixers = Vec::with_capacity(mixer_count);
        let mut links = Vec::with_capacity(mixer_count);
        for _ in 0..mixer_count {
            let (command_tx, command_rx) = rtrb::RingBuffer::new(COMMAND_QUEUE);
            let (mixer_events_tx, mixer_events_rx) =
                rtrb::RingBuffer::new(config.event_queue.max(16));
            // Room for every call and source slot that can exist at once, so the mixer can
            // always hand a slot back without freeing it itself. (Replaced frame queues come
            // back this way too; they are rare — one per voice reconnect — and collected every
            // few milliseconds.)
            // Codecs come back this way only when the mixer has no room to keep them as spares
            // (and if this is full too, a call keeps its codec a while longer).
            let garbage_capacity = config
                .max_calls
                .saturating_mul(config.max_sources_per_call + 1)
                .saturating_add(config.spare_codecs.saturating_mul(2));
            let (garbage_tx, garbage_rx) = rtrb::RingBuffer::new(garbage_capacity);
            let (publisher, collector) = stats_channel();
            let (spares, spare_feed) = crate::pool::spares(config.spare_codecs, &codecs)?;
            mixers.push(Mixer::new(
                config.max_calls,
                command_rx,
                mixer_events_tx,
                garbage_tx,
                publisher,
                Arc::clone(&counters),
                spares,
            ));
            links.push(MixerLink {
                commands: Mutex::new(command_tx),
                outlet: Mutex::new(Outlet {
                    events: mixer_events_rx,
                    garbage: garbage_rx,
                    stats: collector,
                }),
                spares: Mutex::new(spare_feed),
                load: Arc::default(),
            });
        }
        // One hand-over ring per ordered pair of mixers (see `crate::rebalance`): mixer `i`
        // gets a producer towards every other mixer and a consumer from each.
        let mut ins: Vec<Vec<rtrb::Consumer<Box<CallSlot>>>> =
            (0..mixer_count).map(|_| Vec::new()).collect();
        for (from, (mixer, link)) in mixers.iter_mut().zip(&links).enumerate() {
            let outs = ins
                .iter_mut()
                .enumerate()
                .map(|(to, inbound)| {
                    (to != from).then(|| {
                        let (tx, rx) = rtrb::RingBuffer::new(TRANSFER_RING);
                        inbound.push(rx);
                        tx
                    })
                })
                .collect();
            mixer.connect_out(outs, Arc::clone(&link.load));
        }
        for (mixer, inbound) in mixers.iter_mut().zip(ins) {
            mixer.connect_in(inbound);
        }
        let inner = Arc::new(Inner {
            grid: Grid::new(Instant::now()),
            mixers: links,
            table: Mutex::new(CallTable {
                calls: HashMap::new(),
                slots_in_use: 0,
                calls_per_mixer: vec![0; mixer_count],
                next_id: 1,
                moving: HashMap::new(),
                last_move: None,
            }),
            decoders: Mutex::new(Vec::new()),
            streams: Mutex::new(Vec::new()),
            queues: Mutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
            worker: OnceLock::new(),
            event_tx,
            counters,
            codecs,
            next_source_id: AtomicU64::new(1),
            frame_signal: Arc::default(),
            config,
        });
        let engine = Self {
            inner,
            events: event_rx,
            shutdown: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        Ok((engine, mixers))
    }

    /// The 20 ms grid the frames are stamped on: frame `tick` is due at `grid.deadline(tick)`.
    pub fn grid(&self) -> Grid {
        self.inner.grid
    }

    /// The configuration the engine was built with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Creates a call with the engine's default encoder settings. Returns its id and the
    /// consumer end of its frame queue, which the sender (or you) drains.
    pub fn create_call(&self) -> Result<(CallId, FrameReceiver)> {
        self.create_call_with(self.inner.config.opus)
    }

    /// Creates a call with its own encoder settings.
    pub fn create_call_with(&self, opus: OpusConfig) -> Result<(CallId, FrameReceiver)> {
        let max = self.inner.config.max_calls;
        // No encoder yet: the call takes one when it mixes (see `crate::pool`).
        let lookahead = opus.lookahead_samples()?;
        let (frames_tx, frames_rx) = self.inner.frame_queue();
        let shared = Arc::new(CallShared::new());
        let mut table = lock(&self.inner.table);
        if table.slots_in_use >= max {
            return Err(Error::LimitReached {
                what: "calls per engine",
                max,
            });
        }
        let id = CallId(table.next_id);
        table.next_id = table.next_id.wrapping_add(1).max(1);
        let slot = CallSlot::new(
            id,
            Arc::clone(&shared),
            opus,
            lookahead,
            frames_tx,
            self.inner.config.max_sources_per_call,
        );
        let mixer = (0..table.calls_per_mixer.len())
            .min_by_key(|&index| table.calls_per_mixer[index])
            .unwrap_or(0);
        self.inner.send(mixer, Command::AddCall(slot))?;
        table.slots_in_use += 1;
        table.calls_per_mixer[mixer] += 1;
        table.calls.insert(
            id,
            CallEntry {
                shared,
                mixer,
                sources_in_use: 0,
            },
        );
        Ok((id, frames_rx))
    }

    /// Removes a call: its sources end (with [`crate::EndReason::CallRemoved`]) and its frame
    /// queue gets an end-of-stream marker if it was producing.
    pub fn remove_call(&self, call: CallId) -> Result<()> {
        let mut table = lock(&self.inner.table);
        let mixer = table.calls.get(&call).ok_or(Error::NoSuchCall(call))?.mixer;
        self.inner
            .send_for_call(&mut table, call, mixer, Command::RemoveCall(call))?;
        table.calls.remove(&call);
        table.calls_per_mixer[mixer] = table.calls_per_mixer[mixer].saturating_sub(1);
        Ok(())
    }

    /// Calls created and not removed yet.
    pub fn call_count(&self) -> usize {
        lock(&self.inner.table).calls.len()
    }

    /// Gives the call a fresh frame queue and returns its consumer; the old queue is detached
    /// at the next tick. Used when a call's frames move to a new sender session (a new SSRC
    /// and key after a voice reconnect).
    pub fn replace_frame_queue(&self, call: CallId) -> Result<FrameReceiver> {
        let mut table = lock(&self.inner.table);
        let mixer = table.calls.get(&call).ok_or(Error::NoSuchCall(call))?.mixer;
        let (frames_tx, frames_rx) = self.inner.frame_queue();
        self.inner.send_for_call(
            &mut table,
            call,
            mixer,
            Command::ReplaceFrames(call, Box::new(frames_tx)),
        )?;
        Ok(frames_rx)
    }

    /// Sets a call's master gain (ramped over one frame, like source volumes).
    pub fn set_call_volume(&self, call: CallId, volume: f32) -> Result<()> {
        let table = lock(&self.inner.table);
        let entry = table.calls.get(&call).ok_or(Error::NoSuchCall(call))?;
        entry.shared.set_master_volume(volume);
        Ok(())
    }

    /// Tells the mixer when `call`'s packets are due: `phase` after each grid deadline, its
    /// place in the sender's staggered grid. The mixer builds its calls in phase order, so the
    /// calls due first are ready first. Calls start at phase 0 (all due at the grid's instant).
    pub fn set_call_phase(&self, call: CallId, phase: Duration) -> Result<()> {
        let phase_us = u32::try_from(phase.as_micros())
            .unwrap_or(u32::MAX)
            .min(FRAME_DURATION.as_micros() as u32);
        self.inner
            .send_about(call, Command::SetPhase { call, phase_us })
    }

    /// Adds a PCM source to `call` and returns its handle and writer. Write interleaved f32 or
    /// i16 samples in `format` to the writer; the mixer resamples them to 48 kHz stereo.
    pub fn push_source(
        &self,
        call: CallId,
        format: PcmFormat,
    ) -> Result<(SourceHandle, PcmWriter)> {
        self.push_source_with(call, format, SourceOptions::default())
    }

    /// [`Engine::push_source`] with a buffer size, initial volume or pause.
    pub fn push_source_with(
        &self,
        call: CallId,
        format: PcmFormat,
        options: SourceOptions,
    ) -> Result<(SourceHandle, PcmWriter)> {
        let id = self.inner.next_source_id();
        let built = SourceSlot::new_pcm(id, format, &options)?;
        self.inner.add_source(call, built.slot)?;
        Ok((SourceHandle::new(call, id, built.shared), built.writer))
    }

    /// Adds a pre-encoded Opus source (20 ms packets). Alone in its call at unity volume it is
    /// sent without re-encoding; otherwise it is decoded and mixed.
    pub fn push_opus(
        &self,
        call: CallId,
        options: SourceOptions,
    ) -> Result<(SourceHandle, OpusWriter)> {
        let id = self.inner.next_source_id();
        let built = SourceSlot::new_opus(id, &options)?;
        self.inner.add_source(call, built.slot)?;
        Ok((SourceHandle::new(call, id, built.shared), built.writer))
    }

    /// Plays a file (wav, flac, mp3, ogg vorbis, or ogg opus) in `call`. The file is opened and
    /// its first packet decoded before this returns, so a missing, corrupt or unsupported file
    /// is an error here; later failures arrive as [`Event::SourceError`]. Decoding runs on the
    /// engine's worker thread, reading ahead [`FileOptions::read_ahead`].
    pub fn play_file(
        &self,
        call: CallId,
        path: impl AsRef<Path>,
        options: FileOptions,
    ) -> Result<SourceHandle> {
        let id = self.inner.next_source_id();
        let opened = crate::file::open_file(call, id, path.as_ref(), &options)?;
        self.inner.start_file(call, opened, Placement::Now)
    }

    /// The engine's events. Clone the receiver freely; each event goes to one receiver.
    pub fn events(&self) -> &crossbeam_channel::Receiver<Event> {
        &self.events
    }

    /// In manual mode, does what the worker thread does: reads files ahead, frees slots the
    /// mixer is done with, forwards events. Harmless (but unnecessary) on a threaded engine.
    pub fn housekeep(&self) {
        self.inner.housekeep();
    }

    /// A snapshot of the mixer's counters and timing histograms.
    pub fn stats(&self) -> EngineStats {
        let mut histograms = MixerHistograms::new();
        for link in &self.inner.mixers {
            let mut outlet = lock(&link.outlet);
            outlet.stats.collect();
            histograms.add(&outlet.stats.total);
        }
        let c = &self.inner.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        EngineStats {
            ticks: load(&c.ticks),
            skipped_ticks: load(&c.skipped_ticks),
            frames_encoded: load(&c.frames_encoded),
            frames_passed_through: load(&c.frames_passed_through),
            frames_dropped: load(&c.frames_dropped),
            encode_errors: load(&c.encode_errors),
            events_dropped: load(&c.events_dropped),
            realtime_priority: c.realtime_priority.load(Ordering::Relaxed),
            opus_encoders: self.inner.codecs.encoders.live(),
            opus_encoders_in_use: self.inner.codecs.encoders.in_use(),
            opus_decoders: self.inner.codecs.decoders.live(),
            opus_decoders_in_use: self.inner.codecs.decoders.in_use(),
            codec_shortages: load(&c.codec_shortages),
            complexity_steps_down: load(&c.complexity_steps_down),
            complexity_steps_up: load(&c.complexity_steps_up),
            calls_lowered: load(&c.calls_lowered),
            frames_rushed: load(&c.frames_rushed),
            tick: Summary::of(&histograms.tick_us),
            encode: Summary::of(&histograms.encode_us),
            lateness: Summary::of(&histograms.lateness_us),
            histograms,
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        {
            // Under the streams lock, so no input thread registers after the shut-down below.
            let mut streams = lock(&self.inner.streams);
            self.inner.closing.store(true, Ordering::Release);
            for stream in streams.iter_mut() {
                stream.shut_down();
            }
        }
        self.shutdown.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Inner {
    /// A new frame queue for a call, on the engine's signal.
    fn frame_queue(&self) -> (FrameSender, FrameReceiver) {
        frame_queue(self.config.frame_queue.max(2), &self.frame_signal)
    }

    pub(crate) fn next_source_id(&self) -> SourceId {
        SourceId(self.next_source_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Adds an opened input decoded on a thread of its own; `abort` unblocks its reads once
    /// the source has ended.
    pub(crate) fn start_stream(
        &self,
        call: CallId,
        opened: crate::decode::Opened,
        feed: Box<dyn Feed>,
        abort: Box<dyn Fn() + Send>,
        placement: Placement,
    ) -> Result<SourceHandle> {
        let shared = Arc::clone(&opened.shared);
        let id = opened.decoder.source();
        if let Err(error) = self.place_source(call, opened.slot, placement) {
            abort();
            return Err(error);
        }
        let events = self.event_tx.clone();
        let counters = Arc::clone(&self.counters);
        let report = Box::new(move |event| {
            if events.try_send(event).is_err() {
                MixerCounters::bump(&counters.events_dropped);
            }
        });
        let mut streams = lock(&self.streams);
        if self.closing.load(Ordering::Acquire) {
            (abort)();
            opened.decoder.shared().mark_ended();
            return Err(Error::MixerGone);
        }
        let running =
            crate::stream::spawn(opened.decoder, feed, abort, report).map_err(|source| {
                Error::Thread {
                    name: "input",
                    source,
                }
            })?;
        streams.push(running);
        Ok(SourceHandle::new(call, id, shared))
    }

    /// Adds an opened file, decoded on the worker.
    pub(crate) fn start_file(
        &self,
        call: CallId,
        opened: crate::decode::Opened,
        placement: Placement,
    ) -> Result<SourceHandle> {
        opened.shared.set_seekable();
        if let Some(worker) = self.worker.get() {
            opened.shared.set_decoder_thread(worker.clone());
        }
        let id = opened.decoder.source();
        let shared = Arc::clone(&opened.shared);
        self.place_source(call, opened.slot, placement)?;
        lock(&self.decoders).push(opened.decoder);
        // Its read-ahead starts now, not at the next (slower) housekeeping round.
        if let Some(worker) = self.worker.get() {
            worker.unpark();
        }
        Ok(SourceHandle::new(call, id, shared))
    }

    pub(crate) fn add_source(&self, call: CallId, slot: Box<SourceSlot>) -> Result<()> {
        self.place_source(call, slot, Placement::Now)
    }

    /// Hands a new source's slot to its call's mixer: playing now, or as the queue's next track.
    pub(crate) fn place_source(
        &self,
        call: CallId,
        mut slot: Box<SourceSlot>,
        placement: Placement,
    ) -> Result<()> {
        let max = self.config.max_sources_per_call;
        let mut table = lock(&self.table);
        let entry = table.calls.get(&call).ok_or(Error::NoSuchCall(call))?;
        if entry.sources_in_use >= max {
            return Err(Error::LimitReached {
                what: "sources per call",
                max,
            });
        }
        // A source known to be mixed brings the codecs for it, so it never waits for a spare
        // (see `crate::pool`); a lone Opus source at unity passes through and needs none.
        let mixed = !slot.is_opus()
            || slot.starts_mixed()
            || match placement {
                Placement::Now => entry.sources_in_use > 0,
                Placement::Next { crossfade_ticks } => crossfade_ticks > 0,
            };
        let encoder = if mixed {
            if slot.needs_decoder() {
                let _ = slot.install_decoder(self.codecs.decoder()?);
            }
            Some(self.codecs.encoder()?)
        } else {
            None
        };
        let command = match placement {
            Placement::Now => Command::AddSource(call, slot, encoder),
            Placement::Next { crossfade_ticks } => Command::QueueNext {
                call,
                slot,
                crossfade_ticks,
                encoder,
            },
        };
        let mixer = entry.mixer;
        self.send_for_call(&mut table, call, mixer, command)?;
        if let Some(entry) = table.calls.get_mut(&call) {
            entry.sources_in_use += 1;
        }
        Ok(())
    }

    /// Sends a command about `call` to its mixer, or holds it while the call moves between
    /// mixers (see [`crate::rebalance`]).
    fn send_for_call(
        &self,
        table: &mut CallTable,
        call: CallId,
        mixer: usize,
        command: Command,
    ) -> Result<()> {
        match table.moving.get_mut(&call) {
            Some(moving) => {
                moving.pending.push(command);
                Ok(())
            }
            None => self.send(mixer, command),
        }
    }

    /// Sends a command about `call` to whichever mixer has it (held while it moves).
    pub(crate) fn send_about(&self, call: CallId, command: Command) -> Result<()> {
        let mut table = lock(&self.table);
        let mixer = table.calls.get(&call).ok_or(Error::NoSuchCall(call))?.mixer;
        self.send_for_call(&mut table, call, mixer, command)
    }

    /// A move finished (`landed` on mixer `at`) or was refused: the call's waiting commands
    /// go to where it is now.
    fn settle_move(&self, table: &mut CallTable, call: CallId, moved: bool) {
        let Some(moving) = table.moving.remove(&call) else {
            return;
        };
        let at = if moved { moving.to } else { moving.from };
        if moved && let Some(entry) = table.calls.get_mut(&call) {
            entry.mixer = moving.to;
            table.calls_per_mixer[moving.from] =
                table.calls_per_mixer[moving.from].saturating_sub(1);
            table.calls_per_mixer[moving.to] += 1;
        }
        for command in moving.pending {
            if self.send(at, command).is_err() {
                break;
            }
        }
    }

    /// Asks the busiest mixer to hand one call to the idlest when that evens them out (see
    /// [`crate::rebalance`]); one move at a time, then a cooldown.
    fn rebalance(&self, table: &mut CallTable) {
        if self.mixers.len() < 2
            || !table.moving.is_empty()
            || table
                .last_move
                .is_some_and(|at| at.elapsed() < crate::rebalance::COOLDOWN)
        {
            return;
        }
        let loads: Vec<u64> = self.mixers.iter().map(|m| m.load.work_ns()).collect();
        let candidates = table.calls.iter().map(|(&call, entry)| Candidate {
            call,
            mixer: entry.mixer,
            cost_ns: entry.shared.cost_ns(),
        });
        let Some(chosen) = crate::rebalance::choose(&loads, candidates) else {
            return;
        };
        if self
            .send(
                chosen.from,
                Command::MoveCall {
                    call: chosen.call,
                    to: chosen.to,
                },
            )
            .is_ok()
        {
            table.moving.insert(
                chosen.call,
                Moving {
                    from: chosen.from,
                    to: chosen.to,
                    pending: Vec::new(),
                },
            );
            table.last_move = Some(Instant::now());
        }
    }

    /// The mixer running `call`, if the call exists.
    pub(crate) fn mixer_of(&self, call: CallId) -> Option<usize> {
        lock(&self.table).calls.get(&call).map(|entry| entry.mixer)
    }

    /// Queues a command for mixer `mixer`, waiting briefly if its queue is full.
    fn send(&self, mixer: usize, command: Command) -> Result<()> {
        let link = self.mixers.get(mixer).ok_or(Error::MixerGone)?;
        let mut commands = lock(&link.commands);
        let give_up = Instant::now() + COMMAND_WAIT;
        let mut command = command;
        loop {
            match commands.push(command) {
                Ok(()) => return Ok(()),
                Err(rtrb::PushError::Full(returned)) => {
                    if commands.is_abandoned() || Instant::now() >= give_up {
                        return Err(Error::MixerGone);
                    }
                    command = returned;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    /// Returns whether files are being decoded (then the worker comes back sooner).
    fn housekeep(self: &Arc<Self>) -> bool {
        // Events are taken before garbage: the mixer queues a slot's garbage before its end
        // event, so by the time a user sees `SourceEnded`, the slot no longer counts against
        // the limits.
        let mut events = Vec::new();
        let mut freed = Vec::new();
        for link in &self.mixers {
            let mut outlet = lock(&link.outlet);
            while let Ok(event) = outlet.events.pop() {
                events.push(event);
            }
            let mut spares = lock(&link.spares);
            while let Ok(garbage) = outlet.garbage.pop() {
                // Codecs the mixer handed back become its spares again (dropped here when
                // its spares are full).
                match garbage {
                    Garbage::Encoder(encoder) => spares.recycle_encoder(encoder),
                    Garbage::Decoder(decoder) => spares.recycle_decoder(decoder),
                    garbage => freed.push(garbage),
                }
            }
            // Topped up with new ones for what its calls took; a failed libopus allocation
            // leaves the spares short for now (calls wait, counted) and is tried again.
            let _ = spares.refill(&self.codecs);
            drop(spares);
            outlet.stats.collect();
        }
        {
            let mut table = lock(&self.table);
            for garbage in &freed {
                match garbage {
                    Garbage::Call(_) => table.slots_in_use = table.slots_in_use.saturating_sub(1),
                    Garbage::Frames(_) | Garbage::Encoder(_) | Garbage::Decoder(_) => {}
                    Garbage::Moved { call, .. } => self.settle_move(&mut table, *call, true),
                    Garbage::MoveFailed { call } => self.settle_move(&mut table, *call, false),
                    Garbage::Source { call, .. } => {
                        if let Some(entry) = table.calls.get_mut(call) {
                            entry.sources_in_use = entry.sources_in_use.saturating_sub(1);
                        }
                    }
                }
            }
            self.rebalance(&mut table);
        }
        self.track_queues(&events);
        for event in events {
            self.forward(event);
        }
        // The slots (rings, resamplers, decoders) are freed here, off the real-time thread.
        drop(freed);

        let mut decoders = lock(&self.decoders);
        decoders.retain_mut(|decoder| {
            // One decoder's bug (symphonia on a hostile file) must not stop every other
            // call's files: the panic ends that source only, as a failure with an event.
            let pumped = std::panic::catch_unwind(AssertUnwindSafe(|| decoder.pump()))
                .unwrap_or_else(|_| {
                    decoder.fail();
                    Err(InputError::DecoderPanicked)
                });
            match pumped {
                Ok(more) => more,
                Err(error) => {
                    self.forward(source_error(decoder, error));
                    false
                }
            }
        });
        let reading = !decoders.is_empty();
        drop(decoders);
        lock(&self.streams).retain_mut(Running::check);
        reading
    }

    pub(crate) fn forward(&self, event: Event) {
        if self.event_tx.try_send(event).is_err() {
            MixerCounters::bump(&self.counters.events_dropped);
        }
    }
}

/// The event for a decoder that failed with `error`.
pub(crate) fn source_error(decoder: &Decoder, error: InputError) -> Event {
    Event::SourceError {
        call: decoder.call(),
        source: decoder.source(),
        error: Arc::new(Error::Input {
            input: decoder.name().clone(),
            error,
        }),
    }
}

/// Where a new source goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Into the mix at once.
    Now,
    /// As the call's next queued track.
    Next { crossfade_ticks: u32 },
}

/// Locks a control-side mutex. A panic while holding one of these cannot leave the protected
/// data inconsistent (every critical section is a few plain updates), so poisoning is ignored.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The mixer thread: builds tick `n` shortly before `grid.deadline(n)`, on absolute deadlines so
/// a slow tick never shifts the ones after it.
fn run_mixer_thread(mut mixer: Mixer, inner: &Inner, shutdown: &AtomicBool) {
    // Below the sender's priority (10): near a deadline the sender must preempt a mixer that is
    // busy building later frames. No custom slice: the mixer's wake-ups are not that tight.
    let mode = crate::pacer::configure_current_thread(crate::pacer::SchedulingRequest {
        fifo_priority: inner.config.realtime_priority.then_some(5),
        custom_slice: None,
    });
    let realtime = matches!(mode, crate::pacer::PacingMode::RealtimeFifo { .. });
    inner
        .counters
        .realtime_priority
        .store(realtime, Ordering::Relaxed);
    // Sleeps only (no spin): the mixer has `lead` of slack, and a spin would cost a core share.
    let pacer = crate::pacer::Pacer::new(Duration::ZERO);
    if let Some(hook) = inner.config.on_mixer_thread_start {
        hook();
    }
    let grid = inner.grid;
    let min_lead = inner.config.min_lead.min(MAX_LEAD);
    let mut lead = min_lead;
    // Recent worst tick duration, decaying slowly, from which the lead is derived.
    let mut recent_worst = Duration::ZERO;
    let mut tick = grid.tick_at_or_after(Instant::now() + lead);
    mixer.set_next_tick(tick);

    while !shutdown.load(Ordering::Relaxed) {
        let wake_at = grid
            .deadline(tick)
            .checked_sub(lead)
            .unwrap_or(grid.epoch());
        pacer.sleep_until(wake_at);
        let started = Instant::now();
        mixer.record_lateness(started.saturating_duration_since(wake_at).as_micros() as u64);
        mixer.run_tick_due(tick, Some(grid.deadline(tick)));
        let took = started.elapsed();

        // `min_lead` is the slack left after the tick (the sender builds its packets that long
        // before the deadline); the tick's own duration, with room for a slower one, comes on
        // top. A slow decay keeps the lead up after a spike instead of missing the next one.
        recent_worst = took.max(recent_worst.mul_f32(0.995));
        lead = (min_lead + recent_worst.mul_f32(1.5)).min(MAX_LEAD);

        tick += 1;
        // Suspended or overloaded for more than a frame: jump to the present instead of
        // bursting out stale frames.
        let now = Instant::now();
        if now > grid.deadline(tick) + FRAME_DURATION {
            let resume_at = grid.tick_at_or_after(now + lead);
            inner
                .counters
                .skipped_ticks
                .fetch_add(resume_at - tick, Ordering::Relaxed);
            mixer.note_skipped(resume_at - tick);
            tick = resume_at;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EndReason;

    /// One second of a 48 kHz mono 16-bit tone as a WAV file.
    fn write_tone(path: &Path) {
        let samples: Vec<i16> = (0..48_000)
            .map(|i| ((i as f32 * 0.05).sin() * 8_000.0) as i16)
            .collect();
        let data = (samples.len() * 2) as u32;
        let mut bytes = Vec::new();
        for part in [
            &b"RIFF"[..],
            &(36 + data).to_le_bytes(),
            b"WAVEfmt ",
            &16_u32.to_le_bytes(),
        ] {
            bytes.extend_from_slice(part);
        }
        for part in [1_u16, 1] {
            bytes.extend_from_slice(&part.to_le_bytes());
        }
        bytes.extend_from_slice(&48_000_u32.to_le_bytes());
        bytes.extend_from_slice(&96_000_u32.to_le_bytes());
        for part in [2_u16, 16] {
            bytes.extend_from_slice(&part.to_le_bytes());
        }
        bytes.extend_from_slice(b"data");
        bytes.extend_from_slice(&data.to_le_bytes());
        for sample in samples {
            bytes.extend_from_slice(&sample.to_le_bytes());
        }
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn a_panicking_decoder_ends_only_its_own_source() {
        let dir = std::env::temp_dir().join(format!("quaver-panic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tone.wav");
        write_tone(&path);
        let (engine, mut mixer) = Engine::manual(EngineConfig::default()).unwrap();
        let (broken_call, mut broken_frames) = engine.create_call().unwrap();
        let (call, mut frames) = engine.create_call().unwrap();
        let options = FileOptions {
            read_ahead: Duration::from_millis(200),
            ..FileOptions::default()
        };
        let broken = engine.play_file(broken_call, &path, options).unwrap();
        let healthy = engine.play_file(call, &path, options).unwrap();
        // The first decoder's next pump panics, as a decoder bug on a hostile file would.
        lock(&engine.inner.decoders)[0].panic_on_pump = true;
        let mut events = Vec::new();
        for _ in 0..70 {
            engine.housekeep();
            mixer.tick();
            while broken_frames.discard() {}
            while frames.discard() {}
            events.extend(engine.events().try_iter());
        }
        let reported = events.iter().any(|event| {
            matches!(event, Event::SourceError { source, error, .. }
                if *source == broken.id()
                    && matches!(**error, Error::Input { error: InputError::DecoderPanicked, .. }))
        });
        assert!(reported, "{events:?}");
        assert!(events.contains(&Event::SourceEnded {
            call: broken_call,
            source: broken.id(),
            reason: EndReason::Failed,
        }));
        // The other call's file played to its end, its decoder pumped all along on the same
        // worker (its 200 ms read-ahead needed refilling throughout).
        assert!(events.contains(&Event::SourceEnded {
            call,
            source: healthy.id(),
            reason: EndReason::Finished,
        }));
        assert_eq!(healthy.stats().frames_mixed, 50);
        assert_eq!(healthy.stats().underruns, 0);
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[cfg(test)]
mod overload_tests {
    use std::time::Duration;

    use super::*;

    const BUSY: Duration = Duration::from_millis(16);
    const IDLE: Duration = Duration::from_millis(1);

    /// `count` calls, each playing a live source that has nothing to say yet: they tick
    /// (idle calls would not) and encode its silence.
    pub(super) fn calls_with_a_source(
        engine: &Engine,
        count: usize,
    ) -> (Vec<CallId>, Vec<PcmWriter>) {
        (0..count)
            .map(|_| {
                let (call, _) = engine.create_call().unwrap(); // invariant: below the call limit
                let (_, writer) = engine.push_source(call, PcmFormat::STEREO_48K).unwrap(); // invariant: the call exists
                (call, writer)
            })
            .unzip()
    }

    #[test]
    fn overload_lowers_the_newest_calls_first_and_room_raises_the_oldest_first() {
        let (engine, mut mixer) = Engine::manual(EngineConfig::default()).unwrap(); // invariant: default config is valid
        let (calls, _writers) = calls_with_a_source(&engine, 16);
        mixer.tick(); // takes the calls in
        assert_eq!(mixer.govern(BUSY), 0, "manual mixers have no governor");
        mixer.set_adaptive_complexity(true);

        // Three overloaded ticks: an eighth of the calls (2), the newest, step down.
        assert_eq!(mixer.govern(BUSY) + mixer.govern(BUSY), 0);
        assert_eq!(mixer.govern(BUSY), 2);
        assert_eq!(mixer.complexities(), {
            let mut expected = vec![10; 14];
            expected.extend([8, 8]);
            expected
        });
        let stats = engine.stats();
        assert_eq!((stats.complexity_steps_down, stats.calls_lowered), (2, 2));

        // Still overloaded after settling: the same newest calls go further down before any
        // older call is touched.
        let moved: usize = (0..13).map(|_| mixer.govern(BUSY)).sum();
        assert_eq!(moved, 2);
        assert_eq!(&mixer.complexities()[12..], &[10, 10, 5, 5]);
        assert_eq!(engine.stats().calls_lowered, 2);

        // A lowered call that leaves is no longer counted.
        engine.remove_call(calls[15]).unwrap(); // invariant: the call exists
        mixer.tick();
        assert_eq!(engine.stats().calls_lowered, 1);

        // Five calm seconds: the oldest lowered call comes back up a step (15 calls: batch 1).
        let moved: usize = (0..260).map(|_| mixer.govern(IDLE)).sum();
        assert_eq!(moved, 1);
        assert_eq!(&mixer.complexities()[11..], &[10, 10, 10, 8]);
        assert_eq!(engine.stats().complexity_steps_up, 1);
        assert_eq!(engine.stats().calls_lowered, 1);
    }
}

#[cfg(test)]
mod phase_tests {
    use std::time::Duration;

    use super::*;

    /// Calls are built in the order their packets are due, joining order within a phase; a
    /// call whose phase changes moves, and one that joins later finds its place.
    #[test]
    fn calls_are_built_in_phase_order() {
        let (engine, mut mixer) = Engine::manual(EngineConfig::default()).unwrap(); // invariant: default config is valid
        let (calls, mut writers) = overload_tests::calls_with_a_source(&engine, 4);
        let ms = Duration::from_millis;
        for (call, phase) in calls.iter().zip([ms(4), ms(0), ms(2), ms(0)]) {
            engine.set_call_phase(*call, phase).unwrap(); // invariant: the call exists
        }
        mixer.tick();
        assert_eq!(
            mixer.build_order(),
            [calls[1], calls[3], calls[2], calls[0]]
        );

        engine.set_call_phase(calls[0], ms(0)).unwrap(); // invariant: the call exists
        let (late, later_writers) = overload_tests::calls_with_a_source(&engine, 1);
        writers.extend(later_writers);
        let late = late[0];
        engine.set_call_phase(late, ms(1)).unwrap(); // invariant: the call exists
        // Out of range: kept at the end of the period.
        engine.set_call_phase(calls[3], ms(500)).unwrap(); // invariant: the call exists
        mixer.tick();
        assert_eq!(
            mixer.build_order(),
            [calls[0], calls[1], late, calls[2], calls[3]]
        );
        // Idle calls do not tick; one that gets a source comes back in its phase's place.
        let (idle, _) = engine.create_call().unwrap(); // invariant: below the call limit
        engine.set_call_phase(idle, ms(2)).unwrap(); // invariant: the call exists
        mixer.tick();
        assert_eq!(
            mixer.build_order(),
            [calls[0], calls[1], late, calls[2], calls[3]]
        );
        let (_, writer) = engine.push_source(idle, PcmFormat::STEREO_48K).unwrap(); // invariant: the call exists
        writers.push(writer);
        mixer.tick();
        assert_eq!(
            mixer.build_order(),
            [calls[0], calls[1], late, calls[2], idle, calls[3]]
        );
        assert!(matches!(
            engine.set_call_phase(CallId(999), ms(2)),
            Err(Error::NoSuchCall(_))
        ));
    }
}

#[cfg(test)]
mod rush_tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// A frame that would be ready after its packet is due is encoded at the lowest
    /// complexity for that tick only; with time to spare nothing is rushed, and without the
    /// governor (manual mixers) never.
    #[test]
    fn frames_that_would_be_late_are_rushed_and_only_those() {
        let (engine, mut mixer) = Engine::manual(EngineConfig::default()).unwrap(); // invariant: default config is valid
        let mut writers = Vec::new();
        for _ in 0..3 {
            let (call, frames) = engine.create_call().unwrap(); // invariant: below the call limit
            let (_, writer) = engine.push_source(call, PcmFormat::STEREO_48K).unwrap(); // invariant: the call exists
            writers.push((writer, frames));
        }
        let tone: Vec<f32> = (0..1_920).map(|i| (i as f32 * 0.05).sin() * 0.3).collect();
        let feed = |writers: &mut Vec<(PcmWriter, FrameReceiver)>| {
            for (writer, frames) in writers.iter_mut() {
                writer.write_f32(&tone).unwrap(); // invariant: the ring has room for a frame
                while frames.discard() {}
            }
        };
        let rushed = |engine: &Engine| engine.stats().frames_rushed;

        feed(&mut writers);
        mixer.run_tick_due(
            mixer.next_tick(),
            Some(Instant::now() - Duration::from_secs(1)),
        );
        assert_eq!(rushed(&engine), 0, "manual mixers have no governor");

        mixer.set_adaptive_complexity(true);
        feed(&mut writers);
        mixer.run_tick_due(
            mixer.next_tick(),
            Some(Instant::now() + Duration::from_secs(10)),
        );
        assert_eq!(rushed(&engine), 0, "time to spare");

        feed(&mut writers);
        mixer.run_tick_due(
            mixer.next_tick(),
            Some(Instant::now() - Duration::from_secs(1)),
        );
        assert_eq!(rushed(&engine), 3, "every frame would be late");
        // Only for that tick: the calls keep their complexity.
        assert_eq!(mixer.complexities(), [10, 10, 10]);
    }
}

#[cfg(test)]
mod rebalance_tests {
    use std::time::Duration;

    use super::*;
    use crate::frame::FrameKind;

    #[test]
    fn a_call_moves_to_the_idle_mixer_without_a_missing_or_doubled_frame() {
        let (engine, mut mixers) = Engine::build(EngineConfig::default(), 2).unwrap(); // invariant: default config is valid
        let (busy, mut frames) = engine.create_call().unwrap(); // invariant: below the limit
        let (_other, _other_frames) = engine.create_call().unwrap(); // invariant: below the limit
        let (_idle_on_busy, _f) = engine.create_call().unwrap(); // invariant: below the limit
        assert_eq!(engine.inner.mixer_of(busy), Some(0));
        let (_tone, mut writer) = engine.push_source(busy, PcmFormat::STEREO_48K).unwrap(); // invariant: the call exists
        let mut ticks = Vec::new();
        let mut tick_both = |engine: &Engine| {
            engine.housekeep();
            for mixer in &mut mixers {
                mixer.tick();
            }
            // 20 ms of audio per tick keeps the source playing.
            let _ = writer.write_f32(&[0.1; 1_920]);
            while let Some(frame) = frames.pop() {
                if frame.kind == FrameKind::Audio {
                    ticks.push(frame.tick);
                }
            }
        };
        for _ in 0..5 {
            tick_both(&engine);
        }
        // Mixer 0 is overloaded, mixer 1 idle: the housekeeping asks for the busy call to move.
        engine.inner.mixers[0].load.set(Duration::from_millis(16));
        engine.inner.mixers[1].load.set(Duration::from_millis(1));
        engine.housekeep();
        assert!(
            lock(&engine.inner.table).moving.contains_key(&busy),
            "a move was asked for"
        );
        // A command sent while the call is in flight waits, then follows it.
        let (second, mut second_writer) = engine.push_source(busy, PcmFormat::STEREO_48K).unwrap(); // invariant: the call exists
        second_writer.write_f32(&[0.1; 1_920 * 20]).unwrap(); // invariant: the source is alive
        for _ in 0..10 {
            tick_both(&engine);
        }
        assert_eq!(
            engine.inner.mixer_of(busy),
            Some(1),
            "the call now runs on mixer 1"
        );
        assert!(lock(&engine.inner.table).moving.is_empty());
        assert_eq!(lock(&engine.inner.table).calls_per_mixer, [1, 2]);
        assert!(
            second.stats().frames_mixed > 0,
            "the held command reached mixer 1"
        );
        assert!(ticks.len() >= 14, "{ticks:?}");
        assert!(
            ticks.windows(2).all(|w| w[1] == w[0] + 1),
            "one frame per tick across the move: {ticks:?}"
        );
    }
}
