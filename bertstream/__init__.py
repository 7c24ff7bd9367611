"""The tools around the bertstream runtime: the command line, the demo, the benchmark, the soak
and the embedded services for development. Nothing in `worker` or `pipelines` imports them."""
