//! davey (and openmls under it) on bytes from the other side of the connection.

/// Why davey refused a message.
#[derive(Debug)]
pub enum Refused<E> {
    /// It said so.
    Error(E),
    /// It panicked: openmls 0.8.3 slices out of range on some malformed extensions (the local
    /// server's mutation test hit it with a key package). The session may be half-updated, so
    /// the caller starts a new one.
    Panicked,
}

impl<E: std::fmt::Display> std::fmt::Display for Refused<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Error(e) => e.fmt(f),
            Refused::Panicked => f.write_str("the MLS library failed on this message"),
        }
    }
}

/// Runs davey on bytes from the network; a panic becomes [`Refused::Panicked`] instead of
/// taking the thread (and any lock it holds) down.
pub fn untrusted<T, E>(f: impl FnOnce() -> Result<T, E>) -> Result<T, Refused<E>> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result.map_err(Refused::Error),
        Err(_) => Err(Refused::Panicked),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_pass_through_and_panics_are_caught() {
        assert!(matches!(untrusted(|| Ok::<u8, &str>(1)), Ok(1)));
        assert!(matches!(
            untrusted(|| Err::<u8, &str>("no")),
            Err(Refused::Error("no"))
        ));
        let caught = untrusted(|| -> Result<u8, &str> { panic!("openmls slice out of range") });
        assert!(matches!(caught, Err(Refused::Panicked)));
        assert_eq!(
            Refused::<&str>::Panicked.to_string(),
            "the MLS library failed on this message"
        );
    }
}
