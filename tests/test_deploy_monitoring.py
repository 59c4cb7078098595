"""Monitoring files (issue 6) checked with real tools, offline: promtool (Prometheus config, alert rules and their
unit tests) and the Grafana dashboard (jsonschema, PromQL, the panels the brief asks for). Tools as in
tests/deploy_tools.py."""

from __future__ import annotations

import json
import shutil

import yaml

from tests.deploy_tools import DEPLOY, OUR_METRICS, VALIDATE, need, run

# ---- Prometheus ---


def test_prometheus_config(tools, tmp_path):
    promtool = need(tools, "promtool")
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path)
    cfg = (DEPLOY / "prometheus" / "prometheus.yml").read_text().replace("/etc/prometheus/alerts.yml",
                                                                          str(tmp_path / "alerts.yml"))
    (tmp_path / "prometheus.yml").write_text(cfg)
    p = run([promtool, "check", "config", str(tmp_path / "prometheus.yml")])
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout + p.stderr


def test_alert_rules_check(tools):
    p = run([need(tools, "promtool"), "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")])
    assert p.returncode == 0, p.stdout + p.stderr


def test_alert_rules_unit_tests(tools):
    """promtool evaluates the rules on synthetic series: each alert fires when (and only when) it should."""
    p = run([need(tools, "promtool"), "test", "rules", str(DEPLOY / "prometheus" / "alerts_test.yml")])
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout + p.stderr


def test_promtool_rejects_a_broken_rule(tools, tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n- name: x\n  rules:\n  - alert: Broken\n    expr: sum(rate(foo[5m]) > \n")
    assert run([need(tools, "promtool"), "check", "rules", str(bad)]).returncode != 0


def test_alert_rules_content():
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    rules = {r.get("alert") or r.get("record"): r for g in doc["groups"] for r in g["rules"]}
    text = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    assert "histogram_quantile(0.99" in rules["llm:time_per_output_token_seconds:p99_5m"]["expr"]
    assert "llm_time_per_output_token_seconds_bucket" in text and "llm_e2e_request_latency_seconds_bucket" in text
    assert rules["LLMInterTokenLatencyP99High"]["expr"].rstrip().endswith("> 0.05")
    assert "> 0.05" in rules["LLMRequestLatencyP99PerTokenHigh"]["expr"]
    gpu = rules["GPUMemoryHigh"]
    assert "nv_gpu_memory_used_bytes / nv_gpu_memory_total_bytes" in gpu["expr"] and "> 0.9" in gpu["expr"]
    assert gpu["for"] == "1m"
    q = rules["LLMResponseQualityDrop"]["expr"]
    assert "1.05 *" in q and "[1h]" in q and "llm:response_repetition_ratio:mean_5m" in q
    assert "llm_requests_waiting" in rules["llm:requests_waiting:sum"]["expr"]
    assert "deriv(" in rules["LLMQueueGrowing"]["expr"]


# ---- Grafana ---


def test_dashboard_schema_and_metrics(tools):
    vpy = need(tools, "deploycheck-python")
    p = run([vpy, str(VALIDATE), "dashboard"])
    assert p.returncode == 0, p.stdout + p.stderr


def test_dashboard_validator_bites(tools, tmp_path):
    vpy = need(tools, "deploycheck-python")
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "llm.json").read_text())
    dash["panels"][1]["gridPos"]["w"] = 30
    dash["panels"][2]["targets"][0]["expr"] = "sum(rate(vllm:generation_tokens_total[5m]))"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dash))
    p = run([vpy, str(VALIDATE), "dashboard", str(bad)])
    assert p.returncode == 1 and "maximum of 24" in p.stdout
    dash["panels"][1]["gridPos"]["w"] = 4
    bad.write_text(json.dumps(dash))
    p = run([vpy, str(VALIDATE), "dashboard", str(bad)])
    assert p.returncode == 1 and "vllm:generation_tokens_total" in p.stdout


def test_dashboard_promql_parses(tools, tmp_path):
    vpy, promtool = need(tools, "deploycheck-python"), need(tools, "promtool")
    out = tmp_path / "dash.yml"
    p = run([vpy, str(VALIDATE), "dashboard-rules", str(out)])
    assert p.returncode == 0, p.stdout + p.stderr
    p = run([promtool, "check", "rules", str(out)])
    assert p.returncode == 0, p.stdout + p.stderr


def test_dashboard_panels_cover_the_brief():
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "llm.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p.get("targets", []))
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for metric in OUR_METRICS:
        assert metric in exprs, metric
    for word in ("time to first token", "inter-token latency", "end-to-end", "tokens/s", "running / waiting",
                 "kv blocks used / free", "prefix cache", "gpu utilization", "gpu memory", "repetition"):
        assert word in titles, word
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs
    assert "nv_gpu_utilization" in exprs and "nv_gpu_memory_used_bytes" in exprs
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["datasources"][0]["uid"] == "prometheus"
    prov = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "llm.yml").read_text())
    assert prov["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"
