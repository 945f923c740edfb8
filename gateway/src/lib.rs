//! Quaver's signalling half of a voice connection (work in progress): a sans-IO voice gateway v8
//! state machine (with DAVE end-to-end encryption), the main-gateway join flow, and the control
//! thread that drives every call's websocket without blocking on any one of them.
