"""Envoy configurations for augur, built in one place.

The demo configuration committed as `envoy/envoy.yaml` and every configuration
the integration tests start are produced by the functions below, so what the
tests prove is what the demo and users run.

    python -m augur_tools.envoy.envoyconf > envoy/envoy.yaml     # re-render the demo config
"""

import json
import sys
from pathlib import Path

from augur_tools.paths import ROOT

DEMO_PLUGIN_CONFIG = ROOT / "envoy" / "augur-demo.json"
DEMO_WASM = "target/augur.wasm"

# Labels cut out of wasm stat names (`augur_x.label.value...`) by Envoy's tag
# extraction: the first group is removed from the name, the second is the value.
# `split` is kept for per-split counters (none yet).
STAT_LABELS = ["rollout", "stack", "class", "feature", "segment", "state", "reason", "arm", "outcome", "kind", "split"]
# Labels whose value may contain dots (`le="0.005"`, `model_version="v1.2"`):
# always the last pair of a name, so the value runs to the end.
STAT_LABELS_LAST = ["le", "model_version"]

# The access-log line: augur's decision record next to Envoy's own view of the
# outcome. Lines whose "decision" is `-` come from requests the filter never saw
# (rejected by Envoy before the filter chain) and are not JSON; readers skip them.
ACCESS_LOG_FORMAT = (
    '{"decision":%FILTER_STATE(wasm.augur_decision:PLAIN)%,'
    '"status":%RESPONSE_CODE%,"duration_ms":%DURATION%,'
    '"upstream_ms":"%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",'
    '"signals":"%FILTER_STATE(wasm.augur_outcome:PLAIN)%",'
    '"cluster":"%UPSTREAM_CLUSTER%","flags":"%RESPONSE_FLAGS%","start":"%START_TIME%"}\n'
)


def otel_access_log_fields(rollout):
    """Per-request OpenTelemetry `feature_flag.*` attributes Envoy can fill in
    itself (README "Apps: OpenFeature"), plus augur's per-feature results
    (`x-augur-flags`, which augur sets on the request: `-` on the old stack).
    The values are Envoy command operators: use them as the `attributes` of
    the OpenTelemetry access logger, or as a JSON line (`otel_access_log_format`)."""
    return {
        "feature_flag.provider.name": "augur",
        "feature_flag.set.id": rollout,
        "feature_flag.context.id": "%REQ(X-REQUEST-ID)%",
        "augur.stack": "%REQ(X-AUGUR-STACK)%",
        "augur.flags": "%REQ(X-AUGUR-FLAGS)%",
    }


def otel_access_log_format(rollout):
    """`otel_access_log_fields` as one JSON object per line (a file access log format)."""
    body = ",".join(f'"{k}":"{v}"' for k, v in otel_access_log_fields(rollout).items())
    return "{" + body + "}\n"


# Headers with '_' in their names are dropped before any filter runs: apps and
# frameworks that fold '_' into '-' (CGI, Django, Rails) would otherwise read
# `x_augur_stack` as a control header, and `x_user_id` as the user. augur also
# strips its own '_' look-alikes itself, for listeners that must ALLOW them.
HEADERS_WITH_UNDERSCORES_ACTION = "DROP_HEADER"


def protocol_options(underscores=HEADERS_WITH_UNDERSCORES_ACTION):
    return {"headers_with_underscores_action": underscores}


def stats_config():
    tags = [
        {
            "tag_name": label,
            "regex": rf"^wasmcustom\.augur_[a-z_]+(?:\.[^.]+\.[^.]+)*?(\.{label}\.([^.]+))(?:\.|$)",
        }
        for label in STAT_LABELS
    ] + [
        {"tag_name": label, "regex": rf"^wasmcustom\.augur_[a-z_]+(?:\.[^.]+\.[^.]+)*?(\.{label}\.(.+))$"}
        for label in STAT_LABELS_LAST
    ]
    return {"stats_tags": tags}


def remote_code(uri, cluster, sha256, timeout="10s"):
    """A `vm_config.code` that Envoy fetches over HTTP from `uri` (through the
    cluster `cluster`) and loads only if its SHA-256 is `sha256` (hex)."""
    return {
        "remote": {
            "http_uri": {"uri": uri, "cluster": cluster, "timeout": timeout},
            "sha256": sha256,
            "retry_policy": {"num_retries": 2},
        }
    }


