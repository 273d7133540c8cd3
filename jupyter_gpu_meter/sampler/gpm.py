"""GPM SM activity of one GPU (Hopper and later): two GPM samples, alternated tick by tick.

NVML's GPU Performance Monitoring gives metrics between two samples of a GPU's
counters: ``nvmlGpmSampleGet`` takes one, ``nvmlGpmMetricsGet`` computes the
metrics between two. Each tick takes a sample into the buffer the tick before
last used and asks for ``NVML_GPM_METRIC_SM_UTIL`` between the previous
sample and this one: the percentage of the GPU's SMs that were busy over the
tick, a truer "busy" than the driver's utilization (which counts a kernel on
one SM as 100 %). Blocking; used by :class:`~.nvml.NVMLSampler` under its lock.
"""

from __future__ import annotations

_get = object.__getattribute__


class GpmSM:
    """Two GPM sample buffers of one GPU and the one metrics request, reused every tick.

    ``nvml`` is the pynvml module. Raises its NVMLError when the buffers cannot
    be allocated. :meth:`read` raises NVMLError as the calls do; after any
    failure the next read starts again (no stale sample is compared).
    """

    def __init__(self, nvml) -> None:
        self._nvml = nvml
        self._samples = [nvml.nvmlGpmSampleAlloc()]
        try:
            self._samples.append(nvml.nvmlGpmSampleAlloc())
        except nvml.NVMLError:
            self.free()
            raise
        self._next = 0  # the buffer the next sample goes into
        self._have_previous = False
        request = nvml.c_nvmlGpmMetricsGet_t()
        request.version = nvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = 1
        self._metric = request.metrics[0]  # shares the request's memory
        self._metric.metricId = nvml.NVML_GPM_METRIC_SM_UTIL
        self._request = request

    def read(self, handle) -> float | None:
        """Take a sample; SM activity (%) since the previous one, None on the first."""
        nvml = self._nvml
        current = self._samples[self._next]
        had_previous, self._have_previous = self._have_previous, False
        nvml.nvmlGpmSampleGet(handle, current)
        self._next ^= 1
        self._have_previous = True
        if not had_previous:
            return None
        request = self._request
        request.sample1 = self._samples[self._next]  # the previous sample
        request.sample2 = current
        nvml.nvmlGpmMetricsGet(request)
        # past pynvml's per-attribute wrapper of its structures (these fields are numbers)
        if _get(self._metric, "nvmlReturn") != nvml.NVML_SUCCESS:
            return None
        value = float(_get(self._metric, "value"))
        return value if 0.0 <= value <= 100.0 else max(0.0, min(100.0, value))

    def restart(self) -> None:
        """Forget the previous sample (the GPU was lost or re-attached)."""
        self._have_previous = False

    def free(self) -> None:
        """Give the sample buffers back to NVML (before nvmlShutdown). Safe to call twice."""
        samples, self._samples = self._samples, []
        for sample in samples:
            try:
                self._nvml.nvmlGpmSampleFree(sample)
            except self._nvml.NVMLError:
                pass  # NVML is going away anyway
