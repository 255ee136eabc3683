"""Admin UI forms (POST): check the input as the REST API does, call one use case, then
redirect (or show the result). Bad input re-renders the form with what was typed and
a message saying what was wrong; nothing is changed.

The router's guards have already checked the session, the role and the CSRF token
(``api.ui.sessions``) before any of these run.
"""

from __future__ import annotations

from typing import Any, cast

import anyio.to_thread
from litestar import Request, post
from litestar.datastructures import FormMultiDict, State, UploadFile
from litestar.exceptions import HTTPException
from litestar.response import Redirect, Template

from api.dto import MAX_JSON_INT, Example, GenerateIn, Method, TrainGeneratorIn
from api.handlers import AnyId
from api.routes import serve_generation, serving_warnings, submit_generator_training, uploaded_files
from api.routes_jobs import check_job_capacity
from api.ui import views
from api.ui.pages import ADMIN, safe_next
from api.ui.render import flash, page
from api.ui.sessions import authenticate_key, log_in, log_out
from generator.hypernet.methods import METHODS
from generator.transfer.config import parse_settings
from generator.transfer.source import submit_request, transfer_request
from generator.zoo.artifacts import seed_artifacts
from registry.errors import InvalidInput, LoramintError
from registry.service import Registry

MAX_SEED = MAX_JSON_INT
EXAMPLE_SEPARATOR = "=>"


def _reg(state: State) -> Registry:
    reg: Registry = state.registry
    return reg


