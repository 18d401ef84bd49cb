"""lockd benchmarks: the locust reboot storm (bench.storm) and the throughput harness."""
