"""The CLI's exit codes and messages (run as a subprocess, as users do)."""
import subprocess
import sys

from conftest import REPO


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "spinegate.service.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=env)


def test_bad_configuration_exits_2_naming_the_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("network: {port: not-a-port}\n")
    proc = _cli("--config", str(cfg), "serve")
    assert proc.returncode == 2
    assert "network.port" in proc.stderr


def test_analyze_of_a_folder_without_dicom_exits_3(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("hello")
    proc = _cli("analyze", str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 3
    assert "no_readable_instances" in proc.stderr


def test_missing_model_exits_4(tmp_path):
    import os

    env = {**os.environ, "SPINEGATE_INFERENCE__MODEL_DIR": str(tmp_path)}
    proc = _cli("analyze", str(tmp_path), "--out", str(tmp_path / "out"), env=env)
    assert proc.returncode == 4
    assert "inference.training.train" in proc.stderr


def test_process_of_unknown_study_is_refused(tmp_path):
    import os

    env = {**os.environ, "SPINEGATE_STORAGE__ROOT": str(tmp_path / "var")}
    proc = _cli("process", "1.2.3.4", env=env)
    assert proc.returncode == 3
    assert "state: unknown" in proc.stderr
    proc = _cli("resend", "1.2.3.4", env=env)
    assert proc.returncode == 3 and "cannot be queued for resend (state: unknown)" in proc.stderr


def test_worker_without_a_shared_queue_exits_2(tmp_path):
    import os

    env = {**os.environ, "SPINEGATE_STORAGE__ROOT": str(tmp_path / "var")}
    proc = _cli("worker", env=env)
    assert proc.returncode == 2
    assert "queue.backend" in proc.stderr


def test_a_named_cuda_backend_without_a_gpu_exits_4_saying_why(tmp_path, phantom_study):
    import os

    import pytest

    from spinegate.inference.backends import BackendUnavailable, make_backend
    from conftest import MODEL_DIR

    try:
        make_backend("onnxruntime-cuda", MODEL_DIR / "sagittal_spine.onnx")
        pytest.skip("ONNX Runtime's CUDA provider runs on this machine")
    except BackendUnavailable:
        pass
    env = {**os.environ, "SPINEGATE_INFERENCE__BACKEND": "onnxruntime-cuda"}
    t2 = tmp_path / "t2"
    t2.mkdir()
    for f in phantom_study["files"]:
        if f.name.startswith("003_"):
            (t2 / f.name).write_bytes(f.read_bytes())
    proc = _cli("analyze", str(t2), "--out", str(tmp_path / "out"), env=env)
    assert proc.returncode == 4, proc.stderr
    assert "inference.backend 'onnxruntime-cuda' cannot run here: this onnxruntime has no CUDAExecutionProvider" \
        in proc.stderr
