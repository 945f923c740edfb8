//! The example tracks `quaver demo` plays, inside the binary: a `quaver` copied or installed
//! anywhere (`cargo install --path tools`) runs the demo from any directory, with no source
//! tree beside it. The engine plays files, so they are written to a private temporary
//! directory for the run and removed after it.

use std::path::{Path, PathBuf};

use crate::Error;

/// Name and bytes of each example track (about 180 kB together).
const TRACKS: [(&str, &[u8]); 3] = [
    ("bass.mp3", include_bytes!("../tracks/bass.mp3")),
    ("beat.flac", include_bytes!("../tracks/beat.flac")),
    ("chords.ogg", include_bytes!("../tracks/chords.ogg")),
];

/// The example tracks written out for one run; the files go when this is dropped.
#[derive(Debug)]
pub struct BundledTracks {
    dir: PathBuf,
    paths: Vec<PathBuf>,
}

impl BundledTracks {
    /// Writes the tracks into a new directory of the system's temporary directory.
    pub fn extract() -> Result<Self, Error> {
        Self::extract_into(&std::env::temp_dir())
    }

    /// Writes the tracks into a new directory inside `parent`.
    pub fn extract_into(parent: &Path) -> Result<Self, Error> {
        // The process ID keeps two demos apart; a stale directory of a dead process with the
        // same ID is simply written over.
        let dir = parent.join(format!("quaver-demo-tracks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut tracks = Self {
            dir,
            paths: Vec::new(),
        };
        for (name, bytes) in TRACKS {
            let path = tracks.dir.join(name);
            std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
            tracks.paths.push(path);
        }
        Ok(tracks)
    }

    /// The files, in a fixed order.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }
}

impl Drop for BundledTracks {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tracks_are_written_whole_and_removed_afterwards() {
        let parent = std::env::temp_dir().join(format!("quaver-bundled-{}", std::process::id()));
        std::fs::create_dir_all(&parent).unwrap();
        let tracks = BundledTracks::extract_into(&parent).unwrap();
        assert_eq!(tracks.paths().len(), 3);
        for path in tracks.paths() {
            crate::media::check(path).unwrap();
        }
        let dir = tracks.dir.clone();
        drop(tracks);
        assert!(!dir.exists());
        std::fs::remove_dir_all(parent).ok();
    }
}
