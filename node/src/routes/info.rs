//! `/version`, `/v4/info`, `/v4/stats`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::node::Shared;

/// The node's version, as `/version` answers it (plain text).
pub(crate) async fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// `/v4/info`: Lavalink's shape, plus NodeLink's `isNodelink`.
pub(crate) async fn info(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let version = env!("CARGO_PKG_VERSION");
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor, patch) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    let mut sources = Vec::new();
    if shared.config.sources.local {
        sources.push("local");
    }
    if shared.config.sources.http {
        sources.push("http");
    }
    Json(json!({
        "version": {
            "semver": version,
            "major": major,
            "minor": minor,
            "patch": patch,
            "preRelease": null,
            "build": null,
        },
        "buildTime": 0,
        "git": { "branch": "", "commit": "", "commitTime": 0 },
        "jvm": "none (Quaver, Rust)",
        "lavaplayer": "none (Quaver engine)",
        // NodeLink's marker: client libraries that support NodeLink's mix routes (which this
        // node serves) offer them only to a node whose info says `isNodelink`.
        "isNodelink": true,
        "sourceManagers": sources,
        "filters": ["volume"],
        "plugins": [],
    }))
}

/// The stats object (`frameStats` null, as Lavalink's REST route has it).
pub(crate) fn stats(shared: &Shared) -> Value {
    let (players, playing) = {
        let state = shared.lock();
        let mut players = 0;
        let mut playing = 0;
        for session in state.sessions.values() {
            for player in session.players.values() {
                players += 1;
                let running = player.track.as_ref().is_some_and(|t| t.handle.is_some());
                if running && !player.paused && shared.connected(player.call) {
                    playing += 1;
                }
            }
        }
        (players, playing)
    };
    let mut sampler = shared.sampler.lock().unwrap_or_else(|p| p.into_inner());
    crate::stats::stats_json(&mut sampler, shared.started.elapsed(), players, playing)
}

pub(crate) async fn stats_route(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(stats(&shared))
}
