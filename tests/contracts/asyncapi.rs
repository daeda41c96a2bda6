//! `warren asyncapi` (filled in below).
