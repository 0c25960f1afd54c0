//! `intxd bench` (issue 6).
