"""REST handler for serving checks: ``GET /v1/adapters/{id}/check`` runs the serving
rules of PEFT, vLLM and LoRAX on a registered adapter and, unless ``smoke=false``, the
smoke test that it changes its base model's logits (``generator.serve.smoke``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar.datastructures import State
from litestar.params import QueryParameter

from api.handlers import AnyId, reads, registry_of
from generator.serve.smoke import CheckReport, check_adapter
from registry.serving import parse_targets

CheckTarget = Literal["all", "peft", "vllm", "lorax"]


class FindingOut(msgspec.Struct):
    target: str
    rule: str
    severity: Literal["error", "warning"]
    message: str


class TargetCheckOut(msgspec.Struct):
    target: str
    ok: bool
    findings: list[FindingOut]
    # what the engine must be started with (vLLM: the smallest max_lora_rank that serves it)
    settings: dict[str, Any]


class SmokeOut(msgspec.Struct):
    passed: bool
    max_abs_diff: float | None
    tolerance: float
    prompt_tokens: int
    message: str


class CheckOut(msgspec.Struct):
    adapter_id: int
    base_model: str
    architecture: str | None
    ok: bool
    targets: list[TargetCheckOut]
    smoke: SmokeOut | None

    @classmethod
    def of(cls, report: CheckReport) -> CheckOut:
        rules, smoke = report.rules, report.smoke
        return cls(
            adapter_id=rules.adapter_id,
            base_model=rules.base_model,
            architecture=rules.architecture,
            ok=report.ok,
            targets=[
                TargetCheckOut(
                    target=t.target,
                    ok=t.ok,
                    findings=[
                        FindingOut(f.target, f.rule, f.severity, f.message) for f in t.findings
                    ],
                    settings=t.settings,
                )
                for t in rules.targets
            ],
            smoke=(
                SmokeOut(
                    smoke.passed,
                    smoke.max_abs_diff,
                    smoke.tolerance,
                    smoke.prompt_tokens,
                    smoke.message,
                )
                if smoke is not None
                else None
            ),
        )


@reads(
    "/v1/adapters/{adapter_id:int}/check",
    "adapters",
    summary="Check an adapter against PEFT's, vLLM's and LoRAX's serving limits",
    description=(
        "Runs each target's documented rules on the stored adapter (rank against vLLM's "
        "max_lora_rank set, target modules per architecture, modules_to_save, DoRA, biases, "
        "rank/alpha patterns, tensor names against the base model; `peft` is the upload "
        "validator) and, unless `smoke=false`, loads the base model and checks that the "
        "adapter changes its logits on a probe prompt. `ok` is false when any finding is an "
        "error or the smoke test fails; the response is 200 either way."
    ),
)
def check_adapter_route(
    state: State,
    adapter_id: AnyId,
    target: Annotated[
        CheckTarget, QueryParameter(description="The engine to check for, or all of them.")
    ] = "all",
    smoke: Annotated[
        bool, QueryParameter(description="Load the base model and run the smoke test.")
    ] = True,
) -> CheckOut:
    report = check_adapter(registry_of(state), adapter_id, parse_targets(target), smoke=smoke)
    return CheckOut.of(report)


CHECK_ROUTES = [check_adapter_route]
