//! A minimal streaming WAV writer: 48 kHz, stereo, 16-bit PCM. The header is rewritten with the
//! final sizes on `finish` (and on drop), so a crash leaves a file most players still open.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const SAMPLE_RATE: u32 = 48_000;
const CHANNELS: u16 = 2;
const BITS: u16 = 16;
const HEADER_LEN: u32 = 44;

/// Writes interleaved i16 stereo samples to a WAV file.
#[derive(Debug)]
pub struct WavWriter {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    data_bytes: u32,
}

fn header(data_bytes: u32) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    let block_align = CHANNELS * BITS / 8;
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&(36 + data_bytes).to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
    h[22..24].copy_from_slice(&CHANNELS.to_le_bytes());
    h[24..28].copy_from_slice(&SAMPLE_RATE.to_le_bytes());
    h[28..32].copy_from_slice(&(SAMPLE_RATE * u32::from(block_align)).to_le_bytes());
    h[32..34].copy_from_slice(&block_align.to_le_bytes());
    h[34..36].copy_from_slice(&BITS.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_bytes.to_le_bytes());
    h
}

impl WavWriter {
    /// Creates (truncates) `path` and writes a provisional header.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let mut out = BufWriter::new(File::create(path)?);
        out.write_all(&header(0))?;
        Ok(WavWriter {
            path: path.to_path_buf(),
            out: Some(out),
            data_bytes: 0,
        })
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends interleaved stereo samples. Stops growing at the 4 GiB WAV limit.
    pub fn write(&mut self, samples: &[i16]) -> std::io::Result<()> {
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        let bytes = (samples.len() * 2) as u32;
        if self.data_bytes.checked_add(bytes + HEADER_LEN).is_none() {
            return Ok(());
        }
        for s in samples {
            out.write_all(&s.to_le_bytes())?;
        }
        self.data_bytes += bytes;
        Ok(())
    }

    /// Writes the final header and closes the file.
    pub fn finish(&mut self) -> std::io::Result<()> {
        let Some(mut out) = self.out.take() else {
            return Ok(());
        };
        out.flush()?;
        let mut file = out.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&header(self.data_bytes))?;
        file.flush()
    }

    /// Rewrites the header with the sizes so far without closing (so a running recording can
    /// be read by a test).
    pub fn sync(&mut self) -> std::io::Result<()> {
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        out.flush()?;
        let file = out.get_mut();
        let end = file.stream_position()?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&header(self.data_bytes))?;
        file.seek(SeekFrom::Start(end))?;
        Ok(())
    }
}

impl Drop for WavWriter {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Reads a WAV file written by [`WavWriter`] (or any 16-bit PCM WAV with a plain 44-byte
/// header) back into interleaved samples; for tests and reports.
pub fn read_wav_i16(path: &Path) -> std::io::Result<(u16, u32, Vec<i16>)> {
    let bytes = std::fs::read(path)?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    if bytes.len() < HEADER_LEN as usize || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(bad("not a RIFF/WAVE file"));
    }
    let channels = u16::from_le_bytes([bytes[22], bytes[23]]);
    let rate = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
    let bits = u16::from_le_bytes([bytes[34], bytes[35]]);
    if bits != 16 || &bytes[36..40] != b"data" {
        return Err(bad("not 16-bit PCM with a plain header"));
    }
    let samples = bytes[HEADER_LEN as usize..]
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    Ok((channels, rate, samples))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let dir = std::env::temp_dir().join(format!("quaver-wav-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        let path = dir.join("t.wav");
        let mut w = WavWriter::create(&path).expect("create wav");
        w.write(&[1, -1, 2, -2]).expect("write");
        w.sync().expect("sync");
        assert_eq!(read_wav_i16(&path).expect("read").2, vec![1, -1, 2, -2]);
        w.write(&[3, -3]).expect("write");
        w.finish().expect("finish");
        let (ch, rate, s) = read_wav_i16(&path).expect("read");
        assert_eq!((ch, rate, s), (2, 48_000, vec![1, -1, 2, -2, 3, -3]));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
