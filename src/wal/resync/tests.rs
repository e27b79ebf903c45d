//! Tests of `truncate_after` and `wipe`.
