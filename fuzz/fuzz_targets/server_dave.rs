//! The local server's DAVE parsers: op 26 (key package validation) and op 28 (commit framing
//! and the commit/welcome split). Garbage must give an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quaver_tools::server::dave;

fuzz_target!(
    init: {
        // openmls 0.8.3 panics on some malformed input (`tls_deserialize_bytes` slices out of
        // range when its re-serialisation disagrees with the input; the parsers no longer use
        // it). Every openmls call on network bytes runs under `dave::untrusted`, which turns a
        // panic into an error, so a panic inside openmls is contained by design (regression
        // test: `inputs_that_panicked_openmls_are_refused`). Every other panic still aborts the
        // run as a crash.
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let known = info
                .location()
                .is_some_and(|l| l.file().contains("/openmls-"));
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
