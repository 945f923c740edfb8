//! The local server's DAVE parsers: op 26 (key package validation) and op 28 (commit framing
//! and the commit/welcome split). Garbage must give an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quaver_tools::server::dave;

fuzz_target!(
    init: {
        // openmls 0.8.3 panics on some malformed key packages (a slice out of range in
        // `Extensions::tls_deserialize_bytes`); `dave::untrusted` catches that and refuses the
        // message (regression test: `a_key_package_that_panicked_openmls_is_refused`). Every
        // other panic still aborts the run as a crash.
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let known = info.location().is_some_and(|l| {
                l.file().contains("openmls") && l.file().ends_with("extensions/mod.rs")
            });
            if !known {
                abort(info);
            }
        }));
    },
    |data: &[u8]| {
        let user = data
            .get(..8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_be_bytes);
        let _ = dave::parse_key_package(data, user);
        let _ = dave::parse_commit(data);
        if let Ok(cw) = dave::parse_commit_welcome(data) {
            // A split that succeeded must cover the input exactly.
            let welcome = cw.welcome.as_deref().unwrap_or_default();
            assert_eq!(cw.commit.len() + welcome.len(), data.len());
        }
    }
);
