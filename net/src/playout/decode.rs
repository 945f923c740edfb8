//! libopus's side: one decoder per stream turning each [`Next`] into 20 ms of PCM, by decoding,
//! in-band FEC or packet-loss concealment.

use audiopus::coder::{Decoder, GenericCtl};
use audiopus::packet::Packet;
use audiopus::{Channels, MutSignals, SampleRate};

use super::opus_packet::{self, SAMPLES_PER_PACKET};
use super::{DecodeFailure, Next, PlayoutError, Rendered};

/// Interleaved samples in one rendered frame: 960 per channel × 2 channels (48 kHz stereo).
pub const PCM_SAMPLES: usize = 1920;

/// The Opus decoder of one stream (48 kHz stereo).
#[derive(Debug)]
pub struct StreamDecoder {
    decoder: Decoder,
}

impl StreamDecoder {
    /// Creates the decoder (libopus allocates here, never in [`render`](Self::render)).
    pub fn new() -> Result<Self, PlayoutError> {
        Ok(Self {
            decoder: Decoder::new(SampleRate::Hz48000, Channels::Stereo)?,
        })
    }

    /// Forgets the decoder's history (a new sender on the stream: [`super::Pushed::Restarted`]).
    pub fn reset(&mut self) {
        // OPUS_RESET_STATE cannot fail on a valid decoder; a failure would leave the old history,
        // which is harmless.
        let _ = self.decoder.reset_state();
    }

    /// Renders `next` into `out` (20 ms of 48 kHz interleaved stereo):
    /// * [`Next::Packet`]: decoded; a packet libopus refuses becomes PLC
    ///   ([`Rendered::Failed`]);
    /// * [`Next::Missing`] whose `fec` packet carries LBRR data: rebuilt from it
    ///   ([`Rendered::FecRecovered`]); otherwise PLC ([`Rendered::Concealed`]);
    /// * [`Next::Idle`]: zeroed ([`Rendered::Idle`]).
    ///
    /// Never allocates and never panics.
    pub fn render(&mut self, next: &Next<'_>, out: &mut [i16; PCM_SAMPLES]) -> Rendered {
        match *next {
            Next::Idle => {
                out.fill(0);
                Rendered::Idle
            }
            Next::Packet { opus, .. } => match opus_packet::parse(opus) {
                Err(_) => self.fail(DecodeFailure::Malformed, out),
                Ok(info) if info.samples != SAMPLES_PER_PACKET => {
                    self.fail(DecodeFailure::WrongDuration, out)
                }
                Ok(_) => {
                    if self.decode(Some(opus), false, out) {
                        Rendered::Decoded
                    } else {
                        self.fail(DecodeFailure::Codec, out)
                    }
                }
            },
            Next::Missing { fec, .. } => {
                let usable = fec.filter(|bytes| {
                    opus_packet::parse(bytes)
                        .is_ok_and(|info| info.has_lbrr && info.samples == SAMPLES_PER_PACKET)
                });
                match usable {
                    Some(bytes) if self.decode(Some(bytes), true, out) => Rendered::FecRecovered,
                    _ => {
                        self.conceal(out);
                        Rendered::Concealed
                    }
                }
            }
        }
    }

    fn fail(&mut self, why: DecodeFailure, out: &mut [i16; PCM_SAMPLES]) -> Rendered {
        self.conceal(out);
        Rendered::Failed(why)
    }

    /// libopus's PLC for one 20 ms frame; silence if even that fails.
    fn conceal(&mut self, out: &mut [i16; PCM_SAMPLES]) {
        if !self.decode(None, false, out) {
            out.fill(0);
        }
    }

    /// Decodes exactly 960 samples per channel into `out`; false (and `out` unspecified) if
    /// libopus fails or returns another length.
    fn decode(&mut self, opus: Option<&[u8]>, fec: bool, out: &mut [i16; PCM_SAMPLES]) -> bool {
        let packet = match opus.map(Packet::try_from) {
            None => None,
            Some(Ok(packet)) => Some(packet),
            Some(Err(_)) => return false,
        };
        let Ok(signals) = MutSignals::try_from(&mut out[..]) else {
            return false;
        };
        matches!(
            self.decoder.decode(packet, signals, fec),
            Ok(n) if n == SAMPLES_PER_PACKET as usize
        )
    }
}
