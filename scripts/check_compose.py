#!/usr/bin/env python3
"""Checks that docker-compose.yml is the cluster the README promises: three
NATS servers clustered by routes, each with its own store; three Canopy nodes
on all three servers with R3 and one master key; one proxy in front of all
three nodes. `.ci/run` runs it after `docker-compose config`."""
import sys

import yaml

compose = yaml.safe_load(open(sys.argv[1] if len(sys.argv) > 1 else "docker-compose.yml"))
services = compose["services"]
problems = []


def arg_after(command, flag):
    return command[command.index(flag) + 1] if flag in command else None


nats = {name: s for name, s in services.items() if str(s.get("image", "")).startswith("nats:")}
if len(nats) != 3:
    problems.append(f"want 3 NATS servers, found {sorted(nats)}")
names, stores = set(), set()
for name, s in nats.items():
    command = s.get("command", [])
    names.add(arg_after(command, "-n"))
    routes = set((arg_after(command, "--routes") or "").split(","))
    if routes != {f"nats://{n}:6222" for n in nats}:
        problems.append(f"{name}: routes {sorted(routes)} do not name every server")
    if arg_after(command, "--cluster_name") is None:
        problems.append(f"{name}: no cluster name")
    if not any(v.endswith(":ro") and "auth" in v for v in s.get("volumes", [])):
        problems.append(f"{name}: runs without the authorization files")
    stores.update(v.split(":")[0] for v in s.get("volumes", []) if v.endswith(":/data"))
if len(names) != len(nats) or None in names:
    problems.append(f"the servers need distinct names: {names}")
if len(stores) != len(nats):
    problems.append(f"each server needs its own store volume: {stores}")

nodes = {name: s for name, s in services.items() if "CANOPY_NATS_URL" in (s.get("environment") or {})}
if len(nodes) != 3:
    problems.append(f"want 3 Canopy nodes, found {sorted(nodes)}")
keys = set()
for name, s in nodes.items():
    env = s["environment"]
    urls = set(env["CANOPY_NATS_URL"].split(","))
    if urls != {f"nats://{n}:4222" for n in nats}:
        problems.append(f"{name}: nats_url {sorted(urls)} does not name every server")
    if str(env.get("CANOPY_REPLICAS")) != "3":
        problems.append(f"{name}: replicas is not 3")
    keys.add(env.get("CANOPY_MASTER_KEY"))
if len(keys) != 1 or None in keys:
    problems.append("every node needs the same master key")

proxies = [s for s in services.values() if str(s.get("image", "")).startswith("caddy:")]
if len(proxies) != 1:
    problems.append("want one proxy")
else:
    command = proxies[0].get("command", [])
    upstreams = {command[i + 1].split(":")[0] for i, a in enumerate(command) if a == "--to"}
    if upstreams != set(nodes):
        problems.append(f"the proxy reaches {sorted(upstreams)}, not every node")

if problems:
    print("docker-compose.yml:\n  " + "\n  ".join(problems), file=sys.stderr)
    sys.exit(1)
print("ci: docker-compose.yml runs 3 NATS servers (R3), 3 nodes and a proxy")
