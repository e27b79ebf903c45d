//! Unit tests of the shard, driven without sockets: feed bytes in, read frames out.
