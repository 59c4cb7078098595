"""ServingConfig: every knob checked where its group is built, the groups, and config.pbtxt's defaults."""

import re

import pytest

from llmserve.config import (
    BatchingConfig,
    CacheConfig,
    ConfigError,
    FrontConfig,
    PytorchConfig,
    ServingConfig,
    TrtllmConfig,
)
from tests.conftest import ROOT

PBTXT = ROOT / "model_repository" / "llm" / "config.pbtxt"


def _pbtxt_parameters() -> dict[str, str]:
    pattern = r'parameters \{ key: "(\w+)" value: \{ string_value: "([^"]*)" \} \}'
    return dict(re.findall(pattern, PBTXT.read_text()))


def test_the_documented_defaults_are_the_dataclass_defaults():
    documented = _pbtxt_parameters()
    defaults = ServingConfig().knobs()
    assert documented, "no parameters found in config.pbtxt"
    assert set(documented) <= set(defaults), set(documented) - set(defaults)
    assert ServingConfig.from_parameters(documented) == ServingConfig()
    # the knobs config.pbtxt leaves out are the tests' and the synthetic engine's
    assert set(defaults) - set(documented) == {"fault_injection", "synthetic_step_ms"}


@pytest.mark.parametrize("group,knobs,field", [
    (PytorchConfig, {"pdl": "off"}, "pdl"),
    (PytorchConfig, {"dtype": "fp64"}, "dtype"),
    (PytorchConfig, {"fault_injection": "explode"}, "fault_injection"),
    (BatchingConfig, {"max_batch_size": 0}, "max_batch_size"),
    (BatchingConfig, {"max_queue_delay_us": -1}, "max_queue_delay_us"),
    (CacheConfig, {"kv_cache_free_mem_fraction": 1.5}, "kv_cache_free_mem_fraction"),
    (CacheConfig, {"kv_cache_dtype": "int4"}, "kv_cache_dtype"),
    (TrtllmConfig, {"batch_scheduler_policy": "fifo"}, "batch_scheduler_policy"),
    (FrontConfig, {"engine_process": "maybe"}, "engine_process"),
    (FrontConfig, {"max_input_bytes": "big"}, "max_input_bytes"),
])
def test_each_group_checks_its_knobs_when_built(group, knobs, field):
    with pytest.raises(ConfigError, match=field):
        group(**knobs)
    with pytest.raises(ConfigError, match=field):
        ServingConfig.of(**knobs)


def test_top_level_knobs_are_checked_too():
    for knobs, field in [({"engine": "vllm"}, "engine"), ({"device": "tpu"}, "device"),
                         ({"max_model_len": -1}, "max_model_len")]:
        with pytest.raises(ConfigError, match=field):
            ServingConfig.of(**knobs)


def test_flat_knobs_land_in_their_groups_and_round_trip():
    cfg = ServingConfig.of(max_batch_size=8, kv_cache_dtype="fp8", pdl="false", engine_dir="e",
                           engine_process="true", device="cpu")
    assert (cfg.batching.max_batch_size, cfg.cache.kv_cache_dtype, cfg.pytorch.pdl) == (8, "fp8", "false")
    assert (cfg.trtllm.engine_dir, cfg.front.engine_process, cfg.device) == ("e", "true", "cpu")
    assert ServingConfig.of(**cfg.knobs()) == cfg
    changed = cfg.replace(engine_process="false")
    assert changed.front.engine_process == "false" and changed.batching == cfg.batching
    with pytest.raises(ConfigError, match="no_such_knob"):
        ServingConfig.of(no_such_knob=1)


def test_parameters_take_strings_and_leave_other_backends_keys_alone():
    cfg = ServingConfig.from_parameters({"max_batch_size": {"string_value": "4"},
                                         "enable_prefix_caching": {"string_value": "false"},
                                         "max_model_len": {"string_value": "${max_model_len}"},
                                         "REPORT_CUSTOM_METRICS": {"string_value": "yes"}})
    assert cfg.batching.max_batch_size == 4 and cfg.cache.enable_prefix_caching is False
    assert cfg.max_model_len == 0
    with pytest.raises(ConfigError, match="max_batch_size: cannot read 'many' as int"):
        ServingConfig.from_parameters({"max_batch_size": {"string_value": "many"}})


def test_a_config_cannot_be_changed_in_place():
    cfg = ServingConfig()
    with pytest.raises(AttributeError):
        cfg.batching.max_batch_size = 0  # frozen: a knob changes only through replace(), which checks it
