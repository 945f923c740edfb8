//! Quaver's audio engine: turns many audio sources into a stream of 20 ms Opus frames per call,
//! on a dedicated real-time mixer thread.

pub mod frame;

pub use frame::{
    EncodedFrame, FRAME_DURATION, FRAME_SAMPLES, FrameKind, FrameReceiver, Grid, MAX_OPUS_PACKET,
};
