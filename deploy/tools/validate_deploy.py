"""Offline checks of the deployment files that need Python packages (run with .venv-deploycheck/bin/python).

    python validate_deploy.py dashboard [DASHBOARD.json ...]   # JSON Schema subset + semantic checks
    python validate_deploy.py dashboard-rules OUT.yml           # dashboard PromQL as a rules file for promtool
    python validate_deploy.py k8s [--kubernetes-version V ...] [FILES ...]

Packages: jsonschema (dashboards), kubernetes-validate (bundled Kubernetes JSON schemas, strict mode).
scripts/check_deploy.sh creates the environment and runs every check; tests/test_deploy_files.py and
tests/test_deploy_monitoring.py call this too.
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
SCHEMA = ROOT / "deploy" / "grafana" / "dashboard.schema.json"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources"
K8S = ROOT / "deploy" / "k8s"
K8S_VERSIONS = ("1.30.0", "1.33.0")

# Our metric families (model.py) and Triton's; a dashboard must not query anything else.
OUR_METRICS = {
    "llm_time_to_first_token_seconds", "llm_time_per_output_token_seconds", "llm_e2e_request_latency_seconds",
    "llm_response_repetition_ratio", "llm_prompt_tokens_total", "llm_generation_tokens_total",
    "llm_requests_running", "llm_requests_waiting", "llm_kv_cache_blocks", "llm_prefix_cache_hits_total",
    "llm_prefix_cache_queries_total", "llm_request_cancellations_total", "llm_request_failures_total",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
TRITON_PREFIX = "nv_"
PROMQL_WORDS = {
    "sum", "by", "without", "rate", "irate", "increase", "histogram_quantile", "max", "min", "avg", "count",
    "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "clamp_min", "clamp_max",
    "avg_over_time", "max_over_time", "min_over_time", "deriv", "topk", "bottomk", "label_values", "le", "bool",
}


def grafana_vars_to_promql(expr: str) -> str:
    """Substitute Grafana variables so that the expression is plain PromQL."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", ".*", expr)


def metric_names(expr: str) -> set[str]:
    """Identifiers in a PromQL expression that are metric names (not functions, keywords, labels or strings)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # drop string literals
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # drop label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = m.group(0)
        rest = expr[m.end():].lstrip()
        if word in PROMQL_WORDS or rest.startswith("("):
            continue
        if re.fullmatch(r"[0-9]+[smhdwy]", word):
            continue
        names.add(word)
    return names


def known_metric(name: str) -> bool:
    if name.startswith(TRITON_PREFIX) or name in OUR_METRICS:
        return True
    return any(name.endswith(s) and name[: -len(s)] in OUR_METRICS for s in HISTOGRAM_SUFFIXES)


def dashboard_exprs(dash: dict) -> list[tuple[str, str]]:
    out = []
    for panel in dash.get("panels", []):
        for t in panel.get("targets", []) or []:
            if "expr" in t:
                out.append((panel.get("title", "?"), t["expr"]))
    return out


def check_dashboard(path: Path) -> list[str]:
    import jsonschema
    import yaml

    errors: list[str] = []
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    dash = json.loads(path.read_text())
    for err in jsonschema.Draft202012Validator(schema).iter_errors(dash):
        errors.append(f"{path.name}: schema: {'/'.join(str(p) for p in err.absolute_path)}: {err.message}")
    if errors:
        return errors
    ids = [p["id"] for p in dash["panels"]]
    if len(ids) != len(set(ids)):
        errors.append(f"{path.name}: duplicate panel ids")
    for p in dash["panels"]:
        g = p["gridPos"]
        if g["x"] + g["w"] > 24:
            errors.append(f"{path.name}: panel {p['title']!r} extends past the 24-column grid")
    uids = set()
    for f in sorted(DATASOURCES.glob("*.y*ml")):
        for ds in (yaml.safe_load(f.read_text()) or {}).get("datasources", []):
            uids.add(ds.get("uid"))
    for p in dash["panels"]:
        for ds in [p.get("datasource")] + [t.get("datasource") for t in p.get("targets", [])]:
            if ds and ds.get("type") == "prometheus" and ds.get("uid") not in uids:
                errors.append(f"{path.name}: panel {p['title']!r} uses datasource uid {ds.get('uid')!r}, "
                              f"provisioned: {sorted(u for u in uids if u)}")
    for title, expr in dashboard_exprs(dash):
        for name in metric_names(grafana_vars_to_promql(expr)):
            if not known_metric(name):
                errors.append(f"{path.name}: panel {title!r} queries unknown metric {name!r}")
    return errors


def dashboard_rules(paths: list[Path]) -> dict:
    """Every dashboard expression as a recording rule, so that `promtool check rules` parses the PromQL."""
    rules = []
    for path in paths:
        for i, (_title, expr) in enumerate(dashboard_exprs(json.loads(path.read_text()))):
            rules.append({"record": f"dashboard:{path.stem}:expr{i}", "expr": grafana_vars_to_promql(expr)})
    return {"groups": [{"name": "dashboard-exprs", "rules": rules}]}


def check_k8s(files: list[str], versions: list[str]) -> list[str]:
    import kubernetes_validate
    import yaml

    errors = []
    for f in files:
        docs = [d for d in yaml.safe_load_all(Path(f).read_text()) if d]
        if not docs:
            errors.append(f"{f}: no resources")
        for doc in docs:
            for v in versions:
                try:
                    kubernetes_validate.validate(doc, v, strict=True)
                except kubernetes_validate.ValidationError as e:
                    errors.append(f"{f}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')} (k8s {v}): "
                                  f"{'.'.join(str(p) for p in e.path)}: {e.message}")
                except Exception as e:  # noqa: BLE001 - e.g. unknown kind or version: report, don't crash
                    errors.append(f"{f}: {doc.get('kind')} (k8s {v}): {type(e).__name__}: {e}")
    return errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="validate_deploy.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dashboard")
    d.add_argument("paths", nargs="*")
    r = sub.add_parser("dashboard-rules")
    r.add_argument("out")
    r.add_argument("paths", nargs="*")
    k = sub.add_parser("k8s")
    k.add_argument("--kubernetes-version", action="append", dest="versions")
    k.add_argument("files", nargs="*")
    args = ap.parse_args(argv)

    if args.cmd in ("dashboard", "dashboard-rules"):
        paths = [Path(p) for p in args.paths] or sorted(DASHBOARDS.glob("*.json"))
        if args.cmd == "dashboard-rules":
            import yaml

            Path(args.out).write_text(yaml.safe_dump(dashboard_rules(paths), sort_keys=False))
            print(f"wrote {args.out}")
            return 0
        errors = [e for p in paths for e in check_dashboard(p)]
        label = ", ".join(p.name for p in paths)
    else:
        files = args.files or sorted(glob.glob(str(K8S / "*.yaml")))
        errors = check_k8s(files, args.versions or list(K8S_VERSIONS))
        label = f"{len(files)} manifest files, Kubernetes {', '.join(args.versions or K8S_VERSIONS)}, strict"
    for e in errors:
        print("ERROR", e)
    print(("FAIL " if errors else "OK ") + label)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
