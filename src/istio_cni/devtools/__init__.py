"""Developer and test tooling (never imported by the plugin): a libcni-like chain runner
and network-namespace helpers used by ``make demo``, the tests and the benchmarks."""
