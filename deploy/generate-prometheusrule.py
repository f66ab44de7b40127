"""Writes deploy/base/prometheusrule.yaml from alerts/*.rules.yml (the groups of every file, in file-name
order). Run after changing a rule: python3 deploy/generate-prometheusrule.py"""
import glob
import os

import yaml

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
groups = []
for f in sorted(glob.glob(os.path.join(root, "alerts", "*.rules.yml"))):
    with open(f) as fh:
        groups += yaml.safe_load(fh)["groups"]
doc = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PrometheusRule",
    "metadata": {"name": "eventscope", "labels": {"app.kubernetes.io/name": "eventscope", "release": "prometheus"}},
    "spec": {"groups": groups},
}
header = "# Generated from alerts/*.rules.yml by deploy/generate-prometheusrule.py; tests/deploy.rs fails if the two differ.\n"
with open(os.path.join(root, "deploy", "base", "prometheusrule.yaml"), "w") as fh:
    fh.write(header + yaml.safe_dump(doc, sort_keys=False, width=1000))