def wasm_filter(plugin_config, wasm_path, failure_policy="FAIL_CLOSED", code=None):
    """The augur HTTP filter. `plugin_config` is a dict (serialised) or a raw string.
    The module is the local file `wasm_path`, unless `code` (e.g. `remote_code(...)`)
    says where else it comes from."""
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
                    "code": code or {"local": {"filename": str(wasm_path)}},
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


CONTROL_HEADERS = ("x-augur-stack", "x-augur-features", "x-augur-flags", "x-augur-decision")


def control_header_guard(names=CONTROL_HEADERS):
    """Defence in depth, placed before augur: Envoy's own header_mutation filter
    removes the control headers a client sent. If augur is ever skipped (Envoy
    1.40 skips a Wasm filter whose module could not be loaded after an ECDS
    update, whatever its failure_policy), the route table still never sees a
    client-chosen stack and the app never sees client-chosen flags."""
    return {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": [{"remove": n} for n in names]},
        },
    }


def route_config(stack_header="x-augur-stack", old="old", new="new", old_cluster="old_stack", new_cluster="new_stack"):
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
                        "route": {"cluster": new_cluster},
                    },
                    {"name": "old_stack", "match": {"prefix": "/"}, "route": {"cluster": old_cluster}},
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
                            "common_http_protocol_options": protocol_options(),
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
        "# Generated by `python -m augur_tools.envoy.envoyconf` from envoy/augur-demo.json;\n"
        "# edit those, not this file. Paths are relative to the repository root.\n"
    )
    return header + yaml.dump(config, Dumper=Dumper, sort_keys=False, width=120, default_flow_style=None)


if __name__ == "__main__":
    sys.stdout.write(to_yaml(demo()))


# ---- Building blocks for the end-to-end benchmark and for ECDS delivery --------
#
# Everything below is additive: the functions above (and so envoy/envoy.yaml and
# the integration tests) do not use it. `python/augur_tools/bench/` builds its
# three configurations from these, and a model-push job can reuse the ECDS ones:
#
#     filt = ecds_http_filter("augur", "/etc/augur/ecds/augur.json")
#     ...listener with http_filters=[filt, router_filter()]...
#     push_ecds(path, plugin, wasm, "v2")

WASM_FILTER_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
TYPED_EXTENSION_CONFIG_TYPE_URL = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"


def router_filter():
    """The terminal HTTP filter every listener here ends with."""
    return {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }


def http_listener(name, port, route_config, http_filters, access_log_path=None, access_log_format=ACCESS_LOG_FORMAT,
                  extra_access_logs=()):
    """A loopback HTTP/1.1 listener: one HCM with the given route table and filter
    chain (which must end with `router_filter()`), and optionally a file access
    log in `access_log_format` (for a listener without augur the `decision`
    field is `-`, as for requests augur never saw); `extra_access_logs`: more
    file access logs, as (path, format) pairs."""
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "common_http_protocol_options": protocol_options(),
        "route_config": route_config,
        "http_filters": http_filters,
    }
    if access_log_path is not None or extra_access_logs:
        hcm["access_log"] = []
    logs = ([(access_log_path, access_log_format)] if access_log_path is not None else []) + list(extra_access_logs)
    for path, fmt in logs:
        hcm["access_log"].append(
            {
                "name": "access_log",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": str(path),
                    "log_format": {"text_format_source": {"inline_string": fmt}},
                },
            }
        )
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }


def single_cluster_route_config(cluster="old_stack"):
    """Passthrough: every request to one cluster, no decision at all."""
    return {
        "name": "passthrough",
        "virtual_hosts": [
            {"name": "app", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}
        ],
    }


