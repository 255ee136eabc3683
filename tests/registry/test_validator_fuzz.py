"""Property-based fuzzing of the adapter validator (seeded, so a failure reproduces):
whatever adapter_config.json a client sends, validation either accepts it or refuses it
with InvalidAdapter, never another exception; and what it accepts, PEFT accepts too."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from registry.errors import InvalidAdapter
from registry.lora_spec import spec_from_config
from registry.peft_format import parse_config
from tests.fuzzing import json_values, seeded

VALID: dict[str, Any] = {
    "peft_type": "LORA",
    "r": 4,
    "lora_alpha": 8,
    "target_modules": ["q_proj", "v_proj"],
    "task_type": "CAUSAL_LM",
    "lora_dropout": 0.0,
    "bias": "none",
}
# every field PEFT reads when it loads a LoRA, and a few it does not know
FIELDS = (
    *VALID,
    "rank_pattern", "alpha_pattern", "exclude_modules", "layers_to_transform",
    "layers_pattern", "fan_in_fan_out", "use_rslora", "inference_mode", "init_lora_weights",
    "use_dora", "modules_to_save", "layer_replication", "something_else",
)  # fmt: skip
JSON = json_values(["([", ".*", "q_proj", "layers", "CAUSAL_LM", ""])
CHANGES = st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=5)
FUZZ = seeded(400)


@FUZZ
@given(CHANGES)
def test_validation_accepts_or_names_the_problem(change: dict[str, Any]) -> None:
    config = VALID | change
    try:
        spec_from_config(config)
    except InvalidAdapter:
        return
    from peft import LoraConfig

    # accepted: PEFT builds its config from it (what PeftModel.from_pretrained does first);
    # typed as Any, since PEFT annotates from_peft_type in some releases and not in others
    build: Any = LoraConfig.from_peft_type
    build(**{k: v for k, v in config.items() if k != "something_else"})


@FUZZ
@given(st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode()))
def test_parsing_any_bytes_refuses_with_invalid_adapter(raw: bytes) -> None:
    try:
        config = parse_config(raw)
    except InvalidAdapter:
        return
    assert isinstance(config, dict)
    with contextlib.suppress(InvalidAdapter):
        spec_from_config(config)
