//! Reaching a separately running `quaver serve` (`--server`, `--ca-cert`): its main-gateway URL
//! and a control-thread configuration that trusts its certificate.

use std::path::Path;

use quaver::gateway::control::ControlConfig;

use crate::Error;

/// The main-gateway URL for `--server`: a bare `host:port` means TLS, as `quaver serve` runs by
/// default (`wss://host:port/?v=10&encoding=json`); an explicit `ws://` or `wss://` URL is kept
/// (`ws://host:port` for a server started with `--plain`).
pub fn main_gateway_url(server: &str) -> String {
    let server = server.trim_end_matches('/');
    let url = if server.contains("://") {
        server.to_string()
    } else {
        format!("wss://{server}")
    };
    if url.contains('?') {
        url
    } else {
        format!("{url}/?v=10&encoding=json")
    }
}

/// A default control-thread configuration, trusting the CA in `ca_cert` (a PEM file, as
/// `quaver serve --cert-out` writes) if given.
pub fn control_config(ca_cert: Option<&Path>) -> Result<ControlConfig, Error> {
    let mut config = ControlConfig::default();
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        config
            .trust_pem(&pem)
            .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            main_gateway_url("127.0.0.1:7878"),
            "wss://127.0.0.1:7878/?v=10&encoding=json"
        );
        assert_eq!(
            main_gateway_url("ws://127.0.0.1:7878"),
            "ws://127.0.0.1:7878/?v=10&encoding=json"
        );
        assert_eq!(
            main_gateway_url("wss://h:1/?v=10&encoding=json"),
            "wss://h:1/?v=10&encoding=json"
        );
    }

    #[test]
    fn a_missing_or_wrong_ca_file_is_an_error() {
        assert!(control_config(None).is_ok_and(|c| c.extra_roots.is_empty()));
        let missing = std::env::temp_dir().join("quaver-no-such-ca.pem");
        assert!(control_config(Some(&missing)).is_err());
        let wrong =
            std::env::temp_dir().join(format!("quaver-wrong-ca-{}.pem", std::process::id()));
        std::fs::write(&wrong, "hello").unwrap();
        assert!(control_config(Some(&wrong)).is_err());
        std::fs::remove_file(wrong).ok();
    }
}
