"""The launch counter of benchmarks/count_launches.py: trace events classified and counted once."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import count_launches  # noqa: E402


@pytest.mark.parametrize(
    "name, stats, kind",
    [
        ("loop_multiply_fusion", {"kernel_details": "regs:32"}, "kernel"),
        ("void cutlass::Kernel<...>", {}, "kernel"),
        ("MemcpyD2H", {"memcpy_details": "kind_src:device"}, "memcpy"),
        ("Memcpy HtoD", {}, "memcpy"),
        ("Memset", {"memset_details": "num_bytes:4"}, "memset"),
    ],
)
def test_gpu_stream_events_are_classified_as_kernels_copies_or_memsets(name, stats, kind):
    assert count_launches.classify_gpu_event(name, stats) == kind


def test_host_launch_api_names_are_recognised_and_others_not():
    for name in ("cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernel", "cuGraphLaunch", "cudaGraphLaunch_v10000"):
        assert count_launches.HOST_LAUNCH_API.match(name), name
    for name in ("cuMemcpyDtoHAsync_v2", "cuStreamSynchronize", "cuEventRecord"):
        assert not count_launches.HOST_LAUNCH_API.match(name), name


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="counts the CPU runtime's operations")
def test_cpu_trace_counts_every_loop_iterations_operations_once_and_no_runtime_bookkeeping():
    def program(steps):
        def body(_, x):
            return jnp.sin(x) * 1.5 + jnp.cos(x).sum()

        return jax.jit(lambda x: jax.lax.fori_loop(0, steps, body, x))

    x = jnp.linspace(0.0, 1.0, 64)
    short, long = (count_launches.traced(lambda p=program(steps): p(x), repeats=2) for steps in (3, 7))
    per_iteration = (long["kernels"] - short["kernels"]) / (2 * 4)
    assert short["source"] == long["source"] == "cpu-thunks"
    assert per_iteration >= 1 and per_iteration == int(per_iteration)
    instructions = program(7).lower(x).compile().as_text()
    assert all(f"%{name} = " in instructions for name in long["names"])  # operations of the program, no runtime bookkeeping
    assert sum(long["names"].values()) == long["kernels"]
