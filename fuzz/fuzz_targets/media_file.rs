//! A user's media file, as `quaver play`/`demo`/`render` check it before anything starts:
//! symphonia's probe and demuxer (mp3, FLAC, WAV, Ogg Vorbis …) and the Ogg page walk, on
//! arbitrary bytes. The first byte picks the file name's extension (symphonia's hint). A bad
//! file must be an error naming the problem, never a panic or a hang.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("quaver-fuzz-media-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let ext = ["mp3", "flac", "wav", "ogg", "opus", "bin"][usize::from(pick) % 6];
    let path = dir().join(format!("input.{ext}"));
    std::fs::write(&path, body).expect("scratch file");
    let _ = quaver_tools::media::check(&path);
});
