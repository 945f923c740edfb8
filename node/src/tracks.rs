//! Tracks: resolving an identifier (`/v4/loadtracks`) into a track, and the JSON track object
//! (`{encoded, info, pluginInfo, userData}`) every route and event uses.

use std::fs::File;
use std::path::Path;

use serde_json::{Value, json};
use symphonia::core::formats::TrackType;

use crate::codec::{self, TrackInfo};
use crate::config::Sources;

/// A track as players hold it: its encoding, what it is, and the client's `userData`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Track {
    pub encoded: String,
    pub info: TrackInfo,
    pub user_data: Value,
}

impl Track {
    pub(crate) fn from_encoded(encoded: &str, user_data: Option<Value>) -> Result<Self, String> {
        let info = codec::decode(encoded).map_err(|e| e.to_string())?;
        Ok(Self {
            encoded: encoded.trim().to_owned(),
            info,
            user_data: user_data.unwrap_or_else(|| json!({})),
        })
    }

    /// The track object of the API, at `position` (ms).
    pub(crate) fn to_json(&self, position: Option<u64>) -> Value {
        info_json(&self.encoded, &self.info, &self.user_data, position)
    }
}

/// The API's track object.
pub(crate) fn info_json(
    encoded: &str,
    info: &TrackInfo,
    user_data: &Value,
    position: Option<u64>,
) -> Value {
    json!({
        "encoded": encoded,
        "info": {
            "identifier": info.identifier,
            "isSeekable": !info.is_stream,
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
    /// One track.
    Track(TrackInfo),
    /// No source manager knows the identifier (or the file does not exist).
    Empty,
    /// A source knew it, but loading failed: (message, cause).
    Failed(String, String),
}

/// Resolves `identifier` as Lavalink's local and http source managers would.
pub(crate) fn load(sources: Sources, identifier: &str) -> Loaded {
    let lower = identifier.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        if !sources.http {
            return Loaded::Empty;
        }
        return match quaver::engine::http::Url::parse(identifier) {
            Ok(_) => Loaded::Track(http_track(identifier)),
            Err(e) => Loaded::Failed("Invalid URL".into(), e.to_string()),
        };
    }
    let path = Path::new(identifier);
    if !sources.local || !path.is_file() {
        return Loaded::Empty;
    }
    match probe_length(path) {
        Ok(length) => Loaded::Track(local_track(identifier, path, length)),
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

/// An HTTP track is not fetched while loading (the engine downloads when it plays), so its
/// length is unknown here: reported as 0, not as a stream (the engine seeks it when the
/// server takes range requests).
fn http_track(url: &str) -> TrackInfo {
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
        length: 0,
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
        Loaded::Track(info) => match codec::encode(&info) {
            Ok(encoded) => json!({
                "loadType": "track",
                "data": info_json(&encoded, &info, &json!({}), None),
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
