//! Quaver's packet half of a voice connection (work in progress): RTP headers, transport
//! encryption (`aead_aes256_gcm_rtpsize`, `aead_xchacha20_poly1305_rtpsize`), IP discovery and
//! keepalives, receive-side parsing, and the sender thread that drains every call's frame queue
//! ([`quaver_engine::FrameReceiver`]) and sends sealed packets on the absolute 20 ms grid.
