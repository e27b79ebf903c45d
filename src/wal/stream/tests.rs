//! Tests of the stream writer.
