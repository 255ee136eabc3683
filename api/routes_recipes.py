"""REST handlers for generated adapters kept as recipes (``registry.recipes``):
materialising one, and deleting a generator without breaking its recipes."""

from __future__ import annotations

from litestar import delete, post
from litestar.datastructures import State
from litestar.params import FromQuery
from litestar.status_codes import HTTP_200_OK, HTTP_204_NO_CONTENT

from api.dto import AdapterOut
from api.handlers import AnyId, registry_of, writes


@writes(
    post,
    "/v1/adapters/{adapter_id:int}/materialise",
    "adapters",
    sync_to_thread=True,
    status_code=HTTP_200_OK,
    summary="Store a generated adapter's weights",
    description=(
        "A generated adapter is kept as a recipe (its generator, description and seed) and "
        "its weights are rebuilt on download. This stores them, so that the adapter no longer "
        "needs its generator and experts; its download does not change. An adapter with "
        "stored weights is returned as it is."
    ),
)
def materialise_adapter(state: State, adapter_id: AnyId) -> AdapterOut:
    return AdapterOut.of(registry_of(state).materialise_adapter(adapter_id))


@writes(
    delete,
    "/v1/generators/{generator_id:int}",
    "generators",
    sync_to_thread=True,
    status_code=HTTP_204_NO_CONTENT,
    summary="Delete a generator",
    description=(
        "Refused (409) while the generator is pinned, and while generated adapters are kept "
        "as its recipes (the 409 lists them), unless `materialise=true`: then their weights "
        "are stored first and the delete goes on. Deleting never leaves an adapter that "
        "cannot be downloaded."
    ),
)
def delete_generator(
    state: State, generator_id: AnyId, materialise: FromQuery[bool] = False
) -> None:
    registry_of(state).delete_generator(generator_id, materialise=materialise)


RECIPE_ROUTES = [materialise_adapter, delete_generator]
