"""augur's Python tooling, one package (python/augur_tools/, tests in python/tests/).

    envoy/      the real Envoy on loopback: config builder (envoyconf), admin
                client (admin), processes, listeners' client, Prometheus
                (harness), the demo upstream app (upstream)
    records     decision records from the access log: reading, cells, arms, KPIs
    augur_stats the filter's always-valid sequential tests, in SciPy
    loop/       train a model (train), retrain and push it through ECDS
                (retrain, uplift), the A/B report (report), the fleet
                controller (controller)
    sim/        synthetic traffic (synthetic) and planted worlds (planted)
    demos/      make demo / loop-demo / fleet-demo / soak, the decide report
    bench/      make bench-e2e: workload, measure, report
    fixtures    the model fixtures (make fixtures) and their onnxruntime outputs
    image       the filter as a Wasm OCI image (make image)
    paths       where the checkout's files and binaries are

Run a tool as a module, e.g. `.venv/bin/python -m augur_tools.loop.retrain --help`.
"""
