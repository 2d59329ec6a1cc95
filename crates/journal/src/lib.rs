//! Write-ahead journal (being built).
