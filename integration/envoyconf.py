"""Envoy configurations for augur, built in one place.

The demo configuration committed as `envoy/envoy.yaml` and every configuration
the integration tests start are produced by the functions below, so what the
tests prove is what the demo and users run.

    python integration/envoyconf.py > envoy/envoy.yaml     # re-render the demo config
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_PLUGIN_CONFIG = ROOT / "envoy" / "augur-demo.json"
DEMO_WASM = "target/augur.wasm"

# Labels cut out of wasm stat names (`augur_x.label.value...`) by Envoy's tag
# extraction: the first group is removed from the name, the second is the value.
STAT_LABELS = ["rollout", "stack", "class", "feature", "state", "reason"]

# The access-log line: augur's decision record next to Envoy's own view of the
# outcome. Lines whose "decision" is `-` come from requests the filter never saw
# (rejected by Envoy before the filter chain) and are not JSON; readers skip them.
ACCESS_LOG_FORMAT = (
    '{"decision":%FILTER_STATE(wasm.augur_decision:PLAIN)%,'
    '"status":%RESPONSE_CODE%,"duration_ms":%DURATION%,'
    '"upstream_ms":"%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",'
    '"cluster":"%UPSTREAM_CLUSTER%","flags":"%RESPONSE_FLAGS%","start":"%START_TIME%"}\n'
)


def stats_config():
    tags = [
        {
            "tag_name": label,
            "regex": r"^wasmcustom\.augur_[a-z_]+(?:\.[^.]+\.[^.]+)*?(\.%s\.([^.]+))(?:\.|$)" % label,
        }
        for label in STAT_LABELS
    ]
    return {
        "stats_tags": tags,
        "histogram_bucket_settings": [
            {
                "match": {"prefix": "wasmcustom.augur_feature_score"},
                "buckets": [10, 20, 30, 40, 50, 60, 70, 80, 90, 100],
            },
            {
                "match": {"prefix": "wasmcustom.augur_latency_ms"},
                "buckets": [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000],
            },
        ],
    }


def wasm_filter(plugin_config, wasm_path, failure_policy="FAIL_CLOSED"):
    """The augur HTTP filter. `plugin_config` is a dict (serialised) or a raw string."""
    value = plugin_config if isinstance(plugin_config, str) else json.dumps(plugin_config, indent=2)
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "augur",
                "root_id": "augur",
                "vm_config": {
                    # Same vm_id and code → every listener shares one VM per worker.
                    "vm_id": "augur",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(wasm_path)}},
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": value,
                },
                # A failed VM must not let requests through unfiltered: the route
                # table would then see client-sent control headers.
                "failure_policy": failure_policy,
            },
        },
    }


def route_config(stack_header="x-augur-stack", old="old", new="new"):
    """Envoy's own route table picks the cluster from the header augur wrote.
    Anything that is not exactly the new stack goes to the old one."""
    return {
        "name": "augur_routes",
        "virtual_hosts": [
            {
                "name": "app",
                "domains": ["*"],
                "routes": [
                    {
                        "name": "new_stack",
                        "match": {
                            "prefix": "/",
                            "headers": [{"name": stack_header, "string_match": {"exact": new}}],
                        },
                        "route": {"cluster": "new_stack"},
                    },
                    {"name": "old_stack", "match": {"prefix": "/"}, "route": {"cluster": "old_stack"}},
                ],
            }
        ],
    }


def listener(name, port, plugin_config, wasm_path, access_log_path):
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network."
                            "http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": name,
                            "access_log": [
                                {
                                    "name": "augur_decisions",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.access_loggers."
                                        "file.v3.FileAccessLog",
                                        "path": str(access_log_path),
                                        "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}},
                                    },
                                }
                            ],
                            "route_config": route_config(),
                            "http_filters": [
                                wasm_filter(plugin_config, wasm_path),
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                                    },
                                },
                            ],
                        },
                    }
                ]
            }
        ],
    }


def cluster(name, port):
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}
            ],
        },
    }


def bootstrap(admin_port, listeners, old_port, new_port):
    return {
        # node is required for dynamic (ECDS) filter configuration.
        "node": {"id": "augur", "cluster": "augur"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "stats_config": stats_config(),
        "static_resources": {
            "listeners": listeners,
            "clusters": [cluster("old_stack", old_port), cluster("new_stack", new_port)],
        },
    }


def demo(wasm_path=DEMO_WASM, access_log_path=".run/decisions.log"):
    """The committed demo configuration (ports 10000, admin 9901, upstreams 18081/18082)."""
    plugin = DEMO_PLUGIN_CONFIG.read_text()
    return bootstrap(
        admin_port=9901,
        listeners=[listener("augur", 10000, plugin, wasm_path, access_log_path)],
        old_port=18081,
        new_port=18082,
    )


def to_yaml(config):
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def str_presenter(dumper, data):
        if "\n" not in data:
            style = None
        elif data.count("\n") == 1 and data.endswith("\n"):
            style = '"'
        else:
            style = "|"
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    Dumper.add_representer(str, str_presenter)
    header = (
        "# augur demo: Envoy 1.40 with the augur filter in front of two stacks.\n"
        "# Generated by `python integration/envoyconf.py` from envoy/augur-demo.json;\n"
        "# edit those, not this file. Paths are relative to the repository root.\n"
    )
    return header + yaml.dump(config, Dumper=Dumper, sort_keys=False, width=120, default_flow_style=None)


if __name__ == "__main__":
    sys.stdout.write(to_yaml(demo()))
