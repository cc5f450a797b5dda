//! SPDY/3.1: framing, header compression, stream multiplexer. (Being written.)
