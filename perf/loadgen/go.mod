module payorch/perf/loadgen

go 1.26
