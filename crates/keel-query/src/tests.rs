//! Unit tests for the query language.
