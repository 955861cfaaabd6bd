"""The Verilator build cache: shared by processes, keyed by what the model links."""

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from ..helpers import (dense_frames, random_acc, requant_constants, requant_golden, requantizer,
                       verilate_io)


def _requantizer_run(build_root: str, seed: int) -> bool:
    """Build (or reuse) and run one small requantizer; True when it matches golden."""
    C, D, acc_bits = 6, 2, 20
    rng = np.random.default_rng(0)  # same design text in every process: one cache entry
    mult, shift, bias, relu = requant_constants(rng, C)
    dut = requantizer(C, D, acc_bits, mult, shift, bias, relu)
    acc = random_acc(np.random.default_rng(seed), (3, 1, C), acc_bits)
    want = requant_golden(acc, mult, shift, bias, relu)
    beats_in, beats_want = dense_frames(acc, D), dense_frames(want, D)
    res = verilate_io(dut, "requantizer_shared", beats_in, len(beats_want), stall=0.3, seed=seed,
                      build_root=build_root)
    return res.outputs[0] == beats_want


def test_two_processes_build_one_model_at_once(tmp_path):
    """Two processes that need the same model build it in the same folder at the
    same time (two test runs, a bench beside the tests): one waits for the
    other's make, and both run a working model."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=ctx) as pool:
        ok = list(pool.map(_requantizer_run, [str(tmp_path)] * 2, [1, 2]))
    assert ok == [True, True]
    builds = [p for p in tmp_path.iterdir() if p.name.startswith("requantizer_shared-")]
    assert len(builds) == 1
