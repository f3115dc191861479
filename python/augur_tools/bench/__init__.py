"""The end-to-end benchmark (make bench-e2e): workload, measure, report."""
