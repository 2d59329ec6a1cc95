//! Backing store of a volume (being built).