def weighted_cluster(cluster, stack, weight, stack_header):
    """One `weighted_clusters` entry that tells the upstream its stack in `stack_header`."""
    return {
        "name": cluster,
        "weight": weight,
        "request_headers_to_add": [
            {"header": {"key": stack_header, "value": stack}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        ],
    }


def weighted_clusters_route_config(new_weight=30, pin_header="x-user-tier", pin_values=("beta",), stack_header="x-stack"):
    """What users build with Envoy alone instead of augur: requests carrying
    `pin_header` with one of `pin_values` always go to the new stack (the usual
    header-based stickiness/opt-in), everything else is split `new_weight`% new /
    rest old by `weighted_clusters` (per request, not sticky per user). Each
    route tells the upstream its stack in `stack_header`, as augur does."""
    import re

    if len(pin_values) == 1:
        matcher = {"exact": pin_values[0]}
    else:
        matcher = {"safe_regex": {"regex": "|".join(re.escape(v) for v in pin_values)}}
    pinned = {
        "name": "pinned_new",
        "match": {"prefix": "/", "headers": [{"name": pin_header, "string_match": matcher}]},
        "route": {"cluster": "new_stack"},
        "request_headers_to_add": [
            {"header": {"key": stack_header, "value": "new"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        ],
    }

    def weighted(cluster, stack, weight):
        return weighted_cluster(cluster, stack, weight, stack_header)

    split = {
        "name": "split",
        "match": {"prefix": "/"},
        "route": {
            "weighted_clusters": {
                "clusters": [weighted("new_stack", "new", new_weight), weighted("old_stack", "old", 100 - new_weight)]
            }
        },
    }
    return {"name": "weighted", "virtual_hosts": [{"name": "app", "domains": ["*"], "routes": [pinned, split]}]}


def direct_response_bootstrap(admin_port, port, body="ok"):
    """A minimal, fast upstream: one Envoy listener answering every request
    itself (`direct_response` 200 with a small body), no clusters."""
    route = {
        "name": "direct",
        "virtual_hosts": [
            {
                "name": "direct",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": body}}}],
            }
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": [http_listener("upstream", port, route, [router_filter()])]},
    }


def ecds_http_filter(name, watched_path, type_urls=(WASM_FILTER_TYPE_URL,)):
    """An http_filters entry whose configuration comes from ECDS, read from the
    file `watched_path` (a DiscoveryResponse, see `ecds_resource`).

    Envoy re-reads the file whenever a file is moved into its directory, so
    update it with `write_atomically` (write elsewhere in the directory, then
    rename). `name` must equal the resource name inside the file. Until a first
    valid resource has been read, listeners using the filter do not warm (no
    traffic); a refused update leaves the last good configuration serving.
    The bootstrap needs a `node` (`bootstrap()` sets one)."""
    watched_path = Path(watched_path).resolve()
    return {
        "name": name,
        "config_discovery": {
            "config_source": {
                "resource_api_version": "V3",
                "path_config_source": {
                    "path": str(watched_path),
                    "watched_directory": {"path": str(watched_path.parent)},
                },
            },
            "type_urls": list(type_urls),
        },
    }


def ecds_resource(plugin_config, wasm_path, version, name="augur", failure_policy="FAIL_CLOSED", code=None):
    """The content of an ECDS file: a DiscoveryResponse holding one
    TypedExtensionConfig named `name` whose typed_config is the augur Wasm
    filter (exactly what `wasm_filter` builds) with `plugin_config` (dict or JSON
    string). `version` is the DiscoveryResponse's version_info (any string;
    shown in /config_dump). Serialise with json.dumps: JSON is also YAML."""
    return {
        "version_info": str(version),
        "resources": [
            {
                "@type": TYPED_EXTENSION_CONFIG_TYPE_URL,
                "name": name,
                "typed_config": wasm_filter(plugin_config, wasm_path, failure_policy, code)["typed_config"],
            }
        ],
    }


def push_ecds(watched_path, plugin_config, wasm_path, version, code=None):
    """Delivers a plugin configuration through ECDS: its resource written to the
    watched file in one rename (Envoy applies it, or refuses it and keeps the
    last good one). `code` as for `wasm_filter`."""
    write_atomically(watched_path, json.dumps(ecds_resource(plugin_config, wasm_path, version, code=code)))


def ecds_listener(name, port, watched_path, plugin_config, wasm_path, access_log_path, version="initial", code=None):
    """A listener whose augur filter comes from ECDS (`watched_path`, which is
    first given `plugin_config`), routed on the stack header augur writes.
    `code` as for `wasm_filter`."""
    push_ecds(watched_path, plugin_config, wasm_path, version, code=code)
    filters = [ecds_http_filter("augur", watched_path), router_filter()]
    return http_listener(name, port, route_config(), filters, access_log_path)


def write_atomically(path, text):
    """Replaces `path` with `text` in one rename: a reader (Envoy watching the
    directory) sees the old file or the new one, never a partial write. The
    temporary file is in the same directory (same filesystem) and is fsync'd
    before the rename."""
    import os
    import tempfile

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
