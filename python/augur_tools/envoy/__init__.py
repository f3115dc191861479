"""The real Envoy on loopback: config builder, admin client, processes, demo upstream."""
