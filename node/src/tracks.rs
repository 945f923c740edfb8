//! Tracks: resolving an identifier (`/v4/loadtracks`) into a track, and the JSON track object
//! (`{encoded, info, pluginInfo, userData}`) every route and event uses.

use std::fs::File;
use std::path::Path;

use serde_json::{Value, json};
use symphonia::core::formats::TrackType;

use quaver::engine::{HttpOptions, UrlProbe};

use crate::codec::{self, TrackInfo};
use crate::config::NodeConfig;

/// A track as players hold it: its encoding, what it is, and the client's `userData`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Track {
    pub encoded: String,
    pub info: TrackInfo,
    pub user_data: Value,
    /// Whether it can seek, when known better than "not a stream" (the encoding has no room
    /// for it): from the HTTP probe at loading, or from the source once it plays.
    pub seekable: Option<bool>,
}

impl Track {
    pub(crate) fn from_encoded(encoded: &str, user_data: Option<Value>) -> Result<Self, String> {
        let info = codec::decode(encoded).map_err(|e| e.to_string())?;
        Ok(Self {
            encoded: encoded.trim().to_owned(),
            info,
            user_data: user_data.unwrap_or_else(|| json!({})),
            seekable: None,
        })
    }

    /// The track object of the API, at `position` (ms).
    pub(crate) fn to_json(&self, position: Option<u64>) -> Value {
        info_json(
            &self.encoded,
            &self.info,
            &self.user_data,
            position,
            self.seekable,
        )
    }
}

/// The API's track object. `isSeekable` is `seekable` when known, else (as Lavalink has it)
/// whether the track is not a stream.
pub(crate) fn info_json(
    encoded: &str,
    info: &TrackInfo,
    user_data: &Value,
    position: Option<u64>,
    seekable: Option<bool>,
) -> Value {
    json!({
        "encoded": encoded,
        "info": {
            "identifier": info.identifier,
            "isSeekable": seekable.unwrap_or(!info.is_stream),
            "author": info.author,
            "length": info.length,
            "isStream": info.is_stream,
            "position": position.map_or(info.position, |p| p as i64),
            "title": info.title,
            "uri": info.uri,
            "artworkUrl": info.artwork_url,
            "isrc": info.isrc,
            "sourceName": info.source_name,
        },
        "pluginInfo": {},
        "userData": user_data,
    })
}

/// What an identifier resolved to.
#[derive(Debug)]
pub(crate) enum Loaded {
    /// One track, and whether it can seek when that is known beyond "not a stream".
    Track(TrackInfo, Option<bool>),
    /// No source manager knows the identifier (or the file does not exist).
    Empty,
    /// A source knew it, but loading failed: (message, cause).
    Failed(String, String),
}

/// Resolves `identifier` as Lavalink's local and http source managers would. Blocks: a file
/// is probed, a URL requested (see [`http_track`]).
pub(crate) fn load(config: &NodeConfig, identifier: &str) -> Loaded {
    let sources = config.sources;
    let lower = identifier.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        if !sources.http {
            return Loaded::Empty;
        }
        if let Err(e) = quaver::engine::http::Url::parse(identifier) {
            return Loaded::Failed("Invalid URL".into(), e.to_string());
        }
        let options = HttpOptions {
            extra_roots: config.engine.control.extra_roots.clone(),
            ..HttpOptions::default()
        };
        return match quaver::engine::probe_url(identifier, &options) {
            Ok(probe) => Loaded::Track(http_track(identifier, &probe), Some(probe.seekable)),
            // Lavaplayer's words for a URL it cannot play.
            Err(e) => Loaded::Failed("That URL is not playable.".into(), e.to_string()),
        };
    }
    let path = Path::new(identifier);
    if !sources.local || !path.is_file() {
        return Loaded::Empty;
    }
    match probe_length(path) {
        Ok(length) => Loaded::Track(local_track(identifier, path, length), None),
        Err(cause) => Loaded::Failed("Unknown file format.".into(), cause),
    }
}

fn local_track(identifier: &str, path: &Path, length: Option<u64>) -> TrackInfo {
    let title = path.file_name().map_or_else(
        || identifier.to_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    TrackInfo {
        title,
        author: "Unknown artist".into(),
        length: length.map_or(i64::MAX, |l| l as i64),
        identifier: identifier.to_owned(),
        is_stream: length.is_none(),
        uri: Some(identifier.to_owned()),
        source_name: "local".into(),
        ..TrackInfo::default()
    }
}

/// An HTTP track, after the engine's probe read the response's head and the container's
/// headers (the engine downloads the audio when it plays): its length when the server states
/// the resource's size and the container its duration; otherwise length 0 and a stream, since
/// nothing honest can be said of how long it plays.
fn http_track(url: &str, probe: &UrlProbe) -> TrackInfo {
    let title = url
        .rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or(url)
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_owned();
    TrackInfo {
        title,
        author: "Unknown artist".into(),
        length: probe.duration.map_or(0, |d| d.as_millis() as i64),
        is_stream: probe.duration.is_none(),
        identifier: url.to_owned(),
        uri: Some(url.to_owned()),
        source_name: "http".into(),
        ..TrackInfo::default()
    }
}

/// The file's length in ms, `None` when its container does not say.
fn probe_length(path: &Path) -> Result<Option<u64>, String> {
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    let mut start = [0_u8; 64];
    let n = std::io::Read::read(&mut file, &mut start).map_err(|e| e.to_string())?;
    if start[..n].starts_with(b"OggS") && start[..n].windows(8).any(|w| w == b"OpusHead") {
        let file = File::open(path).map_err(|e| e.to_string())?;
        let mut reader =
            quaver::engine::ogg_opus::OggOpusReader::new(std::io::BufReader::new(file))
                .map_err(|e| e.to_string())?;
        return Ok(reader
            .duration()
            .map_err(|e| e.to_string())?
            .map(|d| d.as_millis() as u64));
    }
    let file = File::open(path).map_err(|e| e.to_string())?;
    let reader = quaver::engine::probe_container(path, file).map_err(|e| e.to_string())?;
    let track = reader
        .default_track(TrackType::Audio)
        .ok_or_else(|| "no audio track".to_owned())?;
    Ok(match (track.time_base, track.duration) {
        (Some(base), Some(ticks)) => Some(base.calc_duration_saturating(ticks).as_millis() as u64),
        _ => None,
    })
}

/// The JSON of `/v4/loadtracks` for what `identifier` resolved to.
pub(crate) fn load_result(loaded: Loaded) -> Value {
    match loaded {
        Loaded::Track(info, seekable) => match codec::encode(&info) {
            Ok(encoded) => json!({
                "loadType": "track",
                "data": info_json(&encoded, &info, &json!({}), None, seekable),
            }),
            Err(e) => error_result("The track cannot be encoded", &e.to_string()),
        },
        Loaded::Empty => json!({ "loadType": "empty", "data": {} }),
        Loaded::Failed(message, cause) => error_result(&message, &cause),
    }
}

fn error_result(message: &str, cause: &str) -> Value {
    json!({
        "loadType": "error",
        "data": { "message": message, "severity": "common", "cause": cause },
    })
}
