"""Validates Grafana dashboards against the JSON Schema generated from Grafana's own types
(@grafana/grafana-foundation-sdk, `Dashboard`, by ts-json-schema-generator; see .ci/install-test-deps).

Usage: python3 validate_dashboards.py SCHEMA DASHBOARD...

Query objects are datasource-specific in Grafana (the SDK's `Dataquery` is an open object), so extra
properties are allowed there and nowhere else. Prints each problem; exits 1 if there is one.
"""

import json
import sys

import jsonschema

schema = json.load(open(sys.argv[1]))
schema["definitions"]["Dataquery"]["additionalProperties"] = True
validator = jsonschema.Draft7Validator(schema)
failed = False
for path in sys.argv[2:]:
    dashboard = json.load(open(path))
    for error in validator.iter_errors(dashboard):
        failed = True
        where = "/".join(str(p) for p in error.absolute_path)
        print(f"{path}: {where}: {error.message[:300]}")
        for sub in error.context[:5]:
            print(f"    {'/'.join(str(p) for p in sub.absolute_path)}: {sub.message[:200]}")
    print(f"{path}: checked")
sys.exit(1 if failed else 0)
