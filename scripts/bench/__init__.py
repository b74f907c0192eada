"""Strata's benchmark (run it with scripts/bench.sh; `python -m bench --help` for options).

* `cli`: the command line and the benchmark run (`main`, `run_benchmark`);
* `phases`: produce throughput, tail read, latency, catch-up read; `txn`: the --txn phases;
* `soak`: --soak; `idle`: --idle-latency;
* `workers`: the producer and consumer processes (spawned; confluent-kafka);
* `loadgen`: strata-loadgen (tools/loadgen), which drives the produce, tail and catch-up
  phases with --loadgen rust (the default once built);
* `machine`: disk and loopback probes; `topics`: topics, ACLs, watermarks;
* `broker`: the harness's broker (tests/harness) as the benchmark starts it;
* `report`: figure output, units, stats.json and store reads.
"""
