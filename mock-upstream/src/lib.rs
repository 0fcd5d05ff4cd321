//! Mock upstream.
