//! Library side of the `quaver` command, so tests and benches can reuse its pieces.
