"""The real pynvml bindings against the fake libnvidia-ml (tests/fakenvml)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

pynvml = pytest.importorskip("pynvml")

from tests.fakenvml import TOPOLOGY_NODE, TOPOLOGY_SINGLE, TOPOLOGY_SYSTEM  # noqa: E402

H100 = "NVIDIA H100 80GB HBM3"
UUID0 = "GPU-5c7a8a1e-3f0b-4e7d-9c2a-1b2c3d4e5f60"
UUID1 = "GPU-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


@pytest.fixture
def two_gpus(fake_nvml):
    fake_nvml.set_driver("550.54.15", cuda=12040)
    fake_nvml.add_gpu(
        UUID0,
        H100,
        memory_used=2 * 2**30,
        pci="00000000:17:00.0",
        util=37,
        memory_util=12,
        power_mw=250_000,
        temperature=55,
    )
    fake_nvml.add_gpu(UUID1, H100, pci="00000000:2A:00.0")
    fake_nvml.write()
    pynvml.nvmlInit()
    return fake_nvml


def handle(i):
    return pynvml.nvmlDeviceGetHandleByIndex(i)


def test_found_by_soname_without_ld_library_path(two_gpus, fake_nvml_lib):
    assert str(fake_nvml_lib.parent) not in os.environ.get("LD_LIBRARY_PATH", "")
    assert hasattr(pynvml.nvmlLib, "fakeNvmlReset")  # pynvml's own CDLL("libnvidia-ml.so.1")


def test_inventory(two_gpus):
    assert pynvml.nvmlSystemGetDriverVersion() == "550.54.15"
    assert pynvml.nvmlSystemGetCudaDriverVersion() == 12040
    assert pynvml.nvmlSystemGetCudaDriverVersion_v2() == 12040
    assert pynvml.nvmlSystemGetNVMLVersion() == "12.550.54.15"
    assert pynvml.nvmlDeviceGetCount() == 2
    h0 = handle(0)
    assert pynvml.nvmlDeviceGetUUID(h0) == UUID0
    assert pynvml.nvmlDeviceGetName(h0) == H100
    assert pynvml.nvmlDeviceGetIndex(handle(1)) == 1
    assert pynvml.nvmlDeviceGetMinorNumber(handle(1)) == 1
    assert pynvml.nvmlDeviceGetCudaComputeCapability(h0) == (9, 0)
    by_uuid = pynvml.nvmlDeviceGetHandleByUUID(UUID1)
    assert pynvml.nvmlDeviceGetIndex(by_uuid) == 1
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetHandleByUUID("GPU-nope")
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        handle(2)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetName(pynvml.c_nvmlDevice_t())  # NULL handle


def test_memory_and_pci(two_gpus):
    h0 = handle(0)
    mem = pynvml.nvmlDeviceGetMemoryInfo(h0)
    assert (mem.total, mem.used, mem.free) == (85520809984, 2 * 2**30, 85520809984 - 2 * 2**30)
    two_gpus.set_memory(0, used=2**30, reserved=2**29)
    two_gpus.write()
    mem2 = pynvml.nvmlDeviceGetMemoryInfo(h0, version=pynvml.nvmlMemory_v2)
    assert (mem2.total, mem2.reserved, mem2.used) == (85520809984, 2**29, 2**30)
    assert mem2.free == 85520809984 - 2**30 - 2**29
    assert pynvml.nvmlDeviceGetMemoryInfo(h0).used == 2**30 + 2**29  # v1 counts reserved as used

    pci = pynvml.nvmlDeviceGetPciInfo(h0)
    assert pci.busId == "00000000:17:00.0"
    assert pci.busIdLegacy == "0000:17:00.0"
    assert (pci.domain, pci.bus, pci.device, pci.pciDeviceId) == (0, 0x17, 0, 0x233010DE)
    by_bus = pynvml.nvmlDeviceGetHandleByPciBusId("0000:2a:00.0")
    assert pynvml.nvmlDeviceGetUUID(by_bus) == UUID1


def test_utilization_power_temperature_change_between_calls(two_gpus):
    h0 = handle(0)
    util = pynvml.nvmlDeviceGetUtilizationRates(h0)
    assert (util.gpu, util.memory) == (37, 12)
    assert pynvml.nvmlDeviceGetPowerUsage(h0) == 250_000
    assert pynvml.nvmlDeviceGetTemperature(h0, pynvml.NVML_TEMPERATURE_GPU) == 55
    assert pynvml.nvmlDeviceGetTemperatureV(h0, pynvml.NVML_TEMPERATURE_GPU) == 55
    # several writes within the same second are all seen
    for percent in (90, 91, 0, 100):
        two_gpus.set_utilization(0, gpu=percent, memory=percent // 2)
        two_gpus.set_power(0, 100_000 + percent)
        two_gpus.write()
        util = pynvml.nvmlDeviceGetUtilizationRates(h0)
        assert (util.gpu, util.memory) == (percent, percent // 2)
        assert pynvml.nvmlDeviceGetPowerUsage(h0) == 100_000 + percent


def test_running_processes_v3_round_trip(two_gpus):
    h0, h1 = handle(0), handle(1)
    assert pynvml.nvmlDeviceGetComputeRunningProcesses(h0) == []
    two_gpus.add_process(0, 1234, used_memory=1073741824)
    two_gpus.add_process(
        0, 4_000_000_000, used_memory=2**40 + 7, gpu_instance=1, compute_instance=2
    )
    two_gpus.add_process(0, 99)  # memory not available
    two_gpus.add_process(1, 555, used_memory=42)
    two_gpus.write()
    procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h0)
    got = [(p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId) for p in procs]
    assert got == [
        (1234, 1073741824, 0xFFFFFFFF, 0xFFFFFFFF),
        (4_000_000_000, 2**40 + 7, 1, 2),
        (99, None, 0xFFFFFFFF, 0xFFFFFFFF),
    ]
    procs_v2 = pynvml.nvmlDeviceGetComputeRunningProcesses_v2(h0)
    assert [p.pid for p in procs_v2] == [1234, 4_000_000_000, 99]
    procs1 = pynvml.nvmlDeviceGetComputeRunningProcesses(h1)
    assert [(p.pid, p.usedGpuMemory) for p in procs1] == [(555, 42)]
    two_gpus.remove_process(0, 1234)
    two_gpus.write()
    assert [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h0)] == [4_000_000_000, 99]


def test_many_processes_and_samples(two_gpus):
    for pid in range(1000, 2024):
        two_gpus.add_process(pid % 2, pid, used_memory=pid * 4096)
    for t in range(1, 5001):
        two_gpus.add_sample(1, 1000 + t % 7, t, sm=t % 101)
    two_gpus.write()
    procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle(1))
    assert len(procs) == 512 and all(p.usedGpuMemory == p.pid * 4096 for p in procs)
    samples = pynvml.nvmlDeviceGetProcessUtilization(handle(1), 4000)
    assert [s.timeStamp for s in samples] == list(range(4001, 5001))


def test_process_utilization_last_seen(two_gpus):
    h0 = handle(0)
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetProcessUtilization(h0, 0)
    for t, sm in ((100, 10), (200, 20), (300, 30)):
        two_gpus.add_sample(0, 1234, t, sm=sm, mem=sm + 1, enc=2, dec=3)
    two_gpus.add_sample(1, 777, 250, sm=99)
    two_gpus.write()
    samples = pynvml.nvmlDeviceGetProcessUtilization(h0, 150)
    got = [(s.pid, s.timeStamp, s.smUtil, s.memUtil, s.encUtil, s.decUtil) for s in samples]
    assert got == [(1234, 200, 20, 21, 2, 3), (1234, 300, 30, 31, 2, 3)]
    assert len(pynvml.nvmlDeviceGetProcessUtilization(h0, 0)) == 3
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetProcessUtilization(h0, 300)
    # the newer, versioned API reads the same samples
    info = pynvml.nvmlDeviceGetProcessesUtilizationInfo(h0, 150)
    assert [(s.pid, s.timeStamp, s.smUtil) for s in info] == [(1234, 200, 20), (1234, 300, 30)]


def test_process_utilization_size_protocol(two_gpus, fake_nvml_lib):
    """The raw C protocol: NULL buffer -> INSUFFICIENT_SIZE + count; too small too."""
    import ctypes

    for t in (100, 200, 300):
        two_gpus.add_sample(0, 1, t)
    two_gpus.write()
    fn = ctypes.CDLL(str(fake_nvml_lib)).nvmlDeviceGetProcessUtilization
    count = ctypes.c_uint(0)
    h0 = handle(0)
    too_small = pynvml.NVML_ERROR_INSUFFICIENT_SIZE
    assert fn(h0, None, ctypes.byref(count), ctypes.c_ulonglong(150)) == too_small
    assert count.value == 2
    buf = (pynvml.c_nvmlProcessUtilizationSample_t * 1)()
    count.value = 1
    assert fn(h0, buf, ctypes.byref(count), ctypes.c_ulonglong(0)) == too_small
    assert count.value == 3
    buf = (pynvml.c_nvmlProcessUtilizationSample_t * 8)()
    count.value = 8
    assert fn(h0, buf, ctypes.byref(count), ctypes.c_ulonglong(0)) == pynvml.NVML_SUCCESS
    assert count.value == 3 and buf[2].timeStamp == 300


def test_gpu_lost_mid_run(two_gpus):
    h0, h1 = handle(0), handle(1)
    assert pynvml.nvmlDeviceGetUtilizationRates(h0).gpu == 37
    two_gpus.set_lost(0)
    two_gpus.write()
    for call in (
        pynvml.nvmlDeviceGetUtilizationRates,
        pynvml.nvmlDeviceGetMemoryInfo,
        pynvml.nvmlDeviceGetUUID,
        pynvml.nvmlDeviceGetComputeRunningProcesses,
        pynvml.nvmlDeviceGetPowerUsage,
    ):
        with pytest.raises(pynvml.NVMLError_GpuIsLost):
            call(h0)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetProcessUtilization(h0, 0)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        handle(0)
    assert pynvml.nvmlDeviceGetCount() == 2
    assert pynvml.nvmlDeviceGetUUID(h1) == UUID1
    assert pynvml.nvmlDeviceGetUtilizationRates(h1).gpu == 0
    two_gpus.set_lost(0, False)
    two_gpus.write()
    assert pynvml.nvmlDeviceGetUtilizationRates(h0).gpu == 37


def test_unsupported_call(two_gpus):
    two_gpus.set_unsupported(0, "power")
    two_gpus.set_unsupported(1, "nvmlDeviceGetComputeRunningProcesses")
    two_gpus.write()
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetPowerUsage(handle(0))
    assert pynvml.nvmlDeviceGetPowerUsage(handle(1)) == 70000
    assert pynvml.nvmlDeviceGetUtilizationRates(handle(0)).gpu == 37
    with pytest.raises(pynvml.NVMLError_NotSupported):  # _v3 matches the unversioned name
        pynvml.nvmlDeviceGetComputeRunningProcesses(handle(1))
    assert str(pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)) == "Not Supported"


def test_topology(two_gpus):
    two_gpus.add_gpu()
    two_gpus.set_topology(0, 1, TOPOLOGY_SINGLE)
    two_gpus.set_topology(2, 1, TOPOLOGY_NODE)
    two_gpus.write()
    level = pynvml.nvmlDeviceGetTopologyCommonAncestor
    assert level(handle(0), handle(1)) == TOPOLOGY_SINGLE
    assert level(handle(1), handle(0)) == TOPOLOGY_SINGLE
    assert level(handle(1), handle(2)) == TOPOLOGY_NODE
    assert level(handle(0), handle(2)) == TOPOLOGY_SYSTEM
    assert level(handle(2), handle(2)) == pynvml.NVML_TOPOLOGY_INTERNAL


def test_ecc_and_retired_pages(two_gpus):
    two_gpus.set_gpu(1, ecc_uncorrected=3, ecc_corrected=5, retired_pages_pending=1)
    two_gpus.write()
    h1 = handle(1)
    assert (
        pynvml.nvmlDeviceGetTotalEccErrors(
            h1, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC
        )
        == 3
    )
    assert (
        pynvml.nvmlDeviceGetTotalEccErrors(
            h1, pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_AGGREGATE_ECC
        )
        == 5
    )
    assert pynvml.nvmlDeviceGetRetiredPagesPendingStatus(h1) == 1
    assert pynvml.nvmlDeviceGetRetiredPagesPendingStatus(handle(0)) == 0


def test_no_driver(fake_nvml):
    # nothing written: no state file
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        pynvml.nvmlInit()
    fake_nvml.add_gpu()
    fake_nvml.write()
    pynvml.nvmlInit()
    assert pynvml.nvmlDeviceGetCount() == 1


def test_uninitialized_and_shutdown(fake_nvml):
    fake_nvml.add_gpu()
    fake_nvml.write()
    pynvml.nvmlInit()
    h = handle(0)
    pynvml.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetName(h)
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlShutdown()


def test_zero_gpus(fake_nvml):
    fake_nvml.write()
    pynvml.nvmlInit()
    assert pynvml.nvmlDeviceGetCount() == 0


def test_bad_state_line_is_reported(fake_nvml, capfd):
    fake_nvml.state_path.write_text("gpu 0 colour purple\n")
    with pytest.raises(pynvml.NVMLError_Unknown):
        pynvml.nvmlInit()
    assert "cannot parse: gpu 0 colour purple" in capfd.readouterr().err


def test_concurrent_calls(two_gpus):
    """ctypes drops the GIL: calls from threads while the state changes."""
    h0 = handle(0)
    errors = []

    def reader():
        try:
            for _ in range(2000):
                assert pynvml.nvmlDeviceGetUtilizationRates(h0).gpu in range(101)
                try:
                    pynvml.nvmlDeviceGetComputeRunningProcesses(h0)
                except pynvml.NVMLError_InsufficientSize:
                    # pynvml asks for the count, then for the list with room for twice
                    # as many + 5: a list that grew more between the two calls (a reader
                    # descheduled while the writer adds processes) is too big, as with a
                    # real driver; the sampler reads it again at the next tick
                    pass
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(200):
        two_gpus.set_utilization(0, gpu=i % 101)
        two_gpus.add_process(0, 10_000 + i, used_memory=i)
        two_gpus.write()
    for t in threads:
        t.join()
    assert errors == []


def test_a_process_list_can_grow_between_the_count_and_the_list_call(two_gpus):
    two_gpus.add_process(0, 11, used_memory=1)
    two_gpus.set_process_list_growth(0, 6)  # pynvml leaves room for 2 × 1 + 5 = 7
    two_gpus.write()
    assert [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle(0))] == [11]
    two_gpus.set_process_list_growth(0, 7)  # 8 > 7
    two_gpus.write()
    with pytest.raises(pynvml.NVMLError_InsufficientSize):
        pynvml.nvmlDeviceGetComputeRunningProcesses(handle(0))
    assert pynvml.nvmlDeviceGetComputeRunningProcesses(handle(1)) == []  # no count call grew


def test_subprocess_via_ld_library_path(two_gpus, tmp_path):
    code = (
        "import pynvml; pynvml.nvmlInit(); "
        "print(pynvml.nvmlDeviceGetCount(), pynvml.nvmlDeviceGetName("
        "pynvml.nvmlDeviceGetHandleByIndex(1)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=two_gpus.env(),
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert out.stdout.strip() == f"2 {H100}"


def test_energy_counter_reset_and_unsupported(two_gpus):
    assert pynvml.nvmlDeviceGetTotalEnergyConsumption(handle(0)) == 0
    two_gpus.set_energy(0, 2**50 + 1)  # 64 bits
    two_gpus.set_energy(1, 10)
    two_gpus.write()
    assert pynvml.nvmlDeviceGetTotalEnergyConsumption(handle(0)) == 2**50 + 1
    assert two_gpus.add_energy(1, 5) == 15
    two_gpus.write()
    assert pynvml.nvmlDeviceGetTotalEnergyConsumption(handle(1)) == 15
    two_gpus.set_energy(1, 2)  # a reset: lower than before
    two_gpus.set_unsupported(0, "energy")
    two_gpus.write()
    assert pynvml.nvmlDeviceGetTotalEnergyConsumption(handle(1)) == 2
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle(0))
    with pytest.raises(ValueError, match="energy_mj"):
        two_gpus.set_energy(0, -1)


def gpm_request(sample1, sample2, *metrics):
    request = pynvml.c_nvmlGpmMetricsGet_t()
    request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
    request.numMetrics = len(metrics)
    request.sample1, request.sample2 = sample1, sample2
    for i, metric in enumerate(metrics):
        request.metrics[i].metricId = metric
    return request


def test_gpm_the_way_the_real_bindings_call_it(two_gpus, fake_nvml_lib):
    from tests.fakenvml import gpm_samples_allocated

    two_gpus.set_gpm(0, sm_activity=12.5)
    two_gpus.write()
    assert pynvml.nvmlGpmQueryDeviceSupport(handle(0)).isSupportedDevice == 1
    assert pynvml.nvmlGpmQueryDeviceSupport(handle(1)).isSupportedDevice == 0
    a, b, c = (pynvml.nvmlGpmSampleAlloc() for _ in range(3))
    assert gpm_samples_allocated(fake_nvml_lib) == 3
    pynvml.nvmlGpmSampleGet(handle(0), a)
    two_gpus.set_sm_activity(0, 99.0)
    two_gpus.write()
    pynvml.nvmlGpmSampleGet(handle(0), b)
    request = gpm_request(a, b, pynvml.NVML_GPM_METRIC_SM_UTIL, pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL)
    pynvml.nvmlGpmMetricsGet(request)
    sm, dram = request.metrics[0], request.metrics[1]
    assert (sm.nvmlReturn, sm.value) == (pynvml.NVML_SUCCESS, 99.0)  # the later sample's
    assert sm.metricInfo.shortName == b"sm_util"
    assert dram.nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED
    with pytest.raises(pynvml.NVMLError_InvalidArgument):  # the later one first
        pynvml.nvmlGpmMetricsGet(gpm_request(b, a, pynvml.NVML_GPM_METRIC_SM_UTIL))
    with pytest.raises(pynvml.NVMLError_InvalidArgument):  # never taken
        pynvml.nvmlGpmMetricsGet(gpm_request(a, c, pynvml.NVML_GPM_METRIC_SM_UTIL))
    with pytest.raises(pynvml.NVMLError_NotSupported):  # a GPU without GPM
        pynvml.nvmlGpmSampleGet(handle(1), c)
    two_gpus.set_gpm(1)
    two_gpus.write()
    pynvml.nvmlGpmSampleGet(handle(1), c)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):  # two GPUs
        pynvml.nvmlGpmMetricsGet(gpm_request(b, c, pynvml.NVML_GPM_METRIC_SM_UTIL))
    stale = gpm_request(a, b, pynvml.NVML_GPM_METRIC_SM_UTIL)
    stale.version = 2
    with pytest.raises(pynvml.NVMLError_ArgumentVersionMismatch):
        pynvml.nvmlGpmMetricsGet(stale)
    two_gpus.set_lost(0)
    two_gpus.write()
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlGpmMetricsGet(gpm_request(a, b, pynvml.NVML_GPM_METRIC_SM_UTIL))
    for sample in (a, b, c):
        pynvml.nvmlGpmSampleFree(sample)
    assert gpm_samples_allocated(fake_nvml_lib) == 0
    two_gpus.set_unsupported(1, "gpm")
    two_gpus.write()
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlGpmQueryDeviceSupport(handle(1))
    with pytest.raises(ValueError, match="sm_activity"):
        two_gpus.set_sm_activity(1, "busy")
