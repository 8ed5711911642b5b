"""Run the CUDA kernel on cases from an .npz file; launched by test_kernels_cudasim.py in a fresh
process with NUMBA_ENABLE_CUDASIM=1 (the simulator must be chosen before numba is imported)."""
import sys

import numpy as np

from fastimg.kernels import RasterPlan
from fastimg.kernels import cuda as cuda_kernels
from fastimg.kernels.cuda import raster_cuda

cases = np.load(sys.argv[1], allow_pickle=False)
results = {}
for key in sorted({k.split("__")[0] for k in cases.files}):
    shape = tuple(cases[f"{key}__shape"])
    plan = RasterPlan.from_pixels(cases[f"{key}__pixels"], shape,
                                  scaling=str(cases[f"{key}__scaling"]),
                                  shift=cases[f"{key}__shift"], scale=cases[f"{key}__scale"],
                                  fill_value=float(cases[f"{key}__fill"]))
    x = cases[f"{key}__x"]
    out = np.empty((x.shape[0], *shape), np.float32)
    # "global_*" cases exercise the kernel used when a row does not fit in shared memory
    cuda_kernels._MAX_SHARED_FEATURES = 0 if key.startswith("global") else 48 * 1024 // 4
    results[f"{key}__images"] = out
    results[f"{key}__bad"] = np.array(raster_cuda(x, plan, out))


def refused(out) -> bool:
    """Whether raster_cuda refuses ``out`` (rather than writing into a copy of it)."""
    try:
        raster_cuda(x, plan, out)
    except ValueError:
        return True
    return False


n, (height, width) = x.shape[0], shape
results["contract__refused"] = np.array([
    refused(np.zeros((n, height, width + 1), np.float32)[:, :, :width]),  # a strided view
    refused(np.zeros((n, height, width), np.float16)),
    refused(np.zeros((n - 1, height, width), np.float32)),
])


class Interfaced:  # a torch or CuPy tensor's dtype is not a numpy dtype
    dtype = object()
    __cuda_array_interface__ = {"typestr": "<f2", "shape": (1, 1), "version": 3}


results["contract__interface_dtype"] = np.array(str(cuda_kernels._dtype(Interfaced())))
np.savez(sys.argv[2], **results)
