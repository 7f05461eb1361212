"""``python -m hpcpar.testing.spmd DIR``: one rank of a job started by :func:`hpcpar.testing.run_spmd`.

``DIR/call.pkl`` names the function (module, file, qualified name) and holds its
pickled arguments. Rank 0 writes the list of every rank's return value to
``DIR/result.pkl``; a rank whose call raises writes its traceback to
``DIR/rank-R.txt`` and aborts the job, so no rank is left waiting.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import sys
import traceback

from mpi4py import MPI

from ..core.context import Context
from ..observe.drain import drain


def _resolve(spec: dict):
    sys.path[:0] = [p for p in spec["path"] if p not in sys.path]
    name, file = spec["module"], spec["file"]
    module = None
    if name != "__main__":
        try:
            module = importlib.import_module(name)
        except ImportError:
            module = None
    if module is None:
        if not file:
            raise ImportError(f"cannot import module {name!r} of the function")
        load_as = name if name != "__main__" else "__hpcpar_spmd_main__"
        mod_spec = importlib.util.spec_from_file_location(load_as, file)
        if mod_spec is None or mod_spec.loader is None:
            raise ImportError(f"cannot load module {name!r} of the function from {file!r}")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[load_as] = module
        mod_spec.loader.exec_module(module)
    obj = module
    for part in spec["qualname"].split("."):
        obj = getattr(obj, part)
    return obj


def main(folder: str) -> None:
    world = MPI.COMM_WORLD
    try:
        with open(os.path.join(folder, "call.pkl"), "rb") as f:
            spec = pickle.load(f)
        fn = _resolve(spec)
        args, kwargs = pickle.loads(spec["args"])
        with Context() as ctx:
            result = fn(ctx, *args, **kwargs)
            results = ctx.comm.gather(result, root=0)
        if world.Get_rank() == 0:
            with open(os.path.join(folder, "result.pkl"), "wb") as f:
                pickle.dump(results, f)
    except BaseException as exc:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        with open(os.path.join(folder, f"rank-{world.Get_rank()}.txt"), "w") as f:
            f.write(text)
        if world.Get_size() > 1:
            drain()
            world.Abort(1)
        os._exit(1)


if __name__ == "__main__":
    main(sys.argv[1])
