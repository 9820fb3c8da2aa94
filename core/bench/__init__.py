"""`tally bench`: benchmarks that measure one part of Tally in isolation, and the page they feed."""