def _text(form: FormMultiDict, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _names(reg: Registry) -> list[str]:
    return views.base_model_names(reg)


@post("/login")
async def login(request: Request[Any, Any, Any], state: State) -> Template | Redirect:
    form = await request.form()
    target = safe_next(form.get("next"))

    def again(status: int, error: str) -> Template:
        return page(request, "login.html", status=status, nav="login", next=target, error=error)

    secret = _text(form, "api_key").strip()
    if not secret:
        return again(400, "Enter an API key (it starts with lm_).")
    # the API's per-caller token bucket: a key is 256 random bits, so this is not about
    # guessing, only about a flood of attempts costing database reads
    client = request.client.host if request.client else "unknown"
    wait = state.buckets.take(f"ui-login@{client}")
    if wait > 0:
        return again(429, f"Too many login attempts; wait {max(1, round(wait))} s and try again.")
    principal = await authenticate_key(request, secret)
    if principal is None:
        return again(
            401,
            "That key is not valid or has been revoked. Check it, or create one with "
            "`loramint keys create --role admin`.",
        )
    log_in(request, principal)
    return Redirect(target, status_code=303)


@post("/logout")
async def logout(request: Request[Any, Any, Any]) -> Redirect:
    await log_out(request)
    return Redirect("/ui/login", status_code=303)


@post("/upload", opt=ADMIN)
async def upload(request: Request[Any, Any, Any], state: State) -> Template | Redirect:
    form = await request.form()
    values = {f: _text(form, f) for f in ("description", "base_model", "name", "labels")}
    reg = _reg(state)
    file = form.get("file")
    seeds = form.get("seeds")
    try:
        if not isinstance(file, UploadFile) or not file.filename:
            raise InvalidInput(
                "Choose a PEFT adapter zip file (it holds adapter_config.json and "
                "adapter_model.safetensors)."
            )
        raw_seeds = await seeds.read() if isinstance(seeds, UploadFile) and seeds.filename else None
        labels = values["labels"].strip()
        artifacts, meta = seed_artifacts(
            raw_seeds, [x.strip() for x in labels.split(",")] if labels else None
        )
        files = await uploaded_files(file, None, None, reg.settings.max_adapter_bytes)
        rec = await anyio.to_thread.run_sync(
            lambda: reg.add_adapter(
                files,
                base_model=values["base_model"].strip(),
                description=values["description"],
                name=values["name"].strip() or None,
                meta=meta,
                artifacts=artifacts,
                refuse_duplicates=True,
            )
        )
    except LoramintError as exc:
        names = await anyio.to_thread.run_sync(_names, reg)
        return page(
            request, "upload.html", status=state.ui_status_for(exc), nav="upload",
            values=values, base_models=names, error=str(exc),
        )  # fmt: skip
    warnings = await anyio.to_thread.run_sync(serving_warnings, reg, rec.id)
    serving = f" Serving engines would object: {' '.join(warnings)}" if warnings else ""
    flash(request, f"Uploaded adapter {rec.name} (id {rec.id}).{serving}")
    return Redirect(f"/ui/adapters/{rec.id}", status_code=303)


def parse_examples(text: str) -> list[Example] | None:
    """``input => output``, one example a line; blank lines are skipped."""
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        given, sep, expected = line.partition(EXAMPLE_SEPARATOR)
        if not sep or not given.strip() or not expected.strip():
            raise InvalidInput(
                f"example line {number} must read `input {EXAMPLE_SEPARATOR} output`, "
                f"got {line.strip()[:80]!r}"
            )
        out.append(Example(input=given.strip(), output=expected.strip()))
    return out or None


@post("/generate", opt=ADMIN)
async def generate(request: Request[Any, Any, Any], state: State) -> Template:
    form = await request.form()
    fields = (
        "description", "base_model", "method", "seed", "examples", "labels", "refine_steps",
        "weighting",
    )  # fmt: skip
    values = {f: _text(form, f) for f in fields}
    reg = _reg(state)
    try:
        labels = values["labels"].strip()
        data = GenerateIn(
            description=values["description"],
            base_model=values["base_model"].strip(),
            # a str until generation_request checks it against the methods
            method=cast("Method | None", values["method"] or None),
            seed=views.parse_int("seed", values["seed"] or "0", 0, MAX_SEED),
            examples=parse_examples(values["examples"]),
            labels=[x.strip() for x in labels.split(",")] if labels else None,
            refine_steps=views.parse_int("refine steps", values["refine_steps"] or "0", 0, 500),
            weighting=values["weighting"] == "yes",
        )
        rec, made, job = await serve_generation(state, data)
        status, context = 200, {"adapter": rec, "made": made, "job": job}
    except LoramintError as exc:
        status, context = state.ui_status_for(exc), {"error": str(exc)}
    names = await anyio.to_thread.run_sync(_names, reg)
    return page(
        request, "generate.html", status=status, nav="generate", values=values,
        base_models=names, methods=METHODS, **context,
    )  # fmt: skip


@post("/adapters/{adapter_id:int}/delete", opt=ADMIN)
async def delete_adapter(
    request: Request[Any, Any, Any], state: State, adapter_id: AnyId
) -> Template | Redirect:
    form = await request.form()
    reg = _reg(state)
    if _text(form, "confirm") != "yes":
        view = await anyio.to_thread.run_sync(views.adapter_page, reg, adapter_id)
        return page(
            request, "adapter.html", status=400, nav="adapters", view=view,
            delete_error="Tick the box to confirm that this adapter should be deleted.",
        )  # fmt: skip
    rec = await anyio.to_thread.run_sync(reg.get_adapter, adapter_id)
    await anyio.to_thread.run_sync(reg.delete_adapter, adapter_id)
    flash(request, f"Deleted adapter {rec.name} (id {rec.id}).")
    return Redirect("/ui/adapters", status_code=303)


@post("/adapters/{adapter_id:int}/materialise", opt=ADMIN)
async def materialise_adapter(
    request: Request[Any, Any, Any], state: State, adapter_id: AnyId
) -> Redirect:
    rec = await anyio.to_thread.run_sync(_reg(state).materialise_adapter, adapter_id)
    flash(request, f"Stored the weights of {rec.name} ({rec.size_bytes:,} bytes).")
    return Redirect(f"/ui/adapters/{rec.id}", status_code=303)


@post("/adapters/{adapter_id:int}/transfer", opt=ADMIN)
async def start_transfer(
    request: Request[Any, Any, Any], state: State, adapter_id: AnyId
) -> Template | Redirect:
    form = await request.form()
    values = {f: _text(form, f).strip() for f in ("target_base_model", "samples", "settings")}
    reg = _reg(state)
    try:
        samples = _whole(values["samples"], "samples") if values["samples"] else None
        lines = [line.strip() for line in values["settings"].splitlines() if line.strip()]
        settings = parse_settings(lines)
        asked = await anyio.to_thread.run_sync(
            lambda: transfer_request(
                reg, adapter_id, values["target_base_model"], samples=samples, config=settings
            )
        )
        check_job_capacity(state)
        job = await anyio.to_thread.run_sync(submit_request, reg, asked)
    except (LoramintError, HTTPException) as exc:
        status = exc.status_code if isinstance(exc, HTTPException) else state.ui_status_for(exc)
        message = str(exc.detail) if isinstance(exc, HTTPException) else str(exc)
        view = await anyio.to_thread.run_sync(views.adapter_page, reg, adapter_id)
        return page(
            request, "adapter.html", status=status, nav="adapters", view=view,
            transfer_error=message, transfer_values=values,
        )  # fmt: skip
    flash(request, f"Queued the transfer to {asked.target_base_model} as job {job.id}.")
    return Redirect(f"/ui/jobs/{job.id}", status_code=303)


def _whole(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError as exc:
        raise InvalidInput(f"{name} must be a whole number, got {text!r}") from exc


@post("/generators", opt=ADMIN)
async def train_generator(request: Request[Any, Any, Any], state: State) -> Template | Redirect:
    form = await request.form()
    fields = ("base_model", "name", *(f.name for f in views.generator_form()))
    values = {f: _text(form, f) for f in fields}
    reg = _reg(state)
    try:
        data = TrainGeneratorIn(
            base_model=values["base_model"].strip(),
            name=values["name"].strip() or None,
            **views.generator_config_values(values),
        )
        job = await anyio.to_thread.run_sync(submit_generator_training, state, data)
    except (LoramintError, HTTPException) as exc:
        status = exc.status_code if isinstance(exc, HTTPException) else state.ui_status_for(exc)
        message = str(exc.detail) if isinstance(exc, HTTPException) else str(exc)
        gens = await anyio.to_thread.run_sync(lambda: reg.list_generators(limit=200))
        roles = await anyio.to_thread.run_sync(views.generator_roles, reg, gens)
        names = await anyio.to_thread.run_sync(_names, reg)
        return page(
            request, "generators.html", status=status, nav="generators", values=values,
            form=views.generator_form(), base_models=names, generators=gens, roles=roles,
            error=message,
        )  # fmt: skip
    flash(request, f"Queued generator training as job {job.id}.")
    return Redirect(f"/ui/jobs/{job.id}", status_code=303)


@post("/jobs/{job_id:int}/cancel", opt=ADMIN)
async def cancel_job(request: Request[Any, Any, Any], state: State, job_id: AnyId) -> Redirect:
    job = await anyio.to_thread.run_sync(_reg(state).cancel_job, job_id)
    flash(request, f"Cancelled job {job.id}.")
    return Redirect(f"/ui/jobs/{job.id}", status_code=303)


async def _serve_as(
    request: Request[Any, Any, Any], state: State, generator_id: int, *, pin: bool
) -> Redirect:
    reg = _reg(state)
    rec = await anyio.to_thread.run_sync(
        reg.pin_generator if pin else reg.unpin_generator, generator_id
    )
    flash(
        request,
        f"Generator {rec.name} now serves {rec.method} for {rec.base_model}."
        if pin
        else f"Unpinned {rec.name}: the newest {rec.method} generator serves.",
    )
    return Redirect(f"/ui/generators#generator-{rec.id}", status_code=303)


@post("/generators/{generator_id:int}/pin", opt=ADMIN)
async def pin_generator(
    request: Request[Any, Any, Any], state: State, generator_id: AnyId
) -> Redirect:
    return await _serve_as(request, state, generator_id, pin=True)


@post("/generators/{generator_id:int}/unpin", opt=ADMIN)
async def unpin_generator(
    request: Request[Any, Any, Any], state: State, generator_id: AnyId
) -> Redirect:
    return await _serve_as(request, state, generator_id, pin=False)


ACTIONS = [
    login, logout, upload, generate, delete_adapter, materialise_adapter, start_transfer,
    train_generator, cancel_job, pin_generator, unpin_generator,
]  # fmt: skip
