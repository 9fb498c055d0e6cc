"""Spark Structured Streaming pieces: the local Kinesis source (`kinesis_source`)."""
