"""Two processes on 127.0.0.1 (jax.distributed, gloo CPU collectives, 2
devices each) train like one process with 4 devices."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from benchmarks import multihost

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.parametrize("method", ["sngm", "nigt"])
def test_two_processes_equal_one_process_with_four_devices(method, tmp_path):
  out = tmp_path / "final.npz"
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "benchmarks.multihost",
       "--coordinator", f"127.0.0.1:{port}", "--num_processes", "2",
       "--process_id", str(i), "--method", method, "--steps", "20",
       "--out", str(out)],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(2)]
  try:
    logs = [p.communicate(timeout=240)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  assert all("of 4 devices" in log for log in logs), logs
  got = dict(np.load(out))
  want = multihost.train(method, 20, devices=jax.devices()[:4])
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], atol=1e-6, rtol=0, err_msg=k)
