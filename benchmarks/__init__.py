"""Benchmarks: side-by-side ratios of the service against its limits (`make bench`, BENCHMARKS.md)."""
